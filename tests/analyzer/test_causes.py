"""Cause before symptom: a failure whose cause has a kept proposal gets no stale answer standing in for it.

Each cause rule states the client-visible failures its change removes (`Proposal.addresses`) and the
breaker openings it prevents (`Proposal.addresses_openings`); the symptom rules (`engine.SYMPTOMS`) run
after the cause rules and leave those failures out, and `breaker_flaps` those openings. Each pairing is
tested twice: the full engine (the cause alone, or the symptom on what remains), and the symptom rules
alone on the same events (they would have spoken: the silence is the mechanism's doing).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from proxy.analyzer import Proposal, analyze, rules_upstream
from proxy.analyzer.engine import CAUSES, RULES, SYMPTOMS
from proxy.analyzer.proposal import Addressed
from proxy.analyzer.rules import cache_fallback, cache_max_stale
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import Stream

Events = list[dict[str, Any]]


def run(events: Events, config: str = sc.CONFIG, **kw: Any) -> list[Proposal]:
    return analyze(events, config, env={}, **kw)[1]


def by_rule(proposals: list[Proposal]) -> dict[str, Proposal]:
    assert len({p.rule for p in proposals}) == len(proposals), proposals
    return {p.rule: p for p in proposals}


def failed_ids(events: Events, kind: str | None = None, tool: str | None = None) -> frozenset[int]:
    return frozenset(
        e["id"] for e in events
        if e["type"] == "call_failed" and (kind is None or e["error"]["kind"] == kind) and (tool is None or e["tool"] == tool)
    )  # fmt: skip


def test_the_engine_runs_every_cause_before_every_symptom() -> None:
    assert RULES == CAUSES + SYMPTOMS
    assert SYMPTOMS == (cache_fallback, cache_max_stale)
    order = [rule.__name__ for rule in CAUSES]
    # breaker_flaps leaves out the openings of the rules whose changes prevent them: it runs after them
    assert order.index("breaker_flaps") > max(order.index(name) for name in ("timeouts", "rate_limit", "breaker_per_tool"))


# --- flaky reads: one more attempt, no stale answers -----------------------------------------------


def flaky_reads(exhausted: int = 12, deadline: int = 0) -> Events:
    """`lookup` (idempotent) succeeds on attempt 3 of 3 often (30 of 152 calls) while `exhausted` calls
    run out of attempts on 503s; `deadline` more fail when the call's total ran out (no retry left)."""
    s = Stream()
    s.call_ok(100.0, tool="lookup", ok=140, calls=140 + exhausted + deadline, ok_by_attempt={1: 100, 2: 10, 3: 30})
    for i in range(exhausted):
        call = s.call_id()
        for attempt in (1, 2):
            s.retry(i + attempt / 10, "http_5xx", tool="lookup", attempt=attempt, call_id=call, params=f"p{i % 4}")
        s.retry_exhausted(i + 0.3, "http_5xx", tool="lookup", attempt=3, call_id=call, params=f"p{i % 4}")
        s.call_failed(i + 0.3, "http_5xx", tool="lookup", attempt=3, call_id=call, params=f"p{i % 4}")
    for i in range(deadline):
        call = s.call_id()
        s.retry_exhausted(50.0 + i, "http_5xx", why="deadline", tool="lookup", call_id=call, params=f"p{i % 4}")
        s.call_failed(50.0 + i, "http_5xx", tool="lookup", call_id=call, params=f"p{i % 4}")
    return s.events


def test_failures_one_more_attempt_rescues_get_the_attempt_and_no_fallback() -> None:
    events = flaky_reads()
    [p] = run(events)
    assert (p.rule, p.title) == ("retries_more", "Raise max_attempts for api lookup from 3 to 5")
    assert p.addresses == failed_ids(events) and len(p.addresses) == 12
    assert p.to_dict()["addresses"] == {"failures": 12, "openings": 0}
    # the same failures, with no cause rule before it: the fallback would have stood in for all 12
    [alone] = run(events, rules=SYMPTOMS)
    assert (alone.rule, alone.evidence["failed"]) == ("cache_fallback", 12)


def test_failures_more_attempts_cannot_reach_are_left_to_the_fallback() -> None:
    """12 calls ran out of attempts (more attempts rescue them), 20 ran out of time (they do not): the
    fallback is proposed beside the retries, for those 20 alone."""
    events = flaky_reads(deadline=20)
    proposals = by_rule(run(events))
    assert set(proposals) == {"retries_more", "cache_fallback"}
    retried = frozenset(e["id"] for e in events if e["type"] == "call_failed" and e["call_id"] in {f"c{n}" for n in range(1, 13)})
    assert proposals["retries_more"].addresses == retried
    fallback = proposals["cache_fallback"]
    assert (fallback.evidence["failed"], fallback.evidence["left_to_other_rules"]) == (20, 12)
    assert set(fallback.evidence["example_ids"]) <= failed_ids(events) - retried


def test_a_cause_proposal_the_engine_drops_hides_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """Kept means kept: when the retries change cannot be made (the value comes from the environment),
    nothing addresses the failures and the fallback stands in for all of them."""
    config = sc.CONFIG + "      - match: {tool: lookup}\n        retry:\n          max_attempts: ${ATTEMPTS:-3}\n"
    with caplog.at_level(logging.WARNING, logger="proxy.analyzer.engine"):
        [p] = run(flaky_reads(), config)
    assert (p.rule, p.evidence["failed"]) == ("cache_fallback", 12)
    assert "retry.max_attempts is set from the environment" in caplog.text


# --- a rate-limited upstream: a proxy-side limit, no stale answers ----------------------------------


def throttled_reads() -> Events:
    """`search` (idempotent) is answered 429 thirty times while its upstream accepts 12 calls/s."""
    s = Stream()
    for end, ok in ((20.0, 120), (30.0, 130), (40.0, 110), (60.0, 200)):
        s.call_ok(end, tool="search", ok=ok)
    for i in range(30):
        s.call_failed(11.0 + i, "http_429", tool="search", params=f"p{i % 3}")
    return s.events


def test_429s_get_a_proxy_side_limit_and_no_fallback() -> None:
    events = throttled_reads()
    [p] = run(events)
    assert (p.rule, p.title) == ("rate_limit", "Rate-limit calls to api at 12/s")
    assert p.addresses == failed_ids(events, "http_429") and len(p.addresses) == 30
    [alone] = run(events, rules=SYMPTOMS)
    assert (alone.rule, alone.evidence["failed"]) == ("cache_fallback", 30)


# --- a flapping breaker: a higher threshold; a fallback only for the genuine failures ---------------


def flapping_reads(bursts: int = 4) -> Events:
    """`lookup` (idempotent): each burst, 5 upstream 503s open the shared breaker, which refuses the next
    5 calls; 30 s later a trial succeeds and it closes. Between bursts, 100 calls succeed."""
    s = Stream()
    s.call_ok(200.0, tool="lookup", ok=100, calls=100 + 10 * bursts)
    for b in range(bursts):
        at = 40.0 * b + 1
        for i in range(5):
            s.call_failed(at + i * 0.1, "http_5xx", tool="lookup", params=f"p{i}")
        s.breaker_state(at + 0.5, "closed", "open")
        for i in range(5):
            s.call_failed(at + 1 + i * 0.1, "circuit_open", tool="lookup", params=f"p{i}")
            s.circuit_open(at + 1 + i * 0.1)
        s.breaker_state(at + 30, "open", "half-open")
        s.breaker_state(at + 30.5, "half-open", "closed")
    return s.events


def test_a_higher_threshold_addresses_the_refusals_and_the_fallback_counts_the_rest() -> None:
    events = flapping_reads()
    proposals = by_rule(run(events))
    assert set(proposals) == {"breaker_flaps", "cache_fallback"}
    flaps = proposals["breaker_flaps"]
    assert flaps.title == "Breaker api flaps: failure_threshold 5 -> 10"
    assert flaps.addresses == failed_ids(events, "circuit_open") and len(flaps.addresses) == 20
    assert flaps.addresses_openings == frozenset(e["id"] for e in events if e["type"] == "breaker_state" and e["new"] == "open")
    fallback = proposals["cache_fallback"]
    assert (fallback.evidence["failed"], fallback.evidence["left_to_other_rules"]) == (20, 20)
    assert fallback.effect.numbers == {"failed": 20, "distinct_params": 5}
    [alone] = run(events, rules=SYMPTOMS)
    assert alone.evidence["failed"] == 40


def test_a_longer_reset_timeout_addresses_nothing() -> None:
    """Trials kept failing: the upstream was down, its refusals stand (a fallback may stand in for them)."""
    [p] = run(sc.flapping_breaker())
    assert p.title == "Breaker api flaps: reset_timeout 30s -> 1m"
    assert (p.addresses, p.addresses_openings) == (frozenset(), frozenset())


# --- one tool failing as a server: its own breaker, nothing upstream-wide ---------------------------


def one_tool_behind_shared_breaker(rounds: int = 4) -> Events:
    """Each round: 5 `create_ticket` calls answered 503 open the shared breaker, which refuses the next 4
    calls of the healthy `lookup`; a trial closes it. `create_ticket` fails 20 of 20, `lookup` 0 of 30."""
    s = Stream()
    s.call_ok(200.0, tool="create_ticket", ok=0, calls=5 * rounds, outcomes={"http_5xx": 5 * rounds}, latencies_ms=[])
    s.call_ok(200.0, tool="lookup", ok=30 - 4 * rounds, calls=30, outcomes={"ok": 30 - 4 * rounds, "circuit_open": 4 * rounds})
    for r in range(rounds):
        at = 40.0 * r + 1
        for i in range(5):
            s.call_failed(at + i * 0.1, "http_5xx", tool="create_ticket", idempotent=False, params=f"t{r}")
        s.breaker_state(at + 0.5, "closed", "open")
        for i in range(4):
            s.call_failed(at + 1 + i * 0.1, "circuit_open", tool="lookup", params=f"q{i}")
            s.circuit_open(at + 1 + i * 0.1)
        s.breaker_state(at + 2, "open", "half-open")
        s.breaker_state(at + 2.5, "half-open", "closed")
    return s.events


def test_one_tool_failing_gets_its_own_breaker_and_nothing_upstream_wide() -> None:
    events = one_tool_behind_shared_breaker()
    [p] = run(events)
    assert (p.rule, p.title) == ("breaker_per_tool", "Give create_ticket its own breaker on api")
    assert p.addresses == failed_ids(events, "circuit_open", tool="lookup") and len(p.addresses) == 16
    assert len(p.addresses_openings) == 4
    one_tool, healthy = p.statistics
    assert (one_tool.k, one_tool.n) == (20, 20)
    # 0 of 30: up to 8.3%, more than 5%, but at most half of what create_ticket fails at least (88.1%)
    assert (healthy.k, healthy.n, round(healthy.bound(), 3), healthy.threshold) == (0, 30, 0.083, 0.4404)
    # on its own, the breaker rule would see 4 openings after closing again, and the fallback 16 refusals
    [flaps] = run(events, rules=[rules_upstream.breaker_flaps])
    assert flaps.title == "Breaker api flaps: failure_threshold 5 -> 10"
    [alone] = run(events, rules=SYMPTOMS)
    assert (alone.rule, alone.target, alone.evidence["failed"]) == ("cache_fallback", "api lookup", 16)


# --- timeouts: a longer per_try, no fallback, no breaker change -------------------------------------


def test_timeouts_address_their_own_failures_and_the_refusals_of_the_breaker_they_opened() -> None:
    events = sc.slow_behind_breaker()
    [p] = run(events)
    assert p.rule == "timeouts"
    assert p.addresses == failed_ids(events, "timeout") | failed_ids(events, "circuit_open")
    assert (len(p.addresses), len(p.addresses_openings)) == (7 + 117, 3)
    proposals = {q.rule for q in run(events, rules=(rules_upstream.breaker_flaps, *SYMPTOMS))}
    assert proposals == {"breaker_flaps", "cache_fallback"}


def test_a_declared_safe_tool_addresses_its_retryable_failures() -> None:
    events = sc.declared_read_only()
    [p] = run(events)
    assert p.rule == "declared_idempotent"
    assert p.addresses == failed_ids(events) and len(p.addresses) == 30


def test_what_is_addressed_grows_with_each_kept_proposal() -> None:
    [p] = run(flaky_reads())
    grown = Addressed().adding(p)
    assert (grown.failures, grown.openings) == (p.addresses, frozenset())
    assert grown.adding(run(sc.flapping_breaker())[0]) == grown  # a proposal addressing nothing changes nothing
