"""The one streaming path: every SSE answer a client gets from an upstream passes here, watched as it goes.

Three kinds of answer arrive as SSE, and all of them are read through one `proxy.mcp.sse.SSEWatcher`
(each event's JSON parsed at most once, the bytes passed on exactly as the server sent them):

- a call's streamed answer (`Relay.answer`: ``tools/call`` and every request not read whole): passed on
  chunk by chunk, watched for the request's final response, which settles the call (``ok`` or
  ``jsonrpc_error``) the moment it passes, teaches the tool catalog (a ``tools/list`` page) and ends the
  watching. When it ends the chunk it came in, it ends the client's answer too, in the same write: an MCP
  server closes the stream after the response (the spec's SHOULD), so the stream's end is drained and
  the upstream connection kept, as a read's is; anything a server sends after its response is dropped
  there, as it is from a read's. Otherwise the rest is passed on to the stream's end;
- a read's answer (`proxy.upstream.transport.HttpUpstream.send`): read whole inside the pipeline, so it can
  still be retried and cached; when the server asks the client something on the way, the transport hands
  the stream on (`ReadAhead`) with its watcher, and it continues here like any streamed answer, the bytes
  already read passed on without being read again;
- the answer to a relayed message (`Relay.pass_on`: the legacy GET stream, a notification's): passed on as
  long as it lasts, watched only for ``list_changed`` notifications.

Along the way a ``notifications/<kind>/list_changed`` empties the cache's lists of that kind. When a
call's stream ends (`_settled`): the breaker and passive health, which saw only the answer's head, get
its verdict; a stream that ends or breaks before the final response and gave no event ids to resume
from gets a last event carrying the JSON-RPC error (an SDK client whose stream just ends loses its whole
session); with event ids it just ends (``resumable``: the client resumes with ``Last-Event-ID``).

Writes to a client that went away never raise (`_write_quietly`, `_end_quietly`): the outcome is already
settled, and nobody is left to tell. A client that reads nothing is cut by the listener's
``limits.send_timeout``, which ends the relay and so closes the upstream stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import ProxyError, StreamBroken, StreamEndedEarly
from proxy.mcp.jsonrpc import LONG_LIVED_METHODS, error_body
from proxy.mcp.sse import NO_REQUEST, NoRequest, Seen, SSEWatcher
from proxy.policies.base import Call, Reply, ReplyStream
from proxy.policies.failures import OK, Verdict, classify_error
from proxy.runtime import Route, Runtime
from proxy.upstream.transport import ReadAhead, SSEBody

__all__ = ["Relay", "headers_for", "learn_annotations"]

_GONE = object()
"""`Relay._pump`'s outcome when the client went away: nothing more is written or settled."""
_FINISHED = object()
"""`Relay._pump`'s outcome when a call's answer ended with its final response (the stream's end is drained)."""


class Relay:
    """Passes SSE answers on to clients, and ends the long-lived ones when the proxy drains."""

    __slots__ = ("_draining", "_long_lived")

    def __init__(self) -> None:
        self._long_lived: set[ReplyStream] = set()
        self._draining = False

    async def end_streams(self) -> None:
        """Drain: end every long-lived stream (legacy GET stream, subscriptions/listen) cleanly, now."""
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
        reports a stream that ended or broke unanswered (an event, a log line)."""
        watched = _Watched(reply, runtime, call.message.id)
        response = await _start(request, reply)
        watch = _CallWatch(runtime, route, call, settle)
        long_lived = call.method in LONG_LIVED_METHODS
        ended = await self._pump(response, watched, watch, long_lived)
        if ended is _FINISHED:
            _settled(route, call, OK)
            return response  # ended with its final response: nothing more to write
        if ended is _GONE:
            return response  # `settle` already has whatever was known
        broken = ended if isinstance(ended, StreamBroken) else None
        _settled(route, call, OK if watch.answered or broken is None else classify_error(broken))
        if not watch.answered:
            if long_lived and self._draining:
                settle("drained")  # the proxy is shutting down: end the subscription cleanly
            elif watched.watcher.last_event_id is not None:
                settle("resumable")
            else:
                error = broken or StreamEndedEarly("upstream ended the stream before the response", upstream=call.upstream)
                failed(error)
                settle(error.reason)
                await _write_quietly(response, _sse_error(call.message.id, error))
        await _end_quietly(response)
        return response

    async def pass_on(self, request: web.BaseRequest, runtime: Runtime, upstream: str, reply: Reply) -> web.StreamResponse:
        """Pass a relayed message's SSE answer on (the legacy GET stream) for as long as it lasts. A stream
        that breaks is not ended cleanly (unless the proxy drains): the client sees the break and resumes
        with Last-Event-ID."""
        watched = _Watched(reply, runtime, NO_REQUEST)
        response = await _start(request, reply)
        ended = await self._pump(response, watched, _ListWatch(runtime, upstream), long_lived=True)
        if ended is _GONE or (isinstance(ended, StreamBroken) and not self._draining):
            return response
        await _end_quietly(response)
        return response

    async def _pump(
        self, response: web.StreamResponse, watched: _Watched, look: Callable[[Seen], bool], long_lived: bool
    ) -> object:
        """The loop: each chunk to the client as it came, then what the watcher saw in it to `look`, until
        `look` says to stop watching. Bytes a buffered read took already go first, unwatched (their
        sightings were kept). A call's final response that ends its chunk ends the answer with that chunk,
        in one write (`_FINISHED`): the server closes the stream next (MCP: it SHOULD), so its end is
        drained and the connection kept, as a buffered read's is. Returns None when the stream ended,
        `_FINISHED`, the `StreamBroken` that broke it, or `_GONE`."""
        stream, watcher = watched.stream, watched.watcher
        watching = not watcher.answered
        ends = not long_lived and isinstance(stream, SSEBody)
        finished = False
        if long_lived:
            self._long_lived.add(stream)
        try:
            if watched.read:
                await response.write(watched.read)
                for seen in watched.early:
                    look(seen)
            async for chunk in stream:
                if not watching:
                    await response.write(chunk)
                    continue
                sightings = watcher.feed(chunk)
                last = ends and watcher.answered_at_end
                if last:
                    await response.write_eof(chunk)
                else:
                    await response.write(chunk)
                for seen in sightings:
                    if not look(seen):
                        watching = False
                        break
                if last:
                    assert isinstance(stream, SSEBody)
                    stream.discard_rest()  # the connection is the pool's again once the end is in
                    finished = True
                    return _FINISHED
        except StreamBroken as exc:
            return exc
        except ConnectionResetError:
            return _GONE  # the client went away
        finally:
            self._long_lived.discard(stream)
            if not finished:
                await stream.close()
        return None


class _CallWatch:
    """What a call's streamed answer has shown so far; `__call__` takes each sighting, False: stop watching."""

    __slots__ = ("_call", "_route", "_runtime", "_settle", "answered")

    def __init__(self, runtime: Runtime, route: Route, call: Call, settle: Callable[[str], None]) -> None:
        self._runtime = runtime
        self._route = route
        self._call = call
        self._settle = settle
        self.answered = False
        """The final response passed (or an event too large to watch: the rest is only passed on)."""

    def __call__(self, seen: Seen) -> bool:
        if seen.oversized:  # passed on whole, too big to read: stop watching, add nothing
            self.answered = True
            self._settle("oversized_event")
            return False
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
    on first, unwatched) and what the watcher saw in them (`early`), and the watcher itself."""

    __slots__ = ("early", "read", "stream", "watcher")

    def __init__(self, reply: Reply, runtime: Runtime, request_id: str | int | None | NoRequest) -> None:
        stream = reply.stream
        assert stream is not None
        if isinstance(stream, ReadAhead):  # handed on by a buffered read, with the watcher that read it
            self.stream: ReplyStream = stream.rest
            self.read = stream.read
            self.watcher = stream.watcher
            self.early = stream.early
        else:
            self.stream = stream
            self.read = b""
            self.watcher = SSEWatcher(request_id, runtime.config.limits.max_response_bytes)
            self.early = ()


def _settled(route: Route, call: Call, verdict: Verdict) -> None:
    """A streamed answer is over: the breaker and passive health saw only its headers (`STREAMING`), so
    its end is their verdict. Its response passed (or the stream ended cleanly: the server's choice):
    a success; it broke before the response: the transport failure that is (a stream silent past
    `stream_idle` excepted: a long run without progress looks the same)."""
    breaker = route.state.breaker.breaker_for(call)
    if breaker is not None:
        breaker.record(None, verdict, call.client)
    route.state.health.record_call(verdict)


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


class _EventStream(web.StreamResponse):
    """An SSE answer whose head leaves with its first bytes: one write to the client, not two (a write is a
    system call, about a twentieth of the proxy's CPU per streamed call, measured). aiohttp sends a
    `StreamResponse`'s head at once unless told (`_send_headers_immediately`, as its `web.Response` does);
    `_start` makes sure the head never waits for an upstream that is slow to send the first event."""

    _send_headers_immediately = False


async def _start(request: web.BaseRequest, reply: Reply) -> web.StreamResponse:
    """Start the client's answer; a client gone before it leaves the upstream stream closed, not leaked.

    The head is sent with the first bytes when they are there already (the usual case: an upstream's head
    and its first event come together); otherwise as soon as the relay waits for them, so a client sees
    the head as early as before (`_send_head`, one loop turn later)."""
    response = _EventStream(status=reply.status, reason=reply.reason, headers=headers_for(reply))
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


def _sse_error(request_id: str | int | None, error: ProxyError) -> bytes:
    return b"event: message\ndata: " + error_body(request_id, error.code, error.message, error.error_data()) + b"\n\n"
