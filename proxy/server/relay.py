"""The one streaming path: every SSE answer a client gets from an upstream passes here, watched as it goes.

Three kinds of answer arrive as SSE, and all of them are read through one `proxy.mcp.sse.SSEWatcher`
(each event's JSON parsed at most once, the bytes passed on exactly as the server sent them) by one pump
(`proxy.server.pump`, which holds the details of watching):

- a call's streamed answer (`Relay.answer`: ``tools/call`` and every request not read whole): passed on
  event by event as each completes, until the request's final response, which settles the call and ends
  the client's answer in the write that carries it; another request's answer in it is dropped;
- a read's answer (`proxy.upstream.transport.HttpUpstream.send`): read whole inside the pipeline, so it can
  still be retried and cached; when the server asks the client something on the way, the transport hands
  the stream on (`ReadAhead`) with its watcher, and it continues here like any streamed answer, the bytes
  already read passed on without being read again;
- the answer to a relayed message (`Relay.pass_on`: the legacy GET stream, a notification's): passed on as
  long as it lasts, watched only for ``list_changed`` notifications.

Only whole events go out while a stream is watched (`proxy.server.frame`), so an event the proxy adds
never lands inside a half one. When a call's stream is over, the breaker and passive health, which saw
only the answer's head, get its verdict. A stream the server ends cleanly before the final response after
giving event ids was closed on purpose, to be polled (2025-11-25): it just ends (``resumable``), and the
client reconnects with ``Last-Event-ID`` as the server asked. A call's stream that breaks (or ends with no
ids) before the final response, its client still there, is carried on under the client's open stream
when the upstream can (`proxy.server.continuation`: resumed with ``Last-Event-ID`` on its legacy session,
or an idempotent call sent again). Otherwise the stream gets a last event carrying the JSON-RPC error
with the request's id (an SDK client whose stream just ends loses its whole session); none is added after
an event that may have been the response but could not be read (``unread_event``: the client has its one
answer, the server's). An answer in a content coding passes unwatched (``unwatched``): nothing can be
read from it or added to it.

A ``subscriptions/listen`` survives its upstream stream: when that ends or breaks without the final
response, the same request is re-issued under the client's open stream (`proxy.server.listen_relay`, its
rules in `proxy.server.listen`).

A stream that ends unanswered after its client sent a DELETE for its session (`Relay.session_ending`)
ended by the client's own doing: the server ends a session's streams when the session ends. It is
settled ``session_deleted``: no failure reported, nothing counted by the breaker or passive health, no
error event added (the client hears the stream end, as it would without the proxy).

On a drain (`Relay.end_streams`) the long-lived streams (the legacy GET stream, a listen, one waiting to be
re-issued) end cleanly, at once. Writes to a client that went away never raise
(`proxy.server.responses`): the outcome is already settled, and nobody is left to tell.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Final

from aiohttp import web

from proxy.errors import ProxyError, StreamBroken, StreamEndedEarly
from proxy.mcp.jsonrpc import LONG_LIVED_METHODS
from proxy.mcp.sse import NO_REQUEST
from proxy.policies.base import Call, Clock, MonotonicClock, Reply
from proxy.policies.failures import CANCELLED, OK, classify_error
from proxy.runtime import Route, Runtime, RuntimeRef
from proxy.server.continuation import continue_answer
from proxy.server.frame import DISCARDED_EVENT, MAX_HELD_EVENT
from proxy.server.listen_relay import ListenRelay, resumable_listen
from proxy.server.pump import (
    FINISHED, GONE, SESSION_DELETED, CallWatch, ListWatch, LongLived, Watched, counted_already, learn_annotations, pump,
    settled,
)  # fmt: skip
from proxy.server.responses import (
    Relayed, client_gone, cut_off, end_quietly, headers_for, relayed, sse_error, start_stream, write_quietly,
)  # fmt: skip
from proxy.upstream.transport import encoded

__all__ = [
    "DISCARDED_EVENT", "ENDED_SESSIONS_KEPT", "MAX_HELD_EVENT", "SESSION_DELETED", "Relay", "Relayed", "headers_for",
    "learn_annotations", "relayed", "start_stream",
]  # fmt: skip

ENDED_SESSIONS_KEPT: Final = 1024
"""Sessions a client's DELETE ended that `Relay` remembers (the oldest forgotten first): the streams of one
end within moments of its DELETE, so a client sending DELETEs for made-up sessions only makes a real
one's streams, ending later than that many DELETEs, look like the upstream's failure, as before."""


class Relay:
    """Passes SSE answers on to clients, ends the long-lived ones when the proxy drains, and knows the
    sessions clients ended (`session_ending`). `clock` and `rng` time and jitter the re-issues of a
    ``subscriptions/listen`` whose upstream stream broke (`proxy.server.listen_relay`; tests fix both, and
    a listen keeps those it began with), sent on the route its path has then in `current` (`route_now`: a
    reload may have retired the pool the listen began on); without `current`, on the call's own route."""

    __slots__ = ("_current", "_ended", "_long_lived", "clock", "rng")

    def __init__(
        self, clock: Clock | None = None, rng: Callable[[], float] = random.random, current: RuntimeRef | None = None
    ) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.rng = rng
        self._current = current
        self._long_lived = LongLived()
        self._ended: dict[tuple[str, str], float] = {}
        """(upstream, session id) of DELETEs sent, oldest first, at most `ENDED_SESSIONS_KEPT`: when each
        was sent (`time.perf_counter`, the clock of `Call.started`)."""

    def session_ending(self, upstream: str, session: str) -> None:
        """A client's DELETE of `session` goes to `upstream` now: a stream of that session that ends
        unanswered from now on ended by the client's doing (marked before the DELETE is sent: the server
        may end the streams before its answer to the DELETE is read)."""
        key = (upstream, session)
        self._ended.pop(key, None)
        self._ended[key] = time.perf_counter()
        if len(self._ended) > ENDED_SESSIONS_KEPT:
            del self._ended[next(iter(self._ended))]

    def session_kept(self, upstream: str, session: str) -> None:
        """The upstream refused that DELETE (or it never got there): the session lives on."""
        self._ended.pop((upstream, session), None)

    def ended_by_client(self, call: Call) -> bool:
        """Whether `call`'s session is one its client deleted (`session_ending`) after the call began: a
        call made after the DELETE (a server that hands every client one session id, or keeps a deleted
        session) is not excused by it."""
        if call.session_id is None:
            return False
        deleted = self._ended.get((call.upstream, call.session_id))
        return deleted is not None and call.started <= deleted

    def route_now(self, request: web.BaseRequest, route: Route) -> Route:
        """The route `request`'s path has now (`current`), else `route` (the call's own): where a listen's
        re-issue goes, since a reload may have retired the pool the listen began on."""
        if self._current is None:
            return route
        return self._current.current.routes.get(request.path, route)

    async def end_streams(self) -> None:
        """Drain: end every long-lived stream (legacy GET stream, subscriptions/listen) cleanly, now, a
        listen waiting to be re-issued included."""
        await self._long_lived.end_all()

    async def answer(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        call: Call,
        reply: Reply,
        settle: Callable[[str], None],
        failed: Callable[[ProxyError], None],
    ) -> web.StreamResponse:
        """Pass a call's SSE answer on as it arrives, watching for the request's final response.

        `settle` hears the call's outcome as soon as it is known: an SDK client closes the stream right
        after reading its response, and the outcome must not be lost when that cancels us. `failed`
        reports a stream that ended or broke unanswered (an event, a log line). An answer in a content
        coding is passed on unread (`unwatched`). A ``subscriptions/listen`` whose stream may break is
        passed on by a `ListenRelay`, which re-issues it."""
        response = await start_stream(request, reply)
        if resumable_listen(call, reply):
            listen = ListenRelay(self._long_lived, self.ended_by_client, self.route_now, self.clock, self.rng)
            return await listen.answer(request, runtime, route, call, reply, response, settle, failed)
        watched = Watched(reply, runtime, call.message.id, call.upstream)
        # An error status streamed as SSE (a 503 with its JSON-RPC error as an event): the breaker and passive
        # health counted that head as the failure it is; its end must count nothing more (a success recorded
        # at the end reset every failure streak, so such a server never opened a breaker).
        count = settled if reply.verdict is None or reply.verdict.ok else counted_already
        watch = CallWatch(runtime, route, call, settle)
        long_lived = call.method in LONG_LIVED_METHODS
        unwatched = encoded(reply.headers)
        if unwatched:
            settle("unwatched")
        ended = await pump(response, watched, watch, self._long_lived if long_lived else None, watching=not unwatched)
        if ended is FINISHED:
            count(route, call, OK)
            return response  # ended with its final response: nothing more to write
        if ended is GONE:
            return response  # `settle` already has whatever was known
        error = ended if isinstance(ended, ProxyError) else None
        answered = watch.answered or watch.unread
        if not answered and self.ended_by_client(call):
            count(route, call, CANCELLED)  # the client ended it: nothing learned about the upstream
            settle(SESSION_DELETED)
            if error is None:
                await end_quietly(response)
            else:
                cut_off(request)  # the server cut it: the client sees the break, as without the proxy
            return response
        count(route, call, classify_error(error) if error is not None and not answered else OK)
        if unwatched:
            if error is not None and not self._long_lived.draining:
                cut_off(request)  # nothing can be added to an encoded body: the client sees the break
                return response
        elif not answered:
            if long_lived and self._long_lived.draining:
                settle("drained")  # the proxy is shutting down: end the subscription cleanly
            elif error is None and watched.watcher.last_event_id is not None:
                # The server closed it on purpose, to be polled (2025-11-25: the client reconnects with
                # Last-Event-ID after `retry`): the client does as the server asked, as without the proxy.
                settle("resumable")
            else:
                continued = None
                if not long_lived and not self._long_lived.draining and not client_gone(request):
                    with contextlib.suppress(TimeoutError):  # the whole of it within the call's total, from the break
                        async with asyncio.timeout(call.policy.timeouts.total):
                            continued = await continue_answer(request, runtime, route, call, response, watched, watch)
                if continued is GONE or continued is FINISHED:
                    return response
                error = error or StreamEndedEarly("upstream ended the stream before the response", upstream=call.upstream)
                failed(error)
                settle(error.reason)
                await write_quietly(response, watched.cut + sse_error(call.message.id, error))
        await end_quietly(response)
        return response

    async def pass_on(self, request: web.BaseRequest, runtime: Runtime, upstream: str, reply: Reply) -> web.StreamResponse:
        """Pass a relayed message's SSE answer on (the legacy GET stream) for as long as it lasts. A stream
        that breaks is not ended cleanly (unless the proxy drains): the client sees the break and resumes
        with Last-Event-ID."""
        watched = Watched(reply, runtime, NO_REQUEST, upstream)
        response = await start_stream(request, reply)
        look = ListWatch(runtime, upstream)
        ended = await pump(response, watched, look, self._long_lived, watching=not encoded(reply.headers))
        if ended is GONE:
            return response
        if isinstance(ended, StreamBroken) and not self._long_lived.draining:
            cut_off(request)
            return response
        await end_quietly(response)
        return response
