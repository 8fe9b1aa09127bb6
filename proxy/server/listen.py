"""``subscriptions/listen`` (MCP 2026-07-28) across an upstream restart: what the relay needs to re-issue it.

A listen is a POST whose SSE answer *is* the subscription: its first event is
``notifications/subscriptions/acknowledged`` (the filter the server honours), every event carries the
listen's JSON-RPC id in ``_meta["io.modelcontextprotocol/subscriptionId"]``, and a graceful end is the
request's final response. There is no replay: a server that restarts forgets the subscription, and a
client that sees its stream drop must listen again and refetch what it depends on. The proxy does that for
it (`proxy.server.listen_relay.ListenRelay` runs the loop; this module holds its parts, none of which
writes to the client):

- `read_head`: the first event of a listen stream, read before it is passed on, so the relay knows the
  acknowledged filter (bounded: `MAX_HEAD_BYTES`);
- `ListenResume`: one client listen's resumption state: the filter first acknowledged, the outage's
  window and backoff, the resumption count (`generation`);
- `narrowed`: whether a re-issued listen's acknowledgement honours less than the first one did;
- `refetch_notices`: what the client is told after a resumption, in place of the second acknowledgement;
- `reissue`: the re-issued listen itself, through the upstream's breaker and transport only.

**The re-issue** is the client's request unchanged (same body, so the same JSON-RPC id, and the same
headers), sent through the upstream's breaker and transport only: never through the rate limit (it is
no new client call, and spends no token), the retry stage (its `max_attempts` is about one call's
tries, not an outage's length) or the cache. The breaker is what keeps a herd of resuming listens off a
server that is down: each re-issue counts with it as an attempt does (a refused connection is a failure,
an answer's head a success), and while it is open nothing is sent: the listen waits out the open period
(within its window) and tries again.

**Bounds.** An outage's re-issues stop when the call's ``timeouts.total`` has passed since the stream
broke (the deadline a call's first byte has; 10 minutes by default, shorter per method with a rule for
``subscriptions/listen``); each waits its backoff first (``retry.backoff``, full jitter, as a retry
does) and gets ``timeouts.per_try`` (capped by the window) to answer with its acknowledgement. A stream
that then breaks again within `STABLE_AFTER` of its acknowledgement continues the same outage, so a
server that acknowledges and drops at once is re-listened to at most one backoff ceiling apart, and no
longer than one window. The acknowledgement is read up to `MAX_HEAD_BYTES`, and at most
`MAX_REFETCH_NOTICES` notices follow a resumption.

**Refetch notices.** While the listen was down the server may have changed what it announces (a restart
is often a deploy: other tools, other prompts), and it replays nothing. The client would have refetched
after listening again; it never saw the stream drop, so the proxy tells it to refetch instead: one
``notifications/<kind>/list_changed`` for each list kind the filter holds, and one
``notifications/resources/updated`` for each subscribed resource, each stamped with the subscription id.
Listen events are level triggers ("this may have changed: read it again"), so a notice about what did
not change costs a refetch, never a wrong state. A filter with more than `MAX_REFETCH_NOTICES` of them
is not resumed: the client hears the break, as it would without the proxy (the SDK client drops a
subscription whose backlog passes 1,024 events).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import orjson

from proxy.errors import StreamBroken
from proxy.mcp.sse import SSEParser, SSEWatcher, Seen, blank_line_ends
from proxy.policies.base import Attempt, Call, Clock, Reply, ReplyStream
from proxy.policies.retry import backoff_ceiling
from proxy.runtime import Route

__all__ = [
    "ACKNOWLEDGED",
    "LIST_KINDS",
    "MAX_HEAD_BYTES",
    "MAX_REFETCH_NOTICES",
    "STABLE_AFTER",
    "SUBSCRIPTION_ID",
    "Head",
    "ListenResume",
    "acknowledged_filter",
    "narrowed",
    "read_head",
    "refetch_notices",
    "reissue",
]

ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"
"""The first event of a listen stream: the filter the server honours."""
SUBSCRIPTION_ID: Final = "io.modelcontextprotocol/subscriptionId"
"""The ``_meta`` key of every listen event: the listen request's JSON-RPC id."""
LIST_KINDS: Final = {"toolsListChanged": "tools", "promptsListChanged": "prompts", "resourcesListChanged": "resources"}
"""The filter's list flags, and the kind of list each announces (``notifications/<kind>/list_changed``)."""
RESOURCE_SUBSCRIPTIONS: Final = "resourceSubscriptions"

MAX_HEAD_BYTES: Final = 64 * 1024
"""The most of a listen stream read before its first event (the acknowledgement, a few hundred bytes):
past it the stream passes on as it comes, and no acknowledgement is known (a re-issue then swallows none)."""
MAX_REFETCH_NOTICES: Final = 512
"""The most notices sent after a resumption (`refetch_notices`); a filter needing more is not resumed."""
STABLE_AFTER: Final = 10.0
"""Seconds a (re-)acknowledged listen must stay open for its next break to start a new outage, with a new
window and a fresh backoff; one that breaks sooner continues the outage it ended."""


class Head(NamedTuple):
    """What `read_head` read of a listen stream: every byte (`read`), what the watcher saw in them (`early`,
    for the relay to act on as if it had pumped them), the first ``message`` event parsed (`first`: None
    when none came whole within `MAX_HEAD_BYTES`, or its data is not a JSON object) and where in `read` it
    ends (`end`), and how reading stopped: `broke` (the stream broke), `ended` (it ended), or neither (the
    first event is in, or the bound was reached: the stream goes on)."""

    read: bytes
    early: tuple[Seen, ...]
    first: dict[str, Any] | None
    end: int
    broke: StreamBroken | None = None
    ended: bool = False

    @property
    def ack(self) -> dict[str, Any] | None:
        """The acknowledged filter when the first event is the acknowledgement (`acknowledged_filter`)."""
        return acknowledged_filter(self.first)


async def read_head(stream: ReplyStream, watcher: SSEWatcher) -> Head:
    """Read `stream` up to its first whole ``message`` event (at most `MAX_HEAD_BYTES` and one chunk),
    feeding every chunk to `watcher` as the relay's pump would (so the pump goes on from there, nothing
    parsed twice by it). A break is returned (`Head.broke`), never raised."""
    parser = SSEParser(MAX_HEAD_BYTES)
    read = bytearray()
    early: list[Seen] = []
    try:
        async for chunk in stream:
            read += chunk
            early += watcher.feed(chunk)
            for event in parser.feed(chunk):
                if event.event == "message":
                    first = None if event.oversized else _object(event.data)
                    return Head(bytes(read), tuple(early), first, _first_message_end(read))
            if len(read) > MAX_HEAD_BYTES:
                return Head(bytes(read), tuple(early), None, 0)
    except StreamBroken as exc:
        return Head(bytes(read), tuple(early), None, 0, broke=exc)
    return Head(bytes(read), tuple(early), None, 0, ended=True)


def _object(data: str) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _first_message_end(read: bytes | bytearray) -> int:
    """Where the first ``message`` event of `read` ends (just past its blank line): each stretch up to a
    blank line is one dispatch, fed in turn to a parser of its own (the bytes are at most `MAX_HEAD_BYTES`
    and a chunk, read once more)."""
    parser = SSEParser(MAX_HEAD_BYTES)
    start = 0
    for end in blank_line_ends(bytes(read)):
        if any(event.event == "message" for event in parser.feed(bytes(read[start:end]))):
            return end
        start = end
    return len(read)  # not reached: the caller saw the event complete


def acknowledged_filter(message: dict[str, Any] | None) -> dict[str, Any] | None:
    """The filter of an acknowledgement (``params.notifications``), or None when `message` is not one."""
    if message is None or message.get("method") != ACKNOWLEDGED or "id" in message:
        return None
    params = message.get("params")
    honoured = params.get("notifications") if isinstance(params, dict) else None
    return honoured if isinstance(honoured, dict) else {}


def narrowed(first: dict[str, Any], again: dict[str, Any]) -> list[str]:
    """What `again` (a re-issued listen's acknowledged filter) no longer honours of `first`: the names of
    the flags it dropped and the resources it no longer subscribes (empty: it honours all of it). A value
    of another shape (a later revision's) must be equal. Falsy entries of `first` honour nothing."""
    lost: list[str] = []
    for key, value in first.items():
        if not value:
            continue
        now = again.get(key)
        if key == RESOURCE_SUBSCRIPTIONS and isinstance(value, list):
            kept = set(map(str, now)) if isinstance(now, list) else set()
            lost += [str(uri) for uri in value if str(uri) not in kept]
        elif now != value:
            lost.append(key)
    return lost


def refetch_notices(listen_id: str | int | None, honoured: dict[str, Any]) -> tuple[bytes, list[str]] | None:
    """The events that tell the client to refetch what `honoured` covers (the module docstring), and the list
    kinds they announce; None when they would be more than `MAX_REFETCH_NOTICES`."""
    meta = {"_meta": {SUBSCRIPTION_ID: listen_id}}
    kinds = [kind for flag, kind in LIST_KINDS.items() if honoured.get(flag) is True]
    uris = honoured.get(RESOURCE_SUBSCRIPTIONS)
    uris = [uri for uri in uris if isinstance(uri, str)] if isinstance(uris, list) else []
    if len(kinds) + len(uris) > MAX_REFETCH_NOTICES:
        return None
    messages = [{"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed", "params": meta} for kind in kinds]
    messages += [
        {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {**meta, "uri": uri}} for uri in uris
    ]
    return b"".join(b"event: message\ndata: " + orjson.dumps(m) + b"\n\n" for m in messages), kinds


class ListenResume:
    """One client listen's resumption state (the module docstring has the rules): the filter its first
    acknowledgement honoured (`honoured`), the current outage's start and re-issue count, and how many
    times it was resumed (`generation`). Time is `clock`'s; `rng` draws the jitter (tests fix both)."""

    __slots__ = ("_acked_at", "_broke_at", "_clock", "_rng", "_since", "backoff", "gap_ms", "generation", "honoured",
                 "per_try", "reissues", "total", "window_reissues")  # fmt: skip

    def __init__(self, call: Call, clock: Clock, rng: Callable[[], float] = random.random) -> None:
        policy = call.policy
        self.total = policy.timeouts.total
        self.per_try = policy.timeouts.per_try
        self.backoff = policy.retry.backoff
        self._clock = clock
        self._rng = rng
        self.honoured: dict[str, Any] | None = None
        """The filter of the first acknowledgement the client saw (None: it saw none yet)."""
        self.generation = 0
        """Resumptions so far (1 after the first)."""
        self.reissues = 0
        """Re-issues sent in all (every outage of this listen)."""
        self.window_reissues = 0
        """Re-issues in the current outage: the backoff's exponent."""
        self.gap_ms = 0.0
        """From the last break to the acknowledgement that ended it (ms)."""
        self._acked_at = self._broke_at = clock.monotonic()
        self._since: float | None = None

    def broke(self) -> None:
        """The upstream stream ended unanswered: a new outage begins, unless the stream was (re-)acknowledged
        less than `STABLE_AFTER` ago (then the outage it ended goes on, window and backoff included)."""
        now = self._broke_at = self._clock.monotonic()
        if self._since is None or now - self._acked_at >= STABLE_AFTER:
            self._since = now
            self.window_reissues = 0

    def acknowledged(self, resumed: bool) -> None:
        """A stream of this listen was acknowledged (`resumed`: a re-issue's, which counts a generation and
        sets `gap_ms`)."""
        self._acked_at = self._clock.monotonic()
        if resumed:
            self.generation += 1
            self.gap_ms = round((self._acked_at - self._broke_at) * 1000, 3)

    def left(self) -> float:
        """Seconds left of the current outage's window (<= 0: it is over)."""
        assert self._since is not None, "broke() starts an outage"
        return self._since + self.total - self._clock.monotonic()

    def delay(self, at_least: float = 0.0) -> float | None:
        """The wait before the next re-issue: a full-jitter backoff, or `at_least` (an open breaker's
        remaining time) if longer; None when no re-issue fits the window any more."""
        left = self.left()
        wait = max(at_least, self._rng() * backoff_ceiling(self.backoff, self.window_reissues + 1))
        return None if wait >= left else wait

    def attempt_timeout(self) -> float | None:
        """How long the next re-issue may take, to its acknowledgement: `per_try`, within the window."""
        left = self.left()
        return None if left <= 0 else min(self.per_try, left)

    def sent(self) -> int:
        """Count a re-issue; its attempt number (the client's call was 1)."""
        self.reissues += 1
        self.window_reissues += 1
        return self.reissues + 1


async def reissue(route: Route, call: Call, number: int) -> Reply:
    """Send `call` (a listen) again, as attempt `number`: through its upstream's breaker and transport only
    (the module docstring says why). Unbounded here: the relay bounds it (`ListenResume.attempt_timeout`)."""
    attempt = Attempt(call, number, None)
    transport = route.upstream
    return await route.state.breaker(attempt, transport.send)
