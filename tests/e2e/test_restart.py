"""A real server restarts in place (killed, started again on the same port) while the proxy runs.

Every session the server had is gone, and so is every connection the proxy pooled to it. Each test
has a server instance of its own, so the restart touches nothing else.

* Legacy era: a client left holding its session keeps working through the proxy, without
  initializing again: the proxy notices the loss on the first request after the restart,
  initializes a new upstream session, maps the client's session id to it and replays the request,
  so the client sees the answer of the replay. Shown for raw HTTP and for the official SDK client
  (``mode="legacy"`` and ``"auto"``), each beside a client talking to the server directly that was
  left in the same state and gets the server's own unknown-session answer (404, or
  server-everything's 400 -32000): the difference is the proxy's doing. The proxy reports one
  ``session_lost`` (``recovery: "recovering"``) and one ``session_recovered`` (generation 1) for the
  session; a new session through the proxy works, and the proxy's first health probe after the
  restart succeeds (a probe stuck on a session from before the restart would pull ``/readyz``).
* 2026-07-28 era: nothing is stateful, so the SDK client that was working before the restart just
  keeps working through the proxy, call after call, and a raw request gets what it gets direct.

Subscriptions and GET streams across the restart: ``test_restart_streams.py``; exact executions of a
replayed non-idempotent call: ``test_restart_counts.py``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx2
import pytest
from mcp import Client

from tests.e2e.admin import assert_upstream_fine, wait_for_probe_after
from tests.e2e.conftest import StackFactory
from tests.e2e.restart_support import (
    ProxyEvents,
    RawSession,
    brief,
    of_type,
    result_of,
    session_refused,
    tool_text,
    within,
)
from tests.e2e.upstreams import SDK_MODE, SERVER_ERAS, SERVERS, Era, ServerSpec
from tests.e2e.wire import REPEAT, good_call, modern_request, open_sdk_pair, raw_burst, sdk_outcome
from tests.sdk_helpers import MODERN_VERSION

pytestmark = pytest.mark.asyncio(loop_scope="package")

MODERN_ERAS = [param for param in SERVER_ERAS if param.values[1] == "modern"]
LEGACY_SERVERS = [pytest.param(spec, id=spec.name) for spec in SERVERS if "legacy" in spec.eras]
SDK_MODES = ("legacy", "auto")
"""``auto`` probes ``server/discover`` first: the 2026-07-28 era where the server speaks it (FastMCP,
the SDK server), the legacy era where it does not (server-everything)."""


@pytest.mark.parametrize(("spec", "era"), MODERN_ERAS)
async def test_modern_restart(spec: ServerSpec, era: Era, stack_for: StackFactory) -> None:
    stack = await stack_for(spec, own_server=True)
    call = spec.good_call
    what = f"{spec}/{era} after a server restart"
    async with contextlib.AsyncExitStack() as scope:
        http = await scope.enter_async_context(httpx2.AsyncClient(timeout=30))
        good = await scope.enter_async_context(Client(stack.url, mode=SDK_MODE[era]))
        await good_call(good, call, f"{spec}/{era}: the good client before the restart")
        await stack.upstream.restart()
        for i in range(REPEAT):
            await good_call(good, call, f"the good client's call #{i + 1} {what}")

        def build_call(i: int, via_proxy: bool) -> tuple[dict[str, Any], dict[str, str]]:
            return modern_request("tools/call", {"name": call.tool, "arguments": call.arguments}, 400 + i, call.tool)

        await raw_burst(http, stack.url, stack.direct_url, build_call, what)
        await assert_upstream_fine(stack.admin_url, what, retries_allowed=True)


@pytest.mark.parametrize("spec", LEGACY_SERVERS)
async def test_raw_session_survives_restart(spec: ServerSpec, stack_for: StackFactory) -> None:
    """Raw HTTP, no GET stream: the first request after the restart meets the loss, and is replayed."""
    stack = await stack_for(spec, own_server=True)
    events = ProxyEvents(stack.admin_url)
    call = spec.good_call
    what = f"{spec} after a server restart"
    async with httpx2.AsyncClient(timeout=30) as http:
        proxied = await RawSession.open(http, stack.url)
        direct = await RawSession.open(http, stack.direct_url)
        tools = result_of(await proxied.call("tools/list"), f"{spec}: tools/list before the restart")
        mark = await events.mark()
        await stack.upstream.restart()
        restarted = time.monotonic()

        # The first request after the restart: the one that meets the loss and is replayed. (The
        # direct client, in the same state, goes first: it does not touch the proxy.)
        session_refused(await direct.tool(call.tool, call.arguments), f"the direct client's call {what}")
        first = await proxied.tool(call.tool, call.arguments)
        assert tool_text(first, f"the left-over session's first call {what}") == call.text
        assert first.session_id in (None, proxied.session_id), f"{what}: the answer names another session"
        for i in range(REPEAT):
            session_refused(await direct.call("tools/list"), f"the direct client's tools/list #{i + 1} {what}")
            answer = await proxied.call("tools/list")
            assert result_of(answer, f"tools/list #{i + 1} {what}") == tools, f"{what}: tools/list changed"
            assert answer.session_id in (None, proxied.session_id), f"{what}: the answer names another session"

        # Every request of the loop went through the recovered session: one loss, one recovery.
        seen = await events.wait_for(mark, lambda e: bool(of_type(e, "session_recovered")), f"{what}: session_recovered")
        lost = [(e["method"], e["tool"], e.get("recovery")) for e in of_type(seen, "session_lost")]
        recovered = [(e["method"], e.get("generation"), e.get("restored")) for e in of_type(seen, "session_recovered")]
        assert lost == [("tools/call", call.tool, "recovering")], f"{what}: session_lost events {brief(seen)}"
        assert recovered == [("tools/call", 1, ["initialized"])], f"{what}: session_recovered events {brief(seen)}"
        assert of_type(seen, "retry") == [] and of_type(seen, "call_failed") == [], f"{what}: {brief(seen)}"

        fresh = await RawSession.open(http, stack.url)
        assert tool_text(await fresh.tool(call.tool, call.arguments), f"a new session {what}") == call.text
        probe = await wait_for_probe_after(stack.admin_url, restarted)
        assert probe["result"] == "ok", f"{what}: the first health probe after the restart: {probe}"
        await assert_upstream_fine(stack.admin_url, what, retries_allowed=True)


@pytest.mark.parametrize("mode", SDK_MODES)
@pytest.mark.parametrize("spec", LEGACY_SERVERS)
async def test_sdk_client_survives_restart(spec: ServerSpec, mode: str, stack_for: StackFactory) -> None:
    """The official SDK client: its GET stream is open at the restart, and its calls go on after it."""
    stack = await stack_for(spec, own_server=True)
    events = ProxyEvents(stack.admin_url)
    call = spec.good_call
    what = f"{spec} SDK client (mode {mode}) after a server restart"
    async with contextlib.AsyncExitStack() as scope:
        pair = await open_sdk_pair(scope, stack.url, stack.direct_url, mode)
        await good_call(pair.proxied, call, f"{what}: before it")
        await good_call(pair.direct, call, f"{what}: the direct client before it")
        legacy = pair.proxied.protocol_version != MODERN_VERSION
        assert pair.direct.protocol_version == pair.proxied.protocol_version, what
        sessions = pair.proxied_log.session_ids()
        if legacy:
            assert len(sessions) == 1, f"{what}: session ids {sessions}"
            await within(pair.proxied_log.get_stream_open.wait(), f"{what}: the client's GET stream before it")
        mark = await events.mark()
        exchanges_before = len(pair.proxied_log.exchanges)
        await stack.upstream.restart()

        # The direct client, in the same state, fails (goes first: it does not touch the proxy).
        if legacy:
            direct = await sdk_outcome(pair.direct, pair.direct_log, lambda c: c.call_tool(call.tool, call.arguments))
            assert direct.outcome[0] == "error" and direct.status in (400, 404), f"{what}: the direct client: {direct}"
        else:
            await good_call(pair.direct, call, f"{what}: the direct client (stateless era)")
        for i in range(REPEAT):
            await good_call(pair.proxied, call, f"call #{i + 1} {what}")
        after = pair.proxied_log.exchanges[exchanges_before:]
        failed = [(e.method, e.status) for e in after if e.status >= 400]
        assert failed == [], f"{what}: the client saw HTTP errors {failed}"
        if not legacy:
            seen = await events.since(mark)
            assert of_type(seen, "session_lost") == of_type(seen, "session_recovered") == [], brief(seen)
            return

        # Same session id on every request after the restart: the client never initialized again.
        assert {e.session_id for e in after} == sessions, f"{what}: {after}"
        assert {e.response_session_id for e in after} <= sessions | {None}, f"{what}: {after}"
        # One rebuild of the one session, whichever requests (the GET stream, a call) met the loss: each
        # request that met it and was replayed has its session_recovered, all of generation 1.
        seen = await events.wait_for(mark, lambda e: bool(of_type(e, "session_recovered")), f"{what}: session_recovered")
        assert {e.get("generation") for e in of_type(seen, "session_recovered")} == {1}, brief(seen)
        assert {e.get("recovery") for e in of_type(seen, "session_lost")} <= {"recovering"}, brief(seen)


@pytest.mark.parametrize("spec", LEGACY_SERVERS)
async def test_session_survives_two_restarts(spec: ServerSpec, stack_for: StackFactory) -> None:
    """Two restarts, one session: rebuilt twice (generation 1, then 2), and the client's id never changes.

    The client here takes the session id of any answer that names one, as the TypeScript SDK's
    client does (it reads ``Mcp-Session-Id`` on every POST answer, not only initialize's): if the
    proxy let the rebuilt upstream session's id out, the client would switch to an id the proxy does
    not keep, and the second restart would reach it as a plain loss.
    """
    stack = await stack_for(spec, own_server=True)
    events = ProxyEvents(stack.admin_url)
    call = spec.good_call
    async with httpx2.AsyncClient(timeout=30) as http:
        proxied = await RawSession.open(http, stack.url)
        original = proxied.session_id
        for restart in (1, 2):
            what = f"{spec} after restart #{restart}"
            mark = await events.mark()
            await stack.upstream.restart()
            answer = await proxied.tool(call.tool, call.arguments)
            assert tool_text(answer, f"the session's first call {what}") == call.text
            proxied.session_id = answer.session_id or proxied.session_id
            seen = await events.since(mark)
            generations = [e.get("generation") for e in of_type(seen, "session_recovered")]
            assert generations == [restart], f"{what}: session_recovered events {brief(seen)}"
        assert proxied.session_id == original, f"{spec}: the client was handed another session id"
