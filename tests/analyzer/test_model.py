"""Aggregation: signatures, per-tool numbers, percentiles from histograms, windows, live and offline input."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from proxy.analyzer import Analysis, Window, read_events
from proxy.analyzer.model import Target
from proxy.analyzer.stats import Histogram, format_duration, nice_duration, percentile
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import T0, Stream


def test_percentile_of_samples_interpolates_between_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([10.0], 0.95) == 10.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([float(v) for v in range(101)], 0.95) == 95.0


def test_histogram_percentiles_interpolate_inside_buckets() -> None:
    h = Histogram()
    assert h.percentile(0.5) is None
    assert h.add([100, 200, 500], [0, 10, 10, 0], None)
    assert h.percentile(0.5) == 200.0  # rank 10: the top of (100, 200]
    assert h.percentile(0.25) == 150.0  # rank 5: halfway through (100, 200]
    assert h.percentile(0.9) == 440.0  # rank 18: 8/10 of (200, 500]
    assert not h.add([100, 200], [1, 1, 1], None)  # other bounds: ignored, not mixed in
    assert h.add([100, 200, 500], [0, 0, 0, 4], 900.0)
    assert h.percentile(1.0) == 900.0  # the overflow bucket reaches the largest latency seen
    assert h.percentile(0.95) == pytest.approx(500 + 400 * (22.8 - 20) / 4)  # rank 22.8 of 24


def test_readable_durations() -> None:
    assert [format_duration(nice_duration(s)) for s in (0.22, 0.26, 1.3, 3.318, 33, 61, 100, 299, 301, 4000)] == [
        "250ms", "300ms", "1.5s", "4s", "45s", "90s", "2m", "5m", "6m", "67m",
    ]  # fmt: skip
    assert nice_duration(1000, cap=300) == 300
    assert format_duration(90) == "90s" and format_duration(7200) == "120m"


def test_per_tool_stats_from_summaries_and_failures() -> None:
    s = Stream()
    s.call_ok(10.0, tool="search", ok=90, calls=100, ok_by_attempt={1: 85, 2: 5}, latencies_ms=[80.0] * 45 + [150.0] * 45)
    s.call_ok(20.0, tool="search", ok=10, calls=10, latencies_ms=[600.0] * 10)
    call = s.call_id()
    s.retry(11.0, "http_5xx", call_id=call)
    s.call_failed(12.0, "http_5xx", call_id=call, attempt=2)
    s.retry(13.0, "timeout", message="per-try timeout", idempotent=True)  # retried and recovered
    s.call_failed(14.0, "circuit_open", idempotent=False)
    a = Analysis.from_events(s.events, window_s=None)
    stats = a.targets[Target("api", "tools/call", "search")]
    assert (stats.calls, stats.ok, stats.success_rate) == (110, 100, 100 / 110)
    assert stats.ok_by_attempt == {1: 95, 2: 5}
    assert stats.failures == {"http_5xx": 1, "circuit_open": 1}
    assert (stats.retries, stats.recovered_calls, stats.attempt_failures) == (2, 1, 3)
    assert stats.latency(0.5) == pytest.approx(100 + 100 * 5 / 45)  # rank 50: 5 of the 45 in (100, 200]
    assert stats.latency(0.9) == 200.0  # rank 90: the top of (100, 200]
    assert stats.latency(0.99) == pytest.approx(500 + 250 * 9 / 10)  # rank 99: 9 of the 10 in (500, 750]
    assert stats.idempotent is False
    assert (a.events, a.window_start, a.window_end) == (6, T0 + 10, T0 + 20)


def test_signatures_group_the_same_failure_and_keep_examples() -> None:
    s = Stream()
    for i in range(7):
        s.call_failed(float(i), "http_5xx", message=f"upstream said 50{i} at 0x{i:04x}")
    s.retry(8.0, "http_5xx", message="upstream said 503 at 0xbeef")
    s.call_failed(9.0, "timeout", tool="other")
    a = Analysis.from_events(s.events, window_s=None)
    top, other = a.top_signatures()
    assert (top.count, top.kind, top.tool, top.example_ids, dict(top.by_type)) == (8, "http_5xx", "search", [1, 2, 3, 4, 5], {"call_failed": 7, "retry": 1})
    assert (top.first_ts, top.last_ts) == (T0, T0 + 8)
    assert (other.count, other.kind, other.tool) == (1, "timeout", "other")


def test_the_window_keeps_the_last_seconds_by_event_time() -> None:
    s = Stream()
    for i in range(10):
        s.call_failed(60.0 * i, "http_5xx")
    a = Analysis.from_events(reversed(s.events), window_s=300)
    assert (a.events, a.window_start, a.window_end) == (6, T0 + 240, T0 + 540)
    assert len(Analysis.from_events(s.events, window_s=None).targets[Target("api", "tools/call", "search")].failed) == 10


def test_breakers_health_429_windows_and_sessions() -> None:
    a = Analysis.from_events(sc.flapping_breaker() + sc.flapping_health() + sc.throttled() + sc.lost_sessions(), window_s=None)
    breaker = a.breakers[("api", "api")]
    assert (breaker.opens, breaker.flaps, breaker.reopened_from_half_open, breaker.refused, breaker.tool) == (3, 2, 2, 4, None)
    assert len(a.health["api"].flaps) == 4 and len(a.health["api"].transitions) == 5
    upstream = a.upstreams["api"]
    assert upstream.accepted_rate() == 12.0 and len(upstream.http_429_ts) == 30
    assert [w[:2] for w in upstream.windows_with_429()] == [(T0 + 20, 10.0), (T0 + 30, 10.0), (T0 + 40, 10.0)]
    losses = upstream.sessions.losses
    assert [(loss.recovery, loss.why, loss.call_id) for loss in losses] == [(None, None, None)] * 4  # a recording that does not say
    assert [loss.ts for loss in losses] == [T0, T0 + 10, T0 + 20, T0 + 30]


def test_tool_breakers_name_their_tool() -> None:
    s = Stream()
    s.breaker_state(1.0, "closed", "open", breaker="api/scrape")
    assert Analysis.from_events(s.events).breakers[("api", "api/scrape")].tool == "scrape"


def test_events_of_another_schema_version_are_skipped() -> None:
    s = Stream()
    s.call_failed(1.0, "http_5xx")
    events = [*s.events, {"v": 2, "ts": T0, "type": "call_failed"}, {"type": "x"}, "junk"]
    a = Analysis.from_events(events)  # type: ignore[arg-type]
    assert (a.events, a.skipped) == (1, 3)


def test_live_window_drops_old_events() -> None:
    window = Window(window_s=60)
    s = Stream()
    for i in range(10):
        window.add(s.call_failed(20.0 * i, "http_5xx"))
    assert len(window) == 4  # 120, 140, 160, 180
    assert window.analysis().window_start == T0 + 120
    window.add({"type": "no ts"})
    assert len(window) == 4


def test_config_reloads_are_noted() -> None:
    s = Stream()
    s.config_reloaded(1.0)
    s.config_rejected(2.0)
    a = Analysis.from_events(s.events)
    assert a.config_changes == [1] and a.by_type["config_rejected"] == 1


def test_read_events_from_a_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [orjson.dumps(e) for e in sc.slow_search()]
    path.write_bytes(b"\n".join(lines[:3]) + b"\nnot json\n\n[1]\n" + b"\n".join(lines[3:]) + b"\n")
    assert list(read_events(path)) == sc.slow_search()
