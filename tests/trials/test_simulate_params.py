"""The what-if cache model with the params of summary successes (`ok_params`): stale only where they succeeded.

A summary's success used to count as a success of every params of its call kind, so a cached fallback
seemed to answer reads that never succeeded (10 always-hanging URIs among 100: 10 -> 0 estimated, 10 -> 10
measured). With `ok_params` the successes carry their hashes and a stale answer stands in only for
params stored before; unknown params keep the optimistic match, counted as estimated.
"""

from __future__ import annotations

from typing import Any

from proxy.config.model import ProxyConfig, load_config
from proxy.trials import records_from_events, replay
from tests.analyzer.builders import hashed
from tests.trials.builders import Recording

CACHE = {"mode": "fallback", "ttl": "30s", "max_stale": "5m"}


def config(**upstream: Any) -> ProxyConfig:
    import yaml

    body = {"name": "api", "url": "http://127.0.0.1:1/mcp", "breaker": {"enabled": False}, "retry": {"max_attempts": 1}}
    body.update(upstream)
    return load_config(yaml.safe_dump({"upstreams": [body]}))


def reviewers_case(named: bool) -> Recording:
    """100 distinct reads per 10 s window, 3 windows: 90 answer, 10 always time out (never succeeded)."""
    r = Recording()
    for window in range(3):
        start = 10.0 * window
        for n in range(90):
            r.ok(start + 0.1 * n, method="resources/read", tool=None, params=f"file:///ok/{n}")
        for n in range(10):
            r.call(start + 9.0 + 0.05 * n, ["timeout"], method="resources/read", tool=None, params=f"file:///hang/{n}")
        r.flush(start + 10.0, named=named)
    return r


def test_reads_that_never_succeeded_are_never_answered_stale() -> None:
    figures = replay(records_from_events(reviewers_case(named=True).events), config(), config(cache=CACHE))
    assert (figures.before.errors, figures.after.errors) == (30, 30)
    assert (figures.after.served_stale, figures.after.estimated) == (0, 0)


def test_without_ok_params_the_match_stays_optimistic_and_every_stale_answer_is_an_estimate() -> None:
    figures = replay(records_from_events(reviewers_case(named=False).events), config(), config(cache=CACHE))
    assert (figures.before.errors, figures.after.errors) == (30, 0)
    assert (figures.after.served_stale, figures.after.estimated) == (30, 30)


def test_failures_of_params_that_succeeded_before_are_answered_stale_exactly() -> None:
    r = Recording()
    for n, params in enumerate("abcde"):
        r.ok(1.0 + n, params=params)
    r.flush(10.0, 1.0, named=True)  # with a timeline: each success in its second
    r.call(20.0, ["http_5xx"], params="a")  # stored at about 1 s: answered stale
    r.call(21.0, ["http_5xx"], params="z")  # never succeeded: fails
    r.ok(22.0, params="z")
    r.call(23.0, ["http_5xx"], params="z")  # succeeded (at 22.5, before this failure): answered stale
    r.flush(30.0, 1.0, named=True)
    r.call(400.0, ["http_5xx"], params="b")  # past ttl + max_stale: fails
    r.flush(410.0, 1.0, named=True)
    figures = replay(records_from_events(r.events), config(), config(cache=CACHE))
    assert (figures.before.errors, figures.after.errors, figures.after.errors_by_kind) == (4, 2, {"http_5xx": 2})
    assert (figures.after.served_stale, figures.after.estimated) == (2, 0)


def test_summary_successes_take_the_named_params_in_order_and_the_overflow_stays_unknown() -> None:
    r = Recording()
    for n, params in enumerate(["a", "b", "a", "c", "d", "c"]):
        r.ok(1.0 + n, params=params)
    r.flush(10.0, named=True, bound=2)  # a and b named; c, d, c past the bound: 3 successes overflow
    records = records_from_events(r.events)
    assert [record.params_hash for record in records] == [hashed("a"), hashed("b"), hashed("a"), None, None, None]
    r.call(12.0, ["http_5xx"], params="b")  # named: answered stale, exactly
    r.call(13.0, ["http_5xx"], params="c")  # its success overflowed: answered stale, as an estimate
    r.flush(20.0, named=True)
    figures = replay(records_from_events(r.events), config(), config(cache=CACHE))
    assert (figures.after.errors, figures.after.served_stale, figures.after.estimated) == (0, 2, 1)


def test_fewer_named_params_than_successes_cycle_in_time_order() -> None:
    r = Recording()
    for n, params in enumerate(["a", "b", "b", "a", "b"]):
        r.ok(1.0 + n, params=params)
    r.flush(10.0, named=True)
    assert [record.params_hash for record in records_from_events(r.events)] == [hashed(p) for p in "ababa"]
