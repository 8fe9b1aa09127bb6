"""The restart-under-load benchmark (`tests.perf.restart`) counts what happened, and judges it as issue 13 says.

First its judgement on records made by hand (the kinds, the executions, the deadline, the time windows),
then one tiny real run: the proxy as a subprocess in front of the SDK server, killed and restarted once
under one client of each era, whose counts must agree with the server's executions file and the
proxy's events file. Nothing here asserts a duration: only counts and the verdicts they lead to.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest

from tests.perf.procs import Processes
from tests.perf.restart import Settings, run_scenario
from tests.perf.restart_clients import Answer, _judged
from tests.perf.restart_report import (
    CallRecord,
    RestartWindow,
    attempt_kinds,
    classify,
    percentile,
    read_events,
    read_executions,
    summarize,
)

DEADLINE = 30.0


def call(ref: str, tool: str = "write", outcome: str = "ok", started: float = 0.0, ended: float = 0.01, **more: Any) -> CallRecord:
    return CallRecord("modern", 0, tool, ref, started, ended, outcome, **more)


def event(kind: str, call_id: int, ref: str | None = None, error: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"type": kind, "call_id": call_id}
    if ref is not None:
        found["params"] = {"name": "write", "arguments": {"ref": ref}}
    if error is not None:
        found["error"] = {"kind": error}
    return found


def test_attempt_kinds_tie_events_to_refs_through_params_and_call_ids() -> None:
    events = [
        event("retry", 7, "a", "connect_error"),
        event("session_lost", 7),  # no params: the ref of call 7 comes from its retry event
        event("call_failed", 8, "b", "connection_lost"),
        event("timeout", 9, "c"),
        event("session_lost", 99),  # a call no event with params names: no ref to give it to
        event("call_ok", 0),
    ]
    assert attempt_kinds(events) == {
        "a": ["connect_error", "session_expired"],
        "b": ["connection_lost"],
        "c": ["timeout"],
    }


@pytest.mark.parametrize(
    ("record", "kinds", "expected"),
    [
        (call("r", tool="read"), ["connection_lost"], "idempotent"),
        (call("w"), [], "non_idempotent"),
        (call("w"), ["connect_error", "connect_error"], "never_sent"),
        (call("w"), ["connect_error", "circuit_open"], "never_sent"),
        (call("w"), ["circuit_open"], "never_sent"),
        (call("w"), ["connect_error", "connection_lost"], "non_idempotent"),
        (call("w"), ["stream_broken"], "non_idempotent"),
        (call("w", outcome="unclear", session_rejected=True), [], "never_sent"),
        (call("w", outcome="unclear", session_rejected=True), ["timeout"], "non_idempotent"),
    ],
)
def test_classify(record: CallRecord, kinds: list[str], expected: str) -> None:
    assert classify(record, kinds) == expected


def answer(message: dict[str, Any] | None, status: int = 200, detail: str = "") -> Answer:
    return Answer(status, message, None, detail)


@pytest.mark.parametrize(
    ("era", "got", "outcome", "rejected"),
    [
        ("modern", answer({"jsonrpc": "2.0", "id": 5, "result": {"content": [{"type": "text", "text": "wrote w"}]}}), "ok", False),
        ("modern", answer({"jsonrpc": "2.0", "id": 5, "result": {"content": [{"type": "text", "text": "wrote x"}]}}), "unclear", False),
        ("modern", answer({"jsonrpc": "2.0", "id": 5, "result": {"content": [{"type": "text", "text": "wrote w"}], "isError": True}}), "unclear", False),
        ("modern", answer({"jsonrpc": "2.0", "id": 6, "result": {"content": [{"type": "text", "text": "wrote w"}]}}), "unclear", False),
        ("modern", answer({"jsonrpc": "2.0", "id": "5", "result": {"content": [{"type": "text", "text": "wrote w"}]}}), "unclear", False),
        (
            "modern",
            answer({"jsonrpc": "2.0", "id": 5, "error": {"code": -32050, "message": "down", "data": {"reason": "upstream_unavailable"}}}, 502),
            "error",
            False,
        ),
        ("modern", answer({"jsonrpc": "2.0", "id": 5, "error": {"code": "x", "message": "down"}}, 502), "unclear", False),
        ("modern", answer({"id": 5, "error": {"code": -32050, "message": "down"}}, 502), "unclear", False),
        ("modern", answer(None, 502, "HTTP 502: b'<html>'"), "unclear", False),
        ("legacy", answer({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}, 404), "unclear", True),
        ("legacy", answer({"jsonrpc": "2.0", "id": 5, "error": {"code": -32600, "message": "gone", "data": {"reason": "session_lost"}}}, 404), "error", True),
        ("modern", answer({"jsonrpc": "2.0", "id": 5, "error": {"code": -32600, "message": "Session not found"}}, 404), "error", False),
    ],
)
def test_raw_answers_judged(era: str, got: Answer, outcome: str, rejected: bool) -> None:
    """A raw call is ok only with the expected text under its own id; a clear error needs jsonrpc, its own
    id, an integer code and a message; a legacy answer naming the session marks the call rejected."""
    record = _judged(era, 0, "write", "w", 1.0, 2.0, got, request_id=5)
    assert (record.outcome, record.session_rejected) == (outcome, rejected)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([], 0.99) is None


def test_summary_counts_and_targets() -> None:
    records = [
        call("r1", tool="read"),
        call("r2", tool="read", outcome="error", started=10.0, ended=10.5, status=502, code=-32050, reason="upstream_unavailable"),
        call("w1"),
        call("w2", outcome="error", started=10.1, ended=10.2, status=502, code=-32050, reason="upstream_unavailable"),
        call("w3", outcome="error", started=11.0, ended=11.0 + DEADLINE + 1, code=-32051, reason="upstream_timeout"),
        call("w4", outcome="unclear", started=12.0, ended=12.1, status=404, session_rejected=True),
        call("w5", started=10.2, ended=12.0),
    ]
    executions = collections.Counter({"w1": 1, "w2": 1, "w3": 2, "w5": 1, "stray": 1})
    events = [event("retry", 1, "w5", "connect_error"), event("call_failed", 2, "w2", "connection_lost")]
    summary = summarize(records, [RestartWindow(10.0, 11.0)], executions, events, DEADLINE, around=0.5)

    kinds = summary["kinds"]
    assert (kinds["idempotent"]["calls"], kinds["idempotent"]["failures"], kinds["idempotent"]["clear_errors"]) == (2, 1, 1)
    assert kinds["never_sent"]["calls"] == 2  # w4 (rejected for its session) and w5 (connect errors, then ok)
    assert (kinds["never_sent"]["failures"], kinds["never_sent"]["unclear"]) == (1, 1)
    assert kinds["non_idempotent"]["calls"] == 3  # w1, w2, w3
    assert (kinds["non_idempotent"]["failures"], kinds["non_idempotent"]["past_deadline"]) == (2, 1)
    # In flight between the kill (10.0) and 0.5 s after the server was back (11.5): r2, w2, w3, w5.
    assert kinds["idempotent"]["met_a_restart"] + kinds["never_sent"]["met_a_restart"] + kinds["non_idempotent"]["met_a_restart"] == 4
    assert summary["latency_ms"]["around_restarts"]["calls"] == 4
    executed = summary["executions"]
    assert executed["executions"] == 6
    assert executed["executed_more_than_once"] == 1
    assert executed["most_executions_of_one_ref"] == 2
    assert executed["failed_but_executed"] == 2  # w2, w3
    assert executed["ok_without_execution"] == 0
    assert executed["refs_no_call_made"] == 1  # "stray"
    assert summary["targets"] == {
        "idempotent_failures_0": False,
        "never_sent_failures_0": False,
        "every_failure_clear_and_in_deadline": False,
        "non_idempotent_at_most_once": False,
    }


def test_summary_passes_a_clean_run() -> None:
    records = [
        call("r1", tool="read"),
        call("w1"),
        call("w2", outcome="error", started=10.1, ended=10.2, status=502, code=-32050, reason="upstream_unavailable"),
    ]
    events = [
        event("call_failed", 2, "w2", "connection_lost"),
        {"type": "session_lost", "call_id": 3, "method": "tools/call", "recovery": "recovering", "why": None},
        {"type": "session_recovered", "call_id": 3},
        {"type": "session_lost", "call_id": 0, "method": "GET", "recovery": "failed", "why": "too_frequent"},
    ]
    summary = summarize(records, [RestartWindow(10.0, 11.0)], collections.Counter({"w1": 1}), events, DEADLINE, 1.0)
    assert all(summary["targets"].values())
    assert (summary["events"]["session_lost"], summary["events"]["session_recovered"]) == (2, 1)
    assert summary["events"]["session_lost_by_recovery"] == {"failed (too_frequent) on GET": 1, "recovering on tools/call": 1}


def test_records_read_from_files(tmp_path: Path) -> None:
    executions = tmp_path / "executions.txt"
    executions.write_text("a\nb\na\n")
    assert read_executions(executions) == collections.Counter({"a": 2, "b": 1})
    assert read_executions(tmp_path / "absent") == collections.Counter()
    log = tmp_path / "events.jsonl"
    (tmp_path / "events.jsonl.1").write_text(json.dumps({"type": "old"}) + "\n")
    log.write_text(json.dumps({"type": "new"}) + "\n{cut by a kill\n")
    assert [e["type"] for e in read_events(log)] == ["old", "new"]


async def test_a_tiny_run_counts_agree_with_the_server_and_the_proxy(tmp_path: Path) -> None:
    """One restart under one client of each era: the harness's counts against the executions file and
    the events file, which it did not write."""
    settings = Settings(legacy=1, modern=1, restarts=1, calls_between=10, work_ms=1.0, breaker_threshold=0, phase_timeout=60.0)
    procs = Processes(tmp_path)
    try:
        report = await run_scenario(settings, tmp_path, procs)
    finally:
        procs.close()
    summary = report["summary"]
    assert len(summary["restarts"]) == 1
    assert not report["notes"], report["notes"]
    kinds = summary["kinds"]
    assert sum(row["calls"] for row in kinds.values()) == summary["calls"]
    assert summary["calls"] >= 2 * settings.calls_between
    for row in kinds.values():
        assert row["ok"] + row["failures"] == row["calls"]
        assert row["clear_errors"] + row["unclear"] == row["failures"]
    for era in ("legacy", "modern"):
        assert sum(summary["by_era"][era][k]["calls"] for k in kinds) > 0, era
    executions = read_executions(tmp_path / "executions.txt")
    executed = summary["executions"]
    assert executed["executions"] == sum(executions.values()) > 0
    assert executed["refs_no_call_made"] == 0  # every execution the server recorded is a call the harness recorded
    assert executed["ok_without_execution"] == 0  # every answered write ran
    events = read_events(tmp_path / "events.jsonl")
    for name in ("session_lost", "session_recovered", "stream_resumed"):
        assert summary["events"][name] == sum(1 for e in events if e.get("type") == name)
    legacy = report["legacy_sessions"]
    assert 1 <= legacy["opened"] <= 1 + legacy["reinitialized"]
    assert legacy["get_streams_opened"] >= legacy["opened"]  # each session's GET stream, reopened when it ended
