"""A broken server, scripted byte by byte on 127.0.0.1: the server's own answer reaches the client that
asked, and the proxy never corrupts a stream (its own error event is never glued to a half event, a body
HTTP forbids is never sent, another request's answer never passes, one id gets one answer, a connection
the server may not have read to its end never carries the next request)."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import aiohttp
import pytest

from proxy.app import ProxyServer, running_proxy
from proxy.mcp.jsonrpc import MAX_PARSED_CONTAINERS
from proxy.mcp.sse import SSEEvent, SSEParser
from proxy.server.relay import MAX_HELD_EVENT
from tests.conftest import proxy_config
from tests.test_forwarding import JSON_HEADERS
from tests.test_http_client import RawServer, Script, read_request

CALL = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "x", "arguments": {}}}
READ = {"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": "x://y"}}
FINAL = b'{"jsonrpc":"2.0","id":9,"result":{"content":[]}}'
PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}'
LOG = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"working"}}'
STRAY = b'{"jsonrpc":"2.0","id":77,"result":{"someone":"else"}}'
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"
ONE_TRY = {"retry": {"max_attempts": 1}}
JSON_FINAL = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(FINAL), FINAL)


def in_turn(*answers: bytes) -> Script:
    """Answer each request with the next of `answers`, whichever connection it comes on (the proxy may
    open a new one after an answer it does not trust); the last one repeats."""
    served = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(answers[min(served, len(answers) - 1)])
            served += 1

    return script


def event(data: bytes) -> bytes:
    return b"event: message\ndata: " + data + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def events_of(body: bytes) -> list[SSEEvent]:
    """What a spec-following SSE client makes of a whole body (an unfinished last event is discarded)."""
    return SSEParser().feed(body)


def messages_of(body: bytes) -> list[dict[str, Any]]:
    """The JSON-RPC messages an MCP client reads: the data of ``message`` events (each must parse)."""
    return [json.loads(e.data) for e in events_of(body) if e.event == "message"]


async def post(
    proxy: ProxyServer, message: dict[str, Any], session: aiohttp.ClientSession | None = None
) -> tuple[int, str, bytes]:
    """One call; with `session`, on its kept-alive connection (so on the same upstream connections: affinity)."""
    if session is None:
        async with aiohttp.ClientSession() as session:
            return await post(proxy, message, session)
    async with session.post(proxy.url + "/mcp", json=message, headers=JSON_HEADERS) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


def metric(proxy: ProxyServer, prefix: str) -> list[str]:
    return [line for line in proxy.metrics.render().decode().splitlines() if line.startswith(prefix)]


def outcomes(proxy: ProxyServer) -> list[str]:
    return [line.split('outcome="')[1].split('"')[0] for line in metric(proxy, "mcp_proxy_requests_total{")]


# -- the proxy's error after a half-written event ------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/pro',  # mid-line
        b"event: message\ndata: " + PROGRESS + b"\n",  # whole lines, no blank line yet
        b"event: message\r\ndata: " + PROGRESS + b"\r\n",  # the same, CRLF
        b"data: " + PROGRESS + b"\r",  # a bare CR: the line ended, the event did not
    ],
    ids=["mid-line", "lines without their blank line", "crlf", "bare cr"],
)
async def test_a_stream_that_breaks_inside_an_event_ends_with_the_proxys_error_alone(tail: bytes) -> None:
    """The unfinished event never reaches the client: the proxy's error event is one event of its own."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(PROGRESS)))
        await writer.drain()
        writer.write(chunk(tail))  # then the connection breaks
        await writer.drain()

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        status, _, body = await post(proxy, CALL)
    assert status == 200
    assert body.startswith(event(PROGRESS))
    progress, error = messages_of(body)
    assert progress == json.loads(PROGRESS)
    assert error["id"] == 9 and error["error"]["code"] == -32056
    assert error["error"]["data"]["reason"] == "upstream_stream_broken"
    assert outcomes(proxy) == ["upstream_stream_broken"]


@pytest.mark.parametrize("line_end", [b"", b"\n", b"\r"], ids=["mid-line", "after a line", "after a cr"])
async def test_an_event_too_large_to_hold_that_breaks_is_ended_as_one_mcp_clients_ignore(line_end: bytes) -> None:
    """An event past `MAX_HELD_EVENT` passes as it comes; when the stream breaks inside it, the part sent is
    ended as an event of another type before the proxy's error, so neither merges with the other."""
    big = b'event: message\ndata: {"jsonrpc":"2.0","method":"notifications/message","params":{"data":"'
    big += b"x" * (2 * MAX_HELD_EVENT) + line_end

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(PROGRESS)))
        for start in range(0, len(big), 64 * 1024):
            writer.write(chunk(big[start : start + 64 * 1024]))
            await writer.drain()

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        status, _, body = await post(proxy, CALL)
    assert status == 200 and body.startswith(event(PROGRESS) + big[: MAX_HELD_EVENT // 2])
    progress, error = messages_of(body)
    assert error["id"] == 9 and error["error"]["data"]["reason"] == "upstream_stream_broken"
    assert [e.event for e in events_of(body)] == ["message", "mcp-proxy-discarded", "message"]


async def test_a_stray_too_large_to_hold_is_ended_as_an_event_mcp_clients_ignore() -> None:
    """Its start went out before it could be read: it is ended as an event MCP clients ignore, and the
    call's own answer follows."""
    stray = b'{"jsonrpc":"2.0","id":77,"result":{"someone":"' + b"x" * (2 * MAX_HELD_EVENT) + b'"}}'

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        raw = event(PROGRESS) + event(stray) + event(FINAL)
        writer.write(SSE_HEAD)
        for start in range(0, len(raw), 64 * 1024):
            writer.write(chunk(raw[start : start + 64 * 1024]))
            await writer.drain()
        writer.write(END)

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        _, _, body = await post(proxy, CALL)
    assert messages_of(body) == [json.loads(PROGRESS), json.loads(FINAL)] and body.endswith(event(FINAL))
    assert [e.event for e in events_of(body)] == ["message", "mcp-proxy-discarded", "message"]
    assert outcomes(proxy) == ["ok"]


async def test_a_stream_silent_inside_an_event_ends_with_the_proxys_error_alone() -> None:
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(PROGRESS) + b"event: message\ndata: {\"jsonrpc\""))
        await writer.drain()
        await release.wait()  # silent until the test ends

    async with RawServer(script) as server:
        upstream = {**ONE_TRY, "timeouts": {"stream_idle": "0.2s"}}
        config = proxy_config(server.url, upstream=upstream)
        try:
            async with running_proxy(config) as proxy:
                status, _, body = await post(proxy, CALL)
        finally:
            release.set()
    assert status == 200 and body.startswith(event(PROGRESS))
    progress, error = messages_of(body)
    assert error["id"] == 9 and error["error"]["data"]["reason"] == "upstream_stream_broken"


# -- a status with no body, whatever its content type -------------------------------------------------


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_an_sse_typed_answer_that_http_says_has_no_body_reaches_the_client_with_none(status: bytes) -> None:
    """A 204 or 304 has no body (RFC 9110), whatever its Content-Type says: nothing may follow its head on
    the client's connection, or the client reads it as the start of its next answer."""

    empty = b"HTTP/1.1 " + status + b"\r\nContent-Type: text/event-stream\r\n\r\n"
    async with RawServer(in_turn(empty, JSON_FINAL)) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = json.dumps(CALL).encode()
        request = (
            b"POST /mcp HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
            b"Accept: application/json, text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
        ) % (proxy.url.removeprefix("http://").encode(), len(body), body)
        writer.write(request)  # the first answer's head, then the second request on the same connection
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(request.replace(b"Host:", b"Connection: close\r\nHost:"))
        rest = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    assert head.startswith(b"HTTP/1.1 " + status.split()[0])
    assert b"chunked" not in head.lower()
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n") and rest.endswith(FINAL)


# -- another request's answer in a POST's SSE answer ----------------------------------------------------


async def test_a_response_with_another_id_in_a_streamed_answer_never_reaches_the_client() -> None:
    """Another request's answer is dropped and the client's own answer still passes, as an SDK client
    talking to the server directly ignores the unknown id and reads on (the stray used to end the answer
    with -32055, throwing the client's answer away, and count a bad_response). Nothing is counted."""

    stray = SSE_HEAD + chunk(event(PROGRESS) + event(STRAY)) + chunk(event(FINAL)) + END
    async with RawServer(in_turn(stray, SSE_HEAD + chunk(event(FINAL)) + END)) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        async with aiohttp.ClientSession() as session:  # one client: the same upstream connections
            status, _, body = await post(proxy, CALL, session)
            assert (await post(proxy, CALL, session))[2] == event(FINAL)
    assert (status, body) == (200, event(PROGRESS) + event(FINAL))
    assert server.connections == 1  # the stream ended with its response: its connection was kept
    assert outcomes(proxy) == ["ok"]


async def test_a_response_with_another_id_cut_into_pieces_never_reaches_the_client() -> None:
    raw = event(PROGRESS) + event(STRAY) + event(FINAL)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD)
        for start in range(0, len(raw), 7):
            writer.write(chunk(raw[start : start + 7]))
            await writer.drain()
        writer.write(END)

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        _, _, body = await post(proxy, CALL)
    assert body == event(PROGRESS) + event(FINAL)


async def test_a_response_with_another_id_in_a_buffered_read_is_dropped_from_it() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        raw = event(PROGRESS) + event(STRAY) + event(FINAL)
        cut = len(event(PROGRESS)) + 10  # the stray begins in the first chunk
        writer.write(SSE_HEAD + chunk(raw[:cut]) + chunk(raw[cut:]) + END)

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        status, content_type, body = await post(proxy, READ)
    assert (status, content_type, body) == (200, "text/event-stream", event(PROGRESS) + event(FINAL))
    assert outcomes(proxy) == ["ok"]


async def test_a_stream_that_ends_after_a_stray_without_the_response_is_unanswered() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(PROGRESS) + event(STRAY)) + END)

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        _, _, body = await post(proxy, CALL)
    progress, error = messages_of(body)
    assert body.startswith(event(PROGRESS)) and b"someone" not in body
    assert (error["id"], error["error"]["code"]) == (9, -32050)


async def test_after_its_final_response_nothing_more_of_a_streamed_answer_reaches_the_client() -> None:
    """The client's answer ends with its final response, wherever in a chunk that comes: what a server
    sends after it (another request's answer included) never passes."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(PROGRESS) + event(FINAL) + event(STRAY)) + END)

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        for message in (CALL, READ):
            assert (await post(proxy, message))[2] == event(PROGRESS) + event(FINAL)


@pytest.mark.parametrize("status", [b"200 OK", b"503 Service Unavailable"])
@pytest.mark.parametrize("message", [CALL, READ], ids=["streamed", "buffered"])
async def test_an_error_without_an_id_in_an_sse_answer_is_the_calls_answer(status: bytes, message: dict[str, Any]) -> None:
    """JSON-RPC's answer to what the server could not attribute (id null) answers the request, as on the
    JSON path (`AnswerTo`): it ends the client's answer as its final response. It passed on but was not
    taken for the answer: a streamed call got two answers (the server's, then the proxy's -32050) and a
    false upstream_unavailable, a buffered read a 502."""
    unattributed = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"busy"}}'

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        head = SSE_HEAD.replace(b"200 OK", status)
        writer.write(head + chunk(event(unattributed) + event(FINAL)) + END)

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        code, _, body = await post(proxy, message)
        assert (code, body) == (int(status[:3]), event(unattributed))
        assert outcomes(proxy) == ["jsonrpc_error" if status.startswith(b"200") else "http_5xx"]


# -- a final response the proxy cannot read -------------------------------------------------------------

DEEP = b'{"jsonrpc":"2.0","id":9,"result":{"deep":' + b"[" * 2000 + b"]" * 2000 + b"}}"
"""Valid JSON nested past orjson's 1024 levels: a JavaScript client reads it, the proxy cannot."""
SURROGATE = b'{"jsonrpc":"2.0","id":9,"result":{"text":"\\ud800"}}'
"""A lone surrogate escape: JSON.parse reads it, orjson refuses it."""
MANY = b'{"jsonrpc":"2.0","id":9,"result":{"many":[' + b",".join([b"[]"] * MAX_PARSED_CONTAINERS) + b"]}}"
"""More containers than the proxy parses."""


@pytest.mark.parametrize("final", [DEEP, SURROGATE, MANY], ids=["too deep", "unparseable", "too many containers"])
@pytest.mark.parametrize("message", [CALL, READ], ids=["streamed", "buffered"])
async def test_a_final_response_the_proxy_cannot_read_is_the_clients_one_answer(final: bytes, message: dict[str, Any]) -> None:
    """The server's answer passes as it is, and no proxy error follows it for the same id."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(PROGRESS)) + chunk(event(final)) + END)

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        status, content_type, body = await post(proxy, message)
    assert (status, content_type) == (200, "text/event-stream")
    assert body == event(PROGRESS) + event(final)
    assert outcomes(proxy) == ["unread_event"]


# -- an answer before the body was read, then a reused connection ---------------------------------------


@pytest.mark.parametrize("size", [20_000, 100_000, 1_000_000])
async def test_a_connection_whose_server_answered_an_error_before_reading_the_body_is_not_reused(size: int) -> None:
    """A broken server answers 413 after the head and keeps the connection, the body left in the socket's
    buffers: reused, the connection would carry that body as the next request's start."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"POST /mcp HTTP/1.1\r\n"):
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\n\r\ngarbled")
                continue
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            if length > 10_000:
                writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\ntoo much")
                continue  # the body is never read
            await reader.readexactly(length)
            writer.write(JSON_FINAL)

    large = {**CALL, "params": {"name": "x", "arguments": {"blob": "x" * size}}}
    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        async with aiohttp.ClientSession() as session:
            assert (await post(proxy, large, session))[0::2] == (413, b"too much")
            assert (await post(proxy, CALL, session))[0::2] == (200, FINAL)
    assert server.connections == 2


# -- an SSE answer in a content coding ----------------------------------------------------------------


@pytest.mark.parametrize("message", [CALL, READ], ids=["streamed", "buffered"])
async def test_an_encoded_sse_answer_passes_through_unwatched_and_unchanged(message: dict[str, Any]) -> None:
    """The proxy never asks for a coding (Accept-Encoding is not forwarded); a server that encodes anyway
    gets its answer through as it sent it: nothing is read from it, nothing is added to it."""
    encoded = gzip.compress(event(PROGRESS) + event(FINAL))
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await read_request(reader))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        writer.write(head + chunk(encoded[:20]) + chunk(encoded[20:]) + END)

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            headers = {**JSON_HEADERS, "Accept-Encoding": "gzip"}
            async with session.post(proxy.url + "/mcp", json=message, headers=headers) as response:
                status, coding, body = response.status, response.headers.get("Content-Encoding"), await response.read()
    assert (status, coding, body) == (200, "gzip", encoded)
    assert b"accept-encoding" not in received[0].lower()
    assert outcomes(proxy) == ["unwatched"]


async def test_an_encoded_sse_answer_that_breaks_reaches_the_client_broken() -> None:
    """Nothing can be added to an encoded body, so the break itself is passed on: the client's answer is
    cut, never ended as if complete."""
    encoded = gzip.compress(event(PROGRESS) + event(FINAL))

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        writer.write(head + chunk(encoded[:20]))  # then the connection breaks

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.post(proxy.url + "/mcp", json=CALL, headers=JSON_HEADERS) as response:
                assert response.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()


async def test_a_get_stream_that_breaks_reaches_the_client_broken() -> None:
    """The legacy GET stream gets no error event (it answers no request): the client sees the break, as
    it would without the proxy, and resumes with Last-Event-ID."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(b"id: 1\n" + event(PROGRESS)))  # then the connection breaks

    async with RawServer(script) as server, running_proxy(proxy_config(server.url)) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.url + "/mcp", headers={"Accept": "text/event-stream"}) as response:
                assert response.status == 200
                assert await response.content.readexactly(len(b"id: 1\n" + event(PROGRESS))) == b"id: 1\n" + event(PROGRESS)
                with pytest.raises(aiohttp.ClientPayloadError):
                    await response.read()


# -- silence in a buffered read is not the upstream failing ---------------------------------------------


async def test_a_buffered_read_silent_past_stream_idle_never_opens_the_breaker() -> None:
    """The failure table: an SSE answer silent past `stream_idle` counts against nothing (a long run
    without progress looks the same), a read being buffered included."""
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(LOG)))  # a log line (a progress notification hands the read on)
        await writer.drain()
        await release.wait()

    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(FINAL)) + END)

    scripts = iter([script, answering])
    server = RawServer(lambda reader, writer: next(scripts)(reader, writer))
    upstream = {**ONE_TRY, "timeouts": {"stream_idle": "0.2s"}, "breaker": {"failure_threshold": 1}}
    async with server, running_proxy(proxy_config(server.url, upstream=upstream)) as proxy:
        try:
            silent_status, _, silent = await post(proxy, READ)
        finally:
            release.set()
        status, _, body = await post(proxy, READ)
    assert json.loads(silent)["error"]["data"]["reason"] == "upstream_timeout" and silent_status == 504
    assert (status, body) == (200, event(FINAL))


async def test_an_error_status_streamed_as_sse_opens_the_breaker_as_the_same_json_answer_does() -> None:
    """A 503 whose JSON-RPC error comes as an SSE event is the failure its head says, counted once: its
    end recorded no success on top (which reset every streak, so such a server never opened a breaker),
    and it is reported as the JSON answer is."""
    error = b'{"jsonrpc":"2.0","id":9,"error":{"code":-32000,"message":"overloaded"}}'
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    upstream = {**ONE_TRY, "breaker": {"failure_threshold": 3}}
    async with RawServer(in_turn(head + chunk(event(error)) + END)) as server:
        async with running_proxy(proxy_config(server.url, upstream=upstream)) as proxy:
            answers = [await post(proxy, CALL) for _ in range(4)]
            breakers = proxy.runtime.current.routes["/mcp"].state.breaker.breakers
    assert [status for status, _, _ in answers[:3]] == [503, 503, 503]
    assert [messages_of(body) for _, _, body in answers[:3]] == [[json.loads(error)]] * 3  # the server's own answer
    assert answers[3][0] == 503 and json.loads(answers[3][2])["error"]["data"]["reason"] == "circuit_open"
    assert [b.state for b in breakers] == ["open"]


async def test_a_delete_excuses_only_the_streams_begun_before_it() -> None:
    """A server that keeps one session id for every client (or keeps a deleted session): a stream begun
    after some client's DELETE of that id, which then breaks, is the upstream's failure again."""
    session = {"Mcp-Session-Id": "shared"}
    broken = SSE_HEAD + chunk(event(PROGRESS))  # then the connection closes: a broken stream
    deleted = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_request(reader)
        writer.write(deleted if head.startswith(b"DELETE") else broken)
        await writer.drain()
        writer.close()

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        async with aiohttp.ClientSession() as client:
            async with client.delete(proxy.url + "/mcp", headers=session) as response:
                assert response.status == 200
            async with client.post(proxy.url + "/mcp", json=CALL, headers={**JSON_HEADERS, **session}) as response:
                body = await response.read()
    assert messages_of(body)[-1]["error"]["data"]["reason"] == "upstream_stream_broken"  # not excused


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
async def test_a_number_id_echoed_as_text_is_the_answer_as_the_sdks_correlate_it(sse: bool) -> None:
    """Both SDKs correlate ``"9"`` with ``9`` on purpose (Python's coerce_request_id, "matches the TS
    SDK"): such a server's answer reaches the client, and five of them leave the breaker closed."""
    answer = b'{"jsonrpc":"2.0","id":"9","result":{"content":[]}}'
    if sse:
        reply = SSE_HEAD + chunk(event(answer)) + END
    else:
        reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
    upstream = {**ONE_TRY, "breaker": {"failure_threshold": 2}}
    async with RawServer(in_turn(reply)) as server, running_proxy(proxy_config(server.url, upstream=upstream)) as proxy:
        answers = [await post(proxy, CALL) for _ in range(5)]
        breakers = proxy.runtime.current.routes["/mcp"].state.breaker.breakers
    assert [status for status, _, _ in answers] == [200] * 5
    assert all((messages_of(body) if sse else [json.loads(body)]) == [json.loads(answer)] for _, _, body in answers)
    assert [b.state for b in breakers] == ["closed"]


# -- progress during a buffered read ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["resources/read", "tools/list"])
async def test_a_buffered_reads_progress_reaches_the_client_while_the_server_works(method: str) -> None:
    """A read is buffered (to be retried, cached), but a progress notification hands its stream on at once,
    as a server's question does: a client that resets its timeout on progress (the TypeScript SDK's
    resetTimeoutOnProgress) timed out through the proxy, as the read was held until it ended. The server
    here answers only once the client has the progress event."""
    release = asyncio.Event()
    requests = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(SSE_HEAD + chunk(event(PROGRESS)))
        await writer.drain()
        await release.wait()
        writer.write(chunk(event(FINAL)) + END)

    message = {"jsonrpc": "2.0", "id": 9, "method": method, "params": {}}
    async with RawServer(script) as server, running_proxy(proxy_config(server.url)) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/mcp", json=message, headers=JSON_HEADERS) as response:
                try:
                    first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 30)
                finally:
                    release.set()
                rest = await response.read()
        assert (response.status, first, rest) == (200, event(PROGRESS), event(FINAL))
        assert requests == 1 and outcomes(proxy) == ["ok"]


@pytest.mark.parametrize("message", [CALL, READ], ids=["streamed", "buffered"])
async def test_a_byte_order_mark_at_the_streams_start_hides_no_response(message: dict[str, Any]) -> None:
    """The SSE spec has a client strip a UTF-8 BOM at a stream's start; the watcher reads past it too (the
    response was hidden: a streamed call got the proxy's -32050 after it, a buffered read a 502). The
    bytes pass unchanged."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(b"\xef\xbb\xbf" + event(FINAL)) + END)

    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        assert (await post(proxy, message))[::2] == (200, b"\xef\xbb\xbf" + event(FINAL))
        assert outcomes(proxy) == ["ok"]


async def test_an_error_status_streamed_as_sse_that_then_breaks_is_reported_once() -> None:
    """A 503 streamed as SSE is reported at its head; the stream then breaking before any response adds
    no second `call_failed` for the same call."""
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head + chunk(event(PROGRESS)))
        await writer.drain()
        writer.close()  # broken: no response, no last chunk

    events: list[dict[str, Any]] = []
    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        proxy.bus.listeners.append(events.append)
        status, _, _ = await post(proxy, CALL)
    assert status == 503
    assert [event["type"] for event in events if event["type"] == "call_failed"] == ["call_failed"]


@pytest.mark.parametrize(
    ("message", "ending", "kind", "streamed"),
    [(CALL, b"", "stream_broken", True), (READ, b"", "connection_lost", None),
     (CALL, END, "stream_ended", True), (READ, END, "stream_ended", None)],
    ids=["streamed, broken", "buffered, broken", "streamed, ended", "buffered, ended"],
)  # fmt: skip
async def test_call_failed_says_when_the_answer_was_already_being_relayed(
    message: dict[str, Any], ending: bytes, kind: str, streamed: bool | None
) -> None:
    """The same stream (a log event, then a break or a clean end without the response) fails a streamed call
    after its head went out (`streamed`: no retry or stored answer could act) and a buffered read before
    anything did (no field): a stream that ended unanswered is `stream_ended` either way, so only the field
    tells the analyzer whether a cached fallback could have stood in."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(LOG)) + ending)
        await writer.drain()
        writer.close()

    events: list[dict[str, Any]] = []
    async with RawServer(script) as server, running_proxy(proxy_config(server.url, upstream=ONE_TRY)) as proxy:
        proxy.bus.listeners.append(events.append)
        status, _, _ = await post(proxy, message)
    failed = [(e["error"]["kind"], e.get("streamed")) for e in events if e["type"] == "call_failed"]
    assert (status, failed) == (200 if streamed else 502, [(kind, streamed)])
