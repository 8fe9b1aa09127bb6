"""The types every stage shares: `Call` in, `Reply` out, `Handler` between, `Clock` for time.

A stage is ``async def __call__(self, call: Call, next: Handler) -> Reply``: it may answer itself,
call `next` once or several times, or raise a `proxy.errors.ProxyError`. Stages never see aiohttp:
`transport.py` turns the wire into a `Reply` and foreign errors into `proxy.errors`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from multidict import CIMultiDict

from proxy.mcp.eras import Era
from proxy.mcp.jsonrpc import Message
from proxy.config.resolve import Policy

__all__ = ["NULL_OBSERVER", "Call", "Clock", "Handler", "MonotonicClock", "NullObserver", "Observer", "Reply", "Stage"]


@dataclass(slots=True)
class Call:
    """One client JSON-RPC request on its way through the pipeline, classified once.

    `body` is the client's bytes, forwarded unchanged; `message` is the same body parsed.
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
    """The legacy session (``Mcp-Session-Id``) as forwarded; None without one."""
    protocol: str
    """The MCP-Protocol-Version the client sent ('' without one): answers of one version never serve another."""
    message: Message
    body: bytes
    headers: CIMultiDict[str]
    policy: Policy
    """The effective policy (upstream defaults + the most specific rule), resolved once."""
    call_id: int = 0
    """A number unique in this process: ties together the events of one client call."""
    owner: int | None = None
    """The downstream client connection this call came on (a number unique in this process): an upstream
    connection is reused only for calls of the connection that used it, so a server's stray bytes can
    only ever reach the client whose exchange they garbled, as without a proxy (`proxy.upstream.http11.client`)."""
    lend_credentials: bool = True
    """May the upstream URL's user and password stand in for the client's own Authorization? Not when the
    client sent one that the proxy dropped (named in `Connection`): it asked as someone, and must never be
    sent as the proxy's configured user instead."""
    buffered: bool = False
    """Read SSE answers whole before answering (read methods): they can then be retried and cached."""
    started: float = 0.0
    """When the request was read (`time.perf_counter`): a failure's latency is counted from here."""
    attempt: int = 1
    """1 for the first try; the retry stage counts up."""
    deadline: float | None = None
    """Clock time by which the call must have its answer's first byte; set by the retry stage."""
    written: bool = False
    """Whether this attempt's request reached a socket; the transport sets it. Until it does, a failed
    attempt (even a timed-out one, still waiting for a pooled connection) provably never reached the upstream."""
    queued: bool = False
    """Whether this attempt is queued for a pooled connection right now (the pool is at its limit); the
    transport sets it. A timeout while queued is the proxy's own overload, not the upstream's."""
    waited: bool = False
    """Whether this attempt queued for a connection at all: a timeout after it was written is then excused
    (the upstream did not get the attempt's whole time)."""


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


Handler = Callable[[Call], Awaitable[Reply]]


class Stage(Protocol):
    """One resilience policy: answers, passes on to `next`, or raises a ProxyError."""

    async def __call__(self, call: Call, next: Handler) -> Reply: ...


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
    ``fallback_served``, ...); `fields` carry its details. Metrics implement it today; the failure
    event stream implements the same seam. Implementations must be cheap and must never raise.
    """

    def policy_event(self, kind: str, call: Call | None, **fields: Any) -> None: ...


class NullObserver:
    """An observer that ignores everything (unit tests, or nothing to report to)."""

    __slots__ = ()

    def policy_event(self, kind: str, call: Call | None, **fields: Any) -> None:
        return None


NULL_OBSERVER = NullObserver()
