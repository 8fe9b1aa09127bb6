"""Replay calls under a candidate policy on simulated time: what it would have changed, counted.

`Simulator(before, after)` takes `CallRecord`s one at a time (`feed`, in time order; simulated time is
the records' own `ts`) and runs each twice: in a lane for `before`, the config the calls were recorded
under, and in a lane for `after`, the candidate. `figures()` counts both (`Figures`: client-visible
errors by kind, successes, upstream attempts, retries, timeouts, refusals by the breaker and by the
rate limit, stale answers). The same simulator serves a what-if replay of a recorded window
(`replay`) and, fed live, a shadow trial that counts what a candidate would change without enforcing it.

**The recording is the baseline.** Each lane keeps what was recorded wherever its policy agrees with
`before` and simulates only where it differs, so the `before` lane reproduces the recording exactly and
the `after` lane differs from it only through the changed keys. Per aspect, in pipeline order
(DESIGN.md section 3: fallback outside rate limit outside the retry loop around breaker and timeout):

- **rate limit** (`rate_limit`): unchanged, a call is refused exactly when it was; changed, a token
  bucket per key on simulated time (the `RateLimitStage`'s: `burst` calls at once, refilled at
  `rate`/`per`, a call that would wait longer than `max_wait` refused) sees every call. A call refused
  in the recording and admitted here was never sent: its one attempt is estimated (below).
- **timeouts** (`per_try`, `total`): each attempt's limit is ``min(per_try, total - time spent)``. A
  timed-out attempt seen answering (`timeout_observed.observed_ms`) within the new limit succeeds; an
  unobserved one stays a timeout; an answer known to have taken longer than the new limit times out.
  Time spent is the limits of timed-out attempts, known latencies and the backoffs (recorded, or the
  mean of full jitter, half the ceiling); other failed attempts and unknown latencies take no time.
- **retry** (`max_attempts`, `retry_on`, `idempotent`): after a failed attempt the retry stage's rules
  (retry key listed, idempotent or never sent, attempts left, the deadline) are asked for both policies;
  a recorded retry is dropped only when `after` stops where `before` went on, and an attempt is added
  only when `after` goes on where `before` stopped (a recording that stopped for a reason the rules
  here do not see, such as the budget or a repeated answer, stays stopped). Attempts past the new
  maximum are not sent, and a call that succeeded on one of them fails with the failure before it.
  An added attempt is an **estimate**: it succeeds at the recorded success rate of that attempt number
  for the same call kind (`AttemptRates`; the highest attempt number recorded when it is past them),
  turned into whole calls by carrying the fractions over from call to call, per attempt number (error
  diffusion: deterministic, and the total is the expected one rounded down), and
  otherwise fails as the attempt before it did. Added retries must also pass the upstream's retry
  budget (the real `RetryBudget`, on simulated time, counting the lane's calls and retries).
- **breaker**: on an upstream where `after` changes, for a call kind replayed, anything of its resolved
  policy that shapes attempts or the breaker (`timeouts`, `retry`, `breaker`, `rate_limit`, `idempotent`,
  `app_breaker`; not the cache, so a rule added only for a cache changes nothing here), the lane runs the real
  `proxy.policies.breaker.Breaker` (pybreaker's state machine with the proxy's half-open rules) on
  an injected simulated clock, one per breaker config and name as the `BreakerStage` keys them, fed
  every attempt the lane sends with its verdict (`proxy.policies.failures.Verdict`: a timeout of a
  client-paced method is excused, as live). It decides every attempt, including the recorded ones. A
  recorded refusal it admits is an **estimate**: the upstream is taken to answer as it last did to the
  same call kind in this lane (``ok`` before anything was seen). It runs from the first call of such a
  kind on (closed then: replayed in order, the simulator cannot know a later kind will differ). Elsewhere
  refusals are as recorded.
  Application breakers (`app_breaker`) are not modelled.
- **cache fallback** (`cache.mode`, `max_stale`, `ttl`): unchanged, a failure is answered stale exactly
  when it was; changed, a failed idempotent call (but one that failed as recorded on an answer already
  being relayed, `CallRecord.streamed`: committed) is answered stale when a success of the same call
  kind and params hash was stored within ``ttl + max_stale`` before it. Where params are unknown (a
  summary's success without ``ok_params`` or past its bound, or a failure recorded with its params
  instead of their hash) the match is optimistic: any such success of the call kind (for a failure of
  unknown params, any success of it) stands in, and the outcome counts as **estimated**. A params hash
  that never succeeded before the failure is never answered. A recorded stale answer proves an entry stored
  ``age`` seconds before it. Fresh hits (`ttl` mode) are kept as recorded, and become one estimated
  upstream attempt when the cache no longer answers them; new fresh hits are not simulated.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.config.model import ProxyConfig
from proxy.config.policies import BreakerConfig, BudgetConfig, RateLimitConfig
from proxy.config.resolve import Policy, PolicyResolver
from proxy.errors import CircuitOpen
from proxy.failure_kinds import Failure
from proxy.mcp.jsonrpc import CLIENT_PACED_METHODS, is_read_method
from proxy.policies.breaker import Breaker, upstream_judge
from proxy.policies.budget import RetryBudget
from proxy.policies.failures import CANCELLED, OK, Verdict
from proxy.policies.fallback import NEVER_CACHED
from proxy.policies.retry import backoff_ceiling
from proxy.trials.records import REFUSED, UNKNOWN, AttemptRecord, CallRecord

__all__ = ["FIGURES", "AttemptRates", "CallKind", "Figures", "SimClock", "Simulator", "Tally", "replay"]

CallKind = tuple[str, str, str | None]
"""(upstream, method, tool): what the figures are broken down by."""

_KINDS: Final = frozenset(kind.value for kind in Failure)
_ANSWERED: Final = frozenset({Failure.CLIENT_ERROR.value, Failure.SERVER_ERROR.value, Failure.TOOL_ERROR.value,
                              Failure.SESSION_EXPIRED.value})  # fmt: skip
_NEVER_SENT: Final = AttemptRecord(REFUSED)
"""Stands for the one attempt of a call the recording never sent (rate-limited, or a fresh hit) and a lane sends."""
MAX_BUCKETS: Final = 10_000
"""Rate-limit buckets a lane keeps (least recently used out first), as `max_keys` bounds the live ones."""


class SimClock:
    """The `proxy.policies.base.Clock` of a lane: simulated time, moved by the records, never backwards."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    def advance_to(self, when: float) -> None:
        self.now = max(self.now, when)


@dataclass(frozen=True, slots=True)
class Tally:
    """What one lane's calls came to."""

    calls: int = 0
    succeeded: int = 0
    """Answered well: by the upstream, or by a fresh stored answer."""
    errors: int = 0
    """Failures clients heard (each would be a ``call_failed``)."""
    errors_by_kind: Mapping[str, int] = field(default_factory=dict)
    attempts: int = 0
    """Attempts sent upstream."""
    retries: int = 0
    """Attempts after a call's first (each would be a ``retry`` event), a breaker's refusal included."""
    timeouts: int = 0
    """Attempts that passed their per-try limit."""
    breaker_refused: int = 0
    """Calls an open breaker refused (one attempt each: a refusal is never retried)."""
    rate_limited: int = 0
    """Calls the proxy's rate limit refused."""
    served_stale: int = 0
    """Failures a stored answer stood in for."""
    answered: int = 0
    """Calls the upstream answered with an application error (passed on as they were)."""
    cancelled: int = 0
    estimated: int = 0
    """Calls whose outcome here rests on an estimate (an attempt the recording never sent, or a stale answer
    matched to a success of unknown params)."""

    def __add__(self, other: Tally) -> Tally:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            values[f.name] = dict(Counter(mine) + Counter(theirs)) if f.name == "errors_by_kind" else mine + theirs
        return Tally(**values)

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["errors_by_kind"] = dict(sorted(self.errors_by_kind.items()))
        return values


FIGURES: Final = (
    ("calls", "calls"),
    ("errors", "client-visible errors"),
    ("succeeded", "succeeded"),
    ("served_stale", "served stale"),
    ("attempts", "upstream attempts"),
    ("retries", "retries"),
    ("timeouts", "timed-out attempts"),
    ("breaker_refused", "refused by the breaker"),
    ("rate_limited", "refused by the rate limit"),
    ("answered", "application errors"),
    ("estimated", "estimated outcomes"),
)
"""The scalar figures, in the order a report prints them, with their names for people."""


@dataclass(frozen=True, slots=True)
class Figures:
    """Before and after, in all and per call kind."""

    before: Tally
    after: Tally
    kinds: Mapping[CallKind, tuple[Tally, Tally]] = field(default_factory=dict)

    def select(self, keep: Callable[[CallKind], bool]) -> Figures:
        """The figures of the call kinds `keep` accepts."""
        chosen = {kind: pair for kind, pair in self.kinds.items() if keep(kind)}
        before, after = Tally(), Tally()
        for b, a in chosen.values():
            before, after = before + b, after + a
        return Figures(before, after, chosen)

    def change(self) -> dict[str, int]:
        """after - before, per scalar figure."""
        return {name: getattr(self.after, name) - getattr(self.before, name) for name, _ in FIGURES}

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before.to_dict(), "after": self.after.to_dict(), "change": self.change()}


class AttemptRates:
    """How often attempt number k of a call kind succeeded when sent: the estimate for added attempts."""

    __slots__ = ("_ok", "_sent")

    def __init__(self) -> None:
        self._sent: Counter[tuple[CallKind, int]] = Counter()
        self._ok: Counter[tuple[CallKind, int]] = Counter()

    @classmethod
    def of(cls, records: Iterable[CallRecord]) -> AttemptRates:
        rates = cls()
        for record in records:
            rates.add(record)
        return rates

    def add(self, record: CallRecord) -> None:
        for number, attempt in enumerate(record.attempts, 1):
            if attempt.sent and attempt.outcome != Failure.CANCELLED.value:
                self._sent[(record.target, number)] += 1
                self._ok[(record.target, number)] += attempt.outcome == "ok"

    def success(self, kind: CallKind, number: int) -> float:
        """The recorded success rate of attempt `number` (or of the highest one recorded below it); 0 without any."""
        for k in range(number, 0, -1):
            sent = self._sent[(kind, k)]
            if sent:
                return self._ok[(kind, k)] / sent
        return 0.0


class _Bucket:
    """A token bucket as aiolimiter keeps it: a level that drains at `rate`/`per`, `size` deep, starting empty."""

    __slots__ = ("level", "rate", "size", "updated")

    def __init__(self, config: RateLimitConfig, now: float) -> None:
        self.size = config.bucket_size
        self.rate = config.rate / config.per
        self.level = 0.0
        self.updated = now

    def take(self, now: float, max_wait: float) -> bool:
        """Take a token for a call at `now`; False when it would wait longer than `max_wait`."""
        self.level = max(0.0, self.level - (now - self.updated) * self.rate)
        self.updated = now
        delay = max(0.0, (self.level + 1 - self.size) / self.rate)
        if delay > max_wait:
            return False
        self.level += 1
        return True


@dataclass(slots=True)
class _Counts:
    calls: int = 0
    succeeded: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    retries: int = 0
    timeouts: int = 0
    breaker_refused: int = 0
    rate_limited: int = 0
    served_stale: int = 0
    answered: int = 0
    cancelled: int = 0
    estimated: int = 0

    def tally(self) -> Tally:
        return Tally(
            self.calls, self.succeeded, sum(self.errors.values()), dict(self.errors), self.attempts, self.retries,
            self.timeouts, self.breaker_refused, self.rate_limited, self.served_stale, self.answered, self.cancelled,
            self.estimated,
        )  # fmt: skip


def _shaping(policy: Policy) -> tuple[Any, ...]:
    """What of a call kind's resolved policy shapes its attempts and its breaker: everything but the cache
    (and the rule's name). Compared on resolved policies, not on the config's text: a rule added only to
    set a cache resolves to the same timeouts, retry and breaker as before."""
    return (policy.timeouts, policy.retry, policy.breaker, policy.rate_limit, policy.idempotent, policy.app_breaker)


def _verdict(outcome: str, method: str) -> Verdict:
    """An attempt's outcome as the breaker hears it (a client-paced timeout is excused, as live)."""
    if outcome == "ok":
        return OK
    if outcome not in _KINDS or outcome == Failure.CANCELLED.value:
        return CANCELLED
    kind = Failure(outcome)
    return Verdict(kind, never_sent=kind is Failure.CONNECT_ERROR,
                   excused=kind is Failure.TIMEOUT and method in CLIENT_PACED_METHODS)  # fmt: skip


def _stop(policy: Policy, number: int, outcome: str, idempotent: bool, elapsed: float, delay: float) -> str | None:
    """Why the retry stage would stop after attempt `number` failed with `outcome` (None: it retries)."""
    if outcome not in _KINDS:
        return "not_retryable"
    verdict = _verdict(outcome, "")
    key = Verdict(Failure(outcome)).retry_key
    if key is None or key not in policy.retry.retry_on:
        return "not_retryable"
    if not (idempotent or verdict.never_sent):
        return "not_idempotent"
    if number >= policy.retry.max_attempts:
        return "max_attempts"
    if elapsed + delay >= policy.timeouts.total:
        return "deadline"
    return None


@dataclass(slots=True)
class _Run:
    """One call in one lane."""

    made: list[AttemptRecord] = field(default_factory=list)
    outcome: str = "ok"
    error: str | None = None
    rate_limited: bool = False
    estimated: bool = False


class _Lane:
    """One policy's replay: `config` where it differs from `recorded`, the recording where it agrees."""

    def __init__(self, recorded: ProxyConfig, config: ProxyConfig, rates: AttemptRates) -> None:
        self._recorded = recorded
        self._config = config
        self._rates = rates
        self._clock = SimClock()
        self._resolvers: dict[str, tuple[PolicyResolver | None, PolicyResolver | None]] = {}
        self._affected: dict[str, bool] = {}
        self._breakers: dict[tuple[BreakerConfig, str], Breaker] = {}
        self._buckets: OrderedDict[tuple[RateLimitConfig, str, str], _Bucket] = OrderedDict()
        self._budgets: dict[tuple[str, BudgetConfig], RetryBudget] = {}
        self._stored: dict[tuple[CallKind, str | None], float] = {}
        self._stored_any: dict[CallKind, float] = {}
        """The latest store of any params per call kind: what a failure of unknown params is matched against."""
        self._last: dict[CallKind, str] = {}
        self._carry: dict[tuple[CallKind, int], float] = {}
        self.counts: dict[CallKind, _Counts] = {}

    def _policies(self, record: CallRecord) -> tuple[Policy, Policy] | None:
        pair = self._resolvers.get(record.upstream)
        if pair is None:
            pair = self._resolvers[record.upstream] = (_resolver(self._recorded, record.upstream), _resolver(self._config, record.upstream))
        before, after = pair
        if before is None or after is None:
            return None
        pb, pa = before.resolve(record.method, record.tool), after.resolve(record.method, record.tool)
        if not self._affected.get(record.upstream) and _shaping(pb) != _shaping(pa):
            self._affected[record.upstream] = True  # from this call on: its breaker runs (see the module docstring)
        return pb, pa

    def run(self, record: CallRecord) -> None:
        self._clock.advance_to(record.ts)
        policies = self._policies(record)
        run = _Run(list(record.attempts), record.outcome, record.error, record.rate_limited) if policies is None else self._simulate(record, *policies)
        self._count(record, run)

    def _simulate(self, record: CallRecord, pb: Policy, pa: Policy) -> _Run:
        run = _Run()
        idem_b, idem_a = _idempotent(pb, pb, record), _idempotent(pa, pb, record)
        recorded = record.attempts
        if pa.rate_limit == pb.rate_limit:
            run.rate_limited = record.rate_limited
        else:
            run.rate_limited = pa.rate_limit is not None and not self._admit(pa.rate_limit, record)
        if run.rate_limited:
            return self._fallback(record, pb, pa, idem_a, run, "failed", "rate_limited", identical=record.rate_limited)
        if record.rate_limited or record.outcome == "hit":
            if record.outcome == "hit" and pa.cache == pb.cache:
                run.outcome = "hit"
                return run
            recorded = (_NEVER_SENT,)  # never sent in the recording: estimated below
            run.estimated = True
        self._budget(pa, record.upstream).record_request()
        same_timeouts = pa.timeouts == pb.timeouts
        affected = self._affected.get(record.upstream, False)
        elapsed_a = elapsed_b = 0.0
        number = 0
        while True:
            number += 1
            rec = recorded[number - 1] if number <= len(recorded) else None
            self._clock.advance_to(record.ts + elapsed_a)
            limit_a = min(pa.timeouts.per_try, pa.timeouts.total - elapsed_a)
            if not same_timeouts and limit_a <= 0:
                last = run.made[-1].outcome if run.made else Failure.TIMEOUT.value
                return self._end(record, pb, pa, idem_a, run, last if last != "ok" else Failure.TIMEOUT.value, identical=False)
            breaker = self._breaker(pa, record) if affected else None
            trial: int | None = None
            if affected:
                refused = False
                if breaker is not None:
                    try:
                        trial = breaker.admit(record.client or "")
                    except CircuitOpen:
                        refused = True
            else:
                refused = rec is not None and rec is not _NEVER_SENT and rec.outcome == REFUSED
            if refused:
                run.made.append(AttemptRecord(REFUSED))
                identical = rec is not None and rec is not _NEVER_SENT and rec.outcome == REFUSED and number == len(recorded)
                return self._end(record, pb, pa, idem_a, run, REFUSED, identical)
            if rec is None:
                previous = run.made[-1].outcome if run.made else "ok"
                outcome, latency = self._extra(record.target, number, previous), None
                run.estimated = True
            elif rec is _NEVER_SENT or rec.outcome == REFUSED:
                outcome, latency = self._last.get(record.target, "ok"), None
                run.estimated = True
            else:
                outcome, latency = rec.outcome, rec.latency_ms
                if not same_timeouts and latency is not None:
                    if outcome == Failure.TIMEOUT.value and latency <= limit_a * 1000:
                        outcome = "ok"
                    elif outcome == "ok" and latency > limit_a * 1000:
                        outcome = Failure.TIMEOUT.value
            limit_ms = None
            if outcome == Failure.TIMEOUT.value:
                limit_ms = rec.limit_ms if same_timeouts and rec is not None and rec.limit_ms is not None else limit_a * 1000
            run.made.append(AttemptRecord(outcome, latency, limit_ms))
            if breaker is not None:
                breaker.record(trial, _verdict(outcome, record.method), record.client or "")
            self._last[record.target] = outcome
            elapsed_a += (limit_ms or 0.0) / 1000 if outcome == Failure.TIMEOUT.value else (latency or 0.0) / 1000 if outcome == "ok" else 0.0
            if rec is not None and rec.sent:
                elapsed_b += (rec.limit_ms or 0.0) / 1000 if rec.outcome == Failure.TIMEOUT.value else (rec.latency_ms or 0.0) / 1000 if rec.outcome == "ok" else 0.0
            if outcome == "ok" or outcome not in _KINDS or outcome in _ANSWERED or outcome == Failure.CANCELLED.value:
                identical = rec is not None and outcome == rec.outcome and number == len(recorded)
                return self._end(record, pb, pa, idem_a, run, outcome, identical)
            delay_recorded = rec.delay_ms / 1000 if rec is not None and rec.delay_ms is not None else None
            delay_a = delay_recorded if delay_recorded is not None else backoff_ceiling(pa.retry.backoff, number) / 2
            delay_b = delay_recorded if delay_recorded is not None else backoff_ceiling(pb.retry.backoff, number) / 2
            stop_a = _stop(pa, number, outcome, idem_a, elapsed_a, delay_a)
            same_attempt = rec is not None and rec.outcome == outcome
            if same_attempt and number < len(recorded):  # the recording went on
                go_on = stop_a is None or _stop(pb, number, outcome, idem_b, elapsed_b, delay_b) is not None
                if go_on:
                    self._budget(pa, record.upstream).try_spend()
            elif same_attempt:  # the recording stopped here
                go_on = stop_a is None and _stop(pb, number, outcome, idem_b, elapsed_b, delay_b) is not None
                go_on = go_on and self._budget(pa, record.upstream).try_spend()
            else:
                go_on = stop_a is None and self._budget(pa, record.upstream).try_spend()
            if not go_on:
                identical = same_attempt and number == len(recorded)
                return self._end(record, pb, pa, idem_a, run, outcome, identical)
            elapsed_a += delay_a
            elapsed_b += delay_b

    def _end(self, record: CallRecord, pb: Policy, pa: Policy, idempotent: bool, run: _Run, last: str, identical: bool) -> _Run:
        """The call ended on an attempt whose outcome is `last`; `identical`: as the recording did."""
        if identical and record.outcome != "stale":
            run.outcome, run.error = record.outcome, record.error
        elif last == "ok":
            run.outcome, run.error = "ok", None
        elif last in _ANSWERED:
            run.outcome, run.error = "answered", last
        elif last == Failure.CANCELLED.value:
            run.outcome, run.error = "cancelled", None
        else:
            run.outcome, run.error = "failed", record.error if identical else last
        if run.outcome == "ok" and run.made and pa.cache is not None and idempotent and record.method not in NEVER_CACHED:
            self._stored[(record.target, record.params_hash)] = self._stored_any[record.target] = self._clock.now
        if run.outcome != "failed" and not (identical and record.outcome == "stale"):
            return run
        return self._fallback(record, pb, pa, idempotent, run, "failed", run.error or last, identical)

    def _fallback(self, record: CallRecord, pb: Policy, pa: Policy, idempotent: bool, run: _Run, outcome: str, error: str, identical: bool) -> _Run:
        """A failure the client would hear: answered stale instead, when a stored answer may stand in."""
        run.outcome, run.error = outcome, error
        if record.stale_age is not None:  # the recording proves an entry stored then
            key = (record.target, record.params_hash)
            self._stored[key] = max(self._stored.get(key, float("-inf")), record.ts - record.stale_age)
            self._stored_any[record.target] = max(self._stored_any.get(record.target, float("-inf")), self._stored[key])
        cache = pa.cache
        if identical and cache == pb.cache:
            if record.outcome == "stale":
                run.outcome, run.error = "stale", None
            return run
        if cache is None or not idempotent or record.method in NEVER_CACHED or self._committed(record, run):
            return run
        keeps = cache.ttl + cache.max_stale
        if record.params_hash is not None and self._clock.now - self._stored.get((record.target, record.params_hash), float("-inf")) <= keeps:
            run.outcome, run.error = "stale", None
            return run
        # Unknown params, of the success (a summary's without `ok_params`) or of the failure: optimistic, and an estimate.
        guess = self._stored.get((record.target, None), float("-inf"))
        if record.params_hash is None:
            guess = max(guess, self._stored_any.get(record.target, float("-inf")))
        if self._clock.now - guess <= keeps:
            run.outcome, run.error, run.estimated = "stale", None, True
        return run

    @staticmethod
    def _committed(record: CallRecord, run: _Run) -> bool:
        """The call failed as recorded on an answer already being relayed (`CallRecord.streamed`): the
        fallback stage had let it through, so no stored answer stands in."""
        made, recorded = run.made, record.attempts
        return record.streamed and len(made) == len(recorded) and bool(made) and made[-1].outcome == recorded[-1].outcome

    def _admit(self, config: RateLimitConfig, record: CallRecord) -> bool:
        """The rate limit's decision for `record` (bucket keys as `proxy.policies.ratelimit.bucket_key`)."""
        if config.key == "global":
            key = ("", "")
        elif config.key == "client":
            key = (record.upstream, record.client or "")
        elif config.key == "tool":
            key = (record.upstream, record.tool if record.tool is not None else record.method)
        else:
            key = (record.upstream, "")
        full = (config, *key)
        bucket = self._buckets.get(full)
        if bucket is None:
            bucket = self._buckets[full] = _Bucket(config, self._clock.now)
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(full)
        return bucket.take(self._clock.now, config.max_wait)

    def _breaker(self, policy: Policy, record: CallRecord) -> Breaker | None:
        config = policy.breaker
        if not config.enabled:
            return None
        name = record.upstream if config.scope == "upstream" else f"{record.upstream}/{record.tool or record.method}"
        breaker = self._breakers.get((config, name))
        if breaker is None:
            breaker = self._breakers[(config, name)] = Breaker(record.upstream, name, config, self._clock, judge=upstream_judge)
        return breaker

    def _budget(self, policy: Policy, upstream: str) -> RetryBudget:
        key = (upstream, policy.retry.budget)
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = RetryBudget(policy.retry.budget, self._clock)
        return budget

    def _extra(self, kind: CallKind, number: int, previous: str) -> str:
        """An attempt the recording never made: ok at the recorded rate (fractions carried), else `previous`."""
        key = (kind, number)  # one carry per attempt number: a call's own attempts stay independent
        carry = self._carry.get(key, 0.0) + self._rates.success(kind, number)
        if carry >= 1.0 - 1e-9:
            self._carry[key] = carry - 1.0
            return "ok"
        self._carry[key] = carry
        return previous if previous != "ok" else UNKNOWN

    def _count(self, record: CallRecord, run: _Run) -> None:
        counts = self.counts.get(record.target)
        if counts is None:
            counts = self.counts[record.target] = _Counts()
        counts.calls += 1
        if run.outcome in ("ok", "hit"):
            counts.succeeded += 1
        elif run.outcome == "stale":
            counts.served_stale += 1
        elif run.outcome == "failed":
            counts.errors[run.error or UNKNOWN] += 1
        elif run.outcome == "answered":
            counts.answered += 1
        elif run.outcome == "cancelled":
            counts.cancelled += 1
        counts.attempts += sum(1 for a in run.made if a.sent)
        counts.retries += max(0, len(run.made) - 1)
        counts.timeouts += sum(1 for a in run.made if a.outcome == Failure.TIMEOUT.value)
        counts.breaker_refused += any(a.outcome == REFUSED for a in run.made)
        counts.rate_limited += run.rate_limited
        counts.estimated += run.estimated


def _resolver(config: ProxyConfig, upstream: str) -> PolicyResolver | None:
    try:
        return PolicyResolver(config.upstream(upstream))
    except KeyError:
        return None


def _idempotent(policy: Policy, recorded: Policy, record: CallRecord) -> bool:
    """Safe to repeat under `policy`: its own word, else what the proxy decided when nothing was declared
    (the method, or the tool's trusted annotations), else the method alone."""
    if policy.idempotent is not None:
        return policy.idempotent
    if recorded.idempotent is None and record.idempotent is not None:
        return record.idempotent
    return is_read_method(record.method)


class Simulator:
    """Replays calls under `before` (the recorded policy) and `after` (a candidate), on simulated time.

    `feed` records in time order; `figures` at any moment. `rates` estimate attempts the recording never
    made (`AttemptRates`); without them the simulator learns them from the records fed so far (live).
    """

    def __init__(self, before: ProxyConfig, after: ProxyConfig, *, rates: AttemptRates | None = None) -> None:
        self._learn = rates is None
        self._rates = rates if rates is not None else AttemptRates()
        self._before = _Lane(before, before, self._rates)
        self._after = _Lane(before, after, self._rates)
        self.fed = 0

    def feed(self, record: CallRecord) -> None:
        if self._learn:
            self._rates.add(record)
        self._before.run(record)
        self._after.run(record)
        self.fed += 1

    def figures(self) -> Figures:
        kinds: dict[CallKind, tuple[Tally, Tally]] = {}
        before_all, after_all = Tally(), Tally()
        for kind in sorted(self._before.counts, key=lambda k: (k[0], k[1], k[2] or "")):
            before, after = self._before.counts[kind].tally(), self._after.counts[kind].tally()
            kinds[kind] = (before, after)
            before_all, after_all = before_all + before, after_all + after
        return Figures(before_all, after_all, kinds)


def replay(records: Iterable[CallRecord], before: ProxyConfig, after: ProxyConfig) -> Figures:
    """Replay a recorded window: every record, in time order, with attempt rates taken from the whole window."""
    ordered = sorted(records, key=lambda r: r.ts)
    simulator = Simulator(before, after, rates=AttemptRates.of(ordered))
    for record in ordered:
        simulator.feed(record)
    return simulator.figures()
