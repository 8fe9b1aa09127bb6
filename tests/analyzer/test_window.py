"""The incremental window: its analysis equals `Analysis.from_events` of the same events, field by field.

The window folds each event once into a time slice and merges the slices on demand (`Window`,
`Analysis.merge`); these tests hold it to the one-shot fold of the same events (those the window
`covers`: it is slice-granular at its old end), for seeded realistic streams (`event_mix`) under
hypothesis-chosen window lengths, slice counts, rates and arrival disorder.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.analyzer import Analysis, Window, model
from proxy.analyzer.stats import Histogram
from tests.analyzer.builders import T0, Stream, hashed
from tests.analyzer.event_mix import EventMix


def plain(value: Any) -> Any:
    """Every field of `value`, recursively, as comparable data: exact floats, list order kept, dict order kept."""
    if isinstance(value, Histogram):
        return ("histogram", value.bounds, value.counts, value.max_ms)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, [(f.name, plain(getattr(value, f.name))) for f in dataclasses.fields(value)])
    if isinstance(value, Counter):
        return ("counter", sorted(((repr(k), v) for k, v in value.items())))
    if isinstance(value, dict):
        return ("dict", [(plain(k), plain(v)) for k, v in value.items()])
    if isinstance(value, set):
        return ("set", sorted(map(repr, value)))
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


def expected(window: Window, arrivals: list[dict[str, Any]]) -> Analysis:
    """The one-shot fold of the events the window holds (no further cut), labelled with its length."""
    analysis = Analysis.from_events([e for e in arrivals if window.covers(e["ts"])], window_s=None)
    analysis.window_s = window.window_s
    return analysis


def disorder(events: list[dict[str, Any]], jitter: float, rng: random.Random) -> list[dict[str, Any]]:
    """The events in an arrival order where each may come up to `jitter` seconds (of its ts) late."""
    return sorted(events, key=lambda e: e["ts"] + rng.uniform(0.0, jitter))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    window_s=st.sampled_from([20.0, 60.0, 75.0]),
    slices=st.sampled_from([1, 4, 30, 31]),
    rate=st.sampled_from([5.0, 30.0, 80.0]),
    jitter=st.sampled_from([0.0, 0.3, 0.99]),
    length=st.floats(5.0, 120.0),
)
def test_incremental_window_equals_the_one_shot_fold(
    seed: int, window_s: float, slices: int, rate: float, jitter: float, length: float
) -> None:
    mix = EventMix(seed, rate, extras=True)
    arrivals = disorder(list(mix.until(length)), jitter, random.Random(seed))
    window = Window(window_s, slices=slices)
    checkpoints = {len(arrivals) // 3, len(arrivals) // 2, len(arrivals)}
    for number, event in enumerate(arrivals, 1):
        window.add(event)
        if number in checkpoints:  # mid-stream too: an analysis must not disturb the slices it merges
            seen = arrivals[:number]
            got = window.analysis()
            assert plain(got) == plain(expected(window, seen))
            assert plain(window.analysis()) == plain(got)
            assert len(window) == sum(1 for e in seen if window.covers(e["ts"]))
    assert window.late == 0


def test_the_window_is_slice_granular_at_its_old_end() -> None:
    s = Stream()
    window = Window(60.0, slices=30)  # 2 s slices
    for at in (0.5, 1.9, 2.0, 61.0, 62.5):
        window.add(s.call_failed(at, "http_5xx"))
    # latest 62.5 is in slice T0/2 + 31; the window holds that slice and the 30 before: from T0 + 2.0
    assert window.start == T0 + 2.0
    assert (len(window), window.ignored) == (3, 0)
    analysis = window.analysis()
    assert (analysis.events, analysis.window_start, analysis.window_end) == (3, T0 + 2.0, T0 + 62.5)
    window.add(s.call_failed(1.0, "http_5xx"))  # older than the oldest slice: ignored, never counted
    assert (len(window), window.ignored, window.analysis().events) == (3, 1, 3)


def test_a_timeout_and_its_retry_in_two_slices_are_one_failed_attempt() -> None:
    s = Stream()
    window = Window(60.0, slices=30)
    s.timeout(1.999, 500.0, call_id="c1")
    s.retry(2.001, "timeout", call_id="c1")  # the same attempt, reported again in the next slice
    s.call_failed(2.5, "timeout", call_id="c1", attempt=2)
    for event in s.events:
        window.add(event)
    got = window.analysis()
    assert window.slice_of(T0 + 1.999) + 1 == window.slice_of(T0 + 2.001)
    assert [(ts, kind) for ts, _, kind in got.attempt_failures] == [(T0 + 1.999, "timeout"), (T0 + 2.5, "timeout")]
    assert plain(got) == plain(expected(window, s.events))


def test_an_event_later_than_the_reorder_delay_is_counted_exactly() -> None:
    s = Stream()
    events = [s.call_failed(float(at), "http_5xx") for at in range(10)]
    window = Window(60.0, slices=1)
    for event in [*events[:3], *events[4:], events[3]]:  # event 3 comes 6 s late
        window.add(event)
    assert window.late == 1
    got, want = window.analysis(), expected(window, events)
    assert (got.events, got.by_type, got.targets.keys()) == (want.events, want.by_type, want.targets.keys())
    stats = got.all_targets()[0]
    assert sorted(f.id for f in stats.failed) == [f.id for f in want.all_targets()[0].failed]
    # only its place in the list differs: after the events folded before it came (those older than the
    # latest minus the reorder delay), before the ones still held back then
    order = [*events[:3], *events[4:8], events[3], *events[8:]]
    assert [f.id for f in stats.failed] == [e["id"] for e in order]


@pytest.mark.parametrize("bound", [2, 3, 4, 5, 100])
def test_the_params_that_succeeded_merge_across_slices_as_the_fold_keeps_them(bound: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per target, each params hash keeps the first time a summary named it, in that order, up to the bound:
    past it the target is marked full, whichever slices the hashes came in."""
    monkeypatch.setattr(model, "MAX_SEEN_PARAMS", bound)
    s = Stream()
    for at, named in ((1.0, ["a", "b"]), (3.0, ["b", "c"]), (5.0, ["a", "d", "e"]), (7.0, ["c"])):
        s.call_ok(at, tool="lookup", ok=len(named), ok_params=named)
    window = Window(60.0, slices=30)  # 2 s slices: one summary each
    for event in s.events:
        window.add(event)
    got = window.analysis()
    assert plain(got) == plain(expected(window, s.events))
    stats = got.all_targets()[0]
    kept = ["a", "b", "c", "d", "e"][:bound]
    assert list(stats.ok_params_since) == [hashed(p) for p in kept]
    assert stats.ok_params_full is (bound < 5)


def test_memory_is_the_slices_not_the_events() -> None:
    mix = EventMix(7, rate=200.0)
    window = Window(30.0, slices=10)
    for event in mix.until(200.0):
        window.add(event)
        assert len(window._parts) <= 11
        # held back: at most the events of the reorder delay (and the ms a call's events span)
        assert all(event["ts"] - pending[0] <= window.reorder_s + 0.01 for pending in window._pending)
    assert window.analysis().window_start is not None


def test_events_without_a_time_are_not_taken_in() -> None:
    window = Window(60.0)
    window.add({"type": "call_failed"})
    window.add({"type": "x", "ts": "soon"})
    assert (len(window), window.analysis().events, window.start) == (0, 0, None)
