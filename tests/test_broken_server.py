"""A broken server, scripted byte by byte on 127.0.0.1: the server's own answer reaches the client that
asked, and the proxy never corrupts a stream (its own error event is never glued to a half event, a body
HTTP forbids is never sent, another request's answer never passes, one id gets one answer, a connection
the server may not have read to its end never carries the next request)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from proxy.app import ProxyServer, running_proxy
from proxy.mcp.sse import SSEEvent, SSEParser
from tests.conftest import proxy_config
from tests.test_forwarding import JSON_HEADERS
from tests.test_http_client import RawServer, Script, read_request

CALL = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "x", "arguments": {}}}
READ = {"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": "x://y"}}
FINAL = b'{"jsonrpc":"2.0","id":9,"result":{"content":[]}}'
PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}'
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


# -- silence in a buffered read is not the upstream failing ---------------------------------------------


async def test_a_buffered_read_silent_past_stream_idle_never_opens_the_breaker() -> None:
    """The failure table: an SSE answer silent past `stream_idle` counts against nothing (a long run
    without progress looks the same), a read being buffered included."""
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(event(PROGRESS)))
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
