"""A call's SSE answer that broke before its final response, carried on under the client's open stream.

An SDK client whose answer stream just ends (or ends with the proxy's error event) has lost the call; one
whose stream goes on gets its answer. So when a call's stream ends or breaks before the final response,
its client still there and the proxy not draining, the relay (`proxy.server.relay.Relay.answer`) asks
`continue_answer` to carry it on, in this order:

1. With event ids and a legacy session it is resumed as the spec says: a GET with ``Last-Event-ID`` on
   the session (up to `ANSWER_RESUMES` times, while each resumed stream breaks in turn); the server
   replays what the client missed, then the rest. Each resumption is a ``stream_resumed`` event
   (``stream: answer``).
2. When that cannot be (no ids, no session, or a restarted server that has neither the session nor the
   events), a call that is idempotent and none of whose content (an event with data) reached the client
   is sent again through the pipeline, where a lost session is rebuilt, and its answer continues the
   stream (a JSON answer as one event).

Only then does the relay end the stream with the JSON-RPC error. Whatever continues the stream follows
whole events only: the part of an unfinished event already sent is ended first (`Watched.cut`).
"""

from __future__ import annotations

import time
from typing import Any, Final

from aiohttp import web

from proxy.errors import ProxyError
from proxy.mcp.sse import Seen
from proxy.policies.base import Call, Reply
from proxy.runtime import Route, Runtime
from proxy.server.pump import FINISHED, GONE, CallWatch, Watched, pump
from proxy.server.responses import client_gone, written

__all__ = ["ANSWER_RESUMES", "continue_answer"]

ANSWER_RESUMES: Final = 3
"""Times a broken call answer is resumed with ``Last-Event-ID``, and times an idempotent one is sent again
(each resumed or repeated stream may break in turn)."""
_NOT_FOR_A_GET: Final = ("Content-Type", "Content-Length", "Mcp-Method", "Mcp-Name", "Last-Event-ID")


async def continue_answer(
    request: web.BaseRequest,
    runtime: Runtime,
    route: Route,
    call: Call,
    response: web.StreamResponse,
    watched: Watched,
    watch: CallWatch,
) -> object:
    """Carry on `call`'s answer, which broke (or ended) before its final response (`watched`: the stream
    that did; `watch`: what it showed), under the client's open `response` if the upstream can (the
    module docstring). Returns `FINISHED` once the final response passed, `GONE` when the client left,
    else None (the caller adds the error). The caller bounds it all by the call's `timeouts.total` from the
    break: a resumed stream that never brings the response, or keeps bringing something else, ends there."""
    if watched.cut:
        if not await written(response, watched.cut):
            return GONE
        watched.cut = b""
    last_id = watched.watcher.last_event_id
    content = watched.watcher.messages
    if last_id is not None and call.session_id is not None:
        for _ in range(ANSWER_RESUMES):
            broke_at = time.monotonic()
            reopened = await _reopen_answer(route, call, last_id)
            if reopened is None:
                break
            _report_answer_resumed(runtime, call, broke_at)
            resumed = Watched(reopened, runtime, call.message.id, call.upstream)
            ended = await _carried(response, resumed, watch)
            if ended is not None:
                return ended
            content += resumed.watcher.messages
            last_id = resumed.watcher.last_event_id or last_id
    for _ in range(ANSWER_RESUMES):  # each answer sent again may break in turn (the server restarted again)
        if not call.idempotent or content or client_gone(request):
            return None
        try:
            reply = await route.pipeline(call)
        except ProxyError:
            return None
        if reply.stream is None:
            if not _answers(call, reply.message):
                return None
            watch(Seen(final=reply.message))
            return FINISHED if await written(response, _as_event(reply.body or b"")) else GONE
        again = Watched(reply, runtime, call.message.id, call.upstream)
        ended = await _carried(response, again, watch)
        if ended is not None:
            return ended
        content += again.watcher.messages
    return None


async def _carried(response: web.StreamResponse, stream: Watched, watch: CallWatch) -> object:
    """Pump one more upstream stream of the answer into the client's: `FINISHED` or `GONE`, or None when
    it too ended early (an unfinished event it cut is closed first, so the next stream starts clean)."""
    ended = await pump(response, stream, watch, long_lived=None)
    if ended is FINISHED or ended is GONE:
        return ended
    if stream.cut and not await written(response, stream.cut):
        return GONE
    return None


async def _reopen_answer(route: Route, call: Call, last_id: str) -> Reply | None:
    """The GET that resumes `call`'s answer after event `last_id`, on its session (`Call.headers` carry the
    session id the upstream knows); None when the upstream does not give a stream (a server that
    restarted no longer knows the session, or has no such events)."""
    headers = call.headers.copy()
    for name in _NOT_FOR_A_GET:
        headers.popall(name, None)
    headers["Accept"] = "text/event-stream"
    headers["Last-Event-ID"] = last_id
    timeouts = call.policy.timeouts
    try:
        reply = await route.upstream.exchange(
            "GET", headers, None, timeouts.per_try, timeouts.stream_idle, owner=call.owner, query=call.query
        )
    except ProxyError:
        return None
    if reply.stream is None or not 200 <= reply.status < 300:
        if reply.stream is not None:
            await reply.stream.close()
        return None
    return reply


def _answers(call: Call, message: Any) -> bool:
    """`message` is a JSON-RPC response to `call` (a result, or an error: with its id, or id null)."""
    if not isinstance(message, dict) or not ("result" in message or isinstance(message.get("error"), dict)):
        return False
    return message.get("id") == call.message.id or (message.get("id") is None and "error" in message)


def _as_event(body: bytes) -> bytes:
    """A JSON answer as the SSE event that carries it (each of its lines a ``data:`` line)."""
    return b"event: message\n" + b"".join(b"data: " + line + b"\n" for line in body.splitlines()) + b"\n"


def _report_answer_resumed(runtime: Runtime, call: Call, broke_at: float) -> None:
    runtime.observer.policy_event(
        "stream_resumed", None, upstream=call.upstream, stream="answer", from_event_id=True,
        generation=0, gap_ms=round((time.monotonic() - broke_at) * 1000, 3),
    )  # fmt: skip
