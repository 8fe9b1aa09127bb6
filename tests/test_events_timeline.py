"""The successes of a `call_ok` summary per time slot of its window (`ok_timeline`), on a fake clock:
exact slot counts, whatever the machine."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from proxy.app import running_proxy
from proxy.events.bus import EventBus
from proxy.events.recorder import TIMELINE_SLOTS, EventRecorder, timeline_slot
from proxy.events.schema import event_schema
from tests.conftest import proxy_config
from tests.fakes import make_call, tool_call
from tests.fault_upstream import FaultUpstream
from tests.test_events import post

START = 1_700_000_000.0
SCHEMA = jsonschema.Draft202012Validator(event_schema())


class Wall:
    """Unix time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def recorder(interval: float = 10.0) -> tuple[EventRecorder, Wall]:
    wall = Wall()
    return EventRecorder(EventBus(), summary_interval=interval, clock=wall), wall


def finish_at(events: EventRecorder, wall: Wall, *offsets: float, outcome: str = "ok", tool: str = "lookup") -> None:
    """Calls that end `offsets` seconds after the window started (`START`)."""
    call = make_call(tool_call(tool))
    for offset in offsets:
        wall.now = START + offset
        events.call_finished(call, outcome, 5.0)


def summaries(events: EventRecorder, at: float) -> list[dict[str, Any]]:
    """Flush at `at` seconds after `START`; the summaries, each checked against the schema."""
    before = len(events.bus.recent())
    events.flush_summaries()
    published = events.bus.recent()[before:]
    for summary in published:
        SCHEMA.validate(summary)
        assert summary["ok_timeline"] and sum(summary["ok_timeline"]) == summary["ok"]
    return published


def test_a_default_window_has_ten_one_second_slots() -> None:
    events, wall = recorder()
    finish_at(events, wall, 0.0, 0.2, 0.999, 1.0, 5.5, 9.99)
    finish_at(events, wall, 3.0, 4.0, outcome="upstream_timeout")  # failures are not on the timeline
    wall.now = START + 10.0
    (summary,) = summaries(events, 10.0)
    assert (summary["calls"], summary["ok"], summary["timeline_slot_s"]) == (8, 6, 1.0)
    assert summary["ok_timeline"] == [3, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert summary["window_end"] - summary["window_s"] == START  # where slot 0 begins


def test_a_late_flush_counts_its_last_moments_in_the_last_slot() -> None:
    """The timer fires a few milliseconds after the interval: still 10 slots, the last a little longer."""
    events, wall = recorder()
    finish_at(events, wall, 9.5, 10.002, 10.004)
    wall.now = START + 10.004
    (summary,) = summaries(events, 10.004)
    assert (summary["window_s"], summary["ok_timeline"]) == (10.004, [0] * 9 + [3])


def test_a_window_cut_short_at_shutdown_has_fewer_slots() -> None:
    events, wall = recorder()
    finish_at(events, wall, 0.5, 2.1, 3.4)
    wall.now = START + 3.5
    (summary,) = summaries(events, 3.5)
    assert summary["ok_timeline"] == [1, 0, 1, 1]  # ceil(3.5 / 1)


def test_a_success_at_the_very_end_of_a_short_window_is_in_its_last_slot() -> None:
    events, wall = recorder()
    finish_at(events, wall, 1.5, 4.0)
    wall.now = START + 4.0
    (summary,) = summaries(events, 4.0)
    assert summary["ok_timeline"] == [0, 1, 0, 1]


@pytest.mark.parametrize(
    ("interval", "slot", "slots"),
    [(0.2, 0.2, 1), (1.0, 1.0, 1), (10.0, 1.0, 10), (60.0, 1.0, 60), (120.0, 2.0, 60), (100.0, 100 / 60, 60), (3600.0, 60.0, 60)],
)
def test_a_window_has_at_most_sixty_slots_of_at_least_a_second_or_the_whole_window(interval: float, slot: float, slots: int) -> None:
    assert timeline_slot(interval) == slot and TIMELINE_SLOTS == 60
    events, wall = recorder(interval)
    finish_at(events, wall, 0.0, interval - 0.001, interval * 0.5)
    wall.now = START + interval
    (summary,) = summaries(events, interval)
    timeline = summary["ok_timeline"]
    assert (len(timeline), summary["timeline_slot_s"]) == (slots, slot)
    assert (timeline[0], timeline[-1], timeline[int(interval * 0.5 / slot)]) == ((3, 3, 3) if slots == 1 else (1, 1, 1))


def test_a_two_minute_window_has_two_second_slots() -> None:
    events, wall = recorder(120.0)
    finish_at(events, wall, 1.9, 2.0, 3.9, 119.5)
    wall.now = START + 120.0
    (summary,) = summaries(events, 120.0)
    assert summary["ok_timeline"] == [1, 2] + [0] * 57 + [1]


def test_each_summary_of_a_window_has_its_own_timeline_of_the_same_slots() -> None:
    events, wall = recorder()
    finish_at(events, wall, 1.5, tool="lookup")
    finish_at(events, wall, 2.5, 2.6, tool="search")
    finish_at(events, wall, 3.5, outcome="http_5xx", tool="broken")
    wall.now = START + 10.0
    timelines = {s["tool"]: s["ok_timeline"] for s in summaries(events, 10.0)}
    assert timelines == {
        "lookup": [0, 1] + [0] * 8,
        "search": [0, 0, 2] + [0] * 7,
        "broken": [0] * 10,
    }


def test_the_next_window_starts_at_the_flush_and_a_new_interval_applies_from_it() -> None:
    events, wall = recorder()
    finish_at(events, wall, 9.5)
    wall.now = START + 10.0
    summaries(events, 10.0)
    events.summary_interval = 180.0  # a reload, mid-window: this window keeps its slots
    finish_at(events, wall, 10.5, 12.0)
    wall.now = START + 20.0
    (second,) = summaries(events, 20.0)
    assert (second["window_s"], second["timeline_slot_s"], second["ok_timeline"]) == (10.0, 1.0, [1, 0, 1] + [0] * 7)
    finish_at(events, wall, 20.0 + 7.0)
    wall.now = START + 200.0
    (third,) = summaries(events, 200.0)
    assert (third["timeline_slot_s"], len(third["ok_timeline"]), third["ok_timeline"][2]) == (3.0, 60, 1)


def test_a_clock_set_back_counts_in_the_first_slot() -> None:
    events, wall = recorder()
    finish_at(events, wall, -5.0, 0.5)
    wall.now = START + 10.0
    (summary,) = summaries(events, 10.0)
    assert summary["ok_timeline"] == [2] + [0] * 9


async def test_the_proxy_tells_the_recorder_its_summary_interval(upstream: FaultUpstream) -> None:
    """Slots follow the configured interval: a 2-minute window has 2-second slots."""
    async with running_proxy(proxy_config(upstream.url, events={"summary_interval": "2m"})) as proxy:
        assert await post(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}) == 200
        proxy.events.flush_summaries()  # a window cut short: one slot, of the configured length
        (summary,) = [e for e in proxy.bus.recent() if e["type"] == "call_ok"]
    assert (summary["timeline_slot_s"], summary["ok_timeline"]) == (2.0, [1])
