"""The call-level rules: per-try timeouts, retry attempts, cached fallback, declared-safe tools. One small function each.

Every rule has the signature ``(analysis, config) -> list[Proposal]`` and decides with a stated
confidence instead of a minimum count: the proportion that matters to it (timed-out attempts that would
complete, retried calls that recovered, calls that failed) must pass its threshold as a one-sided 95%
Wilson bound (`stats.Share`), and the problem must be material: the share of the target's calls it hurt
must be at least `MATERIAL` by its 95% lower bound, so a few failures among thousands of healthy calls
never trigger. Both statistics go into the proposal (`Proposal.statistics`). A rule only proposes; the
engine then edits the file, validates the result and drops anything that would retry a call the events
do not show as safe to retry. Upstream-wide rules are in `rules_upstream.py`; `engine.RULES` lists them all.

Failures are read in one vocabulary (`model`): `SERVER_SIDE` and `RETRYABLE` are the upstream's failures
as a server, `UPSTREAM_FAILED` adds what clients heard because of them (429, a breaker or the budget
refusing), and `CLIENTS_OWN` never counts against the upstream. When the proxy's own protection hides
evidence (a breaker opened by timeouts refuses the calls that would have timed out too), the refusals are
attributed to the failures that opened it (`caused_by`, from the breakers' openings) and the rule for
the cause acts: `timeouts` counts them.

Cause before symptom. A rule that fixes a cause states which client-visible failures its change is
expected to remove (`Proposal.addresses`, ids of `call_failed` events) and which breaker openings it
prevents (`Proposal.addresses_openings`). The engine runs the rules in `engine.RULES` order and hands
each the union of what the proposals kept so far address (`Addressed`): the symptom rules
(`cache_fallback`, `cache_max_stale`), which run last, leave those failures out, so a stale answer never
stands in for failures one more attempt, a longer timeout, a proxy-side rate limit or a breaker of the
tool's own would remove; they speak on what remains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.model import CLIENTS_OWN, RETRYABLE, FailedCall, Opening, Target, TargetStats
from proxy.analyzer.proposal import NOTHING, Addressed, Change, Effect, Match, Proposal, decided
from proxy.analyzer.scope import scope_for, upstream_config, window_evidence
from proxy.analyzer.stats import Share, format_duration, nice_duration, percentile
from proxy.config.model import ProxyConfig
from proxy.config.policies import CacheConfig
from proxy.config.resolve import Policy

__all__ = [
    "MATERIAL", "Rule", "TimeoutFix", "cache_fallback", "cache_max_stale", "caused_by", "declared_idempotent",
    "retries_fewer", "per_try_decision", "retries_more", "timeout_fix", "timeout_fixes", "timeouts",
]  # fmt: skip

Rule = Callable[[Analysis, ProxyConfig, Addressed], list[Proposal]]
"""A rule: the window, the config, and what the proposals kept before it address (`Addressed`) -> its
proposals. Every rule takes the third argument (``= NOTHING`` when called on its own); the cause rules
that need none ignore it."""

MATERIAL = 0.01
"""The share of a target's calls a problem must hurt, by its 95% lower bound, before a change is worth
proposing: 1 in 100. 2 timeouts among 2,000 healthy calls (lower bound 0.03%) never qualify."""
COMPLETE_SHARE = 0.5
"""Timed-out attempts that would complete under the proposed per_try: more likely than not, at 95%
(8 of 8 observed gives 74.7%; 10 of 20, the rest never answering, gives 32.7%: ambiguous, no change)."""
SHORTLY_PAST = 3.0
"""The observed p95 must be within this many times the current limit: slow, not stuck."""
HEADROOM = 1.2
HARD_CAP_S = 300.0
RECOVERY_CEILING = 0.15
"""retries_fewer: retried calls that recovered, at most this share by the 95% upper bound (none of 16+)."""
LAST_ATTEMPT_SUCCESS = 0.25
"""retries_more: calls reaching the last attempt that succeeded on it, at least this share (95% lower bound):
one more attempt would rescue at least 1 in 4 of the calls that run out."""
MAX_ATTEMPTS_CAP = 6
MAX_STALE_CAP_S = 3600.0


def _material(what: str, hurt: int, calls: int) -> Share:
    return Share(what, min(hurt, calls), calls, "lower", MATERIAL)


@dataclass(frozen=True, slots=True)
class TimeoutFix:
    """What the timeouts rule would change for one target, and the evidence it decided on."""

    stats: TargetStats
    match: Match
    policy: Policy
    new_s: float
    completed: int
    p95: float
    refused: list[tuple[Target, FailedCall]]
    openings: list[Opening]
    completes: Share
    material: Share
    addresses: frozenset[int]
    """The failures a longer per_try removes (`caused_by` the target's timeouts)."""


def caused_by(analysis: Analysis, targets: Iterable[TargetStats], kinds: frozenset[str] | set[str]) -> tuple[frozenset[int], list[Opening]]:
    """(the ids of the client-visible failures, the breaker openings) that the failures of `kinds` of
    `targets` account for: those failures themselves, the calls whose retry the retry budget refused
    after one of them, and every call (of any target) refused by a breaker such failures opened (an
    opening's cause, `Opening.cause`: its run-up's most frequent target and that target's most frequent
    kind). What a proposal fixing those failures addresses (`Proposal.addresses`)."""
    listed = list(targets)
    mine = {stats.target for stats in listed}
    ids: set[int] = set()
    for stats in listed:
        for failed in stats.failed:
            refused_retry = failed.kind == "retry_budget_exhausted" and stats.budget_failures.get(failed.call_id or "") in kinds
            if failed.kind in kinds or refused_retry:
                ids.add(failed.id)
    openings = [o for o in analysis.openings() if o.cause[0] in mine and o.cause[1] in kinds]
    ids.update(failed.id for opening in openings for _, failed in opening.refused)
    return frozenset(ids), openings


def per_try_decision(observed: list[float], timeouts: int, limit_s: float, ok_p99_ms: float | None = None) -> tuple[float, Share] | None:
    """(the per_try to propose, the share of the `timeouts` timed-out attempts that would complete under
    it) when that share passes `COMPLETE_SHARE`, from the would-be latencies `observed` (ms) against the
    current `limit_s`; None when the attempts look stuck (observed p95 past `SHORTLY_PAST` x the limit),
    the new value would be no higher, or the share is not conclusive. Materiality is the caller's."""
    p95 = percentile(observed, 0.95)
    if not timeouts or p95 is None or p95 > SHORTLY_PAST * limit_s * 1000:
        return None
    new_s = nice_duration(max(p95, ok_p99_ms or 0.0) * HEADROOM / 1000, cap=HARD_CAP_S)
    if new_s <= limit_s:
        return None
    completed = min(timeouts, sum(1 for ms in observed if ms <= new_s * 1000))  # observations of timeouts before the window
    completes = Share("timed-out attempts that would complete", completed, timeouts, "lower", COMPLETE_SHARE)
    return (new_s, completes) if completes.holds() else None


def timeout_fix(analysis: Analysis, config: ProxyConfig, stats: TargetStats) -> TimeoutFix | None:
    """The per-try change `stats`'s timeouts call for, or None (no evidence, ambiguous, or immaterial).

    The new value is p95 x 1.2 of when the timed-out attempts were observed answering, never less than
    the p99 of successful calls (successes are below the current limit by construction, so they only
    bound it from below). It is proposed when the share of timed-out attempts that would complete under
    it passes `COMPLETE_SHARE` (95% lower bound; attempts nobody saw answer count as not completing)
    and the calls hurt, timed out or refused by a breaker these timeouts opened, are `MATERIAL`.
    """
    scoped = scope_for(config, stats.target) if stats.timeouts and stats.observed_ms else None
    if scoped is None:
        return None
    match, policy = scoped
    # An attempt seen answering within today's limit would not time out today: it timed out under an
    # older, shorter one (a recording, or late observations, spanning a change). It is no evidence for
    # raising today's limit, and counting it would put more completions than timeouts in the share.
    observed = [ms for ms in stats.observed_ms if ms > policy.timeouts.per_try * 1000]
    n = max(0, stats.timeouts - (len(stats.observed_ms) - len(observed)))
    if not n or not observed:
        return None
    decision = per_try_decision(observed, n, policy.timeouts.per_try, stats.latency(0.99))
    if decision is None:
        return None
    new_s, completes = decision
    completed, p95 = completes.k, percentile(observed, 0.95) or 0.0
    addresses, openings = caused_by(analysis, [stats], {"timeout"})
    refused = [refusal for o in openings for refusal in o.refused]
    own = sum(1 for target, _ in refused if target == stats.target)
    calls = max(stats.total_calls, stats.ok + n + own) + len(refused) - own
    material = _material("calls hurt (timed out, or refused by the breaker the timeouts opened)", n + len(refused), calls)
    if not material.holds():
        return None
    return TimeoutFix(stats, match, policy, new_s, completed, p95, refused, openings, completes, material, addresses)


def timeout_fixes(analysis: Analysis, config: ProxyConfig) -> list[TimeoutFix]:
    return [fix for stats in analysis.all_targets() if (fix := timeout_fix(analysis, config, stats)) is not None]


def timeouts(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """Attempts time out, yet finish shortly past the limit: raise per_try to when they finished (`timeout_fix`).

    Idempotent or not: a non-idempotent call that timed out was executed by the upstream all the same
    (it was observed answering); its client heard a timeout and the proxy never retries it, so a longer
    per_try is the one change that gets it its answer. This rule never touches retries. It addresses
    the target's timeouts, the retries the budget refused after one, and the refusals of the breakers
    they opened (and those openings): `caused_by`.
    """
    proposals = []
    for fix in timeout_fixes(analysis, config):
        stats, policy, n = fix.stats, fix.policy, fix.completes.n  # the timeouts under today's limit (`timeout_fix`)
        label, limit_s, new_s, new = stats.target.label, policy.timeouts.per_try, fix.new_s, format_duration(fix.new_s)
        observed = [ms for ms in stats.observed_ms if ms > limit_s * 1000][:n]  # never more than the timeouts
        changes = [Change(stats.target.upstream, fix.match, "timeouts.per_try", new, format_duration(limit_s))]
        if new_s > policy.timeouts.total:
            total = max(new_s, nice_duration(2 * new_s, cap=HARD_CAP_S))
            changes.append(Change(stats.target.upstream, fix.match, "timeouts.total", format_duration(total), format_duration(policy.timeouts.total)))
        percent = round(100 * fix.completed / n)
        refused = len(fix.refused)
        rationale = (
            f"{n} attempts of {label} hit the {format_duration(limit_s)} per-try timeout, and "
            f"{len(observed)} of them were seen answering shortly after (p95 {fix.p95:.0f} ms). They were slow, not "
            f"stuck: the proxy gave up on answers that were about to arrive"
            + (", and retried or failed them." if stats.idempotent is not False else ", and failed them.")
        )
        if stats.idempotent is False:
            rationale += (
                f" These calls are not idempotent: the upstream executed them ({len(observed)} were observed answering) "
                f"while their clients were told they timed out, and a retry would run them twice. A longer per_try "
                f"lets the client get the answer the upstream produced."
            )
        if refused:
            breakers = sorted({o.breaker for o in fix.openings})
            rationale += (
                f" These timeouts opened the breaker {', '.join(breakers)} {len(fix.openings)} time(s), and it refused "
                f"{refused} more calls: the refusals hid how many calls were slow, they are the same problem."
            )
        effect = f"with per_try {new}, {percent}% of the {n} timed-out attempts would have completed ({fix.completed} of {n}; the others took longer or were not observed)"
        if refused:
            effect += f"; the {refused} calls refused by the breaker these timeouts opened would have been served"
        level, why = decided(fix.completes, fix.material)
        proposals.append(Proposal(
            rule="timeouts", target=label, title=f"Raise per_try for {label} from {format_duration(limit_s)} to {new}",
            rationale=rationale,
            evidence=window_evidence(
                analysis, stats.timeout_ids[:3] + stats.observed_ids[:2], timeouts=n, observed=len(observed),
                unobserved=n - len(observed), observed_p50_ms=round(percentile(observed, 0.5) or 0.0, 1),
                observed_p95_ms=round(fix.p95, 1), ok=stats.ok, ok_p99_ms=_round(stats.latency(0.99)),
                idempotent=stats.idempotent, refused_by_breaker=refused, breaker_openings=len(fix.openings),
                policy=policy.rule,
            ),
            effect=Effect(effect, {
                "timed_out": n, "would_complete": fix.completed, "percent": percent, "new_per_try_s": new_s,
                "refused_by_breaker": refused,
            }),
            confidence=level, confidence_reason=why, changes=tuple(changes), statistics=(fix.completes, fix.material),
            addresses=fix.addresses, addresses_openings=frozenset(o.id for o in fix.openings),
        ))  # fmt: skip
    return proposals


def _exhausted(stats: TargetStats) -> int:
    """Calls that used every attempt and failed, on anything but the client's own doing (`CLIENTS_OWN`):
    upstream failures, and the application errors an operator chose to retry (``retry_on``)."""
    return sum(count for kind, count in stats.exhausted_by_kind.items() if kind not in CLIENTS_OWN)


def retries_fewer(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """Retries that (almost) never succeed only add load to a failing upstream: fewer attempts.

    Decided on the retried calls that recovered: at most `RECOVERY_CEILING` of them by the 95% upper
    bound, while the calls that used every attempt and failed anyway are `MATERIAL`; and never when a
    call in the window succeeded on an attempt the new count would not send (one client's requests that
    always fail must not take away the retries that answer everyone else). It addresses no failure: the
    same calls fail, with fewer attempts sent (a cached fallback may still stand in).
    """
    proposals = []
    for stats in analysis.all_targets():
        n = _exhausted(stats)
        if n == 0:
            continue
        scoped = scope_for(config, stats.target)
        if scoped is None or scoped[1].retry.max_attempts <= 1:
            continue
        match, policy = scoped
        recovered = max(stats.recovered_calls, stats.ok_after_retry)
        helps = Share("retried calls that recovered", recovered, n + recovered, "upper", RECOVERY_CEILING)
        material = _material("calls that used every attempt and failed", n, stats.total_calls)
        if not (helps.holds() and material.holds()):
            continue
        old = policy.retry.max_attempts
        new = 1 if old == 2 else max(2, old // 2)  # keep one retry for blips, unless that is all there was
        made = sum(attempts - 1 for attempts in stats.exhausted_attempts)
        saved = sum(attempts - min(attempts, new) for attempts in stats.exhausted_attempts)
        lost = sum(count for attempt, count in stats.ok_by_attempt.items() if attempt > new)
        if lost:
            continue  # it would turn calls that succeeded into failures: fewer attempts must cost no client an answer
        answers = "with the same answers to clients"
        level, why = decided(helps, material)
        proposals.append(Proposal(
            rule="retries_fewer", target=stats.target.label,
            title=f"Lower max_attempts for {stats.target.label} from {old} to {new}",
            rationale=(
                f"{n} calls of {stats.target.label} used all {old} attempts and failed anyway, and {recovered} retried "
                f"call(s) succeeded in the window. These retries mostly add load to an upstream that is already failing."
            ),
            evidence=window_evidence(
                analysis, stats.exhausted_ids, exhausted=n, retries=stats.retries, retried_calls=len(stats.retried_calls),
                recovered_calls=stats.recovered_calls, ok_after_retry=stats.ok_after_retry, policy=policy.rule,
            ),
            effect=Effect(
                f"the {n} exhausted calls made {made} retries{', none successful' if not recovered else ''}; with max_attempts {new}, "
                f"{saved} of those attempts would not have been sent, {answers}",
                {"exhausted": n, "retries_made": made, "attempts_saved": saved, "lost_recoveries": lost},
            ),
            confidence=level, confidence_reason=why, statistics=(helps, material),
            changes=(Change(stats.target.upstream, match, "retry.max_attempts", new, old),),
        ))  # fmt: skip
    return proposals


def _ran_out(stats: TargetStats) -> frozenset[int]:
    """The client-visible failures of `stats`'s calls that used every attempt (`_exhausted`): per failure
    kind, as many of its failed calls as ran out of attempts on that kind, retried calls first (a call's
    `retry_exhausted` and its `call_failed` share the call id, which the window keeps only as retried)."""
    ids: set[int] = set()
    for kind, count in stats.exhausted_by_kind.items():
        if kind in CLIENTS_OWN or count <= 0:
            continue
        same = sorted((f for f in stats.failed if f.kind == kind), key=lambda f: (f.call_id not in stats.retried_calls, f.id))
        ids.update(f.id for f in same[:count])
    return frozenset(ids)


def retries_more(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """Calls that reach the last allowed attempt often succeed on it, while others run out: more attempts.

    Decided on the calls that reached the last attempt: those that succeeded on it must be at least
    `LAST_ATTEMPT_SUCCESS` of them (95% lower bound), and those that ran out `MATERIAL`. +2 when successes
    do not thin out from one attempt to the next, else +1; never past 6, and never while the retry
    budget refused retries in the window (more attempts would only hit the budget). It addresses the
    calls that ran out of attempts (`_ran_out`): the next window shows any that more attempts did not
    rescue, and the symptom rules speak on those then.
    """
    proposals = []
    for stats in analysis.all_targets():
        scoped = scope_for(config, stats.target)
        if scoped is None:
            continue
        match, policy = scoped
        old = policy.retry.max_attempts
        last, exhausted = stats.ok_by_attempt[old], _exhausted(stats)
        if old < 2 or old >= MAX_ATTEMPTS_CAP or not exhausted or analysis.upstream(stats.target.upstream).budget_exhausted:
            continue
        succeeds = Share(f"calls reaching attempt {old} that succeeded on it", last, last + exhausted, "lower", LAST_ATTEMPT_SUCCESS)
        material = _material("calls that ran out of attempts", exhausted, stats.total_calls)
        if not (succeeds.holds() and material.holds()):
            continue
        late_ok = stats.ok_after_retry
        new = min(MAX_ATTEMPTS_CAP, old + (2 if last >= stats.ok_by_attempt[old - 1] else 1))
        p_last = last / (last + exhausted)
        rescued = round(exhausted * (1 - (1 - p_last) ** (new - old)))
        budget = policy.retry.budget
        level, why = decided(succeeds, material)
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
            confidence=level, confidence_reason=why, statistics=(succeeds, material),
            changes=(Change(stats.target.upstream, match, "retry.max_attempts", new, old),), addresses=_ran_out(stats),
        ))  # fmt: skip
    return proposals


def _seen_succeeding(stats: TargetStats, failed: list[FailedCall]) -> tuple[str, list[FailedCall]]:
    """(the basis, the failures a stored answer could have stood in for): with every success's params known
    (`TargetStats.params_known`) and every failure's hash, ``seen_succeeding`` and those whose params a
    `call_ok` summary named among its successes in a window that began before the failure (a summary does
    not say when in its window a success came); otherwise ``unknown`` and all of them (a recording without
    `ok_params`, a summary past its bound, or failures recorded with their params instead of a hash)."""
    if not stats.params_known or any(f.params_hash is None for f in failed):
        return "unknown", failed
    since = stats.ok_params_since
    return "seen_succeeding", [f for f in failed if f.params_hash is not None and since.get(f.params_hash, f.ts) < f.ts]


_STANDS_IN_S: float = CacheConfig.model_fields["ttl"].default + CacheConfig.model_fields["max_stale"].default
"""How long a stored answer may stand in for a failure with ``cache.mode: fallback`` alone (ttl + max_stale)."""


def cache_fallback(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """Idempotent calls failed on the upstream with no stored answer to stand in: cache mode fallback for them.

    A symptom rule. Only the upstream's failures count (`UPSTREAM_FAILED`), and not those a kept proposal
    for their cause addresses (`addressed.failures`: timeouts a longer per_try removes, calls one more
    attempt rescues, 429s a proxy-side limit removes, refusals of a breaker that should not have opened
    or should have been the tool's own): a fallback would hide the cause behind stale answers. Of the
    rest, only failures whose params had succeeded before them in the window count (`_seen_succeeding`: a
    cache stores answers per params, so a read that never succeeded has none to fall back on); when the
    window does not say which params succeeded, all of them, and the evidence says so (``params_basis``).
    Those must be `MATERIAL`.
    """
    proposals = []
    for stats in analysis.all_targets():
        if stats.target.method in ("initialize", "ping") or stats.idempotent is not True or stats.ok == 0:
            continue
        upstream_failed = stats.idempotent_failures()
        unaddressed = [f for f in upstream_failed if f.id not in addressed.failures]
        basis, failed = _seen_succeeding(stats, unaddressed)
        material = _material("calls that failed on the upstream with no stored answer", len(failed), stats.total_calls)
        if not failed or not material.holds():
            continue
        scoped = scope_for(config, stats.target)
        if scoped is None or scoped[1].cache is not None:
            continue
        match, policy = scoped
        distinct = len({f.params_hash for f in failed})
        never = len(unaddressed) - len(failed)
        kept = format_duration(_STANDS_IN_S)
        level, why = decided(material)
        if basis == "seen_succeeding":
            rationale = (
                f"{len(failed)} idempotent calls of {stats.target.label} failed on the upstream with params that had "
                f"succeeded earlier in the window, and the cache is off, so no stored answer could stand in."
                + (f" {never} other failures had params that never succeeded before them: no cache would have "
                   f"answered those, and they are left out." if never else "")
            )  # fmt: skip
            effect = (
                f"{len(failed)} failed calls ({distinct} distinct params), each with params that had succeeded before "
                f"it in the window (or in the same summary window), would have been answered from a stored answer "
                f"(marked stale) while it was at most ttl + max_stale ({kept}) old"
            )
        else:
            rationale = (
                f"{len(failed)} idempotent calls of {stats.target.label} failed and the cache is off, so no stored "
                f"answer could stand in. The same calls succeeded {stats.ok} times in the window, but the window "
                f"does not say with which params (summaries without ok_params, or past their bound): every failure "
                f"is counted, as if its params had succeeded."
            )
            effect = (
                f"at most {len(failed)} failed calls ({distinct} distinct params) would have been answered from a "
                f"stored answer (marked stale): those whose params had succeeded within ttl + max_stale ({kept}) "
                f"before, which the window cannot tell"
            )
        extra = {"not_succeeded_before": never} if basis == "seen_succeeding" else {}
        proposals.append(Proposal(
            rule="cache_fallback", target=stats.target.label,
            title=f"Enable cached fallback for {stats.target.label}",
            rationale=rationale,
            evidence=window_evidence(
                analysis, [f.id for f in failed], failed=len(failed), distinct_params=distinct, ok=stats.ok,
                params_basis=basis, **extra, failure_kinds=dict(sorted(stats.failures.items())),
                left_to_other_rules=len(upstream_failed) - len(unaddressed), policy=policy.rule,
            ),
            effect=Effect(effect, {"failed": len(failed), "distinct_params": distinct}),
            confidence=level, confidence_reason=why, statistics=(material,),
            changes=(Change(stats.target.upstream, match, "cache.mode", "fallback", None),),
        ))  # fmt: skip
    return proposals


def cache_max_stale(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """Stale answers ran out (max_stale) mid-outage and failures followed: double max_stale.

    A symptom rule. Stale answers ran out when the oldest served was near max_stale (80%); the upstream
    failures after the last one, but those a kept proposal for their cause addresses
    (`addressed.failures`), must be `MATERIAL` among the target's calls, and the extension must have
    covered some of them (failures within the extra time after the last stale serve).
    """
    proposals = []
    for stats in analysis.all_targets():
        if not stats.stale_ts:
            continue
        scoped = scope_for(config, stats.target)
        if scoped is None or scoped[1].cache is None:
            continue
        match, policy = scoped
        assert policy.cache is not None
        old, stopped = policy.cache.max_stale, max(stats.stale_ts)
        after = [f for f in stats.idempotent_failures() if f.ts > stopped and f.id not in addressed.failures]
        new = nice_duration(2 * old, cap=MAX_STALE_CAP_S)
        material = _material("calls that failed after stale answers ran out", len(after), stats.total_calls + len(stats.stale_ts))
        if not after or not material.holds() or stats.stale_max_age < 0.8 * old or new <= old:
            continue
        covered = sum(1 for f in after if f.ts <= stopped + (new - old))
        if covered == 0:
            continue
        level, why = decided(material)
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
            confidence=level, confidence_reason=why, statistics=(material,),
            changes=(Change(stats.target.upstream, match, "cache.max_stale", format_duration(new), format_duration(old)),),
        ))  # fmt: skip
    return proposals


def _retry_success(analysis: Analysis, stats: TargetStats) -> tuple[float, str]:
    """(the chance one retry succeeds, where that figure comes from): the target's own retries, else those
    of its upstream's retried calls, else an assumption (failures independent at the target's own rate)."""
    recovered, exhausted = max(stats.recovered_calls, stats.ok_after_retry), _exhausted(stats)
    if recovered + exhausted:
        return recovered / (recovered + exhausted), f"{stats.target.label}'s own retries ({recovered} of {recovered + exhausted} retried calls recovered)"
    others = [t for t in analysis.targets_of(stats.target.upstream) if t is not stats]
    recovered = sum(max(t.recovered_calls, t.ok_after_retry) for t in others)
    exhausted = sum(_exhausted(t) for t in others)
    if recovered + exhausted:
        return recovered / (recovered + exhausted), (
            f"the retries of {stats.target.upstream}'s other calls ({recovered} of {recovered + exhausted} retried calls recovered)"
        )
    calls = stats.total_calls
    failing = sum(1 for f in stats.failed if f.kind in RETRYABLE) / calls if calls else 1.0
    return 1 - failing, f"an assumption: no retry data; failures independent, each retry failing as often as calls did ({failing:.0%})"


_DECLARATIONS = (("read_only_hint", "read-only"), ("idempotent_hint", "idempotent"))
_MCP_NAMES = {"read_only_hint": "readOnlyHint", "idempotent_hint": "idempotentHint", "destructive_hint": "destructiveHint"}


def declared_idempotent(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """A tool the server declares safe to retry fails in ways a retry fixes, and the proxy never retries it.

    With ``trust_annotations: false`` (the quick-start default) the proxy treats every tool as not
    idempotent whatever the server says, so a flaky read-only tool's failures reach its clients. When
    the events show the server declaring it (readOnlyHint or idempotentHint true, never idempotentHint
    false nor destructiveHint true), the proxy treating it as not idempotent, and retryable upstream
    failures (`RETRYABLE`) that are `MATERIAL`, this proposes ``idempotent: true`` in a rule for exactly
    that tool. Not ``trust_annotations: true`` for the upstream, even when several tools qualify: the
    operator chose not to trust this server's annotations as a whole, and trusting them would also cover
    tools never observed and tools the server adds later; one exact rule per tool, each with its own
    evidence, trusts exactly what the events showed. A rule or policy saying ``idempotent: false`` is
    an operator's decision and is never overridden. It addresses the tool's retryable failures, but for
    those a kept proposal for their cause already addresses (`addressed`: a slow tool's timeouts are the
    timeouts rule's, which a retry under the same limit would only repeat). Its confidence is low when how
    many a retry rescues rests on an assumption rather than on retries the window saw.
    """
    proposals = []
    for stats in analysis.all_targets():
        tool = stats.target.tool
        if tool is None or stats.target.method != "tools/call" or not stats.idempotent_false or stats.idempotent_true:
            continue
        upstream = upstream_config(config, stats.target.upstream)
        if upstream is None or upstream.trust_annotations or not stats.declared_safe:
            continue
        # Failures a kept proposal for their cause fixes are not a retry's to fix: a timeout the timeouts
        # rule raises the limit for would only time out again on a retry with the same per_try.
        failed = [f for f in stats.failed if f.kind in RETRYABLE and f.id not in addressed.failures]
        material = _material("calls that failed in a way a retry can fix", len(failed), stats.total_calls)
        if not failed or not material.holds():
            continue
        scoped = scope_for(config, stats.target)
        if scoped is None or scoped[1].idempotent is not None or scoped[1].retry.max_attempts < 2:
            continue
        match, policy = scoped
        attempts = policy.retry.max_attempts
        p_retry, basis = _retry_success(analysis, stats)
        rescued = round(len(failed) * (1 - (1 - p_retry) ** (attempts - 1)))
        hints = stats.hints
        said = [(name, word) for name, word in _DECLARATIONS if hints.get(name, {}).get("true")]
        declared = " and ".join(f"{_MCP_NAMES[name]} true" for name, _ in said)
        carried = max(sum(c.values()) for c in (stats.read_only_hint, stats.idempotent_hint))
        level, why = decided(material)
        if basis.startswith("an assumption"):  # how many a retry rescues is assumed, not measured
            level, why = "low", f"{why}; the rescue estimate rests on {basis}"
        kinds = ", ".join(f"{k} {v}" for k, v in sorted({f.kind: sum(1 for g in failed if g.kind == f.kind) for f in failed}.items()))
        proposals.append(Proposal(
            rule="declared_idempotent", target=stats.target.label,
            title=f"Retry {stats.target.label}: its server declares it {' and '.join(word for _, word in said)}",
            rationale=(
                f"{stats.target.upstream} declares {tool} {declared} ({carried} call events carried the declaration), "
                f"but trust_annotations is off, so the proxy treats it as not idempotent and never retries it. "
                f"{len(failed)} of its {stats.total_calls} calls failed in ways a retry can fix ({kinds}), and every one "
                f"reached its client."
            ),
            evidence=window_evidence(
                analysis, [f.id for f in failed], failed=len(failed), calls=stats.total_calls, failure_kinds=dict(sorted(stats.failures.items())),
                declared={_MCP_NAMES.get(name, name): dict(values) for name, values in sorted(hints.items())},
                trust_annotations=False, policy=policy.rule,
            ),
            effect=Effect(
                f"with idempotent: true and max_attempts {attempts}, about {rescued} of the {len(failed)} failed calls "
                f"would have succeeded on a retry (one retry succeeding {p_retry:.0%} of the time, from {basis})",
                {"failed": len(failed), "would_succeed": rescued, "retry_success": round(p_retry, 3), "max_attempts": attempts},
            ),
            confidence=level, confidence_reason=why, statistics=(material,),
            changes=(Change(stats.target.upstream, match, "idempotent", True, None),), addresses=frozenset(f.id for f in failed),
        ))  # fmt: skip
    return proposals


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
