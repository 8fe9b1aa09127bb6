"""The one streaming path: every SSE answer a client gets from an upstream passes here, watched as it goes.

Three kinds of answer arrive as SSE, and all of them are read through one `proxy.mcp.sse.SSEWatcher`
(each event's JSON parsed at most once, the bytes passed on exactly as the server sent them):

- a call's streamed answer (`Relay.answer`: ``tools/call`` and every request not read whole): passed on
  event by event as each completes, watched for the request's final response, which settles the call
  (``ok`` or ``jsonrpc_error``) the moment it passes, teaches the tool catalog (a ``tools/list`` page)
  and ends the client's answer, in the write that carries it: an MCP server closes the stream after the
  response (the spec's SHOULD), so the stream's end is drained and the upstream connection kept, as a
  read's is, and anything a server sends after its response is dropped, as it is from a read's. Another
  request's answer (a stray) is never passed on: its event is dropped, a warning logged (once per stream),
  and the stream goes on to the call's own response (as an SDK client ignores an unknown id);
- a read's answer (`proxy.upstream.transport.HttpUpstream.send`): read whole inside the pipeline, so it can
  still be retried and cached; when the server asks the client something on the way, the transport hands
  the stream on (`ReadAhead`) with its watcher, and it continues here like any streamed answer, the bytes
  already read passed on without being read again;
- the answer to a relayed message (`Relay.pass_on`: the legacy GET stream, a notification's): passed on as
  long as it lasts, watched only for ``list_changed`` notifications.

Along the way a ``notifications/<kind>/list_changed`` empties the cache's lists of that kind. When a
call's stream ends (`_settled`): the breaker and passive health, which saw only the answer's head, get
its verdict. A stream the server ends cleanly before the final response after giving event ids was
closed on purpose, to be polled (2025-11-25): it just ends (``resumable``), and the client reconnects
with ``Last-Event-ID`` as the server asked. A stream that breaks (or ends with no ids) before the final
response, its client still there, is carried
on under the client's open stream when the upstream can (`Relay._continue`): with event ids and a legacy
session it is resumed as the spec says, a GET with ``Last-Event-ID`` on the session (the server replays
what was missed; a ``stream_resumed`` event, ``stream: answer``); when that cannot be (a restarted server
has neither the session nor the events), a call that is idempotent and none of whose content (an event
with data) reached the client is sent again through the pipeline, where a lost session is rebuilt, and
its answer continues the stream. Otherwise the stream gets a last event carrying the JSON-RPC error with
the request's id (an SDK client whose stream just ends loses its whole session). That
error is always an event of its own: the bytes of an event not yet complete are held back (`_pump`), so
it never lands inside a half event, and none is added after an event that may have been the response
but could not be read (``unread_event``: the client has its one answer, the server's). An answer in a
content coding passes unwatched (``unwatched``): nothing can be read from it or added to it.

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

Writes to a client that went away never raise (`_write_quietly`, `_end_quietly`): the outcome is already
settled, and nobody is left to tell. A client that reads nothing is cut by the listener's
``limits.send_timeout``, which ends the relay and so closes the upstream stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, NamedTuple, Protocol

import structlog
from aiohttp import hdrs, web
from multidict import CIMultiDict

import orjson

from proxy.errors import CircuitOpen, ProxyError, StreamBroken, StreamEndedEarly, UpstreamTimeout, UpstreamUnavailable
from proxy.mcp.jsonrpc import LONG_LIVED_METHODS, error_body
from proxy.mcp.sse import NO_REQUEST, NoRequest, Seen, SSEWatcher, last_blank_line_end
from proxy.policies.base import Call, Clock, MonotonicClock, Reply, ReplyStream
from proxy.policies.failures import CANCELLED, OK, Verdict, classify_error
from proxy.runtime import Route, Runtime, RuntimeRef
from proxy.server.listen import Head, ListenResume, narrowed, read_head, refetch_notices, reissue
from proxy.upstream.transport import ReadAhead, SSEBody, encoded, lf_of_crlf

__all__ = [
    "DISCARDED_EVENT", "ENDED_SESSIONS_KEPT", "MAX_HELD_EVENT", "SESSION_DELETED", "Relay", "Relayed", "headers_for",
    "learn_annotations", "relayed",
]  # fmt: skip

log = structlog.get_logger("proxy")

MAX_HELD_EVENT = 1024 * 1024
"""The most of an unfinished event the relay holds back (`Relay._pump`): past it the event passes as it
comes, so a large result streams rather than waits whole in memory."""
DISCARDED_EVENT = b"event: mcp-proxy-discarded\n\n"
"""Ends an unfinished event that went out in part before the proxy adds an event of its own (`_cut`)."""

_GONE = object()
"""`Relay._pump`'s outcome when the client went away: nothing more is written or settled."""
_FINISHED = object()
"""`Relay._pump`'s outcome when a call's answer ended with its final response (the stream's end is drained)."""

SESSION_DELETED: Final = "session_deleted"
"""The outcome of a call whose stream ended unanswered after its client deleted the session."""
ENDED_SESSIONS_KEPT: Final = 1024
"""Sessions a client's DELETE ended that `Relay` remembers (the oldest forgotten first): the streams of one
end within moments of its DELETE, so a client sending DELETEs for made-up sessions only makes a real
one's streams, ending later than that many DELETEs, look like the upstream's failure, as before."""


class _Closable(Protocol):
    """What a drain ends (`Relay.end_streams`): an upstream stream, or a listen waiting between two (`_Waiting`)."""

    async def close(self) -> None: ...


class Relay:
    """Passes SSE answers on to clients, ends the long-lived ones when the proxy drains, and knows the
    sessions clients ended (`session_ending`). `clock` and `rng` time and jitter the re-issues of a
    ``subscriptions/listen`` whose upstream stream broke (`proxy.server.listen`; tests fix both), sent on
    the route its path has then in `current` (a reload may have retired the pool the listen began on);
    without `current`, on the call's own route."""

    __slots__ = ("_current", "_draining", "_ended", "_long_lived", "clock", "rng")

    def __init__(
        self, clock: Clock | None = None, rng: Callable[[], float] = random.random, current: RuntimeRef | None = None
    ) -> None:
        self.clock: Clock = clock or MonotonicClock()
        self.rng = rng
        self._current = current
        self._long_lived: set[_Closable] = set()
        self._draining = False
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
        self._draining = True
        for stream in list(self._long_lived):
            await stream.close()

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
        response = await _start(request, reply)
        if _resumable(call, reply):
            return await self._listen(request, runtime, route, call, reply, response, settle, failed)
        watched = _Watched(reply, runtime, call.message.id, call.upstream)
        # An error status streamed as SSE (a 503 with its JSON-RPC error as an event): the breaker and passive
        # health counted that head as the failure it is; its end must count nothing more (a success recorded
        # at the end reset every failure streak, so such a server never opened a breaker).
        settled = _settled if reply.verdict is None or reply.verdict.ok else _counted_already
        watch = _CallWatch(runtime, route, call, settle)
        long_lived = call.method in LONG_LIVED_METHODS
        unwatched = encoded(reply.headers)
        if unwatched:
            settle("unwatched")
        ended = await self._pump(response, watched, watch, long_lived, watching=not unwatched)
        if ended is _FINISHED:
            settled(route, call, OK)
            return response  # ended with its final response: nothing more to write
        if ended is _GONE:
            return response  # `settle` already has whatever was known
        error = ended if isinstance(ended, ProxyError) else None
        answered = watch.answered or watch.unread
        if not answered and self.ended_by_client(call):
            settled(route, call, CANCELLED)  # the client ended it: nothing learned about the upstream
            settle(SESSION_DELETED)
            if error is None:
                await _end_quietly(response)
            else:
                _cut_off(request)  # the server cut it: the client sees the break, as without the proxy
            return response
        settled(route, call, classify_error(error) if error is not None and not answered else OK)
        if unwatched:
            if error is not None and not self._draining:
                _cut_off(request)  # nothing can be added to an encoded body: the client sees the break
                return response
        elif not answered:
            if long_lived and self._draining:
                settle("drained")  # the proxy is shutting down: end the subscription cleanly
            elif error is None and watched.watcher.last_event_id is not None:
                # The server closed it on purpose, to be polled (2025-11-25: the client reconnects with
                # Last-Event-ID after `retry`): the client does as the server asked, as without the proxy.
                settle("resumable")
            else:
                continued = None
                if not long_lived and not self._draining and not _client_gone(request):
                    continued = await self._continue(request, runtime, route, call, response, watched, watch)
                if continued is _GONE or continued is _FINISHED:
                    return response
                error = error or StreamEndedEarly("upstream ended the stream before the response", upstream=call.upstream)
                failed(error)
                settle(error.reason)
                await _write_quietly(response, watched.cut + _sse_error(call.message.id, error))
        await _end_quietly(response)
        return response

    async def _continue(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        call: Call,
        response: web.StreamResponse,
        watched: _Watched,
        watch: _CallWatch,
    ) -> object:
        """A call's answer broke (or ended) before its final response, the client still there: carry on
        under the client's open stream if the upstream can (see the module docstring). Returns `_FINISHED`
        once the final response passed, `_GONE` when the client left, else None (the caller adds the error).

        1. With event ids and a legacy session, the stream is resumed as the spec says: a GET with
           ``Last-Event-ID`` on the session (up to `ANSWER_RESUMES` times, while each resumed stream
           breaks in turn); the server replays what the client missed, then the rest.
        2. Else, or when the server cannot resume it (it restarted: its events are gone), a call that is
           idempotent and none of whose answer's content reached the client (an event with data) is sent
           again through the pipeline (a lost session is rebuilt there), and its answer continues the stream.
        """
        if watched.cut:
            if not await _written(response, watched.cut):
                return _GONE
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
                resumed = _Watched(reopened, runtime, call.message.id, call.upstream)
                ended = await self._pump(response, resumed, watch, long_lived=False)
                if ended is _FINISHED or ended is _GONE:
                    return ended
                content += resumed.watcher.messages
                if resumed.cut and not await _written(response, resumed.cut):
                    return _GONE
                last_id = resumed.watcher.last_event_id or last_id
        if not call.idempotent or content or _client_gone(request):
            return None
        try:
            reply = await route.pipeline(call)
        except ProxyError:
            return None
        if reply.stream is None:
            if not _answers(call, reply.message):
                return None
            watch(Seen(final=reply.message))
            return _FINISHED if await _written(response, _as_event(reply.body or b"")) else _GONE
        again = _Watched(reply, runtime, call.message.id, call.upstream)
        ended = await self._pump(response, again, watch, long_lived=False)
        return ended if ended is _FINISHED or ended is _GONE else None

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
        end is the breaker's and passive health's verdict, as a call's stream's is (`_settled`)."""
        watch = _CallWatch(runtime, route, call, settle)
        resume = ListenResume(call, self.clock, self.rng)
        stream = reply.stream
        assert isinstance(stream, SSEBody)
        watcher = _listen_watcher(runtime, call, reply.status)
        head = await self._head(stream, watcher)
        resume.honoured = head.ack
        passed: bytes = head.read
        upstream: ReplyStream = stream
        while True:
            watched = _Watched.ahead(_rest(upstream, head), passed, watcher, head.early, call.upstream)
            ended = await self._pump(response, watched, watch, long_lived=True)
            if ended is _GONE:
                return response
            error = ended if isinstance(ended, ProxyError) else None
            if watch.answered or watch.unread:
                _settled(route, call, OK)  # ended with its final response (the server's graceful end)
                await _end_quietly(response)
                return response
            if self.ended_by_client(call):
                _settled(route, call, CANCELLED)
                settle(SESSION_DELETED)
                if error is None:
                    await _end_quietly(response)
                else:
                    _cut_off(request)
                return response
            _settled(route, call, classify_error(error) if error is not None else OK)
            if self._draining:
                settle("drained")  # the proxy is shutting down: end the subscription cleanly
                await _end_quietly(response)
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
            if outcome is _GONE:
                return response
            if outcome is _DRAINED:
                settle("drained")
                await _end_quietly(response)
                return response
            if isinstance(outcome, _Answered):  # the upstream's own answer to the re-issue: the client's too
                settle(outcome.outcome)
                await _write_quietly(response, watched.cut + outcome.event)
                await _end_quietly(response)
                return response
            assert isinstance(outcome, ProxyError)
            failed(outcome)
            settle(outcome.reason)
            await _write_quietly(response, watched.cut + _sse_error(call.message.id, outcome))
            await _end_quietly(response)
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
        `_DRAINED`; `_GONE` (the client went away); or the error the client's stream ends with."""
        resume.broke()
        last: ProxyError = error or StreamEndedEarly(
            "upstream ended the listen stream before its response", upstream=call.upstream
        )
        waiting = _Waiting()
        self._long_lived.add(waiting)
        at_least = 0.0
        try:
            while True:
                if self._draining:
                    return _DRAINED
                delay = resume.delay(at_least)
                if delay is None:
                    return _gave_up(call, resume, last)
                with contextlib.suppress(TimeoutError):
                    async with waiting.bounded(None):
                        await self.clock.sleep(delay)
                if self._draining:
                    return _DRAINED
                if _client_gone(request):
                    return _GONE
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
                    if self._draining:
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
            self._long_lived.discard(waiting)

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
        watched = _Watched(reply, runtime, NO_REQUEST, upstream)
        response = await _start(request, reply)
        look = _ListWatch(runtime, upstream)
        ended = await self._pump(response, watched, look, long_lived=True, watching=not encoded(reply.headers))
        if ended is _GONE:
            return response
        if isinstance(ended, StreamBroken) and not self._draining:
            _cut_off(request)
            return response
        await _end_quietly(response)
        return response

    async def _pump(
        self,
        response: web.StreamResponse,
        watched: _Watched,
        look: Callable[[Seen], bool],
        long_lived: bool,
        watching: bool = True,
    ) -> object:
        """The loop: the stream's whole events to the client as they complete, what the watcher saw in them
        to `look` (first: the outcome is known before the write), until `look` says to stop watching; from
        then on each chunk passes as it came. Bytes a buffered read took already go first (their
        sightings were kept). A call's answer ends with its final response, in the write that carries it
        (`_FINISHED`): the server closes the stream next (MCP: it SHOULD), so its end is drained and the
        connection kept, as a buffered read's is, and nothing the server sends after it reaches the client.
        Another request's answer (a stray) is dropped, never passed on, and the pump goes on (`_Frame.before`);
        a warning is logged once per stream, and nothing is counted against the upstream for it.

        While watching, the bytes of an event not yet complete are held back (up to `MAX_HELD_EVENT`), so
        that what the proxy may add when the stream breaks (`Relay.answer`) never lands inside a half event.
        A client's SSE parser dispatches an event only at its blank line anyway, so holding costs no event
        any time; an event that outgrows the bound passes as it comes (`_Watched.cut` then ends it, if need
        be, as one that MCP clients ignore).

        Returns None when the stream ended, `_FINISHED`, the `StreamBroken` that broke it, or `_GONE`."""
        stream, watcher = watched.stream, watched.watcher
        watching = watching and not watcher.answered
        ends = not long_lived and isinstance(stream, SSEBody)
        frame = _Frame()
        finished = warned = after_stray_cr = False
        if long_lived:
            self._long_lived.add(stream)
        try:
            if watched.read:
                for seen in watched.early:  # what the buffered read saw after handing on, its final included
                    if not look(seen):
                        watching = False
                        if ends and seen.final is not None:  # the read ended with it (the transport cut it there)
                            await _end_with(response, stream, watched.read)
                            finished = True
                            return _FINISHED
                        break
                out: bytes | bytearray = frame.first(watched.read, watcher) if watching else watched.read
                if out:
                    await response.write(out)
            async for chunk in stream:
                if not watching:
                    await response.write(chunk)
                    continue
                sightings = watcher.feed(chunk)
                # the bytes of `chunk` before `at` are dealt with: a stray's event, dropped, or the LF of the
                # CRLF that ended one, cut after its CR
                at = 1 if after_stray_cr and chunk[:1] == b"\n" else 0
                after_stray_cr = False
                for index, seen in enumerate(sightings):
                    if seen.stray:
                        out = frame.before(chunk, at, watcher.start_of(chunk, index), watcher.began_before(index), watcher)
                        if out:
                            await response.write(out)
                        at = watcher.end_of(chunk, index)
                        after_stray_cr = at == len(chunk) and chunk.endswith(b"\r")
                        if not warned:
                            warned = True
                            log.warning("stray_answer_dropped", upstream=watched.upstream)
                        continue
                    if not look(seen):
                        watching = False
                        if ends and seen.final is not None:
                            await _end_with(response, stream, frame.held + chunk[at : watcher.end_of(chunk, index)])
                            finished = True
                            return _FINISHED
                        break
                out = frame.whole(chunk, watcher, at) if watching else frame.rest(chunk, at)
                if out:
                    await response.write(out)
        except StreamBroken as exc:
            watched.cut = frame.ended(watcher)
            return exc
        except ConnectionResetError:
            return _GONE  # the client went away
        finally:
            self._long_lived.discard(stream)
            if not finished:
                await stream.close()
        watched.cut = frame.ended(watcher)
        return None


class _Frame:
    """What of a watched stream may go to the client now: whole events, a stray's dropped (`before`). The
    bytes of the event under way are `held` until its blank line arrives, up to `MAX_HELD_EVENT`; past
    that the event passes as it comes (`passing`), and `ended` says how to end the part sent if the proxy
    must add an event after it."""

    __slots__ = ("held", "passing")

    def __init__(self) -> None:
        self.held = bytearray()
        self.passing = False

    def whole(self, chunk: bytes, watcher: SSEWatcher, at: int = 0) -> bytes | bytearray:
        """What may go on now, `chunk` just fed to `watcher`, from `at` on (what precedes it was dealt with:
        `before`): every event it completed, the held start of the first of them included; what follows
        the last is held."""
        held = self.held
        if watcher.between_events:  # the usual case: the chunk ends where an event ends
            self.passing = False
            if not held:
                return chunk[at:] if at else chunk
            self.held = bytearray()
            return held + chunk[at:]
        out: bytes | bytearray
        if watcher.blank_lines:
            end = watcher.last_end(chunk)  # never before `at`: that is a blank line's end too
            out, self.held, self.passing = held + chunk[at:end], bytearray(chunk[end:]), False
        elif self.passing:
            return chunk[at:] if at else chunk
        else:
            out = b""
            held += chunk[at:] if at else chunk
        return self._bounded(out)

    def first(self, read: bytes, watcher: SSEWatcher) -> bytes | bytearray:
        """`whole` for the bytes a buffered read took already (the watcher has seen them all)."""
        end = len(read) if watcher.between_events else max(last_blank_line_end(read), 0)
        self.held = bytearray(read[end:])
        return self._bounded(read[:end])

    def rest(self, chunk: bytes, at: int = 0) -> bytes | bytearray:
        """Everything from `at` on: watching has stopped, and the stream passes as it comes from here."""
        if not self.held:
            return chunk[at:] if at else chunk
        out, self.held = self.held + chunk[at:], bytearray()
        return out

    def before(self, chunk: bytes, at: int, start: int, began_before: bool, watcher: SSEWatcher) -> bytes | bytearray:
        """What may go on of `chunk` from `at` when its event at `start` (a stray) is dropped: the events
        before it. An event begun in earlier bytes (`began_before`) is dropped with what is held of it;
        when its start went out already (an event passing), what goes on is the `_cut` that ends it, as
        an event MCP clients ignore. The caller goes on from the dropped event's end."""
        out: bytes | bytearray
        if began_before:
            out = _cut(watcher.fed_at_line_start) if self.passing else b""
        else:
            out = self.held + chunk[at:start] if self.held else chunk[at:start]
        self.held, self.passing = bytearray(), False
        return out

    def ended(self, watcher: SSEWatcher) -> bytes:
        """The stream is over with the event under way unfinished: what ends the part of it already sent."""
        return _cut(watcher.at_line_start) if self.passing else b""

    def _bounded(self, out: bytes | bytearray) -> bytes | bytearray:
        """Past `MAX_HELD_EVENT`, the held start of the event goes too, and the event passes as it comes."""
        if len(self.held) <= MAX_HELD_EVENT:
            return out
        out, self.held, self.passing = out + self.held, bytearray(), True
        return out


class _CallWatch:
    """What a call's streamed answer has shown so far; `__call__` takes each sighting, False: stop watching."""

    __slots__ = ("_call", "_route", "_runtime", "_settle", "answered", "unread")

    def __init__(self, runtime: Runtime, route: Route, call: Call, settle: Callable[[str], None]) -> None:
        self._runtime = runtime
        self._route = route
        self._call = call
        self._settle = settle
        self.answered = False
        """The final response passed (or an event too large to watch: the rest is only passed on)."""
        self.unread = False
        """An event that may be the response passed, unread (`Seen.unparsed`): if no readable response
        follows, it was the client's one answer, and the proxy adds none of its own."""

    def __call__(self, seen: Seen) -> bool:
        if seen.oversized:  # passed on whole, too big to read: stop watching, add nothing
            self.answered = True
            self._settle("oversized_event")
            return False
        if seen.unparsed:  # passed on as it is: a client's parser may read what the proxy could not
            self.unread = True
            self._settle("unread_event")
            return True
        if seen.list_changed is not None:
            self._runtime.shared.cache.invalidate_lists(self._call.upstream, seen.list_changed)
        if seen.final is not None:
            self.answered = True
            self._settle("jsonrpc_error" if seen.failed else "ok")
            learn_annotations(self._route, self._call, seen.final)
            return False
        return True


class _ListWatch:
    """A relayed stream's watch: ``list_changed`` notifications empty the cache's lists of their kind."""

    __slots__ = ("_runtime", "_upstream")

    def __init__(self, runtime: Runtime, upstream: str) -> None:
        self._runtime = runtime
        self._upstream = upstream

    def __call__(self, seen: Seen) -> bool:
        if seen.list_changed is not None:
            self._runtime.shared.cache.invalidate_lists(self._upstream, seen.list_changed)
        return True


class _Watched:
    """What `Relay._pump` reads: the stream, the bytes a buffered read took from it already (`read`, passed
    on first, unwatched) and what the watcher saw in them (`early`), and the watcher itself. `cut`: what
    must precede anything the proxy adds to the client's answer (`_cut`), set by the pump when part of an
    unfinished event went out."""

    __slots__ = ("cut", "early", "read", "stream", "upstream", "watcher")

    def __init__(self, reply: Reply, runtime: Runtime, request_id: str | int | None | NoRequest, upstream: str) -> None:
        stream = reply.stream
        assert stream is not None
        self.upstream = upstream
        self.cut = b""
        if isinstance(stream, ReadAhead):  # handed on by a buffered read, with the watcher that read it
            self.stream: ReplyStream = stream.rest
            self.read = stream.read
            self.watcher = stream.watcher
            self.early = stream.early
        else:
            self.stream = stream
            self.read = b""
            self.watcher = SSEWatcher(request_id, runtime.config.limits.max_response_bytes, reply.status)
            self.early = ()

    @classmethod
    def ahead(cls, stream: ReplyStream, read: bytes, watcher: SSEWatcher, early: tuple[Seen, ...], upstream: str) -> _Watched:
        """A stream whose first bytes were read already (`read`, passed on first; `watcher` has seen them, and
        `early` is what it saw), as a listen's head is (`Relay._listen`)."""
        watched = cls.__new__(cls)
        watched.stream, watched.read, watched.watcher, watched.early = stream, read, watcher, early
        watched.upstream, watched.cut = upstream, b""
        return watched


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
    """Stands in `Relay._long_lived` for a listen between two upstream streams: a drain `close`s it, which
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


def _client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


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
    return _Answered(_sse_error(call.message.id, error), outcome)


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


ANSWER_RESUMES: Final = 3
"""Times a broken call answer is resumed with ``Last-Event-ID`` (each resumed stream may break in turn)."""
_NOT_FOR_A_GET: Final = ("Content-Type", "Content-Length", "Mcp-Method", "Mcp-Name", "Last-Event-ID")


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


def _settled(route: Route, call: Call, verdict: Verdict) -> None:
    """A streamed answer is over: the breaker and passive health saw only its headers (`STREAMING`), so
    its end is their verdict. Its response passed (or an event that may have been it, unread; or the
    stream ended cleanly: the server's choice): a success; it broke before the response: the transport
    failure that is (a stream silent past `stream_idle` excepted: a long run without progress looks the
    same). Another request's answer in it counts nothing: it was dropped."""
    breaker = route.state.breaker.breaker_for(call)
    if breaker is not None:
        breaker.record(None, verdict, call.client)
    route.state.health.record_call(verdict)


def _counted_already(route: Route, call: Call, verdict: Verdict) -> None:
    """`_settled` for a streamed answer whose head was a failure: counted then, so nothing now."""


def learn_annotations(route: Route, call: Call, message: Any) -> None:
    """A tools/list answer teaches the upstream's catalog (the retry policy believes it only when the
    upstream is trusted for its annotations). The request's cursor goes along: a page counts only as part
    of a walk the catalog saw start without one (`proxy.mcp.tool_catalog`)."""
    annotations = route.annotations
    if annotations is not None and call.method == "tools/list":
        annotations.learn(message, call.message.params.get("cursor"))  # an error answer has no tools: nothing learned


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
    `_start` makes sure the head never waits for an upstream that is slow to send the first event.
    This one is for an upstream that sent its own ``Server`` (aiohttp keeps it); `_TheirEventStream`
    for one that sent none."""

    _send_headers_immediately = False


class _TheirEventStream(_TheirServer, _EventStream):
    """An SSE answer of an upstream that sent no ``Server``: none reaches the client."""


async def _start(request: web.BaseRequest, reply: Reply) -> web.StreamResponse:
    """Start the client's answer; a client gone before it leaves the upstream stream closed, not leaked.

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


def _cut_off(request: web.BaseRequest) -> None:
    """End the client's answer as broken, as the upstream's was: its connection is closed once what was
    written has gone, without the end of the chunked body (aiohttp would end the body cleanly after the
    handler returns, and a client would take a cut stream for a complete one)."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _written(response: web.StreamResponse, data: bytes) -> bool:
    """Write `data`; False when the client is gone."""
    try:
        await response.write(data)
    except ConnectionResetError:
        return False
    return True


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionResetError:
        pass  # the client is gone: nobody to tell


async def _end_quietly(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client closed first, as SDK clients do once they have their response


async def _end_with(response: web.StreamResponse, stream: ReplyStream, last: bytes | bytearray) -> None:
    """End the client's answer with `last` (the bytes up to its final response's end); the upstream stream's
    rest is drained so its connection is kept. When `last` ends in a CR the LF of a CRLF may still come:
    it is passed on first, so no client that holds a bare CR back misses the event."""
    assert isinstance(stream, SSEBody)
    if last.endswith(b"\r"):
        await response.write(last)
        last = await lf_of_crlf(stream)
    await response.write_eof(bytes(last))
    stream.discard_rest()  # the connection is the pool's again once the end is in


def _cut(at_line_start: bool) -> bytes:
    """What ends an unfinished event that went out in part: its line, then the event, typed so that MCP
    clients (which read only ``message`` events) ignore it. A spec-following client drops an unfinished
    event only at the stream's end, and the proxy is about to add an event of its own."""
    return (b"" if at_line_start else b"\n") + DISCARDED_EVENT


def _sse_error(request_id: str | int | None, error: ProxyError) -> bytes:
    return b"event: message\ndata: " + error_body(request_id, error.code, error.message, error.error_data()) + b"\n\n"
