"""The types every stage shares: a `Call` in, one `Attempt` per try, a `Reply` out, `Clock` for time.

A client's JSON-RPC request is classified once into a `Call` (`proxy.server.classify`), which nothing
changes afterwards; each try of it is an `Attempt`, made by the retry stage, carrying what belongs to
that try alone: its number, its deadline and what the transport reports of it. So a stage that looks at
a try (the timeout's observation of a late answer, say) holds the try itself, which the next one
never overwrites. The stages come in two kinds (`proxy.pipeline` says which goes where):

- a `CallStage` acts once per client call, outside the tries (fallback, rate limit):
  ``async def __call__(self, call: Call, next: CallHandler) -> Reply``;
- an `AttemptStage` acts on every try (breaker, passive health, timeout), and the transport is the
  last `AttemptHandler`: ``async def __call__(self, attempt: Attempt, next: AttemptHandler) -> Reply``;

and one `AttemptMaker` between them turns a call into its tries (the retry stage). A stage may answer
itself, call `next` once or several times, or raise a `proxy.errors.ProxyError`. Stages never see
aiohttp: `proxy.upstream.transport` turns the wire into a `Reply` and foreign errors into `proxy.errors`.

`Call` is not a frozen dataclass, though nothing may assign to it after construction (a test holds
that): a frozen dataclass sets each field through ``object.__setattr__``, which made building the
Call about 1.9 µs slower per call (18 fields, measured), for a guarantee the test gives for free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from multidict import CIMultiDict

from proxy.config.resolve import Policy
from proxy.errors import ProxyError
from proxy.mcp.eras import Era
from proxy.mcp.jsonrpc import Message
from proxy.mcp.tool_catalog import ToolHints

__all__ = [
    "NULL_OBSERVER",
    "Attempt",
    "AttemptHandler",
    "AttemptMaker",
    "AttemptStage",
    "Call",
    "CallHandler",
    "CallStage",
    "Clock",
    "MonotonicClock",
    "NullObserver",
    "Observer",
    "Reply",
    "last_attempt",
]


@dataclass(slots=True)
class Call:
    """One client JSON-RPC request on its way through the pipeline, classified once and never changed.

    Everything is set when it is made (`proxy.server.classify.classify`); what changes from one try to
    the next lives in its `Attempt`s. `body` is the client's bytes, forwarded unchanged; `message` is
    the same body parsed.
    """

    upstream: str
    era: Era
    method: str
    tool: str | None
    idempotent: bool
    client: str
    """Who is calling: the configured identity header, else a hash of the strongest credential header
    present (`proxy.server.classify.CREDENTIAL_HEADERS`), else the peer address (`proxy.server.classify.client_of`; only
    forwarded headers count)."""
    credential_scope: str
    """A hash over every credential-bearing header the upstream receives ('' without any): the boundary
    a private cache entry and a single flight never cross (`proxy.server.classify.credential_scope`). Computed
    only for calls whose policy has a cache (the only reader); '' otherwise."""
    session_id: str | None
    """The legacy session (``Mcp-Session-Id``) as the client sent it; None without one."""
    protocol: str
    """The MCP-Protocol-Version the client sent ('' without one): answers of one version never serve another."""
    message: Message
    body: bytes
    headers: CIMultiDict[str]
    """What the upstream receives. The one thing changed after classification: the session stage routes a
    legacy session's id to the upstream's current one (`proxy.sessions.stage`); `session_id` stays the
    client's."""
    policy: Policy
    """The effective policy (upstream defaults + the most specific rule), resolved once."""
    call_id: int = 0
    """A number unique in this process: ties together the events of one client call."""
    owner: int | None = None
    """The downstream client connection this call came on (a number unique in this process): an upstream
    connection is reused only for calls of the connection that used it, so a server's stray bytes can
    only ever reach the client whose exchange they garbled, as without a proxy (`proxy.upstream.http11.client`)."""
    query: str = ""
    """The client's query string, as it sent it ('' without one): the upstream gets it after its URL's own
    (`proxy.mcp.headers.client_query`), and it is part of a cache key (it may name who or what is asked).
    Never logged: it may hold a credential."""
    lend_credentials: bool = True
    """May the upstream URL's user and password stand in for the client's own Authorization? Not when the
    client sent one that the proxy dropped (named in `Connection`): it asked as someone, and must never be
    sent as the proxy's configured user instead."""
    buffered: bool = False
    """Read SSE answers whole before answering (read methods: they can then be retried and cached; and the
    requests a legacy session records, `proxy.sessions.keeper.RECORDED_METHODS`, so a refusal is seen)."""
    started: float = 0.0
    """When the request was read (`time.perf_counter`): a failure's latency is counted from here."""
    hints: ToolHints | None = None
    """What the upstream declared about the tool of a `tools/call` (its catalog's `ToolHints`, trusted or
    not) when the call was classified; None for other methods and for tools it did not list. Evidence
    only, for the events (``read_only_hint``, ``idempotent_hint``): what the proxy believes is `idempotent`."""


@dataclass(slots=True, eq=False)
class Attempt:
    """One try of a `Call`, made by the retry stage (or, without one, by the pipeline: `proxy.pipeline`).

    `call`, `number` and `deadline` are set when it is made and never change; the transport reports what
    became of the try in `written`, `queued` and `waited` (the timeout stage reads them).
    """

    call: Call
    number: int
    """1 for the first try; the retry stage counts up."""
    deadline: float | None
    """Clock time by which the call must have its answer's first byte (the call's `timeouts.total`, set
    by the retry stage, the same for every try); None: only the try's own `timeouts.per_try` bounds it."""
    written: bool = False
    """Whether this try's request reached a socket; the transport sets it. Until it does, a failed try
    (even a timed-out one, still waiting for a pooled connection) provably never reached the upstream."""
    queued: bool = False
    """Whether this try is queued for a pooled connection right now (the pool is at its limit); the
    transport sets it. A timeout while queued is the proxy's own overload, not the upstream's."""
    waited: bool = False
    """Whether this try queued for a connection at all: a timeout after it was written is then excused
    (the upstream did not get the try's whole time)."""


class ReplyStream(Protocol):
    """A streamed answer body. Iterate it to the end, or `close()` it: either releases the connection."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class Reply:
    """The upstream's answer as far as the pipeline needs it.

    Exactly one of `body` (a whole, buffered answer) and `stream` (SSE, passed through as it arrives)
    is set. `message` is the parsed JSON body when there was one: retry, breaker and cache classify
    JSON-RPC errors from it without parsing again.
    """

    status: int
    headers: CIMultiDict[str]
    body: bytes | None = None
    stream: ReplyStream | None = None
    message: Any = None
    extra: dict[str, str] = field(default_factory=dict)
    """Headers a stage adds for the client (e.g. a marker on a stale cached answer)."""
    verdict: Any = None
    """The failure classifier's verdict, computed once (`proxy.policies.failures.verdict_of`) for every stage."""
    reason: str | None = None
    """The upstream's reason phrase, passed on unchanged (None: the standard one for the status)."""
    attempt: Attempt | None = None
    """The try that produced this answer, as the stages outside the tries see it (the retry stage sets
    it; for a stored answer served instead of a failing one, the failing try): the events about the
    call's outcome name it. None: no retry stage made the try (a call's only try is its first), or no
    try made the answer (a fresh stored one, a single flight's follower)."""


def last_attempt(call: Call, error: ProxyError) -> Attempt | None:
    """The try of `call` that ended in `error` (the retry stage marks it: `ProxyError.attempt`), or None
    when none of `call`'s own did: the events about the call then name the call itself (attempt 1).

    A single flight hands one leader's error to every follower (`proxy.policies.fallback`); the
    followers made no try of their own, so their events name none."""
    attempt = error.attempt
    return attempt if isinstance(attempt, Attempt) and attempt.call is call else None


CallHandler = Callable[[Call], Awaitable[Reply]]
"""The rest of the pipeline as a stage outside the tries sees it (and the handler: the whole pipeline)."""
AttemptHandler = Callable[[Attempt], Awaitable[Reply]]
"""The rest of the pipeline as a stage inside the tries sees it; the transport's `send` is the last one."""


class CallStage(Protocol):
    """A policy acting once per client call (fallback, rate limit): answers, passes on to `next`, or
    raises a ProxyError."""

    async def __call__(self, call: Call, next: CallHandler) -> Reply: ...


class AttemptStage(Protocol):
    """A policy acting on every try (breaker, passive health, timeout): answers, passes on to `next`, or
    raises a ProxyError."""

    async def __call__(self, attempt: Attempt, next: AttemptHandler) -> Reply: ...


class AttemptMaker(Protocol):
    """The stage that makes a call's tries (the retry stage): one `Attempt` per try through `next`.

    The answer it returns carries the try it came from in `Reply.attempt`, an error it raises in
    `ProxyError.attempt` (see `last_attempt`): the events about the call's outcome name that try."""

    async def __call__(self, call: Call, next: AttemptHandler) -> Reply: ...


class Clock(Protocol):
    """Time as policies see it; tests inject a fake so nothing waits for real."""

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Observer(Protocol):
    """Where stages report what they did (retries, breaker transitions, rejections, cache serves).

    `kind` names the moment (``retry``, ``retry_budget_exhausted``, ``breaker_state``, ``rate_limited``,
    ``fallback_served``, ...); `about` is what it is about: the `Attempt` for a moment of one try (its
    number is the event's ``attempt``), the `Call` for a moment outside the tries (attempt 1), or None
    for one about no call; `fields` carry its details. Metrics implement it today; the failure event
    stream implements the same seam. Implementations must be cheap and must never raise.
    """

    def policy_event(self, kind: str, about: Call | Attempt | None, **fields: Any) -> None: ...


class NullObserver:
    """An observer that ignores everything (unit tests, or nothing to report to)."""

    __slots__ = ()

    def policy_event(self, kind: str, about: Call | Attempt | None, **fields: Any) -> None:
        return None


NULL_OBSERVER = NullObserver()
