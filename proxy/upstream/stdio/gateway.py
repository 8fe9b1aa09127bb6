"""A stdio child served as a Streamable HTTP MCP server, on a Unix socket only the proxy reaches.

Why a server, and not a second kind of transport: everything the proxy does for an HTTP upstream (its
policies, legacy session recovery, resumed streams, health probes, the events) is built on the HTTP
exchange. The gateway turns a child into such an upstream, so a stdio server gets all of it unchanged,
and the proxy's `HttpUpstream` talks to it over a Unix socket in a private directory (mode 0700): no
other process on the host can reach the child around the proxy.

**What it serves.** MCP's Streamable HTTP transport, both eras, on top of children the proxy
initializes itself (`proxy.upstream.stdio.backend`):

- legacy clients (2025-11-25 and older) get sessions of the gateway's own: `initialize` is answered
  from the child's handshake under a new `Mcp-Session-Id`; a GET opens the session's notification
  stream; DELETE ends it; a session the gateway does not know is a 404, which the proxy's session
  keeper (issue 13) rebuilds. Sessions outlive a restart of the child (`ChildBackend`);
- 2026-07-28 clients get the stateless protocol (`proxy.upstream.stdio.modern`): `server/discover` is
  answered from the child's capabilities once the child answers a `ping` (so it is also the health
  probe's question), `subscriptions/listen` is served here, and every other request goes to the child
  without its `io.modelcontextprotocol/*` metadata.

**Isolation.** `shared` (the default): one child for every client, the proxy initializing it as a
client that can be asked for sampling, elicitation and roots (`CLIENT_CAPABILITIES`), each request
renamed on its way (`proxy.upstream.stdio.routing`). `per_session`: a child per legacy session,
initialized with that client's own `initialize` (its capabilities, its name), so everything the child
sends is that client's; at most `child.max_children` at once (a new session past that is refused with
503), each stopped after `child.idle_timeout` without a request or an open stream, which ends its
session (the keeper rebuilds it on the next request). 2026-07-28 clients, which have no session, share
one child in either mode.

One exchange (a request, its answer as JSON or SSE, a child dying under it) is `answers`'s.
"""

from __future__ import annotations

import asyncio
import itertools
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
from proxy.mcp.stdio import NotJSON, loads
from proxy.tasks import cancel_and_wait, spawn
from proxy.config.stdio import Isolation
from proxy.upstream.stdio import answers, modern
from proxy.upstream.stdio.answers import error, event, json_answer, sse_response, unavailable
from proxy.policies.base import Observer
from proxy.upstream.stdio.backend import ChildBackend
from proxy.upstream.stdio.child import ChildSpec
from proxy.upstream.stdio.routing import LEVELS, STREAM_INBOX, ChildLost, Inbox, Listener, Session, Switchboard
from proxy.upstream.stdio.supervisor import ACCEPTED_VERSIONS, ChildUnavailable, Handshake, Link, Supervisor, Timing

__all__ = [
    "CLIENT_CAPABILITIES",
    "MAX_CHILD_SUBSCRIPTIONS",
    "MAX_LISTENERS",
    "MAX_SESSIONS",
    "MAX_SUBSCRIPTIONS",
    "Gateway",
]

log = structlog.get_logger("proxy")

CLIENT_CAPABILITIES: Final = {"roots": {"listChanged": True}, "sampling": {}, "elicitation": {"form": {}, "url": {}}}
"""What the proxy declares to a shared child as its client: everything it can route to a client (servers
such as server-everything offer some tools only to clients that can be asked)."""
CLIENT_INFO: Final = {"name": "mcp-resilience-proxy", "version": "1"}
MAX_SESSIONS: Final = 10_000
"""Legacy sessions the gateway keeps; past it, the one used longest ago goes (its client hears 404)."""
MAX_SUBSCRIPTIONS: Final = 256
"""Resources one session, or one listen, may be subscribed to."""
MAX_LISTENERS: Final = 1024
"""2026-07-28 listens open at once on one child; past it a listen is refused (-32603)."""
MAX_CHILD_SUBSCRIPTIONS: Final = 4096
"""Distinct resources the proxy subscribes one child to for all its sessions and listeners; past it a new
resource is refused (-32602): a client must not make the proxy flood the child with subscriptions."""
LOG_LEVEL: Final = "io.modelcontextprotocol/logLevel"
"""Where a 2026-07-28 request asks for log lines (the era has no `logging/setLevel`)."""
BACKLOG: Final = 1024
"""The least the gateway's socket queues unaccepted (`Gateway.__init__`)."""


def _without_tasks(capabilities: Any) -> Any:
    """The child's capabilities as a shared child's clients get them: without `tasks` (`_no_shared_tasks`)."""
    if isinstance(capabilities, dict) and "tasks" in capabilities:
        return {key: value for key, value in capabilities.items() if key != "tasks"}
    return capabilities


def _requested_log_level(message: dict[str, Any]) -> str | None:
    """The log level a 2026-07-28 request asked for (``io.modelcontextprotocol/logLevel`` in its `_meta`), or
    None: a request that asks none gets no log lines, as from the SDK server."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    level = meta.get(LOG_LEVEL) if isinstance(meta, dict) else None
    return level if level in LEVELS else None


def _modern_meta(message: dict[str, Any]) -> bool:
    """A body that speaks 2026-07-28 in its `_meta` though no header says so."""
    params = message.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    version = meta.get(modern.PROTOCOL_VERSION) if isinstance(meta, dict) else None
    return isinstance(version, str) and era_for(version) is Era.MODERN


class Gateway:
    """The children of one stdio upstream behind a Unix-socket HTTP server: `start`, then `socket_path`."""

    def __init__(
        self,
        spec: ChildSpec,
        timing: Timing,
        *,
        max_body: int,
        idle_timeout: float,
        isolation: Isolation = "shared",
        max_children: int = 32,
        child_idle_timeout: float = 600.0,
        observer: Observer | None = None,
        connections: int = 256,
    ) -> None:
        self.spec = spec
        self.timing = timing
        self.isolation = isolation
        self._observer = observer
        handshake = Handshake(capabilities=CLIENT_CAPABILITIES, client_info=CLIENT_INFO)
        self.shared = ChildBackend(spec, timing, handshake, observer=observer)
        """The child of every client (`shared`), or of the 2026-07-28 clients only (`per_session`)."""
        self._owners: dict[str, ChildBackend] = {}
        """Each legacy session's backend."""
        self._children: set[ChildBackend] = set()
        """The session children (`per_session`) not yet stopped: `stop` stops every one, even one whose
        session's end was stopping it (a task `stop` cancels)."""
        self._max_body = max_body
        self._backlog = max(BACKLOG, 2 * connections + 16)
        """Connections the socket queues unaccepted: a Unix socket refuses one past it at once (EAGAIN),
        where TCP would retry, so it holds every connection the proxy's pools may open at once, twice over."""
        self._idle_timeout = idle_timeout
        self._max_children = max_children
        self._child_idle = child_idle_timeout
        self._keys = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dir: str | None = None
        self._runner: web.AppRunner | None = None
        self._shared_started = False
        self.socket_path = ""

    @property
    def board(self) -> Switchboard:
        """The shared child's switchboard."""
        return self.shared.board

    @property
    def supervisor(self) -> Supervisor:
        """The shared child's supervisor."""
        return self.shared.supervisor

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the socket server, and the shared child (`shared`; `per_session` starts children on demand)."""
        self._dir = tempfile.mkdtemp(prefix="mcp-proxy-stdio-")
        os.chmod(self._dir, 0o700)
        self.socket_path = os.path.join(self._dir, "gateway.sock")
        app = web.Application(client_max_size=self._max_body)
        app.router.add_route("*", "/mcp", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.socket_path, backlog=self._backlog).start()
        if self.isolation == "shared":
            await self._start_shared()
        else:
            spawn(self._reap_children(), name=f"stdio-reaper:{self.spec.name}", owner=self._tasks)

    async def _start_shared(self) -> None:
        if not self._shared_started:
            self._shared_started = True
            await self.shared.start()

    async def stop(self) -> None:
        """Stop every child (stdin closed, then SIGTERM, then SIGKILL, `child.stop_grace` apart) and the server."""
        await cancel_and_wait(self._tasks)
        await asyncio.gather(self.shared.stop(), *(backend.stop() for backend in self._children))
        self._children.clear()
        self._owners.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def cut_streams(self, why: str) -> None:
        """Cut every GET stream and listen off (as a broken server's would be): the proxy reopens them on
        the gateway that replaces this one (a reload that changed the child), where the sessions are
        rebuilt with their subscriptions, instead of leaving them open here on a child nobody calls."""
        for backend in (self.shared, *self._children):
            for session in backend.board.sessions.values():
                if session.stream is not None:
                    session.stream.put(ChildLost(why))
            for listener in backend.board.listeners:
                listener.inbox.put(ChildLost(why))

    def snapshot(self) -> dict[str, Any]:
        """The children's state for /status and metrics: the shared child's, and with `per_session` how many run."""
        state = self.shared.snapshot()
        state["isolation"] = self.isolation
        if self.isolation == "per_session":
            state["session_children"] = len(self._children)
            state["in_flight"] += sum(len(b.board.callers) for b in self._owners.values() if b is not self.shared)
        state["sessions"] = len(self._owners)
        return state

    # -- HTTP ----------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        modern_era = era_for(protocol_of(request.headers, None)) is Era.MODERN
        if request.method == "POST":
            try:
                message = loads(await request.read())
            except NotJSON as exc:
                return error(400, -32700, f"Parse error: the proxy cannot carry this body to a stdio server ({exc})")
            if not isinstance(message, dict):
                return error(
                    400, -32600, "Invalid Request: a stdio upstream takes one JSON-RPC message per POST, not a batch"
                )
            if modern_era or _modern_meta(message):
                return await self._modern(request, message)
            return await self._legacy_post(request, message)
        if modern_era:
            return web.Response(status=405, headers={"Allow": "POST"})
        if request.method == "GET":
            return await self._stream(request)
        if request.method == "DELETE":
            return await self._delete(request)
        return error(405, -32600, "Method Not Allowed", headers={"Allow": "GET, POST, DELETE"})

    def _session(self, request: web.Request) -> tuple[ChildBackend, Session] | web.Response:
        key = request.headers.get("Mcp-Session-Id")
        if not key:
            return error(400, -32000, "Bad Request: No valid session ID provided")
        backend = self._owners.get(key)
        session = backend.board.sessions.get(key) if backend is not None else None
        if backend is None or session is None:
            self._owners.pop(key, None)
            return error(404, -32600, "Session not found")
        session.last_used = backend.last_used = time.monotonic()
        session.used = True
        return backend, session

    async def _legacy_post(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        method = message.get("method")
        if method == "initialize" and "id" in message:
            return await self._initialize(message)
        found = self._session(request)
        if isinstance(found, web.Response):
            return found
        backend, session = found
        if not isinstance(method, str):  # a client's answer to a question of the child's
            forward = backend.board.answer_to_child(session.id, message)
            if forward is not None and backend.link is not None:
                await backend.send_quietly(backend.link, forward)
            return web.Response(status=202)
        if "id" not in message:
            await self._notification(backend, session, method, message)
            return web.Response(status=202)
        if method.startswith("tasks/") and backend is self.shared:
            return self._no_shared_tasks(message)
        if method == "logging/setLevel":
            return await self._set_level(backend, session, message)
        if method == "resources/subscribe":
            return await self._subscribe(backend, session, message)
        if method == "resources/unsubscribe":
            return await self._unsubscribe(backend, session, message)
        return await answers.call(backend, request, session.id, message, askable=answers.accepts_sse(request))

    async def _initialize(self, message: dict[str, Any]) -> web.Response:
        key = uuid.uuid4().hex
        if self.isolation == "per_session":
            found = await self._session_child(key, message)
            if isinstance(found, web.Response):
                return found
            backend, link = found
        else:
            await self._start_shared()
            backend = self.shared
            try:
                link = await backend.ready()
            except ChildUnavailable as exc:
                return unavailable(exc, message.get("id"))
        self._reap_sessions()
        backend.board.sessions.setdefault(key, Session(key, time.monotonic()))
        self._owners[key] = backend
        result = dict(link.initialized.result)
        if backend is self.shared:
            result["capabilities"] = _without_tasks(result.get("capabilities"))
        params = message.get("params")
        asked = params.get("protocolVersion") if isinstance(params, dict) else None
        if isinstance(asked, str) and asked in ACCEPTED_VERSIONS and asked < str(result.get("protocolVersion")):
            result["protocolVersion"] = asked  # as the servers measured answer an older client: in its version
        answer = {"jsonrpc": "2.0", "id": message.get("id"), "result": result}
        return json_answer(answer, headers={"Mcp-Session-Id": key})

    async def _session_child(self, key: str, message: dict[str, Any]) -> tuple[ChildBackend, Link] | web.Response:
        """A child of its own for a new session, initialized as that client."""
        if len(self._children) >= self._max_children:
            # The proxy's own limit, not the server failing: 429, which neither a breaker nor health counts.
            why = f"the proxy runs at most {self._max_children} session children (child.max_children)"
            text = f"the stdio server cannot take another session now: {why}"
            return error(429, -32058, text, message.get("id"), {"Retry-After": "1"})
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        version = params.get("protocolVersion")
        capabilities, client_info = params.get("capabilities"), params.get("clientInfo")
        handshake = Handshake(
            capabilities=capabilities if isinstance(capabilities, dict) else {},
            client_info=client_info if isinstance(client_info, dict) else CLIENT_INFO,
            **({"protocol_version": version} if version in ACCEPTED_VERSIONS else {}),
        )
        backend = ChildBackend(self.spec, self.timing, handshake, exclusive=key, observer=self._observer)
        backend.board.sessions[key] = Session(key, time.monotonic())  # held from the start: never reaped as sessionless
        self._children.add(backend)
        try:
            await backend.start()
            link = await backend.ready()
        except ChildUnavailable as exc:
            await self._retire(backend)
            return unavailable(exc, message.get("id"))
        except BaseException:  # the client gave up while its child started: the child goes, not leaks
            spawn(self._retire(backend), name=f"stdio-session-abandoned:{self.spec.name}", owner=self._tasks)
            raise
        return backend, link

    async def _retire(self, backend: ChildBackend) -> None:
        await backend.stop()
        self._children.discard(backend)

    async def _reap_children(self) -> None:
        """`per_session`: stop the children idle past `child.idle_timeout` (their sessions end with them),
        and any whose session is gone (a child that came back changed ends its session)."""
        while True:
            await asyncio.sleep(max(1.0, min(30.0, self._child_idle / 4)))
            now = time.monotonic()
            for backend in list(self._children):
                since = backend.idle_since()
                sessions = list(backend.board.sessions.values())
                if sessions and (since is None or now - since <= self._child_idle):
                    continue
                log.info(
                    "stdio_session_child_idle", upstream=self.spec.name, pid=backend.supervisor.snapshot().get("pid")
                )
                for session in sessions:
                    self._end_session(backend, session)
                if not sessions:
                    await self._retire(backend)

    def _reap_sessions(self) -> None:
        """Shared sessions idle past `sessions.idle_timeout` with no stream open go, and the oldest past
        `MAX_SESSIONS`."""
        now = time.monotonic()
        sessions = self.shared.board.sessions
        for session in [s for s in sessions.values() if s.stream is None and now - s.last_used > self._idle_timeout]:
            self._end_session(self.shared, session)
        while len(self._owners) >= MAX_SESSIONS and sessions:
            # Least worth keeping first: no stream open, then never used past initialize, then the oldest (so a
            # flood of initialize requests evicts itself before a session in use).
            self._end_session(
                self.shared, min(sessions.values(), key=lambda s: (s.stream is not None, s.used, s.last_used))
            )

    async def _notification(
        self, backend: ChildBackend, session: Session, method: str, message: dict[str, Any]
    ) -> None:
        if method == "notifications/initialized":
            return  # the proxy initialized the child itself
        if method == "notifications/cancelled":
            forward = backend.board.cancellation(session.id, message)
            if forward is None:
                return
            message = forward
        if backend.link is not None:
            await backend.send_quietly(backend.link, message)

    async def _set_level(self, backend: ChildBackend, session: Session, message: dict[str, Any]) -> web.Response:
        params = message.get("params")
        level = params.get("level") if isinstance(params, dict) else None
        if not isinstance(params, dict) or level not in LEVELS:
            return self._refuse(message, f"unknown log level {level!r}")
        before = backend.board.most_verbose_level()
        session.level = level
        wanted = backend.board.most_verbose_level()
        if wanted == before:  # the child already sends this much: the rest is filtered per session
            return json_answer({"jsonrpc": "2.0", "id": message.get("id"), "result": {}})
        return await answers.round_trip(backend, session.id, {**message, "params": {**params, "level": wanted}})

    async def _subscribe(self, backend: ChildBackend, session: Session, message: dict[str, Any]) -> web.Response:
        uri = self._uri(message)
        if uri is None:
            return self._refuse(message, "a string uri is required")
        if uri not in session.subscriptions and len(session.subscriptions) >= MAX_SUBSCRIPTIONS:
            return self._refuse(message, f"a session may hold at most {MAX_SUBSCRIPTIONS} subscriptions")
        if too_many := self._too_many_subscriptions(backend, {uri}):
            return self._refuse(message, too_many)
        held = uri in session.subscriptions
        session.subscriptions.add(uri)  # held from now, so a session leaving meanwhile does not unsubscribe the child
        answer = await answers.round_trip(backend, session.id, message)
        if not held and not answer.get(answers.SUCCEEDED, False):
            session.subscriptions.discard(uri)
        return answer

    @staticmethod
    def _too_many_subscriptions(backend: ChildBackend, uris: set[str]) -> str | None:
        """Why subscribing the child to `uris` as well is refused (`MAX_CHILD_SUBSCRIPTIONS`), or None."""
        held = backend.board.subscribed()
        if len(held | uris) > MAX_CHILD_SUBSCRIPTIONS and not uris <= held:
            return f"the proxy subscribes a stdio server to at most {MAX_CHILD_SUBSCRIPTIONS} resources for all its clients"
        return None

    async def _unsubscribe(self, backend: ChildBackend, session: Session, message: dict[str, Any]) -> web.Response:
        uri = self._uri(message)
        if uri is not None:
            session.subscriptions.discard(uri)
            if uri in backend.board.subscribed():  # another session still wants it
                return json_answer({"jsonrpc": "2.0", "id": message.get("id"), "result": {}})
        return await answers.round_trip(backend, session.id, message)

    @staticmethod
    def _uri(message: dict[str, Any]) -> str | None:
        params = message.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        return uri if isinstance(uri, str) else None

    @staticmethod
    def _no_shared_tasks(message: dict[str, Any]) -> web.Response:
        """A shared child keeps one task store for every client: whoever asks would read another client's
        task and its result. Its `tasks` capability is withheld, and its `tasks/*` methods refused."""
        text = (
            "Method not found: a stdio server shared by every client keeps no tasks per client (isolation: per_session)"
        )
        return json_answer({"jsonrpc": "2.0", "id": message.get("id"), "error": {"code": -32601, "message": text}})

    @staticmethod
    def _refuse(message: dict[str, Any], why: str) -> web.Response:
        return json_answer(
            {"jsonrpc": "2.0", "id": message.get("id"), "error": {"code": -32602, "message": f"Invalid params: {why}"}}
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        found = self._session(request)
        if isinstance(found, web.Response):
            return found
        backend, session = found
        if session.stream is not None:
            return error(409, -32600, "Conflict: only one GET stream is allowed per session")
        inbox = session.stream = Inbox(STREAM_INBOX)
        try:
            response = await sse_response(request)
            while True:
                item = await inbox.get()
                if item is None:
                    await response.write_eof()
                    return response
                if isinstance(item, ChildLost):  # replaced by a reload: the proxy reopens it on the new gateway
                    answers.cut_off(request)
                    return response
                await response.write(event(item))
        finally:
            if session.stream is inbox:
                session.stream = None
            session.last_used = backend.last_used = time.monotonic()

    async def _delete(self, request: web.Request) -> web.Response:
        found = self._session(request)
        if isinstance(found, web.Response):
            return found
        backend, session = found
        self._end_session(backend, session)
        return web.Response(status=200)

    def _end_session(self, backend: ChildBackend, session: Session) -> None:
        """A session's end (DELETE, reaped): its stream ends cleanly; a child of its own stops, a shared
        one lets go of what only this session held."""
        backend.board.sessions.pop(session.id, None)
        self._owners.pop(session.id, None)
        if session.stream is not None:
            session.stream.put(None)
        if backend is not self.shared:
            spawn(self._retire(backend), name=f"stdio-session-end:{self.spec.name}", owner=self._tasks)
        else:
            backend.session_gone(session)

    # -- 2026-07-28 ----------------------------------------------------------------------------------

    async def _modern(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        refusal = modern.check(request.headers, message)
        if refusal is not None:
            body = orjson.dumps(refusal.answer) if refusal.answer is not None else None
            headers = dict(refusal.headers)
            if body is None:
                return web.Response(status=refusal.status, headers=headers)
            return web.Response(status=refusal.status, body=body, content_type="application/json", headers=headers)
        await self._start_shared()
        backend = self.shared
        method = str(message.get("method"))
        owner = f"modern-{next(self._keys)}"
        if method.startswith("tasks/"):
            return self._no_shared_tasks(message)
        if method == "server/discover":
            alive = await answers.round_trip(backend, owner, {"jsonrpc": "2.0", "id": 0, "method": "ping"})
            if alive.status != 200 or backend.link is None:
                return alive  # discover is the health probe's question: answered only while the child answers ping
            return json_answer(modern.discover(backend.link.initialized.result, message.get("id")))
        if method == "subscriptions/listen":
            try:
                link = await backend.ready()
            except ChildUnavailable as exc:
                return unavailable(exc, message.get("id"))
            return await self._listen(request, backend, message, link)
        logs = _requested_log_level(message)
        return await answers.call(
            backend, request, owner, modern.to_child(message), askable=False, era="modern", logs=logs
        )

    async def _listen(
        self, request: web.Request, backend: ChildBackend, message: dict[str, Any], link: Link
    ) -> web.StreamResponse:
        wanted = modern.listen_filter(message)
        listen_id = message.get("id")
        why = (
            f"a listen may watch at most {MAX_SUBSCRIPTIONS} resources"
            if len(wanted.uris) > MAX_SUBSCRIPTIONS
            else self._too_many_subscriptions(backend, set(wanted.uris))
        )
        if why is not None:
            refused = {
                "jsonrpc": "2.0",
                "id": listen_id,
                "error": {"code": -32602, "message": f"Invalid params: {why}"},
            }
            return json_answer(refused, modern.status_of(refused))
        if len(backend.board.listeners) >= MAX_LISTENERS:
            text = f"the proxy holds at most {MAX_LISTENERS} listens on one stdio server"
            return error(429, -32058, text, listen_id, {"Retry-After": "1"})
        before = backend.board.subscribed()
        listener = Listener(lambda notification: modern.wants(wanted, notification), set(wanted.uris))
        backend.board.listeners.add(listener)
        await backend.resubscribe(link, set(wanted.uris) - before, "resources/subscribe")
        try:
            response = await sse_response(request)
            await response.write(event(modern.acknowledgement(message)))
            while True:
                item = await listener.inbox.get()
                if isinstance(item, ChildLost):  # replaced by a reload: the proxy listens again on the new gateway
                    answers.cut_off(request)
                    return response
                if item is None:
                    await response.write(event(modern.listen_end(listen_id, backend.server_info())))
                    await response.write_eof()
                    return response
                await response.write(event(modern.listen_event(listen_id, item)))
        finally:
            backend.board.listeners.discard(listener)
            if backend.link is not None:
                unneeded = listener.uris - backend.board.subscribed()
                spawn(
                    backend.resubscribe(backend.link, unneeded, "resources/unsubscribe"),
                    name="stdio-unsubscribe",
                    owner=self._tasks,
                )
