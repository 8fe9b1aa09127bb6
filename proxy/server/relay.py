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
only the answer's head, get its verdict. A call's stream that ends or breaks before the final response,
its client still there, is carried on under the client's open stream when the upstream can
(`proxy.server.continuation`: resumed with ``Last-Event-ID`` on its legacy session, or an idempotent call
sent again). Otherwise the stream gets a last event carrying the JSON-RPC error with the request's id (an
SDK client whose stream just ends loses its whole session); none is added after an event that may have
been the response but could not be read (``unread_event``: the client has its one answer, the server's).
An answer in a content coding passes unwatched (``unwatched``): nothing can be read from it or added to it.

A ``subscriptions/listen`` (MCP 2026-07-28: the answer is the subscription, its first event the
acknowledgement, its graceful end the final response, and nothing is ever replayed) survives its
upstream stream (`Relay._listen`, the rules in `proxy.server.listen`). When that stream ends or breaks
without the final response (the server restarted: connection reset or closed), the client is still
there and the proxy is not draining, the same request (body, JSON-RPC id, headers) is re-issued through
the upstream's breaker and transport (never the rate limit or the retry stage: it is no new client call),
with backoff, within the call's ``timeouts.total``, while the client's stream stays open and silent. The
re-issue's acknowledgement is swallowed (the client has one) and refetch notices take its place (a
``list_changed`` per list kind the filter holds, a ``resources/updated`` per subscribed resource: what
changed while nobody listened is not replayed); its events follow, each once. Then: an acknowledgement
honouring less than the first ends the stream with a JSON-RPC error carrying the listen's id (the client
must listen again); the upstream's own answer to the re-issue (a JSON-RPC error, a 4xx) is the client's
last event, with the listen's id; a window past with no stream open ends it with the JSON-RPC error
``upstream_stream_broken``; a drain meanwhile ends it cleanly; a client gone meanwhile stops it all
(nothing left open upstream). Each resumption is a ``stream_resumed`` event (``stream: listen``).

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
from collections.abc import AsyncIterator, Callable
from typing import Final, NamedTuple

import orjson
from aiohttp import web

from proxy.errors import CircuitOpen, ProxyError, StreamBroken, StreamEndedEarly, UpstreamTimeout, UpstreamUnavailable
from proxy.mcp.jsonrpc import LONG_LIVED_METHODS
from proxy.mcp.sse import NO_REQUEST, SSEWatcher
from proxy.policies.base import Call, Clock, MonotonicClock, Reply, ReplyStream
from proxy.policies.failures import CANCELLED, OK, classify_error
from proxy.runtime import Route, Runtime, RuntimeRef
from proxy.server.continuation import continue_answer
from proxy.server.frame import DISCARDED_EVENT, MAX_HELD_EVENT
from proxy.server.listen import Head, ListenResume, narrowed, read_head, refetch_notices, reissue
from proxy.server.pump import (
    FINISHED, GONE, SESSION_DELETED, CallWatch, ListWatch, LongLived, Watched, counted_already, learn_annotations, pump,
    settled,
)  # fmt: skip
from proxy.server.responses import (
    Relayed, client_gone, cut_off, end_quietly, headers_for, relayed, sse_error, start_stream, write_quietly,
)  # fmt: skip
from proxy.upstream.transport import SSEBody, encoded

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
    ``subscriptions/listen`` whose upstream stream broke (`proxy.server.listen`; tests fix both), sent on
    the route its path has then in `current` (a reload may have retired the pool the listen began on);
    without `current`, on the call's own route."""

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
        passed on by `_listen`, which re-issues it."""
        response = await start_stream(request, reply)
        if _resumable(call, reply):
            return await self._listen(request, runtime, route, call, reply, response, settle, failed)
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
            else:
                continued = None
                if not long_lived and not self._long_lived.draining and not client_gone(request):
                    continued = await continue_answer(request, runtime, route, call, response, watched, watch)
                if continued is GONE or continued is FINISHED:
                    return response
                error = error or StreamEndedEarly("upstream ended the stream before the response", upstream=call.upstream)
                failed(error)
                settle(error.reason)
                await write_quietly(response, watched.cut + sse_error(call.message.id, error))
        await end_quietly(response)
        return response

    async def _listen(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        call: Call,
        reply: Reply,
        response: web.StreamResponse,
        settle: Callable[[str], None],
        failed: Callable[[ProxyError], None],
    ) -> web.StreamResponse:
        """`answer` for a ``subscriptions/listen`` (the rules: `proxy.server.listen`). Each upstream stream's
        first event is read first (`_head`): the acknowledgement the client gets, and keeps. When a stream
        ends or breaks without the final response while the client is there and the proxy is not
        draining, the listen is re-issued (`_resume`) while the client's stream stays open: the re-issue's
        acknowledgement is swallowed, refetch notices go in its place, and its events follow. Each stream's
        end is the breaker's and passive health's verdict, as a call's stream's is (`settled`)."""
        watch = CallWatch(runtime, route, call, settle)
        resume = ListenResume(call, self.clock, self.rng)
        stream = reply.stream
        assert isinstance(stream, SSEBody)
        watcher = _listen_watcher(runtime, call, reply.status)
        head = await self._head(stream, watcher)
        resume.honoured = head.ack
        passed: bytes = head.read
        upstream: ReplyStream = stream
        while True:
            watched = Watched.ahead(_rest(upstream, head), passed, watcher, head.early, call.upstream)
            ended = await pump(response, watched, watch, self._long_lived)
            if ended is GONE:
                return response
            error = ended if isinstance(ended, ProxyError) else None
            if watch.answered or watch.unread:
                settled(route, call, OK)  # ended with its final response (the server's graceful end)
                await end_quietly(response)
                return response
            if self.ended_by_client(call):
                settled(route, call, CANCELLED)
                settle(SESSION_DELETED)
                if error is None:
                    await end_quietly(response)
                else:
                    cut_off(request)
                return response
            settled(route, call, classify_error(error) if error is not None else OK)
            if self._long_lived.draining:
                settle("drained")  # the proxy is shutting down: end the subscription cleanly
                await end_quietly(response)
                return response
            notices = refetch_notices(call.message.id, resume.honoured) if resume.honoured is not None else (b"", [])
            outcome: object = (
                await self._resume(request, runtime, route, call, resume, error)
                if notices is not None
                else error or StreamEndedEarly("upstream ended the listen stream before its response", upstream=call.upstream)
            )
            if isinstance(outcome, _Reissued):
                upstream, head, watcher = outcome
                taken = _taken_up(runtime, call, resume, head, notices)
                if isinstance(taken, bytes):
                    passed = watched.cut + taken
                    continue
                await upstream.close()
                outcome = taken
            if outcome is GONE:
                return response
            if outcome is _DRAINED:
                settle("drained")
                await end_quietly(response)
                return response
            if isinstance(outcome, _Answered):  # the upstream's own answer to the re-issue: the client's too
                settle(outcome.outcome)
                await write_quietly(response, watched.cut + outcome.event)
                await end_quietly(response)
                return response
            assert isinstance(outcome, ProxyError)
            failed(outcome)
            settle(outcome.reason)
            await write_quietly(response, watched.cut + sse_error(call.message.id, outcome))
            await end_quietly(response)
            return response

    async def _head(self, stream: ReplyStream, watcher: SSEWatcher) -> Head:
        """`read_head`, ended by a drain as the pump is (the stream is long-lived meanwhile); a handler
        cancelled meanwhile (its client went away) closes the upstream stream."""
        self._long_lived.add(stream)
        try:
            return await read_head(stream, watcher)
        except BaseException:
            await stream.close()
            raise
        finally:
            self._long_lived.discard(stream)

    async def _resume(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        call: Call,
        resume: ListenResume,
        error: ProxyError | None,
    ) -> object:
        """Re-issue the listen until an upstream stream is open again (`_Reissued`: its head read), within
        the outage's window (`ListenResume`). Each re-issue waits its backoff first (an open breaker's
        period, if longer), then has `ListenResume.attempt_timeout` to be acknowledged; a drain ends either
        wait at once (`_Waiting`). Returns `_Reissued`; `_Answered` (the upstream's own final answer);
        `_DRAINED`; `GONE` (the client went away); or the error the client's stream ends with."""
        resume.broke()
        last: ProxyError = error or StreamEndedEarly(
            "upstream ended the listen stream before its response", upstream=call.upstream
        )
        waiting = _Waiting()
        long_lived = self._long_lived
        long_lived.add(waiting)
        at_least = 0.0
        try:
            while True:
                if long_lived.draining:
                    return _DRAINED
                delay = resume.delay(at_least)
                if delay is None:
                    return _gave_up(call, resume, last)
                with contextlib.suppress(TimeoutError):
                    async with waiting.bounded(None):
                        await self.clock.sleep(delay)
                if long_lived.draining:
                    return _DRAINED
                if client_gone(request):
                    return GONE
                timeout = resume.attempt_timeout()
                if timeout is None:
                    return _gave_up(call, resume, last)
                at_least = 0.0
                number = resume.sent()
                try:
                    async with waiting.bounded(timeout):
                        reply = await reissue(self._route_now(request, route), call, number)
                        outcome = await self._reopened(runtime, call, reply)
                except TimeoutError:
                    if long_lived.draining:
                        return _DRAINED
                    last = UpstreamTimeout(
                        f"the re-issued subscriptions/listen was not acknowledged within {timeout:g}s",
                        upstream=call.upstream,
                    )
                    continue
                except CircuitOpen as exc:  # nothing was sent: wait out the open period, within the window
                    last, at_least = exc, exc.retry_after or 0.0
                    continue
                except ProxyError as exc:
                    last = exc
                    continue
                if isinstance(outcome, ProxyError):
                    last = outcome
                    continue
                return outcome
        finally:
            long_lived.discard(waiting)

    def _route_now(self, request: web.BaseRequest, route: Route) -> Route:
        """Where a re-issue goes: the route of the request's path now (`current`), else the call's own."""
        if self._current is None:
            return route
        return self._current.current.routes.get(request.path, route)

    async def _reopened(self, runtime: Runtime, call: Call, reply: Reply) -> object:
        """What a re-issue's answer is: a stream whose head is read (`_Reissued`), the upstream's own final
        answer (`_Answered`: a JSON answer but a 5xx or 429), or a failure to try again after (a ProxyError:
        a 5xx, a 429, a stream that ended or broke before its first event, one in a content coding)."""
        stream = reply.stream
        status = reply.status
        if status == 429 or status >= 500:
            if stream is not None:
                await stream.close()
            return UpstreamUnavailable(f"the re-issued subscriptions/listen was answered HTTP {status}", upstream=call.upstream)
        if stream is None:
            return _answer_of(call, reply)
        if encoded(reply.headers) or not isinstance(stream, SSEBody):
            await stream.close()  # its acknowledgement cannot be read (the proxy asks for no coding): a failed try
            return UpstreamUnavailable(
                "upstream answered the re-issued subscriptions/listen in a content coding", upstream=call.upstream
            )
        watcher = _listen_watcher(runtime, call, status)
        head = await self._head(stream, watcher)
        if head.broke is not None:
            return head.broke
        if head.ended and head.first is None:
            return StreamEndedEarly("upstream ended the re-issued listen stream before its first event", upstream=call.upstream)
        return _Reissued(stream, head, watcher)

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











class _Rest:
    """What the pump reads of a listen stream after `read_head`: the stream itself, or, when the head saw it
    end or break, that end again (the pump then passes the head's whole events and ends as the stream did)."""

    __slots__ = ("_broke", "_stream")

    def __init__(self, stream: ReplyStream, broke: StreamBroken | None) -> None:
        self._stream = stream
        self._broke = broke

    def __aiter__(self) -> _Rest:
        return self

    async def __anext__(self) -> bytes:
        if self._broke is not None:
            broke, self._broke = self._broke, None
            raise broke
        raise StopAsyncIteration

    async def close(self) -> None:
        await self._stream.close()


def _rest(stream: ReplyStream, head: Head) -> ReplyStream:
    return _Rest(stream, head.broke) if head.broke is not None or head.ended else stream


class _Waiting:
    """Stands in `LongLived` for a listen between two upstream streams: a drain `close`s it, which
    ends the wait under way (a backoff, a re-issue) at once, as closing a stream ends a pump."""

    __slots__ = ("_timeout",)

    def __init__(self) -> None:
        self._timeout: asyncio.Timeout | None = None

    @contextlib.asynccontextmanager
    async def bounded(self, seconds: float | None) -> AsyncIterator[None]:
        """A wait of at most `seconds` (None: unbounded), or until a drain: either raises TimeoutError."""
        async with asyncio.timeout(seconds) as timeout:
            self._timeout = timeout
            try:
                yield
            finally:
                self._timeout = None

    async def close(self) -> None:
        if self._timeout is not None:
            self._timeout.reschedule(asyncio.get_running_loop().time())


class _Reissued(NamedTuple):
    """A re-issued listen's stream, open, its first event read (`head`) by `watcher`."""

    stream: ReplyStream
    head: Head
    watcher: SSEWatcher


class _Answered(NamedTuple):
    """The upstream's own final answer to a re-issued listen (a JSON answer), as the client's last event."""

    event: bytes
    outcome: str


_DRAINED = object()
"""`Relay._resume`'s outcome when the proxy drains meanwhile: the subscription ends cleanly."""


def _resumable(call: Call, reply: Reply) -> bool:
    """A listen whose stream the relay can read and re-issue: a 2xx SSE answer in no content coding, read
    by nobody before (a listen is never buffered)."""
    return (
        call.method in LONG_LIVED_METHODS
        and 200 <= reply.status < 300
        and isinstance(reply.stream, SSEBody)
        and not encoded(reply.headers)
    )


def _listen_watcher(runtime: Runtime, call: Call, status: int) -> SSEWatcher:
    return SSEWatcher(call.message.id, runtime.config.limits.max_response_bytes, status)




def _answer_of(call: Call, reply: Reply) -> _Answered:
    """A JSON answer to a re-issued listen (not a 5xx or 429): the upstream's final word, the client's last
    event. Its JSON-RPC response is passed with the listen's id (a server may write null in an error); an
    answer holding none (a 404 page) ends the stream with the proxy's error saying what came instead."""
    message = reply.message
    status = reply.status
    outcome = f"http_{status // 100}xx" if status >= 400 else "ok"
    if isinstance(message, dict) and ("error" in message or "result" in message) and "method" not in message:
        outcome = outcome if status >= 400 or "error" not in message else "jsonrpc_error"
        return _Answered(b"event: message\ndata: " + orjson.dumps({**message, "id": call.message.id}) + b"\n\n", outcome)
    error = StreamBroken(
        f"upstream answered the re-issued subscriptions/listen with HTTP {status} and no JSON-RPC response",
        upstream=call.upstream,
    )
    return _Answered(sse_error(call.message.id, error), outcome)


def _taken_up(
    runtime: Runtime, call: Call, resume: ListenResume, head: Head, notices: tuple[bytes, list[str]] | None
) -> bytes | StreamBroken:
    """What the client hears of a re-issued listen's `head` (its stream goes on after it), or the error its
    stream ends with instead. The acknowledgement of a listen whose client has one already is swallowed and
    the refetch `notices` take its place (the lists they announce are forgotten by the cache: the client
    will ask again); one honouring less than the first is that error. Without a first one (the first
    stream broke before it), it is the client's first, passed on. A head holding the upstream's final
    answer (an error: the re-issue was refused) is passed on as it is, and resumes nothing."""
    again = head.ack
    if again is None and any(seen.final is not None for seen in head.early):
        return head.read
    if resume.honoured is not None and again is not None:
        lost = narrowed(resume.honoured, again)
        if lost:
            return StreamBroken(
                "upstream acknowledged the re-issued subscriptions/listen with a narrower filter (no longer: "
                f"{', '.join(lost)[:200]}); listen again", upstream=call.upstream,
            )  # fmt: skip
        assert notices is not None, "a listen whose notices would be too many is not re-issued"
        body, kinds = notices
        for kind in kinds:
            runtime.shared.cache.invalidate_lists(call.upstream, kind)
        taken = body + head.read[head.end :]
    else:
        resume.honoured = resume.honoured or again
        taken = head.read
    resume.acknowledged(resumed=True)
    _report_resumed(runtime, call, resume)
    return taken


def _gave_up(call: Call, resume: ListenResume, last: ProxyError) -> StreamBroken:
    return StreamBroken(
        f"upstream subscriptions/listen stream broke and was not re-established within {resume.total:g}s "
        f"({resume.window_reissues} tries; the last: {last.message})",
        upstream=call.upstream,
    )


def _report_resumed(runtime: Runtime, call: Call, resume: ListenResume) -> None:
    """The ``stream_resumed`` event (and metric) of a resumed listen: no event ids (a listen has no replay),
    no session (generation 0: the 2026-07-28 era has none), the gap from the break to the acknowledgement."""
    fields = {"upstream": call.upstream, "stream": "listen", "from_event_id": False, "generation": 0, "gap_ms": resume.gap_ms}
    runtime.observer.policy_event("stream_resumed", None, **fields)














































