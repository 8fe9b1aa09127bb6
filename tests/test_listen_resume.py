"""A 2026-07-28 ``subscriptions/listen`` survives its upstream's restart (`proxy.server.listen_relay.ListenRelay`,
`proxy.server.listen`): the client's stream stays open, the re-issued listen's acknowledgement is swallowed,
refetch notices take its place, and every event reaches the client exactly once.

The upstream is an in-process aiohttp server on a fixed port that a test crashes (every stream's connection
reset, the port closed: connections refused) and starts again. The relay's re-issue loop waits on a
`ScriptedClock`: its sleeps take no time, are recorded, and can run a step of the test (start the upstream
again at the n-th wait), so how many re-issues an outage costs is exact, whatever the machine's speed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.app import ProxyServer, running_proxy
from proxy.config.resolve import PolicyResolver
from proxy.errors import StreamBroken
from proxy.mcp.eras import era_for
from proxy.mcp.jsonrpc import Kind, Message
from proxy.mcp.sse import SSEWatcher
from proxy.policies.base import Call
from proxy.server.listen import (
    MAX_HEAD_BYTES,
    MAX_REFETCH_NOTICES,
    STABLE_AFTER,
    SUBSCRIPTION_ID,
    ListenResume,
    narrowed,
    read_head,
    refetch_notices,
)
from proxy.server.relay import Relay
from tests.conftest import proxy_config
from tests.sdk_helpers import free_port

LISTEN_ID = "listen-1"
FILTER = {"toolsListChanged": True, "resourceSubscriptions": ["test://a", "test://b"]}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "listen-test", "version": "1"},
}
LISTEN = {"jsonrpc": "2.0", "id": LISTEN_ID, "method": "subscriptions/listen", "params": {"notifications": FILTER, "_meta": META}}
HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "subscriptions/listen",
    "X-Tenant": "t-7",  # any end-to-end header: the re-issue carries the client's headers unchanged
}


def frame(method: str, **params: Any) -> bytes:
    """One listen event, as the upstream (and the proxy's refetch notices) write it."""
    message = {"jsonrpc": "2.0", "method": method, "params": {"_meta": {SUBSCRIPTION_ID: LISTEN_ID}, **params}}
    return b"event: message\ndata: " + json.dumps(message, separators=(",", ":")).encode() + b"\n\n"


def ack(honoured: dict[str, Any]) -> bytes:
    return frame("notifications/subscriptions/acknowledged", notifications=honoured)


TOOLS_CHANGED = frame("notifications/tools/list_changed")
NOTICES = TOOLS_CHANGED + frame("notifications/resources/updated", uri="test://a") + frame(
    "notifications/resources/updated", uri="test://b"
)
"""What the client hears in place of a re-issue's acknowledgement of `FILTER`."""


def updated(uri: str) -> bytes:
    return frame("notifications/resources/updated", uri=uri)


class ListenServer:
    """Serves ``subscriptions/listen`` (and nothing else) on a fixed 127.0.0.1 port; a test crashes it
    (`crash`: every open stream's connection reset, the port closed) and starts it again (`start`).

    Each listen is recorded (`received`: body and headers), then does what `plan` says (consumed in order;
    ``ack`` when empty): ``ack`` answers SSE with the acknowledgement of the requested filter (or of
    `honoured`, when set) and keeps the stream open, writing what `push` sends, until `end_streams`;
    ``no-ack`` the same without the acknowledgement; ``503`` and ``400`` answer a JSON-RPC error with that
    status (400: with id null, as servers do); ``404`` a page that is no JSON-RPC; ``stall`` answers nothing until the request is cancelled
    (`stalled` is set meanwhile). `cancelled` counts the listens whose connection the proxy closed."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.plan: list[str] = []
        self.honoured: dict[str, Any] | None = None
        self.received: list[tuple[dict[str, Any], CIMultiDict[str]]] = []
        self.streams: list[tuple[web.BaseRequest, web.StreamResponse, asyncio.Event]] = []
        self.cancelled = 0
        self.stalled = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/mcp", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def reset_streams(self) -> None:
        """Every open stream's connection reset (the server process died under it)."""
        for request, _, _ in self.streams:
            assert request.transport is not None
            request.transport.abort()

    async def crash(self) -> None:
        """Every open stream's connection reset, then the port closed: what a killed server leaves."""
        self.reset_streams()
        await self.stop()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def push(self, data: bytes) -> None:
        """Write `data` on every open stream."""
        for _, response, _ in self.streams:
            await response.write(data)

    async def end_streams(self, data: bytes = b"") -> None:
        """End every open stream cleanly after `data` (a final response, or nothing: unanswered)."""
        for _, response, ended in list(self.streams):
            await response.write_eof(data)
            ended.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds, checked at each change of this server's state (bounded)."""
        async with asyncio.timeout(30):
            while not condition():
                await self._changed.wait()

    async def listens(self, count: int) -> None:
        """Wait until `count` listens were received and every one of them is answered or streaming."""
        await self.until(lambda: len(self.received) >= count and not self._pending)

    def _touch(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    _pending = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        step = self.plan.pop(0) if self.plan else "ack"
        self.received.append((body, request.headers.copy()))
        self._pending += 1
        try:
            if step in ("503", "400"):
                status = int(step)
                error = {"code": -32603 if status == 503 else -32602, "message": f"scripted {status}"}
                answer = {"jsonrpc": "2.0", "id": body["id"] if status == 503 else None, "error": error}
                return web.json_response(answer, status=status)
            if step == "404":
                return web.Response(status=404, text="Not Found")
            if step == "stall":
                self.stalled.set()
                await self._until_cancelled(asyncio.Event())
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            if step == "ack":
                await response.write(ack(self.honoured or body["params"]["notifications"]))
            held = (request, response, asyncio.Event())
            self.streams.append(held)
        finally:
            self._pending -= 1
            self._touch()
        try:
            await self._until_cancelled(held[2])
        finally:
            self.streams.remove(held)
            self._touch()
        return response

    async def _until_cancelled(self, ended: asyncio.Event) -> None:
        try:
            await ended.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self._touch()
            raise


class ScriptedClock:
    """The relay's clock: time moves only by its sleeps, which are recorded and return at once; `steps`
    maps a sleep's number (1-based) to a step of the test run before it returns (e.g. start the upstream)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.steps: dict[int, Callable[[], Awaitable[None]]] = {}

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        step = self.steps.get(len(self.sleeps))
        if step is not None:
            await step()


@pytest.fixture
async def server() -> AsyncIterator[ListenServer]:
    upstream = ListenServer()
    await upstream.start()
    yield upstream
    await upstream.stop()


def relay_of(proxy: ProxyServer) -> Relay:
    relay = proxy.handler._relay
    assert isinstance(relay, Relay)
    return relay


async def listening(proxy: ProxyServer, clock: ScriptedClock) -> tuple[aiohttp.ClientSession, aiohttp.ClientResponse]:
    """A client's listen through `proxy`, its re-issues timed by `clock`, the jitter fixed at its ceiling."""
    relay = relay_of(proxy)
    relay.clock, relay.rng = clock, lambda: 1.0
    session = aiohttp.ClientSession()
    response = await session.post(proxy.url + "/mcp", json=LISTEN, headers=HEADERS)
    assert (response.status, response.headers["Content-Type"]) == (200, "text/event-stream")
    return session, response


async def read(response: aiohttp.ClientResponse, size: int) -> bytes:
    """Exactly `size` bytes of the client's stream (bounded: a test that fails must not hang)."""
    async with asyncio.timeout(30):
        return await response.content.readexactly(size)


async def rest(response: aiohttp.ClientResponse) -> bytes:
    """The rest of the client's stream, to its end."""
    async with asyncio.timeout(30):
        return await response.content.read()


def events_of(proxy: ProxyServer, events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == kind]


async def test_a_listen_survives_an_upstream_restart_and_hears_each_event_once(server: ListenServer) -> None:
    """The upstream crashes mid-stream and is down for two re-issues (connections refused), then back: the
    client's one stream carries the first acknowledgement, the event before the crash, the refetch notices
    (no second acknowledgement) and the event after, each once. The re-issue is the client's request
    unchanged, spends no rate-limit token, and the call counts once."""
    clock = ScriptedClock()
    clock.steps[3] = server.start  # down for the 1st and 2nd re-issues, up for the 3rd
    limited = {"rate_limit": {"rate": 1, "per": 3600, "burst": 2}}
    events: list[dict[str, Any]] = []
    async with running_proxy(proxy_config(server.url, upstream=limited)) as proxy:
        proxy.bus.listeners.append(events.append)
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            assert await read(response, len(ack(FILTER))) == ack(FILTER)
            await server.push(updated("test://a"))
            assert await read(response, len(updated("test://a"))) == updated("test://a")
            await server.crash()
            await server.listens(2)
            await server.push(updated("test://b"))
            expected = NOTICES + updated("test://b")
            assert await read(response, len(expected)) == expected
            # The re-issues spent no token: the client's second listen still has the bucket's second one.
            async with session.post(proxy.url + "/mcp", json={**LISTEN, "id": "listen-2"}, headers=HEADERS) as second:
                assert second.status == 200
                await server.listens(3)
                before = server.cancelled
            await server.until(lambda: server.cancelled == before + 1)  # that client left: the proxy closed its listen
            assert proxy.runtime.current.shared.cache._generation == {"up": 1}  # the tools lists, forgotten once
            await server.end_streams(b'event: message\ndata: {"jsonrpc":"2.0","id":"listen-1","result":{}}\n\n')
            assert await rest(response) == b'event: message\ndata: {"jsonrpc":"2.0","id":"listen-1","result":{}}\n\n'
        proxy.events.flush_summaries()
        metrics = proxy.metrics.render().decode()
    assert clock.sleeps == [0.1, 0.2, 0.4]  # 3 re-issues: the backoff ceilings of tries 1, 2 and 3
    (first, _), (again, headers), _ = server.received
    assert again == first == LISTEN  # the same body, so the same JSON-RPC id: the subscription id the client knows
    assert (headers["X-Tenant"], headers["MCP-Protocol-Version"]) == ("t-7", "2026-07-28")
    assert 'mcp_proxy_requests_total{method="subscriptions/listen",outcome="ok",tool="",upstream="up"} 1.0' in metrics
    (resumed,) = events_of(proxy, events, "stream_resumed")
    assert {key: resumed[key] for key in ("upstream", "stream", "from_event_id", "generation", "gap_ms")} == {
        "upstream": "up", "stream": "listen", "from_event_id": False, "generation": 0, "gap_ms": 700.0,
    }  # fmt: skip
    assert 'mcp_proxy_streams_resumed_total{stream="listen",upstream="up"} 1.0' in metrics


async def test_a_stream_ended_cleanly_without_its_response_is_resumed_and_a_second_restart_counts_a_generation(
    server: ListenServer,
) -> None:
    """An upstream that ends the stream without the final response (a graceful restart that forgets
    to answer) is resumed as a broken one; so is the re-issued stream when it ends too."""
    clock = ScriptedClock()
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            assert await read(response, len(ack(FILTER))) == ack(FILTER)
            for count in (2, 3):
                await server.end_streams()
                await server.listens(count)
                await server.push(updated("test://a"))
                expected = NOTICES + updated("test://a")
                assert await read(response, len(expected)) == expected
    assert len(server.received) == 3
    assert clock.sleeps == [0.1, 0.2]  # the second break came before the first resumption was stable: one outage


async def test_an_event_cut_in_half_by_the_crash_never_reaches_the_client(server: ListenServer) -> None:
    """The bytes of an event the upstream had only begun are held back until its end, which never comes:
    the client's stream goes on with the notices, no half event before them (no client would parse it)."""
    clock = ScriptedClock()
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            await server.push(updated("test://a")[:30])
            server.reset_streams()
            await server.listens(2)
            await server.push(updated("test://b"))
            expected = ack(FILTER) + NOTICES + updated("test://b")
            assert await read(response, len(expected)) == expected
    assert clock.sleeps == [0.1]


async def test_a_graceful_end_is_passed_on_and_never_re_issued(server: ListenServer) -> None:
    final = b'event: message\ndata: {"jsonrpc":"2.0","id":"listen-1","result":{"_meta":{}}}\n\n'
    clock = ScriptedClock()
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            await server.end_streams(final)
            assert await rest(response) == ack(FILTER) + final
    assert (len(server.received), clock.sleeps) == (1, [])


async def test_a_narrower_acknowledgement_ends_the_stream_with_an_error_carrying_the_listen_id(server: ListenServer) -> None:
    clock = ScriptedClock()
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            server.honoured = {"toolsListChanged": True, "resourceSubscriptions": ["test://a"]}
            await server.end_streams()
            body = await rest(response)
            await server.until(lambda: server.cancelled == 1)  # the narrower stream's connection, closed at once
    assert body.startswith(ack(FILTER)) and body.endswith(b"\n\n")
    error = json.loads(body[len(ack(FILTER)) :].removeprefix(b"event: message\ndata: "))
    assert error["id"] == LISTEN_ID and error["error"]["code"] == -32056
    assert error["error"]["data"] == {"reason": "upstream_stream_broken", "upstream": "up"}
    assert "narrower filter (no longer: test://b)" in error["error"]["message"]
    assert len(server.received) == 2


async def test_an_upstream_that_stays_down_ends_the_stream_after_the_window_with_a_clear_error(server: ListenServer) -> None:
    """`timeouts.total` of the listen (a rule) is the outage's window: with ceilings 0.1, 0.2, 0.4 the
    fourth wait (0.8) no longer fits in 1 s, so three re-issues are tried, then the client hears why."""
    rule = {"rules": [{"match": {"method": "subscriptions/listen"}, "timeouts": {"total": "1s"}}]}
    clock = ScriptedClock()
    events: list[dict[str, Any]] = []
    async with running_proxy(proxy_config(server.url, upstream=rule)) as proxy:
        proxy.bus.listeners.append(events.append)
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            await server.crash()
            body = await rest(response)
    assert clock.sleeps == [0.1, 0.2, 0.4]
    error = json.loads(body[len(ack(FILTER)) :].removeprefix(b"event: message\ndata: "))
    assert (error["id"], error["error"]["code"], error["error"]["data"]["reason"]) == (LISTEN_ID, -32056, "upstream_stream_broken")
    assert "not re-established within 1s (3 tries; the last: cannot connect to upstream" in error["error"]["message"]
    (failed,) = events_of(proxy, events, "call_failed")
    assert (failed["method"], failed["reason"], failed["streamed"]) == ("subscriptions/listen", "upstream_stream_broken", True)


async def test_a_503_is_tried_again_and_a_4xx_json_rpc_error_is_the_clients_last_event_with_the_listen_id(
    server: ListenServer,
) -> None:
    clock = ScriptedClock()
    server.plan = ["ack", "503", "400"]
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            await server.end_streams()
            body = await rest(response)
        proxy.events.flush_summaries()
        metrics = proxy.metrics.render().decode()
    error = {"jsonrpc": "2.0", "id": LISTEN_ID, "error": {"code": -32602, "message": "scripted 400"}}
    assert body == ack(FILTER) + b"event: message\ndata: " + json.dumps(error, separators=(",", ":")).encode() + b"\n\n"
    assert (len(server.received), clock.sleeps) == (3, [0.1, 0.2])
    assert 'outcome="http_4xx",tool="",upstream="up"} 1.0' in metrics


async def test_a_re_issue_answered_with_no_json_rpc_at_all_ends_the_stream_with_the_proxys_error(server: ListenServer) -> None:
    clock = ScriptedClock()
    server.plan = ["ack", "404"]
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            await server.end_streams()
            body = await rest(response)
    error = json.loads(body[len(ack(FILTER)) :].removeprefix(b"event: message\ndata: "))
    assert (error["id"], error["error"]["code"]) == (LISTEN_ID, -32056)
    assert error["error"]["message"] == "upstream answered the re-issued subscriptions/listen with HTTP 404 and no JSON-RPC response"
    assert (len(server.received), clock.sleeps) == (2, [0.1])


async def test_an_open_breaker_is_not_hammered(server: ListenServer) -> None:
    """Two failures open the breaker (the break, then a 503 to the first re-issue): the next re-issues wait
    out its open period and are refused without being sent, until the window ends."""
    breaker = {"breaker": {"failure_threshold": 2, "reset_timeout": "5m"}}
    rule = {"rules": [{"match": {"method": "subscriptions/listen"}, "timeouts": {"total": "12m"}}]}
    clock = ScriptedClock()
    server.plan = ["ack", "503"]
    async with running_proxy(proxy_config(server.url, upstream={**breaker, **rule})) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            server.reset_streams()
            body = await rest(response)
    assert len(server.received) == 2  # the listen and one re-issue: the open breaker refused the others unsent
    assert clock.sleeps[:2] == [0.1, 0.2]
    assert len(clock.sleeps) == 4 and all(290 < wait <= 300 for wait in clock.sleeps[2:])  # waited out: 300 s open
    error = json.loads(body[len(ack(FILTER)) :].removeprefix(b"event: message\ndata: "))
    assert "(4 tries; the last: the circuit breaker of upstream up is open" in error["error"]["message"]


async def test_a_stream_that_broke_before_its_acknowledgement_passes_the_re_issues_one(server: ListenServer) -> None:
    """The client never saw an acknowledgement: the re-issue's is its first, passed on, and no notices."""
    clock = ScriptedClock()
    server.plan = ["no-ack"]
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            await server.end_streams()
            await server.listens(2)
            await server.push(updated("test://a"))
            expected = ack(FILTER) + updated("test://a")
            assert await read(response, len(expected)) == expected
    assert clock.sleeps == [0.1]


async def test_a_drain_during_a_re_issue_ends_the_stream_cleanly_and_closes_the_re_issue(server: ListenServer) -> None:
    clock = ScriptedClock()
    server.plan = ["ack", "stall"]
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            await server.end_streams()
            await server.stalled.wait()
            await proxy.handler.end_streams()
            assert await rest(response) == ack(FILTER)  # ended cleanly: no error event
            await server.until(lambda: server.cancelled == 1)  # the stalled re-issue's connection is closed
            assert not relay_of(proxy)._long_lived
    assert len(server.received) == 2


async def test_a_drain_during_the_backoff_ends_the_stream_cleanly(server: ListenServer) -> None:
    clock = ScriptedClock()
    waiting = asyncio.Event()

    async def drain_now() -> None:
        waiting.set()
        await asyncio.Event().wait()  # the backoff, as long as it takes: only the drain ends it

    clock.steps[1] = drain_now
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session, response:
            await server.listens(1)
            await server.end_streams()
            await waiting.wait()
            await proxy.handler.end_streams()
            assert await rest(response) == ack(FILTER)
    assert len(server.received) == 1


async def test_a_client_gone_during_a_re_issue_stops_it_and_leaves_nothing_open(server: ListenServer) -> None:
    clock = ScriptedClock()
    server.plan = ["ack", "stall"]
    async with running_proxy(proxy_config(server.url)) as proxy:
        session, response = await listening(proxy, clock)
        async with session:
            await server.listens(1)
            await server.end_streams()
            await server.stalled.wait()
            response.close()  # the client goes away while the proxy waits for the re-issue's answer
            await server.until(lambda: server.cancelled == 1)
        assert not relay_of(proxy)._long_lived
    assert len(server.received) == 2 and clock.sleeps == [0.1]


@pytest.mark.parametrize("current", [True, False], ids=["the path's route now", "the call's route"])
async def test_a_listen_whose_pool_a_reload_retired_is_re_issued_on_the_paths_route_now(
    server: ListenServer, current: bool
) -> None:
    """A reload that needs another pool retires the one the listen began on, which cuts its stream. Told
    the runtime (`Relay(current=...)`, as the handler makes it), the relay re-issues on the new pool and the
    listen goes on; without, on the closed pool, which fails every try until the window is past."""
    rule = {"rules": [{"match": {"method": "subscriptions/listen"}, "timeouts": {"total": "1s"}}]}
    config = proxy_config(server.url, upstream=rule)
    clock = ScriptedClock()
    async with running_proxy(config) as proxy:
        session, response = await listening(proxy, clock)
        relay_of(proxy)._current = proxy.runtime if current else None
        async with session, response:
            await server.listens(1)
            old = proxy.runtime.current.routes["/mcp"].upstream
            await proxy.apply(proxy_config(server.url, upstream={**rule, "pool": {"max_connections": 7}}))
            assert proxy.runtime.current.routes["/mcp"].upstream is not old
            await old.close()  # what the reload does once the old runtime's calls had their time
            if current:
                await server.listens(2)
                await server.push(updated("test://a"))
                expected = ack(FILTER) + NOTICES + updated("test://a")
                assert await read(response, len(expected)) == expected
            else:
                body = await rest(response)
                assert b"(3 tries; the last: the upstream's connection pool is closed)" in body
    assert len(server.received) == (2 if current else 1)


# --- the parts (`proxy.server.listen`), without a network --------------------------------------------------


class Chunks:
    """An upstream stream that yields the chunks given, then ends (or breaks, with `broke`)."""

    def __init__(self, chunks: list[bytes], broke: bool = False) -> None:
        self.chunks = list(chunks)
        self.broke = broke

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.broke:
            raise StreamBroken("upstream stream broke: reset", upstream="up")
        raise StopAsyncIteration

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_the_head_is_the_first_message_event_at_every_cut(end: bytes) -> None:
    """A comment and a data-less event first, then the acknowledgement and an event, in any line ending and
    cut at every byte: the head ends just past the acknowledgement's blank line, and the watcher fed the
    same bytes saw the list_changed after it when it came in the same chunk."""
    acknowledgement = ack(FILTER).replace(b"\n", end)
    stream = b": hello" + end + b"retry: 5" + end + end + acknowledgement + TOOLS_CHANGED.replace(b"\n", end)
    ack_end = stream.index(acknowledgement) + len(acknowledgement)
    for cut in range(1, len(stream)):
        head = asyncio.run(read_head(Chunks([stream[:cut], stream[cut:]]), SSEWatcher(LISTEN_ID)))
        # A CRLF cut between its CR and LF: the event ended at the CR (the LF that follows it is read as
        # that CRLF's end by the watcher, and is an empty line, which dispatches nothing, to a client).
        ends = cut if end == b"\r\n" and cut == ack_end - 1 else ack_end
        assert (head.ack, head.end, head.broke, head.ended) == (FILTER, ends, None, False), cut
        assert head.read == (stream[:cut] if cut >= ends else stream)
        tools_seen = cut < ends or cut >= len(stream) - len(end) + 1  # the event after it, whole in the head's chunk
        assert [seen.list_changed for seen in head.early] == (["tools"] if tools_seen else [])


def test_a_head_that_breaks_ends_or_outgrows_its_bound_has_no_acknowledgement() -> None:
    broken = asyncio.run(read_head(Chunks([b"data: {"], broke=True), SSEWatcher(LISTEN_ID)))
    assert (broken.read, broken.first, broken.end, isinstance(broken.broke, StreamBroken)) == (b"data: {", None, 0, True)
    ended = asyncio.run(read_head(Chunks([b": only a comment\n\n"]), SSEWatcher(LISTEN_ID)))
    assert (ended.first, ended.ended) == (None, True)
    chatter = b": " + b"x" * MAX_HEAD_BYTES + b"\n"
    long = asyncio.run(read_head(Chunks([chatter, ack(FILTER)]), SSEWatcher(LISTEN_ID)))
    assert (long.read, long.first, long.ended) == (chatter, None, False)  # the rest passes as it comes
    final = b'event: message\ndata: {"jsonrpc":"2.0","id":"listen-1","error":{"code":-32603,"message":"full"}}\n\n'
    refused = asyncio.run(read_head(Chunks([final]), SSEWatcher(LISTEN_ID)))
    assert refused.ack is None and [seen.failed for seen in refused.early] == [True]


def test_narrowed_names_what_a_second_acknowledgement_no_longer_honours() -> None:
    first = {"toolsListChanged": True, "promptsListChanged": False, "resourceSubscriptions": ["a", "b"], "x": {"k": 1}}
    assert narrowed(first, {"toolsListChanged": True, "resourceSubscriptions": ["b", "a", "c"], "x": {"k": 1}}) == []
    assert narrowed(first, {"resourceSubscriptions": ["b"], "x": {"k": 2}}) == ["toolsListChanged", "a", "x"]
    assert narrowed({}, {}) == [] and narrowed({"resourceSubscriptions": ["a"]}, {}) == ["a"]


def test_refetch_notices_cover_the_filter_and_are_bounded() -> None:
    assert refetch_notices(LISTEN_ID, FILTER) == (NOTICES, ["tools"])
    every = {"promptsListChanged": True, "resourcesListChanged": True, "toolsListChanged": True, "unknownFlag": True}
    body, kinds = refetch_notices(7, every) or (b"", [])
    assert kinds == ["tools", "prompts", "resources"] and body.count(b"list_changed") == 3 and b'subscriptionId":7}' in body
    uris = [f"test://{n}" for n in range(MAX_REFETCH_NOTICES)]
    assert refetch_notices(LISTEN_ID, {"resourceSubscriptions": uris}) is not None
    assert refetch_notices(LISTEN_ID, {"resourceSubscriptions": uris, "toolsListChanged": True}) is None


def test_an_outage_has_one_window_until_a_resumed_stream_stays_up_long_enough() -> None:
    clock = ScriptedClock()
    config = proxy_config("http://127.0.0.1:1/mcp", upstream={"timeouts": {"total": "30s", "per_try": "4s"}})
    policy = PolicyResolver(config.upstreams[0]).resolve("subscriptions/listen", None)
    call = Call(
        upstream="up", era=era_for("2026-07-28"), method="subscriptions/listen", tool=None, idempotent=False,
        client="c", credential_scope="", session_id=None, protocol="2026-07-28",
        message=Message(Kind.REQUEST, {}, LISTEN_ID, "subscriptions/listen"), body=b"", headers=CIMultiDict(),
        policy=policy,
    )  # fmt: skip
    resume = ListenResume(call, clock, rng=lambda: 1.0)
    resume.broke()
    assert [resume.delay(), resume.attempt_timeout(), resume.sent()] == [0.1, 4.0, 2]
    clock.now += 29
    assert (resume.delay(), resume.attempt_timeout()) == (0.2, 1.0)  # per_try capped by the window left
    assert resume.delay(at_least=5.0) is None  # an open breaker's period no longer fits
    resume.acknowledged(resumed=True)
    clock.now += STABLE_AFTER - 1
    resume.broke()  # broke again before it was stable: the same outage, its window spent
    assert (resume.generation, resume.delay(), resume.attempt_timeout()) == (1, None, None)
    resume.acknowledged(resumed=True)
    clock.now += STABLE_AFTER
    resume.broke()  # stable for long enough: a new outage, a fresh window and backoff
    assert (resume.generation, resume.delay(), resume.attempt_timeout(), resume.reissues) == (2, 0.1, 4.0, 1)
