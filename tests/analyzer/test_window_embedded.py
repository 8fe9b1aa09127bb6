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
