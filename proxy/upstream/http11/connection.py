"""One HTTP/1.1 client connection as a state machine: bytes in, events out, no I/O (h11's shape, llhttp's parser).

Why sans-I/O: whether a connection may carry another exchange is decided by which bytes arrived in which
state, and that is best tested with bytes alone, cut anywhere. `ClientConnection` never touches a socket,
a future or a clock of its own: `protocol.py` feeds it what the socket reads and acts on the events it
returns (wake the reader, pause reading, close the transport); `pool.py` asks it `is_idle`, `is_closed`
and `has_expired`, nothing else. Parsing, the part that must be exactly right, is llhttp's (httptools).

Every change of `state` is a row of `state.TRANSITIONS` (the states, the events and every legal step, in
one table), looked up in `_step`, or inline on the per-exchange path, where a method call per step is
measurable; an illegal step raises `IllegalTransition`.

A pooled connection must never carry one exchange's bytes into the next. Hence, here: a byte arriving
while IDLE (a late duplicate, an unsolicited answer) closes the connection, as does a second response
after a complete one; and `finish` takes the connection back to IDLE only when the server allowed
keep-alive *and* the caller says the whole request had left before the answer came (an upstream that
answered early and kept the connection would read the rest of that body as the next request: a body
ending in a request of its own gets it answered ahead of the next client's) *and* the answer to a request
with a body is a 2xx. A server may answer an error (413, 401, 404, 400...) after the head alone, without
reading the body; HTTP then asks it to read and discard the body or to close, and a broken one does
neither. Whether it read the body cannot be seen from here: the bytes may all have left this side and sit
unread in the server's socket buffers. A 2xx answer to an MCP request says the body was read (the server
answered what it carried); any other status does not, so its connection is closed (one reconnect per
such answer).

Bounds on what an upstream can make the proxy hold; each is a `BadResponse` (or `ResponseTooLarge`) and
closes the connection: `MAX_HEAD_BYTES`, `MAX_RESPONSE_HEADERS`, `MAX_UNPARSED_BYTES`,
`MAX_INTERIM_RESPONSES`, a final status in 200-599, the caller's `limit` on the body, and `discard`'s
budget for a body nobody reads any more. The body is held as one buffer, not as the pieces it came in
(a body of 2-byte chunks costs its bytes, not ~40 per chunk), and handed on whole by `take`.
"""

from __future__ import annotations

import httptools

from proxy.upstream.http11.errors import BadResponse, ConnectionBroken, ResponseTooLarge
from proxy.upstream.http11.state import (  # fmt: skip
    AWAIT_HEAD, BODY, CLOSE, CLOSED, CLOSED_NOW, DISCARD, DONE, DRAIN, DRAINED, END, ENDED, HEAD, HEAD_ARRIVED,
    IDLE, REUSE, SEND, TRANSITIONS, Event, IllegalTransition,
)

__all__ = ["MAX_HEAD_BYTES", "MAX_INTERIM_RESPONSES", "MAX_RESPONSE_HEADERS", "MAX_UNPARSED_BYTES", "ClientConnection"]

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


class _EndsAtHead(Exception):
    """Raised in a parser callback to stop llhttp at the end of a HEAD answer's head (never leaves `feed`)."""


class ClientConnection:
    """The state of one HTTP/1.1 connection and of its current exchange, fed with the bytes it receives.

    The caller `start`s an exchange when it writes a request, `feed`s every read (``b""`` for the peer's
    clean close), `take`s the body as it arrives, and then either `finish`es (back to IDLE, or not) or
    `close`s. `keepalive`: seconds an IDLE connection stays fit for reuse (`has_expired`)."""

    __slots__ = (
        "_bodiless", "_discard_left", "_events", "_head_bytes", "_interim", "_lines", "_lines_left", "_more",
        "_parser", "_piece", "_until_close", "_unparsed", "_with_body", "buffered", "complete", "error", "headers",
        "idle_since", "keep_alive", "keepalive", "limit", "reason", "received", "state", "status", "trailers",
    )  # fmt: skip

    def __init__(self, keepalive: float) -> None:
        self.keepalive = keepalive
        self.state = IDLE
        self._parser = httptools.HttpResponseParser(self)
        self._events = 0
        self.status = 0
        self.reason = b""
        """The reason phrase as received (llhttp may hand it over in pieces)."""
        self.headers: list[tuple[bytes, bytes]] = []
        """The final head's header lines as received, in order, repeats kept."""
        self.trailers: list[tuple[bytes, bytes]] = []
        """A chunked body's trailer lines (they count against the same bounds as the head's)."""
        self._lines = self.headers
        """Where `on_header` puts a line: the head's until it is complete, then the trailers."""
        self._lines_left = MAX_RESPONSE_HEADERS
        self.keep_alive = False
        self.complete = False
        """The response ended. It stays True if the connection then closes: what arrived is whole."""
        self.error: BaseException | None = None
        """Why the connection closed before its response was complete (None while open, or after)."""
        self.limit: int | None = None
        """The most body bytes the reader accepts (`ResponseTooLarge` beyond); None: no limit."""
        self.received = 0
        self.buffered = 0
        self._piece = b""
        self._more: bytearray | None = None
        """The body received and not yet taken: `_piece` while it is one piece (kept as it came, no copy),
        `_more` once a second piece joined it (one buffer, grown in place). Never a list of pieces: memory
        follows the bytes, not how finely the upstream chunked them, and a reader takes everything that has
        arrived at once, so per-piece work downstream is per network read, not per HTTP chunk."""
        self.idle_since = 0.0
        self._head_bytes = 0
        self._unparsed = 0
        """Bytes fed since the last complete head or body byte (`MAX_UNPARSED_BYTES`)."""
        self._interim = 0
        self._until_close = False
        """The body has no length: it ends with the peer's clean close (RFC 9112 §6.3)."""
        self._discard_left = 0
        self._bodiless = False
        self._with_body = False
        """The request being answered carried a body (`finish`: only a 2xx answer says it was read)."""

    # -- what the pool asks -----------------------------------------------------------------------------

    def is_idle(self) -> bool:
        """Between exchanges, fit to carry the next request (unless `has_expired`)."""
        return self.state is IDLE

    def is_closed(self) -> bool:
        return self.state is CLOSED

    def has_expired(self, now: float) -> bool:
        """Idle for `keepalive` seconds or more: the server may be closing it, so it is not reused."""
        return now - self.idle_since >= self.keepalive

    # -- the exchange -----------------------------------------------------------------------------------

    def _step(self, event: Event) -> None:
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise self._illegal(event) from None

    def _illegal(self, event: Event) -> IllegalTransition:
        return IllegalTransition(f"{event} is not allowed in state {self.state}")

    def start(self, bodiless: bool = False, with_body: bool = False) -> None:
        """A request is being written: the exchange starts with nothing of its response yet. `bodiless`:
        its answer has no body whatever its head says (the request is a HEAD); `with_body`: the request
        carries a body."""
        try:
            self.state = TRANSITIONS[self.state][SEND]
        except KeyError:
            raise self._illegal(SEND) from None
        self.status = 0
        self.headers = self._lines = []
        self.trailers = []
        self._lines_left = MAX_RESPONSE_HEADERS
        self.keep_alive = self.complete = self._until_close = False
        self._bodiless = bodiless
        self._with_body = with_body
        self.limit = None
        self.received = self.buffered = self._head_bytes = self._unparsed = self._interim = 0
        self._piece, self._more = b"", None

    def feed(self, data: bytes) -> int:
        """Take what the socket read (``b""``: the peer closed cleanly); return what happened, as bits
        (`HEAD_ARRIVED`, `ENDED`, `DRAINED`, `CLOSED_NOW`). Never raises for anything the upstream sends."""
        state = self.state
        if state is CLOSED:
            return 0
        if not data:
            return self._eof()
        if state is IDLE:
            return self._fail(BadResponse("bytes arrived with no request waiting"))
        self._events = 0
        self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _EndsAtHead):
                return self._events
            return self._events | self._fail(exc.__context__ or BadResponse(str(exc)))
        except httptools.HttpParserUpgrade:
            return self._events | self._fail(BadResponse("upstream switched protocols (HTTP 101), which MCP never asks for"))
        except httptools.HttpParserError as exc:
            return self._events | self._fail(BadResponse(str(exc)))
        if self._unparsed > MAX_UNPARSED_BYTES:
            return self._events | self._fail(BadResponse(f"{self._unparsed} bytes with no complete head and no body (an endless header line)"))
        return self._events

    def _eof(self) -> int:
        events = 0
        if self._until_close and (self.state is BODY or self.state is DRAIN):
            self.complete = True  # a body without length ends with a clean close (RFC 9112 §6.3), not a reset
            self._step(END)
            events = ENDED
        return events | self._fail(ConnectionBroken("upstream closed the connection"))

    def _fail(self, error: BaseException) -> int:
        return CLOSED_NOW if self.close(error) else 0

    def take(self) -> bytes:
        """All the body received and not yet taken, as one piece (``b""`` if none)."""
        more = self._more
        if more is not None:
            data = bytes(more)
            self._more = None
        else:
            data = self._piece
        self._piece = b""
        self.buffered = 0
        return data

    def discard(self, max_bytes: int) -> None:
        """The reader is done with the body: what is buffered is dropped, and so is the rest as it arrives
        (up to `max_bytes` more, else `BadResponse`). A complete or closed response has nothing to drain."""
        self._piece, self._more = b"", None
        self.buffered = 0
        if self.state is BODY:
            self._discard_left = max_bytes
            self._step(DISCARD)

    def finish(self, request_left: bool, now: float) -> bool:
        """The reader is done with a complete response. True: the connection is IDLE again (the server
        allowed keep-alive, the whole request had left before the answer came: not `request_left`, and a
        request with a body got a 2xx: the module docstring); False: it must be closed."""
        self.limit = None
        if self.state is not DONE or not self.keep_alive or request_left:
            return False
        if self._with_body and not 200 <= self.status < 300:
            return False  # the server may have answered without reading the body, left in the socket
        self.state = TRANSITIONS[DONE][REUSE]  # the state was checked just above
        self.idle_since = now
        return True

    def close(self, error: BaseException) -> bool:
        """Close for good; `error` is kept as the reason unless the response was already complete. False if
        it was closed already."""
        if self.state is CLOSED:
            return False
        if self.error is None and not self.complete:
            self.error = error
        self._step(CLOSE)
        return True

    # -- httptools callbacks (run inside `feed`) --------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.state is DONE:
            raise BadResponse("a second response arrived for one request")
        self.headers = self._lines = []
        self._lines_left = MAX_RESPONSE_HEADERS
        self.reason = b""
        self._head_bytes = 0

    def on_status(self, status: bytes) -> None:
        self._head_bytes += len(status)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise BadResponse(f"status line and headers exceed {MAX_HEAD_BYTES} bytes")
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._lines_left -= 1
        if self._lines_left < 0:
            raise BadResponse(f"more than {MAX_RESPONSE_HEADERS} header lines")
        self._head_bytes += len(name) + len(value) + 3  # and ":" and CRLF: an empty header is not free
        if self._head_bytes > MAX_HEAD_BYTES:
            raise BadResponse(f"status line and headers exceed {MAX_HEAD_BYTES} bytes")
        self._lines.append((name, value))

    def on_headers_complete(self) -> None:
        self._unparsed = 0
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            self._interim += 1
            if self._interim > MAX_INTERIM_RESPONSES:
                raise BadResponse(f"more than {MAX_INTERIM_RESPONSES} interim (1xx) responses before the answer")
            return
        if not 200 <= status <= 599:
            raise BadResponse(f"status {status} is not an HTTP status code (100-599)")
        self.status = status
        self._until_close = status not in (204, 304) and not self._parser.should_keep_alive() and not any(
            key == b"content-length" or (key == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"))
            for key, value in ((name.lower(), value) for name, value in self.headers)
        )
        try:
            self.state = TRANSITIONS[self.state][HEAD]
        except KeyError:
            raise self._illegal(HEAD) from None
        self._lines = self.trailers  # what follows a chunked body's last chunk is not the head's
        self._events |= HEAD_ARRIVED
        if self._bodiless:  # the answer to a HEAD: its head is all of it (RFC 9110 §9.3.2)
            self.complete = True
            self.state = TRANSITIONS[self.state][END]
            self._events |= ENDED
            # llhttp cannot be told that this head has no body, so it is stopped here, and the connection,
            # keep_alive False, is closed after it rather than trusted with what the parser did not read.
            raise _EndsAtHead

    def on_body(self, body: bytes) -> None:
        # Runs once per HTTP chunk (a million 2-byte chunks: a million calls), so it only keeps the bytes.
        self._unparsed = 0
        size = len(body)
        if self.state is DRAIN:
            self._discard_left -= size
            if self._discard_left < 0:
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
        if self.state is AWAIT_HEAD:  # the end of an interim head: the final one is still to come
            return
        self.keep_alive = self._parser.should_keep_alive()
        self.complete = True
        self._events |= DRAINED | ENDED if self.state is DRAIN else ENDED
        try:
            self.state = TRANSITIONS[self.state][END]
        except KeyError:
            raise self._illegal(END) from None
