"""The upstream HTTP/1.1 client against raw TCP servers on 127.0.0.1 that send exactly the bytes a test scripts.

Each test's server counts the connections it accepts, so reuse and closing are asserted as counts,
and what the client wrote is asserted byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

from proxy.upstream.http11 import client as http_client
from proxy.upstream.http11 import connection
from proxy.upstream.http11.client import (
    MAX_HEAD_BYTES,
    MAX_INTERIM_RESPONSES,
    MAX_RESPONSE_HEADERS,
    MAX_UNPARSED_BYTES,
    WRITE_PIECE,
    BadResponse,
    ConnectFailed,
    ConnectionBroken,
    ConnectionPool,
    InvalidHeader,
    LocalExhaustion,
    Origin,
    PoolExhausted,
    ResponseTooLarge,
)
from proxy.upstream.http11.protocol import _PAUSE_AT

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class RawServer:
    """A TCP server that runs `script` on every connection and records what it accepted."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await self.script(reader, writer)
        writer.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request with a Content-Length body (or none), as raw bytes."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def answering(*answers: bytes, then_close: bool = False) -> Script:
    """Answer each request on a connection with the next of `answers` (the last one repeats)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for index in range(1000):
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(answers[min(index, len(answers) - 1)])
            await writer.drain()
            if then_close:
                return

    return script


def answering_after(gate: asyncio.Event) -> Script:
    """Answer every request with OK, each only once `gate` is set (a slow upstream, without a sleep)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await gate.wait()
            writer.write(OK)
            await writer.drain()

    return script


@contextlib.asynccontextmanager
async def pool_for(
    server: RawServer,
    limit: int = 8,
    keepalive: float = 30.0,
    connect_timeout: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(Origin(server.url), limit, keepalive, connect_timeout, clock)
    try:
        yield pool
    finally:
        await pool.close()


async def call(pool: ConnectionPool, body: bytes = b"{}") -> tuple[int, bytes]:
    response = await pool.request("POST", [("Content-Type", "application/json")], body)
    return response.status, await response.read()


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (bounded): for effects of the peer closing a socket."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


async def test_request_bytes_on_the_wire_are_exact() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)

    async with RawServer(script) as server:
        pool = ConnectionPool(Origin(f"http://127.0.0.1:{server.port}/mcp?x=1"), 4, 30.0, 5.0)
        response = await pool.request("POST", [("Mcp-Session-Id", "s1"), ("Accept", "a, b")], b'{"a":1}')
        assert (response.status, await response.read()) == (200, b"{}")
        await pool.close()
    assert seen == [
        b"POST /mcp?x=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nMcp-Session-Id: s1\r\nAccept: a, b\r\n"
        b"Content-Length: 7\r\n\r\n{\"a\":1}" % server.port
    ]


async def test_userinfo_in_the_url_is_basic_auth_unless_the_client_sent_its_own_or_had_it_removed() -> None:
    """The URL's credentials stand in only for a client that sent no Authorization; never for one whose
    own was removed on the way (`lend_credentials=False`)."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(OK)

    async with RawServer(script) as server:
        pool = ConnectionPool(Origin(f"http://bot:s3cret@127.0.0.1:{server.port}/mcp"), 4, 30.0, 5.0)
        await (await pool.request("POST", [], b"{}")).read()
        await (await pool.request("POST", [("authorization", "Bearer t")], b"{}")).read()
        await (await pool.request("POST", [], b"{}", lend_credentials=False)).read()
        await pool.close()
    assert b"\r\nAuthorization: Basic Ym90OnMzY3JldA==\r\n" in seen[0]  # base64 of "bot:s3cret"
    assert b"Basic" not in seen[1] and b"\r\nauthorization: Bearer t\r\n" in seen[1]
    assert b"Authorization" not in seen[2]


def test_origin_default_port_ipv6_and_userinfo() -> None:
    origin = Origin("https://user:p%40ss@[::1]/mcp")
    assert (origin.host, origin.port, origin.host_header, origin.target) == ("::1", 443, "[::1]", "/mcp")
    assert origin.authorization == "Basic dXNlcjpwQHNz"  # base64 of "user:p@ss"
    assert Origin("http://example.com:80").host_header == "example.com"
    assert Origin("http://example.com:80").target == "/"
    with pytest.raises(ValueError, match="not an http"):
        Origin("ftp://example.com/")


async def test_a_line_break_in_a_header_is_refused_before_anything_is_sent() -> None:
    async with RawServer(answering(OK)) as server, pool_for(server) as pool:
        with pytest.raises(InvalidHeader, match="the value of header X-Evil contains a line break"):
            await pool.request("POST", [("X-Evil", "a\r\nX-Injected: 1")], b"{}")
        with pytest.raises(InvalidHeader, match="is not a token"):
            await pool.request("POST", [("X-Evil\n", "a")], b"{}")
        with pytest.raises(InvalidHeader, match="is not a token"):
            await pool.request("POST", [("X-Evil: 1\r\nX-B", "a")], b"{}")
        assert server.connections == 0


async def test_keep_alive_reuses_one_connection() -> None:
    async with RawServer(answering(OK)) as server, pool_for(server) as pool:
        for _ in range(5):
            assert await call(pool) == (200, b"{}")
        assert server.connections == 1
        assert (pool.size, pool.idle) == (1, 1)


async def test_connection_close_answers_are_not_reused() -> None:
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    async with RawServer(answering(closing, then_close=True)) as server, pool_for(server) as pool:
        for _ in range(3):
            assert await call(pool) == (200, b"{}")
        assert server.connections == 3
        assert pool.idle == 0


async def test_a_body_without_length_ends_with_the_connection() -> None:
    answer = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"late\":true}"
    async with RawServer(answering(answer, then_close=True)) as server, pool_for(server) as pool:
        assert await call(pool) == (200, b'{"late":true}')
        await until(lambda: pool.size == 0)
        assert await call(pool) == (200, b'{"late":true}')
        assert server.connections == 2


async def test_chunked_answers_and_informational_heads() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + OK
    async with RawServer(answering(chunked, early)) as server, pool_for(server) as pool:
        assert await call(pool) == (200, b"abcde")
        response = await pool.request("POST", [], b"{}")
        assert (response.status, response.content_type, response.content_length) == (200, "application/json", 2)
        assert response.header_items == [("Content-Type", "application/json"), ("Content-Length", "2")]
        assert await response.read() == b"{}"
        assert server.connections == 1


async def test_a_stream_is_passed_on_chunk_by_chunk_as_it_arrives() -> None:
    sent_second = asyncio.Event()
    release_second = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"7\r\ndata: 1\r\n")
        await writer.drain()
        await release_second.wait()
        writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        await writer.drain()
        sent_second.set()
        await read_request(reader)
        writer.write(OK)

    async with RawServer(script) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        assert response.content_type == "text/event-stream"
        assert await response.next_chunk() == b"data: 1"
        assert not sent_second.is_set()  # the first chunk arrived while the server still held the second
        release_second.set()
        assert await response.next_chunk() == b"data: 2"
        assert await response.next_chunk() == b""
        assert await response.next_chunk() == b""
        assert await call(pool) == (200, b"{}")
        assert server.connections == 1


async def test_a_large_stream_read_slowly_arrives_whole_through_pause_and_resume() -> None:
    piece = bytes(range(256)) * 256  # 64 KiB
    pieces = 32  # 2 MiB in all, eight times the pause threshold

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(piece) * pieces))
        for _ in range(pieces):
            writer.write(piece)
            await writer.drain()

    async with RawServer(script) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        conn = response._conn  # noqa: SLF001 - the flow control under test
        await until(lambda: response._protocol.read_paused)  # noqa: SLF001 - nobody reads: the socket stops being read
        assert _PAUSE_AT < conn.buffered < _PAUSE_AT + len(piece) * 2
        received = bytearray()
        while chunk := await response.next_chunk():
            received += chunk
        assert bytes(received) == piece * pieces
        assert server.connections == 1 and pool.idle == 1


async def test_closing_a_half_read_answer_closes_its_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()  # until the client hangs up

    async with RawServer(script) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        assert await response.next_chunk() == b"abc"
        response.close()
        assert (pool.size, pool.idle) == (0, 0)
        assert await response.next_chunk() == b""  # abandoned: nothing more, and no error
        assert server.connections == 1


async def test_limit_on_the_body_closes_the_connection() -> None:
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100
    async with RawServer(answering(big)) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        with pytest.raises(ResponseTooLarge):
            await response.read(limit=50)
        assert pool.size == 0
        response = await pool.request("POST", [], b"{}")
        assert await response.read(limit=100) == b"x" * 100
        assert server.connections == 2


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"garbage\r\n\r\n", "Expected HTTP/"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Duplicate Content-Length"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", "headers exceed 65536 bytes"),
    ],
)
async def test_invalid_answers_are_bad_responses_and_close_the_connection(answer: bytes, message: str) -> None:
    async with RawServer(answering(answer)) as server, pool_for(server) as pool:
        with pytest.raises(BadResponse, match=message):
            await pool.request("POST", [], b"{}")
        assert pool.size == 0
        assert server.connections == 1


async def test_extra_bytes_after_a_complete_answer_close_the_connection_but_keep_the_answer() -> None:
    async with RawServer(answering(OK + b"HTTP/1.1 200 OK\r\n")) as server, pool_for(server) as pool:
        assert await call(pool) == (200, b"{}")
        assert pool.size == 0
        assert await call(pool) == (200, b"{}")
        assert server.connections == 2


async def test_a_connection_that_drops_after_the_request_is_broken_not_never_sent() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with RawServer(script) as server, pool_for(server) as pool:
        with pytest.raises(ConnectionBroken):
            await pool.request("POST", [], b"{}")
        assert server.connections == 1 and pool.size == 0


@pytest.mark.parametrize("why", ["refused", "idna"])
async def test_no_connection_is_connect_failed(why: str) -> None:
    async with RawServer(answering(OK)) as server:
        port = server.port  # closed again: nothing listens there now
    host = "127.0.0.1" if why == "refused" else f"{'a' * 64}.example"  # a label IDNA cannot encode
    pool = ConnectionPool(Origin(f"http://{host}:{port}/mcp"), 4, 30.0, 5.0)
    with pytest.raises(ConnectFailed, match={"refused": "ConnectionRefusedError", "idna": "IDNA"}[why]):
        await pool.request("POST", [], b"{}")
    assert pool.size == 0
    await pool.close()


async def test_a_full_pool_queues_then_times_out_as_pool_exhausted() -> None:
    gate = asyncio.Event()
    script = answering_after(gate)

    async with RawServer(script) as server, pool_for(server, limit=1, connect_timeout=0.05) as pool:
        first = asyncio.create_task(call(pool))
        await until(lambda: pool.size == 1)
        with pytest.raises(PoolExhausted, match="all 1 pooled connections stayed busy for 0.05s"):
            await call(pool)
        second = asyncio.create_task(call(pool))
        await asyncio.sleep(0)
        gate.set()
        assert await first == (200, b"{}")
        assert await second == (200, b"{}")
        assert server.connections == 1


async def test_idle_connections_expire_after_keepalive() -> None:
    now = [100.0]
    async with RawServer(answering(OK)) as server, pool_for(server, keepalive=5.0, clock=lambda: now[0]) as pool:
        await call(pool)
        now[0] += 4.9
        await call(pool)
        assert server.connections == 1
        now[0] += 5.0
        await call(pool)
        assert server.connections == 2
        now[0] += 5.0
        pool._sweep()  # noqa: SLF001 - what the keep-alive timer runs
        assert (pool.size, pool.idle) == (0, 0)


async def test_an_idle_connection_the_server_closed_is_skipped() -> None:
    async with RawServer(answering(OK, then_close=True)) as server, pool_for(server) as pool:
        assert await call(pool) == (200, b"{}")
        await until(lambda: pool.size == 0)
        assert await call(pool) == (200, b"{}")
        assert server.connections == 2


# -- fixes from review: each test failed before its fix ---------------------------------------------------


@contextlib.contextmanager
def gated_connects(gate: asyncio.Event) -> Iterator[None]:
    """Every new connection waits for `gate` before it is opened (a slow connect, without a sleep)."""
    loop = asyncio.get_running_loop()
    real = loop.create_connection

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await real(*args, **kwargs)

    loop.create_connection = slow  # type: ignore[method-assign]
    try:
        yield
    finally:
        loop.create_connection = real  # type: ignore[method-assign]


async def test_a_connect_given_up_frees_its_slot_for_the_next_waiter() -> None:
    gate = asyncio.Event()
    async with RawServer(answering(OK)) as server, pool_for(server, limit=1) as pool:
        with gated_connects(gate):
            first = asyncio.create_task(call(pool))
            await until(lambda: pool.size == 1)
            second = asyncio.create_task(call(pool))
            await until(lambda: len(pool._waiters) == 1)  # noqa: SLF001
            first.cancel()  # the client went away while its connection was being opened
            await until(lambda: not pool._waiters)  # noqa: SLF001 - the slot went to the waiter at once
            gate.set()
            assert await second == (200, b"{}")
        assert first.cancelled()
        assert server.connections == 1 and pool.size == 1


async def test_a_waiter_that_leaves_after_being_handed_a_connection_passes_it_on() -> None:
    gate = asyncio.Event()
    script = answering_after(gate)

    async with RawServer(script) as server, pool_for(server, limit=1) as pool:
        first = asyncio.create_task(call(pool))
        await until(lambda: pool.size == 1)
        second = asyncio.create_task(call(pool))
        third = asyncio.create_task(call(pool))
        await until(lambda: len(pool._waiters) == 2)  # noqa: SLF001
        release = pool.release

        def release_then_cancel(conn: Any) -> None:
            release(conn)  # hands the connection to `second`...
            second.cancel()  # ...which is cancelled in the same turn

        pool.release = release_then_cancel  # type: ignore[method-assign]
        gate.set()
        assert await first == (200, b"{}")
        pool.release = release  # type: ignore[method-assign]
        assert await third == (200, b"{}")
        assert second.cancelled()
        assert server.connections == 1


async def test_waiters_are_served_in_arrival_order() -> None:
    gate = asyncio.Event()
    order: list[str] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await gate.wait()
            writer.write(OK)
            await writer.drain()

    async def named(name: str) -> None:
        await call(pool)
        order.append(name)

    async with RawServer(script) as server, pool_for(server, limit=1) as pool:
        first = asyncio.create_task(named("first"))
        await until(lambda: pool.size == 1)
        queued = asyncio.create_task(named("queued"))
        await until(lambda: len(pool._waiters) == 1)  # noqa: SLF001
        release = pool.release
        late: list[asyncio.Task[None]] = []

        def release_then_arrive(conn: Any) -> None:
            late.append(asyncio.create_task(named("late")))  # arrives just before the connection frees up,
            release(conn)  # so it runs before the woken waiter does

        pool.release = release_then_arrive  # type: ignore[method-assign]
        gate.set()
        await first
        pool.release = release  # type: ignore[method-assign]
        await queued
        await late[0]
        assert order == ["first", "queued", "late"]
        assert server.connections == 1


async def test_a_connection_the_upstream_closes_as_it_opens_is_never_sent_on_and_never_counted() -> None:
    async def greet_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    outcomes: set[str] = set()
    async with RawServer(greet_and_close) as server, pool_for(server, limit=4) as pool:
        for _ in range(50):
            try:
                await call(pool)
            except (ConnectFailed, ConnectionBroken, BadResponse) as exc:
                outcomes.add(type(exc).__name__)
            await until(lambda: pool.size == 0)
    assert outcomes <= {"ConnectFailed", "ConnectionBroken", "BadResponse"}


def test_under_uvloop_a_connection_closed_while_opening_is_connect_failed_and_frees_its_slot() -> None:
    """uvloop can run data_received/connection_lost before create_connection returns: such a
    connection must not be counted (it would fill the pool for good) nor written to. The server is a
    plain thread that writes and closes right at accept, so the bytes and the FIN are often already
    there when the connect completes."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=1000)

    def accept_forever() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            client.sendall(b"HTTP/1.1 503 Service Unavailable\r\n")
            client.close()

    threading.Thread(target=accept_forever, daemon=True).start()
    port = listener.getsockname()[1]

    async def scenario() -> tuple[dict[str, int], int]:
        pool = ConnectionPool(Origin(f"http://127.0.0.1:{port}/mcp"), 1000, 30.0, 5.0)
        seen: dict[str, int] = {}

        async def one() -> None:
            try:
                await call(pool)
                kind = "ok"
            except (ConnectFailed, ConnectionBroken, BadResponse) as exc:
                kind = type(exc).__name__
            seen[kind] = seen.get(kind, 0) + 1

        for _ in range(10):
            await asyncio.gather(*(one() for _ in range(50)))
        await until(lambda: pool.size == 0)
        await pool.close()
        return seen, pool.size

    try:
        seen, size = uvloop.run(scenario())
    finally:
        listener.close()
    assert size == 0  # before the fix, every connection closed during the connect stayed counted
    assert sum(seen.values()) == 500 and "ok" not in seen


async def test_a_body_ended_by_a_reset_is_broken_not_complete() -> None:
    head_read = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"partial\":")
        await writer.drain()
        await head_read.wait()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN: the body is cut, not ended

    async with RawServer(script) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        head_read.set()
        with pytest.raises(ConnectionBroken, match="reset"):
            await response.read()
        assert pool.size == 0


async def test_a_101_switching_protocols_is_a_bad_response() -> None:
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    async with RawServer(answering(upgrade)) as server, pool_for(server) as pool:
        with pytest.raises(BadResponse, match="switched protocols"):
            await pool.request("POST", [], b"{}")
        assert pool.size == 0


async def test_a_non_chunked_transfer_coding_is_read_to_the_close() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc"
    async with RawServer(answering(answer, then_close=True)) as server, pool_for(server) as pool:
        assert await call(pool) == (200, b"abc")


async def test_a_read_cancelled_or_repeated_never_touches_a_reused_connection() -> None:
    gate = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        await writer.drain()
        await gate.wait()

    async with RawServer(script) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        reading = asyncio.create_task(response.read())
        await until(lambda: response._protocol._waiter is not None)  # noqa: SLF001 - read() waits for the rest
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        assert pool.size == 0
        with pytest.raises(RuntimeError, match="already read or abandoned"):
            await response.read()
        gate.set()


async def test_a_response_left_half_read_by_async_with_closes_its_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await reader.read()

    async with RawServer(script) as server, pool_for(server) as pool:
        async with await pool.request("POST", [], b"{}") as response:
            assert await response.next_chunk() == b"ab"
            assert pool.size == 1
        assert (pool.size, pool.idle) == (0, 0)
        assert await response.next_chunk() == b""


async def test_a_response_read_whole_in_async_with_keeps_its_connection() -> None:
    async with RawServer(answering(OK)) as server:
        async with ConnectionPool(Origin(server.url), 4, 30.0, 5.0) as pool:
            for _ in range(3):
                async with await pool.request("POST", [], b"{}") as response:
                    assert await response.read() == b"{}"
                await response.aclose()  # again: nothing more to do
            assert (pool.size, pool.idle) == (1, 1)
        assert pool.size == 0
        with pytest.raises(ConnectFailed, match="closed"):
            await pool.request("POST", [], b"{}")
    assert server.connections == 1


async def test_a_response_dropped_unread_keeps_its_slot_until_the_pool_is_closed() -> None:
    """No finalizer: a response dropped without being read, released, drained or closed is a caller's bug,
    and its connection stays out of the pool (never reused half-read) until the pool closes it."""
    closed = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await reader.read()
        closed.set()

    async with RawServer(script) as server:
        pool = ConnectionPool(Origin(server.url), 4, 30.0, 5.0)
        response = await pool.request("POST", [], b"{}")
        del response
        gc.collect()
        assert (pool.size, pool.idle) == (1, 0)
        await pool.aclose()
        assert pool.size == 0
        await closed.wait()


async def test_closing_a_pool_closes_busy_connections_fails_waiters_and_opens_nothing_more() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()

    async with RawServer(script) as server:
        pool = ConnectionPool(Origin(server.url), 1, 30.0, 5.0)
        busy = asyncio.create_task(call(pool))
        await until(lambda: server.connections == 1)
        waiting = asyncio.create_task(call(pool))
        await until(lambda: len(pool._waiters) == 1)  # noqa: SLF001
        await pool.close()
        with pytest.raises(ConnectionBroken):
            await busy
        with pytest.raises(ConnectFailed, match="closed"):
            await waiting
        with pytest.raises(ConnectFailed, match="closed"):
            await call(pool)
        await asyncio.sleep(0)
        assert server.connections == 1 and pool.size == 0


def test_the_url_path_and_query_go_out_percent_encoded() -> None:
    origin = Origin("http://h:81/my path/ü?q=a b&x=%20")
    assert origin.target == "/my%20path/%C3%BC?q=a%20b&x=%20"
    with pytest.raises(ValueError) as error:
        Origin("ftp://user:s3cret@h/")
    assert "s3cret" not in str(error.value)


# -- fixes from the second review ---------------------------------------------------------------------------


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def sse_chunk(data: bytes) -> bytes:
    event = b"event: message\ndata: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


async def test_discarding_the_rest_reuses_a_connection_whose_body_then_ends() -> None:
    tail = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + sse_chunk(b'{"id":1}'))
        await tail.wait()
        writer.write(sse_chunk(b'{"late":1}') + b"0\r\n\r\n")  # more events, then the end of the stream
        await read_request(reader)
        writer.write(OK)

    async with RawServer(script) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        assert (await response.next_chunk()).startswith(b"event: message")
        response.discard_rest()
        assert pool.idle == 0 and pool.size == 1  # still draining
        tail.set()
        await until(lambda: pool.idle == 1)
        assert await call(pool) == (200, b"{}")
        assert server.connections == 1


@pytest.mark.parametrize("why", ["too_long", "too_much"])
async def test_discarding_closes_a_connection_whose_body_does_not_end_soon_or_small(why: str) -> None:
    more = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + sse_chunk(b'{"id":1}'))
        await more.wait()
        if why == "too_much":
            writer.write(sse_chunk(b"x" * 200))
        await reader.read()

    async with RawServer(script) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        await response.next_chunk()
        response.discard_rest(max_bytes=100, within=0.0 if why == "too_long" else 60.0)
        more.set()
        await until(lambda: pool.size == 0)
        assert pool.idle == 0 and server.connections == 1


async def test_the_first_content_type_decides() -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(answering(answer)) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        assert response.content_type == "text/event-stream"
        await response.read()


async def test_on_write_is_called_only_once_a_connection_is_had() -> None:
    written: list[bool] = []
    gate = asyncio.Event()
    async with RawServer(answering_after(gate)) as server, pool_for(server, limit=1) as pool:
        first = asyncio.create_task(pool.request("POST", [], b"{}", on_write=lambda: written.append(True)))
        await until(lambda: written == [True])
        second = asyncio.create_task(pool.request("POST", [], b"{}", on_write=lambda: written.append(True)))
        await until(lambda: len(pool._waiters) == 1)  # noqa: SLF001
        second.cancel()  # gave up while waiting for the only connection: nothing was written
        with pytest.raises(asyncio.CancelledError):
            await second
        assert written == [True]
        gate.set()
        await (await first).read()
        assert server.connections == 1


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("mode", ["read", "discard"])
def test_a_connection_whose_end_and_close_arrive_together_is_not_handed_to_the_next_request(
    loop: str, mode: str
) -> None:
    """The server ends a stream and closes without saying `Connection: close`, both in the socket before
    the proxy reads them. A request waiting for that (only) connection must not be written onto it: it
    fails as never sent (`ConnectFailed`, retryable for any call), or gets a fresh connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    go, sent = threading.Event(), threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.sendall(SSE_HEAD + sse_chunk(b"{}"))
        go.wait(5)
        connection.sendall(b"0\r\n\r\n")
        connection.close()  # FIN right after the end of the stream
        sent.set()

    threading.Thread(target=serve, daemon=True).start()

    async def scenario() -> tuple[str, list[int]]:
        pool = ConnectionPool(Origin(f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"), 1, 30.0, 5.0)
        first = await pool.request("POST", [], b"{}")
        assert await first.next_chunk()
        written: list[int] = []
        second = asyncio.ensure_future(pool.request("POST", [], b"{}", on_write=lambda: written.append(1)))
        await until(lambda: len(pool._waiters) == 1)  # noqa: SLF001
        if mode == "discard":
            first.discard_rest()
            go.set()
            sent.wait(5)  # block the loop: the end and the FIN both wait in the socket
        else:
            reading = asyncio.ensure_future(first.next_chunk())
            await asyncio.sleep(0)
            go.set()
            sent.wait(5)
            assert await reading == b""
        try:
            await second
            outcome = "fresh connection"
        except ConnectFailed:
            outcome = "never sent"
        except ConnectionBroken:
            outcome = "written onto a closing connection"
        await pool.close()
        return outcome, written

    try:
        outcome, written = asyncio.run(scenario()) if loop == "asyncio" else uvloop.run(scenario())
    finally:
        listener.close()
    assert outcome == "never sent" and written == []


def closing_after(gate: asyncio.Event) -> Script:
    """Answer one request with OK and `Connection: close` once `gate` is set: the slot frees, no connection does."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await gate.wait()
        writer.write(OK.replace(b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nConnection: close\r\n"))
        await writer.drain()
        writer.close()

    return script


async def test_a_slow_connect_after_queueing_is_the_upstreams_not_the_pools(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting for a slot and connecting get a timer each: a request handed a free slot late and then
    unable to connect in time failed to connect (the upstream's doing), it did not find the pool full."""
    gate = asyncio.Event()
    async with RawServer(closing_after(gate)) as server, pool_for(server, limit=1, connect_timeout=1.0) as pool:
        first = asyncio.create_task(call(pool))
        await until(lambda: pool.size == 1)
        second = asyncio.create_task(call(pool))
        await until(lambda: len(pool._waiters) == 1)

        async def never_connects(*args: Any, **kwargs: Any) -> Any:
            await asyncio.Event().wait()

        monkeypatch.setattr(pool.loop, "create_connection", never_connects)
        gate.set()
        assert await first == (200, b"{}")
        with pytest.raises(ConnectFailed, match="no connection within 1s") as failed:
            await second
        assert not isinstance(failed.value, PoolExhausted)


@pytest.mark.parametrize(
    ("number", "local"),
    [(errno.EMFILE, True), (errno.ENFILE, True), (errno.EADDRNOTAVAIL, True), (errno.ECONNREFUSED, False)],
    ids=["EMFILE", "ENFILE", "EADDRNOTAVAIL", "ECONNREFUSED"],
)
async def test_this_machine_running_out_is_a_local_exhaustion(monkeypatch: pytest.MonkeyPatch, number: int, local: bool) -> None:
    async with RawServer(answering(OK)) as server, pool_for(server) as pool:

        async def refused(*args: Any, **kwargs: Any) -> Any:
            raise OSError(number, os.strerror(number))

        monkeypatch.setattr(pool.loop, "create_connection", refused)
        with pytest.raises(ConnectFailed) as failed:
            await call(pool)
        assert isinstance(failed.value, LocalExhaustion) is local
        assert pool.size == 0


async def test_a_wait_for_a_slot_does_not_eat_the_connect_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot that frees after 1.2 s and a connect that takes 1.2 s both fit a 2 s connect timeout:
    one timer over both would have failed the connect and blamed the upstream for the pool's wait."""
    gate = asyncio.Event()
    async with RawServer(closing_after(gate)) as server, pool_for(server, limit=1, connect_timeout=2.0) as pool:
        first = asyncio.create_task(call(pool))
        await until(lambda: pool.size == 1)
        real_connect = pool.loop.create_connection

        async def slow_connect(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(1.2)  # a far upstream's handshake, not synchronisation
            return await real_connect(*args, **kwargs)

        monkeypatch.setattr(pool.loop, "create_connection", slow_connect)
        second = asyncio.create_task(call(pool))
        await asyncio.sleep(1.2)  # the slot stays taken this long
        gate.set()
        assert await first == (200, b"{}")
        assert await second == (200, b"{}")
        assert server.connections == 2


# -- issue 10: stray answers, header count, bounded writes, URL credentials ----------------------------


SMUGGLED = b"POST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
STRAY = b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray'


async def test_an_answer_that_comes_before_the_whole_request_was_written_never_lets_its_connection_be_reused() -> None:
    """The root of a stray answer on a reused connection: an upstream that answers before reading the
    whole request (and keeps the connection) goes on to read the rest of that body as the next request.
    A body that ends in a request of its own gets that request answered on the connection, ahead of
    whatever the next client sends on it. A connection whose request was not all written (or still sat
    in its write buffer) when its answer completed is closed, never reused."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the head only: the body is left unread for now
        writer.write(OK)
        await writer.drain()
        seen = b""
        while SMUGGLED not in seen:  # then the body, read as what follows on the connection
            data = await reader.read(1 << 20)
            if not data:
                return  # the proxy closed the connection: nothing more arrives on it
            seen = seen[-len(SMUGGLED) :] + data
        writer.write(STRAY)  # the upstream's answer to the request hidden in the first body
        rest = seen[seen.index(SMUGGLED) + len(SMUGGLED) :]
        while b"\r\n\r\n" not in rest:  # the next request on the connection, whoever sent it
            data = await reader.read(1 << 16)
            if not data:
                return
            rest += data
        writer.write(OK)
        await writer.drain()

    body = b"x" * (8 * 1024 * 1024) + SMUGGLED
    async with RawServer(script) as server, pool_for(server) as pool:
        async with asyncio.timeout(30):
            assert await call(pool, body) == (200, b"{}")
            assert await call(pool) == (200, b"{}")  # never "stray"
    assert server.connections == 2


async def test_an_answer_whose_head_came_while_the_request_was_being_written_never_lets_its_connection_be_reused() -> None:
    """nginx's rule: the head of the answer came before the whole request had left, so the server answered
    without having it all. Whether it went on to read the rest cannot be told from here (the rest may sit
    unread in its socket's buffers by the time the answer completes), so the connection is not reused,
    even when, as here, the server did read it all before ending its answer."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")  # the head only, then the answer's head
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{")
            await writer.drain()
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)  # then the whole body, then the answer's end
            writer.write(b"}")
            await writer.drain()

    async with RawServer(script) as server, pool_for(server) as pool:
        async with asyncio.timeout(30):
            assert await call(pool, b"x" * (8 * 1024 * 1024)) == (200, b"{}")
            assert await call(pool) == (200, b"{}")
    assert server.connections == 2


async def test_an_idle_connection_that_receives_bytes_is_closed_and_never_answers_the_next_request() -> None:
    """An unsolicited answer arriving on an idle pooled connection marks it dead at once."""
    late = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        await late.wait()
        writer.write(STRAY)  # a late duplicate answer, nobody asked
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError):
            await read_request(reader)
            writer.write(STRAY)

    async with RawServer(script) as server, pool_for(server) as pool:
        assert await call(pool) == (200, b"{}")
        assert pool.idle == 1
        late.set()
        await until(lambda: pool.size == 0)
        assert await call(pool) == (200, b"{}")
    assert server.connections == 2


@pytest.mark.parametrize(
    ("count", "line", "message"),
    [
        (60_000, b"A:\r\n", "more than 100 header"),
        (MAX_RESPONSE_HEADERS + 1, b"X-A: 1\r\n", "more than 100 header"),
    ],
)
async def test_too_many_headers_are_a_bad_response_and_close_the_connection(count: int, line: bytes, message: str) -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + line * count + b"Content-Length: 2\r\n\r\n{}"
    async with RawServer(answering(answer)) as server, pool_for(server) as pool:
        with pytest.raises(BadResponse, match=message):
            await pool.request("POST", [], b"{}")
        assert pool.size == 0
    assert server.connections == 1


async def test_exactly_the_header_cap_is_accepted() -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * (MAX_RESPONSE_HEADERS - 1) + b"Content-Length: 2\r\n\r\n{}"
    async with RawServer(answering(answer)) as server, pool_for(server) as pool:
        assert await call(pool) == (200, b"{}")


async def test_empty_headers_count_their_line_against_the_head_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """`A:` is four bytes on the wire, not one: 20,000 of them (80 kB) exceed MAX_HEAD_BYTES even
    where the header cap would let them through."""
    monkeypatch.setattr(connection, "MAX_RESPONSE_HEADERS", 100_000)
    answer = b"HTTP/1.1 200 OK\r\n" + b"A:\r\n" * 20_000 + b"Content-Length: 2\r\n\r\n{}"
    async with RawServer(answering(answer)) as server, pool_for(server) as pool:
        with pytest.raises(BadResponse, match="headers exceed 65536 bytes"):
            await pool.request("POST", [], b"{}")
        assert pool.size == 0


async def test_a_request_to_an_upstream_that_never_reads_is_written_as_the_socket_takes_it() -> None:
    """Flow control: the request goes out in WRITE_PIECE pieces, each only while the transport's buffer
    is under its high-water mark, so an upstream that never reads costs at most high-water + one piece
    of buffer per call, not the whole body; the call ends by its timeout and the connection is closed."""
    accepted = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await asyncio.Event().wait()

    async with RawServer(never_reads) as server, pool_for(server) as pool:
        task = asyncio.create_task(pool.request("POST", [], b"x" * (4 * 1024 * 1024)))
        await accepted.wait()
        (conn,) = pool._open
        await until(lambda: conn._write_paused)
        transport = conn._transport
        assert transport is not None
        high = transport.get_write_buffer_limits()[1]
        for _ in range(50):  # the write stays paused, the buffer does not grow
            assert transport.get_write_buffer_size() <= high + WRITE_PIECE
            await asyncio.sleep(0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await task
        assert conn.is_closed() and pool.size == 0


@pytest.mark.parametrize(
    "start",
    [
        b"HTTP/1.1 200 OK\r\nX-Endless: ",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: ",
    ],
)
async def test_an_endless_header_or_trailer_line_is_a_bad_response_not_memory(start: bytes) -> None:
    """httptools keeps a header line to itself until its end: an upstream that never ends one (in the
    head or in a chunked body's trailers) is cut off at MAX_UNPARSED_BYTES, not buffered on and on."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(start)
        for _ in range(2 * MAX_UNPARSED_BYTES // 4096 + 2):
            writer.write(b"a" * 4096)
            await writer.drain()
        await reader.read()

    async with RawServer(script) as server, pool_for(server) as pool:
        async with asyncio.timeout(30):
            with pytest.raises(BadResponse, match="no complete head and no body"):
                response = await pool.request("POST", [], b"{}")
                await response.read()
        assert pool.size == 0


# -- issue 10, second review: tiny chunks, interim heads, status codes ---------------------------------------


def tiny_chunks(payload: bytes, size: int = 2) -> bytes:
    """`payload` as a chunked body of `size`-byte chunks, with its last chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(payload[i : i + size]), payload[i : i + size]) for i in range(0, len(payload), size)) + b"0\r\n\r\n"


async def test_a_stream_of_tiny_chunks_is_handed_on_as_one_piece_per_read_not_one_per_chunk() -> None:
    """Per-piece work (a timeout, a parse, a write to the client) must be per network read: 10,000 chunks
    of ``:\\n`` that have all arrived come out of `next_chunk` as one piece."""
    payload = b":\n" * 10_000
    body = tiny_chunks(payload)
    held = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + body[: -len(b"0\r\n\r\n")])
        await writer.drain()
        await held.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with RawServer(script) as server, pool_for(server) as pool:
        response = await pool.request("POST", [], b"{}")
        await until_received(response, len(payload))
        assert await response.next_chunk() == payload
        held.set()
        assert await response.next_chunk() == b""


async def until_received(response: http_client.Response, size: int) -> None:
    """Let the loop run until `size` body bytes have arrived on `response`'s connection (bounded)."""
    conn = response._conn  # noqa: SLF001
    for _ in range(100_000):
        if conn.received >= size:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {conn.received} of {size} bytes arrived")


async def test_a_body_of_tiny_chunks_costs_memory_in_proportion_to_its_bytes_not_its_chunks() -> None:
    """Bounds count payload bytes; a 2-byte chunk kept as an object of its own costs ~20 times that.
    The server is a thread with a blocking socket, so its sending allocates nothing that is traced."""
    payload = b"x" * (1024 * 1024)
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + tiny_chunks(payload)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)
            conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pool = ConnectionPool(Origin(f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"), 1, 30.0, 5.0)
    tracemalloc.start()
    try:
        response = await pool.request("POST", [], b"{}")
        body = await response.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await pool.close()
        listener.close()
    assert body == payload
    # The answer itself, a growing buffer's slack, one copy and a read's worth: a few payloads, not twenty.
    assert peak < 5 * len(payload), peak


async def test_interim_heads_are_capped() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    async with RawServer(answering(early * MAX_INTERIM_RESPONSES + OK)) as server, pool_for(server) as pool:
        assert await call(pool) == (200, b"{}")
    async with RawServer(answering(early * (MAX_INTERIM_RESPONSES + 1) + OK)) as server, pool_for(server) as pool:
        with pytest.raises(BadResponse, match=f"more than {MAX_INTERIM_RESPONSES} interim"):
            await call(pool)
        assert pool.size == 0


@pytest.mark.parametrize("status", [b"999", b"600", b"099", b"000"])
async def test_a_status_code_outside_100_to_599_is_a_bad_response(status: bytes) -> None:
    answer = b"HTTP/1.1 " + status + b" Weird\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    async with RawServer(answering(answer)) as server, pool_for(server) as pool:
        with pytest.raises(BadResponse, match="not an HTTP status code"):
            await call(pool)
        assert pool.size == 0
