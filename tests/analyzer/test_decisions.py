"""No fixed minimum counts: each rule decides on a proportion with a stated confidence, stays quiet on
healthy traffic (a few failures among many calls) and on ambiguous traffic (evidence that points both ways),
and speaks on a handful of events when they all agree."""

from __future__ import annotations

from typing import Any

from proxy.analyzer import Proposal, analyze
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import Stream


def run(events: list[dict[str, Any]], config: str = sc.CONFIG) -> list[Proposal]:
    return analyze(events, config, env={})[1]


ONE_SECOND = sc.CONFIG + "      - match: {tool: search}\n        timeouts: {per_try: 1s}\n"


def timeouts(observed: list[float | None], ok: int = 40) -> list[dict[str, Any]]:
    s = Stream()
    s.call_ok(60.0, tool="search", ok=ok, calls=ok + len(observed))
    for i, ms in enumerate(observed):
        call = s.call_id()
        s.timeout(1.0 + i, 1000.0, call_id=call)
        s.timeout_observed(2.0 + i, 1000.0, ms, call_id=call)
    return s.events


def test_eight_of_eight_timeouts_answering_at_1_4s_are_conclusive() -> None:
    [p] = run(timeouts([1400.0] * 8), ONE_SECOND)
    assert (p.rule, p.title) == ("timeouts", "Raise per_try for api search from 1s to 2s")
    completes, material = p.statistics
    assert (completes.k, completes.n, round(completes.bound(), 3)) == (8, 8, 0.747)
    assert (material.k, material.n) == (8, 48)


def test_twenty_mixed_timeouts_are_not() -> None:
    """Half finish shortly past the limit, half never answer: a higher limit might rescue half, might not."""
    assert run(timeouts([1400.0] * 10 + [None] * 10), ONE_SECOND) == []
    # the same 20 leaning clearly one way decide
    [p] = run(timeouts([1400.0] * 16 + [None] * 4), ONE_SECOND)
    assert p.effect.numbers["would_complete"] == 16


def test_a_few_timeouts_among_many_healthy_calls_never_trigger() -> None:
    """10 of 10 observed answering shortly after is conclusive about them, but 10 in 5,000 calls is not material."""
    assert run(timeouts([1400.0] * 10, ok=5000), ONE_SECOND) == []
    assert len(run(timeouts([1400.0] * 10, ok=400), ONE_SECOND)) == 1


def exhausted(failed: int, recovered: int, ok: int = 100, last_attempt: int = 0) -> list[dict[str, Any]]:
    s = Stream()
    s.call_ok(100.0, tool="flaky", ok=ok, calls=ok + failed, ok_by_attempt={1: ok - recovered - last_attempt, 2: recovered, 3: last_attempt})
    for i in range(failed):
        s.retry_exhausted(1.0 + i, "connect_error", tool="flaky", attempt=3)
        s.call_failed(1.0 + i, "connect_error", tool="flaky", attempt=3)
    return s.events


def retry_rules(events: list[dict[str, Any]]) -> list[str]:
    """The retry rules that fire (the same failed idempotent calls may also argue for a cached fallback)."""
    return [p.rule for p in run(events) if p.rule.startswith("retries")]


def test_fewer_retries_need_confidence_that_retries_do_not_help() -> None:
    assert retry_rules(exhausted(16, 0)) == ["retries_fewer"]  # 0 of 16: at most 14.5% recover
    assert retry_rules(exhausted(10, 0)) == []  # 0 of 10: could be up to 21%
    assert retry_rules(exhausted(30, 4)) == []  # 4 of 34 recovered: up to 22%
    assert retry_rules(exhausted(3, 0, ok=2000)) == []


def test_fewer_retries_are_never_proposed_when_they_would_cost_a_success() -> None:
    """4 of 104 retried calls recovered, one on the attempt the lower count would not send: one client's
    hopeless calls must not take that answer away from whoever got it."""
    assert [p.rule for p in run(exhausted(100, 3, ok=300, last_attempt=1)) if p.rule == "retries_fewer"] == []


def test_more_retries_need_a_last_attempt_that_often_succeeds() -> None:
    assert retry_rules(exhausted(12, 30, last_attempt=30)) == ["retries_more"]
    assert retry_rules(exhausted(12, 3, last_attempt=3)) == []  # 3 of 15 reaching attempt 3 succeeded: maybe under 1 in 4
    assert retry_rules(exhausted(3, 30, ok=5000, last_attempt=30)) == []  # 3 exhausted in 5,003 calls: immaterial


def failures(count: int, ok: int, kind: str = "http_5xx", tool: str = "lookup") -> list[dict[str, Any]]:
    s = Stream()
    s.call_ok(10.0, tool=tool, ok=ok)
    for i in range(count):
        s.call_failed(20.0 + i * 0.1, kind, tool=tool, params=f"p{i % 5}")
    return s.events


def test_a_fallback_needs_material_upstream_failures() -> None:
    assert run(failures(2, 2000)) == []
    assert [p.rule for p in run(failures(40, 2000))] == ["cache_fallback"]  # 2%: lower bound 1.5%


def shared(scrape: int, other: int, other_calls: int = 200, scrape_ok: int = 10) -> list[dict[str, Any]]:
    """The shared breaker opened once; `scrape` failed `scrape` calls (beside `scrape_ok` successes) and
    `search` `other` of its `other_calls`."""
    s = Stream()
    s.call_ok(100.0, tool="scrape", ok=scrape_ok, calls=scrape_ok + scrape)
    s.call_ok(100.0, tool="search", ok=other_calls - other, calls=other_calls)
    for i in range(scrape):
        s.call_failed(1.0 + i * 0.01, "http_5xx", tool="scrape", idempotent=False)
    for i in range(other):
        s.call_failed(1.005 + i * 0.01, "http_5xx", tool="search", idempotent=False)
    s.breaker_state(20.0, "closed", "open")
    return s.events


def test_a_per_tool_breaker_needs_one_tool_to_dominate_and_the_others_to_be_healthy() -> None:
    assert [p.rule for p in run(shared(30, 0))] == ["breaker_per_tool"]
    assert run(shared(12, 8)) == []  # 60/40: not one tool's doing
    assert run(shared(8, 0)) == []  # 8 of 8 from one tool: could be as low as 75%
    assert run(shared(60, 12, other_calls=200)) == []  # 60 of 72 from one tool: could be as low as 74.9%


def test_the_others_are_healthy_at_5_percent_or_far_below_the_failing_tool() -> None:
    """Few calls cannot show 5% (0 of 30: up to 8.3%), but beside a tool failing 20 of 20 they are
    conclusively healthy. A tool failing 6% beside others failing 5% is not one tool's doing."""
    [p] = run(shared(20, 0, other_calls=30, scrape_ok=0))
    _, healthy = p.statistics
    assert (healthy.k, healthy.n, round(healthy.bound(), 3), healthy.threshold) == (0, 30, 0.083, 0.4404)
    # 120 of scrape's 2,000 calls fail (at least 5.2%), 5 of search's 100 (up to 9.9%): 96% of the
    # failures are scrape's, yet search is not shown healthier than 5%, nor than half of scrape's rate
    assert run(shared(120, 5, other_calls=100, scrape_ok=1880)) == []
    # the same scrape beside a search with none of 100 failing (up to 2.6%): healthy by the 5% alone
    [q] = run(shared(120, 0, other_calls=100, scrape_ok=1880))
    assert (q.rule, q.statistics[1].threshold) == ("breaker_per_tool", 0.05)


def test_healthy_traffic_with_a_little_of_everything_is_quiet() -> None:
    """Every kind of evidence, each a little, among thousands of good calls: nothing is material."""
    s = Stream()
    s.call_ok(100.0, tool="search", ok=2000, ok_by_attempt={1: 1990, 2: 8, 3: 2}, latencies_ms=[80.0] * 2000)
    s.call_ok(100.0, tool="get_weather", ok=2000)
    for i in range(2):
        call = s.call_id()
        s.timeout(10.0 + i, 2000.0, call_id=call)
        s.timeout_observed(12.0 + i, 2000.0, 2300.0, call_id=call)
        s.retry_exhausted(20.0 + i, "http_5xx", attempt=3)
        s.call_failed(20.0 + i, "http_5xx", attempt=3)
        s.call_failed(30.0 + i, "http_429")
        s.call_failed(40.0 + i, "connect_error", tool="get_weather", idempotent=False, read_only_hint=True)
    s.breaker_state(50.0, "closed", "open")
    s.breaker_state(80.0, "open", "half-open")
    s.breaker_state(81.0, "half-open", "closed")
    assert run(s.events) == []
    assert run(sc.healthy()) == []


def test_calls_that_ran_out_on_the_clients_own_mistakes_never_drive_retry_changes() -> None:
    """A request the upstream called wrong (client_error) or the proxy's own limit fails every attempt the
    same way: not the upstream's failure, never evidence for more or fewer attempts."""
    for kind in ("client_error", "rate_limited"):
        events = exhausted(30, 30, last_attempt=30)
        for event in events:
            if event["type"] in ("retry_exhausted", "call_failed"):
                event["error"]["kind"] = kind
        assert run(events) == []


def test_observations_within_todays_limit_are_evidence_of_an_older_one() -> None:
    """After per_try went from 1s to 2s, late observations of attempts that timed out under 1s arrive
    (answers at 1.7-1.9 s, within today's 2s) beside 3 timeouts at 2s that nobody saw answer: nothing says
    today's limit is short, and never more completions than timeouts (the reviewer saw 5 of 3, "167%")."""
    s = Stream()
    s.call_ok(100.0, tool="search", ok=20, latencies_ms=[300.0] * 20)
    for i in range(3):
        s.timeout(10.0 + i, 2000.0, tool="search")
    for i in range(5):
        s.timeout_observed(5.0 + i, 1000.0, 1700.0 + 50 * i, tool="search")
    assert [p.rule for p in run(s.events) if p.rule == "timeouts"] == []
