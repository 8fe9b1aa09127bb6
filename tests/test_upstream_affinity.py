"""Connection affinity: an upstream connection serves one downstream client connection (`owner`) only.

A broken upstream that answers twice puts its second answer where the *next* request on that connection
expects its own; HTTP/1.1 has no request ids, and two SDK clients both count their JSON-RPC ids from 1, so
no check on the answer can tell. With affinity the next request on that connection is the same client's
(as without a proxy), and another client's request goes out on a connection of its own.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.http11.client import ConnectionPool, Origin
from tests.fakes import first, make_call
from tests.test_http_client import OK, RawServer, answering, answering_after, pool_for, read_request, until
from tests.test_transport import upstream_for

LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


def _answer(form: str, who: bytes) -> bytes:
    """The answer to request id 1 carrying `who`'s secret, as JSON, as non-UTF-8 JSON or as SSE."""
    if form == "sse":
        event = b'data: {"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret of ' + who + b'"}]}}\n\n'
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
        )
    tail = b" \xff" if form == "non-utf8" else b""
    body = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"secret of ' + who + tail + b'"}]}}'
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def answering_twice(form: str) -> tuple[RawServer, list[bytes]]:
    """A server that sends every answer twice: the copy goes out once the next request on that connection
    has been read (so it arrives as that request's answer, with nothing on the wire while idle)."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        previous: bytes | None = None
        while True:
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            found = re.search(rb"(?i)\r\nauthorization: bearer (\w+)", request)
            who = found.group(1) if found else b"nobody"
            seen.append(who)
            if previous is not None:
                writer.write(previous)  # the duplicate of the last answer, after the next request came
            previous = _answer(form, who)
            writer.write(previous)
            await writer.drain()

    return RawServer(script), seen


def _secret(body: bytes) -> bytes:
    found = re.search(rb"secret of (\w+)", body)
    assert found is not None, body
    return found.group(1)


@pytest.mark.parametrize("form", ["json", "non-utf8", "sse"])
async def test_two_clients_with_the_same_id_never_get_each_others_duplicate_answer(form: str) -> None:
    server, seen = answering_twice(form)
    async with server, upstream_for(server) as transport:
        alice = make_call(LIST, owner=1, Authorization="Bearer alice")
        bob = make_call(LIST, owner=2, Authorization="Bearer bob")
        assert _secret((await transport.send(first(alice))).body) == b"alice"
        assert _secret((await transport.send(first(bob))).body) == b"bob"  # not alice's copy, though the id is 1 too
        assert server.connections == 2
        await until(lambda: transport.pool.idle == 2)  # a drained SSE stream goes back a loop step later
        # The same client again: its own connection, and so the server's duplicate of its own answer, as it
        # would get talking to that server directly (the server's bug, nobody else's secret).
        again = make_call(LIST, owner=1, Authorization="Bearer alice")
        assert _secret((await transport.send(first(again))).body) == b"alice"
        assert server.connections == 2
    assert seen == [b"alice", b"bob", b"alice"]


async def _owned_call(pool: ConnectionPool, owner: int | None) -> tuple[int, bytes]:
    response = await pool.request("POST", [], b"{}", owner=owner)
    return response.status, await response.read()


async def test_each_owner_reuses_its_own_connections_only() -> None:
    async with RawServer(answering(OK)) as server, pool_for(server) as pool:
        for _ in range(3):
            assert await _owned_call(pool, 1) == (200, b"{}")
        assert server.connections == 1  # a same-owner sequence keeps one connection
        assert await _owned_call(pool, 2) == (200, b"{}")
        assert server.connections == 2
        assert await _owned_call(pool, 1) == (200, b"{}")
        assert await _owned_call(pool, 2) == (200, b"{}")
        assert server.connections == 2
        assert await _owned_call(pool, None) == (200, b"{}")  # no owner: only connections of no owner
        assert await _owned_call(pool, None) == (200, b"{}")
        assert server.connections == 3
        assert (pool.size, pool.idle) == (3, 3)


async def test_at_the_limit_an_idle_connection_of_another_owner_is_closed_rather_than_queued_behind() -> None:
    async with RawServer(answering(OK)) as server, pool_for(server, limit=2, connect_timeout=0.01) as pool:
        assert await _owned_call(pool, 1) == (200, b"{}")
        assert await _owned_call(pool, 2) == (200, b"{}")
        assert await _owned_call(pool, 3) == (200, b"{}")  # owner 1's connection, the least recently used, goes
        assert (server.connections, pool.size, pool.idle) == (3, 2, 2)
        assert await _owned_call(pool, 2) == (200, b"{}")  # still there
        assert server.connections == 3
        assert await _owned_call(pool, 1) == (200, b"{}")  # closed: a new one (owner 3's is now the oldest)
        assert await _owned_call(pool, 2) == (200, b"{}")
        assert (server.connections, pool.size, pool.idle) == (4, 2, 2)


async def test_a_connection_freed_for_a_waiter_of_another_owner_is_closed_and_its_slot_handed_on() -> None:
    gate = asyncio.Event()
    async with RawServer(answering_after(gate)) as server, pool_for(server, limit=1) as pool:
        first = asyncio.create_task(_owned_call(pool, 1))
        await until(lambda: pool.size == 1)
        other = asyncio.create_task(_owned_call(pool, 2))
        same = asyncio.create_task(_owned_call(pool, 2))
        await until(lambda: len(pool._waiters) == 2)  # noqa: SLF001
        gate.set()
        assert await first == (200, b"{}")
        assert await other == (200, b"{}")
        assert await same == (200, b"{}")
        # owner 1's connection was closed for owner 2, whose second call then reused owner 2's connection.
        assert (server.connections, pool.size) == (2, 1)


async def test_a_waiter_of_the_same_owner_is_handed_the_connection() -> None:
    gate = asyncio.Event()
    async with RawServer(answering_after(gate)) as server, pool_for(server, limit=1) as pool:
        first = asyncio.create_task(_owned_call(pool, 1))
        await until(lambda: pool.size == 1)
        second = asyncio.create_task(_owned_call(pool, 1))
        await until(lambda: len(pool._waiters) == 1)  # noqa: SLF001
        gate.set()
        assert await first == (200, b"{}")
        assert await second == (200, b"{}")
        assert server.connections == 1


async def test_idle_connections_of_every_owner_expire_after_keepalive() -> None:
    now = [100.0]
    async with RawServer(answering(OK)) as server:
        pool = ConnectionPool(Origin(server.url), 8, 5.0, 5.0, lambda: now[0])
        try:
            await _owned_call(pool, 1)
            now[0] += 1.0
            await _owned_call(pool, 2)
            await _owned_call(pool, None)
            assert pool.idle == 3
            now[0] += 4.5
            pool._sweep()  # noqa: SLF001 - what the keep-alive timer runs
            assert (pool.size, pool.idle) == (2, 2)  # owner 1's, idle since 100.0, is gone
            now[0] += 5.0
            assert await _owned_call(pool, 2) == (200, b"{}")  # its own connection is stale: a new one
            assert server.connections == 4
            pool._sweep()  # noqa: SLF001
            assert (pool.size, pool.idle) == (1, 1)
        finally:
            await pool.close()


owners = st.one_of(st.none(), st.integers(1, 4))


@given(limit=st.integers(1, 3), batches=st.lists(st.lists(owners, min_size=1, max_size=5), min_size=1, max_size=6))
def test_whatever_the_owners_and_the_limit_a_connection_carries_one_owner_and_the_pool_stays_bounded(
    limit: int, batches: list[list[int | None]]
) -> None:
    """Batches of concurrent calls of random owners through a pool of `limit`: every call is answered (the
    queue hands connections or slots on, idle ones make room), no upstream connection ever carries two
    owners' requests, and the pool never holds more than `limit`."""
    seen: list[set[bytes]] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mine: set[bytes] = set()
        seen.append(mine)
        while True:
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            found = re.search(rb"\r\nX-Owner: (\w+)", request)
            assert found is not None
            mine.add(found.group(1))
            writer.write(OK)
            await writer.drain()

    async def scenario() -> None:
        async with RawServer(script) as server, pool_for(server, limit=limit) as pool:

            async def one(owner: int | None) -> tuple[int, bytes]:
                response = await pool.request("POST", [("X-Owner", str(owner))], b"{}", owner=owner)
                return response.status, await response.read()

            for batch in batches:
                results = await asyncio.gather(*(one(owner) for owner in batch))
                assert results == [(200, b"{}")] * len(batch)
                assert pool.idle <= pool.size <= limit

    asyncio.run(scenario())
    assert all(len(owners_seen) <= 1 for owners_seen in seen), seen
