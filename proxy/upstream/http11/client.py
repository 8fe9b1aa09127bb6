"""The upstream HTTP/1.1 client: a keep-alive pool of asyncio protocols, with llhttp (httptools) parsing.

Why not aiohttp's `ClientSession`: a sidecar pays its client on every call. Measured with
``python -m tests.perf`` on the project's 2-core VM, `ClientSession` cost about 85-100 µs of CPU per
request: more than the aiohttp server side and the whole policy pipeline together, so no proxy built
on it could match a naive forwarder built on it. The proxy needs a small part of a general client: one
origin per pool, no cookies, redirects, proxies, auth flows or decompression, one request at a time
per connection. This module is that part; parsing, the part that must be exactly right, is llhttp's
(the parser of Node.js and of aiohttp itself), through httptools.

It also knows what a general client hides: whether the request could have reached the upstream.
Failures before a connection exists (connect refused, DNS, connect timeout, waiting for a free pool
slot) raise `ConnectFailed`: nothing was sent. Anything after raises `ConnectionBroken` or
`BadResponse`, and `transport.py` turns those into the proxy's own errors.

One `Response` at a time owns its connection. Its body is read whole (`read`) or chunk by chunk
(`next_chunk`); the connection goes back to the pool only once the body is complete and the server
allowed keep-alive. `close()` abandons a response half-read: its connection is closed, never reused.

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

A pooled connection must never carry one exchange's bytes into the next, even within one owner. Hence:

- an idle connection that receives anything (a late duplicate, an unsolicited answer) is dead, closed;
- a connection whose exchange was abandoned (a timeout, a cancellation, a body left half-read) is closed;
- a connection whose answer completed before the whole request had left (its tail still queued here, or
  still in the transport's buffer) is closed. This was the way a stray answer reached another client: an
  upstream that answers early and keeps the connection reads the rest of that body as the next request,
  and a body that ends in a request of its own gets it answered ahead of the next client's.

Bounds on what an upstream can make the proxy hold (every one closes the connection when exceeded):

- `MAX_HEAD_BYTES` for the status line and headers, each header line counted with its ``:`` and CRLF
  (an empty header is 4 bytes on the wire, not 0), and `MAX_RESPONSE_HEADERS` header lines: `BadResponse`;
- `MAX_UNPARSED_BYTES` arriving with no complete head and no body byte in between: httptools keeps a
  header (or trailer) line to itself until its end, so an endless one would grow without this: `BadResponse`;
- the body: the caller's `limit` (`ResponseTooLarge`); unread body is paused at `_PAUSE_AT` bytes. It is
  held as one buffer, not as the pieces it came in, and handed on as one piece per read, whatever the
  chunking: a body of 2-byte chunks costs its bytes (not ~40 per chunk), and a million chunks are one
  piece per network read for the caller (its timeout, parse and write to its client), not a million;
- `MAX_INTERIM_RESPONSES` 1xx heads before the answer, and a final status in 200-599: `BadResponse`;
- writes: the request is handed to the socket `WRITE_PIECE` bytes at a time, and only while the
  transport's buffer is under its high-water mark (`pause_writing`/`resume_writing`), as slices of the
  caller's bytes, never copies: an upstream that never reads costs at most high-water + one piece of
  buffer per connection, not the whole body. The caller's timeout covers the write; a request whose
  write is cancelled or times out closes its connection.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import errno
import ssl
import time
from collections.abc import Callable, Iterable
from typing import cast
from urllib.parse import quote, unquote, urlsplit

import httptools
from multidict import CIMultiDict

__all__ = [
    "BadResponse",
    "ConnectFailed",
    "ConnectionBroken",
    "ConnectionPool",
    "InvalidHeader",
    "LocalExhaustion",
    "PoolExhausted",
    "Origin",
    "Response",
    "ResponseTooLarge",
]

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
WRITE_PIECE = 64 * 1024
"""Request bytes handed to the transport at a time (a slice of the caller's bytes, not a copy). Once its
buffer is over the high-water mark the rest waits for `resume_writing`: the buffer stays under
high-water + one piece, whatever the upstream reads."""
MAX_INTERIM_RESPONSES = 10
"""1xx interim heads (100 Continue, 103 Early Hints) one answer may have before its final head; more is
`BadResponse`. A real server sends one or two; an endless run of them would keep a request waiting on bytes
that are never an answer."""
_PAUSE_AT = 256 * 1024
"""Unread body bytes at which the socket stops being read (a slow client slows the upstream, not memory)."""
_RESUME_AT = 64 * 1024


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


MAX_REASON = 256
"""Longest reason phrase passed on to the client (it is a courtesy text, never needed)."""


class ConnectFailed(Exception):
    """No connection could be had (refused, DNS, timeout, no free slot in time): nothing was sent."""


class LocalExhaustion(ConnectFailed):
    """The proxy's own resources ran out before anything was sent: not the upstream's doing."""


class PoolExhausted(LocalExhaustion):
    """Every connection stayed busy until the connect timeout: the pool's limit, not the upstream, said no."""


_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})
"""Connect failures that are this machine running out (file descriptors, buffers, memory, local ports)."""


class ConnectionBroken(Exception):
    """The connection failed after the request was written: the upstream may have acted on it."""


class BadResponse(Exception):
    """The upstream's answer is not valid HTTP/1.1 (or its head is too large); the connection is closed."""


class ResponseTooLarge(Exception):
    """The body exceeds the limit the caller gave; the connection is closed."""


class InvalidHeader(ValueError):
    """A header name or value the client cannot write (a line break would split the request); nothing was sent."""


class Origin:
    """Where a pool connects and what every request carries: parsed once from the upstream URL."""

    __slots__ = ("authorization", "host", "host_header", "port", "ssl", "target")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL (scheme {parts.scheme!r})")  # the URL itself may hold a password
        secure = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if secure else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if secure else None
        default_port = parts.port is None or parts.port == (443 if secure else 80)
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = name if default_port else f"{name}:{self.port}"
        # What a config may spell raw (a space, non-ASCII) goes out percent-encoded; escapes already there stay.
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        self.target = path + (f"?{quote(parts.query, safe=_QUERY_SAFE)}" if parts.query else "")
        self.authorization: str | None = None
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + base64.b64encode(userinfo.encode()).decode("ascii")


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


class Response:
    """The status and headers of one upstream answer, and its body still to be read (or abandoned)."""

    __slots__ = ("_conn", "_done", "content_length", "content_type", "header_items", "reason", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._done = False
        self.status = conn.status
        reason = conn.reason.decode("latin-1")
        self.reason = reason if len(reason) <= MAX_REASON and reason.isprintable() else ""
        """The reason phrase as the server sent it ("" when it had none, or one unfit to repeat)."""
        self.content_type = ""
        """The media type alone, lower case (``application/json``), or "" without a Content-Type."""
        self.content_length: int | None = None
        items: list[tuple[str, str]] = []
        for raw_name, raw_value in conn.headers:
            name = raw_name.decode("utf-8", "surrogateescape")
            value = raw_value.decode("utf-8", "surrogateescape")
            items.append((name, value))
            key = name.lower()
            if key == "content-type" and not self.content_type:  # the first one decides, as in aiohttp
                self.content_type = value.split(";", 1)[0].strip().lower()
            elif key == "content-length" and value.isdigit():
                self.content_length = int(value)
        self.header_items = items
        """The headers as sent, in order, repeats kept."""

    @property
    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict(self.header_items)

    async def read(self, limit: int | None = None, *, hold: bool = False) -> bytes:
        """The whole body, then the connection is released. Over `limit` bytes: `ResponseTooLarge`.

        `hold`: the connection stays this response's until `release()` (or `close()`), so the caller can
        judge the body (is it the answer to *this* request?) before the connection serves anyone else."""
        if self._done:
            raise RuntimeError("this response's body was already read or abandoned")
        conn = self._conn
        if limit is not None and conn.received > limit:
            self.close()
            raise ResponseTooLarge(f"upstream answer exceeds {limit} bytes")
        conn.limit = limit
        body: bytes | bytearray = b""  # one buffer, whatever the number of pieces (each is a read's worth)
        try:
            while True:
                piece = conn.take()
                if not body:
                    body = piece
                elif piece:
                    if isinstance(body, bytes):
                        body = bytearray(body)
                    body += piece
                if conn.complete:
                    break
                self._check(conn)
                await conn.wait()
        except BaseException:
            self.close()
            raise
        if not hold:
            self._release()
        return bytes(body) if isinstance(body, bytearray) else body

    def release(self) -> None:
        """Give back the connection of a body read whole with `hold` (to the pool, if it may be reused)."""
        self._release()

    async def next_chunk(self) -> bytes:
        """The body that has arrived since the last call, as one piece (waiting for some if none has);
        ``b""`` once it is complete (the connection released). One piece for everything buffered, however
        many HTTP chunks it came in: what the caller does per piece (a timeout, a parse, a write to its
        client) then costs per network read, and a million 2-byte chunks are not a million iterations."""
        conn = self._conn
        while True:
            if self._done:
                return b""
            chunk = conn.take()
            if chunk:
                return chunk
            if conn.complete:
                self._release()
                return b""
            self._check(conn)
            try:
                await conn.wait()
            except BaseException:
                self.close()
                raise

    def discard_rest(self, max_bytes: int = 64 * 1024, within: float = 1.0) -> None:
        """Done with this body, but the connection is worth keeping: the rest (an SSE stream's end, say)
        is dropped as it arrives and the connection goes back to the pool; it is closed instead if more
        than `max_bytes` arrive or the end does not come `within` seconds. Never waits."""
        if not self._done:
            self._done = True
            self._conn.discard_rest(max_bytes, within)

    def close(self) -> None:
        """Abandon the rest of the body: the connection is closed, never returned half-read."""
        if not self._done:
            self._done = True
            self._conn.abort()

    def __del__(self) -> None:
        # A response dropped unread (by a bug, or an error path that forgot it) must not hold its pool
        # slot forever; closing is all that can be done here, and it must not raise.
        if not self._done:
            self._done = True
            try:
                self._conn.abort()
            except Exception:  # noqa: BLE001, S110 - a finalizer: the loop may already be closed
                pass

    def _check(self, conn: _Connection) -> None:
        if conn.error is not None:
            self._done = True
            conn.abort()
            raise conn.error

    def _release(self) -> None:
        if not self._done:
            self._done = True
            self._conn.finish()


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
        self._clock = clock
        self._limit = limit
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._idle: dict[int | None, list[_Connection]] = {}
        """Each owner's idle connections, the most recently used last."""
        self._idle_order: dict[_Connection, None] = {}
        """Every idle connection, the least recently used first (what expires, or makes room, first)."""
        self._open: set[_Connection] = set()
        self._waiters: collections.deque[tuple[asyncio.Future[_Connection | None], int | None]] = collections.deque()
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
        return len(self._idle_order)

    def head(
        self, method: str, headers: Iterable[tuple[str, str]], body: bytes | None, lend_credentials: bool = True
    ) -> bytes:
        """The request line and headers, with Host and (for a body) Content-Length set here.

        The URL's credentials (`Origin.authorization`) go on a request without an Authorization of its
        own only when `lend_credentials`: a caller says False when its client did send one that was
        removed on the way (a ``Connection: Authorization``), as the proxy must not speak for a client
        in its own name."""
        origin = self.origin
        lines = [f"{method} {origin.target} HTTP/1.1", f"Host: {origin.host_header}"]
        has_auth = False
        for name, value in headers:
            lines.append(f"{name}: {value}")
            has_auth = has_auth or name.lower() == "authorization"
        if origin.authorization is not None and not has_auth and lend_credentials:
            lines.append(f"Authorization: {origin.authorization}")
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        text = "\r\n".join(lines)
        # Headers came from a parsed request or the config, but a CR or LF smuggled into a value would
        # split it into a second request on our connection: refuse rather than send.
        if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
            raise InvalidHeader("a header name or value contains a line break")
        return (text + "\r\n\r\n").encode("utf-8", "surrogateescape")

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
    ) -> Response:
        """Send one request; return once the answer's head has arrived, its body still to be read.

        `on_write` is called just before the request is handed to a socket: until then, whatever
        happens (an error, a timeout, a cancellation), nothing was sent. `on_queue(True)` is called when
        the request has to queue for a connection (the pool is at its limit), `on_queue(False)` when it
        leaves the queue: a caller's own timeout that ends while queued is the pool's limit speaking.
        The caller's timeout or cancellation also covers writing the request, and closes the connection.
        `lend_credentials`: see `head`. `owner`: the downstream client connection the request came on; only
        a connection of that owner (or a new one) carries it (the module docstring: affinity).
        """
        head = self.head(method, headers, body, lend_credentials)
        # A small request goes out in one write, as one segment; a large body is written from the
        # caller's bytes, piece by piece, never copied.
        parts = (head + body,) if body and len(head) + len(body) <= WRITE_PIECE else (head, body or b"")
        conn = await self._acquire(owner, on_queue)
        try:
            await conn.send(parts, on_write)
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

    async def _acquire(self, owner: int | None, on_queue: Callable[[bool], None] | None = None) -> _Connection:
        if self._closed:
            raise ConnectFailed("the connection pool is closed")
        if not self._waiters:
            conn = self._reuse(owner)
            if conn is not None:
                return conn
            if self.size >= self._limit and self._idle_order:
                self._make_room()
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

    async def _wait_turn(self, owner: int | None) -> _Connection | None:
        """Queue for a connection of `owner` (returned) or a reserved slot to open one in (None)."""
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
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

    def _pass_on(self, handed: _Connection | None) -> None:
        """What a departing waiter was handed goes to the next one (or back to the pool)."""
        if handed is not None:
            self.release(handed)
        else:
            self._connecting -= 1
            self._free_slot()

    def _reuse(self, owner: int | None) -> _Connection | None:
        """`owner`'s most recently used live idle connection; stale ones found on the way are closed."""
        stack = self._idle.get(owner)
        now = self._clock()
        while stack:
            conn = stack[-1]
            self._drop_idle(conn)
            if not conn.closed and now - conn.idle_since < self._keepalive:
                return conn
            conn.abort()
        return None

    def _make_room(self) -> None:
        """At the limit, with no idle connection of the arriving request's owner: close the least recently
        used idle connection (another owner's), so the request opens its own rather than queueing behind
        connections nobody is using. Its owner pays a connect on its next request (as after a keep-alive
        expiry)."""
        conn = next(iter(self._idle_order))
        self._drop_idle(conn)
        conn.abort()

    def _drop_idle(self, conn: _Connection) -> None:
        """Take `conn` out of the idle connections, if it is one."""
        if conn not in self._idle_order:
            return
        del self._idle_order[conn]
        stack = self._idle[conn.owner]
        if stack[-1] is conn:
            stack.pop()
        else:
            stack.remove(conn)
        if not stack:
            del self._idle[conn.owner]

    async def _connect(self, reserved: bool, owner: int | None) -> _Connection:
        """Open a connection for `owner` in a free slot (`reserved`: one a waiter was handed, already counted)."""
        origin = self.origin
        if not reserved:
            self._connecting += 1
        opened = False
        try:
            _, conn = await self.loop.create_connection(
                lambda: _Connection(self, owner),
                origin.host,
                origin.port,
                ssl=origin.ssl,
                server_hostname=origin.host if origin.ssl is not None else None,
            )
            if self._closed:
                conn.abort()
                raise ConnectFailed("the connection pool is closed")
            if conn.closed:  # uvloop may run connection_lost before create_connection returns
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

    def release(self, conn: _Connection) -> None:
        """A connection whose exchange is complete: to the longest waiter if that is of its owner; closed,
        its slot going to the longest waiter, if that is another owner's; else kept idle."""
        if self._closed or conn.closed:
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
        conn.idle_since = self._clock()
        self._idle.setdefault(conn.owner, []).append(conn)
        self._idle_order[conn] = None
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self._keepalive, self._sweep)

    def _sweep(self) -> None:
        """Close idle connections past `keepalive` (oldest first), so quiet pools do not hold sockets."""
        self._sweeper = None
        now = self._clock()
        order = self._idle_order
        while order:
            oldest = next(iter(order))
            if now - oldest.idle_since < self._keepalive:
                self._sweeper = self.loop.call_later(oldest.idle_since + self._keepalive - now, self._sweep)
                return
            self._drop_idle(oldest)
            oldest.abort()

    def forget(self, conn: _Connection) -> None:
        """A connection has closed: its slot is free."""
        self._drop_idle(conn)
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
        self._idle_order.clear()
