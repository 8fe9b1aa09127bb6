"""The MCP listener's connections: aiohttp's own errors as JSON-RPC errors, and the limits on slow or many clients.

aiohttp answers a request it cannot parse (a header line over 8190 bytes, a broken chunk size, not
HTTP) or a handler that crashed before answering with a text or HTML page of its own. An MCP client
cannot read those, so the MCP listener's request handler renders them as JSON-RPC errors instead, with
the ``X-Mcp-Proxy-Error`` header every answer of the proxy's own carries (`PROXY_ERROR_HEADER`), and logs them
through structlog like every other failure (never the offending bytes: they may be a credential).

It also enforces what aiohttp's server leaves open (its keep-alive is 3,630 s, and a request head may
trickle in for all that time), as nginx and Envoy do, with the values of `ListenerLimits`:

- **connection cap**: past `max_connections` open client connections the kept-alive connection idle
  the longest is closed to make room (``idle_reclaimed``); with none idle, a new one is closed at once,
  unread and unanswered (reading it would cost what the cap is there to save), and counted
  (``connection_limit``). The admin listener is another server: it keeps answering.
- **header timeout**: a request's whole head must arrive within `header_timeout`, counted from the
  accept on a new connection, and on a kept-alive one from the first byte of the next request (never
  earlier than the end of the previous response: bytes sent ahead while the proxy was answering do not
  start it). Past it: ``408`` with a JSON-RPC error if part of a head came, else the connection is just
  closed; counted as ``header_timeout``.
- **idle timeout**: a kept-alive connection with nothing in progress closes after `idle_timeout`
  (aiohttp's own keep-alive timer, given this value). A request in progress, its body, a streamed answer
  or a legacy GET stream are never idle: no limit here cuts them.
- **send timeout**: when the proxy has bytes waiting to go to the client and the client takes none of
  them for a whole `send_timeout`, the connection is aborted (nginx's ``send_timeout``), counted
  (``send_timeout``) and logged (at most one line per `SEND_TIMEOUT_LOG_EVERY`). Without it a client
  that asks and never reads holds its connection, its place under the cap and any upstream stream it
  opened for good: no other clock runs while an answer is being written (aiohttp's writes wait in
  `drain` while the transport's buffer is over its high-water mark, and its close waits for the buffer
  to empty). The clock starts when aiohttp pauses writing, when an answer is finished with bytes
  unsent, and when the connection closes with bytes unsent; any progress (aiohttp resumed writing, or
  the buffer shrank) restarts it, so a slow reader is never cut, and a non-reader is cut between one
  and two `send_timeout` after the last byte it took. The abort ends the handler
  (``handler_cancellation``), which closes an SSE answer's or a legacy GET stream's upstream connection.
  Bytes the kernel accepted count as taken, so the kernel is allowed only `SEND_LOWAT` unsent bytes per
  connection (``TCP_NOTSENT_LOWAT``): else it would absorb megabytes from the proxy before the clock starts.
- **head size**: bytes of an unfinished head past `max_head_bytes` get ``431`` with a JSON-RPC error
  at once, before aiohttp buffers more of it (a whole head that arrived in one read is measured exactly
  by the handler, which answers the same 431). aiohttp's parser is given a header count a little above
  `max_headers` (the handler checks the exact count); its own refusal of more is a 431 too.

A head sent ahead (pipelined) while the proxy is still answering is not timed or measured as it comes:
it is bounded by aiohttp's parser (the header count, 8190 bytes a line) and then measured exactly by
the handler like any other.

aiohttp has no public hooks for any of this: `JsonRpcServer` overrides `web.Server.__call__`, and
`_Connection` overrides `RequestHandler.connection_made`, `connection_lost`, `data_received`,
`_handle_request` (called once per parsed request), `handle_error`, `force_close` (every close of
aiohttp's: it drops `transport` before the buffer is flushed) and `BaseProtocol.pause_writing` and
`resume_writing` (its writes wait in `drain` while paused), and reads `_waiter` (set while waiting for a
request), `_request_count` (requests parsed) and `_force_close`.
`tests/test_forwarding.py` and `tests/test_listener_limits.py` pin the behaviour against upgrades.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from proxy.mcp.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, error_body

__all__ = [
    "HEADER_COUNT_SLACK", "LINGER", "MAX_LINE_BYTES", "PROXY_ERROR_HEADER", "SEND_LOWAT",
    "SEND_TIMEOUT_LOG_EVERY", "JsonRpcServer", "ListenerLimits", "raw_error",
]  # fmt: skip

log = structlog.get_logger("proxy")

PROXY_ERROR_HEADER: Final = "X-Mcp-Proxy-Error"
"""The header every answer the proxy makes itself carries (its value: the reason), and no upstream answer does."""
MAX_LINE_BYTES: Final = 8190
"""The longest request line or single header line (name and value) aiohttp's parser accepts (its default)."""
HEADER_COUNT_SLACK: Final = 2
"""aiohttp's parser may hold this many headers over `ListenerLimits.max_headers`, so that its count (which
differs between its C and Python parsers) never refuses first: the handler's exact check answers."""
LINGER: Final = 2.0
"""After a 408 or 431 sent mid-head, or an answer given before its request's body was read (a 408 for a
stalled body, a 413), how long the proxy goes on reading (and discarding) what the client still sends
before it closes: closing with unread bytes resets the connection, which can destroy the answer before
the client reads it. Bounded: the connection closes after this however the client behaves (aiohttp's own
``lingering_time``, 10 s, is given this value)."""
SEND_LOWAT: Final = 128 * 1024
"""Unsent bytes the kernel holds for one client connection (``TCP_NOTSENT_LOWAT``, where the platform has
it; bytes in flight are not counted, so a fast reader's throughput is unchanged). Without it the kernel
takes up to ``net.ipv4.tcp_wmem``'s maximum (4 MiB by default) from the proxy before a non-reader's
write waits: pipelined small answers fill that for a minute or more, and the send timeout only starts
once the proxy's own buffer is full."""
SEND_TIMEOUT_LOG_EVERY: Final = 60.0
"""Seconds between two ``send_timeout`` log lines: many non-reading clients cut at once are one line (with
how many since the last one), not one each; the metric counts every one."""


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """The listener limits in force (from ``limits`` of the current config; a reload applies to new events)."""

    header_timeout: float
    idle_timeout: float
    send_timeout: float
    max_connections: int
    max_head_bytes: int
    max_headers: int


def raw_error(status: int, message: str, reason: str) -> bytes:
    """A whole HTTP/1.1 error answer with a JSON-RPC error body, for a connection that has no request object.
    Like every refusal of the proxy's own it carries ``X-Mcp-Proxy-Error: <reason>``."""
    body = error_body(None, INVALID_REQUEST, message, {"reason": reason})
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{PROXY_ERROR_HEADER}: {reason}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's messages (C and Python parsers alike)
_MISSING_HOST = "Missing 'Host' header in request."


def _headers_too_large(exc: BaseException | None) -> bool:
    """aiohttp refused a head for its size: one line too long, or too many headers."""
    return isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and exc.message == _TOO_MANY_HEADERS)


def _limit_unsent(transport: asyncio.BaseTransport) -> None:
    """Cap the kernel's unsent bytes for this connection at `SEND_LOWAT` (TCP only, where supported)."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # closed already: nothing to tune
        sock.setsockopt(socket.IPPROTO_TCP, option, SEND_LOWAT)


class _Connection(RequestHandler):
    """One client connection of the MCP listener (see the module docstring)."""

    def __init__(self, manager: JsonRpcServer, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._server = manager
        self._limits = limits
        self._accepted = False
        self._handled = 0  # requests answered; aiohttp's `_request_count` counts heads parsed
        self._payload: StreamReader | None = None  # the body of the last request handled
        self._head_bytes = 0  # bytes of the head being received (not busy)
        self._head_started = False  # any byte of the next head has come
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._out: asyncio.Transport | None = None  # aiohttp forgets `transport` at close, before it is flushed
        self._send_timer: asyncio.TimerHandle | None = None
        self._backlog = 0  # the transport's unsent bytes at the send clock's last look
        self._took = False  # the client took bytes since that look (aiohttp resumed writing)

    # --- the connection cap ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._server.admit():
            self._manager = None  # connection_lost: nothing of aiohttp's was set up, nothing to undo
            transport.close()
            return
        self._accepted = True
        super().connection_made(transport)
        self._out = self.transport
        _limit_unsent(transport)
        self._arm(self._limits.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server.not_idle(self)
        if self._accepted:
            self._accepted = False
            self._server.release()
        self._disarm()
        self._out = None
        self._stop_send_clock()
        super().connection_lost(exc)

    def reclaim(self) -> None:
        """Close this idle kept-alive connection to make room for a new one at the cap (nginx reuses
        idle keep-alive connections the same way): its slot is free at once."""
        if self._accepted:
            self._accepted = False
            self._server.release()
        if self.transport is not None:
            self.transport.close()

    # --- the send timeout -------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()  # over the high-water mark: aiohttp's writes now wait in drain
        self._watch_send()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._took = True  # the buffer drained to its low-water mark: the client is reading

    def force_close(self) -> None:
        super().force_close()  # asyncio's close() waits for the unsent bytes to go, however long that takes
        self._watch_send()

    def _watch_send(self) -> None:
        """Start the send clock, unless it runs or every byte written to the transport is sent."""
        transport = self._out
        if self._send_timer is not None or transport is None:
            return
        backlog = transport.get_write_buffer_size()
        if backlog:
            self._backlog = backlog
            self._took = False
            self._send_timer = self._loop.call_later(self._limits.send_timeout, self._send_deadline)

    def _stop_send_clock(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_deadline(self) -> None:
        """A whole `send_timeout` with bytes waiting: abort, unless the client took some meanwhile.

        The client took some if aiohttp heard ``resume_writing`` or the buffer is smaller than at the last
        look. A larger one means the proxy wrote more meanwhile (SSE events below aiohttp's 64 KiB drain
        threshold, the next pipelined answer), which hides whether the client read: look again. That
        cannot go on: each write path waits in `drain` once the buffer is over its high-water mark, so
        the buffer stops growing, and the next look with nothing taken aborts."""
        self._send_timer = None
        transport = self._out
        if transport is None:
            return
        backlog = transport.get_write_buffer_size()
        if not backlog:
            return  # all sent: the next pause or close looks again
        if self._took or backlog != self._backlog:
            self._watch_send()
            return
        self._server.send_timed_out(self._limits.send_timeout, backlog)
        transport.abort()  # the unsent bytes are dropped; connection_lost ends the handler

    # --- the header timeout and the head size ----------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._header_timer = self._loop.call_later(delay, self._header_deadline)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _busy(self) -> bool:
        """A parsed request is not answered yet (queued, being answered, or streaming), or the last one's
        body is still coming: no head clock runs."""
        payload = self._payload
        return self._request_count != self._handled or (payload is not None and not payload.is_eof())

    def data_received(self, data: bytes) -> None:
        if data:
            self._server.not_idle(self)
        if self._refused:
            return  # lingering after a refusal: read and discard
        if self._busy():
            super().data_received(data)  # a body, or requests sent ahead: no head clock runs while answering
            return
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # a head is complete: busy until it is answered
            self._head_bytes = 0
            self._head_started = False
            self._disarm()
            return
        if not data or self._force_close:
            return
        self._head_bytes += len(data)
        if not self._head_started:
            self._head_started = True
            if self._header_timer is None:  # kept alive, idle until now: this head's clock starts
                self._arm(self._limits.header_timeout)
        if self._head_bytes > self._limits.max_head_bytes:
            self._server.reject("headers_too_large")
            limit = self._limits.max_head_bytes
            self._refuse(431, f"Request Header Fields Too Large: the request head exceeds {limit} bytes "
                         "(limits.max_request_head_bytes)", "headers_too_large")

    async def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: float | None,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        self._disarm()
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            # The answer is complete: once its body is read too, the connection is idle (aiohttp's
            # keep-alive timer: idle_timeout) until the next head's first byte starts the header clock.
            self._handled += 1
            self._payload = request.content
            self._head_bytes = 0
            self._head_started = False
            self._watch_send()  # its tail may wait below the high-water mark, unread, as the connection closes
            if not self._busy() and not self._force_close:
                self._server.idle(self)  # kept alive with nothing to do: the first to go at the cap

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self._busy() or self.transport is None or self._refused:
            return
        if self._waiter is None or self._waiter.done():
            self._arm(self._limits.header_timeout)  # between two requests of aiohttp's loop: look again later
            return
        self._server.reject("header_timeout")
        if self._head_started:
            self._refuse(408, "Request Timeout: the request head did not arrive in time (limits.header_timeout)",
                         "header_timeout")
        else:
            self.force_close()  # nothing came: nobody to answer

    def _refuse(self, status: int, message: str, reason: str) -> None:
        """Answer a head that will not be handled, stop reading requests, and close after `LINGER`."""
        log.warning("bad_http_request", status=status, reason=reason)
        self._refused = True
        self._disarm()
        transport = self.transport
        if transport is None:
            return
        transport.write(raw_error(status, message, reason))
        if transport.can_write_eof():
            transport.write_eof()
        self._watch_send()
        self._loop.call_later(LINGER, self.force_close)

    # --- aiohttp's own errors --------------------------------------------------------------------

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # part of an answer is out: nothing else can be said
            raise ConnectionError("response already started; cannot send an error")
        if status == 400 and _headers_too_large(exc):
            status, reason = 431, "headers_too_large"
            self._server.reject(reason)
            text = (f"Request Header Fields Too Large: a line over {MAX_LINE_BYTES} bytes, or more than "
                    f"{self._limits.max_headers} headers (limits.max_request_headers)")
        elif status == 400 and isinstance(exc, BadHttpMessage) and exc.message == _MISSING_HOST:
            reason = "missing_host"  # an HTTP/1.1 request without Host; the handler refuses HTTP/1.0 ones alike
            self._server.reject(reason)
            text = "Bad Request: no Host header"
        else:
            phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
            reason = "internal_error" if status >= 500 else "bad_http_request"
            text = f"{status} {phrase}"
        if status >= 500:
            log.error("handler_crashed", status=status, error=repr(exc), exc_info=exc)
        else:  # never the message: aiohttp's quotes the offending bytes (a header line may be a credential)
            log.warning("bad_http_request", status=status, reason=reason, error=type(exc).__name__)
        code = INTERNAL_ERROR if status >= 500 else INVALID_REQUEST
        body = error_body(None, code, text, {"reason": reason})
        headers = {PROXY_ERROR_HEADER: reason}
        response = web.Response(status=status, body=body, content_type="application/json", headers=headers)
        response.force_close()
        return response


class JsonRpcServer(web.Server):
    """`web.Server` whose connections answer aiohttp-level errors in JSON-RPC and keep `ListenerLimits`.

    `limits` is asked for the limits in force at each new connection (a reload changes them for the
    connections that follow); `reject` counts a refusal by reason (``connection_limit``,
    ``header_timeout``, ``headers_too_large``, ``missing_host``, ``send_timeout``).
    """

    def __init__(
        self,
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
        limits: Callable[[], ListenerLimits],
        reject: Callable[[str], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self.reject = reject
        self.open = 0
        """Client connections accepted and not yet closed."""
        self._cap = 0
        self._refusing = False
        self._idle: dict[_Connection, None] = {}
        """Kept-alive connections with no request in progress, the longest idle first."""
        self._send_timeouts = 0  # since the last send_timeout log line
        self._send_logged_at: float | None = None

    def idle(self, connection: _Connection) -> None:
        self._idle.pop(connection, None)
        self._idle[connection] = None

    def not_idle(self, connection: _Connection) -> None:
        self._idle.pop(connection, None)

    def admit(self) -> bool:
        """Count a new connection in, or refuse it (counted, and logged once each time the cap is reached).

        At the cap, the connection kept alive idle the longest is closed to make room first: a client
        that opened connections and went quiet must not lock out one that has something to ask."""
        if self.open >= self._cap and self._idle:
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            self.reject("idle_reclaimed")
            oldest.reclaim()
        if self.open >= self._cap:
            self.reject("connection_limit")
            if not self._refusing:
                self._refusing = True
                log.warning(
                    "connection_limit_reached", max_connections=self._cap,
                    note="new client connections are closed until some close (limits.max_connections)",
                )  # fmt: skip
            return False
        self.open += 1
        return True

    def send_timed_out(self, send_timeout: float, unsent: int) -> None:
        """Count a connection cut for taking nothing for `send_timeout`; log at most every `SEND_TIMEOUT_LOG_EVERY`."""
        self.reject("send_timeout")
        self._send_timeouts += 1
        now = self._loop.time()
        if self._send_logged_at is not None and now - self._send_logged_at < SEND_TIMEOUT_LOG_EVERY:
            return
        log.warning(
            "send_timeout", send_timeout=send_timeout, unsent_bytes=unsent, connections=self._send_timeouts,
            note="client connections that took none of their answer for limits.send_timeout were aborted "
            f"(this one and any since the last such line; at most one line per {SEND_TIMEOUT_LOG_EVERY:g}s)",
        )  # fmt: skip
        self._send_logged_at = now
        self._send_timeouts = 0

    def release(self) -> None:
        self.open -= 1
        if self.open < self._cap:
            self._refusing = False

    def __call__(self) -> RequestHandler:
        limits = self._limits()
        self._cap = limits.max_connections
        kwargs = {
            **self._kwargs,
            "keepalive_timeout": limits.idle_timeout,
            "max_headers": limits.max_headers + HEADER_COUNT_SLACK,
            "max_field_size": MAX_LINE_BYTES,
            "max_line_size": MAX_LINE_BYTES,
            "lingering_time": LINGER,
        }
        return _Connection(self, limits, loop=self._loop, **kwargs)
