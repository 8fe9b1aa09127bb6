"""What-if fidelity against real proxy runs: the before column is what clients saw, and a change replays only
what it can change (exact figures, on streams shaped like the ones the proxy wrote)."""

from __future__ import annotations

from typing import Any

from proxy.config.model import ProxyConfig, load_config
from proxy.trials import records_from_events, replay
from tests.analyzer.builders import Stream
from tests.trials.builders import Recording


def config(**upstream: Any) -> ProxyConfig:
    """One upstream `api`, breaker off and one attempt unless `upstream` says otherwise."""
    import yaml

    body = {"name": "api", "url": "http://127.0.0.1:1/mcp", "breaker": {"enabled": False}, "retry": {"max_attempts": 1}}
    body.update(upstream)
    return load_config(yaml.safe_dump({"upstreams": [body]}))


def straddling() -> Stream:
    """200 ms summaries, as the proxy writes them, with retried successes whose backoff and answer cross into a
    later window. A `retry` event is written before its 100 ms backoff: call A's last event (0.15) lies in the
    first window, its answer (after 0.25) was counted by the second; C's (0.31) in the second, counted by the third.
    B retried and was answered inside the first window; D failed in the second."""
    s = Stream()
    a, b, c, d = (s.call_id() for _ in range(4))
    kw: dict[str, Any] = {"method": "resources/read", "tool": None}
    s.retry(0.05, "http_429", attempt=1, call_id=b, **kw)
    s.retry(0.15, "http_429", attempt=1, call_id=a, **kw)
    s.call_ok(0.2, ok=3, calls=3, ok_by_attempt={1: 2, 2: 1}, window_s=0.2, **kw)  # two without events, and B
    s.retry(0.30, "http_429", attempt=1, call_id=c, **kw)
    s.retry(0.31, "http_429", attempt=2, call_id=c, **kw)
    s.retry(0.32, "http_429", attempt=1, call_id=d, **kw)
    s.retry_exhausted(0.38, "http_429", attempt=2, call_id=d, **kw)
    s.call_failed(0.38, "http_429", attempt=2, call_id=d, **kw)
    s.call_ok(0.4, ok=2, calls=3, ok_by_attempt={1: 1, 2: 1}, window_s=0.2, outcomes={"ok": 2, "http_429": 1}, **kw)
    s.call_ok(0.6, ok=1, calls=1, ok_by_attempt={3: 1}, window_s=0.2, **kw)  # C
    return s


def test_a_retried_success_is_counted_once_when_its_answer_crosses_a_summary_boundary() -> None:
    s = straddling()
    records = records_from_events(s.events)
    rebuilt = sorted((r.call_id, tuple(a.outcome for a in r.attempts), r.outcome) for r in records if not r.from_summary)
    assert rebuilt == [
        ("c1", ("http_429", "ok"), "ok"),
        ("c2", ("http_429", "ok"), "ok"),
        ("c3", ("http_429", "http_429", "ok"), "ok"),
        ("c4", ("http_429", "http_429"), "failed"),
    ]
    # The summaries' other successes: exactly the three without events, all on their first attempt.
    assert sorted(tuple(a.outcome for a in r.attempts) for r in records if r.from_summary) == [("ok",)] * 3
    # The invariant: replayed under its own policy, the before column is what clients saw.
    before = config(retry={"max_attempts": 3})
    figures = replay(records, before, before)
    tally = figures.before
    assert (tally.calls, tally.succeeded, tally.errors, dict(tally.errors_by_kind)) == (7, 6, 1, {"http_429": 1})
    assert (tally.attempts, tally.retries) == (12, 5)
    assert figures.after == figures.before


def test_a_cache_only_rule_leaves_attempts_and_breaker_refusals_as_recorded() -> None:
    """The breaker refused 4 calls after 3 failures (as it may live: another client's failures counted too),
    which a breaker at 5 failures replayed alone would not. A candidate that only adds a rule with a cache
    for these calls cannot change that: attempts and refusals stay as recorded; only the stale answers change."""
    r = Recording()
    r.ok(1.0, method="tools/list", tool=None)
    r.flush(1.5)  # its success is placed at 0.75 s
    for i in range(3):
        r.call(2.0 + i * 0.1, ["http_5xx"], method="tools/list", tool=None)
    for i in range(4):
        r.call(2.5 + i * 0.1, ["circuit_open"], method="tools/list", tool=None)
    r.flush(5.0)
    breaker = {"failure_threshold": 5, "reset_timeout": "1s"}
    before = config(breaker=breaker)
    cached = config(breaker=breaker, rules=[{"match": {"method": "tools/list"}, "cache": {"mode": "fallback"}}])
    figures = replay(records_from_events(r.events), before, cached)
    b, a = figures.before, figures.after
    assert (b.attempts, b.breaker_refused, b.errors, b.served_stale) == (4, 4, 7, 0)
    # The stale answers stand on a success whose params the summary did not name: estimates, all 7.
    assert (a.attempts, a.breaker_refused, a.retries, a.estimated) == (4, 4, 0, 7)
    assert (a.errors, a.served_stale) == (0, 7)


def sse_failures(buffered: int) -> list[dict[str, Any]]:
    """Reads answered 100 times; 10 answers broke while being relayed (``stream_broken``, as
    recorded before ``streamed`` existed), 10 ended unanswered while being relayed (``stream_ended``,
    ``streamed``), and `buffered` buffered reads ended unanswered before anything was sent (``stream_ended``)."""
    s = Stream()
    s.call_ok(40.0, method="resources/read", ok=100, calls=120 + buffered, window_s=40.0)
    for i in range(20 + buffered):
        kind = "stream_broken" if i < 10 else "stream_ended"
        event = s.call_failed(1.0 + i, kind, method="resources/read", params=f"p{i % 4}")
        event["reason"] = "upstream_stream_broken" if i < 10 else "upstream_unavailable"
        if 10 <= i < 20:
            event["streamed"] = True
    return s.events


def test_cache_fallback_leaves_out_failures_of_answers_already_being_relayed() -> None:
    from proxy.analyzer import analyze
    from proxy.analyzer.engine import SYMPTOMS
    from tests.analyzer import scenarios as sc

    [proposal] = analyze(sse_failures(buffered=12), sc.CONFIG, env={}, rules=SYMPTOMS)[1]
    assert (proposal.rule, proposal.evidence["failed"], proposal.effect.numbers["failed"]) == ("cache_fallback", 12, 12)
    assert analyze(sse_failures(buffered=0), sc.CONFIG, env={}, rules=SYMPTOMS)[1] == []


def test_the_simulator_serves_no_stale_answer_for_an_answer_already_being_relayed() -> None:
    events = sse_failures(buffered=12)
    records = records_from_events(events)
    failed = sorted((r.error, r.streamed) for r in records if r.outcome == "failed")
    assert failed == [("stream_broken", True)] * 10 + [("stream_ended", False)] * 12 + [("stream_ended", True)] * 10
    before = config()
    after = config(rules=[{"match": {"method": "resources/read"}, "cache": {"mode": "fallback"}}])
    figures = replay(records, before, after)
    assert (figures.before.errors, figures.before.served_stale) == (32, 0)
    # The summary's successes (params unknown) are spread over its window: the 12 buffered failures come after
    # stored answers, the relayed ones stay failures.
    assert (figures.after.errors, figures.after.served_stale, dict(figures.after.errors_by_kind)) == (
        20, 12, {"stream_broken": 10, "stream_ended": 10}
    )
