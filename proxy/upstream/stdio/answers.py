"""A client request through a stdio child, and the HTTP answer it gets: the gateway's one exchange.

A request's answer is JSON when the child's answer comes first, and an SSE stream when something for
the caller comes first (its progress, a question of the child's, a log line), with the answer last; a
client that does not accept SSE gets the answer alone. A client that disconnects before its answer
(the proxy's per-try timeout, a client gone) has its request cancelled in the child
(`notifications/cancelled` under the child's id). A child that dies with the request in its hands cuts
the HTTP answer off, exactly as a server that crashed would: the proxy then retries what may be retried
and answers the rest with a clear error. While no child is up (starting, or backing off after a crash)
a request waits for one within `child.start_timeout`, then gets 503 with the reason and `Retry-After`.
"""

from __future__ import annotations

import math
from typing import Any, Final, Literal

from proxy.mcp.stdio import dumps
from aiohttp import web

from proxy.upstream.stdio import modern
from proxy.upstream.stdio.backend import ChildBackend
from proxy.upstream.stdio.child import ChildGone, ChildNotRunning
from proxy.upstream.stdio.routing import CANCELLED, Caller, Cancelled, ChildLost
from proxy.upstream.stdio.supervisor import ChildUnavailable, Link

__all__ = ["SUCCEEDED", "Era", "call", "error", "event", "json_answer", "round_trip", "sse_response", "unavailable"]

Era = Literal["legacy", "modern"]
_JSON: Final = "application/json"
_SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def json_answer(message: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=dumps(message), content_type=_JSON, headers=headers)


def error(
    status: int, code: int, message: str, request_id: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return json_answer(body, status, headers)


def event(message: Any) -> bytes:
    """One SSE event carrying a JSON-RPC message."""
    return b"event: message\ndata: " + dumps(message) + b"\n\n"


async def sse_response(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
    await response.prepare(request)
    return response


def accepts_sse(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def unavailable(exc: BaseException, request_id: Any) -> web.Response:
    """503: no child to send the request to (nothing was sent), with when to try again."""
    retry_after = getattr(exc, "retry_after", None) or 1.0
    seconds = str(max(1, math.ceil(retry_after)))
    return error(503, -32050, f"the stdio server is not running: {exc}", request_id, {"Retry-After": seconds})


async def call(
    backend: ChildBackend,
    request: web.Request,
    owner: str,
    message: dict[str, Any],
    *,
    askable: bool,
    era: Era = "legacy",
    logs: str | None = "session",
) -> web.StreamResponse:
    """Send one client request to the child and answer the client with what comes back for it (its log
    lines as `logs` says: `Caller.logs`)."""
    admitted = await _admit(backend, owner, message, askable, logs)
    if isinstance(admitted, web.Response):
        return admitted
    link, caller, renamed = admitted
    try:
        try:
            await link.send(renamed)
        except (ChildGone, ChildNotRunning) as exc:
            backend.board.callers.pop(caller.child_id, None)  # nothing to cancel: as if answered
            if isinstance(exc, ChildGone):  # the line may have reached the child: as a broken connection
                return cut_off(request)
            return unavailable(exc, message.get("id"))
        first = await caller.inbox.get()
        if isinstance(first, ChildLost):
            return cut_off(request)
        if isinstance(first, Cancelled):
            return _cancelled(backend, message, era)
        if "method" not in first:
            return _final(backend, first, message, era)
        return await _streamed(backend, request, caller, first, message, era)
    finally:
        unanswered = caller.child_id in backend.board.callers  # the client gave up first
        backend.release(caller)
        if unanswered:
            cancel = {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": caller.child_id, "reason": "the client gave up on the request"},
            }
            backend.send_later(link, cancel, "stdio-cancel")


SUCCEEDED: Final = web.ResponseKey("mcp_proxy_succeeded", bool)
"""The key of a `round_trip` response that says whether the child answered with a result (not an error)."""


async def round_trip(backend: ChildBackend, owner: str, message: dict[str, Any]) -> web.Response:
    """A request whose answer is all that matters (what the child sends before it is dropped), as JSON;
    ``response[SUCCEEDED]`` says whether the child's answer was a result."""
    admitted = await _admit(backend, owner, message, askable=False)
    if isinstance(admitted, web.Response):
        return admitted
    link, caller, renamed = admitted
    try:
        await link.send(renamed)
        while True:
            item = await caller.inbox.get()
            if isinstance(item, ChildLost):
                return unavailable(ChildUnavailable(item.reason), message.get("id"))
            if isinstance(item, Cancelled):
                return json_answer({"jsonrpc": "2.0", "id": message.get("id"), "error": CANCELLED})
            if "method" not in item:
                response = json_answer(item)
                response[SUCCEEDED] = "result" in item
                return response
    except (ChildGone, ChildNotRunning) as exc:
        return unavailable(exc, message.get("id"))
    finally:
        backend.release(caller)


async def _admit(
    backend: ChildBackend, owner: str, message: dict[str, Any], askable: bool, logs: str | None = "session"
) -> tuple[Link, Caller, dict[str, Any]] | web.Response:
    """The live child, the request's caller and the request renamed for the child; or the 503 when no
    child comes within `child.start_timeout`."""
    try:
        link = await backend.ready()
    except ChildUnavailable as exc:
        return unavailable(exc, message.get("id"))
    caller, renamed = backend.board.admit(owner, message, link.generation, askable=askable, logs=logs)
    return link, caller, renamed


def _final(backend: ChildBackend, response: dict[str, Any], request_message: dict[str, Any], era: Era) -> web.Response:
    if era == "modern":
        response = modern.from_child(str(request_message.get("method")), response, backend.server_info())
        return json_answer(response, modern.status_of(response))
    return json_answer(response)


async def _streamed(
    backend: ChildBackend, request: web.Request, caller: Caller, first: Any, message: dict[str, Any], era: Era
) -> web.StreamResponse:
    item = first
    if not accepts_sse(request):  # a JSON-only client gets the answer alone
        while isinstance(item, dict) and "method" in item:
            item = await caller.inbox.get()
        if isinstance(item, Cancelled):
            return _cancelled(backend, message, era)
        return cut_off(request) if isinstance(item, ChildLost) else _final(backend, item, message, era)
    response = await sse_response(request)
    while True:
        if isinstance(item, ChildLost):
            cut_off(request)
            return response
        if isinstance(item, Cancelled):
            item = {"jsonrpc": "2.0", "id": message.get("id"), "error": CANCELLED}
        if "method" not in item:
            final = (
                modern.from_child(str(message.get("method")), item, backend.server_info()) if era == "modern" else item
            )
            await response.write(event(final))
            await response.write_eof()
            return response
        await response.write(event(item))
        item = await caller.inbox.get()


def _cancelled(backend: ChildBackend, message: dict[str, Any], era: Era) -> web.Response:
    return _final(backend, {"jsonrpc": "2.0", "id": message.get("id"), "error": CANCELLED}, message, era)


def cut_off(request: web.Request) -> web.Response:
    """The connection closed with no answer, as a crashed server's is (the status never reaches anyone)."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=502)
