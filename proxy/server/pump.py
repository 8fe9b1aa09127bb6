"""The pump: one upstream SSE stream passed on to a client as it arrives, watched as it goes.

Every SSE answer the relay passes on (`proxy.server.relay`) is read here through one
`proxy.mcp.sse.SSEWatcher` (each event's JSON parsed at most once, the bytes passed on exactly as the
server sent them), and what the watcher sees goes to a watch before the bytes that carry it are written:

- a call's answer (`CallWatch`) ends with the request's final response, which settles the call (``ok``
  or ``jsonrpc_error``) the moment it passes, teaches the tool catalog (a ``tools/list`` page,
  `learn_annotations`) and ends the client's answer, in the write that carries it: an MCP server closes
  the stream after the response (the spec's SHOULD), so the stream's end is drained and the upstream
  connection kept, as a read's is, and anything a server sends after its response is dropped, as it is
  from a read's. Another request's answer (a stray) is never passed on: its event is dropped, a warning
  logged (once per stream), and the stream goes on to the call's own response (as an SDK client ignores
  an unknown id);
- a relayed message's answer (`ListWatch`: the legacy GET stream) is watched only for ``list_changed``.

Either way a ``notifications/<kind>/list_changed`` empties the cache's lists of that kind. Only whole
events go out while watching (`proxy.server.frame`). When a call's stream is over, the breaker and
passive health, which saw only the answer's head, get its verdict (`settled`).

A long-lived stream (the legacy GET stream, a ``subscriptions/listen``) is registered in `LongLived`
while it is pumped, so a drain can end it cleanly, at once. A client that reads nothing is cut by the
listener's ``limits.send_timeout``, which ends the pump and so closes the upstream stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Protocol

import structlog
from aiohttp import web

from proxy.errors import StreamBroken
from proxy.mcp.sse import NoRequest, Seen, SSEWatcher
from proxy.policies.base import Call, Reply, ReplyStream
from proxy.policies.failures import Verdict
from proxy.runtime import Route, Runtime
from proxy.server.frame import Frame
from proxy.upstream.transport import ReadAhead, SSEBody, lf_of_crlf

__all__ = [
    "FINISHED", "GONE", "SESSION_DELETED", "CallWatch", "Closable", "ListWatch", "LongLived", "Watched",
    "counted_already", "learn_annotations", "pump", "settled",
]  # fmt: skip

log = structlog.get_logger("proxy")

GONE: Final = object()
"""`pump`'s outcome when the client went away: nothing more is written or settled."""
FINISHED: Final = object()
"""`pump`'s outcome when a call's answer ended with its final response (the stream's end is drained)."""
SESSION_DELETED: Final = "session_deleted"
"""The outcome of a call whose stream ended unanswered after its client deleted the session."""


class Closable(Protocol):
    """What a drain ends (`LongLived.end_all`): an upstream stream, or a listen waiting between two."""

    async def close(self) -> None: ...


class LongLived:
    """The long-lived streams open now (a legacy GET stream, a ``subscriptions/listen``, a listen waiting
    between two upstream streams), and whether the proxy drains: a drain ends every one of them cleanly,
    at once (`end_all`), and whoever would start waiting anew asks `draining` first. One per `Relay`; the
    pump and the listen's relay are handed it."""

    __slots__ = ("_open", "draining")

    def __init__(self) -> None:
        self._open: set[Closable] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._open)

    def add(self, stream: Closable) -> None:
        self._open.add(stream)

    def discard(self, stream: Closable) -> None:
        self._open.discard(stream)

    async def end_all(self) -> None:
        """Drain: from now on `draining`; every stream open is closed (each pump then ends as its stream did)."""
        self.draining = True
        for stream in list(self._open):
            await stream.close()


async def pump(
    response: web.StreamResponse,
    watched: Watched,
    look: Callable[[Seen], bool],
    long_lived: LongLived | None,
    watching: bool = True,
) -> object:
    """The loop: the stream's whole events to the client as they complete, what the watcher saw in them
    to `look` (first: the outcome is known before the write), until `look` says to stop watching; from
    then on each chunk passes as it came. Bytes a buffered read took already go first (their
    sightings were kept). A call's answer ends with its final response, in the write that carries it
    (`FINISHED`): the server closes the stream next (MCP: it SHOULD), so its end is drained and the
    connection kept, as a buffered read's is, and nothing the server sends after it reaches the client.
    Another request's answer (a stray) is dropped, never passed on, and the pump goes on (`Frame.before`);
    a warning is logged once per stream, and nothing is counted against the upstream for it. A stream of
    `long_lived` (None: a call's answer) is registered there while it is pumped.

    While watching, the bytes of an event not yet complete are held back (`proxy.server.frame`), so
    that what the proxy may add when the stream breaks never lands inside a half event; an event that
    outgrows the bound passes as it comes (`Watched.cut` then ends it, if need be, as one that MCP
    clients ignore).

    Returns None when the stream ended, `FINISHED`, the `StreamBroken` that broke it, or `GONE`."""
    stream, watcher = watched.stream, watched.watcher
    watching = watching and not watcher.answered
    ends = long_lived is None and isinstance(stream, SSEBody)
    frame = Frame()
    finished = warned = after_stray_cr = False
    if long_lived is not None:
        long_lived.add(stream)
    try:
        if watched.read:
            for seen in watched.early:  # what the buffered read saw after handing on, its final included
                if not look(seen):
                    watching = False
                    if ends and seen.final is not None:  # the read ended with it (the transport cut it there)
                        await _end_with(response, stream, watched.read)
                        finished = True
                        return FINISHED
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
                        return FINISHED
                    break
            out = frame.whole(chunk, watcher, at) if watching else frame.rest(chunk, at)
            if out:
                await response.write(out)
    except StreamBroken as exc:
        watched.cut = frame.ended(watcher)
        return exc
    except ConnectionResetError:
        return GONE  # the client went away
    finally:
        if long_lived is not None:
            long_lived.discard(stream)
        if not finished:
            await stream.close()
    watched.cut = frame.ended(watcher)
    return None


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


class CallWatch:
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


class ListWatch:
    """A relayed stream's watch: ``list_changed`` notifications empty the cache's lists of their kind."""

    __slots__ = ("_runtime", "_upstream")

    def __init__(self, runtime: Runtime, upstream: str) -> None:
        self._runtime = runtime
        self._upstream = upstream

    def __call__(self, seen: Seen) -> bool:
        if seen.list_changed is not None:
            self._runtime.shared.cache.invalidate_lists(self._upstream, seen.list_changed)
        return True


class Watched:
    """What `pump` reads: the stream, the bytes a buffered read took from it already (`read`, passed on
    first, unwatched) and what the watcher saw in them (`early`), and the watcher itself. `cut`: what
    must precede anything the proxy adds to the client's answer (`Frame.ended`), set by the pump when part
    of an unfinished event went out."""

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
    def ahead(cls, stream: ReplyStream, read: bytes, watcher: SSEWatcher, early: tuple[Seen, ...], upstream: str) -> Watched:
        """A stream whose first bytes were read already (`read`, passed on first; `watcher` has seen them, and
        `early` is what it saw), as a listen's head is (`proxy.server.listen_relay`)."""
        watched = cls.__new__(cls)
        watched.stream, watched.read, watched.watcher, watched.early = stream, read, watcher, early
        watched.upstream, watched.cut = upstream, b""
        return watched


def settled(route: Route, call: Call, verdict: Verdict) -> None:
    """A streamed answer is over: the breaker and passive health saw only its headers (`STREAMING`), so
    its end is their verdict. Its response passed (or an event that may have been it, unread; or the
    stream ended cleanly: the server's choice): a success; it broke before the response: the transport
    failure that is (a stream silent past `stream_idle` excepted: a long run without progress looks the
    same). Another request's answer in it counts nothing: it was dropped."""
    breaker = route.state.breaker.breaker_for(call)
    if breaker is not None:
        breaker.record(None, verdict, call.client)
    route.state.health.record_call(verdict)


def counted_already(route: Route, call: Call, verdict: Verdict) -> None:
    """`settled` for a streamed answer whose head was a failure: counted then, so nothing now."""


def learn_annotations(route: Route, call: Call, message: Any) -> None:
    """A tools/list answer teaches the upstream's catalog (the retry policy believes it only when the
    upstream is trusted for its annotations). The request's cursor goes along: a page counts only as part
    of a walk the catalog saw start without one (`proxy.mcp.tool_catalog`)."""
    annotations = route.annotations
    if annotations is not None and call.method == "tools/list":
        annotations.learn(message, call.message.params.get("cursor"))  # an error answer has no tools: nothing learned
