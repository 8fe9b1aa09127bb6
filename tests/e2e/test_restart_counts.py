"""A call replayed after a server restart runs exactly once, and the proxy's attempts are exact.

The server is killed and started again on the same port. A legacy client's next ``tools/call`` of a
tool that is NOT idempotent meets the loss of its session; the server refused it ("session not
found") without running it, so the proxy's replay on the rebuilt session is its one execution.

* ``record`` (the SDK server and the FastMCP restart app) appends a line per execution, with the
  process id, to a file the test reads: exactly one line for the replayed call, from the restarted
  process; none for the same call sent straight to the server (refused), and the call made before
  the restart is not run again.
* server-everything has no such tool; its ``toggle-subscriber-updates`` (``idempotentHint: false``)
  flips a per-session state and says which way: the replayed call answers "Started" and the next
  one "Stopped" on the same upstream session, which a double execution could not produce.
* Attempts, from the proxy's events: the call that met the loss has one ``session_lost``
  (``recovering``) and one ``session_recovered`` (generation 1, ``tools/call``): two upstream
  attempts, the refused one and the replay; no retry, no failure. Raw HTTP without a GET stream, so
  the call is the only request that can meet the loss; the SDK client (whose GET stream may meet it
  first) is held to one rebuild and one execution.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import httpx2
import pytest

from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.restart_support import (
    ProxyEvents,
    RawSession,
    brief,
    executions,
    of_type,
    sdk_text,
    session_refused,
    tool_text,
    within,
)
from tests.e2e.upstreams import FASTMCP_RESTART, NPM_EVERYTHING, SDK, ServerSpec
from tests.e2e.wire import WireLog, sdk_client

pytestmark = pytest.mark.asyncio(loop_scope="package")

RECORDING_SERVERS = [pytest.param(spec, id=spec.name) for spec in (FASTMCP_RESTART, SDK)]


def attempts(events: list[dict[str, Any]]) -> dict[str, list[tuple[Any, ...]]]:
    """The events that count a call's upstream attempts, reduced to what the tests compare."""
    return {
        "session_lost": [(e["method"], e["tool"], e.get("recovery")) for e in of_type(events, "session_lost")],
        "session_recovered": [
            (e["method"], e["tool"], e.get("generation"), e.get("restored")) for e in of_type(events, "session_recovered")
        ],
        "retry": [(e["method"], e["tool"]) for e in of_type(events, "retry")],
        "call_failed": [(e["method"], e["tool"]) for e in of_type(events, "call_failed")],
    }


async def session_recoveries(stack: Stack) -> dict[str, float]:
    """``mcp_proxy_session_recoveries_total`` of the upstream, by outcome."""
    async with httpx2.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{stack.admin_url}/metrics")).text
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("mcp_proxy_session_recoveries_total{"):
            labels, value = line[len("mcp_proxy_session_recoveries_total{") :].split("} ")
            outcome = dict(part.split("=", 1) for part in labels.split(","))["outcome"].strip('"')
            counts[outcome] = float(value)
    return counts


@pytest.mark.parametrize("spec", RECORDING_SERVERS)
async def test_replayed_call_executes_once(spec: ServerSpec, stack_for: StackFactory) -> None:
    """Raw HTTP, no GET stream: exact executions and exact attempts."""
    stack = await stack_for(spec, own_server=True)
    events = ProxyEvents(stack.admin_url)
    path = stack.upstream.executions_path
    what = f"{spec}: record across a server restart"
    key = {label: f"{label}-{uuid.uuid4().hex}" for label in ("before", "direct", "replayed", "next")}
    async with httpx2.AsyncClient(timeout=30) as http:
        proxied = await RawSession.open(http, stack.url)
        direct = await RawSession.open(http, stack.direct_url)
        first_pid = stack.upstream.pid
        answer = await proxied.tool("record", {"key": key["before"]})
        assert tool_text(answer, f"{what}: before it") == f"recorded {key['before']}"
        assert executions(path, key["before"]) == [first_pid]

        mark = await events.mark()
        await stack.upstream.restart()
        pid = stack.upstream.pid
        assert pid != first_pid
        session_refused(await direct.tool("record", {"key": key["direct"]}), f"{what}: the direct client")
        answer = await proxied.tool("record", {"key": key["replayed"]})
        assert tool_text(answer, f"{what}: the replayed call") == f"recorded {key['replayed']}"
        answer = await proxied.tool("record", {"key": key["next"]})
        assert tool_text(answer, f"{what}: the next call") == f"recorded {key['next']}"

        ran = {label: executions(path, k) for label, k in key.items()}
        assert ran == {"before": [first_pid], "direct": [], "replayed": [pid], "next": [pid]}, what
        seen = await events.since(mark)
        assert attempts(seen) == {
            "session_lost": [("tools/call", "record", "recovering")],
            "session_recovered": [("tools/call", "record", 1, ["initialized"])],
            "retry": [],
            "call_failed": [],
        }, f"{what}: {brief(seen)}"
        assert await session_recoveries(stack) == {"recovered": 1.0}, what


@pytest.mark.parametrize("spec", RECORDING_SERVERS)
async def test_sdk_client_call_executes_once(spec: ServerSpec, stack_for: StackFactory) -> None:
    """The official SDK client (legacy, GET stream open): one rebuild, one execution per call."""
    stack = await stack_for(spec, own_server=True)
    events = ProxyEvents(stack.admin_url)
    path = stack.upstream.executions_path
    what = f"{spec}: the SDK client's record across a server restart"
    key = {label: f"{label}-{uuid.uuid4().hex}" for label in ("before", "after", "next")}
    async with contextlib.AsyncExitStack() as scope:
        log = WireLog()
        client = await scope.enter_async_context(sdk_client(stack.url, "legacy", log))
        await within(log.get_stream_open.wait(), f"{what}: the client's GET stream")
        first_pid = stack.upstream.pid
        result = await client.call_tool("record", {"key": key["before"]})
        assert sdk_text(result, what) == f"recorded {key['before']}"

        mark = await events.mark()
        await stack.upstream.restart()
        pid = stack.upstream.pid
        for label in ("after", "next"):
            result = await client.call_tool("record", {"key": key[label]})
            assert sdk_text(result, f"{what}: {label}") == f"recorded {key[label]}"

        ran = {label: executions(path, k) for label, k in key.items()}
        assert ran == {"before": [first_pid], "after": [pid], "next": [pid]}, what
        seen = await events.wait_for(mark, lambda e: bool(of_type(e, "session_recovered")), f"{what}: recovered")
        counted = attempts(seen)
        assert {generation for _, _, generation, _ in counted["session_recovered"]} == {1}, f"{what}: {brief(seen)}"
        assert {recovery for _, _, recovery in counted["session_lost"]} == {"recovering"}, f"{what}: {brief(seen)}"
        assert counted["retry"] == counted["call_failed"] == [], f"{what}: {brief(seen)}"


async def test_replayed_toggle_executes_once(stack_for: StackFactory) -> None:
    """server-everything: the replayed non-idempotent call's answer witnesses one execution."""
    stack = await stack_for(NPM_EVERYTHING, own_server=True)
    events = ProxyEvents(stack.admin_url)
    what = "npm-everything: toggle-subscriber-updates across a server restart"
    toggle = "toggle-subscriber-updates"
    async with httpx2.AsyncClient(timeout=30) as http:
        proxied = await RawSession.open(http, stack.url)
        direct = await RawSession.open(http, stack.direct_url)
        assert tool_text(await proxied.tool(toggle, {}), what).startswith("Started")
        assert tool_text(await proxied.tool(toggle, {}), what).startswith("Stopped")

        mark = await events.mark()
        await stack.upstream.restart()
        session_refused(await direct.tool(toggle, {}), f"{what}: the direct client")
        started = tool_text(await proxied.tool(toggle, {}), f"{what}: the replayed call")
        stopped = tool_text(await proxied.tool(toggle, {}), f"{what}: the next call")
        # The same upstream session (named in both answers), new since the restart.
        upstream_session = started.removeprefix("Started simulated resource updated notifications for session ").split()[0]
        assert started.startswith("Started ") and upstream_session != proxied.session_id, f"{what}: {started}"
        assert stopped == f"Stopped simulated resource updates for session {upstream_session}", f"{what}: {stopped}"

        seen = await events.since(mark)
        assert attempts(seen) == {
            "session_lost": [("tools/call", toggle, "recovering")],
            "session_recovered": [("tools/call", toggle, 1, ["initialized"])],
            "retry": [],
            "call_failed": [],
        }, f"{what}: {brief(seen)}"
