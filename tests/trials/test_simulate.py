"""The what-if simulator, one modelled aspect per test, on recordings built call by call (exact figures)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from proxy.config.model import ProxyConfig, load_config
from proxy.trials import AttemptRates, AttemptRecord, CallRecord, Simulator, Tally, records_from_events, replay
from tests.analyzer.builders import T0, Stream
from tests.trials.builders import Recording


def config(**upstream: Any) -> ProxyConfig:
    """One upstream `api`, breaker off and one attempt unless `upstream` says otherwise."""
    import yaml

    body = {"name": "api", "url": "http://127.0.0.1:1/mcp", "breaker": {"enabled": False}, "retry": {"max_attempts": 1}}
    body.update(upstream)
    return load_config(yaml.safe_dump({"upstreams": [body]}))


def recorded_counts(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What the raw events themselves say happened (the invariant's other side)."""
    types = Counter(e["type"] for e in events)
    stale = sum(1 for e in events if e["type"] == "fallback_served" and e["status"] == "stale")
    ok = sum(e["ok"] for e in events if e["type"] == "call_ok")
    return {
        "errors": types["call_failed"],
        "errors_by_kind": dict(Counter(e["error"]["kind"] for e in events if e["type"] == "call_failed")),
        "retries": types["retry"],
        "timeouts": types["timeout"],
        "breaker_refused": types["circuit_open"],
        "rate_limited": types["rate_limited"],
        "served_stale": stale,
        "succeeded": ok - stale,
        "calls": sum(e["calls"] for e in events if e["type"] == "call_ok"),
    }


def mixed() -> Recording:
    r = Recording()
    for i in range(30):
        r.ok(1.0 + i * 0.5)
    r.call(2.0, ["timeout", "ok"], observed={1: 250.0})
    r.call(3.0, ["http_5xx", "http_5xx", "ok"])
    r.call(4.0, ["timeout", "timeout", "timeout"], observed={1: 300.0, 2: None, 3: 900.0})
    r.call(5.0, ["connect_error"], idempotent=False)
    r.call(6.0, ["http_5xx"], stale_age=12.0)
    r.call(7.0, ["rate_limited"])
    r.call(8.0, ["circuit_open"])
    r.call(9.0, ["http_5xx", "circuit_open"])
    r.call(10.0, ["http_5xx", "circuit_open"], stale_age=3.0)
    r.flush(20.0)
    for i in range(5):
        r.ok(21.0 + i, method="resources/read", tool=None)
    r.call(22.0, ["timeout"], method="resources/read", tool=None, observed={1: 150.0})
    r.flush(30.0)
    return r


def test_the_before_figures_are_the_recording() -> None:
    """Replayed under the policy it was recorded with, a window gives back exactly what its events say."""
    r = mixed()
    before = config(retry={"max_attempts": 3})
    figures = replay(records_from_events(r.events), before, before)
    counts = recorded_counts(r.events)
    tally = figures.before
    assert {k: getattr(tally, k) for k in counts} == counts
    assert figures.after == figures.before
    assert tally.errors_by_kind == {"timeout": 2, "connect_error": 1, "rate_limited": 1, "circuit_open": 2}
    assert tally.attempts == 30 + 2 + 3 + 3 + 1 + 1 + 0 + 0 + 1 + 1 + 5 + 1


def test_a_retried_call_is_rebuilt_attempt_by_attempt() -> None:
    r = Recording()
    r.call(1.0, ["timeout", "http_5xx", "ok"], observed={1: 333.0})
    r.call(2.0, ["http_5xx", "circuit_open"], stale_age=4.0)
    first, second = records_from_events(r.events)
    assert [a.outcome for a in first.attempts] == ["timeout", "http_5xx", "ok"]
    assert (first.attempts[0].latency_ms, first.attempts[0].limit_ms, first.attempts[0].delay_ms) == (333.0, 200.0, 100.0)
    assert (first.outcome, first.params_hash is not None, first.idempotent) == ("ok", True, True)
    assert [a.outcome for a in second.attempts] == ["http_5xx", "circuit_open"]
    assert (second.outcome, second.stale_age, second.refused_by_breaker) == ("stale", 4.0, True)


def test_summary_successes_follow_the_ok_timeline_when_there_is_one() -> None:
    r = Recording()
    for _ in range(4):
        r.ok(1.0)
    for _ in range(2):
        r.ok(7.0)
    r.flush(10.0, slot_s=2.0)
    times = sorted(rec.ts - T0 for rec in records_from_events(r.events))
    assert times == [0.25, 0.75, 1.25, 1.75, 6.5, 7.5]
    r = Recording()
    for _ in range(4):
        r.ok(1.0)
    r.flush(8.0)
    assert sorted(rec.ts - T0 for rec in records_from_events(r.events)) == [1.0, 3.0, 5.0, 7.0]


def test_a_longer_per_try_completes_the_observed_timeouts_only() -> None:
    r = Recording()
    for i in range(10):
        r.call(1.0 + i, ["timeout"], method="resources/read", tool=None, observed={1: 420.0 if i < 8 else 900.0})
    for i in range(2):
        r.call(20.0 + i, ["timeout"], method="resources/read", tool=None)  # never observed
    before, after = config(timeouts={"per_try": "200ms"}), config(timeouts={"per_try": "500ms"})
    figures = replay(records_from_events(r.events), before, after)
    assert (figures.before.errors, figures.after.errors) == (12, 4)
    assert (figures.before.timeouts, figures.after.timeouts) == (12, 4)
    assert figures.after.succeeded == 8


def test_a_shorter_per_try_times_out_the_slow_successes() -> None:
    r = Recording()
    for i in range(10):
        r.ok(1.0 + i, method="resources/read", tool=None, latency_ms=80.0 if i < 6 else 1800.0)
    r.flush(20.0)
    figures = replay(records_from_events(r.events), config(timeouts={"per_try": "5s"}), config(timeouts={"per_try": "1s"}))
    assert (figures.after.errors, figures.after.errors_by_kind, figures.after.succeeded) == (4, {"timeout": 4}, 6)


def test_the_total_deadline_bounds_a_raised_per_try() -> None:
    r = Recording()
    r.call(1.0, ["timeout"], method="resources/read", tool=None, observed={1: 700.0})
    r.call(2.0, ["timeout"], method="resources/read", tool=None, observed={1: 400.0})
    before = config(timeouts={"per_try": "200ms", "total": "500ms"})
    after = config(timeouts={"per_try": "1s", "total": "500ms"})
    assert replay(records_from_events(r.events), before, after).after.errors == 1


def test_fewer_attempts_send_less_and_fail_the_calls_that_needed_the_last() -> None:
    r = Recording()
    for i in range(6):
        r.call(1.0 + i, ["http_5xx", "http_5xx", "http_5xx"])
    r.call(10.0, ["http_5xx", "http_5xx", "ok"])
    r.call(11.0, ["http_5xx", "ok"])
    figures = replay(records_from_events(r.events), config(retry={"max_attempts": 3}), config(retry={"max_attempts": 2}))
    assert (figures.before.attempts, figures.after.attempts) == (6 * 3 + 3 + 2, 6 * 2 + 2 + 2)
    assert (figures.before.retries, figures.after.retries) == (6 * 2 + 2 + 1, 6 + 1 + 1)
    assert (figures.before.errors, figures.after.errors) == (6, 7)
    assert figures.after.errors_by_kind == {"http_5xx": 7}
    assert figures.after.estimated == 0


def test_more_attempts_succeed_at_the_recorded_rate_of_the_last_one() -> None:
    """Attempt 3 succeeded for 30 of the 50 calls that reached it (60%): of 20 calls out of attempts, a 4th
    rescues 12 (20 x 0.6), a 5th 4 of the 8 left (8 x 0.6 = 4.8, whole calls, the fraction carried): 16."""
    r = Recording()
    for i in range(30):
        r.call(1.0 + i, ["http_5xx", "http_5xx", "ok"])
    for i in range(20):
        r.call(40.0 + i, ["http_5xx", "http_5xx", "http_5xx"])
    records = records_from_events(r.events)
    figures = replay(records, config(retry={"max_attempts": 3}), config(retry={"max_attempts": 5}))
    assert (figures.before.errors, figures.after.errors) == (20, 4)
    assert figures.after.estimated == 20
    assert figures.after.attempts == 30 * 3 + 20 * 3 + 20 + 8


def test_retries_never_go_to_calls_that_are_not_idempotent_unless_the_policy_says_so() -> None:
    r = Recording()
    for i in range(10):
        r.call(1.0 + i, ["http_5xx", "ok"], tool="write", idempotent=True)
    for i in range(10):
        r.call(20.0 + i, ["http_5xx"], tool="write", idempotent=False, why="not_idempotent")
    records = records_from_events(r.events)
    before = config(retry={"max_attempts": 2})
    assert replay(records, before, config(retry={"max_attempts": 3})).after.errors == 10
    declared = config(retry={"max_attempts": 2}, rules=[{"match": {"tool": "write"}, "idempotent": True}])
    figures = replay(records, before, declared)
    assert (figures.after.errors, figures.after.retries, figures.after.estimated) == (0, 20, 10)


def test_a_rate_limit_refuses_on_simulated_time() -> None:
    """20 calls 0.125 s apart against 4/s with a burst of 4: the level drains 0.5 between calls, so the
    first 7 find a token, then every other call does (the 8th, 10th, ... 20th are refused)."""
    records = [
        CallRecord(T0 + 1 + 0.125 * i, "api", "tools/call", "search", client="same", attempts=(AttemptRecord("ok"),))
        for i in range(20)
    ]
    limited = config(rate_limit={"rate": 4, "per": "1s", "burst": 4, "key": "upstream"})
    figures = replay(records, config(), limited)
    assert (figures.after.rate_limited, figures.after.errors_by_kind, figures.after.attempts) == (7, {"rate_limited": 7}, 13)
    waiting = config(rate_limit={"rate": 4, "per": "1s", "burst": 4, "key": "upstream", "max_wait": "200ms"})
    # Waiting up to 200 ms lets the 8th take the token due 125 ms later; from then on every other call waits
    # 250 ms (one queued ahead of it) and is refused: the 9th, 11th, ... 19th.
    assert replay(records, config(), waiting).after.rate_limited == 6
    per_client = [CallRecord(r.ts, "api", "tools/call", "search", client=f"c{i % 2}", attempts=r.attempts) for i, r in enumerate(records)]
    assert replay(per_client, config(), config(rate_limit={"rate": 4, "burst": 4, "key": "client"})).after.rate_limited == 0


def test_a_recorded_rate_limit_refusal_is_sent_when_the_limit_goes() -> None:
    r = Recording()
    r.call(1.0, ["ok"])
    for i in range(3):
        r.call(2.0 + i, ["rate_limited"])
    r.flush(10.0)
    limited = config(rate_limit={"rate": 1, "per": "1m"})
    figures = replay(records_from_events(r.events), limited, config())
    assert (figures.before.rate_limited, figures.after.rate_limited) == (3, 0)
    assert (figures.after.succeeded, figures.after.estimated) == (4, 3)


def test_the_real_breaker_opens_after_its_threshold_and_refuses_until_reset() -> None:
    """10 calls of tools/list 1 s apart fail 503; breaker at 5 consecutive failures, reset 30 s: 5 are sent,
    5 refused. With a 3 s reset, half-open trials let every 4th through (it fails and reopens)."""
    r = Recording()
    for i in range(10):
        r.call(1.0 + i, ["http_5xx"], method="tools/list", tool=None)
    records = records_from_events(r.events)
    figures = replay(records, config(), config(breaker={"failure_threshold": 5, "reset_timeout": "30s"}))
    assert (figures.after.attempts, figures.after.breaker_refused) == (5, 5)
    assert figures.after.errors_by_kind == {"http_5xx": 5, "circuit_open": 5}
    short = replay(records, config(), config(breaker={"failure_threshold": 5, "reset_timeout": "3s"}))
    assert (short.after.attempts, short.after.breaker_refused) == (6, 4)


def test_client_paced_timeouts_never_open_the_upstream_breaker() -> None:
    r = Recording()
    for i in range(10):
        r.call(1.0 + i, ["timeout"], method="resources/read", tool=None)
    figures = replay(records_from_events(r.events), config(), config(breaker={"failure_threshold": 2}))
    assert figures.after.breaker_refused == 0


def test_a_refusal_the_breaker_no_longer_makes_is_sent_and_answered_as_the_upstream_last_answered() -> None:
    r = Recording()
    r.call(1.0, ["http_5xx"], method="tools/list", tool=None)
    for i in range(3):
        r.call(2.0 + i, ["circuit_open"], method="tools/list", tool=None)
    r.call(6.0, ["ok"], method="tools/list", tool=None)
    r.call(7.0, ["circuit_open"], method="tools/list", tool=None)
    r.flush(10.0)  # the success is known from the summary, placed at 5 s (the middle of its window)
    before = config(breaker={"failure_threshold": 1, "reset_timeout": "30s"})
    figures = replay(records_from_events(r.events), before, config())
    assert figures.before.breaker_refused == 4
    assert (figures.after.breaker_refused, figures.after.errors_by_kind, figures.after.estimated) == (0, {"http_5xx": 4}, 4)
    assert figures.after.succeeded == 2


def test_cached_fallback_serves_failures_whose_params_succeeded_within_max_stale() -> None:
    r = Recording()
    r.call(1.0, ["http_5xx", "ok"], params="a")  # a success of params a at about 1 s, known from its events
    r.call(50.0, ["http_5xx"], params="a")
    r.call(51.0, ["http_5xx"], params="b")  # b never succeeded
    r.call(400.0, ["http_5xx"], params="a")  # past ttl + max_stale
    records = records_from_events(r.events)
    before = config(retry={"max_attempts": 2})
    after = config(retry={"max_attempts": 2}, cache={"mode": "fallback", "ttl": "30s", "max_stale": "5m"})
    figures = replay(records, before, after)
    assert (figures.after.served_stale, figures.after.errors) == (1, 2)
    longer = config(retry={"max_attempts": 2}, cache={"mode": "fallback", "ttl": "30s", "max_stale": "10m"})
    assert replay(records, before, longer).after.served_stale == 2


def test_a_longer_max_stale_keeps_serving_after_the_recorded_stale_answers_ran_out() -> None:
    """Stale answers stood in until the entry was 280 s old (max_stale 5m, ttl 0); failures followed."""
    r = Recording()
    for i in range(5):
        r.call(10.0 + 10 * i, ["http_5xx"], stale_age=240.0 + 10 * i)
    for i in range(6):
        r.call(80.0 + 30 * i, ["http_5xx"])
    cache = {"mode": "fallback", "ttl": "0s", "max_stale": "5m"}
    before = config(cache=cache)
    figures = replay(records_from_events(r.events), before, config(cache={**cache, "max_stale": "7m"}))
    # The entry was stored at 10 - 240 = -230 s: 7 minutes cover failures up to 190 s, the ones at 80..170.
    assert (figures.before.served_stale, figures.after.served_stale) == (5, 5 + 4)


def test_an_upstream_the_after_config_does_not_have_is_replayed_as_recorded() -> None:
    record = CallRecord(T0, "gone", "tools/call", "x", attempts=(AttemptRecord("http_5xx"),), outcome="failed", error="http_5xx")
    simulator = Simulator(config(), config(timeouts={"per_try": "1s"}))
    simulator.feed(record)
    assert simulator.figures().after == simulator.figures().before == Tally(
        calls=1, errors=1, errors_by_kind={"http_5xx": 1}, attempts=1
    )


def test_figures_are_kept_per_call_kind() -> None:
    figures = replay(records_from_events(mixed().events), config(retry={"max_attempts": 3}), config(retry={"max_attempts": 3}))
    reads = figures.select(lambda kind: kind[1] == "resources/read")
    assert (reads.before.calls, reads.before.errors) == (6, 1)
    assert set(figures.kinds) == {("api", "tools/call", "search"), ("api", "resources/read", None)}


@pytest.mark.parametrize("learned", [False, True])
def test_the_simulator_is_incremental_and_learns_rates_when_none_are_given(learned: bool) -> None:
    """Attempt 2 succeeds for every other call: a third attempt rescues half of the exhausted ones, with
    the rate from the whole window or learned live from the calls fed so far (0.5 at each failure)."""
    r = Recording()
    for i in range(10):
        r.call(1.0 + 2 * i, ["http_5xx", "ok"])
        r.call(2.0 + 2 * i, ["http_5xx", "http_5xx"])
    records = records_from_events(r.events)
    before, after = config(retry={"max_attempts": 2}), config(retry={"max_attempts": 3})
    simulator = Simulator(before, after) if learned else Simulator(before, after, rates=AttemptRates.of(records))
    for record in records:
        simulator.feed(record)
    assert (simulator.figures().before.errors, simulator.figures().after.errors) == (10, 5)


def test_a_call_belongs_to_the_summary_of_its_answer_not_of_its_late_observation() -> None:
    """A timed-out call is answered (call_failed) in one 200 ms summary window; its `timeout_observed`
    comes in the next. It is the first window's failure: rebuilt once, never again from the summary."""
    s = Stream()
    call = s.call_id()
    s.timeout(0.10, 200.0, call_id=call, idempotent=False)
    s.call_failed(0.11, "timeout", call_id=call, idempotent=False)  # reason: its kind, here
    s.call_ok(0.2, ok=0, calls=1, window_s=0.2, outcomes={"timeout": 1})
    s.timeout_observed(0.33, 200.0, 420.0, call_id=call, idempotent=False)
    s.call_ok(0.4, ok=0, calls=0, window_s=0.2, outcomes={})
    records = records_from_events(s.events)
    assert [(r.outcome, r.call_id, r.from_summary) for r in records] == [("failed", call, False)]
    assert records[0].attempts[0].latency_ms == 420.0
