"""The MCP listener's limits on what a client connection may hold, over raw sockets (HTTP clients hide them).

Header timeout, idle keep-alive timeout, the connection cap, the request-head size and header count,
and a refused request without Host. Timeouts are injected short; nothing asserts on wall time: each
test waits for the proxy to close the connection (EOF), bounded only by a generous overall timeout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from proxy.app import ProxyServer, running_proxy
from proxy.config import FD_RESERVE, MAX_DEFAULT_CONNECTIONS, MIN_CONNECTIONS, default_connection_cap
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
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    body = await asyncio.wait_for(reader.readexactly(length), WAIT)
    return head.split(b"\r\n")[0], json.loads(body)


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the proxy sends until it closes the connection."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        return b"<reset>"


def rejected(proxy: ProxyServer, reason: str) -> float:
    sample = proxy.metrics.rejected.labels(reason=reason)._value.get()  # type: ignore[attr-defined]
    return float(sample)


def error_of(answer: bytes) -> tuple[bytes, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)


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
            w1.write(request())  # the connections inside the cap keep serving
            assert (await read_answer(r1))[0] == b"HTTP/1.1 200 OK"
        server = proxy._proxy_runner.server  # type: ignore[union-attr]
        async with asyncio.timeout(WAIT):
            while server.open:  # type: ignore[union-attr]
                await asyncio.sleep(0.01)  # the proxy notices the two closes
        async with connection(proxy) as (reader, writer):
            writer.write(request())
            assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"


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
        status, error = await read_answer(reader)
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
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
        line, body = await read_answer(reader)
        assert int(line.split()[1]) == status
        if status == 431:
            assert body["error"]["data"] == {"reason": "headers_too_large"}
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
        line, error = await read_answer(reader)
        assert line.split(b" ", 1)[1] == b"400 Bad Request"
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
            async with connection(proxy) as (refused, _):
                assert await until_closed(refused) in (b"", b"<reset>")
            await proxy.apply(proxy_config(upstream.url, limits={"max_connections": 2, "header_timeout": "200ms"}))
            async with connection(proxy) as (second, _):
                assert await until_closed(second) == b""  # accepted now, and closed by the new header timeout
            assert (rejected(proxy, "connection_limit"), rejected(proxy, "header_timeout")) == (1, 1)
