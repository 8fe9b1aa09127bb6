"""A stdio child served as a Streamable HTTP MCP server, on a Unix socket only the proxy reaches.

Why a server, and not a second kind of transport: everything the proxy does for an HTTP upstream (its
policies, legacy session recovery, resumed streams, health probes, the events) is built on the HTTP
exchange. The gateway turns a child into such an upstream, so a stdio server gets all of it unchanged,
and the proxy's `HttpUpstream` talks to it over a Unix socket in a private directory (mode 0700): no
other process on the host can reach the child around the proxy.

**What it serves.** MCP's Streamable HTTP transport, both eras, on top of one child the proxy
initialized itself (`proxy.upstream.stdio.supervisor`):

- legacy clients (2025-11-25 and older) get sessions of the gateway's own: `initialize` is answered
  from the child's handshake, under a new `Mcp-Session-Id`; a GET opens the session's notification
  stream; DELETE ends it; an unknown session is a 404, which the proxy's session keeper (issue 13)
  rebuilds. Sessions outlive the child: a restarted child is initialized again, set to the sessions'
  log level and subscribed again to their resources, and every GET stream hears that its lists may
  have changed;
- 2026-07-28 clients get the stateless protocol (`proxy.upstream.stdio.modern`): `server/discover`
  is answered from the child's capabilities, `subscriptions/listen` is served here, and every other
  request goes to the child without its `io.modelcontextprotocol/*` metadata.

**A request's answer** is JSON when the child's answer comes first, and an SSE stream when something
for the caller comes first (its progress, a question of the child's, a log line), with the answer last.
A client that disconnects before its answer (the proxy's per-try timeout, a client gone) has its request
cancelled in the child (`notifications/cancelled`). A child that dies with requests in flight cuts
their HTTP answers off, exactly as a server that crashed would: the proxy then retries what may be
retried and answers the rest with a clear error. While no child is up (starting, or backing off after
a crash), a request waits for one within `child.start_timeout`, then gets 503 with the reason and
`Retry-After`.

Routing (whose each message of the child's is) is `proxy.upstream.stdio.routing`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import shutil
import tempfile
import time
import uuid
from typing import Any, Final

import orjson
import structlog
from aiohttp import web

from proxy.mcp.eras import Era, era_for, protocol_of
from proxy.tasks import cancel_and_wait, spawn
from proxy.upstream.stdio import modern
from proxy.upstream.stdio.child import ChildGone, ChildSpec
from proxy.upstream.stdio.routing import LEVELS, ChildLost, Inbox, Listener, Session, Switchboard, STREAM_INBOX
from proxy.upstream.stdio.supervisor import ChildUnavailable, Handshake, Link, Supervisor, Timing

__all__ = ["CLIENT_CAPABILITIES", "MAX_SESSIONS", "Gateway"]

log = structlog.get_logger("proxy")

CLIENT_CAPABILITIES: Final = {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {}}
"""What the proxy declares to the child as its client: everything it can route to a client (servers such
as server-everything offer some tools only to clients that can be asked)."""
MAX_SESSIONS: Final = 10_000
"""Legacy sessions the gateway keeps; past it, the one used longest ago goes (its client hears 404)."""
MAX_SUBSCRIPTIONS: Final = 256
"""Resources one session may be subscribed to."""
_SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_JSON: Final = "application/json"


def _error(status: int, code: int, message: str, request_id: Any = None, **headers: str) -> web.Response:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=_JSON, headers=headers)


def _json(message: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(message), content_type=_JSON, headers=headers)


def _modern_meta(message: dict[str, Any]) -> bool:
    """A body that speaks 2026-07-28 in its `_meta` though no header says so."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(modern.PROTOCOL_VERSION) if isinstance(meta, dict) else None
    return isinstance(version, str) and era_for(version) is Era.MODERN


def _event(message: Any) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


class Gateway:
    """One stdio child behind a Unix-socket HTTP server: `start`, then `socket_path`; `stop` ends both."""

    def __init__(self, spec: ChildSpec, timing: Timing, *, max_body: int, idle_timeout: float) -> None:
        self.spec = spec
        self.timing = timing
        self.board = Switchboard()
        self.supervisor = Supervisor(
            spec,
            timing,
            Handshake(capabilities=CLIENT_CAPABILITIES, client_info={"name": "mcp-resilience-proxy", "version": "1"}),
            on_message=self._from_child,
            on_up=self._child_up,
            on_down=self._child_down,
        )
        self._max_body = max_body
        self._idle_timeout = idle_timeout
        self._first: Link | None = None
        self._link: Link | None = None
        self._keys = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dir: str | None = None
        self._runner: web.AppRunner | None = None
        self.socket_path = ""

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the child's supervision and the socket server (the child need not be up yet)."""
        self._dir = tempfile.mkdtemp(prefix="mcp-proxy-stdio-")
        os.chmod(self._dir, 0o700)
        self.socket_path = os.path.join(self._dir, "gateway.sock")
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/mcp", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.socket_path).start()
        await self.supervisor.start()

    async def stop(self) -> None:
        """Stop the child (stdin closed, then SIGTERM, then SIGKILL: `child.stop_grace` apart) and the server."""
        await self.supervisor.stop()
        await cancel_and_wait(self._tasks)
        for session in self.board.sessions.values():
            if session.stream is not None:
                session.stream.put(None)
        for listener in self.board.listeners:
            listener.inbox.put(None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def snapshot(self) -> dict[str, Any]:
        """The child's state for /status and metrics."""
        state = dict(self.supervisor.snapshot())
        state["in_flight"] = len(self.board.callers)
        state["sessions"] = len(self.board.sessions)
        return state

    # -- the child's side --------------------------------------------------------------------------

    def _from_child(self, link: Link, message: Any) -> None:
        for reply in self.board.route(link.generation, message):
            spawn(self._send_quietly(link, reply), name="stdio-reply", owner=self._tasks)

    async def _send_quietly(self, link: Link, message: Any) -> None:
        with contextlib.suppress(ChildGone):
            await link.send(message)

    def _child_up(self, link: Link) -> None:
        first = self._first
        self._link = link
        if first is None:
            self._first = link
            return
        was, now = first.initialized, link.initialized
        if was.protocol_version != now.protocol_version or was.result.get("capabilities") != now.result.get(
            "capabilities"
        ):
            # Another server now, as far as its clients can tell: their sessions were promised the old one.
            log.warning("stdio_child_changed", upstream=self.spec.name, sessions_ended=len(self.board.sessions))
            self._end_sessions()
            self._first = link
            return
        spawn(self._restore(link), name="stdio-restore", owner=self._tasks)

    async def _restore(self, link: Link) -> None:
        """Set a restarted child up as the sessions had the last one: log level, subscriptions; then tell
        the sessions' streams to read their lists again (the child may have changed them, and replays nothing)."""
        level = self.board.most_verbose_level()
        if level is not None:
            message = {
                "jsonrpc": "2.0",
                "id": f"mcp-proxy-{next(self._keys)}",
                "method": "logging/setLevel",
                "params": {"level": level},
            }
            await self._send_quietly(link, message)
        await self._resubscribe(link, self.board.subscribed(), "resources/subscribe")
        capabilities = link.initialized.result.get("capabilities") or {}
        for kind in ("tools", "prompts", "resources"):
            if isinstance(capabilities.get(kind), dict):
                self.board.route(link.generation, {"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"})

    def _child_down(self, link: Link | None, reason: str) -> None:
        if link is not None:
            self.board.child_lost(link.generation, reason)
        self._link = None

    def _end_sessions(self) -> None:
        for session in self.board.sessions.values():
            if session.stream is not None:
                session.stream.put(None)
        self.board.sessions.clear()

    # -- the HTTP side -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        modern_era = era_for(protocol_of(request.headers, None)) is Era.MODERN
        if request.method == "POST":
            body = await request.read()
            try:
                message = orjson.loads(body)
            except orjson.JSONDecodeError:
                return _error(400, -32700, "Parse error: the body is not JSON")
            if not isinstance(message, dict):
                return _error(
                    400, -32600, "Invalid Request: a stdio upstream takes one JSON-RPC message per POST, not a batch"
                )
            if modern_era or _modern_meta(message):
                return await self._modern(request, message)
            return await self._legacy_post(request, message)
        if modern_era:
            return _error(405, -32600, "Method Not Allowed", Allow="POST")
        if request.method == "GET":
            return await self._stream(request)
        if request.method == "DELETE":
            return self._delete(request)
        return _error(405, -32600, "Method Not Allowed", Allow="GET, POST, DELETE")

    def _session(self, request: web.Request) -> Session | web.Response:
        key = request.headers.get("Mcp-Session-Id")
        if not key:
            return _error(400, -32000, "Bad Request: No valid session ID provided")
        session = self.board.sessions.get(key)
        if session is None:
            return _error(404, -32600, "Session not found")
        session.last_used = time.monotonic()
        return session

    async def _legacy_post(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        method = message.get("method")
        if method == "initialize" and "id" in message:
            return await self._initialize(message)
        found = self._session(request)
        if isinstance(found, web.Response):
            return found
        session = found
        if not isinstance(method, str):  # a client's answer to a question of the child's
            forward = self.board.answer_to_child(session.id, message)
            if forward is not None and self._link is not None:
                await self._send_quietly(self._link, forward)
            return web.Response(status=202)
        if "id" not in message:
            await self._notification(session, method, message)
            return web.Response(status=202)
        if method == "logging/setLevel":
            return await self._set_level(request, session, message)
        if method == "resources/subscribe":
            return await self._subscribe(request, session, message)
        if method == "resources/unsubscribe":
            return await self._unsubscribe(request, session, message)
        return await self._call(request, session.id, message, askable=self._accepts_sse(request))

    async def _initialize(self, message: dict[str, Any]) -> web.Response:
        try:
            link = await self.supervisor.ready(self.timing.start_timeout)
        except ChildUnavailable as exc:
            return self._unavailable(exc, message.get("id"))
        self._reap()
        key = uuid.uuid4().hex
        self.board.sessions[key] = Session(key, time.monotonic())
        result = dict(link.initialized.result)
        answer = {"jsonrpc": "2.0", "id": message.get("id"), "result": result}
        return web.Response(body=orjson.dumps(answer), content_type=_JSON, headers={"Mcp-Session-Id": key})

    def _reap(self) -> None:
        """Sessions idle past `idle_timeout` with no stream open go, and the oldest past `MAX_SESSIONS`."""
        now = time.monotonic()
        sessions = self.board.sessions
        for key in [k for k, s in sessions.items() if s.stream is None and now - s.last_used > self._idle_timeout]:
            del sessions[key]
        while len(sessions) >= MAX_SESSIONS:
            oldest = min(sessions.values(), key=lambda s: s.last_used)
            if oldest.stream is not None:
                oldest.stream.put(None)
            del sessions[oldest.id]

    async def _notification(self, session: Session, method: str, message: dict[str, Any]) -> None:
        if method == "notifications/initialized":
            return  # the proxy initialized the child itself
        if method == "notifications/cancelled":
            forward = self.board.cancellation(session.id, message)
            if forward is None:
                return
            message = forward
        if self._link is not None:
            await self._send_quietly(self._link, message)

    async def _set_level(self, request: web.Request, session: Session, message: dict[str, Any]) -> web.StreamResponse:
        params = message.get("params")
        level = params.get("level") if isinstance(params, dict) else None
        if not isinstance(params, dict) or level not in LEVELS:
            return self._refuse(message, f"unknown log level {level!r}")
        before = self.board.most_verbose_level()
        session.level = level
        wanted = self.board.most_verbose_level()
        if wanted == before:  # the child already sends this much: the rest is filtered per session
            return _json({"jsonrpc": "2.0", "id": message.get("id"), "result": {}})
        return await self._round_trip(session.id, {**message, "params": {**params, "level": wanted}})

    async def _subscribe(self, request: web.Request, session: Session, message: dict[str, Any]) -> web.StreamResponse:
        uri = self._uri(message)
        if uri is None:
            return self._refuse(message, "a string uri is required")
        if uri not in session.subscriptions and len(session.subscriptions) >= MAX_SUBSCRIPTIONS:
            return self._refuse(message, f"a session may hold at most {MAX_SUBSCRIPTIONS} subscriptions")
        answer = await self._round_trip(session.id, message)
        if b'"result"' in (answer.body or b""):  # type: ignore[operator]
            session.subscriptions.add(uri)
        return answer

    async def _unsubscribe(self, request: web.Request, session: Session, message: dict[str, Any]) -> web.StreamResponse:
        uri = self._uri(message)
        if uri is not None:
            session.subscriptions.discard(uri)
            if uri in self.board.subscribed():  # another session still wants it
                return _json({"jsonrpc": "2.0", "id": message.get("id"), "result": {}})
        return await self._round_trip(session.id, message)

    async def _round_trip(self, owner: str, message: dict[str, Any]) -> web.Response:
        """A request whose answer is all that matters (what the child streams before it is dropped)."""
        try:
            link = await self.supervisor.ready(self.timing.start_timeout)
        except ChildUnavailable as exc:
            return self._unavailable(exc, message.get("id"))
        caller, renamed = self.board.admit(owner, message, link.generation, askable=False)
        try:
            await link.send(renamed)
            while True:
                item = await caller.inbox.get()
                if isinstance(item, ChildLost):
                    return self._unavailable(ChildUnavailable(item.reason), message.get("id"))
                if "method" not in item:
                    return _json(item)
        except ChildGone as exc:
            return self._unavailable(ChildUnavailable(str(exc)), message.get("id"))
        finally:
            self.board.release(caller)

    @staticmethod
    def _refuse(message: dict[str, Any], why: str) -> web.Response:
        error = {"code": -32602, "message": f"Invalid params: {why}"}
        return _json({"jsonrpc": "2.0", "id": message.get("id"), "error": error})

    @staticmethod
    def _uri(message: dict[str, Any]) -> str | None:
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        return uri if isinstance(uri, str) else None

    @staticmethod
    def _accepts_sse(request: web.Request) -> bool:
        return "text/event-stream" in request.headers.get("Accept", "")

    def _unavailable(self, exc: ChildUnavailable, request_id: Any) -> web.Response:
        retry_after = max(1, math.ceil(exc.retry_after or 1))
        return _error(
            503, -32050, f"the stdio server is not running: {exc}", request_id, **{"Retry-After": str(retry_after)}
        )

    async def _call(
        self, request: web.Request, owner: str, message: dict[str, Any], *, askable: bool, era: str = "legacy"
    ) -> web.StreamResponse:
        """Send one request to the child and answer the client with what comes back for it."""
        try:
            link = await self.supervisor.ready(self.timing.start_timeout)
        except ChildUnavailable as exc:
            return self._unavailable(exc, message.get("id"))
        caller, renamed = self.board.admit(owner, message, link.generation, askable=askable)
        answered = False
        try:
            try:
                await link.send(renamed)
            except ChildGone as exc:
                self.board.release(caller)
                answered = True
                return self._unavailable(ChildUnavailable(str(exc)), message.get("id"))
            first = await caller.inbox.get()
            if isinstance(first, ChildLost):
                answered = True
                return self._cut_off(request)
            if "method" not in first:
                answered = True
                return self._answer(first, message, era)
            return await self._stream_answer(request, caller, first, message, era)
        finally:
            if not answered and caller.child_id in self.board.callers:
                self.board.release(caller)
                cancel = {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": caller.child_id, "reason": "the client gave up on the request"},
                }
                spawn(self._send_quietly(link, cancel), name="stdio-cancel", owner=self._tasks)

    def _answer(self, response: dict[str, Any], request_message: dict[str, Any], era: str) -> web.Response:
        if era == "modern":
            response = modern.from_child(str(request_message.get("method")), response, self._server_info())
            return _json(response, modern.status_of(response))
        return _json(response)

    async def _stream_answer(
        self, request: web.Request, caller: Any, first: Any, message: dict[str, Any], era: str
    ) -> web.StreamResponse:
        if not self._accepts_sse(request):  # a JSON-only client gets the answer alone
            item = first
            while isinstance(item, dict) and "method" in item:
                item = await caller.inbox.get()
            if isinstance(item, ChildLost):
                return self._cut_off(request)
            return self._answer(item, message, era)
        response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
        await response.prepare(request)
        item = first
        while True:
            if isinstance(item, ChildLost):
                self._cut_off(request)
                return response
            if "method" not in item:
                final = (
                    modern.from_child(str(message.get("method")), item, self._server_info())
                    if era == "modern"
                    else item
                )
                await response.write(_event(final))
                await response.write_eof()
                return response
            await response.write(_event(item))
            item = await caller.inbox.get()

    @staticmethod
    def _cut_off(request: web.Request) -> web.Response:
        """The child died before answering: the connection is closed with no answer, as a crashed server's is."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response(status=502)  # never reaches anyone: the connection is gone

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        found = self._session(request)
        if isinstance(found, web.Response):
            return found
        session = found
        if session.stream is not None:
            return _error(409, -32600, "Conflict: only one GET stream is allowed per session")
        inbox = session.stream = Inbox(STREAM_INBOX)
        try:
            response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
            await response.prepare(request)
            while True:
                item = await inbox.get()
                if item is None:
                    await response.write_eof()
                    return response
                await response.write(_event(item))
        finally:
            if session.stream is inbox:
                session.stream = None

    def _delete(self, request: web.Request) -> web.Response:
        found = self._session(request)
        if isinstance(found, web.Response):
            return found
        session = found
        del self.board.sessions[session.id]
        if session.stream is not None:
            session.stream.put(None)
        unneeded = session.subscriptions - self.board.subscribed()
        if unneeded and self._link is not None:
            spawn(
                self._resubscribe(self._link, unneeded, "resources/unsubscribe"),
                name="stdio-unsubscribe",
                owner=self._tasks,
            )
        return web.Response(status=200)

    # -- 2026-07-28 --------------------------------------------------------------------------------

    async def _modern(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        refusal = modern.check(request.headers, message)
        if refusal is not None:
            body = orjson.dumps(refusal.answer) if refusal.answer is not None else None
            return web.Response(
                status=refusal.status, body=body, content_type=_JSON if body else None, headers=dict(refusal.headers)
            )
        method = str(message.get("method"))
        try:
            link = await self.supervisor.ready(self.timing.start_timeout)
        except ChildUnavailable as exc:
            return self._unavailable(exc, message.get("id"))
        if method == "server/discover":
            alive = await self._round_trip(f"modern-{next(self._keys)}", {"jsonrpc": "2.0", "id": 0, "method": "ping"})
            if alive.status != 200:
                return alive  # discover is the health probe's question: answered only while the child answers ping
            return _json(modern.discover(link.initialized.result, message.get("id")))
        if method == "subscriptions/listen":
            return await self._listen(request, message, link)
        owner = f"modern-{next(self._keys)}"
        return await self._call(request, owner, modern.to_child(message), askable=False, era="modern")

    async def _listen(self, request: web.Request, message: dict[str, Any], link: Link) -> web.StreamResponse:
        wanted = modern.listen_filter(message)
        listen_id = message.get("id")
        before = self.board.subscribed()
        listener = Listener(lambda notification: modern.wants(wanted, notification), set(wanted.uris))
        self.board.listeners.add(listener)
        await self._resubscribe(link, set(wanted.uris) - before, "resources/subscribe")
        try:
            response = web.StreamResponse(status=200, headers=_SSE_HEADERS)
            await response.prepare(request)
            await response.write(_event(modern.acknowledgement(message)))
            while True:
                item = await listener.inbox.get()
                if item is None:
                    await response.write(_event(modern.listen_end(listen_id, self._server_info())))
                    await response.write_eof()
                    return response
                await response.write(_event(modern.listen_event(listen_id, item)))
        finally:
            self.board.listeners.discard(listener)
            if self._link is not None:
                unneeded = listener.uris - self.board.subscribed()
                spawn(
                    self._resubscribe(self._link, unneeded, "resources/unsubscribe"),
                    name="stdio-unsubscribe",
                    owner=self._tasks,
                )

    async def _resubscribe(self, link: Link, uris: set[str], method: str) -> None:
        """(Un)subscribe the child to `uris` on the proxy's own account; the answers, under ids no caller
        has, are dropped."""
        for uri in sorted(uris):
            message = {
                "jsonrpc": "2.0",
                "id": f"mcp-proxy-{next(self._keys)}",
                "method": method,
                "params": {"uri": uri},
            }
            await self._send_quietly(link, message)

    def _server_info(self) -> dict[str, Any] | None:
        link = self._link or self._first
        info = link.initialized.result.get("serverInfo") if link is not None else None
        return info if isinstance(info, dict) else None
