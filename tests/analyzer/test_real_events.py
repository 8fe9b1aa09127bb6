"""The analyzer on events exactly as the proxy publishes them (ints for call ids, odd events skipped)."""

from __future__ import annotations

from proxy.analyzer import Analysis
from proxy.events.recorder import EventBus, EventRecorder
from tests.fakes import make_call


def test_retried_calls_that_recovered_are_recognized_from_real_events() -> None:
    bus = EventBus()
    recorder = EventRecorder(bus)
    for n in range(3):
        call = make_call(b'{"jsonrpc":"2.0","id":%d,"method":"tools/list"}' % n)
        recorder.policy_event("retry", call, failure="http_5xx", delay_ms=1.0, error={"kind": "http_5xx", "message": "503", "http_status": 503, "jsonrpc_code": None})
    assert all(isinstance(e["call_id"], int) for e in bus.recent())
    (stats,) = Analysis.from_events(bus.recent(), window_s=None).all_targets()
    assert (stats.retries, len(stats.retried_calls), stats.recovered_calls) == (3, 3, 3)


def test_malformed_events_are_skipped_not_fatal() -> None:
    good = {"v": 1, "id": 1, "ts": 1.0, "type": "call_ok", "upstream": "up", "method": "tools/list", "tool": None,
            "calls": 2, "ok": 2, "outcomes": {"ok": 2}, "ok_by_attempt": {"1": 2}}
    bad = [
        {**good, "id": 2, "outcomes": ["not", "a", "dict"]},
        {**good, "id": 3, "ok_by_attempt": {"x": 1}},
        {**good, "id": 4, "v": True},
        "not an event",
    ]
    analysis = Analysis.from_events([good, *bad], window_s=None)  # type: ignore[list-item]
    assert analysis.skipped == 4
    (stats,) = analysis.all_targets()
    assert (stats.calls, stats.ok) == (2, 2)
