"""The event types (schema v1): one frozen dataclass per kind, whose docstring says when it fires.

Each kind adds its own fields to the envelope (`proxy.events.envelope`); kinds about one client call
extend `CallEvent`, the rest (an upstream's breaker or health, the proxy's config, the analyzer's
proposals, the periodic summaries) extend `Event`. `KINDS` maps each `type` to its class, in the order
`EVENT_TYPES` has always listed them. Emission sites name a kind and pass its fields
(``observer.policy_event("retry", call, failure=..., delay_ms=...)``); `proxy.events.build` makes the
typed event and checks the fields against its class.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, TypeVar

from proxy.events.envelope import ABSENT, SIGNATURE_PATTERN, Absent, CallEvent, ErrorDetail, Event, keywords

__all__ = [
    "EVENT_TYPES",
    "KINDS",
    "BreakerState",
    "CallFailed",
    "CallOk",
    "CircuitOpen",
    "ConfigRejected",
    "ConfigReloaded",
    "FallbackServed",
    "HealthChanged",
    "ProposalApplied",
    "ProposalKept",
    "ProposalRolledBack",
    "RateLimited",
    "Retry",
    "RetryBudgetExhausted",
    "RetryExhausted",
    "SessionLost",
    "SessionRecovered",
    "StdioChildExited",
    "StdioQuestionRefused",
    "StreamResumed",
    "Timeout",
    "TimeoutObserved",
]

KINDS: dict[str, type[Event]] = {}
"""Each event kind's class, by its `type`."""

_E = TypeVar("_E", bound=Event)


def _kind(cls: type[_E]) -> type[_E]:
    """Register `cls` under its `type` (the default of its `type` field)."""
    (kind,) = (f.default for f in fields(cls) if f.name == "type")
    assert isinstance(kind, str) and kind not in KINDS
    KINDS[kind] = cls
    return cls


def _signature() -> Any:
    return field(metadata=keywords(pattern=SIGNATURE_PATTERN))


Health = Literal["unknown", "healthy", "unhealthy"]
Breaker = Literal["closed", "open", "half-open"]


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class CallFailed(CallEvent):
    """A client heard a failure: the final one, after every retry and fallback (a proxy verdict, a
    broken stream, or the upstream's own 5xx or 429 passed on). One per failed call; `latency_ms` is
    the whole call's."""

    type: Literal["call_failed"] = "call_failed"
    latency_ms: float
    error: ErrorDetail
    signature: str = _signature()
    reason: str
    """Why, in the proxy's words: the `X-Mcp-Proxy-Error` reason and the metrics label."""
    http_status: int
    """The HTTP status the client got."""
    client: str
    """Who was calling: a hash of its strongest credential, else its address."""
    streamed: bool | Absent = ABSENT
    """True when the answer was already being relayed to the client (an SSE stream that broke, went silent or
    ended without the response after its head went out): the call was committed, so no retry or stored answer
    could have acted on it. Absent for failures before that (`http_status` was then really sent)."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class CallOk(Event):
    """Every `events.summary_interval` (and at shutdown): the calls one (upstream, method, tool) finished
    in the window, successes included, so the analyzer sees what went well. Names the upstream did not
    list fold into `OVERFLOW`."""

    type: Literal["call_ok"] = "call_ok"
    upstream: str
    method: str
    window_s: float
    """How long the window was (s)."""
    window_end: float
    """When it ended, Unix time in seconds."""
    calls: int
    """Calls finished in the window."""
    ok: int
    """Of which ended well."""
    outcomes: dict[str, int]
    """Calls by outcome (``ok``, or the failure's reason)."""
    ok_by_attempt: dict[str, int]
    """Successful calls by the attempt that succeeded (``"1"``, ``"2"``, ...)."""
    latency_buckets_ms: list[float]
    """The histogram's upper bounds (`LATENCY_BUCKETS_MS`); the last count is everything above."""
    latency_histogram: list[int]
    """Successful calls per latency bucket (one more count than bounds)."""
    latency_mean_ms: float | None
    """Mean latency of the successful calls (null without any)."""
    latency_max_ms: float | None
    """Highest latency of a successful call (null without any)."""
    ok_timeline: list[int] | Absent = ABSENT
    """Successful calls per time slot of the window, oldest first: slot i counts those that ended in
    [window_end - window_s + i * timeline_slot_s, the same + timeline_slot_s); the last slot also counts
    those of a window that ran a little over its interval. At most `TIMELINE_SLOTS` slots (a whole
    window of the default 10 s has 10); the last window, cut short at shutdown, has fewer. Its sum is
    `ok`. Always written by this proxy; absent from recordings made before it was added."""
    timeline_slot_s: float | Absent = ABSENT
    """How long one slot of `ok_timeline` is (s): the `events.summary_interval` divided by
    `TIMELINE_SLOTS`, and at least 1, but never more than the interval itself. Written with `ok_timeline`."""
    ok_params: list[str] | Absent = ABSENT
    """The distinct `params_hash` values of the calls that succeeded in the window among those the proxy
    held idempotent (the only ones a cache may answer), in the order each first succeeded; at most
    `MAX_OK_PARAMS`. Present when at least one idempotent call succeeded in the window; absent otherwise,
    and from recordings made before it was added (the successes' params are then unknown)."""
    ok_params_overflow: int | Absent = ABSENT
    """Successful idempotent calls whose params hash is not in `ok_params` because it was full. Written
    with `ok_params`."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Retry(CallEvent):
    """An attempt failed in a way the policy retries: fires before the backoff, once per retried attempt
    (`error` is that attempt's failure)."""

    type: Literal["retry"] = "retry"
    error: ErrorDetail
    signature: str = _signature()
    failure: str
    """The attempt's failure kind (the same as ``error.kind``)."""
    delay_ms: float
    """The backoff before the next attempt (ms)."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryExhausted(CallEvent):
    """Retrying stopped after more than one attempt, for any reason but the retry budget; the last
    attempt's failure (`error`) goes on to the client, or to the fallback."""

    type: Literal["retry_exhausted"] = "retry_exhausted"
    error: ErrorDetail
    signature: str = _signature()
    why: str
    """Why retrying stopped: ``max_attempts``, ``not_retryable``, ``not_idempotent``, ``deadline``,
    ``retry_after_too_long`` or ``same_answer``."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudgetExhausted(CallEvent):
    """The upstream's retry budget refused a retry the policy allowed, and retrying stops: the client gets
    `retry_budget_exhausted` (-32054) when the attempt raised, the upstream's own failing answer as it is
    otherwise. Either way the refusal is counted here (and in ``mcp_proxy_retry_budget_exhausted_total``)."""

    type: Literal["retry_budget_exhausted"] = "retry_budget_exhausted"
    error: ErrorDetail
    signature: str = _signature()
    failure: str
    """The last attempt's failure kind."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout(CallEvent):
    """An attempt passed its per-try timeout after the request was sent (before it, the call fails
    without this event: nothing reached the upstream)."""

    type: Literal["timeout"] = "timeout"
    limit_ms: float
    """The limit it passed (ms): the per-try timeout, or what was left of the call's deadline."""
    observing: bool
    """Whether the attempt is left running to see when it would have answered (`timeout_observed`)."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutObserved(CallEvent):
    """A timed-out attempt that was left running (`timeout` with ``observing``) ended: it answered, or
    it failed, or `events.observe_timeouts` passed and it was cancelled. Its answer is thrown away."""

    type: Literal["timeout_observed"] = "timeout_observed"
    limit_ms: float
    """The limit it had passed (ms)."""
    observed_ms: float | None
    """When the answer came, from the attempt's start (ms); null if none came."""
    waited_ms: float | Absent = ABSENT
    """How long it was watched for nothing (ms); only when no answer came."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerState(Event):
    """A circuit breaker (an upstream's, or one tool's: `breaker` names it) changed state."""

    type: Literal["breaker_state"] = "breaker_state"
    upstream: str
    breaker: str
    """The breaker: the upstream's name, or ``upstream/tool`` for a per-tool breaker."""
    old: Breaker
    """The state before."""
    new: Breaker
    """The state now."""
    cause: str | None
    """What opened it (when it opened): the threshold that tripped."""
    last_failure: str | None
    """The failure that tripped it (when it opened)."""
    last_failure_kind: str | None | Absent = ABSENT
    """The kind of the last failure it counted (the `error.kind` vocabulary: ``timeout``, ``http_5xx``,
    ``connect_error``, ...) when it opened; null otherwise. Always written by this proxy; absent from
    recordings made before it was added."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitOpen(Event):
    """A call was refused, unsent, because its breaker is open (or half-open with its trials taken)."""

    type: Literal["circuit_open"] = "circuit_open"
    upstream: str
    breaker: str
    """The breaker that refused it."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimited(CallEvent):
    """The proxy's own rate limit refused a call (it would have waited longer than allowed)."""

    type: Literal["rate_limited"] = "rate_limited"
    retry_after: float
    """Seconds until the limit lets a call through."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackServed(CallEvent):
    """The cache answered instead of the upstream: a fresh answer (``hit``, ttl mode, on the success
    path), or a stale one standing in for a failure (``stale``)."""

    type: Literal["fallback_served"] = "fallback_served"
    status: Literal["hit", "stale"]
    """``hit``: fresh; ``stale``: past its time, standing in for a failure."""
    age: float | Absent = ABSENT
    """How old the stale answer was (s); only with ``stale``."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class HealthChanged(Event):
    """An upstream's health changed (probes, or failures the proxy saw passing through)."""

    type: Literal["health_changed"] = "health_changed"
    upstream: str
    old: Health
    """The health before."""
    new: Health
    """The health now."""
    cause: Literal["active", "passive"]
    """``active``: a probe said so; ``passive``: calls passing through did."""
    detail: str
    """What the probe or the calls saw."""


SessionRecovery = Literal["recovering", "off", "unknown_session", "forgotten", "failed"]


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class SessionLost(CallEvent):
    """The upstream no longer knows a legacy session (it answered 404, or server-everything's 400 "No
    valid session ID") to a request of it (`method`: the request's, or ``GET``/``DELETE``/a notification's).
    `recovery` says what became of it (`proxy.sessions`)."""

    WITH_PARAMS = False
    type: Literal["session_lost"] = "session_lost"
    recovery: SessionRecovery
    """``recovering``: the proxy re-initializes it and replays the request (a `session_recovered`
    follows, or a second `session_lost` with ``failed``); ``off``: `sessions.recovery` is off, the client
    heard the loss; ``forgotten``: the proxy kept the session once and forgot it to make room
    (`sessions.max_sessions`, `idle_timeout`), the client heard the loss; ``unknown_session``: the proxy
    never kept it (made before the proxy started, or an id the client made up or had deleted), the client
    heard the loss; ``failed``: recovery
    was tried and did not work (`why`), the client heard a session loss."""
    why: str | None
    """Why recovery failed: ``version_changed``, ``capabilities_changed``, ``no_session_id``,
    ``initialize_refused``, ``upstream_failed``, ``deadline`` (the call's ``timeouts.total`` passed during
    the rebuild), ``too_frequent``, ``lost_again``, ``not_restorable`` (a recorded request was over its
    bound), ``answers_a_lost_request`` (a client's answer to a request of the lost session: dropped),
    ``not_replayable`` (a batch); None otherwise."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigReloaded(Event):
    """A changed config file was validated and is now in force."""

    type: Literal["config_reloaded"] = "config_reloaded"
    trigger: str
    """What noticed the change: ``poll``, ``watch``, ``sighup`` or ``api``."""
    file_hash: str
    """The first 12 hex digits of the SHA-256 of the file now in force."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigRejected(Event):
    """A changed config file failed validation: the config in force stays."""

    type: Literal["config_rejected"] = "config_rejected"
    trigger: str
    """What noticed the change: ``poll``, ``watch``, ``sighup`` or ``api``."""
    errors: list[str]
    """What is wrong, each with its path in the file."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class ProposalApplied(Event):
    """The embedded analyzer (``analyzer.auto_apply``) wrote one of its proposals into the config file."""

    type: Literal["proposal_applied"] = "proposal_applied"
    proposal: str
    """The proposal's id."""
    title: str
    """What it changes, in a line."""
    error_rate_before: float
    """The error rate over the verification span before it."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class ProposalKept(Event):
    """An applied proposal's verification span passed and it stays: the error rate did not get worse,
    too few calls were seen to tell, or the file was edited since."""

    type: Literal["proposal_kept"] = "proposal_kept"
    proposal: str
    """The proposal's id."""
    error_rate_before: float
    """The error rate before it was applied."""
    error_rate_after: float
    """The error rate since."""
    verified: bool
    """Whether enough calls were seen, before and after, to judge it."""
    note: str | Absent = ABSENT
    """Why it stays although the rate got worse."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class ProposalRolledBack(Event):
    """An applied proposal made the error rate worse: the config file it changed was restored."""

    type: Literal["proposal_rolled_back"] = "proposal_rolled_back"
    proposal: str
    """The proposal's id."""
    error_rate_before: float
    """The error rate before it was applied."""
    error_rate_after: float
    """The error rate since."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class TrialStarted(Event):
    """A shadow trial began: the proposal's candidate policy is counted next to the live one, never
    enforced, until `duration_s` passes (``POST /trials``, or auto-apply with ``auto_apply.shadow``)."""

    type: Literal["trial_started"] = "trial_started"
    trial: str
    """The trial's id (``GET /trials``, ``DELETE /trials/ID``)."""
    proposal: str
    """The proposal's id."""
    title: str
    """What it changes, in a line."""
    changes: list[str]
    """Each change: where, the key, its value before and after."""
    duration_s: float
    """How long the trial runs (s)."""
    estimate: dict[str, float]
    """The proposal's own estimate of its effect (its ``effect.numbers``)."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class TrialFinished(Event):
    """A shadow trial ended with a verdict: ``promoted`` (the change was written to the config file, which
    the proxy then reloads), ``rejected``, ``inconclusive``, ``stale`` (the file changed meanwhile) or
    ``aborted`` (``DELETE /trials/ID``, or the proxy stopped); only a promotion writes anything."""

    type: Literal["trial_finished"] = "trial_finished"
    trial: str
    """The trial's id."""
    proposal: str
    """The proposal's id."""
    verdict: Literal["promoted", "rejected", "inconclusive", "stale", "aborted"]
    """What the trial decided."""
    reason: str
    """Why, in words, with the figures it compared."""
    measured: dict[str, float]
    """What the evaluator counted over the trial (``calls``, ``errors_before``, ``errors_after``, ...)."""
    estimate: dict[str, float]
    """The proposal's own estimate of its effect."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecovered(CallEvent):
    """The proxy rebuilt a lost legacy session upstream (initialize, initialized, the client's log level
    and subscriptions) and replays `method`, the request that met the loss: its client sees the replay's
    answer. A recovery serves every request that met the same loss; each one replayed has its event."""

    WITH_PARAMS = False
    type: Literal["session_recovered"] = "session_recovered"
    generation: int
    """How many times this session was rebuilt (1 after the first recovery)."""
    recovery_ms: float
    """How long the rebuild took (the upstream's initialize and what followed)."""
    restored: list[str]
    """What was restored beyond initialize: ``initialized``, ``log_level``, ``subscriptions:N``."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class StreamResumed(Event):
    """An upstream stream broke or ended early and the proxy reopened it while its client's stream stayed
    open: ``get`` (a legacy session's GET stream), ``answer`` (an SSE answer, resumed with Last-Event-ID)
    or ``listen`` (a 2026-07-28 ``subscriptions/listen``, issued again)."""

    type: Literal["stream_resumed"] = "stream_resumed"
    upstream: str
    stream: Literal["get", "answer", "listen"]
    """Which kind of stream was reopened."""
    from_event_id: bool
    """Reopened with ``Last-Event-ID`` (the server replays what the stream missed); False: reopened from
    now on (a restarted server has nothing to replay)."""
    generation: int
    """The session's generation when it reopened (0: the session was never rebuilt; always 0 for
    ``listen``: the 2026-07-28 era has no session)."""
    gap_ms: float
    """From the upstream stream's end to its reopening (for ``listen``: to the re-issue's acknowledgement)."""


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class StdioChildExited(Event):
    """A stdio upstream's child process ended without the proxy stopping it (a crash, an exit, a start that
    failed: no answer to initialize in time, an exit before it, a line over the bound): once per child,
    before its restart's backoff. A child stopped on purpose (shutdown, reload, a per-session child's end)
    has no event."""

    type: Literal["stdio_child_exited"] = "stdio_child_exited"
    upstream: str
    generation: int
    """Which child it was: 1 the upstream's first, one more per start."""
    pid: int | None
    """Its process id (null: it never ran, the program could not be started)."""
    phase: Literal["starting", "running"]
    """``starting``: it ended before answering the proxy's initialize (it never came up); ``running``: it was up."""
    reason: str
    """Why it ended, in the proxy's words: ``exited with code 3``, ``was killed by SIGKILL``, ``the child did not
    answer initialize within 30s``, ``the child wrote a line over 8 MiB``."""
    uptime_ms: float | None
    """How long it was up, from its answer to initialize (null in phase ``starting``)."""
    cut_off: int
    """Client requests in flight on it that its end cut off (retried onto the next child where the retry
    policy allows; the others answered with an error)."""
    restarts: int
    """The upstream's restarts so far (its `/status` ``restarts``)."""


QuestionRefusal = Literal["several_clients", "nobody_waiting", "not_askable", "too_many_questions"]


@_kind
@dataclass(frozen=True, slots=True, kw_only=True)
class StdioQuestionRefused(Event):
    """A request of a stdio child's own (sampling, elicitation, roots) could not be put to a client and was
    answered to the child with an error. (A ``roots/list`` with nobody to ask is answered with no roots:
    no refusal, no event.)"""

    type: Literal["stdio_question_refused"] = "stdio_question_refused"
    upstream: str
    method: str
    """The child's request method (``sampling/createMessage``, ``elicitation/create``, ``roots/list``)."""
    why: QuestionRefusal
    """``several_clients``: requests of more than one client were in flight on a shared child, so nobody can
    tell whose question it is; ``nobody_waiting``: no client had a request in flight (and no session stream
    could take it); ``not_askable``: the one client waiting cannot be asked (its request accepts no SSE
    answer, or it speaks the 2026-07-28 era, which has no server-to-client requests); ``too_many_questions``:
    the child's questions waiting on clients were at their bound."""
    clients_waiting: int
    """Clients with requests in flight on the child when it asked."""


EVENT_TYPES: Final = tuple(KINDS)
"""Every kind, in the order v1 has always listed them."""
