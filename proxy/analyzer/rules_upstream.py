"""The upstream-wide rules: upstream 429s, breakers, health, lost sessions. One small function each.

Same contract as `rules.py`: ``(analysis, config) -> list[Proposal]``, a decision with a stated
confidence (a Wilson bound of the proportion that matters, `stats.Share`), nothing for healthy traffic.
Breaker and health flaps and lost sessions are counts of episodes with no denominator (an opening is
itself the outcome of the breaker's threshold test; a flip of health, of its thresholds): they keep a
small absolute floor, `MIN_BREAKER_OPENS`, `MIN_HEALTH_FLAPS`, `MIN_SESSION_LOST`.

Lost legacy sessions (`session_lost`): the proxy rebuilds a session its upstream lost and replays the
request (`proxy.sessions`), and each loss says what became of it (`recovery`). The rule checks that
recovery is on and working: it proposes ``sessions.recovery: true`` when clients heard losses with it
off, and a longer ``sessions.recovery_timeout`` only when rebuilds ran it out while the rebuilds that
worked needed most of it; everything else it sees (recovery failing, sessions the proxy had no record
of, a recording that does not say) is *advice*: no change and no diff (apply refuses it). Every loss
recovered is nothing to report.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

from proxy.analyzer.advice import AdvicePart, advisory
from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.model import SessionLoss, SessionStats, Target, UpstreamStats
from proxy.analyzer.proposal import NOTHING, Addressed, Change, Effect, Proposal, confidence, decided
from proxy.analyzer.rules import caused_by
from proxy.analyzer.scope import scope_for, upstream_config, window_evidence
from proxy.analyzer.stats import Share, format_duration, nice_duration, percentile, wilson_lower
from proxy.config.model import ProxyConfig, UpstreamConfig
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
"""Requests of one kind of loss before the rule speaks (heard with recovery off, failed recoveries, sessions
the proxy had no record of, rebuilds that ran out the limit, losses of a recording that does not say). A
count with no denominator: a restart loses each open session once however many calls the upstream serves,
so losses per call would say nothing; one or two are a restart's ordinary cost."""
UNKNOWN_SHARE = 0.1
"""Losses of sessions the proxy had no record of, at least this share (95% lower bound) of the losses met
with recovery on, before advising a larger session table: below it they are the few sessions opened
before the proxy started, not protection the table's bounds took away."""
RAN_OUT = 0.95
"""A failed rebuild that lasted this share of `recovery_timeout` or more ran it out (it is cut exactly there;
the events' times carry the publishing's jitter)."""
SLOW_REBUILD = 0.5
"""The slowest rebuild that worked must have needed this share of `recovery_timeout` for a longer one to be
proposed: then the upstream rebuilds slowly and the limit cut off rebuilds on their way; when every rebuild
that worked was quick, those that ran out were stuck, and more time is not shown to help."""
MAX_RECOVERY_TIMEOUT_S = 60.0
"""The longest `recovery_timeout` proposed: every request that met the loss waits for the rebuild."""
_CHANGED = ("version_changed", "capabilities_changed", "no_session_id")
"""Failure reasons of a server that came back different: its sessions cannot be the ones clients know."""
_FORGETS = ("too_frequent", "lost_again")
"""Failure reasons of a server that forgets sessions all the time, not only when it restarts."""
_UNHEARD = ("answers_a_lost_request",)
"""Failure reasons no client hears as an error: its answer to a request of the dead session is dropped (202)."""
_REASONS = {
    "version_changed": "the server came back speaking another protocol version",
    "capabilities_changed": "the server came back with other capabilities",
    "no_session_id": "the server came back without sessions (its initialize gave no session id)",
    "too_frequent": "the session had been rebuilt 3 times within the minute already",
    "lost_again": "the rebuilt session was lost again at once, on the replay",
    "upstream_failed": "the upstream failed the rebuild (no connection, 5xx or 429, or no answer in time)",
    "deadline": "the call's deadline (timeouts.total) passed while its session was rebuilt; the rebuild went on for "
    "the requests after it",
    "initialize_refused": "the upstream refused the client's initialize when it was sent again",
    "not_restorable": "the session recorded more than the proxy keeps (a request over 64 KiB, or over 1,024 "
    "subscriptions), so a rebuild would have lost state and none was tried",
    "answers_a_lost_request": "a client's answer to a request of the lost session, which died with it, was dropped",
    "not_replayable": "a message the proxy does not replay (a JSON-RPC batch) met the loss and was passed on",
}
"""What each `session_lost.why` means, in the advice's words."""


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
    """Check that session recovery is on and working, from what became of each lost legacy session.

    Per upstream in the file: ``sessions.recovery: true`` when losses were heard with it off
    (`_recovery_off`); a longer ``sessions.recovery_timeout`` when rebuilds ran it out and the rebuilds
    that worked needed most of it (`_longer_recovery_timeout`); one advisory for the rest
    (`_advice`): recovery failing (by reason), sessions the proxy had no record of, losses of a recording
    from before the proxy said what became of them. Losses that were all recovered yield nothing.
    """
    proposals = []
    for stats in sorted(analysis.upstreams.values(), key=lambda s: s.name):
        upstream, sessions = upstream_config(config, stats.name), stats.sessions
        if upstream is None or not sessions.losses:
            continue
        off = _recovery_off(analysis, stats.name, sessions, upstream)
        longer = _longer_recovery_timeout(analysis, stats.name, sessions, upstream)
        covered = frozenset() if longer is None else longer[1]
        advice = _advice(analysis, stats, upstream, covered, carried=config.sessions_file is not None)
        proposals += [p for p in (off, None if longer is None else longer[0], advice) if p is not None]
    return proposals


def _recovery_off(analysis: Analysis, name: str, sessions: SessionStats, upstream: UpstreamConfig) -> Proposal | None:
    """Clients heard `MIN_SESSION_LOST` or more losses because recovery is off: turn it on."""
    heard = sessions.with_recovery("off")
    n = len(heard)
    if n < MIN_SESSION_LOST or upstream.sessions.recovery:
        return None
    level, why = confidence(n, MIN_SESSION_LOST, "requests that heard their session was lost")
    return Proposal(
        rule="session_lost", target=name,
        title=f"Turn session recovery on for {name}: {n} requests heard their session was lost",
        rationale=(
            f"{name} lost the legacy sessions of {n} requests in the window (it answered 404, or 400 \"No valid session "
            f"ID\": it restarted, or timed the sessions out), and sessions.recovery is off, so each client heard the loss "
            f"and had to initialize again (the official SDK client often just fails). With recovery on, the default, the "
            f"proxy keeps each session's initialize, log level and subscriptions, rebuilds a lost session upstream and "
            f"replays the request that met the loss, which the server had refused unexecuted: the client gets the "
            f"replay's answer. A server that comes back with another protocol version or other capabilities is still "
            f"reported to its clients as a lost session. State a server keeps per session beyond what its client told "
            f"it starts afresh on a rebuilt session: if this server keeps such state, recovery may be off on purpose."
        ),
        evidence=window_evidence(analysis, [loss.id for loss in heard], session_lost=n, recovery="off"),
        effect=Effect(
            f"the {n} requests that heard a lost session would have been replayed on a rebuilt one (unless the server "
            f"came back changed); sessions opened before the change are not recorded, so only later ones are protected",
            {"heard": n},
        ),
        confidence=level, confidence_reason=why,
        changes=(Change(name, None, "sessions.recovery", True, False),),
    )  # fmt: skip


def _ran_out(sessions: SessionStats, limit_s: float) -> list[SessionLoss]:
    """The rebuilds that failed on the upstream after running the whole `limit_s` (`SessionStats.rebuild_seconds`)."""
    seconds = sessions.rebuild_seconds()
    return [
        loss for loss in sessions.with_recovery("failed")
        if loss.why == "upstream_failed" and seconds.get(loss.id, 0.0) >= RAN_OUT * limit_s
    ]  # fmt: skip


def _longer_recovery_timeout(
    analysis: Analysis, name: str, sessions: SessionStats, upstream: UpstreamConfig
) -> tuple[Proposal, frozenset[int]] | None:
    """(twice the `recovery_timeout`, the failed losses it covers) when `MIN_SESSION_LOST` rebuilds ran it
    out and the slowest rebuild that worked needed `SLOW_REBUILD` of it (`session_recovered.recovery_ms`):
    the upstream rebuilds slowly, and the limit cut off rebuilds on their way. It addresses the failed
    calls of those requests (they met the upstream's error instead of their replay)."""
    limit = upstream.sessions.recovery_timeout
    ran_out = _ran_out(sessions, limit) if upstream.sessions.recovery else []
    if len(ran_out) < MIN_SESSION_LOST or not sessions.recovery_ms:
        return None
    slowest = max(sessions.recovery_ms)
    new = nice_duration(2 * limit, cap=MAX_RECOVERY_TIMEOUT_S)
    if slowest < SLOW_REBUILD * limit * 1000 or new <= limit:
        return None
    k, old, longer = len(ran_out), format_duration(limit), format_duration(new)
    calls = {loss.call_id for loss in ran_out if loss.call_id is not None}
    addresses = frozenset(f.id for t in analysis.targets_of(name) for f in t.failed if f.call_id in calls)
    level, why = confidence(k, MIN_SESSION_LOST, "rebuilds that ran out recovery_timeout")
    proposal = Proposal(
        rule="session_lost", target=name,
        title=f"Raise sessions.recovery_timeout for {name} from {old} to {longer}",
        rationale=(
            f"{k} rebuilds of lost sessions on {name} ran the whole recovery_timeout ({old}) and failed, while the "
            f"slowest rebuild that worked (of {len(sessions.recovery_ms)}) took {slowest:.0f} ms, "
            f"{slowest / (limit * 10):.0f}% of it: the upstream rebuilds sessions slowly (a server slow to start), and "
            f"the limit cut off rebuilds on their way. Each of those requests failed with the upstream's error instead "
            f"of being replayed."
        ),
        evidence=window_evidence(
            analysis, [loss.id for loss in ran_out], ran_out=k, recovery_timeout_s=limit, recovered=len(sessions.recovered_ids),
            slowest_recovery_ms=round(slowest, 1), recovery_p50_ms=round(percentile(sessions.recovery_ms, 0.5) or 0.0, 1),
        ),
        effect=Effect(
            f"rebuilds get {longer} instead of {old}: each of the {k} that ran out is replayed if its rebuild needs "
            f"at most {longer} (the slowest that worked needed {format_duration(slowest / 1000)})",
            {"ran_out": k, "slowest_recovery_ms": round(slowest, 1), "new_recovery_timeout_s": new},
        ),
        confidence=level, confidence_reason=why, addresses=addresses,
        changes=(Change(name, None, "sessions.recovery_timeout", longer, old),),
    )  # fmt: skip
    return proposal, frozenset(loss.id for loss in ran_out)


def _advice(analysis: Analysis, stats: UpstreamStats, upstream: UpstreamConfig, covered: frozenset[int], carried: bool) -> Proposal | None:
    """One advisory for what no config change is shown to mend: recovery failing (`_failures`), sessions the
    proxy had no record of (`_unknown`), losses of a recording that does not say (`_unstated`); each part
    only past `MIN_SESSION_LOST`, the failures but those a longer `recovery_timeout` covers (`covered`)."""
    name, sessions = stats.name, stats.sessions
    recovery = upstream.sessions.recovery
    parts = [
        part for part in (
            _failures(name, sessions, upstream, covered) if recovery else None,
            _unknown(sessions, upstream, carried) if recovery else None,
            _unstated(name, sessions, recovery),
        ) if part is not None
    ]  # fmt: skip
    if not parts:
        return None
    return advisory(
        analysis, rule="session_lost", target=name, title=f"Legacy sessions of {name}: ", parts=parts, examples=lambda ids: ids[:2],
        numbers={"recovered": len(sessions.recovered_ids)},
        counts={"session_lost": len(sessions.met()), "recovered": len(sessions.recovered_ids)},
    )  # fmt: skip


def _failures(name: str, sessions: SessionStats, upstream: UpstreamConfig, covered: frozenset[int]) -> AdvicePart | None:
    """Recovery was tried or refused and failed for `MIN_SESSION_LOST` requests a client heard: why, by reason."""
    failed = [loss for loss in sessions.with_recovery("failed") if loss.id not in covered]
    heard = [loss for loss in failed if loss.why not in _UNHEARD]
    if len(heard) < MIN_SESSION_LOST:
        return None
    reasons = Counter(loss.why or "unstated" for loss in failed)
    listed = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common())
    said = [f"Session recovery on {name} failed for {len(failed)} requests ({listed})."]
    changed = sum(reasons[r] for r in _CHANGED)
    if changed:
        said.append(
            f"{changed} met a server that came back different ({_which(reasons, _CHANGED)}): expected when a deploy "
            f"changes the server; the proxy told each client its session was lost (404, data.reason session_lost), "
            f"so it initializes again. Nothing to configure."
        )
    forgets = sum(reasons[r] for r in _FORGETS)
    if forgets:
        said.append(
            f"{forgets} were lost again and again ({_which(reasons, _FORGETS)}): {name} forgets sessions all the time, "
            f"not only when it restarts, typically replicas behind a load balancer without session affinity, each "
            f"request reaching a replica that never saw the session. Route each Mcp-Session-Id to one replica (sticky "
            f"sessions), or run one."
        )
    if reasons["upstream_failed"]:
        said.append(_upstream_failed(sessions, upstream, reasons["upstream_failed"], covered))
    rest = [reason for reason in reasons if reason not in (*_CHANGED, *_FORGETS, "upstream_failed")]
    said += [f"{reasons[reason]}: {_REASONS.get(reason, f'reason {reason}')}." for reason in rest]
    return AdvicePart(
        title=f"recovery failed for {len(failed)} requests ({listed})",
        rationale=" ".join(said),
        effect=f"{len(heard)} requests whose session recovery failed heard a session loss or the upstream's error",
        numbers={"failed": len(failed)},
        evidence={"failed": dict(reasons)},
        ids=[loss.id for loss in heard],
    )


def _which(reasons: Counter[str], among: tuple[str, ...]) -> str:
    return "; ".join(f"{reasons[r]} {_REASONS[r]}" for r in among if reasons[r])


def _upstream_failed(sessions: SessionStats, upstream: UpstreamConfig, n: int, covered: frozenset[int]) -> str:
    """What the rebuilds that failed on the upstream say, and why no longer `recovery_timeout` is proposed
    (`_longer_recovery_timeout` proposes one when they say it would help)."""
    limit = upstream.sessions.recovery_timeout
    ran_out = len([loss for loss in _ran_out(sessions, limit) if loss.id not in covered])
    said = (
        f"{n} rebuilds failed on the upstream ({_REASONS['upstream_failed']}): each such request failed with the "
        f"upstream's error, and the next one tried again."
    )
    if not ran_out:
        return said + f" None ran out the {format_duration(limit)} recovery_timeout: the upstream was not back yet when they came."
    said += f" {ran_out} ran the whole recovery_timeout ({format_duration(limit)})"
    if not sessions.recovery_ms:
        return said + (
            ", and no rebuild worked in the window, so nothing shows how long one needs: the upstream was stuck or "
            "still starting (check how long it takes to answer initialize after a restart)."
        )
    slowest = max(sessions.recovery_ms)
    took = f"the slowest rebuild that worked (of {len(sessions.recovery_ms)}) took {slowest:.0f} ms"
    if slowest < SLOW_REBUILD * limit * 1000:
        return said + (
            f", but {took}, so nothing shows a longer limit would let them finish: the upstream was stuck or still "
            f"starting (check how long it takes to answer initialize after a restart)."
        )
    if ran_out < MIN_SESSION_LOST:
        return said + f" and {took}: too few yet (fewer than {MIN_SESSION_LOST}) to propose a longer limit."
    return said + (
        f" and {took}, but the limit is already the longest proposed ({format_duration(MAX_RECOVERY_TIMEOUT_S)}): a "
        f"server this slow to rebuild a session keeps every request that met the loss waiting; look at its start-up."
    )


def _unknown(sessions: SessionStats, upstream: UpstreamConfig, carried: bool) -> AdvicePart | None:
    """Losses of sessions the proxy had kept and forgotten to make room (``forgotten``): `MIN_SESSION_LOST`,
    and `UNKNOWN_SHARE` of the losses met with recovery on (the others' sessions it knew: ``recovering``, or
    ``failed`` at once). Never ids it never kept (``unknown_session``): a client's own mistake, or a session
    older than the proxy, no setting fixes. `carried` (``sessions_file`` set) is kept for the caller."""
    unknown = sessions.with_recovery("forgotten")  # never an id the proxy never kept: a client's mistake
    known = [loss for loss in sessions.met() if loss.recovery in ("recovering", "failed")]
    u = len(unknown)
    share = Share("losses of sessions the proxy had no record of", u, u + len(known), "lower", UNKNOWN_SHARE)
    if u < MIN_SESSION_LOST or not share.holds():
        return None
    settings = upstream.sessions
    idle, most = format_duration(settings.idle_timeout), settings.max_sessions
    return AdvicePart(
        title=f"{u} lost sessions the proxy had forgotten: raise sessions.max_sessions or idle_timeout",
        rationale=(
            f"{u} of the {u + len(known)} requests that met a lost session came from sessions the proxy had kept and "
            f"forgotten to make room, so no rebuild was tried and each client heard the loss. The proxy forgets a "
            f"session unused for sessions.idle_timeout ({idle}, one whose GET stream is open is in use) when a new one "
            f"opens, and the least recently used past sessions.max_sessions ({most}) or its recorded-state budget: "
            f"raise sessions.max_sessions or idle_timeout (each session keeps its initialize request and subscribed "
            f"URIs). Losses of sessions the proxy never kept (made before it started, or ids a client made up or had "
            f"deleted) are not counted here: no setting of the proxy's would have kept them."
        ),
        effect=f"{u} requests of sessions the proxy had forgotten heard the upstream's loss, with no rebuild tried",
        numbers={"forgotten": u},
        evidence={"forgotten": u, "max_sessions": most, "idle_timeout": idle},
        ids=[loss.id for loss in unknown], share=share,
    )  # fmt: skip


def _unstated(name: str, sessions: SessionStats, recovery: bool) -> AdvicePart | None:
    """Losses from a recording made before `session_lost` said what became of them: advice, as then."""
    unstated = sessions.with_recovery(None)
    n = len(unstated)
    if n < MIN_SESSION_LOST:
        return None
    now = "on for this upstream" if recovery else "off for this upstream: turn it on"
    return AdvicePart(
        title=f"{n} requests met a lost session (recorded without what became of it)",
        rationale=(
            f"{name} answered 404 to {n} requests carrying a legacy session id (a restart, or a session timeout), "
            f"recorded by a proxy that did not say what became of a loss: each client had to notice and initialize "
            f"again. The proxy now rebuilds a lost session and replays the request (sessions.recovery, on by default; "
            f"{now}); a recording of it says whether it worked."
        ),
        effect=f"{n} requests failed on a lost session in the window",
        numbers={"unstated": n},
        evidence={"unstated": n},
        ids=[loss.id for loss in unstated],
    )  # fmt: skip
