"""The rate an upstream accepts behind its 429s is estimated from the time it was limiting, not from whole
summary windows that include traffic from before the 429s began."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.analyzer import Analysis, Change, Proposal, analyze
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import Stream


def run(events: list[dict[str, Any]]) -> list[Proposal]:
    return analyze(events, sc.CONFIG, env={})[1]


def limited(before: int, timeline: bool = True) -> list[dict[str, Any]]:
    """One 30 s summary window (5 s slots): `before` successes per slot for 15 s, then the upstream limits
    at 4 calls/s (20 per slot) and answers 429 twice a second from 15 s to 29.5 s. Two tools share it."""
    s = Stream()
    for tool, share in (("search", 3), ("lookup", 1)):  # the upstream's targets sum per slot
        line = [before * share // 4] * 3 + [20 * share // 4] * 3
        s.call_ok(30.0, tool=tool, ok=sum(line), window_s=30.0, ok_timeline=line if timeline else None, timeline_slot_s=5.0)
    for i in range(30):
        s.call_failed(15.0 + i * 0.5, "http_429", tool="search", idempotent=False)
    return s.events


def test_a_burst_before_the_429s_does_not_inflate_the_accepted_rate() -> None:
    """300 calls per 5 s before the 429s (60/s): over the whole window that reads as 32/s, a limit the
    upstream would throttle again; from its first 429 to its last it accepted 4/s."""
    upstream = Analysis.from_events(limited(before=300), window_s=None).upstreams["api"]
    assert upstream.accepted() == (4.0, 15.0, "timeline")
    [p] = run(limited(before=300))
    assert p.title == "Rate-limit calls to api at 4/s"
    assert p.changes[0] == Change("api", None, "rate_limit.rate", 4, None)
    assert (p.evidence["accepted_per_s"], p.evidence["rate_basis"], p.evidence["window_seconds"]) == (4.0, "timeline", 15.0)
    assert "(counted over the summary slots from its first 429 to its last)" in p.rationale


def test_a_lull_before_the_429s_does_not_deflate_it() -> None:
    """1 call per second before (the whole window reads 2.5/s): the limit would refuse what it accepts."""
    assert Analysis.from_events(limited(before=5), window_s=None).upstreams["api"].accepted() == (4.0, 15.0, "timeline")
    [p] = run(limited(before=5))
    assert p.changes[0] == Change("api", None, "rate_limit.rate", 4, None)


def test_recordings_without_a_timeline_fall_back_on_whole_windows_and_say_so() -> None:
    assert Analysis.from_events(limited(before=300, timeline=False), window_s=None).upstreams["api"].accepted() == (32.0, 30.0, "whole_windows")
    assert run(limited(before=300, timeline=False)) == []  # 30 429s against 960 accepted: under 5%, as it reads
    [p] = run(limited(before=5, timeline=False))  # 72 calls in 30 s
    assert (p.evidence["rate_basis"], p.evidence["accepted_per_s"], p.changes[0].value) == ("whole_windows", 2.4, 2)
    assert "(counted over whole summary windows holding a 429 (this recording has no per-slot timeline))" in p.rationale


def test_a_quiet_window_between_429s_counts_when_it_has_a_timeline() -> None:
    s = Stream()
    for end in (10.0, 20.0, 30.0):
        s.call_ok(end, tool="search", ok=30, window_s=10.0, ok_timeline=[15, 15], timeline_slot_s=5.0)
    for i in range(20):
        s.call_failed(1.0 + i * 0.05, "http_429", tool="search", idempotent=False)
        s.call_failed(21.0 + i * 0.05, "http_429", tool="search", idempotent=False)
    # slots from 1 s to 21.95 s: [0,5) [5,10) [10,15) [15,20) [20,25): 75 calls in 25 s
    assert Analysis.from_events(s.events, window_s=None).upstreams["api"].accepted() == (3.0, 25.0, "timeline")


def test_a_few_429s_among_many_accepted_calls_are_the_upstream_doing_its_job() -> None:
    s = Stream()
    s.call_ok(30.0, tool="search", ok=3000, window_s=30.0, ok_timeline=[500] * 6, timeline_slot_s=5.0)
    for i in range(20):
        s.call_failed(1.0 + i, "http_429", tool="search", idempotent=False)  # 20 of 2,520: under 5%
    assert run(s.events) == []


def test_a_slot_longer_than_its_window_counts_only_the_window() -> None:
    """Summaries every 200 ms (one slot each): the seconds counted are the windows' own, not a whole slot's.
    A recording from before slots were capped at the window says `timeline_slot_s` 1.0 for a 0.2 s window:
    the rate must still be the 5 calls per 200 ms the upstream accepted (25/s), not 5/s."""
    s = Stream()
    for n in range(1, 11):  # 2 s of 200 ms windows, 5 ok each, and a 429 in every one
        at = 0.2 * n
        s.retry(at - 0.1, "http_429", tool="search")
        s.call_ok(at, tool="search", ok=5, window_s=0.2, ok_timeline=[5], timeline_slot_s=1.0)
    rate, seconds, basis = Analysis.from_events(s.events, window_s=None).upstreams["api"].accepted() or (0, 0, "")
    assert (round(rate, 3), round(seconds, 3), basis) == (25.0, 2.0, "timeline")  # absolute timestamps: float dust


@pytest.mark.parametrize(
    ("clients", "key"),
    [
        (["sha:flooder"] * 30, "client"),  # one identified client's calls met the 429s: its own pace
        (["sha:flooder"] * 27 + ["sha:polite"] * 3, "client"),  # 27 of 30: lower bound 81%
        (["sha:a", "sha:b", "sha:c"] * 10, "upstream"),  # everyone's: the upstream's own limit
        (["addr:127.0.0.1"] * 30, "upstream"),  # a loopback address names no one client
    ],
    ids=["one-client", "mostly-one", "spread", "loopback"],
)
def test_a_limit_is_per_client_when_one_client_met_the_429s(clients: list[str], key: str) -> None:
    events = limited(before=5)
    failed = [e for e in events if e["type"] == "call_failed"]
    assert len(failed) == len(clients)
    for event, client in zip(failed, clients, strict=True):
        event["client"] = client
    [p] = run(events)
    assert {c.key: c.value for c in p.changes}["rate_limit.key"] == key
    assert ("One client had" in p.rationale) == (key == "client")
