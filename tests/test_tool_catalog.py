"""The tool catalog: what an upstream listed, learned whatever the trust; the retry view believes it only when trusted."""

from __future__ import annotations

from typing import Any

from proxy.annotations import ToolAnnotations
from proxy.events import EventBus, EventRecorder
from proxy.metrics import ProxyMetrics
from proxy.runtime import build_runtime
from proxy.tool_catalog import MAX_TOOL_NAME_CHARS, MAX_TOOLS, ToolCatalog, ToolHints, listed
from tests.conftest import proxy_config
from tests.fakes import FakeClock


def listing(tools: list[Any], cursor: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"tools": tools}
    if cursor is not None:
        result["nextCursor"] = cursor
    return {"jsonrpc": "2.0", "id": 1, "result": result}


def tool(name: str, **hints: bool) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object"}, "annotations": hints}


def test_a_listing_replaces_the_catalog_and_keeps_the_declared_hints() -> None:
    catalog = ToolCatalog()
    assert not catalog.known and catalog.vouches("tools/call", "search") is None
    assert catalog.learn(listing([tool("search", readOnlyHint=True), tool("rm", destructiveHint=True, idempotentHint=False)])) == 2
    assert catalog.known and catalog.version == 1
    assert catalog.hints("search") == ToolHints(read_only=True)
    assert catalog.hints("rm") == ToolHints(idempotent=False, destructive=True)
    catalog.learn(listing([tool("rm")]))
    assert not catalog.has("search") and catalog.hints("rm") == ToolHints() and catalog.version == 2
    catalog.learn(listing([tool("rm")]))
    assert catalog.version == 2  # the same names: nothing to re-sort
    assert catalog.learn({"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "x"}}) == 0
    assert catalog.has("rm")  # an error answer forgets nothing


def test_pages_accumulate_until_the_page_without_a_cursor() -> None:
    catalog = ToolCatalog()
    catalog.learn(listing([tool("a")]))
    catalog.learn(listing([tool("b")], cursor="2"))
    assert catalog.has("a") and not catalog.has("b")  # a listing in progress changes nothing yet
    catalog.learn(listing([tool("c")]))
    assert (catalog.has("a"), catalog.has("b"), catalog.has("c")) == (False, True, True)


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
