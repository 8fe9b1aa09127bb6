"""Many HTTP clients over one stdio child: whose is each message the child writes.

A stdio server has one client, its parent: one id space, one progress-token space, and no way to say
which of its parent's requests a message of its own belongs to. The proxy puts many clients in front of
it (`isolation: shared`), so every message that crosses the pipe is renamed on the way in and routed on
the way out. This module decides all of it and does no I/O: the gateway (`proxy.upstream.stdio.gateway`)
writes what it returns.

**Ids.** Every client request goes to the child under an id of the proxy's (`Caller.child_id`, an
integer no other request in flight has), and its progress token, if it set one, becomes that same
integer; the child's answer and its progress come back under them and are put back as the client sent
them. A request the child asks of a client (sampling, elicitation, roots) goes out under an id of the
proxy's too (`Asked`), so two clients' answers can never be mistaken for each other's.

**Where the child's messages go:**

- a response: to the caller whose request it answers; an unknown id (a late answer to a request the
  client gave up on, whose cancellation the child ignored) is dropped;
- progress: to the caller whose token it carries;
- a request of the child's, or a log message (`notifications/message`): to the one client with
  requests in flight, on one of those requests' streams. A stdio child's message carries nothing that
  names the request it comes from, so with requests of *several* clients in flight no one can tell whose
  it is: a log line is dropped and a request answered with an error, because handing one client's data
  to another is worse than not delivering it (`isolation: per_session` gives each client its own child
  and delivers everything). The one exception is `roots/list` when nobody can be asked: the proxy is the
  child's client and answers with no roots;
- a list change (`notifications/{tools,prompts,resources}/list_changed`): to every session's GET stream
  and every listener that wants it; `notifications/resources/updated`: to the sessions subscribed to that
  resource and the listeners watching it;
- a cancellation of a request the child asked: to the client it was asked of.

A question put to a client that then leaves (its last request in flight answered or abandoned, its
session ended) goes void: the child gets an error for it (`release`, `void`), so neither the child nor
`MAX_ASKED` waits on a client that will never answer. A child serving one session only (`exclusive`,
`isolation: per_session`) sends whatever names no request to that session, on its GET stream when no
request of it is waiting.

**Bounds.** A caller's inbox holds `INBOX` messages; past that, progress and log lines are dropped (the
child outruns the client), never its answer or a question. A session's GET stream holds `STREAM_INBOX`
notifications, the oldest dropped first. At most `MAX_ASKED` of the child's questions wait on clients
at once; more are refused at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import structlog

__all__ = [
    "ABANDONED_FOR",
    "INBOX",
    "MAX_ABANDONED",
    "LEVELS",
    "MAX_ASKED",
    "OWN_ID_PREFIX",
    "REFUSALS",
    "STREAM_INBOX",
    "Asked",
    "Caller",
    "CANCELLED",
    "Cancelled",
    "ChildLost",
    "Inbox",
    "Listener",
    "Refusal",
    "Session",
    "Switchboard",
]

log = structlog.get_logger("proxy")

INBOX: Final = 256
"""Messages a caller's inbox holds before progress and log lines are dropped."""
STREAM_INBOX: Final = 1024
"""Notifications a session's GET stream (or a listener) holds while its client is slow; the oldest go."""
MAX_ASKED: Final = 1024
"""The child's questions that may wait on clients at once."""
ABANDONED_FOR: Final = 10.0
"""Seconds a request its client gave up on still counts as a possible owner of what the child sends: a
handler may run on after its cancellation (server-everything's do), and the SDK servers send no answer to a
cancelled request, so nothing says when it stopped. The trade: meanwhile a question of the child's is
refused to the other clients (`isolation: per_session` has neither cost)."""
MAX_ABANDONED: Final = 1024
"""Abandoned requests remembered; past it the oldest is forgotten."""

LEVELS: Final = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
"""MCP's log levels (RFC 5424's), least severe first."""
_RANK = {level: rank for rank, level in enumerate(LEVELS)}

Refusal = Literal["several_clients", "nobody_waiting", "not_askable", "too_many_questions"]
REFUSALS: Final[dict[str, str]] = {
    "several_clients": "requests of several clients are in flight, so whose this is cannot be told (isolation: per_session)",
    "nobody_waiting": "no client request is in flight to ask",
    "not_askable": "the client cannot be asked (no session, or it does not accept a stream)",
    "too_many_questions": "too many questions are waiting on clients",
}
"""Why a question of the child's was refused, and the text the child gets in its error."""

OWN_ID_PREFIX: Final = "mcp-proxy-"
"""The ids of requests the proxy sends the child on its own account, and of the child's questions as
clients see them."""

_LIST_CHANGED = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
    }
)


class ChildLost:
    """Put in an inbox when the child died with the request unanswered: its HTTP answer is cut off, as a
    connection that broke after sending would be (the proxy then retries what may be retried)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Cancelled:
    """Put in an inbox when the client cancelled its own request (`notifications/cancelled`): the request
    ends with `CANCELLED`, an error no stage retries or counts against the server."""

    __slots__ = ()


CANCELLED: Final = {"code": -32800, "message": "Request cancelled: the client sent notifications/cancelled for it"}
"""The error a cancelled request's HTTP exchange ends with (JSON-RPC's implementation range; LSP's
RequestCancelled): the client asked for no answer, so nobody reads it, but the exchange must end."""


class Inbox:
    """What the child sent one waiting client, in order. Bounded: past `size`, what `droppable` says may
    go is dropped; an answer, a question or an end always fits."""

    __slots__ = ("_changed", "_items", "_size", "dropped")

    def __init__(self, size: int) -> None:
        self._items: deque[Any] = deque()
        self._changed = asyncio.Event()
        self._size = size
        self.dropped = 0

    def put(self, item: Any, *, droppable: bool = False, oldest_first: bool = False) -> None:
        if len(self._items) >= self._size:
            if oldest_first:
                self._items.popleft()
                self.dropped += 1
            elif droppable:
                self.dropped += 1
                return
        self._items.append(item)
        self._changed.set()

    async def get(self) -> Any:
        while not self._items:
            self._changed.clear()
            await self._changed.wait()
        return self._items.popleft()

    def __len__(self) -> int:
        return len(self._items)


@dataclass(eq=False, slots=True)
class Caller:
    """One client request in the child's hands, until its answer comes back."""

    owner: str
    """The session id (legacy) or the request's own key (2026-07-28: no session)."""
    client_id: Any
    child_id: int
    method: str
    token: Any
    """The client's progress token, or None."""
    generation: int
    askable: bool
    """Whether the child's questions may be put to this client (a legacy session that accepts SSE)."""
    logs: str | None = "session"
    """Which of the child's log lines this caller takes: ``session`` (a legacy client: its session's level),
    a level (a 2026-07-28 client that asked for that level in its request), or None (one that asked none)."""
    inbox: Inbox = field(default_factory=lambda: Inbox(INBOX))


@dataclass(eq=False, slots=True)
class Asked:
    """A request of the child's, put to a client under the proxy's id."""

    child_id: Any
    owner: str
    generation: int


@dataclass(eq=False, slots=True)
class Session:
    """A legacy client session, the proxy's own: the child was initialized once, by the proxy."""

    id: str
    last_used: float
    level: str | None = None
    """The client's `logging/setLevel`: its log lines below it are not sent to it."""
    subscriptions: set[str] = field(default_factory=set)
    stream: Inbox | None = None
    """The GET stream's inbox while the client holds one open."""
    used: bool = False
    """Whether the client sent anything past `initialize` (an unused session is evicted first)."""


@dataclass(eq=False, slots=True)
class Listener:
    """A 2026-07-28 `subscriptions/listen` stream: `wants` says which notifications it receives."""

    wants: Callable[[dict[str, Any]], bool]
    uris: set[str]
    """The resources it watches: the child stays subscribed to them while it listens."""
    inbox: Inbox = field(default_factory=lambda: Inbox(STREAM_INBOX))


class Switchboard:
    """The routing state of one child: callers, the child's questions, sessions and listeners.

    `route(generation, message)` places a message from the child and returns what must be written back
    to the child at once (an error to a question nobody can be asked); the gateway writes it."""

    def __init__(self, exclusive: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.exclusive = exclusive
        """The one session this child serves (`isolation: per_session`): whatever of the child's names no
        request is that session's, and goes to its GET stream when no request of it is waiting."""
        self.callers: dict[int, Caller] = {}
        self.abandoned: dict[int, tuple[str, int, float]] = {}
        """Requests whose clients gave up on them, by the child's id: (owner, generation, when), oldest
        first, at most `MAX_ABANDONED`, each for `ABANDONED_FOR` (`release`)."""
        self._clock = clock
        self.asked: dict[str, Asked] = {}
        self.sessions: dict[str, Session] = {}
        self.listeners: set[Listener] = set()
        self.dropped = 0
        """Messages of the child's nobody could be given (unknown ids, unattributable log lines)."""
        self.on_refused: Callable[[str, Refusal, int], None] | None = None
        """Told of each question of the child's refused: its method, why, and how many clients were waiting."""
        self._ids = itertools.count(1)
        self._asked_ids = itertools.count(1)

    # -- client requests ---------------------------------------------------------------------------

    def admit(
        self, owner: str, message: dict[str, Any], generation: int, *, askable: bool, logs: str | None = "session"
    ) -> tuple[Caller, dict[str, Any]]:
        """A client request on its way to the child: its caller, and the message as the child gets it."""
        child_id = next(self._ids)
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        caller = Caller(
            owner, message.get("id"), child_id, str(message.get("method")), token, generation, askable, logs
        )
        self.callers[child_id] = caller
        renamed = dict(message)
        renamed["id"] = child_id
        if token is not None and isinstance(params, dict) and isinstance(meta, dict):
            renamed["params"] = {**params, "_meta": {**meta, "progressToken": child_id}}
        return caller, renamed

    def release(self, caller: Caller) -> list[dict[str, Any]]:
        """The caller is answered or gone. When it was its client's last request in flight, the questions
        put to that client go void (nothing will carry the answer any more): the errors returned tell the
        child, so neither it nor `MAX_ASKED` waits on a client that left.

        A caller gone unanswered (its client gave up: the request is cancelled in the child) stays a
        possible owner for `ABANDONED_FOR` (`abandoned`): a child may go on running a cancelled handler
        (server-everything does), and the log lines and questions that handler still sends must not be
        taken for those of the next client to call."""
        if self.callers.pop(caller.child_id, None) is not None and self.exclusive is None:
            self._abandon(caller)
        owner = caller.owner
        if owner == self.exclusive or any(c.owner == owner for c in self.callers.values()):
            return []
        return self.void(owner)

    def void(self, owner: str) -> list[dict[str, Any]]:
        """Every question put to `owner` answered to the child with an error (the client is gone)."""
        replies = []
        for key, asked in list(self.asked.items()):
            if asked.owner == owner:
                del self.asked[key]
                error = {"code": -32603, "message": "mcp proxy: the client left before it answered"}
                replies.append({"jsonrpc": "2.0", "id": asked.child_id, "error": error})
        return replies

    def cancellation(self, owner: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """A client's `notifications/cancelled` as the child gets it: the request named by the proxy's id,
        or None when it names no request of this client in flight."""
        params = message.get("params")
        if not isinstance(params, dict):
            return None
        for caller in self.callers.values():
            if caller.owner == owner and caller.client_id == params.get("requestId"):
                # The client will take no answer now: its HTTP request ends at once (`Cancelled`), so it holds
                # nothing open, is retried by nobody, and the child's running handler stays its (abandoned).
                del self.callers[caller.child_id]
                self._abandon(caller)
                caller.inbox.put(Cancelled())
                return {**message, "params": {**params, "requestId": caller.child_id}}
        return None

    def answer_to_child(self, owner: str, message: dict[str, Any]) -> dict[str, Any] | None:
        """A client's answer to one of the child's questions, under the child's own id; None when it
        answers nothing this client was asked (an id never issued, another client's, one already answered)."""
        key = message.get("id")
        if not isinstance(key, str):
            return None
        asked = self.asked.get(key)
        if asked is None or asked.owner != owner:
            return None
        del self.asked[key]
        return {**message, "id": asked.child_id}

    # -- the child's messages ----------------------------------------------------------------------

    def route(self, generation: int, message: Any) -> list[dict[str, Any]]:
        """Place one message of the child's; return what to write back to it at once."""
        if not isinstance(message, dict):  # a batch: the stdio transport of 2025-06-18 on has none
            self.dropped += 1
            return []
        method = message.get("method")
        if not isinstance(method, str):
            self._response(message)
            return []
        if "id" in message:
            return self._question(generation, method, message)
        self._notification(method, message)
        return []

    def _response(self, message: dict[str, Any]) -> None:
        key = message.get("id")
        if type(key) is int and self.abandoned.pop(key, None) is not None:
            self.dropped += 1  # the answer to a request its client gave up on: nobody to give it to
            return
        if isinstance(key, str) and key.startswith(OWN_ID_PREFIX):
            return  # the answer to a request the proxy made on its own account (a restore, a subscription)
        caller = self.callers.pop(key, None) if type(key) is int else None
        if caller is None:
            self.dropped += 1
            return
        caller.inbox.put({**message, "id": caller.client_id})

    def _question(self, generation: int, method: str, message: dict[str, Any]) -> list[dict[str, Any]]:
        waiting = self._waiting()
        owners = self._owners(waiting)
        askable = [caller for caller in waiting if caller.askable]
        if len(owners) == 1 and askable and len(self.asked) < MAX_ASKED:
            key = f"{OWN_ID_PREFIX}{next(self._asked_ids)}"
            self.asked[key] = Asked(message["id"], askable[0].owner, generation)
            askable[0].inbox.put({**message, "id": key})
            return []
        stream = self._exclusive_stream() if not waiting else None
        if stream is not None and len(self.asked) < MAX_ASKED:
            key = f"{OWN_ID_PREFIX}{next(self._asked_ids)}"
            self.asked[key] = Asked(message["id"], str(self.exclusive), generation)
            stream.put({**message, "id": key})
            return []
        if method == "roots/list" and not owners:
            return [{"jsonrpc": "2.0", "id": message["id"], "result": {"roots": []}}]
        why: Refusal = (
            "several_clients"
            if len(owners) > 1
            else "nobody_waiting"
            if not waiting
            else "too_many_questions"
            if len(self.asked) >= MAX_ASKED
            else "not_askable"
        )
        if self.on_refused is not None:
            self.on_refused(method, why, len(owners))
        error = {"code": -32603, "message": f"mcp proxy: {REFUSALS[why]}"}
        return [{"jsonrpc": "2.0", "id": message["id"], "error": error}]

    def _notification(self, method: str, message: dict[str, Any]) -> None:
        params = message.get("params")
        params = params if isinstance(params, dict) else {}
        if method == "notifications/progress":
            token = params.get("progressToken")
            caller = self.callers.get(token) if type(token) is int else None
            if caller is None or caller.token is None:
                self.dropped += 1
                return
            caller.inbox.put({**message, "params": {**params, "progressToken": caller.token}}, droppable=True)
        elif method == "notifications/message":
            self._log_line(message, params)
        elif method in _LIST_CHANGED:
            self._broadcast(message, self.sessions.values())
        elif method == "notifications/resources/updated":
            uri = params.get("uri")
            self._broadcast(message, [s for s in self.sessions.values() if uri in s.subscriptions])
        elif method == "notifications/cancelled":
            self._cancelled(message, params)
        else:
            self.dropped += 1

    def _log_line(self, message: dict[str, Any], params: dict[str, Any]) -> None:
        callers = self._sole_client()
        streamed = [caller for caller in callers if caller.askable] or callers  # one that can stream it, if any
        inbox = streamed[0].inbox if streamed else self._exclusive_stream()
        if inbox is None:
            self.dropped += 1
            return
        wanted = streamed[0].logs if streamed else "session"
        if wanted == "session":
            session = self.sessions.get(callers[0].owner if callers else str(self.exclusive))
            wanted = session.level if session is not None else None
            wanted = wanted or LEVELS[0]  # a legacy session that set no level takes what the child sends
        if wanted is None or _RANK.get(str(params.get("level")), 0) < _RANK.get(wanted, 0):
            return
        inbox.put(message, droppable=True)

    def _exclusive_stream(self) -> Inbox | None:
        """The GET stream of the one session this child serves, if it has one open."""
        session = self.sessions.get(self.exclusive) if self.exclusive is not None else None
        return session.stream if session is not None else None

    def _broadcast(self, message: dict[str, Any], sessions: Iterable[Session]) -> None:
        for session in sessions:
            if session.stream is not None:
                session.stream.put(message, oldest_first=True)
        for listener in self.listeners:
            if listener.wants(message):
                listener.inbox.put(message, oldest_first=True)

    def _cancelled(self, message: dict[str, Any], params: dict[str, Any]) -> None:
        for key, asked in self.asked.items():
            if asked.child_id == params.get("requestId"):
                del self.asked[key]
                cancelled = {**message, "params": {**params, "requestId": key}}
                for caller in self.callers.values():
                    if caller.owner == asked.owner:
                        caller.inbox.put(cancelled, droppable=True)
                        return
                stream = self._exclusive_stream() if asked.owner == self.exclusive else None
                if stream is not None:
                    stream.put(cancelled, oldest_first=True)
                return
        self.dropped += 1

    def _waiting(self) -> list[Caller]:
        """The requests in flight that a message of the child's might belong to (pings belong to nobody)."""
        return [caller for caller in self.callers.values() if caller.method != "ping"]

    def _owners(self, waiting: list[Caller]) -> set[str]:
        """Whose a message naming no request might be: the clients waiting, and those who recently gave up
        on a request the child may still be running."""
        return {caller.owner for caller in waiting} | self._abandoned_owners()

    def _sole_client(self) -> list[Caller]:
        """The in-flight requests when they are all one client's (and no other client's abandoned request
        may still be running), else none: whose a message is that names no request can only be told when
        one client is waiting."""
        waiting = self._waiting()
        return waiting if waiting and len(self._owners(waiting)) == 1 else []

    def _abandon(self, caller: Caller) -> None:
        if caller.method == "ping":
            return
        self.abandoned[caller.child_id] = (caller.owner, caller.generation, self._clock())
        while len(self.abandoned) > MAX_ABANDONED:
            self.abandoned.pop(next(iter(self.abandoned)))

    def _abandoned_owners(self) -> set[str]:
        if not self.abandoned:
            return set()
        horizon = self._clock() - ABANDONED_FOR
        while self.abandoned:
            key = next(iter(self.abandoned))
            if self.abandoned[key][2] >= horizon:
                break
            del self.abandoned[key]
        return {owner for owner, _, _ in self.abandoned.values()}

    # -- the child's end ---------------------------------------------------------------------------

    def child_lost(self, generation: int, reason: str) -> None:
        """The child of `generation` is gone: its callers' answers are cut off, its questions void."""
        for child_id, caller in list(self.callers.items()):
            if caller.generation <= generation:
                del self.callers[child_id]
                caller.inbox.put(ChildLost(reason))
        for key, asked in list(self.asked.items()):
            if asked.generation <= generation:
                del self.asked[key]
        for child_id, (_, born, _) in list(self.abandoned.items()):
            if born <= generation:
                del self.abandoned[child_id]

    def most_verbose_level(self) -> str | None:
        """The lowest level any session asked for: what the child is set to."""
        levels = [s.level for s in self.sessions.values() if s.level is not None]
        return min(levels, key=_RANK.__getitem__) if levels else None

    def subscribed(self) -> set[str]:
        """Every resource some session is subscribed to: what the child must be subscribed to."""
        sessions = {uri for session in self.sessions.values() for uri in session.subscriptions}
        return sessions.union(*(listener.uris for listener in self.listeners))
