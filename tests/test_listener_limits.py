"""The MCP listener's limits on what a client connection may hold, over raw sockets (HTTP clients hide them).

Header timeout, idle keep-alive timeout, send timeout (a client that never reads its answers), the
connection cap, the request-head size and header count, and a refused request without Host. Timeouts are injected short; nothing asserts on wall time: each
test waits for the proxy to close the connection (EOF), bounded only by a generous overall timeout.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter
from aiohttp.web_protocol import RequestHandler

from proxy.app import ProxyServer, running_proxy
from proxy.config.model import FD_RESERVE, MAX_DEFAULT_CONNECTIONS, MIN_CONNECTIONS, default_connection_cap
from proxy.server.listener import SEND_LOWAT, JsonRpcServer, ListenerLimits
from tests.conftest import proxy_config
from tests.fault_upstream import FaultUpstream

WAIT = 20.0
"""Bounds a failure only: a proxy that never closes would otherwise hang the test."""

PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


def request(body: bytes = PING, host: bytes | None = b"localhost", extra: bytes = b"") -> bytes:
    host_line = b"Host: " + host + b"\r\n" if host is not None else b""
    return (
        b"POST /mcp HTTP/1.1\r\n" + host_line + b"Content-Type: application/json\r\nAccept: application/json\r\n"
        + extra + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


@asynccontextmanager
async def connection(proxy: ProxyServer) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.listen_address[1])
    try:
        yield reader, writer
    finally:
        writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, Any]]:
    """One whole answer with a Content-Length: (status line, parsed JSON body)."""
    line, _, body = await read_whole(reader)
    return line, body


async def read_whole(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], dict[str, Any]]:
    """One whole answer with a Content-Length: (status line, headers, parsed JSON body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    line, headers = head_of(head)
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), WAIT)
    return line, headers, json.loads(body)


def head_of(head: bytes) -> tuple[bytes, dict[str, str]]:
    """(status line, headers by lower-case name) of an answer's head."""
    line, *fields = head.rstrip(b"\r\n").split(b"\r\n")
    return line, {name.decode().lower(): value.decode().strip() for name, _, value in (f.partition(b":") for f in fields)}


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy sends until it closes the connection."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        return b"<reset>"


def rejected(proxy: ProxyServer, reason: str) -> float:
    sample = proxy.metrics.rejected.labels(reason=reason)._value.get()
    return float(sample)


def error_of(answer: bytes) -> tuple[bytes, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    line, headers = head_of(head)
    error = json.loads(body)
    # Every refusal of the proxy's own says so, with its reason, and closes the connection.
    assert (headers["x-mcp-proxy-error"], headers["connection"]) == (error["error"]["data"]["reason"], "close")
    return line, error


# --- header timeout ------------------------------------------------------------------------------


async def test_a_trickling_head_gets_408_and_the_connection_closes(upstream: FaultUpstream) -> None:
    """Today aiohttp waits for a head up to its keep-alive of 3,630 s."""
    config = proxy_config(upstream.url, limits={"header_timeout": "200ms"})
    async with running_proxy(config) as proxy, connection(proxy) as (reader, writer):
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        await writer.drain()
        status, error = error_of(await until_closed(reader))
        assert status == b"HTTP/1.1 408 Request Timeout"
        assert error["error"]["code"] == -32600 and error["error"]["data"] == {"reason": "header_timeout"}
        assert rejected(proxy, "header_timeout") == 1
        assert upstream.attempts.total() == 0


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(upstream: FaultUpstream) -> None:
    config = proxy_config(upstream.url, limits={"header_timeout": "200ms"})
    async with running_proxy(config) as proxy, connection(proxy) as (reader, _):
        assert await until_closed(reader) == b""
        assert rejected(proxy, "header_timeout") == 1


async def test_an_idle_kept_alive_connection_is_not_cut_by_the_header_timeout(upstream: FaultUpstream) -> None:
    """Connection B is opened after A's answer and closed by the header timeout: by then A had been idle
    longer than that timeout, and still serves its next request (idle_timeout, 1h here, applies to it)."""
    config = proxy_config(upstream.url, limits={"header_timeout": "200ms", "idle_timeout": "1h"})
    async with running_proxy(config) as proxy, connection(proxy) as (a_reader, a_writer):
        a_writer.write(request())
        assert (await read_answer(a_reader))[0] == b"HTTP/1.1 200 OK"
        async with connection(proxy) as (b_reader, b_writer):
            b_writer.write(b"POST /mcp HTTP/1.1\r\n")
            assert (await until_closed(b_reader)).startswith(b"HTTP/1.1 408 ")
        a_writer.write(request())
        assert (await read_answer(a_reader))[0] == b"HTTP/1.1 200 OK"


async def test_an_idle_kept_alive_connection_closes_after_the_idle_timeout(upstream: FaultUpstream) -> None:
    config = proxy_config(upstream.url, limits={"header_timeout": "1h", "idle_timeout": "200ms"})
    async with running_proxy(config) as proxy, connection(proxy) as (reader, writer):
        writer.write(request())
        assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"
        assert await until_closed(reader) == b""  # closed between requests: nothing to answer
        assert rejected(proxy, "header_timeout") == 0


async def test_a_stream_in_progress_outlives_both_timeouts(upstream: FaultUpstream) -> None:
    """A read whose SSE answer has started (the server asked the client) and is held by the upstream:
    a second connection closed by the header timeout proves both timeouts passed; the stream goes on."""
    answer = asyncio.Event()
    upstream.fault("resources/read", sse=True, asks_client=True, gate=answer)
    config = proxy_config(
        upstream.url, limits={"header_timeout": "200ms", "idle_timeout": "200ms"},
        upstream={"timeouts": {"per_try": "1h", "total": "1h"}},
    )  # fmt: skip
    read = b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"x://y"}}'
    async with running_proxy(config) as proxy, connection(proxy) as (reader, writer):
        try:
            writer.write(request(read, extra=b"Accept: text/event-stream\r\n"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert head.startswith(b"HTTP/1.1 200 OK") and b"text/event-stream" in head
            first = await asyncio.wait_for(reader.readuntil(b"\n\n"), WAIT)
            assert b"roots/list" in first
            async with connection(proxy) as (other, _):
                assert await until_closed(other) == b""
        finally:
            answer.set()
        rest = await asyncio.wait_for(reader.readuntil(b"\r\n0\r\n\r\n"), WAIT)  # the stream's last chunk
        assert b'"id": 1, "result": {}' in rest


# --- connection cap ------------------------------------------------------------------------------


async def test_over_the_connection_cap_a_new_connection_is_closed_and_admin_still_answers(
    upstream: FaultUpstream,
) -> None:
    config = proxy_config(upstream.url, limits={"max_connections": 2})
    async with running_proxy(config) as proxy:
        async with connection(proxy) as (r1, w1), connection(proxy) as (r2, w2):
            for reader, writer in ((r1, w1), (r2, w2)):  # both accepted and answered: they hold the two places
                writer.write(request())
                assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"
                writer.write(b"POST /mcp HTTP/1.1\r\n")  # and busy: a next head is coming (idle ones make room)
                await writer.drain()
            await until_not_idle(proxy, 0)
            async with connection(proxy) as (r3, w3):
                w3.write(request())
                assert await until_closed(r3) in (b"", b"<reset>")
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.admin_url + "/metrics") as response:
                    assert response.status == 200
                    text = await response.text()
                async with session.get(proxy.admin_url + "/readyz") as response:
                    assert response.status == 200
            assert 'mcp_proxy_rejected_requests_total{reason="connection_limit"} 1.0' in text
            w1.write(request()[len(b"POST /mcp HTTP/1.1\r\n"):])  # the connections inside the cap keep serving
            assert (await read_answer(r1))[0] == b"HTTP/1.1 200 OK"
        server = proxy._proxy_runner.server  # type: ignore[union-attr]
        async with asyncio.timeout(WAIT):
            while server.open:  # type: ignore[union-attr]
                await asyncio.sleep(0.01)  # the proxy notices the two closes
        async with connection(proxy) as (reader, writer):
            writer.write(request())
            assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"


async def until_not_idle(proxy: ProxyServer, idle: int) -> None:
    """Wait until the listener counts `idle` kept-alive idle connections (the bytes sent were read)."""
    server = proxy._proxy_runner.server  # type: ignore[union-attr]
    async with asyncio.timeout(WAIT):
        while len(server._idle) != idle:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)


async def test_at_the_cap_the_longest_idle_kept_alive_connection_makes_room(upstream: FaultUpstream) -> None:
    """nginx reuses idle keep-alive connections when it runs out: a client that opened connections and went
    quiet never locks out one with something to ask. A connection with a request in progress is kept."""
    async with running_proxy(proxy_config(upstream.url, limits={"max_connections": 2})) as proxy:
        async with connection(proxy) as (r1, w1), connection(proxy) as (r2, w2):
            for reader, writer in ((r1, w1), (r2, w2)):
                writer.write(request())
                assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"
            await until_not_idle(proxy, 2)
            async with connection(proxy) as (r3, w3):
                w3.write(request())
                assert (await read_answer(r3))[0] == b"HTTP/1.1 200 OK"  # admitted
                assert await until_closed(r1) in (b"", b"<reset>")  # the longest idle made room
                w2.write(request())
                assert (await read_answer(r2))[0] == b"HTTP/1.1 200 OK"  # the other one still serves
        assert (rejected(proxy, "idle_reclaimed"), rejected(proxy, "connection_limit")) == (1, 0)


@pytest.mark.parametrize(
    ("nofile", "pools", "cap"),
    [
        (1024, [256], 1024 - 512 - FD_RESERVE),
        (1_048_576, [256, 256], MAX_DEFAULT_CONNECTIONS),
        (256, [256], MIN_CONNECTIONS),
        (4096, [], 4096 - FD_RESERVE),
    ],
)
def test_the_default_connection_cap_leaves_room_for_pools_and_reloads(nofile: int, pools: list[int], cap: int) -> None:
    assert default_connection_cap(pools, nofile) == cap


def test_a_configured_cap_wins_and_the_default_reads_the_fd_limit() -> None:
    config = proxy_config("http://127.0.0.1:1/mcp", limits={"max_connections": 7})
    assert config.limits.connection_cap([256]) == 7
    default = proxy_config("http://127.0.0.1:1/mcp").limits.connection_cap([256])
    assert MIN_CONNECTIONS <= default <= MAX_DEFAULT_CONNECTIONS


# --- request head size and header count ----------------------------------------------------------


async def test_a_head_over_the_total_size_gets_431_and_is_never_forwarded(upstream: FaultUpstream) -> None:
    """Ten 7 KB headers: each under aiohttp's 8190-byte line limit, 70 KB together (over 60 KiB)."""
    async with running_proxy(proxy_config(upstream.url)) as proxy, connection(proxy) as (reader, writer):
        writer.write(request(extra=b"".join(b"X-Big-%d: " % n + b"a" * 7000 + b"\r\n" for n in range(10))))
        status, headers, error = await read_whole(reader)
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert headers["x-mcp-proxy-error"] == "headers_too_large"
        assert error["error"]["code"] == -32600 and error["error"]["data"] == {"reason": "headers_too_large"}
        assert rejected(proxy, "headers_too_large") == 1
    assert upstream.attempts.total() == 0


async def test_an_unfinished_head_is_refused_as_soon_as_it_is_too_large(upstream: FaultUpstream) -> None:
    """No blank line ever comes: the proxy answers 431 once it holds more than the limit, and closes."""
    config = proxy_config(upstream.url, limits={"max_request_head_bytes": "2KiB", "header_timeout": "1h"})
    async with running_proxy(config) as proxy, connection(proxy) as (reader, writer):
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\n")
        for n in range(10):
            writer.write(b"X-Part-%d: " % n + b"b" * 500 + b"\r\n")
            await writer.drain()
        status, error = error_of(await until_closed(reader))
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert error["error"]["data"] == {"reason": "headers_too_large"}


@pytest.mark.parametrize(("count", "status"), [(100, 200), (101, 431)])
async def test_more_headers_than_the_count_get_431(upstream: FaultUpstream, count: int, status: int) -> None:
    """`count` header fields in all (Host, Content-Type, Accept, Content-Length and the X- ones)."""
    extra = b"".join(b"X-H-%d: 1\r\n" % n for n in range(count - 4))
    async with running_proxy(proxy_config(upstream.url)) as proxy, connection(proxy) as (reader, writer):
        writer.write(request(extra=extra))
        line, headers, body = await read_whole(reader)
        assert int(line.split()[1]) == status
        if status == 431:
            assert body["error"]["data"] == {"reason": "headers_too_large"}
            assert headers["x-mcp-proxy-error"] == "headers_too_large"
    assert upstream.attempts.total() == (1 if status == 200 else 0)


# --- Host ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "version"),
    [(None, b"HTTP/1.1"), (None, b"HTTP/1.0"), (b"", b"HTTP/1.1"), (b"  ", b"HTTP/1.0")],
    ids=["no Host 1.1", "no Host 1.0", "empty Host", "blank Host 1.0"],
)
async def test_a_request_without_host_is_refused(upstream: FaultUpstream, host: bytes | None, version: bytes) -> None:
    """Today aiohttp makes one up (socket.getfqdn()) for all but a Host-less HTTP/1.1 request, and the
    allow-list may well contain it. aiohttp refuses that one itself: its refusal says the same."""
    config = proxy_config(upstream.url, security={"allowed_hosts": ["*"]})
    async with running_proxy(config) as proxy, connection(proxy) as (reader, writer):
        writer.write(request(host=host).replace(b"HTTP/1.1", version, 1))
        line, headers, error = await read_whole(reader)
        assert line.split(b" ", 1)[1] == b"400 Bad Request"
        assert headers["x-mcp-proxy-error"] == "missing_host"
        assert error["error"]["code"] == -32600 and error["error"]["data"] == {"reason": "missing_host"}
        assert rejected(proxy, "missing_host") == 1
    assert upstream.attempts.total() == 0


async def test_bodies_and_pipelined_requests_are_not_head_bytes(upstream: FaultUpstream) -> None:
    """Only a head is measured against max_request_head_bytes: a body far larger, sent in pieces after its
    head, or two requests sent at once, are answered as usual."""
    config = proxy_config(upstream.url, limits={"max_request_head_bytes": "1KiB"})
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * 100_000 + b'"}}'
    async with running_proxy(config) as proxy, connection(proxy) as (reader, writer):
        whole = request(big)
        head_end = whole.index(b"\r\n\r\n") + 4
        writer.write(whole[:head_end])
        for start in range(head_end, len(whole), 4096):
            writer.write(whole[start : start + 4096])
            await writer.drain()
        assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"
        writer.write(request(big) + request())
        assert [(await read_answer(reader))[0] for _ in range(2)] == [b"HTTP/1.1 200 OK"] * 2
    assert upstream.attempts["ping"] == 3


async def test_a_reload_changes_the_limits_for_the_connections_that_follow(upstream: FaultUpstream) -> None:
    async with running_proxy(proxy_config(upstream.url, limits={"max_connections": 1})) as proxy:
        async with connection(proxy) as (reader, writer):
            writer.write(request())
            assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"
            writer.write(b"POST /mcp HTTP/1.1\r\n")  # busy: a next head is coming
            await writer.drain()
            await until_not_idle(proxy, 0)
            async with connection(proxy) as (refused, _):
                assert await until_closed(refused) in (b"", b"<reset>")
            await proxy.apply(proxy_config(upstream.url, limits={"max_connections": 2, "header_timeout": "200ms"}))
            async with connection(proxy) as (second, _):
                assert await until_closed(second) == b""  # accepted now, and closed by the new header timeout
            assert (rejected(proxy, "connection_limit"), rejected(proxy, "header_timeout")) == (1, 1)


# --- Expect: 100-continue ------------------------------------------------------------------------

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def expecting(body: bytes, length: int | None = None, content_type: bytes = b"application/json", version: bytes = b"1.1") -> bytes:
    """The head curl sends for a body over 1 KiB: ``Expect: 100-continue``, and the body held back."""
    return (
        b"POST /mcp HTTP/" + version + b"\r\nHost: localhost\r\nContent-Type: " + content_type
        + b"\r\nAccept: application/json\r\nExpect: 100-continue\r\nContent-Length: "
        + str(len(body) if length is None else length).encode() + b"\r\n\r\n"
    )  # fmt: skip


async def test_expect_100_continue_is_answered_before_the_body_is_sent(upstream: FaultUpstream) -> None:
    """curl waits a whole second for the 100 before sending a body over 1 KiB anyway: the proxy answers it
    at once when the request passed its cheap checks, and the upstream never sees the Expect (the proxy
    has the body already)."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b"x" * 2000 + b'"}}'
    async with running_proxy(proxy_config(upstream.url)) as proxy, connection(proxy) as (reader, writer):
        writer.write(expecting(body))
        assert await asyncio.wait_for(reader.readexactly(len(CONTINUE)), WAIT) == CONTINUE
        writer.write(body)
        line, headers, answer = await read_whole(reader)
        assert (line, answer["id"]) == (b"HTTP/1.1 200 OK", 1)
        assert headers.get("connection") != "close"
        writer.write(request())  # the connection serves on
        assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"
    assert [r.body for r in upstream.received] == [body, PING]
    assert "Expect" not in upstream.received[0].headers


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (expecting(b"", length=4 * 1024**2 + 1), b"413 Request Entity Too Large", "too_large"),
        (expecting(b"", length=2000, content_type=b"text/plain"), b"415 Unsupported Media Type", "unsupported_media_type"),
        (expecting(b"", length=2000).replace(b"POST /mcp ", b"POST /elsewhere "), b"404 Not Found", "no_endpoint"),
    ],
    ids=["declared length over max_body_bytes", "not JSON", "no endpoint"],
)
async def test_expect_100_continue_refused_by_a_cheap_check_gets_the_final_answer_at_once(
    upstream: FaultUpstream, head: bytes, status: bytes, reason: str
) -> None:
    """No 100, no body read: the final error, and the connection closes (the client may or may not send
    the body now, so nothing after it could be read as a request)."""
    async with running_proxy(proxy_config(upstream.url)) as proxy, connection(proxy) as (reader, writer):
        writer.write(head)
        line, headers, error = await read_whole(reader)
        assert line == b"HTTP/1.1 " + status
        assert error["error"]["data"]["reason"] == headers["x-mcp-proxy-error"] == reason
        assert headers["connection"] == "close"
        writer.write_eof()  # as curl, told so, closes: the proxy reads nothing more from it
        assert await until_closed(reader) == b""
    assert upstream.received == []


async def test_expect_100_continue_with_the_body_sent_anyway_or_over_http_1_0_gets_no_100(upstream: FaultUpstream) -> None:
    """A client that did not wait has its answer only (RFC 9110: the 100 may be omitted once the body is
    here); HTTP/1.0 has no 100 (RFC 9110 §10.1.1: ignore the expectation)."""
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        for version in (b"1.1", b"1.0"):
            async with connection(proxy) as (reader, writer):
                writer.write(expecting(PING, version=version) + PING)
                line, _, answer = await read_whole(reader)
                assert (line.split(b" ", 1)[1], answer["id"]) == (b"200 OK", 1)
    assert len(upstream.received) == 2


# --- send timeout --------------------------------------------------------------------------------

BIG = 4 * 1024 * 1024
"""An answer far over aiohttp's 64 KiB write high-water mark and what the kernel buffers for a small window."""
HUGE = 12 * 1024 * 1024
"""An answer whose unsent part outlasts several send timeouts at the slow reader's pace, even where the kernel
takes a few MiB of it at once (without TCP_NOTSENT_LOWAT, up to net.ipv4.tcp_wmem's maximum)."""
PAD = "x" * 8192


class BulkUpstream:
    """An MCP upstream whose answers are large: `tools/call big` answers `BIG` bytes of JSON, `tools/call
    stream` and a GET answer an endless SSE stream (8 KiB events) that ends only when the proxy goes away."""

    def __init__(self) -> None:
        self.url = ""
        self.streams = 0
        """Endless streams started."""
        self.gone = asyncio.Event()
        """Set when an endless stream's reader (the proxy) went away."""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/mcp", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/mcp"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return await self._endless(request)
        body = await request.json()
        if body.get("params", {}).get("name") == "stream":
            return await self._endless(request)
        text = "y" * (HUGE if body.get("params", {}).get("name") == "huge" else BIG)
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {"content": [{"type": "text", "text": text}]}})

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.streams += 1
        event = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": PAD}}
        line = f"event: message\ndata: {json.dumps(event)}\n\n".encode()
        try:
            while True:
                await response.write(line)
        except (asyncio.CancelledError, ConnectionError):
            self.gone.set()
            raise


@pytest.fixture
async def bulk() -> AsyncIterator[BulkUpstream]:
    server = BulkUpstream()
    await server.start()
    yield server
    await server.stop()


def call_tool(name: str) -> bytes:
    return b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"' + name.encode() + b'","arguments":{}}}'


@asynccontextmanager
async def small_window(proxy: ProxyServer, size: int = 4096) -> AsyncIterator[socket.socket]:
    """A raw client socket with a small receive buffer (no autotuning): what it does not read stays in the proxy."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.listen_address[1]))
        yield sock
    finally:
        sock.close()


async def receive_all(sock: socket.socket, pause: float = 0.0, step: int = 65536) -> bytes:
    """Everything until the proxy closes (or resets) the connection: up to `step` bytes a read, `pause`
    seconds between reads."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(WAIT * 3):
        while True:
            try:
                chunk = await loop.sock_recv(sock, step)
            except ConnectionResetError:
                return bytes(received)
            if not chunk:
                return bytes(received)
            received += chunk
            if pause:
                await asyncio.sleep(pause)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for `condition` (checked as the proxy works), bounded only by `WAIT`."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


def listener(proxy: ProxyServer) -> Any:
    return proxy._proxy_runner.server  # type: ignore[union-attr]


async def send_quietly(sock: socket.socket, data: bytes) -> None:
    """Send what the proxy will take; a proxy that hangs up halfway ends it."""
    try:
        await asyncio.get_running_loop().sock_sendall(sock, data)
    except (ConnectionError, OSError):
        pass


@pytest.mark.parametrize("pipelined", [False, True], ids=["one big answer", "30,000 pipelined small answers"])
async def test_a_client_that_never_reads_is_cut_after_the_send_timeout(bulk: BulkUpstream, pipelined: bool) -> None:
    """Today its connection (and its place under max_connections) stays for good: the header clock does
    not run while an answer is unfinished, aiohttp's keep-alive timer does not run during a write, and a
    write has no timeout of its own."""
    config = proxy_config(bulk.url, limits={"send_timeout": "500ms", "header_timeout": "1h", "idle_timeout": "1h"})
    data = request(b'{"jsonrpc":"2.0","id":1,"method":"ping"}') * 30_000 if pipelined else request(call_tool("big"))
    async with running_proxy(config) as proxy, small_window(proxy) as sock:
        sender = asyncio.create_task(send_quietly(sock, data))
        try:
            await until(lambda: rejected(proxy, "send_timeout") == 1)
            await until(lambda: listener(proxy).open == 0)  # its place under the cap is free again
        finally:
            sender.cancel()
        received = await receive_all(sock)
        if pipelined:  # cut before the last of its answers
            assert received.count(b"HTTP/1.1 200 OK") < 30_000
        else:
            assert len(received) < BIG
        async with connection(proxy) as (reader, writer):  # the listener serves others as before
            writer.write(request())
            assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"


async def test_a_slow_reader_that_keeps_reading_gets_the_whole_answer(bulk: BulkUpstream) -> None:
    """It takes 16 KiB at a time, with pauses far shorter than the send timeout, for several times that
    timeout in all: its progress restarts the clock although the write buffer stays over its high-water
    mark (aiohttp resumes writing only at the end). Its window is 64 KiB: below one segment, Linux's
    loopback stalls in the persist timer, and the client then does take nothing for a while."""
    config = proxy_config(bulk.url, limits={"send_timeout": "500ms"})
    closing = request(call_tool("huge")).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1)
    async with running_proxy(config) as proxy, small_window(proxy, 64 * 1024) as sock:
        await asyncio.get_running_loop().sock_sendall(sock, closing)
        received = await receive_all(sock, pause=0.005, step=16 * 1024)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert len(json.loads(body)["result"]["content"][0]["text"]) == HUGE
        assert rejected(proxy, "send_timeout") == 0


@pytest.mark.parametrize("method", ["POST", "GET"], ids=["SSE answer", "legacy GET stream"])
async def test_a_stream_to_a_client_that_never_reads_is_cut_and_its_upstream_connection_released(
    bulk: BulkUpstream, method: str
) -> None:
    config = proxy_config(bulk.url, limits={"send_timeout": "500ms", "header_timeout": "1h", "idle_timeout": "1h"})
    if method == "POST":
        data = request(call_tool("stream"), extra=b"Accept: text/event-stream\r\n")
    else:
        data = b"GET /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nMcp-Session-Id: s1\r\n\r\n"
    async with running_proxy(config) as proxy, small_window(proxy) as sock:
        await asyncio.get_running_loop().sock_sendall(sock, data)
        await until(lambda: rejected(proxy, "send_timeout") == 1)
        await asyncio.wait_for(bulk.gone.wait(), WAIT)  # the upstream saw the proxy go
        pool = proxy.runtime.current.routes["/mcp"].upstream.pool
        await until(lambda: pool.size == 0 and listener(proxy).open == 0)
        assert bulk.streams == 1
        assert len(await receive_all(sock)) > 0


async def test_the_aiohttp_internals_the_send_timeout_relies_on() -> None:
    """`_Connection` hears the write buffer's high-water mark through `pause_writing`/`resume_writing`
    (aiohttp's `BaseProtocol`, not overridden by `RequestHandler`), and aiohttp's writes wait in `drain`
    exactly while the protocol is paused (a write that waits forever is what the timeout ends)."""
    assert issubclass(RequestHandler, BaseProtocol)
    assert RequestHandler.pause_writing is BaseProtocol.pause_writing
    assert RequestHandler.resume_writing is BaseProtocol.resume_writing
    protocol = BaseProtocol(asyncio.get_running_loop())
    transport = mock.Mock(spec=asyncio.Transport)
    transport.is_closing.return_value = False
    protocol.connection_made(transport)
    writer = StreamWriter(protocol, asyncio.get_running_loop())
    protocol.pause_writing()
    assert protocol.writing_paused
    write = asyncio.create_task(writer.write(b"z" * 70_000))  # over the writer's 64 KiB: it drains
    await asyncio.sleep(0)
    assert not write.done() and transport.write.call_count == 1
    protocol.resume_writing()
    await asyncio.wait_for(write, WAIT)


class UnsentBytes:
    """A fake transport whose unsent byte count follows `backlog` (its last value repeats)."""

    def __init__(self, *backlog: int) -> None:
        self.backlog = list(backlog)
        self.looks = 0
        self.aborted = asyncio.Event()
        self.protocol: Any = None

    def get_write_buffer_size(self) -> int:
        self.looks += 1
        return self.backlog.pop(0) if len(self.backlog) > 1 else self.backlog[0]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass  # asyncio's close waits for the unsent bytes: it never calls connection_lost here

    def abort(self) -> None:
        self.aborted.set()
        self.protocol.connection_lost(None)


def fake_connection(transport: UnsentBytes) -> tuple[Any, list[str]]:
    """A `_Connection` of the MCP listener on `transport`, and the refusals it counts."""
    rejected_reasons: list[str] = []
    limits = ListenerLimits(header_timeout=3600, idle_timeout=3600, send_timeout=0.01, max_connections=10,
                            max_head_bytes=60 * 1024, max_headers=100)  # fmt: skip
    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = JsonRpcServer(answer, lambda: limits, rejected_reasons.append)
    protocol = server()
    transport.protocol = protocol
    protocol.connection_made(cast(asyncio.Transport, transport))
    return protocol, rejected_reasons


async def test_a_close_that_waits_for_unsent_bytes_is_bounded_by_the_send_timeout() -> None:
    """An idle or header timeout closes with `transport.close()`, which waits for the unsent bytes (a
    tail under the high-water mark, never paused) as long as the client does not read them."""
    transport = UnsentBytes(1000)
    protocol, reasons = fake_connection(transport)
    protocol.force_close()
    await asyncio.wait_for(transport.aborted.wait(), WAIT)
    assert reasons == ["send_timeout"]
    assert protocol._server.open == 0


async def test_the_send_clock_aborts_only_after_a_whole_timeout_without_progress() -> None:
    """Looks at the unsent bytes: paused at 100,000; 90,000 (the client took some); 95,000 (the proxy
    wrote more: unknown); 95,000 again (nothing taken): abort on that fourth look, not before."""
    transport = UnsentBytes(100_000, 90_000, 95_000, 95_000)
    protocol, reasons = fake_connection(transport)
    protocol.pause_writing()
    await asyncio.wait_for(transport.aborted.wait(), WAIT)
    assert (transport.looks, reasons) == (4, ["send_timeout"])


async def test_resume_writing_counts_as_progress_and_an_emptied_buffer_stops_the_clock() -> None:
    transport = UnsentBytes(100_000, 100_000, 0)
    protocol, reasons = fake_connection(transport)
    protocol.pause_writing()
    protocol.resume_writing()  # drained to the low-water mark; the next look sees the same size: not stuck
    while transport.looks < 3:  # the third look finds nothing unsent: the clock stops
        await asyncio.sleep(0.01)
    protocol.pause_writing()  # paused again with 0 unsent (a fake): no clock starts
    assert protocol._send_timer is None and reasons == [] and not transport.aborted.is_set()
    protocol.connection_lost(None)


@pytest.mark.skipif(not hasattr(socket, "TCP_NOTSENT_LOWAT"), reason="the platform has no TCP_NOTSENT_LOWAT")
async def test_the_kernel_holds_at_most_send_lowat_unsent_bytes_per_client_connection(upstream: FaultUpstream) -> None:
    """Else it takes up to 4 MiB from the proxy before a non-reader's writes wait (and its clock starts)."""
    async with running_proxy(proxy_config(upstream.url)) as proxy, connection(proxy) as (reader, writer):
        writer.write(request())
        assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"
        [accepted] = list(listener(proxy)._connections)
        sock = accepted.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT) == SEND_LOWAT
