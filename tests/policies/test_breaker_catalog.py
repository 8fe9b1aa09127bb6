"""Per-tool breakers under a flood of invented tool names (issue 10, item 11).

Tools the upstream listed (`proxy.mcp.tool_catalog`) keep their breakers whatever clients invent; invented
names share a small bounded space in which an open breaker is never evicted; before any listing, the
one bounded space keeps open breakers too (a newcomer gets none when every slot is open).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.app import running_proxy
from proxy.errors import CircuitOpen, UpstreamTimeout
from proxy.policies.base import Call
from proxy.policies.breaker import MAX_TOOL_BREAKERS, MAX_UNLISTED_BREAKERS, Breaker, BreakerStage
from proxy.mcp.tool_catalog import MAX_TOOLS, ToolCatalog
from tests.conftest import proxy_config
from tests.fakes import FakeClock, FakeUpstream, first, make_call, reply_ok, reply_result, tool_call, upstream_config
from tests.fault_upstream import FaultUpstream
from tests.test_forwarding import call_tool, post

TOOL_BREAKER = upstream_config(breaker={"scope": "tool", "failure_threshold": 3, "reset_timeout": "10s"})
APP_BREAKER = upstream_config(
    app_breaker={"errors": ["is_error"], "failure_threshold": 1, "min_clients": 1, "reset_timeout": "10s"}
)
TOOL_ERROR = reply_result({"content": [{"type": "text", "text": "Unknown tool"}], "isError": True})


def listing(*names: str, cursor: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"tools": [{"name": name, "inputSchema": {"type": "object"}} for name in names]}
    if cursor is not None:
        result["nextCursor"] = cursor
    return {"jsonrpc": "2.0", "id": 1, "result": result}


def call(tool: str, config: Any = TOOL_BREAKER) -> Call:
    return make_call(tool_call(tool), config)


async def fail(stage: BreakerStage, tool: str, times: int, config: Any = TOOL_BREAKER) -> None:
    for _ in range(times):
        with pytest.raises(UpstreamTimeout):
            await stage(first(call(tool, config)), FakeUpstream(UpstreamTimeout("slow")))


async def open_by_tool_errors(stage: BreakerStage, tool: str) -> None:
    """An application breaker (failure_threshold 1) opened by the upstream's 'Unknown tool' answer."""
    await stage(first(call(tool, APP_BREAKER)), FakeUpstream(TOOL_ERROR))


def states(stage: BreakerStage) -> dict[str, str]:
    return {b.name: b.state for b in stage.breakers}


async def test_before_any_listing_1001_open_junk_breakers_never_evict_an_open_one() -> None:
    """Before a listing nothing tells real names from invented ones: the 1,000 slots are first come,
    but a slot whose breaker is open is never taken; a newcomer finding every slot open gets none."""
    stage = BreakerStage("up", FakeClock(), catalog=ToolCatalog())
    await open_by_tool_errors(stage, "search")
    for n in range(MAX_TOOL_BREAKERS + 1):  # 1,001 invented names, each answered "Unknown tool"
        await open_by_tool_errors(stage, f"junk-{n:04d}")
    assert len(stage.breakers) == 1 + MAX_TOOL_BREAKERS  # the upstream breaker, then one per tool name
    assert states(stage)["up/search"] == "open"
    assert "up/junk-0999" not in states(stage) and "up/junk-1000" not in states(stage)  # no slot: no breaker
    upstream = FakeUpstream(reply_ok())
    with pytest.raises(CircuitOpen, match="tool search of upstream up is open"):
        await stage(first(call("search", APP_BREAKER)), upstream)
    await stage(first(call("junk-1000", APP_BREAKER)), upstream)  # unguarded, as an invented name costs nothing
    assert upstream.attempts == 1


async def test_listed_tools_keep_their_breakers_whatever_names_clients_invent() -> None:
    catalog = ToolCatalog()
    catalog.learn(listing("search", "fetch"))
    stage = BreakerStage("up", FakeClock(), catalog=catalog)
    await fail(stage, "search", 3)  # open
    await fail(stage, "fetch", 2)  # closed, two failures counted
    for n in range(MAX_TOOL_BREAKERS + 1):
        await stage(first(call(f"junk-{n:04d}")), FakeUpstream(reply_ok()))
    breakers = {b.name: b for b in stage.breakers}
    assert breakers["up/search"].state == "open"
    assert breakers["up/fetch"].failures == 2
    assert len(breakers) == 2 + MAX_UNLISTED_BREAKERS
    with pytest.raises(CircuitOpen, match="tool search of upstream up is open"):
        await stage(first(call("search")), FakeUpstream(reply_ok()))
    await fail(stage, "fetch", 1)
    assert breakers["up/fetch"].state == "open"


async def test_open_junk_breakers_hold_their_slots_and_newcomers_get_none() -> None:
    catalog = ToolCatalog()
    catalog.learn(listing("search"))
    stage = BreakerStage("up", FakeClock(), catalog=catalog)
    for n in range(MAX_UNLISTED_BREAKERS + 5):
        await open_by_tool_errors(stage, f"junk-{n:04d}")
    junk = {name: state for name, state in states(stage).items() if name.startswith("up/junk-")}
    assert len(junk) == MAX_UNLISTED_BREAKERS and set(junk.values()) == {"open"}
    with pytest.raises(CircuitOpen):
        await stage(first(call("junk-0000", APP_BREAKER)), FakeUpstream(reply_ok()))
    await open_by_tool_errors(stage, "search")  # a listed tool always has its own breaker
    assert states(stage)["up/search"] == "open"


async def test_a_newcomer_costs_no_scan_of_the_open_breakers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The eviction used to scan every breaker for a closed one (787 µs with 999 open): reading states
    is now bounded per newcomer, however many breakers are open."""
    stage = BreakerStage("up", FakeClock(), catalog=ToolCatalog())
    for n in range(MAX_TOOL_BREAKERS - 1):
        await open_by_tool_errors(stage, f"junk-{n:04d}")
    reads = 0
    state = Breaker.state

    def counted(self: Breaker) -> str:
        nonlocal reads
        reads += 1
        return state.fget(self)  # type: ignore[attr-defined,no-any-return]

    monkeypatch.setattr(Breaker, "state", property(counted))
    for n in range(10):
        await stage(first(call(f"new-{n}", APP_BREAKER)), FakeUpstream(reply_ok()))
    assert reads <= 10 * 4


async def test_a_tool_evicted_from_the_catalog_becomes_an_invented_name_and_back() -> None:
    """A tool leaves the catalog only when `MAX_TOOLS` others were listed since (listings add, never remove)."""
    catalog = ToolCatalog()
    catalog.learn(listing("search", "old"))
    stage = BreakerStage("up", FakeClock(), catalog=catalog)
    await fail(stage, "old", 3)
    catalog.learn(listing("search"))
    assert catalog.has("old")  # a listing without it demotes nothing
    # MAX_TOOLS other tools listed since: "old" is evicted, its open breaker moves among the invented names
    catalog.learn(listing(*(f"t{n}" for n in range(MAX_TOOLS))))
    assert not catalog.has("old")
    for n in range(MAX_UNLISTED_BREAKERS):
        await stage(first(call(f"junk-{n:04d}")), FakeUpstream(reply_ok()))
    assert states(stage)["up/old"] == "open"  # open: never evicted
    catalog.learn(listing("search", "old"))
    for n in range(MAX_UNLISTED_BREAKERS, 2 * MAX_UNLISTED_BREAKERS):
        await stage(first(call(f"junk-{n:04d}")), FakeUpstream(reply_ok()))
    assert states(stage)["up/old"] == "open"
    with pytest.raises(CircuitOpen, match="tool old of upstream up is open"):
        await stage(first(call("old")), FakeUpstream(reply_ok()))


async def test_a_last_page_asked_for_alone_keeps_the_first_pages_breakers_listed() -> None:
    """The review's scenario at the breakers: after a real two-page walk, page 2 asked for alone must not
    demote page 1's tools, whose closed breakers junk names would then evict."""
    catalog = ToolCatalog()
    catalog.learn(listing("search", cursor="p2"))
    catalog.learn(listing("other"), cursor="p2")
    stage = BreakerStage("up", FakeClock(), catalog=catalog)
    await fail(stage, "search", 1)  # closed, one failure counted
    catalog.learn(listing("other"), cursor="p2")  # hostile: the last page alone
    for n in range(MAX_UNLISTED_BREAKERS + 1):
        await stage(first(call(f"junk-{n:04d}")), FakeUpstream(reply_ok()))
    assert "up/search" in states(stage)  # still listed: junk never took its slot
    await fail(stage, "search", 2)
    assert states(stage)["up/search"] == "open"  # its count survived: 1 + 2 failures reached the threshold


async def test_retain_drops_breakers_of_configs_no_rule_uses() -> None:
    stage = BreakerStage("up", FakeClock(), catalog=ToolCatalog())
    await fail(stage, "search", 1)
    other = upstream_config(breaker={"scope": "tool", "failure_threshold": 5})
    await stage(first(call("search", other)), FakeUpstream(reply_ok()))
    assert len(stage.breakers) == 2
    stage.retain({other.breaker})
    assert [b.config for b in stage.breakers] == [other.breaker]


async def test_over_http_the_listing_a_client_asked_for_keys_the_breakers(upstream: FaultUpstream) -> None:
    """The wiring: the runtime hands the upstream's catalog to its breaker stage, so after a tools/list
    through the proxy, invented names get only the unlisted slots and the listed tool keeps its open breaker."""
    app_breaker = {"errors": ["is_error"], "failure_threshold": 1, "min_clients": 1, "reset_timeout": "1h"}
    async with running_proxy(proxy_config(upstream.url, upstream={"app_breaker": app_breaker})) as proxy:
        url = proxy.url + "/mcp"
        await post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        upstream.fault("tools/call", "lookup", tool_error=True)
        await post(url, call_tool("lookup"))
        for n in range(MAX_UNLISTED_BREAKERS + 1):
            upstream.fault("tools/call", f"junk-{n}", tool_error=True)
            await post(url, call_tool(f"junk-{n}"))
        stage = proxy.runtime.current.routes["/mcp"].state.breaker
        names = {b.name for b in stage.breakers}
        junk = {name for name in names if name.startswith("up/junk-")}
        assert names - junk == {"up", "up/tools/list", "up/lookup"}  # an app breaker per tool, or per method
        assert junk == {f"up/junk-{n}" for n in range(MAX_UNLISTED_BREAKERS)}  # the last had no room
        status, _, body = await post(url, call_tool("lookup"))
    assert (status, orjson.loads(body)["error"]["code"]) == (503, -32052)
