"""A legacy-era MCP server with sessions (2024-11-05 to 2025-11-25), in-process on 127.0.0.1, that can restart.

The session recovery tests (`tests/test_sessions_*.py`) need a server that forgets its sessions the way a
real one does when it restarts, and that says exactly what reached it: which session every request came
on, how often each tool ran (per session and in all), what state each session was given (log level,
subscriptions, notifications, the client's answers) and which sessions were ended. It speaks just the
part of MCP the proxy's session handling touches:

- ``initialize`` opens a session (``Mcp-Session-Id``: a uuid4 hex, or ``s1``, ``s2``, ... numbered
  from 1 again after each restart, as a server that counts in memory does: `ids`), answering
  `protocol` and `capabilities` (both changeable, to make a restarted server answer differently);
  `fail_initialize` answers the next N ``initialize`` requests 503 (a server still starting), and
  `initialize_gate` holds them until the test opens it (a slow one);
- a request on a session the server does not know is answered the way `loss` says: ``sdk`` (the
  official SDKs: 404, JSON-RPC -32600 "Session not found", ``id`` null) or ``everything``
  (``@modelcontextprotocol/server-everything``: 400, -32000 "Bad Request: No valid session ID
  provided", no ``id`` key); `hold_losses` holds those answers until that many are waiting, so that
  concurrent requests all meet the same loss;
- ``tools/call`` runs the tool (counted in `runs` per (session, tool) and `tool_runs` per tool, and
  logged in `executed` with the client name the session was initialized by) and answers text naming the
  session; ``logging/setLevel``, ``resources/subscribe`` and ``resources/unsubscribe`` change the
  session's state; notifications and the client's answers are recorded per session (202);
- answers are JSON or SSE (`answer`; server-everything answers every POST with SSE);
- ``GET`` opens the session's one server-to-client stream (a second one while it is open: 409), whose
  events carry ids (`event_ids`) and are kept per session, so a ``GET`` with ``Last-Event-ID`` replays
  what came after that id; `notify` sends an event on it, `drop_stream` ends or breaks it;
- ``DELETE`` ends a session (`deleted`);
- a batch (before 2025-06-18) is answered whole, in JSON; `on_request` lets a test act as a message
  arrives (restart the server between a rebuild and its replay); `lingering` holds a broken stream
  the way a server that has not noticed the break yet does (a new GET of it: 409).

A restart comes two ways: `restart` forgets every session and breaks every stream but keeps the
listener (and the proxy's pooled connections to it); `restart_hard` closes the listener and every
connection, then listens again on the same port. Tests wait on the server's state with `until` (a
condition notified on every change, bounded by a deadline), never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

__all__ = ["Executed", "Seen", "ServerSession", "SessionUpstream"]

PROTOCOL = "2025-06-18"
CAPABILITIES: dict[str, Any] = {"tools": {"listChanged": True}, "logging": {}, "resources": {"subscribe": True}}
HEADER = "Mcp-Session-Id"
LEVELS = frozenset({"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"})


class _Refused(Exception):
    """A request the server answers with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Seen:
    """One request as it reached the server."""

    http: str
    """POST, GET or DELETE."""
    session: str | None
    """The ``Mcp-Session-Id`` it carried."""
    known: bool
    """Whether the server knew that session when it came."""
    method: str | None = None
    """The JSON-RPC method (None: a client's answer, a GET or a DELETE)."""
    request_id: Any = None
    tool: str | None = None
    last_event_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Executed:
    """One tool run."""

    session: str
    client: str
    """The ``clientInfo.name`` the session was initialized with: whose session the call ran in."""
    tool: str
    arguments: dict[str, Any]


@dataclass
class _Stream:
    """A GET stream being served: events go through `queue`; None ends it, ``b"abort"`` breaks it."""

    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class ServerSession:
    """One session as the server holds it."""

    id: str
    life: int
    """How many restarts the server had when it opened it."""
    initialize: dict[str, Any]
    initialized: bool = False
    log_level: str | None = None
    subscriptions: set[str] = field(default_factory=set)
    notifications: list[str] = field(default_factory=list)
    """The methods of the notifications it received, in order."""
    responses: list[Any] = field(default_factory=list)
    """The ids of the client's answers it received."""
    events: list[tuple[str | None, bytes]] = field(default_factory=list)
    """Every event sent for its GET stream: (id, the event's bytes)."""
    stream: _Stream | None = None
    streams_opened: int = 0
    stream_ends: int = 0
    """GET streams of it that ended, whoever ended them (the client going away included)."""
    last_event_ids: list[str | None] = field(default_factory=list)
    """The ``Last-Event-ID`` of each GET that opened a stream."""
    next_event: int = 0

    @property
    def client(self) -> str:
        info = self.initialize.get("params", {}).get("clientInfo", {})
        return str(info.get("name", "")) if isinstance(info, dict) else ""


class SessionUpstream:
    """The server (see the module docstring). Every knob is a plain attribute, changeable at any time."""

    def __init__(
        self,
        *,
        ids: Literal["uuid", "sequential", "fixed"] = "uuid",
        loss: Literal["sdk", "everything"] = "sdk",
        answer: Literal["json", "sse"] = "json",
        event_ids: bool = True,
    ) -> None:
        self.ids = ids
        self.loss = loss
        self.answer = answer
        self.event_ids = event_ids
        self.protocol = PROTOCOL
        self.capabilities: dict[str, Any] = json.loads(json.dumps(CAPABILITIES))
        self.fail_initialize = 0
        """Answer the next this many ``initialize`` requests 503."""
        self.initialize_gate: asyncio.Event | None = None
        """When set to an event, each ``initialize`` waits for it before it is answered (a slow start)."""
        self.hold_losses = 0
        """Hold each "session lost" answer until this many are waiting (0: answer at once)."""
        self.on_request: Callable[[Seen], None] | None = None
        """Called with each POSTed message as it arrives, before it is acted on (a test's own step)."""
        self.lingering: set[str] = set()
        self.end_streams_at_once = False
        """Answer a GET with a stream that ends as soon as it opened (what replayed, if anything, then nothing)."""
        """Sessions whose broken GET stream the server still holds: a new GET of one is answered 409."""
        self.sessions: dict[str, ServerSession] = {}
        self.ended: list[ServerSession] = []
        """Sessions ended by a DELETE."""
        self.deleted: list[str] = []
        """The ids ``DELETE`` ended, in order."""
        self.opened: list[str] = []
        """The id of every session opened, in order, across restarts."""
        self.initialize_requests = 0
        self.restarts = 0
        self.runs: Counter[tuple[str, str]] = Counter()
        """Tool runs per (session, tool)."""
        self.tool_runs: Counter[str] = Counter()
        self.executed: list[Executed] = []
        self.seen: list[Seen] = []
        self.port = 0
        self.url = ""
        self._numbered = 0
        self._held: list[asyncio.Future[None]] = []
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/mcp", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        return self.url

    async def stop(self) -> None:
        """Close the listener and every connection (open streams are broken first)."""
        self._break_streams()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def restart(self) -> None:
        """Forget every session and break every stream, as a restarted server would; the listener (and the
        connections to it) stay."""
        self._break_streams()
        self.sessions.clear()
        self.lingering.clear()
        self._numbered = 0
        self.restarts += 1
        self._touch()

    async def restart_hard(self) -> None:
        """A real restart: the listener and every connection closed, then listening again on the same port."""
        await self.stop()
        self.restart()
        await self.start(self.port)

    def _break_streams(self) -> None:
        for session in self.sessions.values():
            if session.stream is not None:
                session.stream.queue.put_nowait(b"abort")
                session.stream = None

    # -- what a test does --------------------------------------------------------------------------

    def notify(self, session_id: str, message: dict[str, Any]) -> str | None:
        """Send `message` on `session_id`'s GET stream (kept for a resuming GET even when none is open now);
        returns the event's id (None without `event_ids`)."""
        session = self.sessions[session_id]
        session.next_event += 1
        event_id = f"{session_id}-{session.next_event}" if self.event_ids else None
        data = self.event_bytes(event_id, message)
        session.events.append((event_id, data))
        if session.stream is not None:
            session.stream.queue.put_nowait(data)
        return event_id

    @staticmethod
    def event_bytes(event_id: str | None, message: dict[str, Any]) -> bytes:
        head = f"id: {event_id}\n" if event_id is not None else ""
        return f"{head}event: message\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()

    def update_resource(self, uri: str) -> list[str]:
        """The resource at `uri` changed: ``notifications/resources/updated`` to every session subscribed to it
        (on its GET stream); returns those sessions' ids."""
        message = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}
        told = [session.id for session in self.sessions.values() if uri in session.subscriptions]
        for session_id in told:
            self.notify(session_id, message)
        return told

    def send_raw(self, session_id: str, data: bytes) -> None:
        """Write `data` as it is on the session's open GET stream (half an event, a comment...); not kept."""
        stream = self.sessions[session_id].stream
        assert stream is not None
        stream.queue.put_nowait(data)

    def drop_stream(self, session_id: str, *, abort: bool = True, linger: bool = False) -> None:
        """End `session_id`'s GET stream (`abort`: break the connection; else end it cleanly); the session stays.
        `linger`: the server goes on holding it (a GET is answered 409) until `let_go`."""
        session = self.sessions[session_id]
        if linger:
            self.lingering.add(session_id)
        if session.stream is not None:
            session.stream.queue.put_nowait(b"abort" if abort else None)
            session.stream = None
            self._touch()

    def let_go(self, session_id: str) -> None:
        self.lingering.discard(session_id)
        self._touch()

    async def until(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        """Wait until `predicate` holds (checked at every change of the server's state), within `timeout`."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def streaming(self) -> list[ServerSession]:
        """The sessions whose GET stream is open now."""
        return [session for session in self.sessions.values() if session.stream is not None]

    def requests_on(self, session_id: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.session == session_id]

    def session_of(self, client: str) -> ServerSession:
        """The live session a client (by ``clientInfo.name``) initialized."""
        (found,) = [session for session in self.sessions.values() if session.client == client]
        return found

    def _touch(self) -> None:
        """Wake every `until` (each checks its predicate again)."""
        self._changed.set()
        self._changed = asyncio.Event()

    # -- serving -----------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            if request.method == "POST":
                return await self._post(request)
            if request.method == "GET":
                return await self._get(request)
            if request.method == "DELETE":
                return self._delete(request)
            return web.Response(status=405)
        finally:
            self._touch()

    def _see(self, request: web.Request, **fields: Any) -> tuple[str | None, ServerSession | None]:
        session_id = request.headers.get(HEADER)
        session = self.sessions.get(session_id) if session_id is not None else None
        self.seen.append(Seen(request.method, session_id, session is not None, headers=dict(request.headers), **fields))
        return session_id, session

    async def _post(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if isinstance(body, list):  # a batch (before 2025-06-18): its requests answered in one JSON array
            session_id, session = self._see(request, method="batch")
            if session is None:
                return await self._lost(session_id)
            answers = [
                {"jsonrpc": "2.0", "id": item["id"], "result": self._result(session, item["method"], item.get("params") or {})}
                for item in body
                if "id" in item
            ]
            return web.json_response(answers)
        method = body.get("method")
        tool = body.get("params", {}).get("name") if method == "tools/call" else None
        session_id, session = self._see(request, method=method, request_id=body.get("id"), tool=tool)
        if self.on_request is not None:
            self.on_request(self.seen[-1])
        if method == "initialize" and session_id is None:
            return await self._initialize(request, body)
        if session is None:
            return await self._lost(session_id)
        if "method" not in body:  # the client's answer to a request of the server's
            session.responses.append(body.get("id"))
            return web.Response(status=202)
        if "id" not in body:
            session.notifications.append(method)
            if method == "notifications/initialized":
                session.initialized = True
            return web.Response(status=202)
        try:
            result = self._result(session, method, body.get("params") or {})
        except _Refused as refused:
            return await self._answer(request, body, None, error={"code": refused.code, "message": refused.message})
        return await self._answer(request, body, result)

    async def _initialize(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        self.initialize_requests += 1
        if self.initialize_gate is not None:
            await self.initialize_gate.wait()
        if self.fail_initialize > 0:
            self.fail_initialize -= 1
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32603, "message": "starting"}}, status=503)
        if self.ids == "fixed":
            session_id = "the-session"  # one session for every client, as some servers do
        elif self.ids == "sequential":
            self._numbered += 1
            session_id = f"s{self._numbered}"
        else:
            session_id = uuid.uuid4().hex
        if session_id not in self.sessions:
            self.sessions[session_id] = ServerSession(session_id, self.restarts, body)
        self.opened.append(session_id)
        result = {
            "protocolVersion": self.protocol,
            "capabilities": json.loads(json.dumps(self.capabilities)),
            "serverInfo": {"name": "session-upstream", "version": "1"},
        }
        return await self._answer(request, body, result, {HEADER: session_id})

    def _result(self, session: ServerSession, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "tools/call":
            name = str(params.get("name"))
            self.runs[(session.id, name)] += 1
            self.tool_runs[name] += 1
            self.executed.append(Executed(session.id, session.client, name, dict(params.get("arguments") or {})))
            text = f"{name} #{self.runs[(session.id, name)]} on {session.id} for {session.client}"
            return {"content": [{"type": "text", "text": text}]}
        if method == "logging/setLevel":
            if params.get("level") not in LEVELS:
                raise _Refused(-32602, f"Invalid log level: {params.get('level')}")
            session.log_level = params.get("level")
        elif method == "resources/subscribe":
            session.subscriptions.add(str(params.get("uri")))
        elif method == "resources/unsubscribe":
            session.subscriptions.discard(str(params.get("uri")))
        elif method == "tools/list":
            return {"tools": [{"name": "add", "inputSchema": {"type": "object"}}]}
        return {}

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        result: dict[str, Any] | None,
        headers: dict[str, str] | None = None,
        error: dict[str, Any] | None = None,
    ) -> web.StreamResponse:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": body["id"]}
        if error is not None:
            message["error"] = error
        else:
            message["result"] = result
        if self.answer == "json":
            return web.json_response(message, headers=headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **(headers or {})})
        await response.prepare(request)
        await response.write(self.event_bytes(None, message))
        await response.write_eof()
        return response

    async def _lost(self, session_id: str | None) -> web.Response:
        """The answer for a session the server does not know (or a request that named none)."""
        if self.hold_losses:
            waiting = asyncio.get_running_loop().create_future()
            self._held.append(waiting)
            if len(self._held) >= self.hold_losses:
                for held in self._held:
                    if not held.done():
                        held.set_result(None)
                self._held.clear()
                self.hold_losses = 0
            await waiting
        if self.loss == "everything":
            body = {"jsonrpc": "2.0", "error": {"code": -32000, "message": "Bad Request: No valid session ID provided"}}
            return web.json_response(body, status=400)
        if session_id is None:
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Bad Request: Missing session ID"}}
            return web.json_response(body, status=400)
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
        return web.json_response(body, status=404)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        last_event_id = request.headers.get("Last-Event-ID")
        session_id, session = self._see(request, last_event_id=last_event_id)
        if session is None:
            return await self._lost(session_id)
        if session.stream is not None or session.id in self.lingering:
            conflict = {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": "Conflict: Only one SSE stream is allowed per session"}}
            return web.json_response(conflict, status=409)
        stream = session.stream = _Stream()
        session.streams_opened += 1
        session.last_event_ids.append(last_event_id)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if last_event_id is not None:
            ids = [event_id for event_id, _ in session.events]
            if last_event_id in ids:
                for _, data in session.events[ids.index(last_event_id) + 1 :]:
                    await response.write(data)
        self._touch()
        try:
            while not self.end_streams_at_once:
                data = await stream.queue.get()
                if data is None:
                    await response.write_eof()
                    return response
                if data == b"abort":
                    assert request.transport is not None
                    request.transport.abort()
                    return response
                await response.write(data)
            await response.write_eof()
            return response
        finally:
            if session.stream is stream:
                session.stream = None
            session.stream_ends += 1
            stream.done.set()
            self._touch()

    def _delete(self, request: web.Request) -> web.Response:
        session_id, session = self._see(request)
        if session is None:
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
            return web.json_response(body, status=404)
        del self.sessions[session.id]
        self.deleted.append(session.id)
        self.ended.append(session)
        if session.stream is not None:
            session.stream.queue.put_nowait(None)
            session.stream = None
        return web.Response(status=200)


@dataclass
class Answer:
    """What a client heard: status, headers, body bytes, and the JSON-RPC message (from JSON or SSE)."""

    status: int
    headers: dict[str, str]
    body: bytes
    message: Any

    @property
    def result(self) -> Any:
        assert isinstance(self.message, dict) and "result" in self.message, (self.status, self.body)
        return self.message["result"]

    @property
    def text(self) -> str:
        return str(self.result["content"][0]["text"])


def read_answer(status: int, headers: dict[str, str], body: bytes) -> Answer:
    """Parse a JSON body, or the last JSON-RPC response of an SSE one."""
    message: Any = None
    if headers.get("Content-Type", "").startswith("text/event-stream"):
        for line in body.decode().splitlines():
            if line.startswith("data:"):
                data = json.loads(line[5:])
                if isinstance(data, dict) and ("result" in data or "error" in data):
                    message = data
    elif body:
        message = json.loads(body)
    return Answer(status, headers, body, message)


class LegacyClient:
    """A legacy-era client as the SDK's behaves on the wire: initialize, keep the session id it got,
    send it on every request; nothing more (it never re-initializes by itself)."""

    JSON = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}

    def __init__(self, http: Any, url: str, name: str = "client") -> None:
        self.http = http
        self.url = url
        self.name = name
        self.session_id: str | None = None
        self._ids = 0

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    async def post(self, message: Any, headers: dict[str, str] | None = None) -> Answer:
        sent = dict(self.JSON)
        if self.session_id is not None:
            sent[HEADER] = self.session_id
            sent["MCP-Protocol-Version"] = PROTOCOL
        sent.update(headers or {})
        async with self.http.post(self.url, data=json.dumps(message), headers=sent) as response:
            body = await response.read()
            return read_answer(response.status, dict(response.headers), body)

    async def initialize(self, *, initialized: bool = True) -> str:
        params = {"protocolVersion": PROTOCOL, "capabilities": {"roots": {}}, "clientInfo": {"name": self.name, "version": "1"}}
        answer = await self.post({"jsonrpc": "2.0", "id": self._next_id(), "method": "initialize", "params": params})
        assert answer.status == 200, (answer.status, answer.body)
        self.session_id = answer.headers[HEADER]
        if initialized:
            assert await self.notify("notifications/initialized") == 202
        return self.session_id

    async def request(self, method: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Answer:
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id(), "method": method}
        if params is not None:
            message["params"] = params
        return await self.post(message, headers)

    async def call(self, tool: str, **arguments: Any) -> Answer:
        return await self.request("tools/call", {"name": tool, "arguments": arguments})

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> int:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        return (await self.post(message)).status

    async def delete(self) -> int:
        assert self.session_id is not None
        async with self.http.delete(self.url, headers={HEADER: self.session_id}) as response:
            await response.read()
            return int(response.status)


SESSION_EVENTS = ("session_lost", "session_recovered", "stream_resumed")


def session_events(bus: Any) -> list[dict[str, Any]]:
    """The session events the proxy's bus holds, in order."""
    return [event for event in bus.recent() if event["type"] in SESSION_EVENTS]


def brief(event: dict[str, Any]) -> tuple[Any, ...]:
    """An event's identifying fields: what the tests compare exactly (timings left out)."""
    kind = event["type"]
    if kind == "session_lost":
        return (kind, event["method"], event["recovery"], event["why"])
    if kind == "session_recovered":
        return (kind, event["method"], event["generation"], event["restored"])
    return (kind, event["stream"], event["from_event_id"], event["generation"])


async def until_event(bus: Any, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
    """The first event (kept or still to come) `predicate` accepts, within `timeout`."""
    subscription = bus.subscribe(since=0)
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = await subscription.get()
                if predicate(event):
                    return event  # type: ignore[no-any-return]
    finally:
        subscription.close()


async def metric(http: Any, admin_url: str, name: str, **labels: str) -> float | None:
    """The value of one sample on the admin /metrics page (None: not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(admin_url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
