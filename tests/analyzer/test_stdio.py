"""The `stdio` rule reads what a stdio upstream's children did (`stdio_child_exited`, `stdio_question_refused`).

Questions refused because several clients were waiting on a shared child: ``isolation: per_session``, with its
diff. Starts that ran out `child.start_timeout` while other starts came up: a longer one. Children that keep
exiting, questions no client waiting could be asked: one advisory. Too few of anything, an HTTP upstream, an
upstream already per session: nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from proxy.analyzer import Analysis, Change, Proposal, Window, analyze
from proxy.analyzer.rules_stdio import MIN_CHILD_EXITS, MIN_QUESTIONS_REFUSED, MIN_START_TIMEOUTS
from proxy.events.recorder import EventBus, EventRecorder
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import T0, Stream

Events = list[dict[str, Any]]

CONFIG = f"""\
# A stdio server: every comment here must survive an edit.
upstreams:
  - name: files                # run as a child
    command: [{sys.executable}, -c, "pass"]
    child:
      start_timeout: 30s       # spawn to initialize
"""
PER_SESSION = CONFIG.replace("    child:\n", "    isolation: per_session\n    child:\n")
AT_CAP = CONFIG.replace("start_timeout: 30s ", "start_timeout: 5m  ")
DISCARD = CONFIG.replace("    child:\n", "    stderr: discard\n    child:\n")
TIMED_OUT = "the child did not answer initialize within 30s"


def run(events: Events, config: str = CONFIG) -> list[Proposal]:
    return analyze(events, config, env={})[1]


def diff_lines(proposal: Proposal) -> list[str]:
    assert proposal.diff is not None
    return [line for line in proposal.diff.splitlines()[2:] if line[:1] in "+-"]


def refused(s: Stream, n: int, why: str, method: str = "sampling/createMessage", at: float = 0.0) -> None:
    for i in range(n):
        s.question_refused(
            at + 10.0 * i, why, method=method, clients_waiting=(2 + i % 3) if why == "several_clients" else 1
        )


# -- questions refused on a shared child ------------------------------------------------------------


def test_questions_refused_for_several_clients_propose_a_child_per_session() -> None:
    s = Stream("files")
    refused(s, 3, "several_clients")
    s.question_refused(35.0, "several_clients", method="elicitation/create", clients_waiting=2)
    [p] = run(s.events)
    assert (p.id, p.rule, p.target, p.advisory) == ("45315e8f3a", "stdio", "files", False)
    assert p.title == "Give each session of files a child of its own: 4 questions of its child reached no client"
    assert p.changes == (Change("files", None, "isolation", "per_session", "shared"),)
    assert diff_lines(p) == ["+    isolation: per_session"]
    assert p.evidence == {
        "several_clients": 4, "methods": {"sampling/createMessage": 3, "elicitation/create": 1}, "clients_waiting_max": 4,
        "nobody_waiting": 0, "isolation": "shared", "window_start": T0, "window_end": T0 + 35, "example_ids": [1, 2, 3, 4],
    }  # fmt: skip
    assert p.effect.numbers == {"several_clients": 4, "clients_waiting_max": 4}
    assert p.effect.text.startswith(
        "the 4 questions refused because several clients were waiting would have reached their client"
    )
    assert (p.confidence, p.confidence_reason) == (
        "low", "only 4 questions refused because several clients were waiting (minimum 3); 6 would give medium confidence",
    )  # fmt: skip
    assert p.rationale.startswith(
        "The child of files asked 4 questions (3× sampling/createMessage, 1× elicitation/create) while requests of "
        "several clients were in flight on it (up to 4 at once)."
    )
    assert "a process per session (at most child.max_children, 32" in p.rationale  # the cost is said
    assert "Questions asked with no client waiting" not in p.rationale


def test_the_per_session_proposal_names_questions_asked_with_nobody_waiting_without_counting_them() -> None:
    s = Stream("files")
    refused(s, 15, "several_clients")
    refused(s, 2, "nobody_waiting", at=200.0)
    [p] = run(s.events)
    assert (p.id, p.confidence) == ("45315e8f3a", "high")  # the id is the change's: the same advice keeps it
    assert (p.evidence["several_clients"], p.evidence["nobody_waiting"], p.effect.numbers["several_clients"]) == (
        15,
        2,
        15,
    )
    assert (
        "Questions asked with no client waiting (2 more) a per-session child sends to its session's GET stream"
        in p.rationale
    )


def test_too_few_questions_refused_propose_nothing() -> None:
    s = Stream("files")
    refused(s, MIN_QUESTIONS_REFUSED - 1, "several_clients")
    refused(s, MIN_QUESTIONS_REFUSED - 1, "not_askable", at=100.0)
    assert run(s.events) == []


def test_an_upstream_already_per_session_or_over_http_gets_no_isolation_proposal() -> None:
    s = Stream("files")
    refused(s, 6, "several_clients")
    assert run(s.events, PER_SESSION) == []
    http = Stream("api")  # the events name an upstream the file runs over HTTP (sc.CONFIG's api)
    refused(http, 6, "several_clients")
    for i in range(4):
        http.child_exited(100.0 + i, "exited with code 1")
    assert run(http.events, sc.CONFIG) == []


# -- starts that ran out start_timeout --------------------------------------------------------------


def test_starts_that_ran_out_the_limit_while_others_came_up_propose_a_longer_start_timeout() -> None:
    s = Stream("files")
    s.child_exited(10.0, TIMED_OUT, phase="starting", generation=1, pid=4001)
    s.child_exited(45.0, TIMED_OUT, phase="starting", generation=2, pid=4002, restarts=1)
    s.child_exited(120.0, "exited with code 3", uptime_ms=40_000.0, generation=3, pid=4003, restarts=2, cut_off=1)
    [p] = run(s.events)  # the one crash left over is no pattern: no advisory
    assert (p.id, p.rule, p.advisory) == ("44e7c9818a", "stdio", False)
    assert p.title == "Raise child.start_timeout for files from 30s to 1m: 2 starts ran it out"
    assert p.changes == (Change("files", None, "child.start_timeout", "1m", "30s"),)
    assert diff_lines(p) == [
        "-      start_timeout: 30s       # spawn to initialize",
        "+      start_timeout: 1m        # spawn to initialize",
    ]
    assert p.evidence == {
        "start_timed_out": 2, "came_up": 1, "ok_after_timeout": 0, "start_timeout_s": 30.0,
        "window_start": T0 + 10, "window_end": T0 + 120, "example_ids": [1, 2],
    }  # fmt: skip
    assert p.effect.numbers == {"start_timed_out": 2, "came_up": 1, "ok_after_timeout": 0, "new_start_timeout_s": 60.0}
    assert (p.confidence, p.confidence_reason) == (
        "low", "only 2 starts that ran out child.start_timeout (minimum 2); 4 would give medium confidence",
    )  # fmt: skip
    assert "while in the same window 1 came up and ran before exiting: the command does start" in p.rationale
    assert "if the child instead hangs now and then, a longer limit only makes each hang cost more" in p.rationale
    assert "(stdio_child_stderr, pids 4001, 4002) say which." in p.rationale


def test_calls_that_succeeded_after_a_failed_start_show_a_later_child_came_up() -> None:
    """A shared child is the upstream's one: a success after a start that timed out was a later child's."""
    s = Stream("files")
    s.call_ok(5.0, tool="read", ok=20, window_s=5.0)  # before the first timeout: says nothing of later starts
    s.child_exited(10.0, TIMED_OUT, phase="starting", generation=1)
    s.child_exited(45.0, TIMED_OUT, phase="starting", generation=2)
    assert run(s.events) == []  # no start shown to work: nothing yet
    s.call_ok(100.0, tool="read", ok=7, window_s=10.0)
    [p] = run(s.events)
    assert (p.id, p.evidence["came_up"], p.evidence["ok_after_timeout"]) == ("44e7c9818a", 0, 7)
    assert "while in the same window 7 calls succeeded after the first start that timed out" in p.rationale
    assert run(s.events, PER_SESSION) == []  # per session, another session's child may have served those calls


def test_starts_that_never_came_up_are_advice_saying_more_time_is_not_shown_to_help() -> None:
    s = Stream("files")
    for i in range(3):
        s.child_exited(40.0 * i, TIMED_OUT, phase="starting", generation=i + 1, pid=None, restarts=i)
    [p] = run(s.events)
    assert (p.id, p.advisory, p.changes, p.diff) == ("b2a61190ec", True, (), None)
    assert p.title == f"Children of files: 3 unplanned exits (3× {TIMED_OUT})"
    assert (
        "3 did not answer initialize within child.start_timeout (30s) and no child came up in the window" in p.rationale
    )
    assert "stdio_child_stderr in the proxy's log, upstream files, no pid: they never ran." in p.rationale


def test_a_limit_already_at_the_cap_is_not_raised() -> None:
    s = Stream("files")
    for i in range(3):
        s.child_exited(
            10.0 * i, "the child did not answer initialize within 5m", phase="starting", generation=2 * i + 1
        )
        s.child_exited(10.0 * i + 5, "exited with code 1", uptime_ms=2000.0, generation=2 * i + 2)
    [p] = run(s.events, AT_CAP)
    assert p.advisory and p.evidence["phases"] == {"starting": 3, "running": 3}
    assert (
        "3 did not answer initialize within child.start_timeout (5m), already the longest proposed (5m)" in p.rationale
    )


def test_a_single_timed_out_start_is_not_a_pattern() -> None:
    s = Stream("files")
    s.child_exited(10.0, TIMED_OUT, phase="starting")
    s.child_exited(50.0, "exited with code 1", uptime_ms=1000.0, generation=2)
    assert MIN_START_TIMEOUTS == 2 and run(s.events) == []


# -- children that keep exiting ---------------------------------------------------------------------


def test_a_crash_loop_is_advice_naming_the_reasons_counts_and_stderr_lines() -> None:
    s = Stream("files")
    for i in range(3):
        s.child_exited(20.0 * i, "exited with code 1", phase="starting", generation=i + 1, pid=5000 + i, restarts=i)
    s.child_exited(70.0, "was killed by SIGKILL", uptime_ms=9000.0, generation=4, pid=5003, restarts=3, cut_off=2)
    s.child_exited(90.0, "exited with code 1", uptime_ms=120_000.0, generation=5, pid=5004, restarts=4, cut_off=1)
    [p] = run(s.events)
    assert (p.id, p.rule, p.advisory, p.changes, p.diff) == ("b2a61190ec", "stdio", True, (), None)
    assert p.title == "Children of files: 5 unplanned exits (4× exited with code 1, 1× was killed by SIGKILL)"
    assert p.evidence == {
        "exits": 5, "phases": {"starting": 3, "running": 2},
        "reasons": {"exited with code 1": 4, "was killed by SIGKILL": 1}, "cut_off": 3, "restarts": 4,
        "shortest_uptime_ms": 9000.0, "window_start": T0, "window_end": T0 + 90, "example_ids": [3, 4, 5],
    }  # fmt: skip
    assert p.effect.numbers == {"exits": 5, "cut_off": 3}
    assert (p.confidence, p.confidence_reason) == ("low", "advice only: no change to estimate")
    assert p.rationale.startswith(
        "The children of files ended 5 times without the proxy stopping them (4× exited with code 1, 1× was killed by "
        "SIGKILL): 3 before answering initialize, 2 after coming up (1 of them within 1m, median uptime 64.5s). The "
        "proxy restarted each after a growing backoff (4 restarts so far); 3 client requests in flight were cut off"
    )
    assert "3 exited before answering initialize: the command fails at start-up" in p.rationale
    assert "an API key the server needs must be in env" in p.rationale
    assert "out-of-memory killer" in p.rationale
    assert p.rationale.endswith(
        "Their own words are their stderr lines: stdio_child_stderr in the proxy's log, upstream files, pids 5000, "
        "5001, 5002, 5003, 5004."
    )


def test_with_stderr_discarded_the_advice_says_how_to_see_why() -> None:
    s = Stream("files")
    for i in range(MIN_CHILD_EXITS):
        s.child_exited(20.0 * i, "the child wrote a line over 8 MiB", uptime_ms=3000.0, generation=i + 1)
    [p] = run(s.events, DISCARD)
    assert "a result that large is better asked for in pages" in p.rationale
    assert p.rationale.endswith(
        "Their stderr is discarded (stderr: discard): set stderr: log to see in the proxy's log why they end."
    )


def test_a_single_crash_or_two_propose_nothing() -> None:
    s = Stream("files")
    s.call_ok(100.0, tool="read", ok=500)
    s.child_exited(50.0, "was killed by SIGKILL", uptime_ms=3_600_000.0, cut_off=3, restarts=1)
    assert run(s.events) == []
    s.child_exited(150.0, "exited with code 1", uptime_ms=90_000.0, generation=2, restarts=2)
    assert run(s.events) == []


# -- questions the client waiting could not be asked ------------------------------------------------


def test_questions_the_client_could_not_be_asked_are_advice_about_the_clients() -> None:
    s = Stream("files")
    refused(s, 3, "not_askable", method="elicitation/create")
    [p] = run(s.events)
    assert (p.id, p.advisory) == ("b2a61190ec", True)
    assert p.title == "Children of files: 3 questions the client waiting could not be asked"
    assert p.evidence == {
        "not_askable": 3, "not_askable_methods": {"elicitation/create": 3}, "window_start": T0, "window_end": T0 + 20,
        "example_ids": [1, 2, 3],
    }  # fmt: skip
    assert p.rationale == (
        "The child of files asked 3 questions (3× elicitation/create) while the one client waiting could not be "
        "asked: its request accepted no SSE answer (an Accept without text/event-stream), or it speaks the "
        "2026-07-28 era, which has no server-to-client requests on a stateless call. No setting of the proxy's "
        "changes that: the server's elicitation reaches only legacy-era clients (2025-11-25 or older) that accept "
        "text/event-stream, and its tools that ask fail for the others."
    )


def test_one_upstream_gets_the_isolation_proposal_and_one_advisory_together() -> None:
    s = Stream("files")
    refused(s, 3, "several_clients")
    refused(s, 3, "not_askable", at=50.0)
    refused(s, 3, "too_many_questions", at=100.0)
    isolation, advice = run(s.events)
    assert (isolation.changes[0].key, advice.advisory) == ("isolation", True)
    assert advice.title == (
        "Children of files: 3 questions the client waiting could not be asked; 3 questions past the bound on questions waiting"
    )
    assert advice.effect.numbers == {"not_askable": 3, "too_many_questions": 3}


# -- quiet, and read as the proxy writes them -------------------------------------------------------


def test_no_stdio_events_propose_nothing_for_a_stdio_upstream() -> None:
    s = Stream("files")
    s.call_ok(60.0, tool="read", ok=300)
    s.call_failed(30.0, "connection_lost", tool="read")
    analysis, proposals = analyze(s.events, CONFIG, env={})
    assert proposals == [] and not analysis.upstreams["files"].stdio


def test_stdio_events_are_upstream_facts_not_calls() -> None:
    """A refused question's `method` is the child's: it makes no target, as a lost session's events make none."""
    s = Stream("files")
    refused(s, 3, "several_clients")
    s.child_exited(40.0, "exited with code 1")
    analysis = Analysis.from_events(s.events, None)
    assert analysis.targets == {}
    stdio = analysis.upstreams["files"].stdio
    assert (len(stdio.exits), stdio.refusals("several_clients"), stdio.most_waiting) == (
        1,
        [1, 2, 3],
        {"several_clients": 4},
    )


def test_the_live_window_folds_stdio_events_as_a_recording_does() -> None:
    s = Stream("files")
    for i in range(40):
        s.child_exited(
            12.0 * i, "exited with code 1", uptime_ms=1000.0 * i, generation=i + 1, restarts=i, cut_off=i % 2
        )
        s.question_refused(
            12.0 * i + 1, ("several_clients", "not_askable", "nobody_waiting")[i % 3], clients_waiting=i % 4
        )
    window = Window(window_s=300.0, slices=30)
    for event in s.events:
        window.add(event)
    live = window.analysis()
    recorded = Analysis.from_events([e for e in s.events if window.covers(e["ts"])], None)
    assert live.upstreams["files"].stdio == recorded.upstreams["files"].stdio
    assert len(live.upstreams["files"].stdio.exits) < 40  # the window slid past the first ones


def test_events_as_the_recorder_publishes_them_are_read() -> None:
    """Emitted as the supervisor emits them (``observer.policy_event(kind, None, **fields)``), checked against their types."""
    recorder = EventRecorder(EventBus())
    recorder.strict = True
    for i in range(3):
        recorder.policy_event(
            "stdio_question_refused",
            None,
            upstream="files",
            method="sampling/createMessage",
            why="several_clients",
            clients_waiting=2,
        )
        recorder.policy_event(
            "stdio_child_exited", None, upstream="files", generation=i + 1, pid=100 + i, phase="running",
            reason="exited with code 2", uptime_ms=500.0, cut_off=1, restarts=i,
        )  # fmt: skip
    events = recorder.bus.recent()
    assert {e["method"] for e in events if e["type"] == "stdio_question_refused"} == {"sampling/createMessage"}
    isolation, advice = run(events)
    assert (isolation.evidence["several_clients"], isolation.evidence["clients_waiting_max"]) == (3, 2)
    assert (advice.evidence["exits"], advice.evidence["cut_off"], advice.evidence["reasons"]) == (
        3,
        3,
        {"exited with code 2": 3},
    )
