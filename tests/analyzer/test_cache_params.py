"""`cache_fallback` counts only failures whose params had succeeded before them (summaries' `ok_params`).

A cache stores answers per params: a read whose params never succeeded has nothing stored to fall back
on, however often other reads of the same tool succeed. Recordings without `ok_params` (or a summary past
its bound) cannot tell, and keep the old count, saying so.
"""

from __future__ import annotations

from typing import Any

from proxy.analyzer import Analysis, Proposal, analyze
from proxy.analyzer.model import MAX_SEEN_PARAMS, Target
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import Stream, hashed

GOOD = [f"file:///ok/{n}" for n in range(90)]
HANGING = [f"file:///hang/{n}" for n in range(10)]


def run(events: list[dict[str, Any]]) -> list[Proposal]:
    return analyze(events, sc.CONFIG, env={})[1]


def fallbacks(events: list[dict[str, Any]]) -> list[Proposal]:
    return [p for p in run(events) if p.rule == "cache_fallback"]


def reviewers_case(with_params: bool) -> list[dict[str, Any]]:
    """100 distinct reads every 10 s: 90 always answer, 10 always fail (their timeouts) and never succeeded."""
    s = Stream()
    for window in range(1, 6):
        at = 10.0 * window
        for n, params in enumerate(HANGING):
            s.call_failed(at - 9.0 + 0.5 * n, "http_5xx", tool="lookup", params=params)
        s.call_ok(at, tool="lookup", ok=len(GOOD), calls=len(GOOD) + len(HANGING), ok_params=GOOD if with_params else None)
    return s.events


def test_failures_of_params_that_never_succeeded_propose_no_cache() -> None:
    assert fallbacks(reviewers_case(with_params=True)) == []


def test_a_recording_without_ok_params_keeps_the_old_count_and_says_its_basis_is_unknown() -> None:
    [p] = fallbacks(reviewers_case(with_params=False))
    assert p.effect.numbers == {"failed": 50, "distinct_params": 10}
    assert p.evidence["params_basis"] == "unknown"
    assert "not_succeeded_before" not in p.evidence
    assert p.effect.text.startswith("at most 50 failed calls (10 distinct params)")
    assert "does not say with which params" in p.rationale


def test_failures_of_params_that_had_succeeded_before_are_counted_exactly() -> None:
    s = Stream()
    s.call_failed(5.0, "http_5xx", tool="lookup", params="p0")  # before the window of any summary naming p0
    s.call_failed(12.0, "http_5xx", tool="lookup", params="p1")  # inside the window of the first that names it
    for at in (20.0, 30.0):  # windows of 10 s: [10, 20] and [20, 30]
        s.call_ok(at, tool="lookup", ok=50, ok_params=[f"p{n}" for n in range(5)])
    for i in range(25):
        s.call_failed(31.0 + i, "http_5xx", tool="lookup", params=f"p{i % 5}")
    for i in range(5):
        s.call_failed(56.0 + i, "http_5xx", tool="lookup", params="p7")
    s.call_ok(80.0, tool="lookup", ok=1, ok_params=["p7"])  # p7 succeeded only after its failures
    [p] = fallbacks(s.events)
    assert p.effect.numbers == {"failed": 26, "distinct_params": 5}
    assert (p.evidence["params_basis"], p.evidence["failed"], p.evidence["not_succeeded_before"]) == ("seen_succeeding", 26, 6)
    assert p.evidence["example_ids"] == [2, 5, 6, 7, 8]
    assert p.effect.text == (
        "26 failed calls (5 distinct params), each with params that had succeeded before it in the window (or in "
        "the same summary window), would have been answered from a stored answer (marked stale) while it was at "
        "most ttl + max_stale (330s) old"
    )
    assert p.rationale.startswith("26 idempotent calls of api lookup failed on the upstream with params that had succeeded")
    assert p.rationale.endswith("6 other failures had params that never succeeded before them: no cache would have answered those, and they are left out.")
    material = p.statistics[0]
    assert (material.k, material.n) == (26, 133)  # 101 successes and 32 failures


def test_a_summary_past_its_bound_makes_the_basis_unknown() -> None:
    s = Stream()
    s.call_ok(10.0, tool="lookup", ok=60, ok_params=["p0"], ok_params_overflow=1)
    for i in range(25):
        s.call_failed(20.0 + i, "http_5xx", tool="lookup", params=f"q{i % 5}")
    [p] = fallbacks(s.events)
    assert (p.evidence["params_basis"], p.effect.numbers) == ("unknown", {"failed": 25, "distinct_params": 5})


def test_a_summary_names_each_params_hash_once_with_the_first_time_and_the_target_bounds_them() -> None:
    s = Stream()
    s.call_ok(10.0, tool="lookup", ok=2, ok_params=["a", "b"])
    s.call_ok(20.0, tool="lookup", ok=3, ok_params=["b", "c"])
    s.call_ok(30.0, tool="lookup", ok=3)  # an older proxy's summary: 3 successes of unknown params
    stats = Analysis.from_events(s.events).targets[Target("api", "tools/call", "lookup")]
    first, second = (event["ts"] - 10.0 for event in s.events[:2])  # the start of each summary's window
    assert stats.ok_params_since == {hashed("a"): first, hashed("b"): first, hashed("c"): second}
    assert (stats.ok_params_unknown, stats.ok_params_full, stats.params_known) == (3, False, False)
    many = Stream()
    many.call_ok(10.0, tool="lookup", ok=MAX_SEEN_PARAMS + 1, ok_params=[f"p{n}" for n in range(MAX_SEEN_PARAMS + 1)])
    bounded = Analysis.from_events(many.events).targets[Target("api", "tools/call", "lookup")]
    assert (len(bounded.ok_params_since), bounded.ok_params_full, bounded.params_known) == (MAX_SEEN_PARAMS, True, False)
