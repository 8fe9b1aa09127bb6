"""A keep-alive pool of connections to one origin, with connection affinity per downstream client.

Connection affinity. A connection is opened for one downstream client connection (its `owner`, a number
the handler gives each client connection) and carries that owner's requests only, for its whole life;
requests of no owner (None) share connections of no owner. This is what happens without a proxy: each
client connection has its own connection to the server. It matters because HTTP/1.1 has no request ids:
whatever arrives after a request is written is taken as its answer, so a broken server's duplicate or late
answer on a kept-alive connection is read as the answer to the *next* request on it. Shared connections
would hand that answer to whichever client came next, and no check on the answer can tell: SDK clients all
number their JSON-RPC requests from 0 or 1, and bodies that are not parseable JSON, SSE streams (passed on
before their ids are seen) and error answers cannot be checked at all. With affinity a server's stray
bytes can only reach the client connection whose exchange they garbled, as without the proxy (Envoy's
`connection_pool_per_downstream_connection`). The pool's limit still holds: an owner without an idle
connection of its own opens one, closing the least recently used idle connection of another owner when
the pool is full, so no request waits while connections sit idle (`ConnectionPool`).

Whether a connection may carry another exchange is never decided here: the pool asks each connection's
state machine (`is_closed`, `has_expired`; `connection.py` takes it back to idle only when that is safe)
and decides only *who* gets it.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import time
from collections.abc import Callable, Iterable

from proxy.upstream.http11.errors import ConnectFailed, LocalExhaustion, PoolExhausted
from proxy.upstream.http11.idle import IdleConnections
from proxy.upstream.http11.protocol import WRITE_PIECE, ConnectionProtocol
from proxy.upstream.http11.request import Origin, encode_head
from proxy.upstream.http11.response import Response

__all__ = ["ConnectionPool"]

_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})
"""Connect failures that are this machine running out (file descriptors, buffers, memory, local ports)."""


class ConnectionPool:
    """Keep-alive connections to one origin: at most `limit` open, idle ones kept `keepalive` seconds.

    Connections have affinity (module docstring): a connection opened for a request of `owner` (a
    downstream client connection; None for requests without one) serves only requests of that owner.
    Of an owner's idle connections the most recently used is reused first (it is the least likely to have
    been closed by the server). A request whose owner has none opens one; at the limit, the least recently
    used idle connection of another owner is closed to make room: a request never queues while a
    connection sits idle. Waiting for a free slot and connecting each get `connect_timeout`, and fail
    apart: a wait that runs out is the pool's limit (`PoolExhausted`), a connect that runs out the
    upstream's (`ConnectFailed`); either way nothing has been sent.
    """

    def __init__(
        self,
        origin: Origin,
        limit: int,
        keepalive: float,
        connect_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.origin = origin
        self.clock = clock
        """What `keepalive` is measured by (a test's fake clock, or `time.monotonic`)."""
        self._limit = limit
        self.keepalive = keepalive
        """Seconds a connection may sit idle and still be reused (each connection's `has_expired`)."""
        self._connect_timeout = connect_timeout
        self._idle = IdleConnections()
        self._open: set[ConnectionProtocol] = set()
        self._waiters: collections.deque[tuple[asyncio.Future[ConnectionProtocol | None], int | None]] = collections.deque()
        """Requests queued for a connection or a slot, in arrival order, with their owners."""
        self._connecting = 0
        self._closed = False
        self._sweeper: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    @property
    def size(self) -> int:
        """Connections open or being opened."""
        return len(self._open) + self._connecting

    @property
    def idle(self) -> int:
        """Connections open and waiting for their owner's next request."""
        return len(self._idle)

    def head(
        self, method: str, headers: Iterable[tuple[str, str]], body: bytes | None, lend_credentials: bool = True
    ) -> bytes:
        """The request line and headers for this pool's origin (`request.encode_head`)."""
        return encode_head(self.origin, method, headers, body, lend_credentials)

    async def request(
        self,
        method: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        on_write: Callable[[], None] | None = None,
        on_queue: Callable[[bool], None] | None = None,
        *,
        lend_credentials: bool = True,
        owner: int | None = None,
        query: str = "",
    ) -> Response:
        """Send one request; return once the answer's head has arrived, its body still to be read.

        `on_write` is called just before the request is handed to a socket: until then, whatever
        happens (an error, a timeout, a cancellation), nothing was sent. `on_queue(True)` is called when
        the request has to queue for a connection (the pool is at its limit), `on_queue(False)` when it
        leaves the queue: a caller's own timeout that ends while queued is the pool's limit speaking.
        The caller's timeout or cancellation also covers writing the request, and closes the connection.
        `lend_credentials`, `query`: see `encode_head`. `owner`: the downstream client connection the request came on; only
        a connection of that owner (or a new one) carries it (the module docstring: affinity).
        """
        head = encode_head(self.origin, method, headers, body, lend_credentials, query)
        # A small request goes out in one write, as one segment; a large body is written from the
        # caller's bytes, piece by piece, never copied.
        if not body:
            parts: tuple[bytes, ...] = (head,)
        elif len(head) + len(body) <= WRITE_PIECE:
            parts = (head + body,)
        else:
            parts = (head, body)
        # The common case without a coroutine: an idle connection of this owner, nobody queued before it.
        conn = None if self._closed or self._waiters else self._idle.take(owner, self.clock())
        if conn is None:
            conn = await self._acquire(owner, on_queue)
        try:
            await conn.send(parts, on_write, method == "HEAD", bool(body))
        except BaseException:
            conn.abort()
            raise
        return Response(conn)

    # -- connections: who gets one, in arrival order -----------------------------------------------------
    #
    # Invariants: `size` (open + connecting) never exceeds `limit`; a connection only ever carries
    # requests of the owner it was opened for; a waiter is handed either a connection of its owner or a
    # reserved slot (counted in `_connecting`) to connect with, in FIFO order; a connection freed while
    # the longest waiter is another owner's is closed and its slot handed to that waiter; a waiter that
    # leaves (cancelled, timed out) after being handed one passes it on, so no free connection or slot is
    # ever stranded while someone waits; and nobody waits while a connection is idle (idle connections
    # exist only while the queue is empty, and an arrival at the limit closes one to make room).

    async def _acquire(self, owner: int | None, on_queue: Callable[[bool], None] | None = None) -> ConnectionProtocol:
        """A connection for `owner` when none of its idle ones was at hand (`request` tried): make room,
        queue, or connect."""
        if self._closed:
            raise ConnectFailed("the connection pool is closed")
        if not self._waiters and self.size >= self._limit and self._idle:
            # No idle connection of this owner: the least recently used one of another owner is closed,
            # so the request opens its own rather than queueing behind connections nobody is using (their
            # owner pays a connect on its next request, as after a keep-alive expiry).
            self._idle.close_oldest()
        reserved = False
        if self._waiters or self.size >= self._limit:
            if on_queue is not None:
                on_queue(True)
            try:
                async with asyncio.timeout(self._connect_timeout):
                    handed = await self._wait_turn(owner)
            except TimeoutError:
                raise PoolExhausted(
                    f"all {self._limit} pooled connections stayed busy for {self._connect_timeout:g}s"
                ) from None
            if on_queue is not None:
                on_queue(False)
            if handed is not None:
                return handed
            reserved = True
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._connect(reserved, owner)
        except TimeoutError:
            raise ConnectFailed(f"no connection within {self._connect_timeout:g}s") from None

    async def _wait_turn(self, owner: int | None) -> ConnectionProtocol | None:
        """Queue for a connection of `owner` (returned) or a reserved slot to open one in (None)."""
        waiter: asyncio.Future[ConnectionProtocol | None] = self.loop.create_future()
        entry = (waiter, owner)
        self._waiters.append(entry)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._pass_on(waiter.result())
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise

    def _pass_on(self, handed: ConnectionProtocol | None) -> None:
        """What a departing waiter was handed goes to the next one (or back to the pool)."""
        if handed is not None:
            self.release(handed)
        else:
            self._connecting -= 1
            self._free_slot()

    async def _connect(self, reserved: bool, owner: int | None) -> ConnectionProtocol:
        """Open a connection for `owner` in a free slot (`reserved`: one a waiter was handed, already counted)."""
        origin = self.origin
        if not reserved:
            self._connecting += 1
        opened = False
        try:
            if origin.unix_socket is not None:
                _, conn = await self.loop.create_unix_connection(
                    lambda: ConnectionProtocol(self, owner), origin.unix_socket
                )
            else:
                _, conn = await self.loop.create_connection(
                    lambda: ConnectionProtocol(self, owner),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl is not None else None,
                )
            if self._closed:
                conn.abort()
                raise ConnectFailed("the connection pool is closed")
            if conn.is_closed():  # uvloop may run connection_lost before create_connection returns
                raise ConnectFailed("upstream closed the connection as it was opened")
            self._open.add(conn)
            opened = True
            return conn
        except OSError as exc:
            failure = LocalExhaustion if exc.errno in _LOCAL_ERRNOS else ConnectFailed
            raise failure(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        except UnicodeError:  # a host name IDNA cannot encode: nothing could be sent
            raise ConnectFailed("the upstream host name cannot be encoded (IDNA)") from None
        finally:
            self._connecting -= 1
            if not opened:
                self._free_slot()

    def release(self, conn: ConnectionProtocol) -> None:
        """A connection whose exchange is complete: to the longest waiter if that is of its owner; closed,
        its slot going to the longest waiter, if that is another owner's; else kept idle."""
        if self._closed or conn.is_closed():
            conn.abort()
            return
        waiters = self._waiters
        while waiters:
            waiter, owner = waiters[0]
            if waiter.done():
                waiters.popleft()
            elif owner == conn.owner:
                waiters.popleft()
                waiter.set_result(conn)
                return
            else:
                conn.abort()  # `forget` hands its slot to that waiter (`_free_slot`)
                return
        self._idle.add(conn)
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.keepalive, self._sweep)

    def _sweep(self) -> None:
        """Close idle connections past `keepalive` (oldest first), so quiet pools do not hold sockets."""
        now = self.clock()
        next_expiry = self._idle.close_expired(now)
        self._sweeper = None if next_expiry is None else self.loop.call_later(next_expiry - now, self._sweep)

    def forget(self, conn: ConnectionProtocol) -> None:
        """A connection has closed: its slot is free."""
        self._idle.remove(conn)
        if conn in self._open:
            self._open.discard(conn)
            self._free_slot()

    def _free_slot(self) -> None:
        """A slot opened up: reserve it for the longest waiter, who will connect in it."""
        if self._closed or self.size >= self._limit:
            return
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                self._connecting += 1
                waiter.set_result(None)
                return

    async def __aenter__(self) -> ConnectionPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection, idle or busy (a response still being read then fails with
        `ConnectionBroken`); waiting and later requests fail as never sent (`ConnectFailed`)."""
        await self.close()

    async def close(self) -> None:
        """Close every connection, idle or busy; waiting and later requests fail as never sent."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter, _ in waiters:
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the connection pool is closed"))
        for conn in list(self._open):
            conn.abort()
        self._idle.clear()

