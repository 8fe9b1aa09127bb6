"""The relay (`proxy.server.relay`): every SSE answer reaches the client byte for byte, and what passes is
acted on once: a ``list_changed`` notice empties the cache's lists on a streamed answer, on a read handed on
mid-buffering and on the legacy GET stream alike, each event parsed at most once on the way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.app import ProxyServer, running_proxy
from proxy.mcp.sse import Seen, SSEWatcher
from proxy.server.pump import FINISHED, Watched, pump
from proxy.server.relay import DISCARDED_EVENT, MAX_HELD_EVENT
from proxy.server.responses import _EventStream
from proxy.upstream.transport import SSEBody
from tests.conftest import proxy_config
from tests.test_forwarding import JSON_HEADERS
from tests.test_http_client import RawServer, read_request

CHANGED = b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}'
CALL = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "x", "arguments": {}}}
ASKS = b'{"jsonrpc":"2.0","id":"server-1","method":"roots/list"}'


def answer_to(request_id: int) -> bytes:
    return b'{"jsonrpc":"2.0","id":%d,"result":{"content":[]}}' % request_id


def stream_for(request_id: int, *, asks: bool = False) -> bytes:
    """An SSE answer as a server may write it: comments, CRLF and CR line ends, an id, odd spacing."""
    return (
        b": a comment\r\n"
        b"event: message\r\ndata:" + CHANGED + b"\r\n\r\n"
        + (b"data: " + ASKS + b"\n\n" if asks else b"")
        + b"id: 5\rdata:  " + answer_to(request_id) + b"\r\r"
    )


class ScriptedUpstream:
    """tools/list answers JSON (a cacheable list); tools/call, resources/read and GET answer `stream_for`."""

    def __init__(self) -> None:
        self.lists = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/mcp", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/mcp"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return await self._sse(request, stream_for(0))
        body = await request.json()
        if body["method"] == "tools/list":
            self.lists += 1
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"tools": []}})
        return await self._sse(request, stream_for(body["id"], asks=body["method"] == "resources/read"))

    @staticmethod
    async def _sse(request: web.Request, raw: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for start in range(0, len(raw), 17):  # cut anywhere, as TCP may
            await response.write(raw[start : start + 17])
        await response.write_eof()
        return response


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    await server.start()
    yield server
    await server.stop()


async def list_tools(session: aiohttp.ClientSession, proxy: ProxyServer) -> None:
    async with session.post(proxy.url + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=JSON_HEADERS) as response:
        assert response.status == 200 and json.loads(await response.read())["result"]["tools"] == []


CACHED = {"cache": {"mode": "ttl", "ttl": "1h"}}


@pytest.mark.parametrize(
    ("http_method", "message"),
    [
        ("POST", {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "x", "arguments": {}}}),
        ("POST", {"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": "x://y"}}),
        ("GET", None),
    ],
    ids=["streamed call", "read handed on", "GET stream"],
)
async def test_every_sse_path_passes_the_bytes_unchanged_and_acts_on_a_list_changed_once(
    scripted: ScriptedUpstream, parsed: list[str], http_method: str, message: dict[str, Any] | None
) -> None:
    async with running_proxy(proxy_config(scripted.url, upstream=CACHED)) as proxy, aiohttp.ClientSession() as session:
        await list_tools(session, proxy)
        await list_tools(session, proxy)
        assert scripted.lists == 1  # the second came from the cache
        headers = JSON_HEADERS if message is not None else {"Accept": "text/event-stream"}
        async with session.request(http_method, proxy.url + "/mcp", json=message, headers=headers) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            body = await response.read()
        await list_tools(session, proxy)
    request_id = 0 if message is None else 9
    assert body == stream_for(request_id, asks=message is not None and message["method"] == "resources/read")
    assert scripted.lists == 2  # the notice emptied the cached list
    # Each event that can matter was parsed once, however many parts of the proxy read it; the legacy
    # GET stream watches for no response, but a response-like event there is still read (once).
    events = [CHANGED] + ([ASKS] if message is not None and message["method"] == "resources/read" else [])
    assert parsed == [event.decode() for event in events] + [" " + answer_to(request_id).decode()]  # "data:  " keeps one


FINAL = b'{"jsonrpc":"2.0","id":9,"result":{"content":[]}}'
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk_of(data: bytes) -> bytes:
    event = b"event: message\ndata: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


async def test_a_call_answer_ends_with_its_final_response_and_its_upstream_connection_is_kept() -> None:
    """The final response ends the client's answer at once, in one write with it (MCP: the server closes the
    stream next), and the stream's end is drained so the upstream connection serves the next call."""
    end = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(reader)
            writer.write(SSE_HEAD + chunk_of(FINAL))
            await end.wait()  # the stream's end waits until the client has its whole answer
            writer.write(b"0\r\n\r\n")
            end.clear()

    async with RawServer(script) as server, running_proxy(proxy_config(server.url)) as proxy, aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(proxy.url + "/mcp", json=CALL, headers=JSON_HEADERS) as response:
                body = await asyncio.wait_for(response.read(), 30)  # bounds a failure only: it would wait for `end`
            end.set()
            assert body == b"event: message\ndata: " + FINAL + b"\n\n"
    assert server.connections == 1


async def test_the_head_of_an_answer_whose_first_event_is_late_leaves_at_once() -> None:
    """The head waits for the first event only when that is there already: a client whose server thinks
    for a while before its first event still has the head straight away."""
    first = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD)
        await first.wait()
        writer.write(chunk_of(FINAL) + b"0\r\n\r\n")

    async with RawServer(script) as server, running_proxy(proxy_config(server.url)) as proxy, aiohttp.ClientSession() as session:
        try:
            async with asyncio.timeout(30):  # bounds a failure only: a head held back would wait for `first`
                response = await session.post(proxy.url + "/mcp", json=CALL, headers=JSON_HEADERS)
        finally:
            first.set()
        async with response:
            assert (response.status, response.headers["Content-Type"]) == (200, "text/event-stream")
            assert await response.read() == b"event: message\ndata: " + FINAL + b"\n\n"


async def test_aiohttp_holds_a_stream_head_for_its_first_bytes(aiohttp_client: Any) -> None:
    """Contract (aiohttp 3.14): a `StreamResponse` whose class sets `_send_headers_immediately = False`
    writes nothing at `prepare`; its head goes with the first body bytes, or with `send_headers()`."""
    written: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        response = _EventStream(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        written.append(request.writer.output_size)
        if request.query.get("flush"):
            request.writer.send_headers()
            written.append(request.writer.output_size)
        await response.write_eof(b"data: x\n\n")
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    for query in ("", "?flush=1"):
        async with client.get("/" + query) as response:
            assert await response.read() == b"data: x\n\n"
    assert written[0] == 0 and written[1] == 0 and written[2] > 0


async def test_a_read_whose_server_asks_and_answers_in_one_write_gets_that_answer_alone() -> None:
    """The buffered read hands the stream on at the question; the final response that came in the same
    chunk must still count as the answer (not be followed by a proxy error for the same id)."""
    raw = b"data: " + ASKS + b"\n\ndata: " + answer_to(9) + b"\n\n"

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(raw)  # one write: the question and the answer in one chunk
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/mcp", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/mcp"  # type: ignore[union-attr]
    read = {"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": "x://y"}}
    try:
        async with running_proxy(proxy_config(url)) as proxy, aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.post(proxy.url + "/mcp", json=read, headers=JSON_HEADERS) as response:
                    assert (response.status, await response.read()) == (200, raw)
            outcomes = [line for line in proxy.metrics.render().decode().splitlines() if line.startswith("mcp_proxy_requests_total{")]
            assert [line.split('outcome="')[1].split('"')[0] for line in outcomes] == ["ok"]
    finally:
        await runner.cleanup()


# --- a client's own DELETE ends its streams --------------------------------------------------------------


class SessionUpstream:
    """A legacy server whose DELETE ends the session's open streams: cleanly (an SDK server without an event
    store does so) or by cutting their connections (``abort``). tools/call and resources/read answer with
    one progress event and then wait for the end of their session; DELETE answers 200, or `delete_status`."""

    def __init__(self, abort: bool, delete_status: int = 200) -> None:
        self.abort = abort
        self.delete_status = delete_status
        self.url = ""
        self.streaming = asyncio.Event()
        self._open: list[tuple[web.Request, web.StreamResponse]] = []
        self._ended = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> SessionUpstream:
        app = web.Application()
        app.router.add_route("*", "/mcp", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/mcp"  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *_: object) -> None:
        self._ended.set()
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._ended.is_set():
            return web.Response(status=404)  # the session is gone, as a real server says
        if request.method == "DELETE":
            if self.delete_status == 200:
                self._ended.set()
                if self.abort:
                    for held, _ in self._open:
                        assert held.transport is not None
                        held.transport.abort()
            return web.Response(status=self.delete_status)
        body = await request.json()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Mcp-Session-Id": "s-1"})
        await response.prepare(request)
        progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}}
        await response.write(b"event: message\ndata: " + json.dumps(progress).encode() + b"\n\n")
        self._open.append((request, response))
        self.streaming.set()
        await self._ended.wait()
        if not self.abort:
            await response.write_eof()
        del body
        return response


@pytest.mark.parametrize(
    ("method", "abort"),
    [("tools/call", False), ("tools/call", True), ("resources/read", False)],
    ids=["streamed call, the server ends it", "streamed call, the server cuts it", "buffered read, the server ends it"],
)
async def test_a_clients_own_delete_ending_its_stream_is_no_upstream_failure(abort: bool, method: str) -> None:
    """The client ends its session while one of its calls streams: the server ends that stream, and the
    call ends as the client's own doing: no failure event, no upstream error, no breaker count, and no
    error event the server never sent (the client hears the stream end, as it would without the proxy).
    A read is read whole before the client hears anything: its client gets an error answer still (there
    is nothing else to give it), but nothing is counted against the upstream either."""
    events: list[dict[str, Any]] = []
    headers = {**JSON_HEADERS, "Mcp-Session-Id": "s-1", "MCP-Protocol-Version": "2025-11-25"}
    call = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {"name": "held", "uri": "x://held"}}
    async with SessionUpstream(abort) as upstream, running_proxy(proxy_config(upstream.url)) as proxy:
        proxy.bus.listeners.append(events.append)
        url = proxy.url + "/mcp"
        async with aiohttp.ClientSession() as session:

            async def ask() -> tuple[bytes, bool]:  # a read's answer starts only once it is read whole: asked aside
                got = b""
                async with session.post(url, json=call, headers=headers) as streaming:
                    try:
                        async for chunk in streaming.content.iter_any():
                            got += chunk
                    except aiohttp.ClientPayloadError:
                        return got, True  # cut
                return got, False

            asking = asyncio.ensure_future(ask())
            await upstream.streaming.wait()
            async with session.delete(url, headers=headers) as deleted:
                assert deleted.status == 200
            rest, cut = await asking
        breakers = proxy.status()["upstreams"]["up"]["breakers"]
        proxy.events.flush_summaries()
        metrics = proxy.metrics.render().decode()
    if method == "tools/call":
        assert cut is abort  # a stream the server cut reaches the client cut, as without the proxy
        assert b"notifications/progress" in rest
        assert b"error" not in rest and b"-3205" not in rest  # no error event of the proxy's making
    assert [event["type"] for event in events if event["type"] not in ("call_ok", "health_changed")] == []
    (summary,) = [event for event in events if event["type"] == "call_ok" and event["method"] == method]
    assert summary["outcomes"] == {"session_deleted": 1}
    assert "mcp_proxy_upstream_errors_total{" not in metrics
    assert [breaker["consecutive_failures"] for breaker in breakers] == [0]


async def test_a_delete_the_server_refuses_leaves_a_stream_that_then_breaks_a_failure() -> None:
    """Only a DELETE the server accepted ends its session: after a refused one (405: this server does not
    let clients end sessions), a stream that breaks is the upstream's failure as before."""
    headers = {**JSON_HEADERS, "Mcp-Session-Id": "s-1", "MCP-Protocol-Version": "2025-11-25"}
    async with SessionUpstream(abort=True, delete_status=405) as upstream, running_proxy(proxy_config(upstream.url)) as proxy:
        url = proxy.url + "/mcp"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=CALL, headers=headers) as streaming:
                await streaming.content.readuntil(b"\n\n")
                async with session.delete(url, headers=headers) as deleted:
                    assert deleted.status == 405
                for held, _ in upstream._open:
                    assert held.transport is not None
                    held.transport.abort()
                rest = await streaming.read()
        metrics = proxy.metrics.render().decode()
    assert b'"reason":"upstream_stream_broken"' in rest
    assert 'mcp_proxy_upstream_errors_total{kind="upstream_stream_broken",upstream="up"} 1.0' in metrics


async def test_the_sdk_servers_own_end_of_a_deleted_sessions_stream_is_no_failure() -> None:
    """The same against the official Python SDK's server without an event store (its streams carry no
    event ids, so an unanswered end used to get the proxy's error event): ``held`` streams one progress
    notification, then the client deletes its session."""
    import uvicorn

    from tests.sdk_helpers import legacy_handshake, legacy_headers
    from tests.servers.everything import build_app

    server = uvicorn.Server(
        uvicorn.Config(build_app("127.0.0.1", resumable=False), host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    serving = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            assert not serving.done(), "the SDK server exited early"
            await asyncio.sleep(0.01)  # polling for the bound port; bounded by the timeout
    events: list[dict[str, Any]] = []
    try:
        upstream = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/mcp"
        async with running_proxy(proxy_config(upstream)) as proxy, httpx2.AsyncClient(timeout=30) as http:
            proxy.bus.listeners.append(events.append)
            url = proxy.url + "/mcp"
            headers = legacy_headers(await legacy_handshake(http, url))
            params = {"name": "held", "arguments": {"key": "d"}, "_meta": {"progressToken": "p"}}
            call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
            async with http.stream("POST", url, json=call, headers=headers) as streaming:
                lines = streaming.aiter_lines()
                async for line in lines:
                    if "notifications/progress" in line:
                        break
                assert (await http.delete(url, headers=headers)).status_code == 200
                rest = [line async for line in lines]
            proxy.events.flush_summaries()
            metrics = proxy.metrics.render().decode()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
    assert not any("error" in line for line in rest), rest
    assert [event["type"] for event in events if event["type"] not in ("call_ok", "health_changed")] == []
    assert 'outcome="session_deleted",tool="held"' in metrics and "mcp_proxy_upstream_errors_total{" not in metrics


def test_the_sessions_clients_ended_are_bounded_oldest_out() -> None:
    from proxy.server.relay import ENDED_SESSIONS_KEPT, Relay

    relay = Relay()
    for n in range(ENDED_SESSIONS_KEPT + 1):
        relay.session_ending("up", f"s-{n}")
    relay.session_ending("up", "s-1")  # again: now the newest
    relay.session_kept("up", f"s-{ENDED_SESSIONS_KEPT}")  # refused by the server: the session lives on
    kept = set(relay._ended)
    assert len(kept) == ENDED_SESSIONS_KEPT - 1
    assert ("up", "s-0") not in kept and ("up", "s-1") in kept and ("up", f"s-{ENDED_SESSIONS_KEPT}") not in kept


# -- another request's answer (a stray) inside a call's answer: dropped, the call's own answer still passes --

STRAY = b'{"jsonrpc":"2.0","id":77,"result":{"someone":"else"}}'
PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}'
FINAL_9 = answer_to(9)


class _ChunkedBody(SSEBody):
    """An upstream SSE body that yields the chunks given, as they were cut (the relay's only source)."""

    __slots__ = ("chunks", "closed", "discarded")

    def __init__(self, chunks: list[bytes]) -> None:  # no connection behind it
        self.chunks = list(chunks)
        self.closed = self.discarded = False

    def __aiter__(self) -> _ChunkedBody:
        return self

    async def __anext__(self) -> bytes:
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    async def close(self) -> None:
        self.closed = True

    def discard_rest(self) -> None:
        self.discarded = True


class _Client:
    """What the client's answer received: every write, the last one (`write_eof`) included."""

    def __init__(self) -> None:
        self.body = bytearray()

    async def write(self, data: bytes) -> None:
        self.body += data

    async def write_eof(self, data: bytes = b"") -> None:
        self.body += data


def _pump_through(chunks: list[bytes], request_id: int = 9) -> tuple[bytes, object, list[Seen]]:
    """Run `pump` over the chunks as a call's answer; what the client got, how it ended, what was seen."""
    watched = object.__new__(Watched)
    watched.stream, watched.read, watched.early, watched.upstream, watched.cut = _ChunkedBody(chunks), b"", (), "up", b""
    watched.watcher = SSEWatcher(request_id, 64 * 1024 * 1024)
    seen: list[Seen] = []

    def look(sighting: Seen) -> bool:
        seen.append(sighting)
        return sighting.final is None

    client = _Client()
    ended = asyncio.run(pump(client, watched, look, long_lived=None))  # type: ignore[arg-type]
    return bytes(client.body), ended, seen


def _events(*datas: bytes, end: bytes = b"\n") -> bytes:
    return b"".join(b"event: message" + end + b"data: " + data + end + end for data in datas)


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_a_stray_is_dropped_at_every_split_and_the_calls_own_answer_passes_byte_for_byte(end: bytes) -> None:
    """[progress, stray, final] cut in two at every byte, and in three at every pair of points 7 bytes
    apart: the client gets exactly the progress and the final event, as the server wrote them (the stray
    ended the answer with -32055, throwing the client's own answer away; an SDK client ignores it)."""
    stream = _events(PROGRESS, STRAY, FINAL_9, end=end)
    expected = _events(PROGRESS, FINAL_9, end=end)
    cuts = [[i] for i in range(1, len(stream))]
    cuts += [[i, j] for i in range(1, len(stream), 7) for j in range(i + 1, len(stream), 7)]
    for points in cuts:
        bounds = [0, *points, len(stream)]
        body, ended, seen = _pump_through([stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])
        assert (body, ended) == (expected, FINISHED), points
        assert [s for s in seen if s.final is not None] == [Seen(final=json.loads(FINAL_9))]


@given(st.lists(st.sampled_from([PROGRESS, STRAY, STRAY + b" ", CHANGED]), max_size=6), st.data())
@settings(max_examples=300, deadline=None)
def test_strays_anywhere_any_cut_are_all_dropped_and_the_rest_passes_unchanged(
    before: list[bytes], data: st.DataObject
) -> None:
    stream = _events(*before, FINAL_9)
    points = sorted(set(data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=8))))
    bounds = [0, *points, len(stream)]
    body, ended, _ = _pump_through([stream[a:b] for a, b in zip(bounds, bounds[1:], strict=False)])
    assert (body, ended) == (_events(*(d for d in before if not d.startswith(STRAY)), FINAL_9), FINISHED)


def test_a_stray_whose_start_went_out_already_is_ended_as_an_event_mcp_clients_ignore() -> None:
    big = b'{"jsonrpc":"2.0","id":77,"result":{"someone":"' + b"x" * (MAX_HELD_EVENT + 10) + b'"}}'
    stream = _events(PROGRESS, big, FINAL_9)
    cut = len(_events(PROGRESS)) + MAX_HELD_EVENT + 20
    body, ended, _ = _pump_through([stream[:cut], stream[cut:]])
    assert ended is FINISHED
    assert body == _events(PROGRESS) + stream[len(_events(PROGRESS)) : cut] + b"\n" + DISCARDED_EVENT + _events(FINAL_9)
