"""The tool catalog: what an upstream listed, learned whatever the trust; the retry view believes it only when trusted."""

from __future__ import annotations

from typing import Any, Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.mcp.annotations import ToolAnnotations
from proxy.app import running_proxy
from proxy.events.recorder import EventBus, EventRecorder
from proxy.ops.metrics import ProxyMetrics
from proxy.runtime import build_runtime
from proxy.mcp.tool_catalog import (
    MAX_PENDING_TOOLS,
    MAX_PENDING_WALKS,
    MAX_TOOL_NAME_CHARS,
    MAX_TOOLS,
    ToolCatalog,
    ToolHints,
    listed,
)
from tests.conftest import proxy_config
from tests.fakes import FakeClock
from tests.fault_upstream import Fault, FaultUpstream
from tests.test_forwarding import post


def listing(tools: list[Any], cursor: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"tools": tools}
    if cursor is not None:
        result["nextCursor"] = cursor
    return {"jsonrpc": "2.0", "id": 1, "result": result}


def tool(name: str, **hints: bool) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object"}, "annotations": hints}


def test_a_listing_adds_to_the_catalog_with_the_declared_hints_of_the_latest() -> None:
    catalog = ToolCatalog()
    assert not catalog.known and catalog.vouches("tools/call", "search") is None
    assert catalog.learn(listing([tool("search", readOnlyHint=True), tool("rm", destructiveHint=True, idempotentHint=False)])) == 2
    assert catalog.known and catalog.version == 1
    assert catalog.hints("search") == ToolHints(read_only=True)
    assert catalog.hints("rm") == ToolHints(idempotent=False, destructive=True)
    catalog.learn(listing([tool("rm")]))
    assert catalog.has("search")  # a shorter listing demotes nothing
    assert catalog.hints("rm") == ToolHints() and catalog.version == 1  # hints from the latest; names unchanged
    catalog.learn(listing([tool("new")]))
    assert catalog.version == 2 and len(catalog) == 3
    assert catalog.learn({"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "x"}}) == 0
    assert catalog.has("rm")  # an error answer forgets nothing


def test_a_two_page_walk_lists_both_pages_once_its_last_page_comes() -> None:
    catalog = ToolCatalog()
    assert catalog.learn(listing([tool("a")], cursor="p2")) == 1  # asked without a cursor: a walk starts
    assert not catalog.known and not catalog.has("a")  # a walk in progress changes nothing yet
    assert catalog.learn(listing([tool("b")], cursor="p3"), cursor="p2") == 1
    assert not catalog.known
    assert catalog.learn(listing([tool("c", readOnlyHint=True)]), cursor="p3") == 1
    assert catalog.known and catalog.version == 1
    assert (catalog.has("a"), catalog.has("b"), catalog.has("c")) == (True, True, True)
    assert catalog.hints("c") == ToolHints(read_only=True)


def test_a_last_page_asked_for_alone_never_demotes_the_first() -> None:
    """The review's scenario: after a real walk (page 1 hands out cursor p2), a client asks for page p2
    alone. Taken for a whole listing, it would demote every tool of page 1 to an invented name."""
    catalog = ToolCatalog()
    catalog.learn(listing([tool("lookup"), tool("fail")], cursor="p2"))
    catalog.learn(listing([tool("other")]), cursor="p2")
    assert len(catalog) == 3 and catalog.version == 1
    assert catalog.learn(listing([tool("other")]), cursor="p2") == 0  # that walk is over: nothing learned
    assert catalog.has("lookup") and catalog.has("fail") and len(catalog) == 3 and catalog.version == 1
    assert listed(catalog, "tools/call", "fail") is True


def test_a_page_for_a_cursor_nobody_handed_out_is_ignored() -> None:
    catalog = ToolCatalog()
    assert catalog.learn(listing([tool("x")]), cursor="invented") == 0
    assert not catalog.known and not catalog.has("x")  # not even a first listing
    catalog.learn(listing([tool("a")], cursor="p2"))
    assert catalog.learn(listing([tool("x")]), cursor="p3") == 0  # another cursor than the one handed out
    assert catalog.learn(listing([tool("x")]), cursor=2) == 0  # not a cursor at all
    assert not catalog.known
    catalog.learn(listing([tool("b")]), cursor="p2")
    assert catalog.has("a") and catalog.has("b") and not catalog.has("x")


def test_per_user_filtered_listings_keep_the_union() -> None:
    """An upstream that lists each user only their tools: one user's listing never demotes another's."""
    catalog = ToolCatalog()
    catalog.learn(listing([tool("shared"), tool("admin_only", destructiveHint=True)]))
    catalog.learn(listing([tool("shared", readOnlyHint=True), tool("user_only")]))
    catalog.learn(listing([tool("other")], cursor="u2"))  # a paginated walk of a third user
    catalog.learn(listing([]), cursor="u2")
    assert {name for name in ("shared", "admin_only", "user_only", "other") if catalog.has(name)} == {
        "shared",
        "admin_only",
        "user_only",
        "other",
    }
    assert catalog.hints("shared") == ToolHints(read_only=True)  # from its latest listing


def test_pending_walks_are_bounded_least_recently_extended_first_out() -> None:
    catalog = ToolCatalog()
    for n in range(MAX_PENDING_WALKS + 1):
        catalog.learn(listing([tool(f"first-{n}")], cursor=f"c{n}"))
    catalog.learn(listing([tool("first-1-more")], cursor="c1b"), cursor="c1")  # walk 1 moves on: now the newest
    catalog.learn(listing([tool("first-x")], cursor="cx"))  # one more walk: the oldest waiting (walk 2) goes
    assert catalog.learn(listing([tool("last-0")]), cursor="c0") == 0  # walk 0 went when walk 16 came
    assert catalog.learn(listing([tool("last-2")]), cursor="c2") == 0
    assert not catalog.known
    assert catalog.learn(listing([tool("last-1")]), cursor="c1b") == 1
    assert catalog.learn(listing([tool("last-16")]), cursor=f"c{MAX_PENDING_WALKS}") == 1
    assert [catalog.has(name) for name in ("first-0", "first-2", "first-1", "first-1-more", "last-1", "first-16")] == [
        False,
        False,
        True,
        True,
        True,
        True,
    ]


def test_pending_walks_hold_a_bounded_number_of_names_between_them() -> None:
    catalog = ToolCatalog()
    big = [tool(f"t{n}") for n in range(MAX_TOOLS)]
    walks = MAX_PENDING_TOOLS // MAX_TOOLS
    for n in range(walks + 1):
        catalog.learn(listing(big, cursor=f"c{n}"))
    assert catalog.learn(listing([]), cursor="c0") == 0  # dropped to make room for the newest
    catalog.learn(listing([]), cursor=f"c{walks}")
    assert len(catalog) == MAX_TOOLS


NAMES = st.sampled_from(["a", "b", "c", "d"])
CURSORS = st.sampled_from(["p1", "p2", "p3"])


@given(
    st.lists(
        st.tuples(st.none() | CURSORS, st.lists(NAMES, max_size=3), st.none() | CURSORS),
        max_size=30,
    )
)
def test_whatever_pages_and_cursors_come_a_listed_tool_stays_listed(
    answers: list[tuple[str | None, list[str], str | None]],
) -> None:
    """Below `MAX_TOOLS` names, no sequence of answers (asked with any cursor, handing out any cursor)
    demotes a listed tool; and only names some answer carried are listed."""
    catalog = ToolCatalog()
    seen: set[str] = set()
    for asked, names, handed in answers:
        before = {name for name in ("a", "b", "c", "d") if catalog.has(name)}
        catalog.learn(listing([tool(name) for name in names], cursor=handed), cursor=asked)
        seen.update(names)
        now = {name for name in ("a", "b", "c", "d") if catalog.has(name)}
        assert before <= now <= seen


def test_the_catalog_is_bounded_least_recently_listed_first_out() -> None:
    catalog = ToolCatalog()
    catalog.learn(listing([tool("old"), tool("kept")]))
    catalog.learn(listing([tool(f"t{n}") for n in range(MAX_TOOLS - 2)]))
    catalog.learn(listing([tool("kept")]))  # listed again: now the most recent
    version = catalog.version
    catalog.learn(listing([tool("newcomer")]))
    assert len(catalog) == MAX_TOOLS and catalog.version == version + 1
    assert not catalog.has("old") and catalog.has("kept") and catalog.has("newcomer")
    assert listed(catalog, "tools/call", "old") is False


def test_a_listing_is_bounded_and_ignores_names_no_client_may_send() -> None:
    catalog = ToolCatalog()
    tools = [tool("x" * (MAX_TOOL_NAME_CHARS + 1)), 7, {"name": 3}] + [tool(f"t{n}") for n in range(MAX_TOOLS + 5)]
    assert catalog.learn(listing(tools)) == MAX_TOOLS + 5
    assert len(catalog) == MAX_TOOLS and catalog.has("t0") and not catalog.has(f"t{MAX_TOOLS}")


def test_methods_are_judged_by_the_specification() -> None:
    catalog = ToolCatalog()
    assert listed(None, "ping", None) is True and listed(None, "x/junk", None) is False
    assert listed(None, "tools/call", "search") is None
    catalog.learn(listing([tool("search")]))
    assert listed(catalog, "tools/call", "search") is True and listed(catalog, "tools/call", "junk") is False


def test_the_retry_view_believes_the_hints_only_when_trusted() -> None:
    catalog = ToolCatalog()
    untrusted = ToolAnnotations(catalog, trusted=False)
    assert untrusted.learn(listing([tool("search", readOnlyHint=True), tool("put", idempotentHint=True), tool("rm")])) == 3
    assert len(catalog) == 3  # learned whatever the trust
    assert [untrusted.safe_to_retry(name) for name in ("search", "put", "rm", "junk")] == [False] * 4
    trusted = ToolAnnotations(catalog, trusted=True)
    assert [trusted.safe_to_retry(name) for name in ("search", "put", "rm", "junk")] == [True, True, False, False]


def test_the_catalog_survives_a_reload_and_trust_is_read_from_the_new_config() -> None:
    """Kept like every learned state while the upstream keeps its name and URL; a new URL is another
    server, whose tools nobody has listed yet. Metrics and events are told the live catalogs."""
    metrics, events, clock = ProxyMetrics(), EventRecorder(EventBus()), FakeClock()
    first = build_runtime(proxy_config("http://127.0.0.1:1/mcp"), metrics, events, clock)
    route = first.routes["/mcp"]
    route.annotations.learn(listing([tool("search", readOnlyHint=True)]))  # as the handler does, untrusted
    assert route.state.catalog.has("search") and not route.annotations.safe_to_retry("search")
    trusted = proxy_config("http://127.0.0.1:1/mcp", upstream={"trust_annotations": True})
    second = build_runtime(trusted, metrics, events, clock, previous=first)
    assert second.routes["/mcp"].state.catalog is route.state.catalog
    assert second.routes["/mcp"].annotations.safe_to_retry("search")
    assert metrics.catalogs == events.catalogs == {"up": route.state.catalog}
    moved = build_runtime(proxy_config("http://127.0.0.1:2/mcp"), metrics, events, clock, previous=second)
    assert not moved.routes["/mcp"].state.catalog.known and events.catalogs["up"] is moved.routes["/mcp"].state.catalog


PAGE_1: Final = {"tools": [tool("lookup", readOnlyHint=True), tool("fail")], "nextCursor": "p2"}
PAGE_2: Final = {"tools": [tool("other")]}


class PagedUpstream(FaultUpstream):
    """Lists its tools on two pages: page 1 to a request without a cursor, page 2 to any cursor."""

    def _message(self, body: dict[str, Any], tool: str | None, fault: Fault | None) -> dict[str, Any]:
        message = super()._message(body, tool, fault)
        if body["method"] == "tools/list" and "result" in message:
            params = body.get("params") or {}
            message["result"] = PAGE_1 if params.get("cursor") is None else PAGE_2
        return message


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
async def test_over_http_a_client_asking_for_the_last_page_alone_demotes_nothing(sse: bool) -> None:
    """The handler tells the catalog which cursor each listing was asked with (JSON and streamed answers):
    a real walk lists both pages; the last page asked for again, or a page for an invented cursor, is no listing."""
    upstream = PagedUpstream()
    await upstream.start()
    if sse:
        upstream.fault("tools/list", sse=True)
    try:
        async with running_proxy(proxy_config(upstream.url)) as proxy:
            url = proxy.url + "/mcp"
            catalog = proxy.runtime.current.routes["/mcp"].state.catalog
            await post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": "p2"}})
            assert not catalog.known  # a walk nobody started
            await post(url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            await post(url, {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"cursor": "p2"}})
            assert catalog.known and len(catalog) == 3 and catalog.version == 1
            for request_id, cursor in ((4, "p2"), (5, "invented")):
                request = {"jsonrpc": "2.0", "id": request_id, "method": "tools/list", "params": {"cursor": cursor}}
                status, _, _ = await post(url, request)
                assert status == 200
            assert [catalog.has(name) for name in ("lookup", "fail", "other")] == [True, True, True]
            assert catalog.version == 1 and catalog.hints("lookup") == ToolHints(read_only=True)
    finally:
        await upstream.stop()
