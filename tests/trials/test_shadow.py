"""Shadow trials, unit by unit: `TrialManager` over a recorded event list and a fake clock (no proxy, no sleep).

The traffic is the events a proxy publishes: per failed call a `call_failed` and, for a timed-out read
left running, a `timeout_observed` with when it answered; then the `call_ok` summary of the span. The
live file allows reads 200 ms (`per_try`); the candidate 750 ms. Reads observed answering at 420 ms
would all have succeeded under it, reads at 900 ms would not: exact verdicts follow from that alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from proxy.analyzer import Change, Match, Proposal, edit_text
from proxy.analyzer.proposal import Effect
from proxy.analyzer.yamledit import unified_diff
from proxy.config.operations import ShadowConfig
from proxy.events.recorder import EventBus, EventRecorder
from proxy.events.envelope import MAX_EVENT_BYTES
from proxy.trials.shadow import MAX_ESTIMATE_NUMBERS, MAX_FIGURES, MAX_NAME_CHARS, TrialManager, TrialRefused, estimated_cut, judge

START = 1_000.0
DURATION = 60.0
READ_ERROR = {"kind": "timeout", "http_status": None, "jsonrpc_code": -32051, "message": "per-try timeout"}


def config_text(per_try: str = "200ms", max_attempts: int = 1) -> str:
    return yaml.safe_dump({
        "listen": {"port": 0}, "admin": {"port": 0},
        "upstreams": [{
            "name": "docs", "url": "http://127.0.0.1:1/mcp", "health": {"active": {"enabled": False}},
            "timeouts": {"per_try": per_try, "total": "5s"}, "retry": {"max_attempts": max_attempts},
        }],
    })  # fmt: skip


def proposal_for(text: str, key: str = "timeouts.per_try", value: Any = "750ms", numbers: dict[str, Any] | None = None) -> Proposal:
    change = Change("docs", Match(method="resources/read"), key, value, None)
    made = Proposal(
        rule="timeouts", target="docs resources/read", title="Raise per_try for docs resources/read", rationale="r",
        evidence={}, effect=Effect("e", numbers if numbers is not None else {"timed_out": 25, "would_complete": 25, "percent": 100}),
        confidence="high", confidence_reason="", changes=(change,),
    )  # fmt: skip
    return made.with_diff(unified_diff(text, edit_text(text, made.changes)))


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TrialManager, EventBus, Path, Clock]:
    path = tmp_path / "proxy.yaml"
    path.write_text(config_text())
    bus, clock = EventBus(1000, 10), Clock()
    manager = TrialManager(
        path, ShadowConfig(duration=DURATION, tolerance=0.2, min_calls=20), bus, EventRecorder(bus, False, True, False),
        clock=clock, poll=0,
    )  # fmt: skip
    return manager, bus, path, clock


def reads(bus: EventBus, failed: int, observed_ms: float | None, ok: int, first_id: int = 1) -> None:
    """`failed` timed-out reads (observed answering at `observed_ms`), then a summary of `failed + ok` reads."""
    envelope = {"v": 1, "upstream": "docs", "method": "resources/read", "tool": None, "attempt": 1, "policy": "default"}
    for n in range(first_id, first_id + failed):
        bus.publish({**envelope, "type": "call_failed", "call_id": n, "error": READ_ERROR, "reason": "timeout"})
        if observed_ms is not None:
            bus.publish({**envelope, "type": "timeout_observed", "call_id": n, "limit_ms": 200.0, "observed_ms": observed_ms})
    by_attempt = {"1": ok} if ok else {}
    bus.publish({
        **envelope, "type": "call_ok", "calls": failed + ok, "ok": ok, "ok_by_attempt": by_attempt,
        "latency_buckets_ms": [100, 200], "latency_histogram": [ok, 0, 0],
    })  # fmt: skip


def finished(bus: EventBus) -> dict[str, Any]:
    (event,) = [e for e in bus.recent() if e["type"] == "trial_finished"]
    return event


def test_a_change_whose_measured_effect_matches_its_estimate_is_promoted_and_written(setup: Any) -> None:
    manager, bus, path, clock = setup
    original = path.read_text()
    proposal = proposal_for(original)
    trial_id = manager.trial(proposal)
    (started,) = [e for e in bus.recent() if e["type"] == "trial_started"]
    assert (started["trial"], started["proposal"], started["duration_s"]) == (trial_id, proposal.id, DURATION)
    assert started["changes"] == ["docs rule method=resources/read: timeouts.per_try: None -> 750ms"]
    assert started["estimate"] == {"timed_out": 25.0, "would_complete": 25.0, "percent": 100.0}
    reads(bus, failed=25, observed_ms=420.0, ok=25)
    clock.now = START + DURATION - 1
    manager.step()
    assert manager.outcome(trial_id) is None and path.read_text() == original  # not before its time
    clock.now = START + DURATION
    manager.step()
    event = finished(bus)
    assert (event["verdict"], event["trial"]) == ("promoted", trial_id)
    measured = event["measured"]
    assert {k: measured[k] for k in ("calls", "errors_before", "errors_after", "unmodelled", "dropped_events")} == {
        "calls": 50.0, "errors_before": 25.0, "errors_after": 0.0, "unmodelled": 0.0, "dropped_events": 0.0,
    }  # fmt: skip
    assert (measured["timeouts_before"], measured["timeouts_after"], measured["succeeded_after"]) == (25.0, 0.0, 50.0)
    assert "cut 25 of 25 errors (100%); estimated 100%" in event["reason"]
    assert path.read_text() == edit_text(original, proposal.changes)
    verdict, backup = manager.outcome(trial_id)  # type: ignore[misc]
    assert verdict == "promoted" and backup is not None and backup.read_text() == original
    assert manager.document()["finished"][0]["verdict"] == "promoted" and manager.running is None


def test_a_change_that_would_have_cut_far_fewer_errors_than_estimated_is_rejected(setup: Any) -> None:
    manager, bus, path, clock = setup
    original = path.read_text()
    trial_id = manager.trial(proposal_for(original))
    reads(bus, failed=20, observed_ms=900.0, ok=25)  # past the candidate's 750ms: none rescued
    reads(bus, failed=5, observed_ms=420.0, ok=0, first_id=100)  # 5 of 25 rescued: 20%, estimated 100%
    clock.now = START + DURATION
    manager.step()
    event = finished(bus)
    assert (event["verdict"], event["measured"]["errors_before"], event["measured"]["errors_after"]) == ("rejected", 25.0, 20.0)
    assert event["reason"] == "it would have cut 5 of 25 errors (20%); estimated 100%, tolerance 20%"
    assert path.read_text() == original and manager.outcome(trial_id) == ("rejected", None)
    assert list(path.parent.glob("*.bak-*")) == []


def test_a_change_that_would_have_made_errors_worse_is_rejected(setup: Any, tmp_path: Path) -> None:
    manager, bus, path, clock = setup
    path.write_text(config_text(per_try="2s"))
    original = path.read_text()
    lower = proposal_for(original, value="50ms", numbers={"attempts_saved": 3})
    manager.trial(lower)
    bus.publish({
        "v": 1, "type": "call_ok", "upstream": "docs", "method": "resources/read", "tool": None, "calls": 30, "ok": 30,
        "ok_by_attempt": {"1": 30}, "latency_buckets_ms": [50, 100, 200], "latency_histogram": [10, 8, 12, 0],
    })  # fmt: skip
    clock.now = START + DURATION
    manager.step()
    event = finished(bus)
    # 20 reads took over 50 ms (the buckets above 50 and 100): under the candidate they would have failed.
    assert (event["verdict"], event["measured"]["succeeded_after"], event["measured"]["errors_after"]) == ("rejected", 10.0, 20.0)
    assert event["reason"] == "it would have made client-visible errors worse: 0 -> 20 of 30 calls"
    assert path.read_text() == original


def test_too_little_traffic_is_inconclusive_and_writes_nothing(setup: Any) -> None:
    manager, bus, path, clock = setup
    original = path.read_text()
    trial_id = manager.trial(proposal_for(original))
    reads(bus, failed=5, observed_ms=420.0, ok=5)
    clock.now = START + DURATION
    manager.step()
    event = finished(bus)
    assert (event["verdict"], event["reason"]) == ("inconclusive", "10 calls during the trial, 20 needed for a verdict")
    assert path.read_text() == original and manager.outcome(trial_id) == ("inconclusive", None)


def test_a_stale_base_is_refused_and_a_file_changed_during_the_trial_is_not_overwritten(setup: Any) -> None:
    manager, bus, path, clock = setup
    original = path.read_text()
    proposal = proposal_for(original)
    candidate = edit_text(original, proposal.changes)
    with pytest.raises(TrialRefused) as refused:
        manager.start(proposal.to_dict(), candidate, hashlib.sha256(b"another file").hexdigest())
    assert refused.value.status == 409 and "changed since the proposal was made" in str(refused.value)
    assert manager.running is None and [e for e in bus.recent() if e["type"] == "trial_started"] == []

    trial = manager.start(proposal.to_dict(), candidate, hashlib.sha256(original.encode()).hexdigest())
    reads(bus, failed=25, observed_ms=420.0, ok=25)
    edited = original + "# the operator was here\n"
    path.write_text(edited)
    clock.now = START + DURATION
    manager.step()
    event = finished(bus)
    assert event["verdict"] == "stale" and "changed during the trial: nothing written" in event["reason"]
    assert path.read_text() == edited and manager.outcome(trial.id) == ("stale", None)


def test_a_reload_of_another_file_during_the_trial_ends_it_as_stale(setup: Any) -> None:
    manager, bus, path, _ = setup
    manager.trial(proposal_for(path.read_text()))
    bus.publish({"v": 1, "type": "config_reloaded", "trigger": "watch", "file_hash": "0123456789ab"})
    manager.step()
    assert finished(bus)["verdict"] == "stale" and manager.running is None


def test_a_second_trial_is_refused_while_one_runs_naming_it(setup: Any) -> None:
    manager, _, path, _ = setup
    first = manager.trial(proposal_for(path.read_text()))
    assert manager.busy
    with pytest.raises(TrialRefused) as refused:
        manager.trial(proposal_for(path.read_text(), value="1s"))
    assert refused.value.status == 409 and f"trial {first} " in str(refused.value) and f"DELETE /trials/{first}" in str(refused.value)


def test_abort_ends_the_trial_without_writing(setup: Any) -> None:
    manager, bus, path, clock = setup
    original = path.read_text()
    trial_id = manager.trial(proposal_for(original))
    reads(bus, failed=25, observed_ms=420.0, ok=25)
    with pytest.raises(TrialRefused) as missing:
        manager.abort("nosuchtrial")
    assert missing.value.status == 404
    manager.abort(trial_id)
    clock.now = START + DURATION
    manager.step()
    event = finished(bus)
    assert (event["verdict"], event["reason"]) == ("aborted", "aborted by DELETE /trials")
    assert path.read_text() == original and not manager.busy and manager.outcome(trial_id) == ("aborted", None)


def test_what_cannot_be_tried_is_refused_before_it_starts(setup: Any) -> None:
    manager, bus, path, _ = setup
    original = path.read_text()
    proposal = proposal_for(original)
    good_hash = hashlib.sha256(original.encode()).hexdigest()
    other = edit_text(original, proposal_for(original, value="1s").changes)
    cases = [
        ({**proposal.to_dict(), "advisory": True}, edit_text(original, proposal.changes), 30.0, "advice only"),
        (proposal.to_dict(), other, 30.0, "is not proposal"),
        (proposal_for(original, key="url", value="http://127.0.0.1:2/mcp").to_dict(), other, 30.0, "policy keys only"),
        (proposal.to_dict(), original, 30.0, "nothing to try"),
        ({**proposal.to_dict(), "diff": None}, original.replace("max_attempts: 1", "max_attempts: 0"), 30.0, "not a valid config"),
        (proposal.to_dict(), edit_text(original, proposal.changes), 25 * 3600.0, "at most 86400s"),
        ({"id": 7}, "x", 30.0, "proposal.id"),
    ]
    for posted, candidate, duration, why in cases:
        with pytest.raises(TrialRefused) as refused:
            manager.start(posted, candidate, good_hash, duration)
        assert (refused.value.status, why in str(refused.value)) == (422, True), (why, str(refused.value))
    assert manager.running is None and [e for e in bus.recent() if e["type"] == "trial_started"] == []


def test_a_change_carved_out_of_a_glob_rule_is_derived_again_from_its_json(setup: Any) -> None:
    """`Proposal.to_dict` drops the glob rule a new exact rule copies; the trial finds it again, so the
    candidate it accepts (and would write) is exactly the analyzer's edit, settings copied included."""
    manager, _, path, _ = setup
    raw = yaml.safe_load(config_text())
    raw["upstreams"][0]["rules"] = [{"match": {"tool": "look*"}, "timeouts": {"per_try": "1s"}, "cache": {"mode": "fallback"}}]
    path.write_text(yaml.safe_dump(raw))
    glob = Match(tool="look*")
    carved = Proposal(
        rule="timeouts", target="docs tools/call lookup", title="t", rationale="r", evidence={}, effect=Effect("e", {}),
        confidence="low", confidence_reason="", changes=(Change("docs", Match(tool="lookup", inherit_from=glob), "timeouts.per_try", "2s", "1s"),),
    )  # fmt: skip
    manager.trial(carved)
    assert manager.running is not None
    (rule,) = [r for r in yaml.safe_load(manager.running.candidate)["upstreams"][0]["rules"] if r["match"] == {"tool": "lookup"}]
    assert rule["cache"] == {"mode": "fallback"} and rule["timeouts"]["per_try"] == "2s"


def test_a_change_the_simulator_cannot_model_is_inconclusive(setup: Any) -> None:
    """An application breaker is not simulated (`proxy.trials.replayed.unmodelled`): no verdict is guessed."""
    manager, bus, path, clock = setup
    manager.trial(proposal_for(path.read_text(), key="app_breaker.failure_threshold", value=5, numbers={"errors_before": 25, "errors_after": 0}))
    reads(bus, failed=25, observed_ms=None, ok=25)
    clock.now = START + DURATION
    manager.step()
    event = finished(bus)
    assert event["verdict"] == "inconclusive" and event["reason"] == "the evaluator cannot tell what the candidate would have done to 50 of 50 calls"


def test_events_lost_before_the_trial_read_them_make_it_inconclusive(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(config_text())
    bus, clock = EventBus(100, 10), Clock()
    manager = TrialManager(path, ShadowConfig(duration=DURATION), bus, EventRecorder(bus, False, True, False), clock=clock, poll=0)
    manager.trial(proposal_for(path.read_text()))
    reads(bus, failed=60, observed_ms=420.0, ok=0)  # 121 events into a ring of 100
    clock.now = START + DURATION
    manager.step()
    event = finished(bus)
    assert event["verdict"] == "inconclusive" and event["measured"]["dropped_events"] == 22.0


def test_an_evaluator_that_fails_ends_the_trial_inconclusive_and_the_proxy_goes_on(tmp_path: Path) -> None:
    class Broken:
        def feed(self, event: dict[str, Any]) -> None:
            raise RuntimeError("boom")

        def figures(self) -> dict[str, int | float]:
            return {}

    path = tmp_path / "proxy.yaml"
    path.write_text(config_text())
    bus = EventBus(1000, 10)
    manager = TrialManager(path, ShadowConfig(), bus, EventRecorder(bus, False, True, False), lambda before, after: Broken(), poll=0)
    manager.trial(proposal_for(path.read_text()))
    manager.step()
    event = finished(bus)
    assert event["verdict"] == "inconclusive" and "the evaluator failed: RuntimeError('boom')" in event["reason"]


@pytest.mark.parametrize(
    ("numbers", "cut"),
    [
        ({"timed_out": 25, "would_complete": 20, "percent": 80}, 0.8),
        ({"exhausted": 20, "would_succeed": 5}, 0.25),
        ({"failed": 30, "would_succeed": 27}, 0.9),  # declared_idempotent
        ({"failed": 12, "distinct_params": 5}, None),  # cache_fallback: no share of the trial's errors
        ({"failed_after": 10, "would_be_served": 10}, 1.0),
        ({"errors_before": 40, "errors_after": 10}, 0.75),
        ({"attempts_saved": 12}, 0.0),
        ({"http_429": 30, "rate": 5}, None),
        ({"timed_out": 0, "would_complete": 0}, None),
    ],
)
def test_the_estimated_cut_is_read_from_each_rules_numbers(numbers: dict[str, Any], cut: float | None) -> None:
    assert estimated_cut(numbers) == cut


@pytest.mark.parametrize(
    ("measured", "estimate", "verdict"),
    [
        ({"calls": 50, "errors_before": 20, "errors_after": 6}, {"timed_out": 20, "would_complete": 20}, "rejected"),  # 70% < 100% - 20%
        ({"calls": 50, "errors_before": 20, "errors_after": 4}, {"timed_out": 20, "would_complete": 20}, "promoted"),  # 80%: within
        ({"calls": 50, "errors_before": 20, "errors_after": 0}, {"timed_out": 20, "would_complete": 10}, "promoted"),  # better than estimated
        ({"calls": 50, "errors_before": 0, "errors_after": 0}, {"timed_out": 20, "would_complete": 10}, "inconclusive"),
        ({"calls": 50, "errors_before": 3, "errors_after": 3}, {"attempts_saved": 9}, "promoted"),
        ({"calls": 50, "errors_before": 3, "errors_after": 4}, {"attempts_saved": 9}, "rejected"),
        ({"calls": 19, "errors_before": 3, "errors_after": 0}, {}, "inconclusive"),
        # A cut resting on assumed outcomes (added retries the live policy never sent) is not measured...
        ({"calls": 50, "errors_before": 20, "errors_after": 2, "estimated_after": 18}, {"failed": 20, "would_succeed": 18}, "inconclusive"),
        # ...but a candidate worse even so is rejected.
        ({"calls": 50, "errors_before": 2, "errors_after": 5, "estimated_after": 9}, {"failed": 20, "would_succeed": 18}, "rejected"),
    ],
)
def test_judge(measured: dict[str, int | float], estimate: dict[str, Any], verdict: str) -> None:
    assert judge(measured, estimate, 0.2, 20)[0] == verdict


def test_what_a_trial_reports_is_bounded_whatever_the_proposal_or_the_evaluator_says(tmp_path: Path) -> None:
    class Chatty:
        def feed(self, event: dict[str, Any]) -> None:
            pass

        def figures(self) -> dict[str, int | float]:
            return {"calls": 100, "errors_before": 0, "errors_after": 0, **{str(n) + "k" * 500: n for n in range(5000)}}

    path = tmp_path / "proxy.yaml"
    path.write_text(config_text())
    bus = EventBus(1000, 10)
    clock = Clock()
    manager = TrialManager(
        path, ShadowConfig(duration=DURATION), bus, EventRecorder(bus, False, True, False), lambda before, after: Chatty(),
        clock=clock, poll=0,
    )  # fmt: skip
    numbers = {str(n) + "n" * 500: n for n in range(5000)}
    manager.trial(proposal_for(path.read_text(), numbers=numbers))
    clock.now = START + DURATION
    manager.step()
    event = finished(bus)
    assert (len(event["estimate"]), len(event["measured"]), event["measured"]["dropped_events"]) == (MAX_ESTIMATE_NUMBERS, MAX_FIGURES, 0.0)
    assert event["verdict"] == "promoted" and max(len(name) for name in event["measured"]) == MAX_NAME_CHARS
    assert all(len(orjson.dumps(e)) <= MAX_EVENT_BYTES for e in bus.recent())
