"""A ``subscriptions/listen`` passed on across its upstream's streams: re-issued when one breaks.

A listen (MCP 2026-07-28) is a POST whose SSE answer is the subscription: its first event the
acknowledgement, its graceful end the final response, and nothing is ever replayed. It survives its
upstream stream here (`ListenRelay`; the pure rules and bounds are `proxy.server.listen`'s). When that
stream ends or breaks without the final response (the server restarted: connection reset or closed), the
client is still there and the proxy is not draining, the same request (body, JSON-RPC id, headers) is
re-issued through the upstream's breaker and transport (never the rate limit or the retry stage: it is
no new client call), with backoff, within the call's ``timeouts.total``, while the client's stream stays
open and silent. The re-issue's acknowledgement is swallowed (the client has one) and refetch notices
take its place (a ``list_changed`` per list kind the filter holds, a ``resources/updated`` per
subscribed resource: what changed while nobody listened is not replayed); its events follow, each once.

Then: an acknowledgement honouring less than the first ends the stream with a JSON-RPC error carrying the
listen's id (the client must listen again); the upstream's own answer to the re-issue (a JSON-RPC error,
a 4xx) is the client's last event, with the listen's id; a window past with no stream open ends it with
the JSON-RPC error ``upstream_stream_broken``; a drain meanwhile ends it cleanly; a client gone meanwhile
stops it all (nothing left open upstream). Each resumption is a ``stream_resumed`` event
(``stream: listen``).

The relay hands `ListenRelay` what it needs of it explicitly: the long-lived streams a drain ends
(`proxy.server.pump.LongLived`, which says whether the proxy drains), whether a session was ended by its
client, the route a re-issue takes (the path's now: `proxy.server.relay.Relay.route_now`), and the clock
and jitter of the re-issues.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import NamedTuple

import orjson
from aiohttp import web

from proxy.errors import CircuitOpen, ProxyError, StreamBroken, StreamEndedEarly, UpstreamTimeout, UpstreamUnavailable
from proxy.mcp.jsonrpc import LONG_LIVED_METHODS
from proxy.mcp.sse import SSEWatcher
from proxy.policies.base import Call, Clock, Reply, ReplyStream
from proxy.policies.failures import CANCELLED, OK, classify_error
from proxy.runtime import Route, Runtime
from proxy.server.listen import Head, ListenResume, narrowed, read_head, refetch_notices, reissue
from proxy.server.pump import GONE, SESSION_DELETED, CallWatch, LongLived, Watched, pump, settled
from proxy.server.responses import client_gone, cut_off, end_quietly, sse_error, write_quietly
from proxy.upstream.transport import SSEBody, encoded

__all__ = ["ListenRelay", "resumable_listen"]


def resumable_listen(call: Call, reply: Reply) -> bool:
    """A listen whose stream the relay can read and re-issue: a 2xx SSE answer in no content coding, read
    by nobody before (a listen is never buffered)."""
    return (
        call.method in LONG_LIVED_METHODS
        and 200 <= reply.status < 300
        and isinstance(reply.stream, SSEBody)
        and not encoded(reply.headers)
    )


class ListenRelay:
    """Passes on a listen's answer (one `resumable_listen` accepts), re-issuing it when its upstream
    stream breaks (the module docstring). `long_lived` holds its streams (and its wait between two) while
    they are open, and says whether the proxy drains; `ended_by_client` says whether a call's session was
    deleted by its client after the call began; `route_now` is the route a re-issue goes on, asked at each
    (a reload may have retired the pool the listen began on); `clock` and `rng` time and jitter the
    re-issues (tests fix both)."""

    __slots__ = ("_clock", "_ended_by_client", "_long_lived", "_rng", "_route_now")

    def __init__(
        self,
        long_lived: LongLived,
        ended_by_client: Callable[[Call], bool],
        route_now: Callable[[web.BaseRequest, Route], Route],
        clock: Clock,
        rng: Callable[[], float],
    ) -> None:
        self._long_lived = long_lived
        self._ended_by_client = ended_by_client
        self._route_now = route_now
        self._clock = clock
        self._rng = rng

    async def answer(
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
        """`proxy.server.relay.Relay.answer` for a listen (`response` started already). Each upstream
        stream's first event is read first (`_head`): the acknowledgement the client gets, and keeps. When
        a stream ends or breaks without the final response while the client is there and the proxy is not
        draining, the listen is re-issued (`_resume`) while the client's stream stays open: the re-issue's
        acknowledgement is swallowed, refetch notices go in its place, and its events follow. Each stream's
        end is the breaker's and passive health's verdict, as a call's stream's is (`settled`)."""
        watch = CallWatch(runtime, route, call, settle)
        resume = ListenResume(call, self._clock, self._rng)
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
            if self._ended_by_client(call):
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
                        await self._clock.sleep(delay)
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
    """Stands in `LongLived` for a listen between two upstream streams: a drain `close`s it, which ends the
    wait under way (a backoff, a re-issue) at once, as closing a stream ends a pump."""

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
"""`ListenRelay._resume`'s outcome when the proxy drains meanwhile: the subscription ends cleanly."""


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
