"""The client's side of a relayed answer: the response objects, their head, and writes that never raise.

An upstream's answer reaches the client with the upstream's own ``Server`` and ``Date`` (`_TheirServer`),
buffered (`relayed`) or streamed (`start_stream`, whose head leaves with the first bytes: one write, not
two). Writes to a client that went away never raise (`write_quietly`, `end_quietly`): by then the outcome
is settled, and nobody is left to tell; `written` says whether the client is still there, `client_gone`
asks without writing. A stream the upstream cut is cut for the client too (`cut_off`), never ended
cleanly. An event the proxy adds of its own is `sse_error`.
"""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web
from multidict import CIMultiDict

from proxy.errors import ProxyError
from proxy.mcp.jsonrpc import error_body
from proxy.policies.base import Reply

__all__ = [
    "Relayed", "client_gone", "cut_off", "end_quietly", "headers_for", "relayed", "sse_error", "start_stream",
    "write_quietly", "written",
]  # fmt: skip


def headers_for(reply: Reply) -> CIMultiDict[str]:
    """The headers the client gets: the upstream's (already filtered), plus those a stage added (`Reply.extra`)."""
    if not reply.extra:
        return reply.headers
    headers = reply.headers.copy()
    headers.update(reply.extra)
    return headers


class _TheirServer(web.StreamResponse):
    """An answer of the upstream's: its ``Server`` header is the upstream's, or none when it sent none.

    aiohttp gives every answer a ``Server: Python/… aiohttp/…`` of its own unless one is set: that would
    name the proxy's stack in place of the server's (an Express server sends none). ``Date`` is the
    upstream's too; aiohttp adds one only when it sent none, as RFC 9110 asks of a forwarder with a clock.
    aiohttp has no public hook for it: `_prepare_headers` is where it adds them (tests pin it)."""

    async def _prepare_headers(self) -> None:
        theirs = hdrs.SERVER in self.headers
        await super()._prepare_headers()
        if not theirs:
            self.headers.popall(hdrs.SERVER, None)


class Relayed(_TheirServer, web.Response):
    """A buffered answer of an upstream that sent no ``Server``, as the client gets it (`relayed`)."""


def relayed(status: int, reason: str | None, body: bytes | None, headers: CIMultiDict[str]) -> web.Response:
    """A buffered answer of the upstream's (JSON, or a read's SSE read whole), as the client gets it.

    With the upstream's own ``Server`` (most servers send one) aiohttp keeps it and its ``Date``, so the
    plain `web.Response` does: the `_TheirServer` override costs a coroutine per answer, paid only when
    there is no ``Server`` to keep."""
    kind = web.Response if hdrs.SERVER in headers else Relayed
    return kind(status=status, reason=reason, body=body, headers=headers)


class _EventStream(web.StreamResponse):
    """An SSE answer whose head leaves with its first bytes: one write to the client, not two (a write is a
    system call, about a twentieth of the proxy's CPU per streamed call, measured). aiohttp sends a
    `StreamResponse`'s head at once unless told (`_send_headers_immediately`, as its `web.Response` does);
    `start_stream` makes sure the head never waits for an upstream that is slow to send the first event.
    This one is for an upstream that sent its own ``Server`` (aiohttp keeps it); `_TheirEventStream`
    for one that sent none."""

    _send_headers_immediately = False


class _TheirEventStream(_TheirServer, _EventStream):
    """An SSE answer of an upstream that sent no ``Server``: none reaches the client."""


async def start_stream(request: web.BaseRequest, reply: Reply) -> web.StreamResponse:
    """Start the client's answer to `reply` (an SSE stream); a client gone before it leaves the upstream
    stream closed, not leaked.

    The head is sent with the first bytes when they are there already (the usual case: an upstream's head
    and its first event come together); otherwise as soon as the relay waits for them, so a client sees
    the head as early as before (`_send_head`, one loop turn later)."""
    headers = headers_for(reply)
    kind = _EventStream if hdrs.SERVER in headers else _TheirEventStream
    response = kind(status=reply.status, reason=reply.reason, headers=headers)
    response.headers["X-Accel-Buffering"] = "no"
    try:
        await response.prepare(request)
    except BaseException:
        assert reply.stream is not None
        await reply.stream.close()  # the client is gone before the first byte: release the upstream
        raise
    asyncio.get_running_loop().call_soon(_send_head, request)
    return response


def _send_head(request: web.BaseRequest) -> None:
    """Send the answer's head if its first bytes have not taken it yet (no-op otherwise)."""
    try:
        request.writer.send_headers()
    except ConnectionResetError:
        pass  # the client is gone: the relay hears it on its next write


def cut_off(request: web.BaseRequest) -> None:
    """End the client's answer as broken, as the upstream's was: its connection is closed once what was
    written has gone, without the end of the chunked body (aiohttp would end the body cleanly after the
    handler returns, and a client would take a cut stream for a complete one)."""
    transport = request.transport
    if transport is not None:
        transport.close()


def client_gone(request: web.BaseRequest) -> bool:
    """Whether the client's connection is closed (or closing): nothing written to it would arrive."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def written(response: web.StreamResponse, data: bytes) -> bool:
    """Write `data`; False when the client is gone."""
    try:
        await response.write(data)
    except ConnectionResetError:
        return False
    return True


async def write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionResetError:
        pass  # the client is gone: nobody to tell


async def end_quietly(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client closed first, as SDK clients do once they have their response


def sse_error(request_id: str | int | None, error: ProxyError) -> bytes:
    """The event that carries `error` as the JSON-RPC error answering `request_id`: the last event the
    proxy adds to a stream that ended or broke without its final response."""
    return b"event: message\ndata: " + error_body(request_id, error.code, error.message, error.error_data()) + b"\n\n"
