"""A kept legacy session's GET stream through a real proxy (in-process, `proxy.server.session_stream`):
the client's stream outlives the upstream's (a restart, a dropped stream), resumes with Last-Event-ID when
the server gave ids and the session is the same, and never passes an event twice; it ends cleanly when the
proxy drains, is cut when the session cannot go on, and its upstream stream is closed when the client goes.
Each test compares the exact bytes the client read with the events the server sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from proxy.app import ProxyServer, running_proxy
from tests.conftest import proxy_config
from tests.session_upstream import HEADER, LegacyClient, SessionUpstream, brief, metric, session_events, until_event

LIST_CHANGED = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
UPDATED = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "file:///one"}}
PROGRESS = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}
STRAY_ANSWER = {"jsonrpc": "2.0", "id": 99, "result": {}}

Servers = Callable[..., Awaitable[SessionUpstream]]


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    made: list[SessionUpstream] = []

    async def make(**knobs: Any) -> SessionUpstream:
        server = SessionUpstream(**knobs)
        await server.start()
        made.append(server)
        return server

    yield make
    for server in made:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def config(server: SessionUpstream) -> Any:
    return proxy_config(server.url, events={"summary_interval": "1h"})


class Reader:
    """A client's GET stream: every byte it read, and how it ended (None: still open; "eof": ended
    cleanly; else the error that broke it)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.data = bytearray()
        self.ended: object = None
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for chunk in self.response.content.iter_any():
                self.data += chunk
                self._wake()
            self.ended = "eof"
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            self.ended = exc
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def read(self, expected: bytes) -> None:
        """Wait until as many bytes as `expected` came (or the stream ended), then hold them to it exactly."""
        await self.until(lambda: len(self.data) >= len(expected) or self.ended is not None)
        assert bytes(self.data) == expected

    async def close(self) -> None:
        self.response.close()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


async def open_stream(http: aiohttp.ClientSession, client: LegacyClient, **headers: str) -> Reader:
    assert client.session_id is not None
    response = await http.get(client.url, headers={HEADER: client.session_id, "Accept": "text/event-stream", **headers})
    assert response.status == 200, await response.read()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return Reader(response)


def event(server: SessionUpstream, session_id: str, message: dict[str, Any]) -> bytes:
    """Send `message` on the session's GET stream; the bytes the client must read for it."""
    return server.event_bytes(server.notify(session_id, message), message)


async def opened(server: SessionUpstream, session_id: str, times: int) -> None:
    """Wait until the server has `session_id`'s GET stream open for the `times`-th time."""
    await server.until(lambda: session_id in server.sessions and server.sessions[session_id].streams_opened == times
                       and server.sessions[session_id].stream is not None)  # fmt: skip


@pytest.mark.parametrize("event_ids", [True, False], ids=["ids", "no-ids"])
@pytest.mark.parametrize("hard", [False, True], ids=["forgets", "restarts"])
async def test_the_stream_stays_open_across_a_restart_and_passes_what_comes_after_it_once(
    servers: Servers, http: aiohttp.ClientSession, event_ids: bool, hard: bool
) -> None:
    server = await servers(event_ids=event_ids)
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        first_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, first_id, 1)
        before = event(server, first_id, LIST_CHANGED)
        await reader.read(before)

        if hard:
            await server.restart_hard()
        else:
            server.restart()
        await server.until(lambda: len(server.opened) == 2)
        rebuilt_id = server.opened[1]
        await opened(server, rebuilt_id, 1)
        after = event(server, rebuilt_id, UPDATED)
        await reader.read(before + after)
        assert reader.ended is None  # still open

        gets = [(seen.session, seen.last_event_id, seen.known) for seen in server.seen if seen.http == "GET"]
        assert gets == [
            (first_id, None, True),
            (first_id, f"{first_id}-1" if event_ids else None, False),  # the session is gone: nothing to resume
            (rebuilt_id, None, True),  # a new session's stream starts afresh
        ]
        resumed = await until_event(proxy.bus, lambda e: e["type"] == "stream_resumed")
        assert [brief(e) for e in session_events(proxy.bus)] == [
            ("session_lost", "GET", "recovering", None),
            ("session_recovered", "GET", 1, ["initialized"]),
            ("stream_resumed", "get", False, 1),
        ]
        assert resumed["upstream"] == "up" and resumed["gap_ms"] >= 0

        # The rebuild serves the client's requests too: nothing more to rebuild.
        assert (await a.call("add")).text == f"add #1 on {rebuilt_id} for a"
        assert server.initialize_requests == 2
        await reader.close()


@pytest.mark.parametrize("abort", [True, False], ids=["broken", "ended"])
async def test_a_dropped_stream_resumes_from_the_last_event_id_without_a_duplicate(
    servers: Servers, http: aiohttp.ClientSession, abort: bool
) -> None:
    server = await servers(event_ids=True)
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        first = event(server, session_id, LIST_CHANGED)
        await reader.read(first)

        server.drop_stream(session_id, abort=abort)
        # Sent while no stream is open (the proxy cannot have reopened yet: nothing ran in between): kept
        # for a resuming GET, with an answer a server replays onto it that no GET stream may carry.
        missed = event(server, session_id, UPDATED)
        event(server, session_id, STRAY_ANSWER)
        await opened(server, session_id, 2)
        live = event(server, session_id, PROGRESS)
        await reader.read(first + missed + live)
        assert reader.ended is None

        assert server.sessions[session_id].last_event_ids == [None, f"{session_id}-1"]
        assert server.initialize_requests == 1
        await until_event(proxy.bus, lambda e: e["type"] == "stream_resumed")
        assert [brief(e) for e in session_events(proxy.bus)] == [("stream_resumed", "get", True, 0)]
        await reader.close()


async def test_a_resumed_stream_is_counted(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers(event_ids=True)
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        server.drop_stream(session_id)
        await opened(server, session_id, 2)
        await until_event(proxy.bus, lambda e: e["type"] == "stream_resumed")
        try:
            assert await metric(http, proxy.admin_url, "mcp_proxy_streams_resumed_total", upstream="up", stream="get") == 1.0
        finally:
            await reader.close()


async def test_a_dropped_stream_without_event_ids_reopens_from_now_on(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers(event_ids=False)
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        first = event(server, session_id, LIST_CHANGED)
        await reader.read(first)

        server.drop_stream(session_id)
        event(server, session_id, UPDATED)  # nothing can replay it: the server gave no ids
        await opened(server, session_id, 2)
        live = event(server, session_id, PROGRESS)
        await reader.read(first + live)
        assert server.sessions[session_id].last_event_ids == [None, None]
        await until_event(proxy.bus, lambda e: e["type"] == "stream_resumed")
        assert [brief(e) for e in session_events(proxy.bus)] == [("stream_resumed", "get", False, 0)]
        await reader.close()


async def test_the_clients_own_last_event_id_goes_to_the_upstream_on_the_first_opening(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers(event_ids=True)
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        first = event(server, session_id, LIST_CHANGED)
        await reader.read(first)
        await reader.close()
        await server.until(lambda: server.sessions[session_id].stream is None)
        missed = event(server, session_id, UPDATED)
        reader = await open_stream(http, a, **{"Last-Event-ID": f"{session_id}-1"})
        await reader.read(missed)
        assert server.sessions[session_id].last_event_ids == [None, f"{session_id}-1"]
        await reader.close()


async def test_a_draining_proxy_ends_the_stream_cleanly_and_closes_the_upstreams(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    proxy = ProxyServer(config(server))
    await proxy.start()
    try:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        first = event(server, session_id, LIST_CHANGED)
        await reader.read(first)
        stopping = asyncio.create_task(proxy.stop())
        await reader.until(lambda: reader.ended is not None)
        assert reader.ended == "eof" and bytes(reader.data) == first
        await asyncio.wait_for(stopping, 30)
    finally:
        if not proxy.draining:
            await proxy.stop()
    await server.until(lambda: server.sessions[session_id].stream_ends == 1)
    assert server.sessions[session_id].streams_opened == 1


async def test_a_client_going_away_closes_the_upstream_stream(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        await reader.close()
        await server.until(lambda: server.sessions[session_id].stream_ends == 1)
        assert server.sessions[session_id].streams_opened == 1 and server.streaming() == []


async def test_a_second_stream_of_the_session_hears_the_servers_409_and_the_first_goes_on(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        async with http.get(a.url, headers={HEADER: session_id, "Accept": "text/event-stream"}) as second:
            assert second.status == 409
            assert (await second.json())["error"]["message"].startswith("Conflict")
        first = event(server, session_id, LIST_CHANGED)
        await reader.read(first)
        assert reader.ended is None
        await reader.close()


async def test_a_stream_whose_session_cannot_be_recovered_is_cut(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        server.restart()
        server.protocol = "2025-03-26"
        await reader.until(lambda: reader.ended is not None)
        assert reader.ended != "eof" and bytes(reader.data) == b""  # cut: the client sees the break
        await server.until(lambda: server.deleted == [server.opened[1]])
        assert [brief(e) for e in session_events(proxy.bus)] == [
            ("session_lost", "GET", "recovering", None),
            ("session_lost", "GET", "failed", "version_changed"),
        ]
        lost = await a.call("add")
        assert lost.status == 404 and lost.message["error"]["data"]["cause"] == "version_changed"


async def test_a_stream_of_a_session_its_client_deleted_ends_without_reopening(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        assert await a.delete() == 200
        await reader.until(lambda: reader.ended is not None)
        assert [seen.session for seen in server.seen if seen.http == "GET"] == [session_id]
        assert session_events(proxy.bus) == []


async def test_a_server_still_holding_the_broken_stream_is_asked_again_until_it_lets_go(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers(event_ids=True)
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        first = event(server, session_id, LIST_CHANGED)
        await reader.read(first)

        server.drop_stream(session_id, linger=True)
        refused = lambda: sum(1 for seen in server.seen if seen.http == "GET") >= 3  # noqa: E731
        await server.until(refused)  # two reopenings answered 409: the client's stream stays open meanwhile
        assert reader.ended is None and server.sessions[session_id].streams_opened == 1
        server.let_go(session_id)
        await opened(server, session_id, 2)
        live = event(server, session_id, UPDATED)
        await reader.read(first + live)
        assert server.sessions[session_id].last_event_ids == [None, f"{session_id}-1"]
        await until_event(proxy.bus, lambda e: e["type"] == "stream_resumed")
        assert [brief(e) for e in session_events(proxy.bus)] == [("stream_resumed", "get", True, 0)]
        await reader.close()


async def test_an_upstream_gone_past_the_resume_window_cuts_the_clients_stream(
    servers: Servers, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy.server import session_stream

    monkeypatch.setattr(session_stream, "RESUME_WINDOW", 0.2)
    server = await servers()
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        await server.stop()  # and never back
        await reader.until(lambda: reader.ended is not None)
        assert reader.ended != "eof" and bytes(reader.data) == b""
        assert session_events(proxy.bus) == []


async def test_a_stream_and_a_call_meeting_one_loss_share_one_rebuild(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        await a.initialize()
        reader = await open_stream(http, a)
        await server.until(lambda: len(server.streaming()) == 1)
        server.hold_losses = 2  # the stream's reopening and the call both meet the loss before either hears it
        server.restart()
        called = await a.call("add")
        assert called.status == 200
        rebuilt_id = server.opened[1]
        await opened(server, rebuilt_id, 1)
        assert server.initialize_requests == 2 and server.runs == {(rebuilt_id, "add"): 1}
        after = event(server, rebuilt_id, UPDATED)
        await reader.read(after)
        await until_event(proxy.bus, lambda e: e["type"] == "stream_resumed")
        assert sorted(brief(e) for e in session_events(proxy.bus)) == [
            ("session_lost", "GET", "recovering", None),
            ("session_lost", "tools/call", "recovering", None),
            ("session_recovered", "GET", 1, ["initialized"]),
            ("session_recovered", "tools/call", 1, ["initialized"]),
            ("stream_resumed", "get", False, 1),
        ]
        await reader.close()


async def test_after_the_proxys_own_restart_the_client_reopens_its_stream_on_the_session_carried_over(
    servers: Servers, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    server = await servers()
    settings = proxy_config(server.url, sessions_file=str(tmp_path / "sessions.json"), events={"summary_interval": "1h"})
    async with running_proxy(settings) as first:
        a = LegacyClient(http, first.url + "/mcp", "a")
        await a.initialize()
        server.restart()
        assert (await a.call("add")).status == 200  # rebuilt: only the proxy routes a's id now
        rebuilt_id = server.opened[1]
        reader = await open_stream(http, a)
        await opened(server, rebuilt_id, 1)
    await reader.until(lambda: reader.ended is not None)
    assert reader.ended == "eof"  # ended cleanly by the draining proxy: an SDK client reopens it
    async with running_proxy(settings) as second:
        a.url = second.url + "/mcp"
        reader = await open_stream(http, a)
        await opened(server, rebuilt_id, 2)
        sent = event(server, rebuilt_id, UPDATED)
        await reader.read(sent)
        assert server.initialize_requests == 2 and session_events(second.bus) == []
        await reader.close()


async def test_half_an_event_cut_by_a_break_never_reaches_the_client(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers(event_ids=True)
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        first = event(server, session_id, LIST_CHANGED)
        whole = SessionUpstream.event_bytes(f"{session_id}-2", UPDATED)
        server.send_raw(session_id, whole[: len(whole) // 2])  # the server dies halfway through an event
        await reader.read(first)
        server.drop_stream(session_id)
        again = event(server, session_id, UPDATED)  # what the server replays from the last whole event
        await opened(server, session_id, 2)
        await reader.read(first + again)
        assert again == whole
        await reader.close()


async def test_a_stream_that_ends_as_soon_as_it_opens_is_reopened_ever_more_slowly(
    servers: Servers, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from proxy.server import session_stream

    waits: list[float] = []
    sleep = asyncio.sleep

    async def recorded(awaited: Any, delay: float) -> None:
        """The stream's pause (`asyncio.wait_for` of the session's rebuild, `delay` at most): noted, then
        over at once, as if no rebuild came."""
        waits.append(delay)
        awaited.close()
        await sleep(0)
        raise TimeoutError

    monkeypatch.setattr(session_stream, "asyncio", SimpleNamespace(wait_for=recorded))
    monkeypatch.setattr(session_stream, "random", SimpleNamespace(random=lambda: 1.0))  # the jitter's ceiling
    server = await servers()
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        session_id = await a.initialize()
        reader = await open_stream(http, a)
        await opened(server, session_id, 1)
        server.end_streams_at_once = True
        server.drop_stream(session_id)
        await server.until(lambda: server.sessions[session_id].streams_opened >= 6)
        await reader.close()
    assert waits[:5] == [0.05, 0.1, 0.2, 0.4, 0.8]


@pytest.mark.parametrize("answer", ["json", "sse"])
async def test_a_subscription_made_before_a_restart_still_delivers_its_updates_after_it(
    servers: Servers, http: aiohttp.ClientSession, answer: str
) -> None:
    server = await servers(answer=answer)
    async with running_proxy(config(server)) as proxy:
        a = LegacyClient(http, proxy.url + "/mcp", "a")
        first_id = await a.initialize()
        assert (await a.request("resources/subscribe", {"uri": "file:///one"})).status == 200
        reader = await open_stream(http, a)
        await opened(server, first_id, 1)
        server.restart()
        await server.until(lambda: len(server.opened) == 2)
        rebuilt_id = server.opened[1]
        await opened(server, rebuilt_id, 1)
        assert server.update_resource("file:///one") == [rebuilt_id]
        await reader.read(server.sessions[rebuilt_id].events[0][1])
        assert b"notifications/resources/updated" in reader.data
        recovered = [e for e in session_events(proxy.bus) if e["type"] == "session_recovered"]
        assert [e["restored"] for e in recovered] == [["initialized", "subscriptions:1"]]
        await reader.close()
