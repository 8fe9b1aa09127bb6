"""Evidence hidden by the proxy's own protection: refusals are attributed to the failures that opened the
breaker, and the rule for the cause acts on them; non-idempotent calls that time out get a longer per_try,
never a retry."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from proxy.analyzer import Analysis, Change, Match, Proposal, analyze, rules
from proxy.analyzer.engine import unsafe_retries
from proxy.analyzer.model import Target
from proxy.config.model import load_config
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import T0, Stream

SEARCH, LOOKUP = Target("api", "tools/call", "search"), Target("api", "tools/call", "lookup")


def run(events: list[dict[str, Any]], config: str = sc.CONFIG) -> list[Proposal]:
    return analyze(events, config, env={})[1]


def test_each_opening_knows_the_failures_that_led_to_it_and_the_calls_it_refused() -> None:
    analysis = Analysis.from_events(sc.slow_behind_breaker(), window_s=None)
    first, trial, last = analysis.openings()
    assert (first.ts, first.cause, dict(first.causes)) == (T0 + 5, (SEARCH, "timeout"), {(SEARCH, "timeout"): 5})
    # a half-open trial's opening is explained by the trial alone: the run-up starts at the previous transition
    assert (trial.ts, dict(trial.causes)) == (T0 + 21, {(SEARCH, "timeout"): 1})
    refused = [(target.tool, n) for target, n in sorted({(t, sum(1 for u, _ in o.refused if u == t)) for o in (first,) for t, _ in o.refused})]
    assert refused == [("lookup", 10), ("search", 50)]  # refusals until it went half-open at 20s
    assert (len(first.refused), first.refused_attempts, len(trial.refused), trial.refused_attempts) == (60, 50, 57, 47)
    assert (len(last.refused), first.until, trial.until) == (0, T0 + 21, T0 + 37)
    assert len(analysis.refusals_caused_by(SEARCH, {"timeout"})) == 117
    assert analysis.refusals_caused_by(LOOKUP, {"timeout"}) == []


def test_the_timeouts_a_breaker_hid_still_raise_per_try_and_count_its_refusals() -> None:
    """7 timeouts in 40 s (the breaker stopped the rest), all seen answering within 3 s: the timeouts rule
    fires on them, counting the 117 calls the breaker refused; no cached fallback hides the cause."""
    [p] = run(sc.slow_behind_breaker())
    assert (p.rule, p.title) == ("timeouts", "Raise per_try for api search from 2s to 4s")
    assert p.changes == (Change("api", Match(tool="search"), "timeouts.per_try", "4s", "2s"),)
    assert p.effect.text == (
        "with per_try 4s, 100% of the 7 timed-out attempts would have completed (7 of 7; the others took longer or "
        "were not observed); the 117 calls refused by the breaker these timeouts opened would have been served"
    )
    assert (p.evidence["refused_by_breaker"], p.evidence["breaker_openings"]) == (117, 3)
    assert "These timeouts opened the breaker api 3 time(s), and it refused 117 more calls" in p.rationale
    completes, material = p.statistics
    assert (completes.k, completes.n) == (7, 7)  # 7/(7+z²) = 72.1% >= 50%
    assert (material.k, material.n) == (7 + 117, 167 + 20)  # search's calls, and lookup's refused ones


def test_without_evidence_of_the_cause_the_fallback_and_the_breaker_are_proposed() -> None:
    """Nobody saw the timed-out attempts answer: raising the limit would be a guess, so nothing fixes the
    cause, and the failures (timeouts and refusals alike) are left to the cache and breaker rules."""
    proposals = {(p.rule, p.target): p for p in run(sc.slow_behind_breaker(observed=False))}
    assert set(proposals) == {("breaker_flaps", "api"), ("cache_fallback", "api lookup"), ("cache_fallback", "api search")}
    assert proposals[("cache_fallback", "api search")].effect.numbers == {"failed": 104, "distinct_params": 8}
    assert proposals[("cache_fallback", "api search")].evidence["left_to_other_rules"] == 0


def test_refusals_without_an_opening_in_the_window_stay_unattributed() -> None:
    events = [e for e in sc.slow_behind_breaker() if e["type"] != "breaker_state"]
    analysis = Analysis.from_events(events, window_s=None)
    assert analysis.openings() == [] and analysis.refusals_caused_by(SEARCH, {"timeout"}) == []


def test_an_opening_whose_run_up_left_the_window_falls_back_on_the_breakers_own_word() -> None:
    s = Stream()
    s.breaker_state(100.0, "closed", "open", last_failure_kind="upstream_timeout")
    s.call_failed(101.0, "circuit_open")
    [opening] = Analysis.from_events(s.events, window_s=None).openings()
    assert opening.cause == (None, "timeout") and len(opening.refused) == 1
    s.breaker_state(50.0, "closed", "open")  # an old recording: no last_failure_kind
    assert Analysis.from_events(s.events[-1:], window_s=None).openings()[0].cause == (None, None)


def test_a_tool_breaker_is_opened_by_its_own_tools_failures_only() -> None:
    s = Stream()
    for i in range(3):
        s.call_failed(1.0 + i, "http_5xx", tool="other")
        s.call_failed(1.5 + i, "tool_error", tool="scrape")  # an application error a tool breaker may count
    s.call_failed(4.0, "rate_limited", tool="scrape")  # the client's own: never a cause
    s.breaker_state(5.0, "closed", "open", breaker="api/scrape")
    s.breaker_state(5.0, "closed", "open")
    s.call_failed(6.0, "circuit_open", tool="scrape")
    s.call_failed(6.0, "circuit_open", tool="other")
    analysis = Analysis.from_events(s.events, window_s=None)
    tool = analysis.breakers[("api", "api/scrape")].openings[0]
    shared = analysis.breakers[("api", "api")].openings[0]
    assert dict(tool.causes) == {(Target("api", "tools/call", "scrape"), "tool_error"): 3}
    assert dict(shared.causes) == {(Target("api", "tools/call", "other"), "http_5xx"): 3}  # tool_error: not server-side
    assert [t.tool for t, _ in tool.refused] == ["scrape"] and [t.tool for t, _ in shared.refused] == ["other"]


def test_an_attempts_timeout_and_its_retry_are_one_failure() -> None:
    s = Stream()
    call = s.call_id()
    s.timeout(1.0, 2000.0, call_id=call)
    s.retry(1.0, "timeout", call_id=call)
    s.timeout(2.0, 2000.0, call_id=call, attempt=2)
    s.call_failed(2.0, "timeout", call_id=call, attempt=2)
    s.breaker_state(3.0, "closed", "open")
    [opening] = Analysis.from_events(s.events, window_s=None).openings()
    assert dict(opening.causes) == {(SEARCH, "timeout"): 2}


def test_a_slow_write_gets_a_longer_per_try_and_never_a_retry() -> None:
    """8 of 8 writes answered at 2 s against a 1 s limit: conclusive. The upstream executed them; their
    clients heard a timeout. The fix is the limit, in the rule that already governs the tool."""
    proposals = run(sc.slow_writes(), sc.WRITES_CONFIG)
    [p] = proposals
    assert (p.rule, p.title) == ("timeouts", "Raise per_try for api create_issue from 1s to 2.5s")
    assert p.changes == (Change("api", Match(tool="create_issue"), "timeouts.per_try", "2.5s", "1s"),)
    assert p.evidence["idempotent"] is False and p.evidence["observed"] == 8
    assert "These calls are not idempotent: the upstream executed them (8 were observed answering)" in p.rationale
    assert "a retry would run them twice" in p.rationale
    assert [line for line in (p.diff or "").splitlines() if line[:1] in "+-"][2:] == [
        "-        timeouts: {per_try: 1s}", "+        timeouts: {per_try: 2.5s}",
    ]
    assert not any(c.key.startswith("retry") or c.key == "idempotent" for q in proposals for c in q.changes)


def test_a_write_slower_than_its_total_raises_the_total_too() -> None:
    config = sc.CONFIG + "      - match: {tool: create_issue}\n        timeouts: {per_try: 1s, total: 2s}\n"
    [p] = run(sc.slow_writes(), config)
    assert [(c.key, c.value, c.old) for c in p.changes] == [("timeouts.per_try", "2.5s", "1s"), ("timeouts.total", "5s", "2s")]


def test_no_rule_may_retry_a_slow_write_more(caplog: pytest.LogCaptureFixture) -> None:
    """Whatever a rule proposes, the engine's guard drops a retry increase for calls the events show as
    not idempotent: here a rule that would raise max_attempts for the slow write."""
    analysis = Analysis.from_events(sc.slow_writes(), window_s=None)
    before = load_config(sc.WRITES_CONFIG, {})
    after = load_config(sc.WRITES_CONFIG + "        retry: {max_attempts: 5}\n", {})
    declared = load_config(sc.WRITES_CONFIG + "        idempotent: true\n", {})
    assert unsafe_retries(analysis, before, after) == ["api create_issue"]
    assert unsafe_retries(analysis, before, declared) == ["api create_issue"]  # no hint says it is safe

    def more_retries(a: Analysis, config: Any, addressed: Any) -> list[Proposal]:
        [p] = rules.timeouts(a, config)
        return [Proposal(**{**{f: getattr(p, f) for f in p.__dataclass_fields__},
                            "changes": (Change("api", Match(tool="create_issue"), "retry.max_attempts", 5, 3),)})]  # fmt: skip

    with caplog.at_level(logging.WARNING, logger="proxy.analyzer.engine"):
        assert analyze(sc.slow_writes(), sc.WRITES_CONFIG, env={}, rules=[more_retries])[1] == []
    assert "would retry calls not known to be idempotent: api create_issue" in caplog.text
