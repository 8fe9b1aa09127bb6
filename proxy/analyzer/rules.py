"""The call-level rules: per-try timeouts, retry attempts, cached fallback. One small function each.

Every rule has the signature ``(analysis, config) -> list[Proposal]``, needs an explicit minimum of
evidence (the module constants), and stays silent on healthy traffic. A rule only proposes; the engine
then edits the file, validates the result and drops anything that would retry a call the events do not
call idempotent. Upstream-wide rules are in `rules_upstream.py`; `engine.RULES` lists them all.
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.proposal import Change, Effect, Proposal, confidence
from proxy.analyzer.scope import scope_for, window_evidence
from proxy.analyzer.stats import format_duration, nice_duration, percentile
from proxy.config.model import ProxyConfig

__all__ = ["Rule", "cache_fallback", "cache_max_stale", "retries_fewer", "retries_more", "timeouts"]

Rule = Callable[[Analysis, ProxyConfig], list[Proposal]]

MIN_TIMEOUTS = 20
"""Timed-out attempts of one target before a per-try change is considered."""
MIN_OBSERVED_SHARE = 0.5
"""At least this share of them must have been observed finishing (else raising the limit is a guess)."""
SHORTLY_PAST = 3.0
"""The observed p95 must be within this many times the current limit: slow, not stuck."""
HEADROOM = 1.2
HARD_CAP_S = 300.0
MIN_EXHAUSTED = 20
"""Calls that ran out of attempts with no retry ever succeeding, before fewer attempts are proposed."""
MIN_LAST_ATTEMPT_OK = 20
"""Successes on the last allowed attempt before more attempts are proposed."""
MIN_EXHAUSTED_FOR_MORE = 10
MAX_ATTEMPTS_CAP = 6
MIN_FAILED_IDEMPOTENT = 20
"""Failed idempotent calls with no stored answer before cached fallback is proposed."""
MIN_STALE_SERVES = 5
MIN_FAILED_AFTER_STALE = 20
MAX_STALE_CAP_S = 3600.0


def timeouts(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
    """Attempts time out, yet finish shortly past the limit: raise per_try to p95 x 1.2 of when they finished.

    The basis is the would-be latencies of the timed-out attempts (`timeout_observed`), and never less
    than the p99 of successful calls: successes are below the current limit by construction, so they
    only bound the value from below. Timed-out attempts nobody observed count as not completing.
    """
    proposals = []
    for stats in analysis.all_targets():
        observed, n = stats.observed_ms, stats.timeouts
        if n < MIN_TIMEOUTS or len(observed) < MIN_OBSERVED_SHARE * n:
            continue
        scoped = scope_for(config, stats.target)
        if scoped is None:
            continue
        match, policy = scoped
        limit_s, p95 = policy.timeouts.per_try, percentile(observed, 0.95) or 0.0
        if p95 > SHORTLY_PAST * limit_s * 1000:
            continue
        new_s = nice_duration(max(p95, stats.latency(0.99) or 0.0) * HEADROOM / 1000, cap=HARD_CAP_S)
        if new_s <= limit_s:
            continue
        new = format_duration(new_s)
        changes = [Change(stats.target.upstream, match, "timeouts.per_try", new, format_duration(limit_s))]
        if new_s > policy.timeouts.total:
            total = max(new_s, nice_duration(2 * new_s, cap=HARD_CAP_S))
            changes.append(Change(stats.target.upstream, match, "timeouts.total", format_duration(total), format_duration(policy.timeouts.total)))
        completed = sum(1 for ms in observed if ms <= new_s * 1000)
        percent = round(100 * completed / n)
        level, why = confidence(n, MIN_TIMEOUTS, "timed-out attempts")
        proposals.append(Proposal(
            rule="timeouts", target=stats.target.label,
            title=f"Raise per_try for {stats.target.label} from {format_duration(limit_s)} to {new}",
            rationale=(
                f"{n} attempts of {stats.target.label} hit the {format_duration(limit_s)} per-try timeout, and "
                f"{len(observed)} of them were seen answering shortly after (p95 {p95:.0f} ms). They were slow, not "
                f"stuck: the proxy gave up on answers that were about to arrive, and retried or failed them."
            ),
            evidence=window_evidence(
                analysis, stats.timeout_ids[:3] + stats.observed_ids[:2], timeouts=n, observed=len(observed),
                unobserved=n - len(observed), observed_p50_ms=round(percentile(observed, 0.5) or 0.0, 1),
                observed_p95_ms=round(p95, 1), ok=stats.ok, ok_p99_ms=_round(stats.latency(0.99)), policy=policy.rule,
            ),
            effect=Effect(
                f"with per_try {new}, {percent}% of the {n} timed-out attempts would have completed "
                f"({completed} of {n}; the others took longer or were not observed)",
                {"timed_out": n, "would_complete": completed, "percent": percent, "new_per_try_s": new_s},
            ),
            confidence=level, confidence_reason=why, changes=tuple(changes),
        ))  # fmt: skip
    return proposals


def retries_fewer(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
    """Retries that never succeed only add load to a failing upstream: fewer attempts, same answers."""
    proposals = []
    for stats in analysis.all_targets():
        n = stats.exhausted["max_attempts"]
        late_ok = stats.ok_after_retry
        if n < MIN_EXHAUSTED or stats.recovered_calls or late_ok:
            continue
        scoped = scope_for(config, stats.target)
        if scoped is None or scoped[1].retry.max_attempts <= 1:
            continue
        match, policy = scoped
        old = policy.retry.max_attempts
        new = 1 if old == 2 else max(2, old // 2)  # keep one retry for blips, unless that is all there was
        made = sum(attempts - 1 for attempts in stats.exhausted_attempts)
        saved = sum(attempts - min(attempts, new) for attempts in stats.exhausted_attempts)
        level, why = confidence(n, MIN_EXHAUSTED, "calls that ran out of attempts with no retry ever succeeding")
        proposals.append(Proposal(
            rule="retries_fewer", target=stats.target.label,
            title=f"Lower max_attempts for {stats.target.label} from {old} to {new}",
            rationale=(
                f"{n} calls of {stats.target.label} used all {old} attempts and failed anyway, and not one retried "
                f"call succeeded in the window. These retries only add load to an upstream that is already failing."
            ),
            evidence=window_evidence(
                analysis, stats.exhausted_ids, exhausted=n, retries=stats.retries, retried_calls=len(stats.retried_calls),
                recovered_calls=0, ok_after_retry=0, policy=policy.rule,
            ),
            effect=Effect(
                f"the {n} exhausted calls made {made} retries, none successful; with max_attempts {new}, "
                f"{saved} of those attempts would not have been sent, with the same answers to clients",
                {"exhausted": n, "retries_made": made, "attempts_saved": saved},
            ),
            confidence=level, confidence_reason=why,
            changes=(Change(stats.target.upstream, match, "retry.max_attempts", new, old),),
        ))  # fmt: skip
    return proposals


def retries_more(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
    """Successes pile up on the last allowed attempt while other calls run out: one or two more attempts.

    +2 when successes do not thin out from one attempt to the next, else +1; never past 6, and never
    while the retry budget refused retries in the window (more attempts would only hit the budget).
    """
    proposals = []
    for stats in analysis.all_targets():
        scoped = scope_for(config, stats.target)
        if scoped is None:
            continue
        match, policy = scoped
        old = policy.retry.max_attempts
        last, exhausted = stats.ok_by_attempt[old], stats.exhausted["max_attempts"]
        late_ok = stats.ok_after_retry
        if old < 2 or old >= MAX_ATTEMPTS_CAP or last < MIN_LAST_ATTEMPT_OK or last < 0.5 * late_ok:
            continue
        if exhausted < MIN_EXHAUSTED_FOR_MORE or analysis.upstream(stats.target.upstream).budget_exhausted:
            continue
        new = min(MAX_ATTEMPTS_CAP, old + (2 if last >= stats.ok_by_attempt[old - 1] else 1))
        p_last = last / (last + exhausted)
        rescued = round(exhausted * (1 - (1 - p_last) ** (new - old)))
        budget = policy.retry.budget
        level, why = confidence(last, MIN_LAST_ATTEMPT_OK, "successes on the last allowed attempt")
        proposals.append(Proposal(
            rule="retries_more", target=stats.target.label,
            title=f"Raise max_attempts for {stats.target.label} from {old} to {new}",
            rationale=(
                f"{last} of the {late_ok} calls of {stats.target.label} that succeeded after a retry did so on the last "
                f"allowed attempt ({old}), while {exhausted} calls ran out of attempts: the upstream recovers, just "
                f"later than the retries last. Retries stay bounded by the retry budget (ratio {budget.ratio:g} of "
                f"requests over {format_duration(budget.window)}, plus {budget.min_per_second:g}/s), which refused "
                f"none in this window."
            ),
            evidence=window_evidence(
                analysis, stats.exhausted_ids, ok_by_attempt={str(k): v for k, v in sorted(stats.ok_by_attempt.items())},
                exhausted=exhausted, retries=stats.retries, policy=policy.rule,
            ),
            effect=Effect(
                f"if each extra attempt succeeds as often as attempt {old} did ({p_last:.0%}), about {rescued} of the "
                f"{exhausted} exhausted calls would have succeeded with max_attempts {new}",
                {"exhausted": exhausted, "would_succeed": rescued, "last_attempt_success": round(p_last, 3)},
            ),
            confidence=level, confidence_reason=why,
            changes=(Change(stats.target.upstream, match, "retry.max_attempts", new, old),),
        ))  # fmt: skip
    return proposals


def cache_fallback(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
    """Idempotent calls failed with no stored answer to stand in: enable cache mode fallback for them."""
    proposals = []
    for stats in analysis.all_targets():
        failed = stats.idempotent_failures()
        if stats.target.method in ("initialize", "ping") or stats.idempotent is not True:
            continue
        if len(failed) < MIN_FAILED_IDEMPOTENT or stats.ok == 0:
            continue
        scoped = scope_for(config, stats.target)
        if scoped is None or scoped[1].cache is not None:
            continue
        match, policy = scoped
        distinct = len({f.params_hash for f in failed})
        level, why = confidence(len(failed), MIN_FAILED_IDEMPOTENT, "failed idempotent calls with no fallback")
        proposals.append(Proposal(
            rule="cache_fallback", target=stats.target.label,
            title=f"Enable cached fallback for {stats.target.label}",
            rationale=(
                f"{len(failed)} idempotent calls of {stats.target.label} failed and the cache is off, so no stored "
                f"answer could stand in. The same calls succeeded {stats.ok} times in the window: answers existed."
            ),
            evidence=window_evidence(
                analysis, [f.id for f in failed], failed=len(failed), distinct_params=distinct, ok=stats.ok,
                failure_kinds=dict(sorted(stats.failures.items())), policy=policy.rule,
            ),
            effect=Effect(
                f"{len(failed)} failed calls ({distinct} distinct params) would have been answered from a stored "
                f"answer (marked stale) wherever the same params had succeeded within the previous 5m",
                {"failed": len(failed), "distinct_params": distinct},
            ),
            confidence=level, confidence_reason=why,
            changes=(Change(stats.target.upstream, match, "cache.mode", "fallback", None),),
        ))  # fmt: skip
    return proposals


def cache_max_stale(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
    """Stale answers ran out (max_stale) mid-outage and failures followed: double max_stale.

    Only when the extension would have covered some of those failures: failures within the extra time
    after the last stale serve.
    """
    proposals = []
    for stats in analysis.all_targets():
        if len(stats.stale_ts) < MIN_STALE_SERVES:
            continue
        scoped = scope_for(config, stats.target)
        if scoped is None or scoped[1].cache is None:
            continue
        match, policy = scoped
        assert policy.cache is not None
        old, stopped = policy.cache.max_stale, max(stats.stale_ts)
        after = [f for f in stats.idempotent_failures() if f.ts > stopped]
        new = nice_duration(2 * old, cap=MAX_STALE_CAP_S)
        if len(after) < MIN_FAILED_AFTER_STALE or stats.stale_max_age < 0.8 * old or new <= old:
            continue
        covered = sum(1 for f in after if f.ts <= stopped + (new - old))
        if covered == 0:
            continue
        level, why = confidence(len(after), MIN_FAILED_AFTER_STALE, "failures after stale answers ran out")
        proposals.append(Proposal(
            rule="cache_max_stale", target=stats.target.label,
            title=f"Extend max_stale for {stats.target.label} from {format_duration(old)} to {format_duration(new)}",
            rationale=(
                f"Stale answers stood in for {len(stats.stale_ts)} failures of {stats.target.label} until they were "
                f"{stats.stale_max_age:.0f}s old (max_stale {format_duration(old)}); then {len(after)} calls failed "
                f"outright while the outage went on."
            ),
            evidence=window_evidence(
                analysis, stats.stale_ids[-2:] + [f.id for f in after][:3], stale_served=len(stats.stale_ts),
                stale_max_age_s=round(stats.stale_max_age, 1), failed_after=len(after), policy=policy.rule,
            ),
            effect=Effect(
                f"{covered} of the {len(after)} calls that failed after stale answers ran out came within the extra "
                f"{format_duration(new - old)} and could have been answered stale",
                {"failed_after": len(after), "would_be_served": covered},
            ),
            confidence=level, confidence_reason=why,
            changes=(Change(stats.target.upstream, match, "cache.max_stale", format_duration(new), format_duration(old)),),
        ))  # fmt: skip
    return proposals


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
