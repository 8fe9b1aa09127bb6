"""The `session_lost` rule checks that session recovery is on and working, from what became of each loss.

Recovery off and clients hearing losses: ``sessions.recovery: true``, with its diff. Rebuilds running out
`recovery_timeout` while the ones that worked needed most of it: a longer one. Recovery failing for any
other reason, sessions the proxy had no record of, a recording from before `recovery` existed: one
advisory, grouped by reason. Every loss recovered, or too few to tell: nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.analyzer import Analysis, Change, Proposal, Window, analyze, rules_upstream
from proxy.analyzer.rules_upstream import MIN_SESSION_LOST
from proxy.config.model import load_config
from proxy.events.recorder import EventBus, EventRecorder
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import T0, Stream
from tests.fakes import make_call

Events = list[dict[str, Any]]

OFF = sc.CONFIG.replace(
    "    # Overrides per tool.", "    sessions:\n      recovery: false      # clients initialize again themselves\n\n    # Overrides per tool."
)


def run(events: Events, config: str = sc.CONFIG) -> list[Proposal]:
    return analyze(events, config, env={})[1]


def diff_lines(proposal: Proposal) -> list[str]:
    assert proposal.diff is not None
    return [line for line in proposal.diff.splitlines()[2:] if line[:1] in "+-"]


def recovered(s: Stream, at: float, recovery_ms: float = 80.0) -> None:
    """A request meets a loss; the proxy rebuilds the session in `recovery_ms` and replays the request."""
    call = s.call_id()
    s.session_lost(at, recovery="recovering", call_id=call)
    s.session_recovered(at + recovery_ms / 1000, recovery_ms=recovery_ms, call_id=call)


def failed(s: Stream, at: float, why: str, after_s: float = 0.05, rebuilt: bool = True) -> str:
    """A request meets a loss and recovery fails (`why`): after a rebuild of `after_s` (`rebuilt`),
    or refused at once (``too_frequent``, ``not_restorable``...). Returns the call id."""
    call = s.call_id()
    if rebuilt:
        s.session_lost(at, recovery="recovering", call_id=call)
    s.session_lost(at + (after_s if rebuilt else 0.0), recovery="failed", why=why, call_id=call)
    return call


# -- recovery off -----------------------------------------------------------------------------------


def test_losses_heard_with_recovery_off_propose_turning_it_on() -> None:
    s = Stream()
    for i in range(4):
        s.session_lost(10.0 * i, recovery="off", method="tools/call")
    [p] = run(s.events, OFF)
    assert (p.id, p.rule, p.target, p.advisory) == ("2f6efb4504", "session_lost", "api", False)
    assert p.title == "Turn session recovery on for api: 4 requests heard their session was lost"
    assert p.changes == (Change("api", None, "sessions.recovery", True, False),)
    assert diff_lines(p) == [
        "-      recovery: false      # clients initialize again themselves",
        "+      recovery: true       # clients initialize again themselves",
    ]
    assert p.evidence == {
        "session_lost": 4, "recovery": "off", "window_start": T0, "window_end": T0 + 30, "example_ids": [1, 2, 3, 4],
    }  # fmt: skip
    assert p.effect.numbers == {"heard": 4}
    assert p.effect.text.startswith("the 4 requests that heard a lost session would have been replayed on a rebuilt one")
    assert (p.confidence, p.confidence_reason) == ("low", "only 4 requests that heard their session was lost (minimum 3); 6 would give medium confidence")
    assert p.statistics == () and p.addresses == frozenset()
    assert "recovery may be off on purpose" in p.rationale  # what recovery cannot restore is said


def test_recovery_off_confidence_grows_with_the_losses_heard() -> None:
    s = Stream()
    for i in range(15):
        s.session_lost(float(i), recovery="off")
    [p] = run(s.events, OFF)
    assert (p.id, p.confidence) == ("2f6efb4504", "high")  # the id is the change's: the same advice keeps it
    assert p.confidence_reason == "15 requests that heard their session was lost, at least 15 needed for high confidence"


def test_too_few_losses_heard_with_recovery_off_propose_nothing() -> None:
    s = Stream()
    for i in range(MIN_SESSION_LOST - 1):
        s.session_lost(10.0 * i, recovery="off")
    assert run(s.events, OFF) == []


def test_losses_heard_off_under_a_config_that_has_recovery_on_now_propose_nothing() -> None:
    """The file turned recovery on since (the default): there is nothing left to change, nor to advise."""
    s = Stream()
    for i in range(6):
        s.session_lost(10.0 * i, recovery="off")
    assert run(s.events) == []


# -- every loss recovered ---------------------------------------------------------------------------


def test_every_loss_recovered_yields_nothing() -> None:
    s = Stream()
    for i in range(20):
        recovered(s, 5.0 * i, recovery_ms=9000.0)  # however slow: each one worked
    analysis, proposals = analyze(s.events, sc.CONFIG, env={})
    assert proposals == []
    sessions = analysis.upstreams["api"].sessions
    assert (len(sessions.met()), len(sessions.recovered_ids), sessions.recovery_ms) == (20, 20, [9000.0] * 20)
    assert analysis.targets == {}  # session events are upstream facts, not calls of a target


# -- recovery on, failing ---------------------------------------------------------------------------


def test_a_server_that_came_back_changed_is_advice_saying_it_is_expected_on_a_deploy() -> None:
    s = Stream()
    for i in range(4):
        failed(s, 10.0 * i, "version_changed")
    failed(s, 50.0, "capabilities_changed")
    recovered(s, 60.0)
    [p] = run(s.events)
    assert (p.id, p.advisory, p.changes, p.diff, p.confidence) == ("4e2cf6fc9c", True, (), None, "low")
    assert p.title == "Legacy sessions of api: recovery failed for 5 requests (version_changed 4, capabilities_changed 1)"
    assert p.rationale == (
        "Session recovery on api failed for 5 requests (version_changed 4, capabilities_changed 1). 5 met a server that "
        "came back different (4 the server came back speaking another protocol version; 1 the server came back with "
        "other capabilities): expected when a deploy changes the server; the proxy told each client its session was "
        "lost (404, data.reason session_lost), so it initializes again. Nothing to configure."
    )
    assert p.evidence == {
        "session_lost": 6, "recovered": 1, "failed": {"version_changed": 4, "capabilities_changed": 1},
        "window_start": T0, "window_end": T0 + 60.08, "example_ids": [2, 4],
    }  # fmt: skip
    assert p.effect.numbers == {"recovered": 1, "failed": 5}
    assert p.effect.text == "5 requests whose session recovery failed heard a session loss or the upstream's error"


def test_sessions_forgotten_all_the_time_point_at_replicas_without_affinity() -> None:
    s = Stream()
    for i in range(3):
        failed(s, 10.0 * i, "too_frequent", rebuilt=False)  # refused before any rebuild
    call = s.call_id()  # rebuilt, replayed, and lost again on the replay
    s.session_lost(40.0, recovery="recovering", call_id=call)
    s.session_recovered(40.1, recovery_ms=100.0, call_id=call)
    s.session_lost(40.2, recovery="failed", why="lost_again", call_id=call)
    [p] = run(s.events)
    assert p.title == "Legacy sessions of api: recovery failed for 4 requests (too_frequent 3, lost_again 1)"
    assert "4 were lost again and again (3 the session had been rebuilt 3 times within the minute already; 1 the rebuilt session was lost again at once, on the replay)" in p.rationale
    assert "Route each Mcp-Session-Id to one replica (sticky sessions), or run one." in p.rationale
    assert (p.evidence["session_lost"], p.evidence["recovered"]) == (4, 1)  # 4 requests met a loss: the lost_again is the 4th's


def test_rebuilds_failing_fast_on_an_upstream_not_back_yet_are_advice() -> None:
    s = Stream()
    for i in range(4):
        failed(s, 10.0 * i, "upstream_failed", after_s=0.02)
    recovered(s, 50.0, recovery_ms=9000.0)
    [p] = run(s.events)
    assert p.advisory and p.title == "Legacy sessions of api: recovery failed for 4 requests (upstream_failed 4)"
    assert p.rationale.endswith(
        "4 rebuilds failed on the upstream (the upstream failed the rebuild (no connection, 5xx or 429, or no answer in "
        "time)): each such request failed with the upstream's error, and the next one tried again. None ran out the 10s "
        "recovery_timeout: the upstream was not back yet when they came."
    )


def ran_out(rebuilds: int, slowest_ms: float | None) -> Events:
    """`rebuilds` requests whose rebuild ran the whole 10s recovery_timeout (each call also fails, as its
    client heard), and one rebuild that worked in `slowest_ms` (None: none did)."""
    s = Stream()
    for i in range(rebuilds):
        call = failed(s, 20.0 * i, "upstream_failed", after_s=10.0)
        s.call_failed(20.0 * i + 10.0, "connect_error", call_id=call, idempotent=False)
    if slowest_ms is not None:
        recovered(s, 200.0, recovery_ms=slowest_ms)
    return s.events


def test_rebuilds_running_out_the_limit_while_those_that_worked_were_slow_raise_recovery_timeout() -> None:
    events = ran_out(3, slowest_ms=7000.0)
    [p] = run(events)
    assert (p.id, p.advisory, p.title) == ("10ca6fafef", False, "Raise sessions.recovery_timeout for api from 10s to 20s")
    assert p.changes == (Change("api", None, "sessions.recovery_timeout", "20s", "10s"),)
    assert diff_lines(p) == ["+    sessions:", "+      recovery_timeout: 20s"]
    assert p.rationale.startswith(
        "3 rebuilds of lost sessions on api ran the whole recovery_timeout (10s) and failed, while the slowest rebuild "
        "that worked (of 1) took 7000 ms, 70% of it"
    )
    assert p.evidence == {
        "ran_out": 3, "recovery_timeout_s": 10.0, "recovered": 1, "slowest_recovery_ms": 7000.0, "recovery_p50_ms": 7000.0,
        "window_start": T0, "window_end": T0 + 207.0, "example_ids": [2, 5, 8],
    }  # fmt: skip
    assert p.effect.numbers == {"ran_out": 3, "slowest_recovery_ms": 7000.0, "new_recovery_timeout_s": 20.0}
    failures = [e["id"] for e in events if e["type"] == "call_failed"]
    assert p.addresses == frozenset(failures) and len(failures) == 3  # cause before symptom: the calls they failed
    assert p.confidence == "low"
    # The rebuilds it covers leave nothing to advise on: no advisory beside it.


def test_a_longer_recovery_timeout_is_never_proposed_without_a_slow_rebuild_that_worked() -> None:
    """Every rebuild that worked was quick (200 ms of 10 s), or none worked: those that ran out were stuck,
    and more time is not shown to help. Advice instead, saying why."""
    [p] = run(ran_out(3, slowest_ms=200.0))
    assert (p.advisory, p.changes) == (True, ())
    assert "3 ran the whole recovery_timeout (10s), but the slowest rebuild that worked (of 1) took 200 ms, so nothing shows a longer limit would let them finish" in p.rationale
    [p] = run(ran_out(3, slowest_ms=None))
    assert (p.advisory, p.changes) == (True, ())
    assert "3 ran the whole recovery_timeout (10s), and no rebuild worked in the window, so nothing shows how long one needs" in p.rationale


def test_too_few_rebuilds_running_out_the_limit_are_advice_saying_so() -> None:
    s = Stream()
    for i in range(2):
        failed(s, 20.0 * i, "upstream_failed", after_s=10.0)
    failed(s, 50.0, "upstream_failed", after_s=0.01)
    recovered(s, 60.0, recovery_ms=7000.0)
    [p] = run(s.events)
    assert (p.advisory, p.changes) == (True, ())
    assert p.rationale.endswith(
        "2 ran the whole recovery_timeout (10s) and the slowest rebuild that worked (of 1) took 7000 ms: too few yet "
        "(fewer than 3) to propose a longer limit."
    )


def test_a_recovery_timeout_at_its_cap_is_not_raised() -> None:
    config = sc.CONFIG.replace("    # Overrides per tool.", "    sessions: {recovery_timeout: 60s}\n\n    # Overrides per tool.")
    s = Stream()
    for i in range(3):
        failed(s, 70.0 * i, "upstream_failed", after_s=60.0)
    recovered(s, 210.0, recovery_ms=50_000.0)
    [p] = run(s.events, config)
    assert (p.advisory, p.changes) == (True, ())
    assert p.rationale.endswith(
        "3 ran the whole recovery_timeout (1m) and the slowest rebuild that worked (of 1) took 50000 ms, but the limit is "
        "already the longest proposed (1m): a server this slow to rebuild a session keeps every request that met the "
        "loss waiting; look at its start-up."
    )


def test_failures_no_client_hears_do_not_count_towards_the_floor() -> None:
    """A client's answer to a request of the lost session is dropped (202): no client heard an error."""
    s = Stream()
    for i in range(5):
        failed(s, 10.0 * i, "answers_a_lost_request", rebuilt=False)
    failed(s, 60.0, "not_restorable", rebuilt=False)
    assert run(s.events) == []
    failed(s, 70.0, "not_replayable", rebuilt=False)
    failed(s, 80.0, "initialize_refused")
    [p] = run(s.events)
    assert p.title == (
        "Legacy sessions of api: recovery failed for 8 requests (answers_a_lost_request 5, not_restorable 1, "
        "not_replayable 1, initialize_refused 1)"
    )
    assert p.effect.text == "3 requests whose session recovery failed heard a session loss or the upstream's error"
    assert "5: a client's answer to a request of the lost session, which died with it, was dropped." in p.rationale


def test_calls_whose_deadline_passed_during_the_rebuild_are_named() -> None:
    s = Stream()
    for i in range(3):
        failed(s, 10.0 * i, "deadline", after_s=2.0)
    [p] = run(s.events)
    assert p.rationale == (
        "Session recovery on api failed for 3 requests (deadline 3). 3: the call's deadline (timeouts.total) passed "
        "while its session was rebuilt; the rebuild went on for the requests after it."
    )


def test_a_recording_that_named_the_failure_reason_is_read_too() -> None:
    """The proxy's first recovering build published `reason`, not `why`: the same failures."""
    s = Stream()
    for i in range(3):
        failed(s, 10.0 * i, "version_changed")
    for event in s.events:
        if "why" in event:
            event["reason"] = event.pop("why")
    [p] = run(s.events)
    assert p.evidence["failed"] == {"version_changed": 3}


def test_too_few_failures_propose_nothing() -> None:
    s = Stream()
    for i in range(MIN_SESSION_LOST - 1):
        failed(s, 10.0 * i, "version_changed")
    assert run(s.events) == []


# -- sessions the proxy had no record of --------------------------------------------------------------


def test_many_losses_of_sessions_the_proxy_forgot_advise_a_larger_table() -> None:
    s = Stream()
    for i in range(5):
        s.session_lost(10.0 * i, recovery="forgotten")
        recovered(s, 10.0 * i + 5)
    [p] = run(s.events)
    assert (p.id, p.advisory, p.changes) == ("4e2cf6fc9c", True, ())
    assert p.title == "Legacy sessions of api: 5 lost sessions the proxy had forgotten: raise sessions.max_sessions or idle_timeout"
    assert "sessions.idle_timeout (30m, one whose GET stream is open is in use) when a new one opens" in p.rationale
    assert "past sessions.max_sessions (10000)" in p.rationale
    assert p.evidence["forgotten"] == 5 and (p.evidence["max_sessions"], p.evidence["idle_timeout"]) == (10000, "30m")
    [share] = p.statistics
    assert (share.k, share.n, round(share.bound(), 3), share.threshold) == (5, 10, 0.269, 0.1)


def test_losses_of_ids_the_proxy_never_kept_advise_nothing() -> None:
    """Made-up ids, ids the client had deleted, sessions older than the proxy: no setting fixes them, and a
    client's own mistakes never count against anything (new-user review)."""
    s = Stream()
    for i in range(40):
        s.session_lost(float(i), recovery="unknown_session")
    assert run(s.events) == []


def test_a_few_forgotten_sessions_among_many_kept_ones_are_not_material() -> None:
    s = Stream()
    for i in range(3):
        s.session_lost(float(i), recovery="forgotten")
    for i in range(100):
        recovered(s, 10.0 + i)
    assert run(s.events) == []  # 3 of 103: 95% lower bound 1.2% < 10%


def test_forgotten_sessions_and_failures_make_one_advisory_with_both() -> None:
    s = Stream()
    for i in range(3):
        s.session_lost(float(i), recovery="forgotten")
        failed(s, 10.0 + i, "version_changed")
    [p] = run(s.events)
    assert p.title == (
        "Legacy sessions of api: recovery failed for 3 requests (version_changed 3); "
        "3 lost sessions the proxy had forgotten: raise sessions.max_sessions or idle_timeout"
    )
    assert p.effect.numbers == {"recovered": 0, "failed": 3, "forgotten": 3}


# -- a recording from before recovery -----------------------------------------------------------------


def test_losses_of_a_recording_that_does_not_say_what_became_of_them_are_advice_as_before() -> None:
    [p] = run(sc.lost_sessions())
    assert (p.id, p.rule, p.advisory, p.changes, p.diff) == ("4e2cf6fc9c", "session_lost", True, (), None)
    assert p.title == "Legacy sessions of api: 4 requests met a lost session (recorded without what became of it)"
    assert (p.evidence["session_lost"], p.evidence["unstated"]) == (4, 4)
    assert "(sessions.recovery, on by default; on for this upstream)" in p.rationale
    [p] = run(sc.lost_sessions(), OFF)
    assert "(sessions.recovery, on by default; off for this upstream: turn it on)" in p.rationale
    assert run(sc.lost_sessions()[:MIN_SESSION_LOST - 1]) == []


def test_an_upstream_no_longer_in_the_file_gets_nothing() -> None:
    s = Stream(upstream="gone")
    for i in range(6):
        s.session_lost(float(i), recovery="off")
    assert rules_upstream.session_lost(Analysis.from_events(s.events, None), load_config(OFF, {})) == []


# -- the window -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", [9.0, 10.0, 10.5])
def test_a_rebuild_and_its_failure_pair_up_across_window_slices(boundary: float) -> None:
    """The live window folds each 10 s slice apart: a rebuild that starts in one and fails in the next is
    still one request that met a loss, and its length is still known."""
    s = Stream()
    for i in range(3):
        failed(s, boundary - 0.5 + 30.0 * i, "upstream_failed", after_s=10.0)
    recovered(s, 100.0, recovery_ms=8000.0)
    window = Window(window_s=300.0, slices=30, reorder_s=0.0)
    for event in s.events:
        window.add(event)
    merged = window.analysis().upstreams["api"].sessions
    whole = Analysis.from_events(s.events, None).upstreams["api"].sessions
    assert merged == whole
    assert (len(merged.met()), sorted(merged.rebuild_seconds().values())) == (4, [pytest.approx(10.0)] * 3)


# -- events as the proxy publishes them -------------------------------------------------------------


def test_session_events_as_the_proxy_publishes_them() -> None:
    """Typed events (`EventRecorder.strict`: a field the schema does not have fails): int call ids pair a
    rebuild's start with its failure; the recovery's time is read."""
    bus = EventBus()
    recorder = EventRecorder(bus)
    recorder.strict = True
    calls = [make_call(b'{"jsonrpc":"2.0","id":%d,"method":"tools/list"}' % n) for n in range(4)]
    for call in calls[:3]:
        recorder.policy_event("session_lost", call, recovery="recovering", why=None)
        recorder.policy_event("session_lost", call, recovery="failed", why="capabilities_changed")
    recorder.policy_event("session_lost", calls[3], recovery="recovering", why=None)
    recorder.policy_event("session_recovered", calls[3], generation=1, recovery_ms=12.5, restored=["initialized", "log_level"])
    recorder.policy_event("stream_resumed", None, upstream=calls[0].upstream, stream="get", from_event_id=False, generation=1, gap_ms=3.0)
    events = bus.recent()
    assert all(isinstance(e["call_id"], int) for e in events if e["type"] != "stream_resumed")
    analysis = Analysis.from_events(events, window_s=None)
    sessions = analysis.upstreams[calls[0].upstream].sessions
    assert [(loss.recovery, loss.why) for loss in sessions.met()] == [("recovering", None)] * 4
    assert (len(sessions.rebuild_seconds()), sessions.recovery_ms, dict(sessions.resumed)) == (3, [12.5], {"get": 1})
    assert analysis.targets == {}
