"""The upstream-wide rules: upstream 429s, breakers, health, lost sessions. One small function each.

Same contract as `rules.py`: ``(analysis, config) -> list[Proposal]``, explicit minimum evidence,
nothing for healthy traffic.

Session recovery has no config key yet, so repeated `session_lost` yields an *advisory* proposal: no
change and no diff, only the advice and its evidence (apply refuses it). It is reported rather than
skipped because a client that loses its legacy session sees errors no policy key can fix today.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.model import Target
from proxy.analyzer.proposal import Change, Effect, Proposal, confidence
from proxy.analyzer.scope import scope_for, upstream_config, window_evidence
from proxy.analyzer.stats import format_duration, nice_duration
from proxy.config.model import ProxyConfig
from proxy.config.resolve import PolicyResolver

__all__ = ["breaker_flaps", "breaker_per_tool", "health_flaps", "rate_limit", "session_lost"]

MIN_429 = 20
"""Upstream 429 answers in the window before a proxy-side rate limit is proposed."""
MIN_BREAKER_OPENS = 3
MAX_RESET_S = 300.0
MAX_FAILURE_THRESHOLD = 50
MIN_BREAKER_FAILURES = 20
"""Breaker-counted failures before a per-tool breaker is proposed."""
ONE_TOOL_SHARE = 0.8
HEALTHY_FAILURE_RATE = 0.05
"""The other tools' failed attempts per call at most: they were healthy, the shared breaker was not."""
MIN_HEALTH_FLAPS = 3
MAX_HEALTH_THRESHOLD = 20
MIN_SESSION_LOST = 3


def rate_limit(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
    """The upstream answered 429: limit calls at the proxy to the rate it accepted meanwhile (key upstream)."""
    proposals = []
    for stats in sorted(analysis.upstreams.values(), key=lambda s: s.name):
        n, accepted, upstream = len(stats.http_429_ts), stats.accepted_rate(), upstream_config(config, stats.name)
        if n < MIN_429 or not accepted or upstream is None:
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
        changes.append(Change(stats.name, None, "rate_limit.key", "upstream", None if current is None else current.key))
        windows = stats.windows_with_429()
        seconds = sum(length for _, length, _ in windows)
        unit = "s" if per_s == 1.0 else "min"
        level, why = confidence(n, MIN_429, "upstream 429 answers")
        proposals.append(Proposal(
            rule="rate_limit", target=stats.name,
            title=f"Rate-limit calls to {stats.name} at {rate}/{unit}",
            rationale=(
                f"{stats.name} answered 429 (too many requests) {n} times. While it did, it accepted {accepted:.2f} "
                f"calls/s. Limiting at the proxy keeps the excess from reaching it at all, and clients get an "
                f"exact retryAfter instead of an upstream error."
            ),
            evidence=window_evidence(
                analysis, stats.http_429_ids, http_429=n, accepted_per_s=round(accepted, 3),
                windows=len(windows), window_seconds=round(seconds, 3),
            ),
            effect=Effect(
                f"at most {rate} calls/{unit} would reach {stats.name} (it accepted {accepted:.2f}/s around its 429s); "
                f"the excess behind the {n} upstream 429s would have been refused at the proxy with an exact retryAfter",
                {"http_429": n, "accepted_per_s": round(accepted, 3), "rate": rate, "per_s": per_s},
            ),
            confidence=level, confidence_reason=why, changes=tuple(changes),
        ))  # fmt: skip
    return proposals


def breaker_flaps(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
    """A breaker opened 3+ times in the window. Failed trials -> longer reset_timeout; fresh bursts -> higher threshold."""
    proposals = []
    for breaker in sorted(analysis.breakers.values(), key=lambda b: b.name):
        opens, tool, upstream = breaker.opens, breaker.tool, upstream_config(config, breaker.upstream)
        if opens < MIN_BREAKER_OPENS or upstream is None:
            continue
        # An upstream-wide breaker runs on the upstream's defaults; a tool's on its policy (own rule if new).
        scoped = (None, PolicyResolver(upstream).default) if tool is None else scope_for(config, Target(breaker.upstream, "tools/call", tool))
        if scoped is None:
            continue
        match, policy = scoped
        settings, failed_trials = policy.breaker, breaker.reopened_from_half_open
        threshold = settings.consecutive_threshold
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
        ))  # fmt: skip
    return proposals


def breaker_per_tool(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
    """One tool causes 80%+ of an upstream breaker's failures while the others are healthy: give it its own."""
    proposals = []
    for breaker in sorted(analysis.breakers.values(), key=lambda b: b.name):
        if breaker.tool is not None or breaker.opens == 0:
            continue
        targets = analysis.targets_of(breaker.upstream)
        total = sum(t.attempt_failures for t in targets)
        worst = max(targets, key=lambda t: t.attempt_failures, default=None)
        if worst is None or worst.target.tool is None or total < MIN_BREAKER_FAILURES:
            continue
        others = [t for t in targets if t is not worst and t.calls]
        other_calls, other_failures = sum(t.calls for t in others), sum(t.attempt_failures for t in others)
        share = worst.attempt_failures / total
        if share < ONE_TOOL_SHARE or not other_calls or other_failures > HEALTHY_FAILURE_RATE * other_calls:
            continue
        scoped = scope_for(config, worst.target)
        if scoped is None or scoped[1].breaker.scope == "tool" or not scoped[1].breaker.enabled:
            continue
        match, policy = scoped
        tool = worst.target.tool
        level, reason = confidence(total, MIN_BREAKER_FAILURES, "breaker-counted failures")
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
            confidence=level, confidence_reason=reason,
            changes=(Change(breaker.upstream, match, "breaker.scope", "tool", policy.breaker.scope),),
        ))  # fmt: skip
    return proposals


def health_flaps(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
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


def session_lost(analysis: Analysis, config: ProxyConfig) -> list[Proposal]:
    """Repeated lost legacy sessions: advice only (no config key exists for session recovery yet)."""
    proposals = []
    for stats in sorted(analysis.upstreams.values(), key=lambda s: s.name):
        n = len(stats.session_lost_ids)
        if n < MIN_SESSION_LOST:
            continue
        proposals.append(Proposal(
            rule="session_lost", target=stats.name,
            title=f"{stats.name} lost {n} legacy sessions: consider session recovery",
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
