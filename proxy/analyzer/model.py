"""What the events of a window say, per failure signature, per called tool and per breaker/upstream.

The analyzer reads nothing but events (schema v1, `proxy.events.recorder`). Successes come from the periodic
`call_ok` summaries (counts, attempts, a latency histogram), failures from the individual events, so
the numbers here are exact for failures and bucket-interpolated for latencies. `aggregate.py` fills
these records; the rules read them and never look at raw events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from proxy.analyzer.stats import Histogram
from proxy.errors import CircuitOpen, RetryBudgetExhausted, StreamBroken, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from proxy.failure_kinds import SERVER_SIDE as FAILURES_ON_THE_SERVER

__all__ = [
    "CLIENTS_OWN",
    "RETRYABLE",
    "SERVER_SIDE",
    "UPSTREAM_FAILED",
    "UPSTREAM_FAILED_OUTCOMES",
    "BreakerStats",
    "ChildExit",
    "FailedCall",
    "HealthStats",
    "MAX_SEEN_PARAMS",
    "Opening",
    "SESSION_EVENTS",
    "SessionLoss",
    "SessionStats",
    "TOOL_BREAKER_KINDS",
    "STDIO_EVENTS",
    "SignatureGroup",
    "StdioStats",
    "Target",
    "TargetStats",
    "Transition",
    "UpstreamStats",
    "streamed_failure",
]

SERVER_SIDE = frozenset(kind.value for kind in FAILURES_ON_THE_SERVER)  # the failure kinds breakers and health count
"""Failure kinds a breaker counts: the upstream's fault, not the client's nor the proxy's own verdict."""
UPSTREAM_FAILED = SERVER_SIDE | {"http_429", "stream_ended", "circuit_open", "retry_budget_exhausted"}
"""Failures a client heard because the upstream failed (or a breaker or the retry budget acted on its
failures): what a stored answer is proposed to stand in for. Never the client's own (the proxy's rate
limit, the per-client cap, a request that cannot be sent, a call the client gave up) nor the proxy's
full pool (`overloaded`): a fallback would only undo a limit there, and they say nothing of the upstream."""
RETRYABLE = SERVER_SIDE | {"stream_ended"}
"""Failures a retry of the same call can fix: the upstream failed as a server (timeouts, 5xx, connection
errors). Never an application answer (a JSON-RPC error, a 4xx, isError: the same request gets the same
answer), nor a refusal by the proxy (breaker, budget, its own limit): retrying those only repeats them."""
CLIENTS_OWN = frozenset({"client_error", "rate_limited", "overloaded", "client_overloaded", "unsendable_request", "cancelled"})
"""Failure kinds of the client's or the proxy's own making: a request the upstream called wrong (a JSON-RPC
request error, a 4xx), the proxy's own limits, a request it cannot send, a call its client gave up.
No rule counts them against the upstream, nor proposes retrying or caching them."""
TOOL_BREAKER_KINDS = SERVER_SIDE | {"server_error", "tool_error", "client_error"}
"""What a per-tool breaker may count: the server-side failures, and the application errors an operator
can name for it (opt-in, per tool). An upstream breaker counts `SERVER_SIDE` alone."""

UPSTREAM_FAILED_OUTCOMES = frozenset({
    UpstreamUnavailable.reason, UpstreamTimeout.reason, UpstreamProtocolError.reason, StreamBroken.reason,
    CircuitOpen.reason, RetryBudgetExhausted.reason, "http_5xx", "http_429",
})  # fmt: skip
"""`call_ok` outcomes that are the upstream's failure: what a change's error rate counts (auto-apply).

A call's outcome is the ``data.reason`` of the proxy's verdict (`proxy.errors`), or what the
upstream's own answer was (`proxy.server.handler._outcome`: ``ok``, ``jsonrpc_error``, ``http_4xx``,
``http_5xx``, ``http_429``), or how a relayed stream ended (`proxy.server.relay`). The upstream failed
when it could not be reached, timed out, broke its answer or answered 5xx/429, and when the breaker
or the retry budget refused a call because of such failures. Everything else is not its failure:
application answers (``jsonrpc_error``, ``http_4xx``: the upstream answered, per tool and opt-in) and
the client's or the proxy's own (``rate_limited``, ``client_overloaded``, ``proxy_overloaded``,
``unsendable_request``, ``cancelled``, ``session_deleted``, ``drained``) and stream endings that are
no failure (``unwatched``, ``unread_event``, ``oversized_event``, ``resumable``). The error rate
(`embedded.error_rate`) is these over themselves plus ``ok``: every other outcome is left out."""
SESSION_EVENTS = frozenset({"session_lost", "session_recovered", "stream_resumed"})
"""Events about an upstream's legacy sessions (`SessionStats`): upstream facts, never a target's calls (a
loss met by a GET or a notification is no call of a tool; the request replayed is counted by its summary)."""
STDIO_EVENTS = frozenset({"stdio_child_exited", "stdio_question_refused"})
"""Events about a stdio upstream's child (`StdioStats`): upstream facts, never a target's calls (a refused
question's `method` is the child's, not a client's call)."""
EXAMPLES = 5
MAX_SEEN_PARAMS = 4096
"""Params hashes a target remembers as having succeeded (`TargetStats.ok_params_since`) per window, or per
slice of one: past it the target's successes count as of unknown params (`TargetStats.ok_params_full`)."""


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

    def merge(self, later: SignatureGroup) -> None:
        """Add the same signature's events of a later time slice: what the first event said stays (the kind,
        message and call of the group are the earliest event's), the examples are the first `EXAMPLES`."""
        self.count += later.count
        self.by_type.update(later.by_type)
        self.first_ts, self.last_ts = min(self.first_ts, later.first_ts), max(self.last_ts, later.last_ts)
        self.example_ids.extend(later.example_ids[: max(0, EXAMPLES - len(self.example_ids))])

    def copy(self) -> SignatureGroup:
        """A group sharing nothing mutable with this one (a slice's group is merged, never handed out)."""
        return SignatureGroup(
            self.signature, self.kind, self.message, self.upstream, self.method, self.tool, self.first_ts,
            self.last_ts, self.count, Counter(self.by_type), list(self.example_ids),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FailedCall:
    """One `call_failed`: a failure a client heard."""

    id: int
    ts: float
    call_id: str | None
    kind: str
    idempotent: bool | None
    params_hash: str | None
    streamed: bool = False
    """The answer was already being relayed when it failed (see `streamed_failure`): no fallback could act."""


def streamed_failure(event: dict[str, Any]) -> bool:
    """Whether a ``call_failed`` came after its answer began reaching the client: the event says so
    (``streamed``), or its kind is ``stream_broken``, which only a relayed answer fails with (a buffered read
    that breaks fails ``connection_lost``), so recordings from before the field are read right too."""
    error = event.get("error")
    return event.get("streamed") is True or (isinstance(error, dict) and error.get("kind") == "stream_broken")


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
    exhausted_by_kind: Counter[str] = field(default_factory=Counter)
    """Calls that used every attempt (why ``max_attempts``), by the last attempt's failure kind."""
    exhausted_attempts: list[int] = field(default_factory=list)
    exhausted_ids: list[int] = field(default_factory=list)
    failed_calls: set[str] = field(default_factory=set)
    budget_exhausted: int = 0
    idempotent_true: int = 0
    idempotent_false: int = 0
    read_only_hint: Counter[bool] = field(default_factory=Counter)
    """How many call events carried the server's readOnlyHint, by its value (absent when not declared)."""
    idempotent_hint: Counter[bool] = field(default_factory=Counter)
    destructive_hint: Counter[bool] = field(default_factory=Counter)
    budget_failures: dict[str, str] = field(default_factory=dict)
    """call id -> the failure kind the retry budget refused to retry (`retry_budget_exhausted.failure`)."""
    fallback_hit: int = 0
    stale_ts: list[float] = field(default_factory=list)
    stale_ids: list[int] = field(default_factory=list)
    stale_max_age: float = 0.0
    ok_params_since: dict[str, float] = field(default_factory=dict)
    """Params hash -> the start of the window of the first `call_ok` summary that named it among its successes
    (`ok_params`), in that order; at most `MAX_SEEN_PARAMS`. A summary does not say when in its window (10 s
    by default) each success came, so a failure in the same window counts as after it."""
    ok_params_unknown: int = 0
    """Successes whose params no summary named: counted by a summary without `ok_params` (a recording made
    before it, or no idempotent success in it), or past its `MAX_OK_PARAMS` (`ok_params_overflow`)."""
    ok_params_full: bool = False
    """Some params hash that succeeded was not kept: more than `MAX_SEEN_PARAMS` distinct ones."""

    def saw_params(self, hashes: list[str], ts: float) -> None:
        """A summary at `ts` named `hashes` among its successes: each remembered with the first time it was named."""
        since = self.ok_params_since
        for hashed in hashes:
            if hashed in since:
                continue
            if len(since) < MAX_SEEN_PARAMS:
                since[hashed] = ts
            else:
                self.ok_params_full = True

    @property
    def params_known(self) -> bool:
        """Whether every success in the window is known by its params (`ok_params_since` is complete)."""
        return not (self.ok_params_unknown or self.ok_params_full)

    def merge(self, later: TargetStats) -> None:
        """Add the same target's events of a later time slice (`aggregate.Window`): counters add, the
        per-event lists concatenate (so they stay in time order), call-id sets union, a budget refusal's
        kind is the latest one, the stale age its maximum. Nothing of `later` is shared afterwards."""
        self.calls += later.calls
        self.ok += later.ok
        self.outcomes.update(later.outcomes)
        self.ok_by_attempt.update(later.ok_by_attempt)
        self.histogram.merge(later.histogram)
        self.failed.extend(later.failed)  # FailedCall is frozen: sharing the records is safe
        self.attempt_failures += later.attempt_failures
        self.timeouts += later.timeouts
        self.timeout_ids.extend(later.timeout_ids)
        self.observed_ms.extend(later.observed_ms)
        self.observed_ids.extend(later.observed_ids)
        self.unobserved += later.unobserved
        self.retries += later.retries
        self.retry_ids.extend(later.retry_ids)
        self.retried_calls |= later.retried_calls
        self.exhausted.update(later.exhausted)
        self.exhausted_by_kind.update(later.exhausted_by_kind)
        self.exhausted_attempts.extend(later.exhausted_attempts)
        self.exhausted_ids.extend(later.exhausted_ids)
        self.failed_calls |= later.failed_calls
        self.budget_exhausted += later.budget_exhausted
        self.idempotent_true += later.idempotent_true
        self.idempotent_false += later.idempotent_false
        self.read_only_hint.update(later.read_only_hint)
        self.idempotent_hint.update(later.idempotent_hint)
        self.destructive_hint.update(later.destructive_hint)
        self.budget_failures.update(later.budget_failures)
        self.fallback_hit += later.fallback_hit
        self.stale_ts.extend(later.stale_ts)
        self.stale_ids.extend(later.stale_ids)
        self.stale_max_age = max(self.stale_max_age, later.stale_max_age)
        # The earlier slice's first time stands; the later's new hashes follow in their order, up to the bound
        # (exactly as folding both slices' events in order would: a slice keeps a prefix of its hashes).
        since = self.ok_params_since
        for hashed, ts in later.ok_params_since.items():
            if hashed not in since:
                if len(since) < MAX_SEEN_PARAMS:
                    since[hashed] = ts
                else:
                    self.ok_params_full = True
        self.ok_params_unknown += later.ok_params_unknown
        self.ok_params_full = self.ok_params_full or later.ok_params_full

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

    @property
    def declared_safe(self) -> bool:
        """The server declared the tool safe to retry (readOnlyHint or idempotentHint true), no event said
        otherwise (idempotentHint false, destructiveHint true) and no hint contradicted itself."""
        hints = (self.read_only_hint, self.idempotent_hint, self.destructive_hint)
        if any(hint[True] and hint[False] for hint in hints):
            return False
        if self.idempotent_hint[False] or self.destructive_hint[True]:
            return False
        return bool(self.read_only_hint[True] or self.idempotent_hint[True])

    @property
    def hints(self) -> dict[str, dict[str, int]]:
        """The declarations seen, for evidence: hint -> {"true": events, "false": events}."""
        named = {"read_only_hint": self.read_only_hint, "idempotent_hint": self.idempotent_hint, "destructive_hint": self.destructive_hint}
        return {name: {str(v).lower(): n for v, n in sorted(c.items())} for name, c in named.items() if c}

    @property
    def total_calls(self) -> int:
        """Calls in the window: the summaries' count, never less than the successes and failures seen."""
        return max(self.calls, self.ok + len(self.failed))

    def idempotent_failures(self) -> list[FailedCall]:
        """Failed idempotent calls whose failure was the upstream's (`UPSTREAM_FAILED`) and came before their
        answer began reaching the client: the failures a stored answer could have stood in for (a streamed
        answer that broke is committed, beyond any fallback)."""
        return [f for f in self.failed if f.idempotent and f.kind in UPSTREAM_FAILED and not f.streamed]


class Transition(NamedTuple):
    id: int
    ts: float
    old: str
    new: str
    cause: str | None = None
    last_failure_kind: str | None = None


@dataclass(slots=True)
class Opening:
    """One opening of a breaker, what led to it and what it refused while it lasted.

    `causes` are the server-side failures on the breaker's scope in the run-up: since the breaker's
    previous transition (at most `aggregate.RUN_UP_S` back), deduplicated per attempt. `refused` are the
    calls (`call_failed` with `circuit_open`) and `refused_attempts` the attempts (`circuit_open` events)
    it refused from its opening until it closed or opened again.
    """

    upstream: str
    breaker: str
    id: int
    ts: float
    until: float
    last_failure_kind: str | None = None
    causes: Counter[tuple[Target, str]] = field(default_factory=Counter)
    refused: list[tuple[Target, FailedCall]] = field(default_factory=list)
    refused_attempts: int = 0

    @property
    def cause(self) -> tuple[Target | None, str | None]:
        """(the target, its failure kind) that opened it: the target with the most run-up failures and its
        most frequent kind; without run-up failures in the window, the breaker's own `last_failure_kind`."""
        if not self.causes:
            return None, self.last_failure_kind
        by_target: Counter[Target] = Counter()
        for (target, _), count in self.causes.items():
            by_target[target] += count
        target = min(by_target, key=lambda t: (-by_target[t], t.upstream, t.method, t.tool or ""))
        kinds = {kind: count for (t, kind), count in self.causes.items() if t == target}
        return target, min(kinds, key=lambda k: (-kinds[k], k))

    def caused_by(self, target: Target, kinds: frozenset[str] | set[str]) -> bool:
        cause_target, cause_kind = self.cause
        return cause_target == target and cause_kind in kinds


@dataclass(slots=True)
class BreakerStats:
    """One breaker's state changes: ``name`` is the upstream, or ``upstream/tool`` for a per-tool breaker."""

    upstream: str
    name: str
    transitions: list[Transition] = field(default_factory=list)
    refused: int = 0
    openings: list[Opening] = field(default_factory=list)
    """Filled by `Analysis` once the window is read: each opening with its run-up and its refusals."""
    opening_times: list[float] = field(default_factory=list)

    def merge(self, later: BreakerStats) -> None:
        """Add the same breaker's events of a later time slice. The openings are not merged: they need the
        whole window (`Analysis.attribute` computes them once, on the merged result)."""
        self.transitions.extend(later.transitions)
        self.refused += later.refused

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

    def merge(self, later: HealthStats) -> None:
        """Add the same upstream's health changes of a later time slice."""
        self.transitions.extend(later.transitions)

    @property
    def flaps(self) -> list[Transition]:
        """Transitions between healthy and unhealthy (from or to `unknown` does not count)."""
        return [t for t in self.transitions if {t.old, t.new} == {"healthy", "unhealthy"}]


@dataclass(frozen=True, slots=True)
class SessionLoss:
    """One `session_lost`: a request (or GET, notification, client's answer) of a legacy session met the
    upstream no longer knowing the session."""

    id: int
    ts: float
    call_id: str | None
    recovery: str | None
    """What became of it (`proxy.events.types.SessionLost.recovery`: ``recovering``, ``off``,
    ``unknown_session``, ``failed``); None in a recording from before the proxy recovered sessions,
    whose events do not say."""
    why: str | None
    """Why recovery failed (with ``failed``: `proxy.events.types.SessionLost.why`), else None."""


@dataclass(slots=True)
class SessionStats:
    """One upstream's legacy sessions in the window: each loss and what became of it, the rebuilds that
    worked and how long they took, the upstream streams the proxy reopened."""

    losses: list[SessionLoss] = field(default_factory=list)
    recovered_ids: list[int] = field(default_factory=list)
    """Ids of `session_recovered` events: one per request replayed on a rebuilt session."""
    recovery_ms: list[float] = field(default_factory=list)
    """How long each of those requests waited for its rebuild (`session_recovered.recovery_ms`): the whole
    rebuild for the request that started it, less for one that joined it in flight."""
    resumed: Counter[str] = field(default_factory=Counter)
    """`stream_resumed` events by stream (``get``, ``answer``, ``listen``)."""

    def merge(self, later: SessionStats) -> None:
        """Add the same upstream's session events of a later time slice (lists concatenate in time order)."""
        self.losses.extend(later.losses)
        self.recovered_ids.extend(later.recovered_ids)
        self.recovery_ms.extend(later.recovery_ms)
        self.resumed.update(later.resumed)

    def __bool__(self) -> bool:
        return bool(self.losses or self.recovered_ids or self.resumed)

    def with_recovery(self, recovery: str | None) -> list[SessionLoss]:
        """The losses whose `recovery` is `recovery` (None: those of a recording that does not say)."""
        return [loss for loss in self.losses if loss.recovery == recovery]

    def rebuild_seconds(self) -> dict[int, float]:
        """For each ``failed`` loss of a call whose loss was ``recovering`` before it: the seconds between the
        two (its id -> seconds). The ``recovering`` event is published as the rebuild starts and the
        ``failed`` one as it fails, so for the request that started a rebuild this is how long it ran; a
        request that joined a rebuild in flight shows less, and a ``lost_again`` the rebuild and the replay.
        Events of one call pair up by `call_id`."""
        started: dict[str, list[float]] = {}
        for loss in self.losses:
            if loss.recovery == "recovering" and loss.call_id is not None:
                started.setdefault(loss.call_id, []).append(loss.ts)
        seconds: dict[int, float] = {}
        for loss in self.losses:
            if loss.recovery == "failed" and loss.call_id is not None:
                earlier = [ts for ts in started.get(loss.call_id, ()) if ts <= loss.ts]
                if earlier:
                    seconds[loss.id] = loss.ts - max(earlier)
        return seconds

    def met(self) -> list[SessionLoss]:
        """One loss per request that met one: every loss but a ``failed`` one that ends a rebuild the same
        call's ``recovering`` loss began (that request was counted once, when it met the loss)."""
        ended = self.rebuild_seconds()
        return [loss for loss in self.losses if loss.id not in ended]


START_TIMED_OUT = "did not answer initialize within"
"""What the reason of a child that ran out `child.start_timeout` says (``the child did not answer
initialize within 30s``)."""


@dataclass(frozen=True, slots=True)
class ChildExit:
    """One `stdio_child_exited`: a child the proxy did not stop ended."""

    id: int
    ts: float
    generation: int
    pid: int | None
    phase: str
    """``starting`` (it never answered initialize) or ``running`` (it was up)."""
    reason: str
    uptime_ms: float | None
    cut_off: int

    @property
    def start_timed_out(self) -> bool:
        """It never came up because it did not answer initialize within `child.start_timeout`."""
        return self.phase == "starting" and START_TIMED_OUT in self.reason


@dataclass(slots=True)
class StdioStats:
    """One stdio upstream's children in the window: each unplanned end, and the child's questions no client
    could be asked."""

    exits: list[ChildExit] = field(default_factory=list)
    refused: dict[str, list[int]] = field(default_factory=dict)
    """Ids of `stdio_question_refused` events by `why` (``several_clients``, ``not_askable``, ...)."""
    refused_methods: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Refused questions by (why, the child's method)."""
    most_waiting: dict[str, int] = field(default_factory=dict)
    """The most clients waiting at a refusal, by why."""
    restarts: int = 0
    """The most restarts any exit reported (the upstream's count so far)."""

    def merge(self, later: StdioStats) -> None:
        """Add the same upstream's child events of a later time slice (lists concatenate in time order)."""
        self.exits.extend(later.exits)
        for why, ids in later.refused.items():
            self.refused.setdefault(why, []).extend(ids)
        self.refused_methods.update(later.refused_methods)
        for why, most in later.most_waiting.items():
            self.most_waiting[why] = max(most, self.most_waiting.get(why, 0))
        self.restarts = max(self.restarts, later.restarts)

    def __bool__(self) -> bool:
        return bool(self.exits or self.refused)

    def refusals(self, why: str) -> list[int]:
        """Ids of the questions refused for `why`."""
        return self.refused.get(why, [])

    def methods(self, why: str) -> dict[str, int]:
        """The child's methods refused for `why`, most frequent first."""
        return {method: n for (w, method), n in self.refused_methods.most_common() if w == why}


@dataclass(slots=True)
class UpstreamStats:
    """Upstream-wide facts: 429s against the accepted rate, lost sessions, the retry budget."""

    name: str
    http_429_ts: list[float] = field(default_factory=list)
    http_429_ids: list[int] = field(default_factory=list)
    windows: dict[tuple[float, float], int] = field(default_factory=dict)
    """ok calls per call_ok summary window, keyed by (end ts, length s), summed over the upstream's tools."""
    sessions: SessionStats = field(default_factory=SessionStats)
    """Its legacy sessions: losses, recoveries, reopened streams."""
    budget_exhausted: int = 0
    timelines: dict[tuple[float, float, float], list[int]] = field(default_factory=dict)
    """ok calls per slot, keyed by (window end, window length, slot length), summed over the upstream's
    targets: from `call_ok.ok_timeline` (recordings before it have none)."""
    http_429_clients: Counter[str] = field(default_factory=Counter)
    """Whose calls failed on the upstream's 429 (`call_failed.client`): one client's own limit is not everyone's."""
    stdio: StdioStats = field(default_factory=StdioStats)
    """Its children, when it is a stdio upstream: their unplanned ends, their questions refused."""

    def merge(self, later: UpstreamStats) -> None:
        """Add the same upstream's events of a later time slice: lists concatenate, the ok counts of one
        summary window add up (its summaries may fall on both sides of a slice boundary), timelines add
        slot by slot."""
        self.http_429_ts.extend(later.http_429_ts)
        self.http_429_ids.extend(later.http_429_ids)
        for key, ok in later.windows.items():
            self.windows[key] = self.windows.get(key, 0) + ok
        self.sessions.merge(later.sessions)
        self.budget_exhausted += later.budget_exhausted
        self.http_429_clients.update(later.http_429_clients)
        self.stdio.merge(later.stdio)
        for slot_key, timeline in later.timelines.items():
            line = self.timelines.setdefault(slot_key, [])
            line.extend([0] * (len(timeline) - len(line)))
            for index, count in enumerate(timeline):
                line[index] += count

    def windows_with_429(self) -> list[tuple[float, float, int]]:
        return [
            (end, length, ok)
            for (end, length), ok in sorted(self.windows.items())
            if length > 0 and any(end - length <= ts <= end for ts in self.http_429_ts)
        ]

    def accepted(self) -> tuple[float, float, str] | None:
        """(ok calls per second, the seconds they were counted over, the basis) while the upstream limited.

        Where a summary window carries a timeline, only its slots from the first to the last 429 count
        (basis ``timeline``): traffic before the 429s began, a burst or a lull, says nothing of what the
        upstream accepts while limiting. Windows without one (older recordings) count whole (basis
        ``whole_windows``); ``mixed`` when both were used. None without any window holding a 429.
        """
        if not self.http_429_ts:
            return None
        first, last = min(self.http_429_ts), max(self.http_429_ts)
        lines = {(end, length): (slot, line) for (end, length, slot), line in self.timelines.items() if slot > 0}
        ok = seconds = 0.0
        used: set[str] = set()
        for (end, length), window_ok in sorted(self.windows.items()):
            if length <= 0:
                continue
            start = end - length
            if (end, length) in lines:
                slot, line = lines[(end, length)]
                for index, count in enumerate(line):
                    low = start + index * slot
                    high = min(low + slot, end)  # a window's last slot (or a window shorter than a slot) ends with it
                    if low <= last and high > first and high > low:  # slot [low, high) overlaps [first, last]
                        ok, seconds = ok + count, seconds + (high - low)
                        used.add("timeline")
            elif any(start <= ts <= end for ts in self.http_429_ts):
                ok, seconds = ok + window_ok, seconds + length
                used.add("whole_windows")
        if not seconds:
            return None
        return ok / seconds, seconds, used.pop() if len(used) == 1 else "mixed"

    def accepted_rate(self) -> float | None:
        """ok calls per second while the upstream answered 429 (`accepted`)."""
        accepted = self.accepted()
        return None if accepted is None else accepted[0]
