"""The upstream-wide rules: upstream 429s, breakers, health, lost sessions. One small function each.

Same contract as `rules.py`: ``(analysis, config) -> list[Proposal]``, a decision with a stated
confidence (a Wilson bound of the proportion that matters, `stats.Share`), nothing for healthy traffic.
Breaker and health flaps and lost sessions are counts of episodes with no denominator (an opening is
itself the outcome of the breaker's threshold test; a flip of health, of its thresholds): they keep a
small absolute floor, `MIN_BREAKER_OPENS`, `MIN_HEALTH_FLAPS`, `MIN_SESSION_LOST`.

Session recovery has no config key yet, so repeated `session_lost` yields an *advisory* proposal: no
change and no diff, only the advice and its evidence (apply refuses it). It is reported rather than
skipped because a client that loses its legacy session sees errors no policy key can fix today.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.model import Target, UpstreamStats
from proxy.analyzer.proposal import NOTHING, Addressed, Change, Effect, Proposal, confidence, decided
from proxy.analyzer.rules import caused_by
from proxy.analyzer.scope import scope_for, upstream_config, window_evidence
from proxy.analyzer.stats import Share, format_duration, nice_duration, wilson_lower
from proxy.config.model import ProxyConfig
from proxy.config.resolve import PolicyResolver
from proxy.identity import identifies

__all__ = ["breaker_flaps", "breaker_per_tool", "health_flaps", "rate_limit", "session_lost"]

THROTTLED_SHARE = 0.05
"""Attempts the upstream answered 429 while it was limiting, at least this share (95% lower bound) before a
proxy-side limit is proposed: below 1 in 20 the upstream's limiter is doing its job and a retry after its
Retry-After absorbs it; a limit at the proxy would refuse calls the upstream would have taken."""
ONE_CLIENT_429S = 0.5
"""The share (lower bound) of the calls failed on 429s that one client must have had for a per-client limit:
most of them. A per-client limit at the accepted rate leaves the others their own pace, so it is the safer
key as soon as one client surely dominates; spread over many clients, the limit is the upstream's own."""
MIN_BREAKER_OPENS = 3
"""Openings of one breaker in the window (not prevented by a kept proposal for their cause). Three:
one opening is the breaker working; a second may be the same outage's failed trial; a third within the
window is a pattern. A proportion means nothing here (openings per what?)."""
MAX_RESET_S = 300.0
MAX_FAILURE_THRESHOLD = 50
ONE_TOOL_SHARE = 0.8
"""The share of the shared breaker's failures one tool caused, at least (95% lower bound)."""
HEALTHY_FAILURE_RATE = 0.05
"""The other tools' failed attempts per call, at most (95% upper bound): they were healthy, the shared breaker was not."""
WELL_BELOW = 0.5
"""...or at most this fraction of the failing tool's own failed attempts per call (its 95% lower bound):
with few calls the upper bound cannot reach 5% (0 failures in 30 calls: 8.3%), yet 0 of 30 beside 20 of
20 failing is conclusive; 5% beside 6% is not."""
MIN_HEALTH_FLAPS = 3
"""healthy <-> unhealthy flips in the window: three, as for breaker openings (a count, no denominator)."""
MAX_HEALTH_THRESHOLD = 20
MIN_SESSION_LOST = 3
"""Lost legacy sessions before the advice: one or two are restarts; the advice costs nothing to ignore."""


def rate_limit(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """The upstream answered 429: limit calls at the proxy to the rate it accepted meanwhile, keyed by upstream,
    or by client when one identified client had the calls that failed on them (`_whose`).

    It addresses the upstream's 429s that reached clients, the retries the budget refused after one,
    and the refusals of any breaker they opened (`rules.caused_by`): the excess is refused at the proxy
    instead, with an exact retryAfter, a refusal of the client's own pace no cache stands in for.
    """
    proposals = []
    for stats in sorted(analysis.upstreams.values(), key=lambda s: s.name):
        n, estimate, upstream = len(stats.http_429_ts), stats.accepted(), upstream_config(config, stats.name)
        if not n or estimate is None or not estimate[0] or upstream is None:
            continue
        accepted, seconds, basis = estimate
        throttled = Share("attempts answered 429 while the upstream limited", n, n + round(accepted * seconds), "lower", THROTTLED_SHARE)
        if not throttled.holds():
            continue
        current = upstream.rate_limit
        if current is not None and current.key in ("upstream", "global") and current.rate / current.per <= accepted:
            continue
        per_s = 1.0 if accepted >= 1 else 60.0
        rate = math.floor(accepted * per_s)
        changes = [Change(stats.name, None, "rate_limit.rate", rate, None if current is None else current.rate)]
        if (current.per if current is not None else 1.0) != per_s:
            changes.append(Change(stats.name, None, "rate_limit.per", format_duration(per_s), None if current is None else format_duration(current.per)))
        if current is not None and current.burst is not None and current.burst > rate:
            # A burst sized for the old rate would let that many through at once, past the rate proposed.
            changes.append(Change(stats.name, None, "rate_limit.burst", max(1, rate), current.burst))
        key, one_client = _whose(stats)
        if current is not None and current.key == key and current.rate / current.per <= accepted:
            continue
        changes.append(Change(stats.name, None, "rate_limit.key", key, None if current is None else current.key))
        windows = stats.windows_with_429()
        unit = "s" if per_s == 1.0 else "min"
        addresses, openings = caused_by(analysis, analysis.targets_of(stats.name), {"http_429"})
        level, why = decided(throttled)
        how = {
            "timeline": "counted over the summary slots from its first 429 to its last",
            "whole_windows": "counted over whole summary windows holding a 429 (this recording has no per-slot timeline)",
            "mixed": "counted over the slots from its first 429 to its last where summaries had a timeline, whole windows elsewhere",
        }[basis]
        proposals.append(Proposal(
            rule="rate_limit", target=stats.name,
            title=f"Rate-limit calls to {stats.name} at {rate}/{unit}",
            rationale=(
                f"{stats.name} answered 429 (too many requests) {n} times. While it did, it accepted {accepted:.2f} "
                f"calls/s ({how}). Limiting at the proxy keeps the excess from reaching it at all, and clients get an "
                f"exact retryAfter instead of an upstream error."
                + (f" One client had {one_client.k} of the {one_client.n} calls that failed on a 429: the limit is per "
                   f"client, so its pace costs no other client." if one_client is not None else "")
            ),
            evidence=window_evidence(
                analysis, stats.http_429_ids, http_429=n, accepted_per_s=round(accepted, 3), rate_basis=basis,
                windows=len(windows), window_seconds=round(seconds, 3),
            ),
            effect=Effect(
                f"at most {rate} calls/{unit} would reach {stats.name} (it accepted {accepted:.2f}/s around its 429s); "
                f"the excess behind the {n} upstream 429s would have been refused at the proxy with an exact retryAfter",
                {"http_429": n, "accepted_per_s": round(accepted, 3), "rate": rate, "per_s": per_s},
            ),
            confidence=level, confidence_reason=why, changes=tuple(changes),
            statistics=(throttled,) if one_client is None else (throttled, one_client),
            addresses=addresses, addresses_openings=frozenset(o.id for o in openings),
        ))  # fmt: skip
    return proposals


def _whose(stats: UpstreamStats) -> tuple[str, Share | None]:
    """The key a proxy-side limit should have: ``client`` when the calls that failed on the upstream's
    429s were one identified client's (`ONE_CLIENT_429S` of them by the lower bound), else ``upstream``.
    Keyed upstream-wide, a flooding client would spend the shared bucket and starve the polite ones; keyed
    per client it keeps its own pace. A loopback address names no one client (`proxy.identity`)."""
    if not stats.http_429_clients:
        return "upstream", None
    (client, count), total = stats.http_429_clients.most_common(1)[0], sum(stats.http_429_clients.values())
    one = Share("calls failed on a 429 that were one client's", count, total, "lower", ONE_CLIENT_429S)
    return ("client", one) if identifies(client) and one.holds() else ("upstream", None)


def breaker_flaps(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """A breaker opened 3+ times in the window. Failed trials -> longer reset_timeout; fresh bursts -> higher threshold.

    Openings a kept proposal for their cause prevents (`addressed.openings`: timeouts a longer per_try
    removes, one tool's failures that get a breaker of its own, 429s a proxy-side limit removes) do not
    count: the breaker did its job on a symptom whose cause has its own proposal, and a slower breaker
    would only let more calls meet the same failures. A higher threshold addresses the refusals of the
    openings it counts (the upstream would have answered them) and prevents those openings; a longer
    reset_timeout addresses nothing (the upstream was still down: its refusals stand, a cached fallback
    may still stand in for them).
    """
    proposals = []
    for breaker in sorted(analysis.breakers.values(), key=lambda b: b.name):
        counted = [o for o in analysis.openings() if (o.upstream, o.breaker) == (breaker.upstream, breaker.name) and o.id not in addressed.openings]
        trials = {t.id for t in breaker.transitions if t.old == "half-open" and t.new == "open"}
        explained = sum(1 for t in breaker.transitions if t.new == "open" and t.id in addressed.openings)
        opens, tool, upstream = breaker.opens - explained, breaker.tool, upstream_config(config, breaker.upstream)
        if opens < MIN_BREAKER_OPENS or upstream is None:
            continue
        # An upstream-wide breaker runs on the upstream's defaults; a tool's on its policy (own rule if new).
        scoped = (None, PolicyResolver(upstream).default) if tool is None else scope_for(config, Target(breaker.upstream, "tools/call", tool))
        if scoped is None:
            continue
        match, policy = scoped
        settings, failed_trials = policy.breaker, len(trials - addressed.openings)
        threshold = settings.consecutive_threshold
        addresses: frozenset[int] = frozenset()
        prevents: frozenset[int] = frozenset()
        if threshold is None or 2 * failed_trials >= opens:
            key, old_s = "breaker.reset_timeout", settings.reset_timeout
            new_s = nice_duration(2 * old_s, cap=MAX_RESET_S)
            if new_s <= old_s:
                continue
            old, new = format_duration(old_s), format_duration(new_s)
            why = f"{failed_trials} of its {opens} openings were failed trial calls: the upstream was still down when reset_timeout ended"
            effect = f"with reset_timeout {new} the breaker tries half as often during an outage: about {math.ceil(failed_trials / 2)} failed trial(s) instead of {failed_trials}"
        else:
            key, old_i, new_i = "breaker.failure_threshold", threshold, min(2 * threshold, MAX_FAILURE_THRESHOLD)
            old, new = str(old_i), str(new_i)
            why = f"{opens - failed_trials} of its {opens} openings came after it had closed again: short bursts of failures trip it"
            effect = f"with failure_threshold {new_i} a burst must be {new_i} consecutive failures long to open it (today {old_i})"
            addresses = frozenset(failed.id for opening in counted for _, failed in opening.refused)
            prevents = frozenset(opening.id for opening in counted)
        level, reason = confidence(opens, MIN_BREAKER_OPENS, "breaker openings")
        value: str | int = int(new) if key.endswith("threshold") else new
        proposals.append(Proposal(
            rule="breaker_flaps", target=breaker.name,
            title=f"Breaker {breaker.name} flaps: {key.split('.')[1]} {old} -> {new}",
            rationale=f"The breaker {breaker.name} opened {opens} times in the window; {why}. It refused {breaker.refused} calls.",
            evidence=window_evidence(
                analysis, [t.id for t in breaker.transitions if t.new == "open"], opens=opens, flaps=breaker.flaps,
                failed_trials=failed_trials, refused=breaker.refused, policy=policy.rule,
            ),
            effect=Effect(effect, {"opens": opens, "failed_trials": failed_trials, "refused": breaker.refused}),
            confidence=level, confidence_reason=reason,
            changes=(Change(breaker.upstream, match, key, value, int(old) if key.endswith("threshold") else old),),
            addresses=addresses, addresses_openings=prevents,
        ))  # fmt: skip
    return proposals


def breaker_per_tool(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """One tool causes 80%+ of an upstream breaker's failures while the others are healthy: give it its own.

    The others are healthy when their failed attempts per call are at most `HEALTHY_FAILURE_RATE`, or at
    most `WELL_BELOW` of the tool's own, both by 95% bounds (the others' upper, the tool's lower): few
    calls cannot show 5% (0 of 30: up to 8.3%), but they can show a rate far below a tool failing every
    call. It addresses the refusals the shared breaker made to the other calls in the openings that
    tool caused, and prevents those openings (its own calls meet its own breaker instead).
    """
    proposals = []
    for breaker in sorted(analysis.breakers.values(), key=lambda b: b.name):
        if breaker.tool is not None or breaker.opens == 0:
            continue
        targets = analysis.targets_of(breaker.upstream)
        total = sum(t.attempt_failures for t in targets)
        worst = max(targets, key=lambda t: t.attempt_failures, default=None)
        if worst is None or worst.target.tool is None or not total:
            continue
        others = [t for t in targets if t is not worst and t.calls]
        other_calls, other_failures = sum(t.calls for t in others), sum(t.attempt_failures for t in others)
        share = worst.attempt_failures / total
        one_tool = Share(f"breaker-counted failures caused by {worst.target.tool}", worst.attempt_failures, total, "lower", ONE_TOOL_SHARE)
        own_rate = wilson_lower(worst.attempt_failures, max(worst.calls, worst.attempt_failures))
        ceiling = max(HEALTHY_FAILURE_RATE, round(WELL_BELOW * own_rate, 4))
        healthy = Share("failed attempts per call of the other calls", other_failures, max(other_calls, other_failures), "upper", ceiling)
        if not (one_tool.holds() and healthy.holds()):
            continue
        scoped = scope_for(config, worst.target)
        if scoped is None or scoped[1].breaker.scope == "tool" or not scoped[1].breaker.enabled:
            continue
        match, policy = scoped
        tool = worst.target.tool
        level, reason = decided(one_tool, healthy)
        caused = [o for o in analysis.openings() if (o.upstream, o.breaker) == (breaker.upstream, breaker.name) and o.cause[0] == worst.target]
        addresses = frozenset(failed.id for o in caused for target, failed in o.refused if target != worst.target)
        proposals.append(Proposal(
            rule="breaker_per_tool", target=f"{breaker.upstream} {tool}",
            title=f"Give {tool} its own breaker on {breaker.upstream}",
            rationale=(
                f"{tool} caused {share:.0%} of the {total} failures that count toward the shared {breaker.name} "
                f"breaker, which opened {breaker.opens} time(s) and refused {breaker.refused} calls, also to the "
                f"{len(others)} other method(s)/tool(s), which were healthy ({other_failures} failures in {other_calls} calls)."
            ),
            evidence=window_evidence(
                analysis, worst.retry_ids[:2] + [f.id for f in worst.failed][:3], failures=total,
                tool_failures=worst.attempt_failures, share=round(share, 3), opens=breaker.opens,
                refused=breaker.refused, other_calls=other_calls, other_failures=other_failures,
            ),
            effect=Effect(
                f"a per-tool breaker opens for {tool} alone; the {other_calls} calls to the other tools keep flowing "
                f"(the shared breaker refused {breaker.refused} calls in the window)",
                {"share": round(share, 3), "refused": breaker.refused, "other_calls": other_calls},
            ),
            confidence=level, confidence_reason=reason, statistics=(one_tool, healthy),
            changes=(Change(breaker.upstream, match, "breaker.scope", "tool", policy.breaker.scope),),
            addresses=addresses, addresses_openings=frozenset(o.id for o in caused),
        ))  # fmt: skip
    return proposals


def health_flaps(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """Health flips healthy <-> unhealthy 3+ times: double the thresholds of the checks that flip it."""
    proposals = []
    for health in sorted(analysis.health.values(), key=lambda h: h.upstream):
        flaps, upstream = health.flaps, upstream_config(config, health.upstream)
        if len(flaps) < MIN_HEALTH_FLAPS or upstream is None:
            continue
        causes = Counter(str(t.cause) for t in flaps)
        cause = "passive" if causes["passive"] > causes["active"] else "active"
        if cause == "active":
            active = upstream.health.active
            keys = {"health.active.unhealthy_threshold": active.unhealthy_threshold, "health.active.healthy_threshold": active.healthy_threshold}
        else:
            keys = {"health.passive.consecutive_failures": upstream.health.passive.consecutive_failures}
        changes = tuple(Change(health.upstream, None, k, min(2 * v, MAX_HEALTH_THRESHOLD), v) for k, v in keys.items() if v < MAX_HEALTH_THRESHOLD)
        if not changes:
            continue
        shortest = min(b.ts - a.ts for a, b in itertools.pairwise(flaps))
        level, reason = confidence(len(flaps), MIN_HEALTH_FLAPS, "healthy/unhealthy transitions")
        proposals.append(Proposal(
            rule="health_flaps", target=health.upstream,
            title=f"Health of {health.upstream} flaps: raise its {cause} thresholds",
            rationale=(
                f"{health.upstream} went between healthy and unhealthy {len(flaps)} times in the window "
                f"({', '.join(f'{k}: {v}' for k, v in sorted(causes.items()))}); the shortest state lasted "
                f"{shortest:g}s. Readiness and routing follow every flip."
            ),
            evidence=window_evidence(analysis, [t.id for t in flaps], transitions=len(flaps), causes=dict(causes), shortest_state_s=round(shortest, 3)),
            effect=Effect(
                f"a state change needs twice as many consecutive {cause} results; states shorter than that "
                f"(the shortest here lasted {shortest:g}s) no longer flip readiness",
                {"transitions": len(flaps), "shortest_state_s": round(shortest, 3)},
            ),
            confidence=level, confidence_reason=reason, changes=changes,
        ))  # fmt: skip
    return proposals


def session_lost(analysis: Analysis, config: ProxyConfig, addressed: Addressed = NOTHING) -> list[Proposal]:
    """Repeated lost legacy sessions: advice only (no config key exists for session recovery yet)."""
    proposals = []
    for stats in sorted(analysis.upstreams.values(), key=lambda s: s.name):
        n = len(stats.session_lost_ids)
        if n < MIN_SESSION_LOST:
            continue
        proposals.append(Proposal(
            rule="session_lost", target=stats.name,
            title=f"{stats.name} forgot the legacy sessions of {n} requests: consider session recovery",
            rationale=(
                f"{stats.name} answered 404 to {n} requests carrying a legacy session id: it forgot the sessions "
                f"(a restart, or a session timeout). Each client had to notice and initialize again. No config "
                f"key recovers sessions yet, so this is advice: check the server's session lifetime and restarts."
            ),
            evidence=window_evidence(analysis, stats.session_lost_ids, session_lost=n),
            effect=Effect(f"{n} requests failed on a lost session in the window", {"session_lost": n}),
            confidence="low", confidence_reason="advice only: no change to estimate", advisory=True,
        ))  # fmt: skip
    return proposals
