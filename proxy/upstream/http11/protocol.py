"""One keep-alive connection to an upstream: an asyncio protocol with llhttp (httptools) parsing."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

import httptools

from proxy.upstream.http11.errors import BadResponse, ConnectFailed, ConnectionBroken, ResponseTooLarge

if TYPE_CHECKING:
    from proxy.upstream.http11.pool import ConnectionPool

__all__ = ["MAX_HEAD_BYTES", "MAX_INTERIM_RESPONSES", "MAX_RESPONSE_HEADERS", "MAX_UNPARSED_BYTES", "WRITE_PIECE"]

MAX_HEAD_BYTES = 64 * 1024
"""An upstream's status line and headers together may not exceed this (aiohttp's limits are similar).
Each header line counts its name, value, ``:`` and CRLF: what it took on the wire, at least."""
MAX_RESPONSE_HEADERS = 100
"""Header lines one response may have (trailers included), as Envoy's default `max_headers_count`: MCP
answers need a handful; thousands of tiny ones are only work and memory. More: `BadResponse`."""
MAX_UNPARSED_BYTES = 2 * MAX_HEAD_BYTES
"""Bytes that may arrive with neither a complete head nor a body byte among them. httptools hands a header
or trailer line over only once it ends, keeping it until then; this bounds what it can keep (plus one
read). Twice `MAX_HEAD_BYTES`, so a head within that bound never meets this one, however it is cut."""
MAX_INTERIM_RESPONSES = 10
"""1xx interim heads (100 Continue, 103 Early Hints) one answer may have before its final head; more is
`BadResponse`. A real server sends one or two; an endless run of them would keep a request waiting on bytes
that are never an answer."""
WRITE_PIECE = 64 * 1024
"""Request bytes handed to the transport at a time (a slice of the caller's bytes, not a copy). Once its
buffer is over the high-water mark the rest waits for `resume_writing`: the buffer stays under
high-water + one piece, whatever the upstream reads."""
_PAUSE_AT = 256 * 1024
"""Unread body bytes at which the socket stops being read (a slow client slows the upstream, not memory)."""
_RESUME_AT = 64 * 1024


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one exchange at a time. Parser callbacks fill the response."""

    __slots__ = (
        "_body_at_eof",
        "_discard",
        "_discard_timer",
        "_head",
        "_head_bytes",
        "_informational",
        "_interim",
        "_more",
        "_outgoing",
        "_parser",
        "_paused",
        "_piece",
        "_pool",
        "_transport",
        "_unparsed",
        "_waiter",
        "_write_paused",
        "buffered",
        "closed",
        "complete",
        "error",
        "headers",
        "idle_since",
        "keep_alive",
        "limit",
        "owner",
        "reason",
        "received",
        "status",
    )

    def __init__(self, pool: ConnectionPool, owner: int | None = None) -> None:
        self._pool = pool
        self.owner = owner
        """The downstream client connection this connection serves, for its whole life (`ConnectionPool`)."""
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._piece = b""
        self._more: bytearray | None = None
        """The body received and not yet taken: `_piece` while it is one piece (kept as it came, no copy),
        `_more` once a second piece joined it (one buffer, grown in place). Never a list of pieces: memory
        follows the bytes, not how finely the upstream chunked them, and a reader takes everything that has
        arrived at once, so per-piece work downstream is per network read, not per HTTP chunk."""
        self._outgoing: collections.deque[memoryview] = collections.deque()
        """The part of the request not yet handed to the transport (slices of the caller's bytes)."""
        self._write_paused = False
        """The transport's buffer is over its high-water mark: nothing more is written until it drains."""
        self._paused = False
        self._informational = False
        self._interim = 0
        self._body_at_eof = False
        self._discard: int | None = None
        """While set: the rest of the body is dropped as it arrives, up to this many more bytes."""
        self._discard_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        self._unparsed = 0
        """Bytes fed since the last complete head or body byte (`MAX_UNPARSED_BYTES`)."""
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.buffered = 0
        self.received = 0
        self.limit: int | None = None
        self.complete = False
        self.keep_alive = False
        self.closed = False
        self.error: BaseException | None = None
        self.idle_since = 0.0

    # -- the exchange, driven by `ConnectionPool.request` and `Response` ---------------------------------

    def send(self, parts: Iterable[bytes], on_write: Callable[[], None] | None = None) -> asyncio.Future[None]:
        """Start writing one request (`parts`, in order); the returned future resolves when the response
        head has arrived. The request goes out as the socket takes it (`_write_more`); an answer may come
        before all of it has, and the rest is still written, but the connection is then never reused.

        A connection already closing (the server's FIN read, its close not yet processed) is refused
        before `on_write` is called: nothing is written, so the failure is `ConnectFailed`."""
        if self.closed or self._transport is None or self._transport.is_closing():
            raise ConnectFailed("the pooled connection closed before the request was written")
        assert self._head is None
        self._reset()
        self._head = self._pool.loop.create_future()
        if on_write is not None:
            on_write()
        self._outgoing.extend(memoryview(part) for part in parts if part)
        self._write_more()
        return self._head

    def _write_more(self) -> None:
        """Hand the transport the next pieces of the request while its buffer is under the high-water mark
        (writing a piece may call `pause_writing` at once; `resume_writing` calls this again)."""
        transport = self._transport
        outgoing = self._outgoing
        while outgoing and not self._write_paused:
            if self.closed or transport is None or transport.is_closing():
                outgoing.clear()
                return
            view = outgoing[0]
            if len(view) > WRITE_PIECE:
                outgoing[0] = view[WRITE_PIECE:]
                view = view[:WRITE_PIECE]
            else:
                outgoing.popleft()
            transport.write(view)

    def _request_left(self) -> bool:
        """Whether part of the request is still on its way out (queued here or in the transport's buffer)."""
        return bool(self._outgoing) or (self._transport is not None and self._transport.get_write_buffer_size() > 0)

    def _reset(self) -> None:
        self.status = 0
        self.headers = []
        self._head_bytes = 0
        self._unparsed = 0
        self.buffered = 0
        self.received = 0
        self.limit = None
        self.complete = False
        self.keep_alive = False
        self._informational = False
        self._interim = 0
        self._body_at_eof = False
        self._piece, self._more = b"", None
        self._outgoing.clear()

    def take(self) -> bytes:
        """All the body received and not yet taken, as one piece (``b""`` if none); reading resumes if it
        had paused."""
        more = self._more
        if more is not None:
            data = bytes(more)
            self._more = None
        else:
            data = self._piece
        self._piece = b""
        self.buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return data

    async def wait(self) -> None:
        """Until more body arrives, the body completes, or the connection fails."""
        if self.buffered or self.complete or self.error is not None:
            return
        self._waiter = self._pool.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def discard_rest(self, max_bytes: int, within: float) -> None:
        """Drop the rest of the body as it arrives, then go back to the pool; close instead if more than
        `max_bytes` come or the body is not complete `within` seconds."""
        self._piece, self._more = b"", None
        self.buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        if self.complete:
            self.finish()
            return
        if self.closed or self.error is not None:
            self.abort()
            return
        self._discard = max_bytes
        self._discard_timer = self._pool.loop.call_later(within, self._discard_expired)

    def _discard_expired(self) -> None:
        self._discard_timer = None
        if self._discard is not None:
            self._discard = None
            self.abort()

    def _stop_discarding(self) -> None:
        self._discard = None
        if self._discard_timer is not None:
            self._discard_timer.cancel()
            self._discard_timer = None

    def finish(self) -> None:
        """The response is fully read: back to the pool if the server allowed it and the whole request has
        left, else closed (an answer that came before the request's end leaves the rest to be read as the
        next request)."""
        self._head = None
        self.limit = None
        if self.keep_alive and not self.closed and not self._request_left():
            self._pool.release(self)
        else:
            self.abort()

    def abort(self) -> None:
        """Close now; the connection is never reused."""
        if self._transport is not None and not self.closed:
            self._transport.abort()
        self._lost(ConnectionBroken("connection closed by the proxy"))

    # -- asyncio.Protocol -------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            self._fail(BadResponse("bytes arrived with no request waiting"))
            return
        self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
            if self.buffered:
                # Once per read, not per HTTP chunk (`on_body` may run thousands of times in one read).
                if self.buffered > _PAUSE_AT and not self._paused and self._transport is not None:
                    self._paused = True
                    self._transport.pause_reading()
                self._wake()
            if self._unparsed > MAX_UNPARSED_BYTES:
                self._fail(BadResponse(f"{self._unparsed} bytes with no complete head and no body (an endless header line)"))
                return
            if self._discard is not None and self.complete:
                self._stop_discarding()
                # One loop step later: a close that came with the stream's end is processed first,
                # so the connection is not handed to a request just as the server closes it.
                self._pool.loop.call_soon(self.finish)
        except httptools.HttpParserCallbackError as exc:
            self._fail(exc.__context__ or BadResponse(str(exc)))
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("upstream switched protocols (HTTP 101), which MCP never asks for"))
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(str(exc)))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._write_more()

    def connection_lost(self, exc: Exception | None) -> None:
        head_arrived = self._head is not None and self._head.done()
        if self._body_at_eof and head_arrived and not self.complete and exc is None and self.error is None:
            self.complete = True  # a body without length ends with a clean close (RFC 9112 §6.3), not a reset
            self._wake()
        text = f"upstream closed the connection: {exc}" if exc else "upstream closed the connection"
        self._lost(ConnectionBroken(text))

    # -- httptools callbacks ----------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise BadResponse("a second response arrived for one request")
        self.headers = []
        self.reason = b""
        self._head_bytes = 0

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))
        self.reason += status  # the reason phrase; llhttp may hand it over in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self.headers) >= MAX_RESPONSE_HEADERS:
            raise BadResponse(f"more than {MAX_RESPONSE_HEADERS} header lines")
        self._count_head(len(name) + len(value) + 3)  # and ":" and CRLF: an empty header is not free
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._unparsed = 0
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                raise BadResponse(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses before the answer")
            self._informational = True
            return
        if not 200 <= status <= 599:
            raise BadResponse(f"status {status} is not an HTTP status code (100-599)")
        self.status = status
        self._body_at_eof = status not in (204, 304) and not self._parser.should_keep_alive() and not any(
            key == b"content-length" or (key == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"))
            for key, value in ((name.lower(), value) for name, value in self.headers)
        )
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        # Runs once per HTTP chunk (a million 2-byte chunks: a million calls), so it only keeps the bytes;
        # pausing and waking the reader happen once per read, in `data_received`.
        self._unparsed = 0
        size = len(body)
        if self._discard is not None:
            self._discard -= size
            if self._discard < 0:
                raise BadResponse("the rest of an answer ran past what the proxy drains to reuse its connection")
            return
        self.received += size
        if self.limit is not None and self.received > self.limit:
            raise ResponseTooLarge(f"upstream answer exceeds {self.limit} bytes")
        more = self._more
        if more is not None:
            more += body
        elif self._piece:
            self._more = more = bytearray(self._piece)
            more += body
            self._piece = b""
        else:
            self._piece = body
        self.buffered += size

    def on_message_complete(self) -> None:
        self._unparsed = 0
        if self._informational:
            self._informational = False
            return
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._wake()

    # -- internals --------------------------------------------------------------------------------------

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise BadResponse(f"status line and headers exceed {MAX_HEAD_BYTES} bytes")

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self._lost(error)
        if self._transport is not None:
            self._transport.abort()

    def _lost(self, error: BaseException) -> None:
        self._stop_discarding()
        self._outgoing.clear()
        if self.error is None and not self.complete:
            self.error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._wake()
        if not self.closed:
            self.closed = True
            self._pool.forget(self)


