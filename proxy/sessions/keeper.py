"""Rebuilding a legacy session the upstream lost: the one place that speaks to an upstream for a session.

When an upstream restarts, every legacy session it had is gone: it answers 404 (the SDK servers), or 400
-32000 "No valid session ID" (server-everything), to the next request of each. A request refused so was
never executed, so it is safe to send again whatever it is, ``tools/call`` included. `UpstreamSessions`
rebuilds the session from what it recorded and the caller replays the request on it:

1. the client's own ``initialize`` request, sent as it sent it, without a session id;
2. the answer must name the same protocol version and the same capabilities the first one did, and
   give a session id: otherwise the new session is not the one its client knows (the server changed),
   it is ended, and the session is *lost* for good (`RebuildFailed`, ``permanent``): its client hears a
   session loss, a 404 whose JSON-RPC error has ``data.reason`` ``session_lost``, and initializes again;
3. ``notifications/initialized``; then the client's last ``logging/setLevel`` and each
   ``resources/subscribe`` it made, as it sent them (a refused one is left out of ``restored`` and
   logged: the session still serves its client);
4. the client's id is routed to the new upstream id from then on (`LegacySession.upstream_id`).

One rebuild at a time per session: every request that met the same loss waits for it
(`LegacySession.rebuilding`), then replays. An upstream that fails or is not there yet (connect error,
5xx, time out after `recovery_timeout`) is a passing failure (`RebuildFailed`, not ``permanent``): the
session stays, the request fails with the upstream's error, the next one tries again. At most
`MAX_REBUILDS_PER_MINUTE` rebuilds per session: a server that forgets sessions all the time (a pool of
replicas without affinity) is reported, not hidden behind a rebuild per call.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

import orjson
import structlog
from multidict import CIMultiDict

from proxy.config.model import SessionsConfig
from proxy.errors import ProxyError
from proxy.mcp.jsonrpc import response_error
from proxy.policies.base import Attempt, Call, Observer, Reply
from proxy.sessions.table import MAX_RECORDED_BODY, MAX_SESSION_ID, MAX_SUBSCRIPTIONS, MAX_URI, LegacySession, SessionTable
from proxy.tasks import Owner, spawn
from proxy.upstream.transport import AnswerTo

__all__ = [
    "MAX_REBUILDS_PER_MINUTE",
    "RECORDED_METHODS",
    "SESSION_HEADER",
    "RebuildFailed",
    "SessionUpstream",
    "UpstreamSessions",
    "as_client_knows",
]

log = structlog.get_logger("proxy")

SESSION_HEADER: Final = "Mcp-Session-Id"
RECORDED_METHODS: Final = frozenset({"logging/setLevel", "resources/subscribe", "resources/unsubscribe"})
"""The requests whose effect a session keeps and a rebuild restores: their answers are read whole."""
MAX_REBUILDS_PER_MINUTE: Final = 3
"""Rebuilds of one session within a minute past which a loss is passed to its client instead, unless the
last was `REBUILD_SPACING` ago: a server that restarts four times in a minute (a crash loop that settles)
costs its sessions at most that long, while one that forgets sessions on every call (replicas without
affinity) gets a rebuild per `REBUILD_SPACING` at most, and its 404s show."""
REBUILD_SPACING: Final = 15.0
"""Seconds after a session's last rebuild before another may be tried, once it is past the minute's limit."""
_NOT_FOR_REBUILD: Final = ("Mcp-Session-Id", "MCP-Protocol-Version", "Last-Event-ID", "Mcp-Method", "Mcp-Name", "Content-Length")
"""Headers of the request that met the loss that the rebuild's requests must not carry (the rest, the
client's credentials included, go as they are: the session is rebuilt as the client, not as the proxy)."""
_INITIALIZED: Final = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
MAX_LEVEL: Final = 32
"""The longest log level recorded (MCP's are words such as ``warning``)."""
RESTORES_AT_ONCE: Final = 8
"""Subscriptions restored at once in a rebuild (they are independent; one by one, 256 of them at 10 ms each
would not fit a `recovery_timeout`)."""
_RESTORE_IDS = itertools.count(1)
_CREDENTIALS: Final = ("Authorization", "Cookie", "X-Api-Key", "Proxy-Authorization")
"""The headers whose values make a session's owner (`owner_of`)."""


def owner_of(headers: Mapping[str, str]) -> str:
    """A digest of the credentials in `headers` ('' without any): who made a session, and who may have it
    rebuilt. A digest, never the values: it may be written to the sessions file."""
    present = [f"{name}={headers[name]}" for name in _CREDENTIALS if name in headers]
    if not present:
        return ""
    return hashlib.sha256("\n".join(present).encode("utf-8", "surrogatepass")).hexdigest()[:32]


class SessionUpstream(Protocol):
    """What a rebuild needs of the upstream's transport (`proxy.upstream.transport.HttpUpstream`)."""

    name: str

    async def request(
        self, headers: Mapping[str, str], body: bytes, request_id: str | int | None, timeout: float, *, probe: bool = True
    ) -> Reply: ...

    async def exchange(
        self,
        method: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float | None,
        stream_idle: float | None,
        *,
        answer_to: AnswerTo | None = None,
    ) -> Reply: ...


class RebuildFailed(Exception):
    """A lost session could not be rebuilt. `permanent`: never will be (its client must initialize);
    `refused`: no rebuild was tried (recovery off, too frequent, not restorable: `may_rebuild`)."""

    def __init__(
        self, reason: str, detail: str, *, permanent: bool, error: ProxyError | None = None, refused: bool = False
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.permanent = permanent
        self.error = error
        """The upstream failure that stopped it, when one did."""
        self.refused = refused


class UpstreamSessions:
    """One upstream's legacy sessions: recorded from the calls that pass, rebuilt when it loses them."""

    __slots__ = ("_clock", "_tasks", "config", "name", "on_count", "table")

    def __init__(
        self,
        name: str,
        config: SessionsConfig,
        clock: Callable[[], float] = time.monotonic,
        on_count: Callable[[str, int], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.table = SessionTable(config, clock)
        self._clock = clock
        self._tasks: Owner = set()
        self.on_count = on_count
        """Told the number of sessions whenever it changes (the `mcp_proxy_sessions` gauge)."""

    def reconfigure(self, config: SessionsConfig) -> None:
        self.config = self.table.config = config

    # -- recording --------------------------------------------------------------------------------

    def opened(self, initialize: bytes, reply: Reply, transport: SessionUpstream, headers: Mapping[str, str]) -> None:
        """An initialize without a session id was answered: record the session it opened, if it did.

        The client keeps the upstream's id unless it collides with one here (then the answer carries the
        proxy's). Sessions forgotten to make room that only the proxy could route are ended upstream, each
        with its own client's headers (`LegacySession.headers`), never this client's."""
        upstream_id = reply.headers.get(SESSION_HEADER)
        if not self.config.recovery or upstream_id is None or not 200 <= reply.status < 300:
            return
        result = reply.message.get("result") if isinstance(reply.message, dict) else None
        if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
            return
        if len(initialize) > MAX_RECORDED_BODY or len(upstream_id) > MAX_SESSION_ID:
            return  # passed through unrecorded: no recovery (and the table's budget never pays for it)
        session, forgotten = self.table.open(upstream_id, initialize, result["protocolVersion"], result.get("capabilities"))
        if session is None:
            return  # the server gave an id a kept session uses now: its one session, as the server wants
        session.headers = _rebuild_headers(headers)
        session.owner = owner_of(headers)
        if session.remapped:
            reply.headers[SESSION_HEADER] = session.client_id
        for old in forgotten:
            if old.remapped:
                self._end_later_id(old.upstream_id, transport, old.headers)
        self._counted()

    def record(self, session: LegacySession, method: str, message: Any, body: bytes, reply: Reply) -> None:
        """Keep what a successful request set in its session, to restore it after a rebuild. Their answers
        are read whole (`RECORDED_METHODS` are buffered: `proxy.server.classify`), so a refusal streamed
        as SSE is seen as one; an answer still streaming (a server that asked the client something on the
        way) records nothing."""
        if method not in RECORDED_METHODS:
            return
        if not 200 <= reply.status < 300 or reply.stream is not None or response_error(reply.message) is not None:
            return
        params = message.params if hasattr(message, "params") else {}
        if not isinstance(params, dict):
            return
        if method == "logging/setLevel":
            level = params.get("level")
            if isinstance(level, str) and len(level) <= MAX_LEVEL:
                session.log_level = level  # what a rebuild sends, in a request of the proxy's own
            else:
                session.restorable = False  # a level no rebuild could send back as it was
            return
        uri = params.get("uri")
        if not isinstance(uri, str):
            return
        if method == "resources/unsubscribe":
            if uri in session.subscriptions:
                del session.subscriptions[uri]
                self.table.bytes -= len(uri)
        elif uri not in session.subscriptions:
            if len(uri) > MAX_URI or len(session.subscriptions) >= MAX_SUBSCRIPTIONS or not self.table.grew(session, len(uri)):
                session.restorable = False
                return
            session.subscriptions[uri] = None

    def unknown_loss(self, client_id: str | None) -> str:
        """What a `session_lost` of a session this keeper does not keep says of it: ``off`` (recovery is
        off), ``forgotten`` (kept once, forgotten to make room: the bounds at work), ``unknown_session``
        (never kept: made before the proxy started, or an id the client made up or had deleted)."""
        if not self.config.recovery:
            return "off"
        return "forgotten" if client_id is not None and self.table.was_forgotten(client_id) else "unknown_session"

    def adopt(self, session: LegacySession) -> bool:
        """Keep a session carried over from a previous proxy (`proxy.sessions.carry`)."""
        adopted = self.table.adopt(session)
        if adopted:
            self._counted()
        return adopted

    def forget(self, client_id: str) -> LegacySession | None:
        """The client ended its session (DELETE): nothing of it is kept."""
        session = self.table.forget(client_id)
        if session is not None:
            self._counted()
        return session

    def _counted(self) -> None:
        if self.on_count is not None:
            self.on_count(self.name, len(self.table))

    # -- rebuilding -------------------------------------------------------------------------------

    def may_rebuild(self, session: LegacySession, headers: Mapping[str, str] | None = None) -> str | None:
        """None when a rebuild may be tried now for a request with `headers`; else why not (the
        `session_lost` event's ``why``): recovery off, the session lost for good or ended (its client
        deleted it, or it was forgotten), a request with other credentials than the session's own (a
        stale or guessed id is no way into anyone's session), a session that cannot be restored, or
        rebuilt too often."""
        if not self.config.recovery:
            return "off"
        if session.lost is not None:
            return session.lost
        if session.ended or session.deleting:
            return "ended"
        if headers is not None and session.owner and owner_of(headers) != session.owner:
            return "not_owner"  # a session made without credentials is anyone's who has its id, as upstream
        if not session.restorable:
            return "not_restorable"
        rebuilds, now = session.rebuilds, self._clock()
        if (
            len(rebuilds) == rebuilds.maxlen
            and now - rebuilds[0] < 60.0
            and now - rebuilds[-1] < REBUILD_SPACING
            and session.rebuilding is None
        ):
            return "too_frequent"
        return None

    async def recover(
        self,
        session: LegacySession,
        seen: int,
        headers: Mapping[str, str],
        transport: SessionUpstream,
        observer: Observer,
        about: Call | Attempt,
        time_left: float | None = None,
    ) -> RebuildFailed | None:
        """A request of `session` (sent at generation `seen`) met its loss: rebuild it, or wait for the rebuild
        in flight, within `time_left` seconds (None: `recovery_timeout` only), telling `observer` what
        became of it (`session_lost`, then `session_recovered` or a `session_lost` with ``failed``), about
        the request (`about`). Returns None when the request may be replayed now, else why not."""
        if session.generation != seen and session.rebuilding is None and session.lost is None and not session.ended and not session.deleting:
            return None  # rebuilt since the request was sent (by another request, or the GET stream): replay
        self.table.note_outage()
        refused = self.may_rebuild(session, headers)
        if refused is not None:
            recovery = "off" if refused == "off" else "failed"
            observer.policy_event("session_lost", about, recovery=recovery, why=None if recovery == "off" else refused)
            return RebuildFailed(refused, refused, permanent=session.lost is not None, refused=True)
        observer.policy_event("session_lost", about, recovery="recovering", why=None)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(time_left):  # the wait: the rebuild itself goes on for the others
                restored = await self.rebuild(session, seen, headers, transport)
        except TimeoutError:
            failure = RebuildFailed("deadline", "the call's deadline passed while its session was rebuilt", permanent=False)
        except RebuildFailed as exc:
            failure = exc
        else:
            observer.policy_event(
                "session_recovered", about, generation=session.generation,
                recovery_ms=round((time.perf_counter() - started) * 1000, 3), restored=restored or [],
            )  # fmt: skip
            return None
        observer.policy_event("session_lost", about, recovery="failed", why=failure.reason)
        return failure

    async def rebuild(
        self, session: LegacySession, seen: int, headers: Mapping[str, str], transport: SessionUpstream
    ) -> list[str] | None:
        """Rebuild `session`, lost at generation `seen`, or wait for the rebuild in flight. Returns what was
        restored; None when another request rebuilt it already. Raises `RebuildFailed`."""
        if session.generation != seen and session.rebuilding is None:
            return None
        flight = session.rebuilding
        if flight is None:
            flight = session.rebuilding = spawn(
                self._rebuild(session, _rebuild_headers(headers), transport),
                name=f"session-rebuild-{self.name}", owner=self._tasks, awaited=True,
            )  # fmt: skip
            flight.add_done_callback(lambda _: setattr(session, "rebuilding", None))
        # Shielded: a waiter cancelled (its client went away, its deadline passed) leaves the rebuild to
        # the others; the rebuild is bounded by `recovery_timeout` on its own.
        return await asyncio.shield(flight)

    async def _rebuild(self, session: LegacySession, headers: CIMultiDict[str], transport: SessionUpstream) -> list[str]:
        """`_steps` within `recovery_timeout`. A rebuild that fails after the upstream made its new session
        ends that session (nobody would ever reach it) and counts toward the limit as one that worked:
        only a server not answering initialize yet (still starting) costs nothing of it."""
        old_id = session.upstream_id
        try:
            async with asyncio.timeout(self.config.recovery_timeout):
                return await self._steps(session, headers, transport)
        except TimeoutError:
            failure = RebuildFailed("upstream_failed", "the upstream did not rebuild the session in time", permanent=False)
        except ProxyError as exc:
            failure = RebuildFailed("upstream_failed", exc.message, permanent=False, error=exc)
        except RebuildFailed as exc:
            failure = exc
        new_id = headers.get(SESSION_HEADER)
        if new_id is not None and new_id != old_id:  # the upstream made a session this rebuild leaves behind
            session.rebuilds.append(self._clock())
            self._end_later_id(new_id, transport, headers)
        if failure.permanent:
            session.lost = failure.reason
        raise failure

    async def _steps(self, session: LegacySession, headers: CIMultiDict[str], transport: SessionUpstream) -> list[str]:
        timeout = self.config.recovery_timeout
        reply = await transport.request(headers, session.initialize, _id_of(session.initialize), timeout, probe=False)
        new_id = reply.headers.get(SESSION_HEADER)
        result = reply.message.get("result") if isinstance(reply.message, dict) else None
        if reply.status >= 500 or reply.status == 429:
            raise RebuildFailed("upstream_failed", f"initialize answered HTTP {reply.status}", permanent=False)
        if not 200 <= reply.status < 300 or not isinstance(result, dict):
            raise RebuildFailed("initialize_refused", f"initialize answered HTTP {reply.status}", permanent=True)
        if new_id is None:
            raise RebuildFailed("no_session_id", "the upstream's new initialize gave no session id", permanent=True)
        headers[SESSION_HEADER] = new_id
        if result.get("protocolVersion") != session.protocol or result.get("capabilities") != session.capabilities:
            if result.get("protocolVersion") != session.protocol:
                raise RebuildFailed(
                    "version_changed",
                    f"the upstream now speaks {result.get('protocolVersion')!r}, not {session.protocol!r}",
                    permanent=True,
                )
            raise RebuildFailed("capabilities_changed", "the upstream's capabilities changed", permanent=True)
        headers["MCP-Protocol-Version"] = session.protocol
        restored = []
        sent = await transport.exchange("POST", headers, _INITIALIZED, timeout, None, answer_to=AnswerTo(frozenset()))
        if sent.stream is not None:
            await sent.stream.close()
        if not 200 <= sent.status < 300:
            raise RebuildFailed("upstream_failed", f"initialized answered HTTP {sent.status}", permanent=False)
        restored.append("initialized")
        if session.log_level is not None and await self._restore("logging/setLevel", {"level": session.log_level}, headers, transport):
            restored.append("log_level")
        gate = asyncio.Semaphore(RESTORES_AT_ONCE)

        async def subscribe(uri: str) -> bool:
            async with gate:
                return await self._restore("resources/subscribe", {"uri": uri}, headers, transport)

        subscribed = sum(await asyncio.gather(*map(subscribe, list(session.subscriptions))))
        if subscribed:
            restored.append(f"subscriptions:{subscribed}")
        if session.ended or session.deleting:  # its client deleted it (or the table forgot it) meanwhile
            raise RebuildFailed("ended", "the session was ended while it was rebuilt", permanent=True)
        self.table.route(session, new_id)
        session.generation += 1
        session.headers = headers
        session.rebuilds.append(self._clock())
        rebuilt, session.rebuilt = session.rebuilt, asyncio.Event()
        rebuilt.set()  # its GET stream, waiting to reopen, reopens now
        return restored

    async def _restore(self, method: str, params: dict[str, str], headers: CIMultiDict[str], transport: SessionUpstream) -> bool:
        """Send one recorded request again, as a request of the proxy's own; True when the upstream accepted it."""
        request_id = f"mcp-proxy-restore-{next(_RESTORE_IDS)}"
        body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        reply = await transport.request(headers, body, request_id, self.config.recovery_timeout, probe=False)
        if 200 <= reply.status < 300 and response_error(reply.message) is None:
            return True
        log.warning("session_state_not_restored", upstream=self.name, status=reply.status, method=method)
        return False

    # -- ending -----------------------------------------------------------------------------------

    def _end_later_id(self, upstream_id: str, transport: SessionUpstream, headers: Mapping[str, str]) -> None:
        """End an upstream session nobody can reach any more (in the background: nobody waits for it)."""
        ending = CIMultiDict(headers)
        ending[SESSION_HEADER] = upstream_id
        spawn(self._end(ending, transport), name=f"session-end-{self.name}", owner=self._tasks)

    async def _end(self, headers: CIMultiDict[str], transport: SessionUpstream) -> None:
        try:
            reply = await transport.exchange("DELETE", headers, None, self.config.recovery_timeout, None)
            if reply.stream is not None:
                await reply.stream.close()
        except ProxyError as exc:
            log.info("session_end_failed", upstream=self.name, error=exc.message)

    async def end_remapped(self, transport: SessionUpstream) -> int:
        """End upstream every session only the proxy can route (the proxy is stopping: nobody else will
        route them), each with its client's headers; returns how many. Each is forgotten, so its client
        hears a session loss next."""
        ended = self.table.remapped()
        endings = []
        for session in ended:
            self.table.forget(session.client_id)
            ending = CIMultiDict(session.headers)
            ending[SESSION_HEADER] = session.upstream_id
            endings.append(self._end(ending, transport))
        self._counted()
        await asyncio.gather(*endings)  # the pool bounds how many are sent at once
        return len(ended)


def as_client_knows(session: LegacySession, reply: Reply) -> Reply:
    """`reply` with the session id its client knows: an answer of a rebuilt session names the upstream's
    new id (some clients take the id from every answer: the TypeScript SDK does), which the client must
    never see, or it would leave the session the proxy keeps for it."""
    if session.remapped and SESSION_HEADER in reply.headers:
        reply.headers[SESSION_HEADER] = session.client_id
    return reply


def _rebuild_headers(headers: Mapping[str, str]) -> CIMultiDict[str]:
    rebuilt = CIMultiDict(headers)
    for name in _NOT_FOR_REBUILD:
        rebuilt.popall(name, None)
    rebuilt["Accept"] = "application/json, text/event-stream"
    rebuilt["Content-Type"] = "application/json"
    return rebuilt


def _id_of(body: bytes) -> str | int | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    request_id = value.get("id") if isinstance(value, dict) else None
    return request_id if isinstance(request_id, str | int) else None
