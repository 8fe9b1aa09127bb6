"""Events under hostile names and hostile sizes (issue 10, items 12 and 5).

Evidence for the tools an upstream listed survives any flood of invented names: summaries of names
not listed fold into one overflow summary, and their events live in a lane of their own in the bus;
every event is bounded in size, whatever the client's params or the upstream's error message.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from proxy.events.build import build
from proxy.events.recorder import (
    MAX_EVENT_BYTES,
    MAX_FIELD_CHARS,
    MAX_LIST_ITEMS,
    MAX_PARAMS_BYTES,
    MAX_SUMMARIES,
    MAX_UNLISTED_EVENTS,
    OVERFLOW,
    EventBus,
    EventRecorder,
    make_event,
    signature,
)
from proxy.app import running_proxy
from proxy.policies.base import Call
from proxy.mcp.tool_catalog import ToolCatalog
from tests.conftest import proxy_config
from tests.fakes import make_call, tool_call
from tests.fault_upstream import TOOLS, FaultUpstream
from tests.test_forwarding import call_tool, post

JUNK_FLOOD = 20_000


def catalog_of(*names: str) -> ToolCatalog:
    catalog = ToolCatalog()
    catalog.learn({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": name} for name in names]}})
    return catalog


def recorder(*names: str, capacity: int = 10_000, include_params: bool = False) -> EventRecorder:
    events = EventRecorder(EventBus(capacity=capacity), include_params=include_params)
    events.strict = True
    events.catalogs = {"up": catalog_of(*names)}
    return events


def junk_tools(count: int) -> list[Call]:
    """`count` tools/call calls of invented tool names (one classified call, renamed: a flood is cheap)."""
    base = make_call(tool_call("junk"))
    return [dataclasses.replace(base, tool=f"junk-{n:05d}") for n in range(count)]


def junk_methods(count: int) -> list[Call]:
    base = make_call(b'{"jsonrpc":"2.0","id":1,"method":"junk"}')
    return [dataclasses.replace(base, method=f"junk/{n}") for n in range(count)]


def fail(events: EventRecorder, call: Call, message: str = "boom") -> None:
    error = {"kind": "tool_error", "http_status": 200, "jsonrpc_code": None, "message": message}
    events.call_failed(call, error, 1.0, reason="tool_error", http_status=200, client="addr:127.0.0.1")


def test_a_flood_of_invented_tools_failing_never_pushes_out_a_listed_tools_failures() -> None:
    events = recorder("search")
    for n in range(3):
        fail(events, make_call(tool_call("search", n)), f"search failed {n}")
    for junk in junk_tools(JUNK_FLOOD):
        fail(events, junk)
    recent = events.bus.recent()
    assert [e["tool"] for e in recent if e["tool"] == "search"] == ["search"] * 3
    assert len(recent) == 3 + MAX_UNLISTED_EVENTS
    assert [e["id"] for e in recent] == sorted(e["id"] for e in recent)  # one id order across both lanes
    assert recent[-1]["tool"] == f"junk-{JUNK_FLOOD - 1:05d}"
    assert events.bus.stats()["buffered"] == 3 + MAX_UNLISTED_EVENTS


def test_invented_methods_go_to_the_overflow_lane_too_and_before_a_listing_nothing_is_set_apart() -> None:
    events = recorder("search", capacity=100)
    fail(events, make_call(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'))
    for junk in junk_methods(MAX_UNLISTED_EVENTS + 10):
        fail(events, junk)
    assert [e["method"] for e in events.bus.recent()].count("tools/list") == 1
    unlisted_before = EventRecorder(EventBus(capacity=5))
    for n in range(10):
        fail(unlisted_before, make_call(tool_call(f"t{n}")))
    assert [e["tool"] for e in unlisted_before.bus.recent()] == [f"t{n}" for n in range(5, 10)]


def test_summaries_of_unlisted_names_fold_into_one_overflow_summary() -> None:
    events = recorder("search")
    for junk_tool, junk_method in zip(junk_tools(JUNK_FLOOD), junk_methods(JUNK_FLOOD), strict=True):
        events.call_finished(junk_tool, "jsonrpc_error", 2.0)
        events.call_finished(junk_method, "ok", 1.0)
    events.call_finished(make_call(tool_call("search")), "ok", 3.0)
    assert events.flush_summaries() == 3
    summaries = {(e["method"], e["tool"]): e["calls"] for e in events.bus.recent()}
    assert summaries == {("tools/call", OVERFLOW): JUNK_FLOOD, (OVERFLOW, None): JUNK_FLOOD, ("tools/call", "search"): 1}


def test_distinct_summaries_per_window_are_bounded_before_any_listing() -> None:
    events = EventRecorder(EventBus())
    for n in range(MAX_SUMMARIES + 500):
        events.call_finished(make_call(tool_call(f"t{n}")), "ok", 1.0)
    assert events.flush_summaries() == MAX_SUMMARIES + 1
    overflow = [e for e in events.bus.recent() if e["tool"] == OVERFLOW]
    assert [(e["method"], e["calls"]) for e in overflow] == [(OVERFLOW, 500)]


def test_circuit_open_refusals_of_an_unlisted_tool_stay_in_the_overflow_lane() -> None:
    events = recorder("search")
    events.policy_event("breaker_state", None, upstream="up", breaker="up/search", old="closed", new="open", cause="x", last_failure="y")
    for _ in range(JUNK_FLOOD):
        events.policy_event("circuit_open", None, upstream="up", breaker="up/junk")
    kept = [e for e in events.bus.recent() if e["type"] == "breaker_state"]
    assert [e["breaker"] for e in kept] == ["up/search"]


def test_an_event_is_bounded_whatever_the_upstream_says_or_the_client_sends() -> None:
    huge = "x" * (60 * 1024 * 1024)
    call = make_call(tool_call("search", 1, blob="y" * (4 * 1024 * 1024), other="z"))
    event = make_event("call_failed", call, error={"kind": "tool_error", "message": huge}, include_params=True, reason="r", note=huge)
    size = len(orjson.dumps(event))
    assert size <= MAX_EVENT_BYTES
    message = event["error"]["message"]
    assert message.startswith("x" * MAX_FIELD_CHARS) and message.endswith(f"[{len(huge) - MAX_FIELD_CHARS} more characters]")
    assert event["x_note"] == message if "x_note" in event else event["note"] == message
    assert event["params"] == {"_omitted": f"params of {len(orjson.dumps(call.message.arguments))} bytes (over {MAX_PARAMS_BYTES})"}
    assert event["signature"] == signature("up", "tools/call", "search", "tool_error", message)
    small = make_call(tool_call("search", 1, query="v"))
    assert make_event("call_failed", small, include_params=True)["params"] == {"name": "search", "arguments": {"query": "v"}}
    error = {"kind": "tool_error", "http_status": 200, "jsonrpc_code": None, "message": huge}
    typed = build("call_failed", call, {"error": error, "latency_ms": 1.0, "reason": huge, "http_status": 200, "client": huge}, True)
    record = typed.as_record()
    assert len(orjson.dumps(record)) <= MAX_EVENT_BYTES
    assert record["error"]["message"] == record["reason"] == record["client"] == message
    assert (record["params"], record["signature"]) == (event["params"], event["signature"])


@pytest.mark.parametrize("character", ["q", "\x00"])  # "\x00" takes six bytes in JSON
def test_breaker_state_text_and_rejected_config_errors_are_bounded(character: str) -> None:
    events = recorder("search")
    long = character * 100_000
    events.policy_event("breaker_state", None, upstream="up", breaker="up/search", old="closed", new="open", cause=long, last_failure=long)
    events.policy_event("config_rejected", None, trigger="file", errors=[long] * 10_000)
    error = {"kind": "tool_error", "http_status": 200, "jsonrpc_code": None, "message": long}
    events.call_failed(make_call(tool_call("search")), error, 1.0, reason=long, http_status=200, client="addr:127.0.0.1")
    for event in events.bus.recent():
        assert len(orjson.dumps(event)) <= MAX_EVENT_BYTES
    state, rejected, failed = events.bus.recent()
    assert state["last_failure"] == state["cause"] == character * MAX_FIELD_CHARS + f"…[{100_000 - MAX_FIELD_CHARS} more characters]"
    assert rejected["errors"] == [state["cause"]] * MAX_LIST_ITEMS + [f"…[{10_000 - MAX_LIST_ITEMS} more]"]
    assert failed["error"]["message"] == failed["reason"] == state["cause"]


def test_deep_params_make_a_bounded_event_not_a_crash() -> None:
    deep: Any = "leaf"
    for _ in range(100):  # deeper is refused where the message enters (proxy.mcp.jsonrpc)
        deep = {"k": deep}
    call = make_call(tool_call("search", 1, deep=deep))
    event = make_event("call_failed", call, error={"kind": "timeout", "message": "late"}, include_params=True)
    assert len(orjson.dumps(event)) <= MAX_EVENT_BYTES


def test_a_plain_log_line_is_bounded_like_an_event() -> None:
    """With events off (or not written as log lines) a failure is one structlog line: bounded the same way."""
    import structlog

    events = EventRecorder(EventBus(), enabled=False)
    huge = "x" * (8 * 1024 * 1024)
    with structlog.testing.capture_logs() as logs:
        events.call_failed(make_call(tool_call("search")), {"kind": "tool_error", "message": huge}, 1.0, reason=huge)
    (line,) = logs
    assert len(line["error"]) == len(line["reason"]) < MAX_FIELD_CHARS + 40


async def test_over_http_an_untrusted_upstreams_listing_sets_real_names_apart(upstream: FaultUpstream) -> None:
    """The wiring: a tools/list through the proxy fills the catalog (trust_annotations off: its hints
    are not believed for retries), and the events then fold invented names into the overflow summary."""
    config = proxy_config(upstream.url, events={"summary_interval": "1h"})
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        status, _, _ = await post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert status == 200
        for n in range(30):
            await post(url, call_tool(f"junk-{n}"))
        await post(url, call_tool("lookup"))
        route = proxy.runtime.current.routes["/mcp"]
        assert route.state.catalog.has("lookup") and len(route.state.catalog) == len(TOOLS)
        assert route.annotations.safe_to_retry("lookup") is False  # declared read-only, but not trusted
        proxy.events.flush_summaries()
        calls = {(e["method"], e["tool"]): e["calls"] for e in proxy.bus.recent() if e["type"] == "call_ok"}
    assert calls == {("tools/list", None): 1, ("tools/call", OVERFLOW): 30, ("tools/call", "lookup"): 1}
