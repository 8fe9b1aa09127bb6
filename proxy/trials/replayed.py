"""The shadow trial's evaluator: the trial's own events replayed through the simulator, live config vs candidate.

A trial counts what a candidate would have changed with the same machinery as ``analyze --what-if``: the
events the proxy published during the trial become `CallRecord`s (`proxy.trials.records`) and the
`Simulator` runs them under the live policy and under the candidate (`proxy.trials.simulate`), so a trial's
verdict and a what-if replay of the same window can never disagree about the same calls. The calls are
rebuilt when the figures are asked for (at the end of the trial), not as events arrive: a call's events
come in over several seconds (its `timeout_observed` up to `events.observe_timeouts` after it failed,
its success only in the next `call_ok` summary), and only the whole span says which belong together.

What the simulator does not model (application breakers, fresh hits of a newly ``ttl`` cache) is counted
as ``unmodelled``, which makes a verdict inconclusive (`proxy.trials.shadow.judge`) rather than a guess.
The events kept are bounded (`MAX_TRIAL_EVENTS`); past it the rest are counted as ``dropped_events``, which
also makes the verdict inconclusive.
"""

from __future__ import annotations

from typing import Any, Final

from proxy.config.model import ProxyConfig
from proxy.config.resolve import Policy, PolicyResolver
from proxy.trials.records import CallRecord, records_from_events
from proxy.trials.simulate import replay

__all__ = ["MAX_TRIAL_EVENTS", "ReplayEvaluator", "unmodelled"]

MAX_TRIAL_EVENTS: Final = 200_000
"""Events one trial keeps to replay (about 40 s of a 5,000 events/s failure storm; a trial of ordinary
traffic holds a few thousand). Past it the trial cannot see every call and says so."""


def unmodelled(old: Policy, new: Policy) -> bool:
    """True when `new` changes what the simulator cannot replay: an application breaker, or a cache that
    now answers fresh hits (``ttl`` mode) where it did not."""
    if old.app_breaker != new.app_breaker:
        return True
    return _fresh_hits(new) and not _fresh_hits(old)


def _fresh_hits(policy: Policy) -> bool:
    return policy.cache is not None and policy.cache.mode == "ttl"


class ReplayEvaluator:
    """`proxy.trials.shadow.Evaluator` over the simulator: keeps the trial's events, replays them when asked."""

    def __init__(self, before: ProxyConfig, after: ProxyConfig) -> None:
        self._before = before
        self._after = after
        self._resolvers = ({u.name: PolicyResolver(u) for u in before.upstreams}, {u.name: PolicyResolver(u) for u in after.upstreams})
        self._events: list[dict[str, Any]] = []
        self._dropped = 0

    def feed(self, event: dict[str, Any]) -> None:
        if len(self._events) < MAX_TRIAL_EVENTS:
            self._events.append(event)
        else:
            self._dropped += 1

    def _unmodelled(self, record: CallRecord) -> bool:
        before, after = (resolvers.get(record.upstream) for resolvers in self._resolvers)
        if before is None or after is None:
            return False
        return unmodelled(before.resolve(record.method, record.tool), after.resolve(record.method, record.tool))

    def figures(self) -> dict[str, int | float]:
        """``calls``, ``errors_before``/``errors_after`` (what `judge` reads), ``unmodelled``, ``dropped_events``,
        and every other scalar of the replay as ``<figure>_before``/``<figure>_after``."""
        records = records_from_events(self._events)
        figures = replay(records, self._before, self._after)
        measured: dict[str, int | float] = {
            "calls": figures.before.calls,
            "errors_before": figures.before.errors,
            "errors_after": figures.after.errors,
            "unmodelled": sum(1 for record in records if self._unmodelled(record)),
        }
        if self._dropped:
            measured["dropped_events"] = self._dropped
        for name in ("succeeded", "served_stale", "attempts", "retries", "timeouts", "breaker_refused", "rate_limited", "estimated"):
            measured[f"{name}_before"] = getattr(figures.before, name)
            measured[f"{name}_after"] = getattr(figures.after, name)
        return measured
