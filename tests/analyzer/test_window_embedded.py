"""The embedded analyzer's feed: it reads the bus's ring often, in chunks, and counts what it missed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from proxy.analyzer import embedded
from proxy.analyzer.embedded import EmbeddedAnalyzer
from proxy.config.model import AnalyzerConfig
from proxy.events.recorder import EventBus, EventRecorder, make_event


def _analyzer(tmp_path: Path, bus: EventBus) -> EmbeddedAnalyzer:
    path = tmp_path / "proxy.yaml"
    path.write_text("upstreams:\n  - name: api\n    url: http://127.0.0.1:1/mcp\n")
    return EmbeddedAnalyzer(path, AnalyzerConfig.model_validate({}), bus, EventRecorder(bus, False, True, False))


def _publish(bus: EventBus, n: int) -> None:
    for _ in range(n):
        event = make_event("call_failed", None, upstream="api", error={"kind": "http_5xx", "message": "x"})
        event.update(method="tools/call", tool="search", call_id="c")
        bus.publish(event)


def test_events_the_ring_dropped_before_a_read_are_counted_missed(tmp_path: Path) -> None:
    bus = EventBus(capacity=10)
    analyzer = _analyzer(tmp_path, bus)
    _publish(bus, 4)
    analyzer.step(0.0)
    assert (analyzer.events_seen, analyzer.events_missed) == (4, 0)
    _publish(bus, 25)  # the ring keeps the last 10: 15 of these are gone before the next read
    analyzer.step(1.0)
    document = analyzer.document()
    assert (document["events_seen"], document["events_missed"]) == (14, 15)
    assert len(analyzer._window) == 14


async def test_the_feed_takes_everything_in_chunks_and_gives_the_loop_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bus = EventBus(capacity=10_000)
    analyzer = _analyzer(tmp_path, bus)
    monkeypatch.setattr(embedded, "FEED_CHUNK", 100)
    _publish(bus, 1050)
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    await analyzer._feed()
    counter.cancel()
    assert (analyzer.events_seen, analyzer.events_missed, len(analyzer._window)) == (1050, 0, 1050)
    assert turns >= 10  # the loop ran between the 11 chunks
    await analyzer._feed()  # nothing new: nothing taken twice
    assert analyzer.events_seen == 1050


async def test_the_analysis_runs_off_the_event_loop_and_what_comes_meanwhile_is_taken_in_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round's analysis waits, in its worker thread, for the event loop to publish 7 more events and
    feed them: were it run in the loop, the loop could do neither (the wait would time out). What the feed
    read meanwhile is held back, then taken in once, after the analysis: the window never changes under it."""
    import threading

    bus = EventBus(capacity=1000)
    analyzer = _analyzer(tmp_path, bus)
    _publish(bus, 3)
    analyzing, fed = threading.Event(), threading.Event()
    seen_by_analysis: list[int] = []
    real = embedded.propose

    def slow_propose(analysis: object, text: str) -> object:
        seen_by_analysis.append(len(analyzer._window))
        analyzing.set()
        assert fed.wait(30), "the event loop did not run while the analysis did"
        seen_by_analysis.append(len(analyzer._window))
        return real(analysis, text)  # type: ignore[arg-type]

    monkeypatch.setattr(embedded, "propose", slow_propose)
    step = asyncio.ensure_future(analyzer._step_off_loop())
    while not analyzing.is_set():
        await asyncio.sleep(0.01)
    _publish(bus, 7)
    await analyzer._feed()
    assert (len(analyzer._window), len(analyzer._backlog)) == (3, 7)
    fed.set()
    await step
    assert seen_by_analysis == [3, 3]
    assert (len(analyzer._window), analyzer._backlog, analyzer.events_seen, analyzer.events_missed) == (10, [], 10, 0)
    assert analyzer.computed_at is not None


def test_late_events_of_calls_begun_before_a_reload_stay_out_of_the_new_window(tmp_path: Path) -> None:
    """A call timed out under the old config is observed answering seconds after the reload: that is the old
    config's evidence (it would propose the next step of a change just made). Calls after it count."""
    bus = EventBus(capacity=100)
    analyzer = _analyzer(tmp_path, bus)

    def call_event(kind: str, call_id: int, **fields: object) -> None:
        event = make_event(kind, None, upstream="api", **fields)
        event.update(method="tools/call", tool="search", call_id=call_id, attempt=1)
        bus.publish(event)

    call_event("timeout", 7, limit_ms=1000.0, observing=True)
    bus.publish(make_event("config_reloaded", None, trigger="api", file_hash="abc"))
    call_event("timeout_observed", 7, limit_ms=1000.0, observed_ms=1400.0)  # late: call 7 began before
    call_event("timeout", 8, limit_ms=2000.0, observing=True)  # a call under the new config
    analyzer.step(0.0)
    (stats,) = analyzer._window.analysis().all_targets()
    assert (stats.timeouts, stats.observed_ms, analyzer.events_seen) == (1, [], 4)


def test_an_event_of_no_call_of_its_own_is_never_fenced_out(tmp_path: Path) -> None:
    """A refusal the proxy makes for a message that is no call (call_id 0: a rate-limited notification)."""
    bus = EventBus(capacity=100)
    analyzer = _analyzer(tmp_path, bus)
    event = make_event("rate_limited", None, upstream="api", retry_after=1.0)
    event.update(method="tools/call", tool="search", call_id=0, attempt=1)
    bus.publish(event)
    analyzer.step(0.0)
    assert analyzer._window.analysis().by_type["rate_limited"] == 1
