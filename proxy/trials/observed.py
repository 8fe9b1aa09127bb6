"""The fallback evaluator: what a candidate's timeouts or fewer attempts would have changed, from events alone.

It answers only what the proxy's own events show without replaying anything:

- a **longer** ``timeouts.per_try`` (or ``total``): a failed call one of whose timed-out attempts was
  observed answering (`timeout_observed.observed_ms`) within the candidate's limits would have succeeded;
- a **shorter** one: a successful call whose latency (the `call_ok` histogram) lies wholly above the
  candidate's limit would have failed (a bucket counts only when its lower bound is at or above it);
- **fewer** ``retry.max_attempts``: a call that succeeded on an attempt past the candidate's count
  (`call_ok.ok_by_attempt`) would have failed.

Calls whose effective policy the candidate changes in any other way (more attempts, a breaker, a cache,
a rate limit, ...) are counted as `unmodelled`: this evaluator cannot tell what would have happened to
them, and a trial with any is inconclusive (`proxy.trials.shadow.judge`). A full simulator replaces it
where one is plugged in (`TrialManager(factory=...)`).
"""

from __future__ import annotations

from typing import Any, Final

from proxy.config.model import ProxyConfig
from proxy.config.resolve import Policy, PolicyResolver
from proxy.events.envelope import LATENCY_BUCKETS_MS

__all__ = ["MAX_TRACKED_CALLS", "ObservedEvaluator"]

MAX_TRACKED_CALLS: Final = 50_000
"""Failed calls (and timed-out calls) a trial remembers by call id; past it, a failure counts as one the
candidate would not have changed."""

_Kind = tuple[str, str, str | None]


def modelled(old: Policy, new: Policy) -> bool:
    """True when `new` differs from `old` at most in per_try, total, or a lower max_attempts."""
    if new.retry.max_attempts > old.retry.max_attempts:
        return False
    same_retry = new.retry.model_copy(update={"max_attempts": old.retry.max_attempts}) == old.retry
    same_timeouts = new.timeouts.model_copy(update={"per_try": old.timeouts.per_try, "total": old.timeouts.total}) == old.timeouts
    rest = (old.breaker, old.rate_limit, old.cache, old.idempotent, old.app_breaker)
    return same_retry and same_timeouts and rest == (new.breaker, new.rate_limit, new.cache, new.idempotent, new.app_breaker)


class ObservedEvaluator:
    """Counts, from the events of a trial, the client-visible errors under the live and the candidate config."""

    def __init__(self, before: ProxyConfig, after: ProxyConfig) -> None:
        self._before = {u.name: PolicyResolver(u) for u in before.upstreams}
        self._after = {u.name: PolicyResolver(u) for u in after.upstreams}
        self._policies: dict[_Kind, tuple[Policy, Policy] | None] = {}
        self._failed: dict[int, _Kind] = {}
        self._observed: dict[int, float] = {}
        """Per call id: the shortest time in which one of its timed-out attempts was seen answering (ms)."""
        self.calls = self.ok = self.broken = self.unmodelled = self.observed = 0

    def _pair(self, event: dict[str, Any]) -> tuple[Policy, Policy] | None:
        kind: _Kind = (str(event.get("upstream")), str(event.get("method")), event.get("tool"))
        if kind not in self._policies:
            before, after = self._before.get(kind[0]), self._after.get(kind[0])
            pair = None if before is None or after is None else (before.resolve(kind[1], kind[2]), after.resolve(kind[1], kind[2]))
            self._policies[kind] = pair
        return self._policies[kind]

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "call_ok":
            self._summary(event)
        elif kind == "call_failed" and len(self._failed) < MAX_TRACKED_CALLS:
            self._failed[int(event["call_id"])] = (str(event["upstream"]), str(event["method"]), event.get("tool"))
        elif kind == "timeout_observed" and event.get("observed_ms") is not None:
            self.observed += 1
            call_id = int(event["call_id"])
            if call_id in self._observed or len(self._observed) < MAX_TRACKED_CALLS:
                self._observed[call_id] = min(float(event["observed_ms"]), self._observed.get(call_id, float("inf")))

    def _summary(self, event: dict[str, Any]) -> None:
        calls, ok = int(event["calls"]), int(event["ok"])
        self.calls += calls
        self.ok += ok
        pair = self._pair(event)
        if pair is None:
            return
        old, new = pair
        if not modelled(old, new):
            self.unmodelled += calls
            return
        by_attempt = event.get("ok_by_attempt") or {}
        lost = sum(int(n) for attempt, n in by_attempt.items() if int(attempt) > new.retry.max_attempts)
        limit_ms = min(new.timeouts.per_try, new.timeouts.total) * 1000
        if limit_ms < min(old.timeouts.per_try, old.timeouts.total) * 1000:
            bounds = event.get("latency_buckets_ms") or list(LATENCY_BUCKETS_MS)
            histogram = event.get("latency_histogram") or []
            lower = [0.0, *bounds]
            lost = max(lost, sum(int(n) for low, n in zip(lower, histogram, strict=False) if low >= limit_ms))
        self.broken += min(lost, ok)

    def _rescued(self) -> int:
        rescued = 0
        for call_id, kind in self._failed.items():
            seen = self._observed.get(call_id)
            pair = self._pair({"upstream": kind[0], "method": kind[1], "tool": kind[2]})
            if seen is None or pair is None or not modelled(*pair):
                continue
            old, new = pair
            limit_ms = min(new.timeouts.per_try, new.timeouts.total) * 1000
            if limit_ms > min(old.timeouts.per_try, old.timeouts.total) * 1000 and seen <= limit_ms:
                rescued += 1
        return rescued

    def figures(self) -> dict[str, int | float]:
        errors = self.calls - self.ok
        rescued = min(self._rescued(), errors)
        return {
            "calls": self.calls,
            "errors_before": errors,
            "errors_after": errors - rescued + self.broken,
            "rescued": rescued,
            "broken": self.broken,
            "unmodelled": self.unmodelled,
            "timeouts_observed": self.observed,
        }
