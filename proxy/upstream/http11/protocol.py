"""The asyncio side of one upstream connection: the socket's bytes into a `ClientConnection`, its events out.

Thin on purpose: every decision about the exchange (what the bytes mean, when the connection may be
reused, every bound on the answer) is the state machine's (`connection.py`), tested with bytes alone. This
adapter owns only what needs the event loop:

- writing, with flow control: the request is handed to the socket `WRITE_PIECE` bytes at a time, and only
  while the transport's buffer is under its high-water mark (`pause_writing`/`resume_writing`), as slices
  of the caller's bytes, never copies. An upstream that never reads costs at most high-water + one piece
  of buffer per connection, not the whole body. A request still queued here or in the transport's buffer
  when the answer's head arrives, or when the answer completes, is "request left": the server answered
  before it had it all, and the connection is closed, never reused (nginx's rule; the state machine adds
  the cases where the request left but may not have been read);
- reading, with flow control: unread body past `_PAUSE_AT` bytes pauses the socket (a slow client slows
  the upstream, not memory); the reader is woken and reading paused once per read, not per HTTP chunk;
- the futures a request waits on (its head, more body) and the timer that bounds a drained body;
- telling the pool when the connection closes (`ConnectionPool.forget`) or may be reused (`release`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from proxy.upstream.http11.connection import ClientConnection
from proxy.upstream.http11.errors import ConnectFailed, ConnectionBroken
from proxy.upstream.http11.state import CLOSED, CLOSED_NOW, DRAINED, ENDED, HEAD_ARRIVED

if TYPE_CHECKING:
    from proxy.upstream.http11.pool import ConnectionPool

__all__ = ["WRITE_PIECE", "ConnectionProtocol"]

WRITE_PIECE = 64 * 1024
"""Request bytes handed to the transport at a time (a slice of the caller's bytes, not a copy). Once its
buffer is over the high-water mark the rest waits for `resume_writing`: the buffer stays under
high-water + one piece, whatever the upstream reads."""
_PAUSE_AT = 256 * 1024
"""Unread body bytes at which the socket stops being read; the reader that takes them resumes it."""
_RARE = ~(HEAD_ARRIVED | ENDED)
"""Events other than those of an ordinary read (`CLOSED_NOW`, `DRAINED`): `_react` handles them."""


class ConnectionProtocol(asyncio.Protocol):
    """One keep-alive connection of a `ConnectionPool`, serving one `owner`, one exchange at a time."""

    __slots__ = (
        "_discard_timer",
        "_early",
        "_head",
        "_outgoing",
        "_pool",
        "_transport",
        "_waiter",
        "_write_paused",
        "conn",
        "has_expired",
        "is_closed",
        "is_idle",
        "owner",
        "read_paused",
    )

    def __init__(self, pool: ConnectionPool, owner: int | None = None) -> None:
        self._pool = pool
        self.owner = owner
        """The downstream client connection this connection serves, for its whole life (`ConnectionPool`)."""
        self.conn = conn = ClientConnection(pool.keepalive)
        """The state of the connection and of its exchange: everything but the I/O."""
        # What the pool asks is answered by the state machine itself (bound here: no call in between).
        self.is_idle: Callable[[], bool] = conn.is_idle
        self.is_closed: Callable[[], bool] = conn.is_closed
        self.has_expired: Callable[[float], bool] = conn.has_expired
        self._transport: asyncio.Transport | None = None
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._outgoing: collections.deque[memoryview] = collections.deque()
        """The part of the request not yet handed to the transport (slices of the caller's bytes)."""
        self._write_paused = False
        """The transport's buffer is over its high-water mark: nothing more is written until it drains."""
        self.read_paused = False
        """Reading stopped at `_PAUSE_AT` unread bytes; whoever takes the body calls `resume_reading`."""
        self._discard_timer: asyncio.TimerHandle | None = None
        self._early = False
        """The answer's head arrived while part of the request was still on its way out."""

    @property
    def expires_at(self) -> float:
        """When an idle connection stops being fit for reuse (`has_expired` from then on)."""
        return self.conn.idle_since + self.conn.keepalive

    # -- the exchange, driven by `ConnectionPool.request` and `Response` ---------------------------------

    def send(
        self,
        parts: Sequence[bytes],
        on_write: Callable[[], None] | None = None,
        bodiless: bool = False,
        with_body: bool = False,
    ) -> asyncio.Future[None]:
        """Start writing one request (`parts`, in order); the returned future resolves when the response
        head has arrived. The request goes out as the socket takes it (`_write_more`); an answer may come
        before all of it has, and the rest is still written, but the connection is then never reused.

        A connection already closing (the server's FIN read, its close not yet processed) is refused
        before `on_write` is called: nothing is written, so the failure is `ConnectFailed`. `bodiless`: the
        answer has no body whatever its head says (a HEAD request's); `with_body`: the request has one."""
        transport = self._transport
        if self.conn.state is CLOSED or transport is None or transport.is_closing():
            raise ConnectFailed("the pooled connection closed before the request was written")
        self.conn.start(bodiless, with_body)
        self._early = False
        self._head = head = self._pool.loop.create_future()
        if on_write is not None:
            on_write()
        if len(parts) == 1 and len(parts[0]) <= WRITE_PIECE and not self._write_paused:
            transport.write(parts[0])  # a small request: one write, no queue
        else:
            self._outgoing.extend(memoryview(part) for part in parts if part)
            self._write_more()
        return head

    def _write_more(self) -> None:
        """Hand the transport the next pieces of the request while its buffer is under the high-water mark
        (writing a piece may call `pause_writing` at once; `resume_writing` calls this again)."""
        transport = self._transport
        outgoing = self._outgoing
        while outgoing and not self._write_paused:
            if self.conn.state is CLOSED or transport is None or transport.is_closing():
                outgoing.clear()
                return
            view = outgoing[0]
            if len(view) > WRITE_PIECE:
                outgoing[0] = view[WRITE_PIECE:]
                view = view[:WRITE_PIECE]
            else:
                outgoing.popleft()
            transport.write(view)

    async def wait(self) -> None:
        """Until more body arrives, the body completes, or the connection fails."""
        conn = self.conn
        if conn.buffered or conn.complete or conn.error is not None:
            return
        self._waiter = self._pool.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def discard_rest(self, max_bytes: int, within: float) -> None:
        """Drop the rest of the body as it arrives, then go back to the pool; close instead if more than
        `max_bytes` come or the body is not complete `within` seconds."""
        conn = self.conn
        conn.discard(max_bytes)
        if self.read_paused:
            self.resume_reading()
        if conn.complete:
            self.finish()
        elif conn.is_closed():
            self.abort()
        else:
            self._discard_timer = self._pool.loop.call_later(within, self._discard_expired)

    def _discard_expired(self) -> None:
        self._discard_timer = None
        self.abort()

    def finish(self) -> None:
        """The response is fully read: back to the pool if the state machine says it may be reused (the
        server allowed it and the whole request has left), else closed."""
        self._head = None
        # Part of the request still on its way out (queued here or in the transport's buffer)?
        request_left = (
            self._early
            or bool(self._outgoing)
            or (self._transport is not None and self._transport.get_write_buffer_size() > 0)
        )
        if self.conn.finish(request_left, self._pool.clock()):
            self._pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close now; the connection is never reused."""
        if self.conn.close(ConnectionBroken("connection closed by the proxy")):
            if self._transport is not None:
                self._transport.abort()
            self._closed()

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        events = conn.feed(data)
        if events & HEAD_ARRIVED and self._head is not None and not self._head.done():
            self._head.set_result(None)
            if self._outgoing or (self._transport is not None and self._transport.get_write_buffer_size()):
                self._early = True  # answered before it had the whole request
        if events & _RARE and self._react(events):
            return
        if conn.buffered or events & ENDED:
            # Once per read, not per HTTP chunk (`on_body` may run thousands of times in one read).
            if conn.buffered > _PAUSE_AT and not self.read_paused and self._transport is not None:
                self.read_paused = True
                self._transport.pause_reading()
            self._wake()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._write_more()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            events = self.conn.feed(b"")  # ends a body that runs to the close, then closes
        else:
            events = CLOSED_NOW if self.conn.close(ConnectionBroken(f"upstream closed the connection: {exc}")) else 0
        if events & ENDED:
            self._wake()
        if events & CLOSED_NOW:
            self._closed()

    # -- internals --------------------------------------------------------------------------------------

    def _react(self, events: int) -> bool:
        """Act on the rarer things one read did (the connection closed, a drained body ended); True if
        it closed the connection."""
        if events & CLOSED_NOW:
            if self._transport is not None:
                self._transport.abort()
            self._closed()
            return True
        if events & DRAINED:
            self._stop_discarding()
            # One loop step later: a close that came with the stream's end is processed first,
            # so the connection is not handed to a request just as the server closes it.
            self._pool.loop.call_soon(self.finish)
        return False

    def resume_reading(self) -> None:
        """The reader took the body: the socket is read again."""
        self.read_paused = False
        if self._transport is not None:
            self._transport.resume_reading()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _stop_discarding(self) -> None:
        if self._discard_timer is not None:
            self._discard_timer.cancel()
            self._discard_timer = None

    def _closed(self) -> None:
        """The state machine just closed: release everything that waited on the connection, free its slot."""
        self._stop_discarding()
        self._outgoing.clear()
        error = self.conn.error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error or ConnectionBroken("connection closed"))
        self._wake()
        self._pool.forget(self)
