"""A kept legacy session's GET stream, which outlives its upstream's: reopened when the upstream's breaks.

A legacy client opens one GET stream per session, for what the server sends unasked (list changes,
resource updates, requests such as ``roots/list``). When the upstream restarts, that stream breaks; the
official SDK clients then try to reopen it twice and give up (and after a restart they would meet a
404). Here the client's stream stays open: the proxy reopens the upstream's under it, with
``Last-Event-ID`` when the server gave event ids and the session is the same one (a restarted server has
nothing to replay, and the session is rebuilt first: `proxy.sessions.keeper`), and passes on what comes.

- Only whole events reach the client (each held until its blank line, up to `MAX_HELD_EVENT`; a larger
  one passes as it comes): a break never leaves half an event in front of the next stream's first.
- A server resuming with ``Last-Event-ID`` replays what the stream missed; a JSON-RPC response or an
  event that is no JSON-RPC message (server-everything replays other streams' answers and a bare ``{}``
  onto a resumed GET) is dropped: a GET stream carries neither (the spec), so none reaches the client.
- Reopening waits `RESUME_BACKOFF` (doubling up to `RESUME_BACKOFF_MAX`) between tries, for at most
  `RESUME_WINDOW` from the break: past it the client's stream ends as it would have without the proxy
  (cut: the client sees the break and may reopen it itself).
- A client gone, a proxy draining (SIGTERM), a session lost for good or ended by its client: the
  stream ends (cleanly when draining), and the upstream's is closed.

Each reopening is a `stream_resumed` event (``stream: get``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from dataclasses import dataclass, field
from typing import Final

import orjson
import structlog
from aiohttp import web
from multidict import CIMultiDict

from proxy.errors import ProxyError
from proxy.mcp.sse import SSEParser, blank_line_ends
from proxy.policies.base import Call, Reply, ReplyStream
from proxy.policies.failures import session_lost_answer
from proxy.runtime import Route, Runtime, RuntimeRef
from proxy.sessions.keeper import SESSION_HEADER, as_client_knows
from proxy.sessions.table import LegacySession
from proxy.server.relay import MAX_HELD_EVENT, relayed, start_stream
from proxy.server.responses import cut_off, end_quietly, written

__all__ = ["RESUME_BACKOFF", "RESUME_BACKOFF_MAX", "RESUME_WINDOW", "SessionStreams"]

log = structlog.get_logger("proxy")

_RETRY: Final = re.compile(rb"^retry:[ ]?([0-9]{1,9})\r?$", re.MULTILINE)
"""An SSE ``retry:`` field (milliseconds), as a line of its own."""
_PASSING: Final = frozenset({408, 409, 429, 502, 503, 504})
"""What a reopening GET may be answered while the server comes back: tried again within the window."""
RESUME_WINDOW: Final = 60.0
"""Seconds from a break within which the upstream's stream is reopened (a restarted server's start-up)."""
RESUME_BACKOFF: Final = 0.05
"""The first wait between reopening tries (s); it doubles up to `RESUME_BACKOFF_MAX`."""
RESUME_BACKOFF_MAX: Final = 2.0


class SessionStreams:
    """The GET streams of kept sessions being relayed, so a drain can end them all."""

    __slots__ = ("current", "draining", "upstream_streams")

    def __init__(self, current: RuntimeRef | None = None) -> None:
        self.current = current
        """The runtime a reload swaps: a stream reopened after a reload goes to its upstream's current
        transport (a stdio upstream whose child the reload replaced cuts its streams for that)."""
        self.draining = False
        self.upstream_streams: set[ReplyStream] = set()

    async def end(self) -> None:
        """Drain: end every one now (each ends its client's stream cleanly)."""
        self.draining = True
        for stream in list(self.upstream_streams):
            await stream.close()

    async def serve(
        self,
        request: web.BaseRequest,
        runtime: Runtime,
        route: Route,
        session: LegacySession,
        headers: CIMultiDict[str],
        owner: int,
        query: str,
        about: Call,
    ) -> web.StreamResponse:
        """Relay `session`'s GET stream for as long as its client keeps it (see the module docstring).
        Raises the `ProxyError` of a first opening that failed (nothing was sent to the client yet)."""
        relay = _Resuming(self, request, runtime, route, session, headers, owner, query, about)
        return await relay.run()


@dataclass(eq=False)
class _Resuming:
    """One client's GET stream across the upstream streams under it."""

    streams: SessionStreams
    request: web.BaseRequest
    runtime: Runtime
    route: Route
    session: LegacySession
    headers: CIMultiDict[str]
    owner: int
    query: str
    about: Call
    response: web.StreamResponse | None = None
    last_event_id: str | None = field(init=False)
    """The last event id the upstream gave (the client's own at first: it may be resuming itself)."""
    generation: int = field(init=False)
    """The session generation `last_event_id` belongs to."""
    reopen_now: bool = False
    """The last opening rebuilt the session: the next one goes at once, without a backoff."""
    content: bool = False
    """The stream being pumped passed an event with data (a priming event, an id alone, is none)."""
    retry_s: float = 0.0
    """The server's last ``retry:`` (s, at most `RESUME_BACKOFF_MAX`): the least wait before reopening a
    stream it ended cleanly, as a client would wait."""

    def __post_init__(self) -> None:
        self.last_event_id = self.headers.get("Last-Event-ID")
        self.generation = self.session.generation

    async def run(self) -> web.StreamResponse:
        self.session.streams += 1  # listened to: in use, never idle (`SessionTable._make_room`)
        try:
            return await self._run()
        finally:
            self.session.streams -= 1

    async def _run(self) -> web.StreamResponse:
        broke_at: float | None = None
        backoff = RESUME_BACKOFF
        first = True
        broke = True
        while True:
            if broke_at is not None and not self.reopen_now:
                if not self._may_go_on() or time.monotonic() - broke_at > RESUME_WINDOW:
                    return await self._stop()
                # Full jitter: streams broken together spread out; never sooner than a server's `retry:`
                # asked for a stream it ended cleanly.
                await self._pause(max(backoff * random.random(), 0.0 if broke else self.retry_s))
                backoff = min(backoff * 2, RESUME_BACKOFF_MAX)
                if not self._may_go_on():
                    return await self._stop()
            self.reopen_now = False
            resumed_from_id = self.last_event_id is not None and self.generation == self.session.generation
            try:
                reply = await self._open(resumed_from_id)
            except ProxyError:
                if self.response is None:
                    raise  # nothing started: the handler answers it as any relayed GET's failure
                broke_at = broke_at if broke_at is not None else time.monotonic()
                continue
            if reply.stream is None:
                answer = await self._answered(reply)
                if answer is not None:
                    return answer
                broke_at = broke_at if broke_at is not None else time.monotonic()
                continue
            if self.response is None:
                self.response = await start_stream(self.request, as_client_knows(self.session, reply))
            elif broke_at is not None:
                self.runtime.observer.policy_event(
                    "stream_resumed", None, upstream=self.route.upstream.name, stream="get",
                    from_event_id=resumed_from_id, generation=self.session.generation,
                    gap_ms=round((time.monotonic() - broke_at) * 1000, 3),
                )  # fmt: skip
            gone, delivered, broke = await self._pump(reply.stream, filtering=resumed_from_id and broke_at is not None)
            if gone or self.streams.draining:
                return await self._end(clean=not gone)
            if first and not broke and not delivered:
                # The first stream the client asked for ended at once, cleanly (an unknown Last-Event-ID,
                # nothing to replay): the client's stream ends the same way, as without the proxy.
                return await self._end(clean=True)
            first = False
            if self.content or broke_at is None:
                # A stream that carried a message was a real one: its end starts a new window. One that
                # ends as soon as it opens, or after a priming event alone, is the same outage going on
                # (its window and backoff go on).
                broke_at, backoff = time.monotonic(), RESUME_BACKOFF

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds` before opening again, or less: a rebuild of the session (by any of its requests)
        means the upstream is back, and the stream reopens at once (no notification missed meanwhile)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.session.rebuilt.wait(), seconds)

    async def _stop(self) -> web.StreamResponse:
        """The stream goes no further: cleanly when its session ended (the client deleted it: the server
        ends a deleted session's stream cleanly) or the proxy drains; cut otherwise (the window passed, or
        the session cannot be rebuilt: the client sees the break, as without the proxy)."""
        ended = self.session.ended or self.session.deleting or self.streams.draining
        return await self._end(clean=True) if ended else self._cut()

    def _may_go_on(self) -> bool:
        transport = self.request.transport
        return (
            not self.streams.draining
            and transport is not None
            and not transport.is_closing()
            and self.session.lost is None
            and not self.session.deleting
            and self.route.state.sessions.table.get(self.session.client_id) is self.session
        )

    async def _open(self, from_event_id: bool) -> Reply:
        headers = self.headers.copy()
        headers[SESSION_HEADER] = self.session.upstream_id
        if from_event_id:
            assert self.last_event_id is not None
            headers["Last-Event-ID"] = self.last_event_id
        else:
            headers.popall("Last-Event-ID", None)
            self.last_event_id = None
        self.generation = self.session.generation
        self._follow_reload()
        upstream = self.route.upstream
        return await upstream.exchange(
            "GET", headers, None, upstream.config.timeouts.per_try, None, owner=self.owner, query=self.query
        )

    def _follow_reload(self) -> None:
        """After a reload, the same upstream's route in the current runtime (the session keeper is carried
        over with the server, so the session is still this one's)."""
        current = self.streams.current.current if self.streams.current is not None else None
        if current is None or current is self.runtime:
            return
        route = current.routes.get(self.route.config.path)
        if route is not None and route.state.sessions is self.route.state.sessions:
            self.runtime, self.route = current, route

    async def _answered(self, reply: Reply) -> web.StreamResponse | None:
        """A GET answered without a stream: the loss of a kept session is rebuilt (None: open again);
        anything else is the client's answer while its stream has not started, else the stream ends."""
        if session_lost_answer(reply.status, reply.message):
            keeper = self.route.state.sessions
            failure = await keeper.recover(
                self.session, self.generation, self.headers, self.route.upstream, self.runtime.observer, self.about
            )
            if failure is None:
                self.reopen_now = True  # rebuilt: open on the new session now
                return None
            if not failure.permanent and not failure.refused and self.response is not None:
                return None  # the upstream is still coming back: open again (within the window)
        if self.response is None:
            as_client_knows(self.session, reply)
            return relayed(reply.status, reply.reason, reply.body, reply.headers)
        if reply.status in _PASSING:  # the server still holds the broken stream (409), or is not there yet
            return None
        return await self._stop()

    async def _pump(self, stream: ReplyStream, filtering: bool) -> tuple[bool, bool, bool]:
        """Pass `stream`'s whole events on until it ends: (the client went away, any event passed, it broke).
        `content` says whether one of them carried data."""
        assert self.response is not None
        self.content = False
        self.streams.upstream_streams.add(stream)
        held = bytearray()
        delivered = False
        try:
            async for chunk in stream:
                held += chunk
                ends = blank_line_ends(bytes(held))
                if not ends and len(held) <= MAX_HELD_EVENT:
                    continue
                cut = ends[-1] if ends else len(held)
                out = self._passed(bytes(held[:cut]), ends, filtering) if ends else bytes(held)
                del held[:cut]
                if out:
                    if not await written(self.response, out):
                        return True, delivered, False
                    delivered = True
        except ProxyError:
            self.route.state.sessions.table.note_outage()
            return False, delivered, True  # broken: reopened by the caller
        finally:
            self.streams.upstream_streams.discard(stream)
            await stream.close()
        return False, delivered, False

    def _passed(self, data: bytes, ends: list[int], filtering: bool) -> bytes:
        """The events of `data` that go to the client, noting the last event id."""
        out = bytearray()
        start = 0
        for end in ends:
            raw = data[start:end]
            start = end
            events = SSEParser().feed(raw)
            for event in events:
                if event.id is not None:
                    self.last_event_id = event.id
            retry = _RETRY.search(raw)
            if retry is not None:
                self.retry_s = min(int(retry[1]) / 1000, RESUME_BACKOFF_MAX)
            if filtering and any(_not_for_a_get_stream(event.data) for event in events):
                continue
            self.content = self.content or any(event.data for event in events)
            out += raw
        return bytes(out)

    def _cut(self) -> web.StreamResponse:
        """End the client's stream as a broken one (it may reopen it itself)."""
        assert self.response is not None
        cut_off(self.request)
        return self.response

    async def _end(self, clean: bool) -> web.StreamResponse:
        assert self.response is not None
        if clean:
            await end_quietly(self.response)
        return self.response


def _not_for_a_get_stream(data: str) -> bool:
    """A JSON-RPC response, or data that is no JSON-RPC message at all (a resumed GET's stray replays)."""
    if not data:
        return False
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return True
    if not isinstance(message, dict):
        return True
    return "method" not in message
