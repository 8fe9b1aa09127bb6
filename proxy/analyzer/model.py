"""What the events of a window say, per failure signature, per called tool and per breaker/upstream.

The analyzer reads nothing but events (schema v1, `proxy.events.recorder`). Successes come from the periodic
`call_ok` summaries (counts, attempts, a latency histogram), failures from the individual events, so
the numbers here are exact for failures and bucket-interpolated for latencies. `aggregate.py` fills
these records; the rules read them and never look at raw events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.analyzer.stats import Histogram
from proxy.failure_kinds import SERVER_SIDE as FAILURES_ON_THE_SERVER

__all__ = [
    "SERVER_SIDE",
    "UPSTREAM_FAILED",
    "BreakerStats",
    "FailedCall",
    "HealthStats",
    "SignatureGroup",
    "Target",
    "TargetStats",
    "Transition",
    "UpstreamStats",
]

SERVER_SIDE = frozenset(kind.value for kind in FAILURES_ON_THE_SERVER)  # the failure kinds breakers and health count
"""Failure kinds a breaker counts: the upstream's fault, not the client's nor the proxy's own verdict."""
UPSTREAM_FAILED = SERVER_SIDE | {"http_429", "stream_ended", "circuit_open", "retry_budget_exhausted"}
"""Failures a client heard because the upstream failed (or a breaker or the retry budget acted on its
failures): what a stored answer is proposed to stand in for. Never the client's own (the proxy's rate
limit, the per-client cap, a request that cannot be sent, a call the client gave up) nor the proxy's
full pool (`overloaded`): a fallback would only undo a limit there, and they say nothing of the upstream."""
EXAMPLES = 5


class Target(NamedTuple):
    """One kind of call: an upstream's method, and the tool for tools/call."""

    upstream: str
    method: str
    tool: str | None

    @property
    def label(self) -> str:
        return f"{self.upstream} {self.tool or self.method}"


@dataclass(slots=True)
class SignatureGroup:
    """Every event of one kind of failure (same signature), deduplicated."""

    signature: str
    kind: str
    message: str
    upstream: str | None
    method: str | None
    tool: str | None
    first_ts: float
    last_ts: float
    count: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    example_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FailedCall:
    """One `call_failed`: a failure a client heard."""

    id: int
    ts: float
    call_id: str | None
    kind: str
    idempotent: bool | None
    params_hash: str | None


@dataclass(slots=True)
class TargetStats:
    """One target's calls in the window. Latencies are of successful calls, in ms."""

    target: Target
    calls: int = 0
    ok: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    ok_by_attempt: Counter[int] = field(default_factory=Counter)
    histogram: Histogram = field(default_factory=Histogram)
    failed: list[FailedCall] = field(default_factory=list)
    attempt_failures: int = 0
    """Server-side failures of single attempts (retried ones and final ones): what a breaker counts."""
    timeouts: int = 0
    timeout_ids: list[int] = field(default_factory=list)
    observed_ms: list[float] = field(default_factory=list)
    """Would-be latencies of timed-out attempts that answered within the observation window."""
    observed_ids: list[int] = field(default_factory=list)
    unobserved: int = 0
    retries: int = 0
    retry_ids: list[int] = field(default_factory=list)
    retried_calls: set[str] = field(default_factory=set)
    exhausted: Counter[str] = field(default_factory=Counter)
    exhausted_attempts: list[int] = field(default_factory=list)
    exhausted_ids: list[int] = field(default_factory=list)
    failed_calls: set[str] = field(default_factory=set)
    budget_exhausted: int = 0
    idempotent_true: int = 0
    idempotent_false: int = 0
    fallback_hit: int = 0
    stale_ts: list[float] = field(default_factory=list)
    stale_ids: list[int] = field(default_factory=list)
    stale_max_age: float = 0.0

    @property
    def failures(self) -> Counter[str]:
        """Failures clients heard, by kind."""
        return Counter(f.kind for f in self.failed)

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.calls if self.calls else None

    def latency(self, q: float) -> float | None:
        return self.histogram.percentile(q)

    @property
    def ok_after_retry(self) -> int:
        """Calls that succeeded on a second or later attempt (from the `call_ok` summaries)."""
        return sum(count for attempt, count in self.ok_by_attempt.items() if attempt >= 2)

    @property
    def recovered_calls(self) -> int:
        """Calls that were retried and did not end in a failure: retries that paid off."""
        return len(self.retried_calls - self.failed_calls)

    @property
    def idempotent(self) -> bool | None:
        """What the events say: False if any call was not idempotent, True if all that said so were."""
        if self.idempotent_false:
            return False
        return True if self.idempotent_true else None

    def idempotent_failures(self) -> list[FailedCall]:
        """Failed idempotent calls whose failure was the upstream's (`UPSTREAM_FAILED`)."""
        return [f for f in self.failed if f.idempotent and f.kind in UPSTREAM_FAILED]


class Transition(NamedTuple):
    id: int
    ts: float
    old: str
    new: str
    cause: str | None = None


@dataclass(slots=True)
class BreakerStats:
    """One breaker's state changes: ``name`` is the upstream, or ``upstream/tool`` for a per-tool breaker."""

    upstream: str
    name: str
    transitions: list[Transition] = field(default_factory=list)
    refused: int = 0

    @property
    def tool(self) -> str | None:
        prefix = f"{self.upstream}/"
        return self.name[len(prefix) :] if self.name.startswith(prefix) else None

    @property
    def opens(self) -> int:
        return sum(1 for t in self.transitions if t.new == "open")

    @property
    def flaps(self) -> int:
        """Open -> ... -> open cycles: every opening after the first."""
        return max(0, self.opens - 1)

    @property
    def reopened_from_half_open(self) -> int:
        """Trials that failed: the upstream was still down when reset_timeout ended."""
        return sum(1 for t in self.transitions if t.old == "half-open" and t.new == "open")


@dataclass(slots=True)
class HealthStats:
    upstream: str
    transitions: list[Transition] = field(default_factory=list)

    @property
    def flaps(self) -> list[Transition]:
        """Transitions between healthy and unhealthy (from or to `unknown` does not count)."""
        return [t for t in self.transitions if {t.old, t.new} == {"healthy", "unhealthy"}]


@dataclass(slots=True)
class UpstreamStats:
    """Upstream-wide facts: 429s against the accepted rate, lost sessions, the retry budget."""

    name: str
    http_429_ts: list[float] = field(default_factory=list)
    http_429_ids: list[int] = field(default_factory=list)
    windows: dict[tuple[float, float], int] = field(default_factory=dict)
    """ok calls per call_ok summary window, keyed by (end ts, length s), summed over the upstream's tools."""
    session_lost_ids: list[int] = field(default_factory=list)
    budget_exhausted: int = 0

    def windows_with_429(self) -> list[tuple[float, float, int]]:
        return [
            (end, length, ok)
            for (end, length), ok in sorted(self.windows.items())
            if length > 0 and any(end - length <= ts <= end for ts in self.http_429_ts)
        ]

    def accepted_rate(self) -> float | None:
        """ok calls per second over the summary windows in which the upstream answered 429."""
        windows = self.windows_with_429()
        seconds = sum(length for _, length, _ in windows)
        return sum(ok for _, _, ok in windows) / seconds if seconds else None
