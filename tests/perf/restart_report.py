"""What ``python -m tests.perf --restart`` measured, judged against issue 13's targets, from three records
that do not depend on each other:

- the clients' own record of every call (`CallRecord`: what came back, when);
- the server's executions file: one line per execution of ``write`` (`read_executions`), across every
  incarnation of the server;
- the proxy's events file (`read_events`): which calls it retried and why, and its session events.

The calls fall into three disjoint kinds:

- **idempotent**: ``read`` (the server declares it read-only and idempotent);
- **never sent**: a ``write`` that met a failure the proxy could prove left the server untouched: every
  failed attempt the proxy recorded for it was refused before reaching the tool (``connect_error``: the
  connection was refused; ``session_expired``: the server rejected the request for an unknown session) or
  was the proxy's own refusal (a breaker, a budget), which sends nothing;
- **non-idempotent**: every other ``write``, including the ones in flight when the server was killed.

Targets (issue 13, deliverable 4): no failure for idempotent calls nor for calls never sent; every failure a
clear JSON-RPC error (``jsonrpc`` 2.0, the request's own ``id``, an ``error`` with an integer ``code`` and a
string ``message``) arriving within its deadline (the proxy's ``timeouts.total``); no ``write`` executed
more than once.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "KINDS",
    "CallRecord",
    "RestartWindow",
    "classify",
    "percentile",
    "print_report",
    "read_events",
    "read_executions",
    "summarize",
]

KINDS: Final = ("idempotent", "never_sent", "non_idempotent")

NOT_DELIVERED: Final = frozenset({"connect_error", "session_expired"})
"""Failed attempts that provably never reached the tool: the connection was refused, or the server
rejected the request because it did not know its session."""
REFUSED_BY_PROXY: Final = frozenset(
    {"circuit_open", "rate_limited", "retry_budget_exhausted", "client_overloaded", "proxy_overloaded", "overloaded"}
)
"""The proxy's own verdicts (an open breaker, a rate limit, the retry budget, its own overload): they send nothing."""
ATTEMPT_EVENTS: Final = frozenset({"retry", "retry_budget_exhausted", "call_failed", "timeout"})
"""The events whose ``error`` (or type) says how one attempt of a call went."""
SESSION_EVENTS: Final = ("session_lost", "session_recovered", "stream_resumed")


@dataclass(frozen=True)
class CallRecord:
    """One call as its client saw it. Times are seconds since the scenario started."""

    era: str
    """``legacy`` (a session) or ``modern`` (2026-07-28, stateless)."""
    client: int
    tool: str
    """``read`` or ``write``."""
    ref: str
    """The call's own key, its only argument: unique over the run."""
    started: float
    ended: float
    outcome: str
    """``ok`` (the expected result), ``error`` (a clear JSON-RPC error) or ``unclear`` (anything else: an
    HTTP answer without the JSON-RPC error, another id, a wrong result, no answer in time, a broken
    connection)."""
    status: int | None = None
    code: int | None = None
    reason: str | None = None
    """``data.reason`` of a JSON-RPC error (the proxy's words), else None."""
    detail: str = ""
    session_rejected: bool = False
    """The answer said the server did not know the call's session (HTTP 404, or an error naming the
    session): the server refused the request without running it."""

    @property
    def latency(self) -> float:
        return self.ended - self.started


@dataclass(frozen=True)
class RestartWindow:
    """One restart: the server SIGKILLed at `killed`, serving again (its ``LISTENING`` line) at `ready`."""

    killed: float
    ready: float


def read_executions(path: Path) -> collections.Counter[str]:
    """How often each ref was executed by ``write``, over every incarnation of the server."""
    if not path.exists():
        return collections.Counter()
    return collections.Counter(line for line in path.read_text().splitlines() if line)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The proxy's events, oldest first, from its events file and any rotated ``FILE.N`` (lines that do not
    parse, e.g. one cut by a kill, are skipped)."""
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0)
    events: list[dict[str, Any]] = []
    for file in [*files, path]:
        if not file.exists():
            continue
        for line in file.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (`share` in 0..1) of `values`, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _ref_of(event: dict[str, Any]) -> str | None:
    """The ref of the call an event is about: its params (``events.include_params``) are the call's
    ``params`` with ``name`` and ``arguments``."""
    params = event.get("params")
    arguments = params.get("arguments") if isinstance(params, dict) else None
    ref = arguments.get("ref") if isinstance(arguments, dict) else None
    return ref if isinstance(ref, str) else None


def attempt_kinds(events: Iterable[dict[str, Any]]) -> dict[str, list[str]]:
    """Per ref, the kinds of its failed attempts as the proxy's events tell them (an event without params,
    such as ``session_lost``, is tied to its ref through another event of the same ``call_id``)."""
    events = list(events)
    by_call: dict[int, str] = {}
    for event in events:
        ref, call_id = _ref_of(event), event.get("call_id")
        if ref is not None and isinstance(call_id, int) and call_id:
            by_call[call_id] = ref
    kinds: dict[str, list[str]] = collections.defaultdict(list)
    for event in events:
        kind = event.get("type")
        ref = _ref_of(event)
        if ref is None and isinstance(event.get("call_id"), int):
            ref = by_call.get(event["call_id"])
        if ref is None:
            continue
        if kind == "session_lost":
            kinds[ref].append("session_expired")
        elif kind == "timeout":
            kinds[ref].append("timeout")
        elif kind in ATTEMPT_EVENTS:
            error = event.get("error")
            found = error.get("kind") if isinstance(error, dict) else None
            kinds[ref].append(found if isinstance(found, str) else str(event.get("reason") or kind))
    return dict(kinds)


def classify(record: CallRecord, kinds: Sequence[str]) -> str:
    """The call's kind (`KINDS`), given the kinds of its failed attempts (`attempt_kinds`); a call its client
    saw rejected for its session counts one ``session_expired`` attempt more."""
    kinds = [*kinds, "session_expired"] if record.session_rejected else list(kinds)
    if record.tool == "read":
        return "idempotent"
    if kinds and all(k in NOT_DELIVERED or k in REFUSED_BY_PROXY for k in kinds):
        return "never_sent"
    return "non_idempotent"


def _met_restart(record: CallRecord, windows: Sequence[RestartWindow], around: float) -> bool:
    return any(record.started <= w.ready + around and record.ended >= w.killed for w in windows)


def _latency_ms(records: Sequence[CallRecord]) -> dict[str, Any]:
    values = [r.latency * 1000 for r in records]
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    return {
        "calls": len(values),
        "p50": None if p50 is None else round(p50, 1),
        "p99": None if p99 is None else round(p99, 1),
        "max": round(max(values), 1) if values else None,
    }


def _why(record: CallRecord) -> str:
    """A failure's group: the proxy's ``data.reason``, else the client's description with its numbers
    (ids, refs, byte counts) folded, so failures that differ only by them count together."""
    return record.reason or re.sub(r"\d+", "N", record.detail[:80]) or "?"


def _kind_row(records: Sequence[CallRecord], met: set[int], deadline: float) -> dict[str, Any]:
    failed = [r for r in records if r.outcome != "ok"]
    return {
        "calls": len(records),
        "met_a_restart": sum(1 for r in records if id(r) in met),
        "ok": len(records) - len(failed),
        "failures": len(failed),
        "clear_errors": sum(1 for r in failed if r.outcome == "error"),
        "unclear": sum(1 for r in failed if r.outcome == "unclear"),
        "past_deadline": sum(1 for r in failed if r.latency > deadline),
        "reasons": dict(collections.Counter(_why(r) for r in failed).most_common(8)),
    }


def summarize(
    records: Sequence[CallRecord],
    windows: Sequence[RestartWindow],
    executions: collections.Counter[str],
    events: Sequence[dict[str, Any]],
    deadline: float,
    around: float,
) -> dict[str, Any]:
    """Everything the scenario reports, from the three records (see the module docstring)."""
    per_ref = attempt_kinds(events)
    kind_of = {id(r): classify(r, per_ref.get(r.ref, ())) for r in records}
    met = {id(r) for r in records if _met_restart(r, windows, around)}
    kinds = {k: _kind_row([r for r in records if kind_of[id(r)] == k], met, deadline) for k in KINDS}
    by_era = {
        era: {k: _kind_row([r for r in records if r.era == era and kind_of[id(r)] == k], met, deadline) for k in KINDS}
        for era in sorted({r.era for r in records})
    }
    writes = [r for r in records if r.tool == "write"]
    write_refs = {r.ref for r in writes}
    twice = {ref: n for ref, n in executions.items() if n > 1}
    unknown = sorted(ref for ref in executions if ref not in write_refs)
    never_sent_run = [r.ref for r in writes if kind_of[id(r)] == "never_sent" and r.outcome != "ok" and executions[r.ref]]
    type_counts = collections.Counter(str(e.get("type")) for e in events)
    failures = [r for r in records if r.outcome != "ok"]
    targets = {
        "idempotent_failures_0": kinds["idempotent"]["failures"] == 0,
        "never_sent_failures_0": kinds["never_sent"]["failures"] == 0,
        "every_failure_clear_and_in_deadline": all(r.outcome == "error" and r.latency <= deadline for r in failures),
        "non_idempotent_at_most_once": not twice,
    }
    return {
        "restarts": [
            {"killed_at_s": round(w.killed, 3), "ready_at_s": round(w.ready, 3), "down_s": round(w.ready - w.killed, 3)}
            for w in windows
        ],
        "deadline_s": deadline,
        "around_restart_s": around,
        "calls": len(records),
        "kinds": kinds,
        "by_era": by_era,
        "executions": {
            "write_calls": len(writes),
            "refs_executed": len(executions),
            "executions": sum(executions.values()),
            "executed_more_than_once": len(twice),
            "most_executions_of_one_ref": max(executions.values(), default=0),
            "twice_examples": dict(list(twice.items())[:10]),
            "ok_without_execution": sum(1 for r in writes if r.outcome == "ok" and not executions[r.ref]),
            "failed_but_executed": sum(1 for r in writes if r.outcome != "ok" and executions[r.ref]),
            "never_sent_but_executed": len(never_sent_run),
            "refs_no_call_made": len(unknown),
        },
        "latency_ms": {
            "all": _latency_ms(records),
            "around_restarts": _latency_ms([r for r in records if id(r) in met]),
            "away_from_restarts": _latency_ms([r for r in records if id(r) not in met]),
            "failures": _latency_ms(failures),
        },
        "events": {
            **{name: type_counts.get(name, 0) for name in SESSION_EVENTS},
            "session_lost_by_recovery": dict(sorted(collections.Counter(
                f"{e.get('recovery')}" + (f" ({e.get('why')})" if e.get("why") else "") + f" on {e.get('method')}"
                for e in events if e.get("type") == "session_lost"
            ).items())),
            "by_type": dict(sorted(type_counts.items())),
        },
        "failure_examples": [
            {**asdict(r), "kind": kind_of[id(r)], "failed_attempts": per_ref.get(r.ref, [])}
            for r in sorted(failures, key=lambda r: (r.reason != "circuit_open", r.started), reverse=True)[:20]
        ],
        "targets": targets,
    }


def print_report(report: dict[str, Any], out: Any) -> None:
    """The table and verdicts, in the style of the other modes."""
    s = report["summary"]
    w = out.write
    w(f"\nproxy: {report['proxy_src'] or 'this checkout'}; its config: the defaults plus, for the upstream, {'; '.join(report['user_settings'])}\n")
    w(f"measurement only: {'; '.join(report['measurement_settings'])}\n")
    for i, r in enumerate(s["restarts"], 1):
        w(f"restart {i}: SIGKILL at {r['killed_at_s']:.2f} s, serving again at {r['ready_at_s']:.2f} s ({r['down_s']:.2f} s down)\n")
    w(f"\n{'kind':<16} {'calls':>7} {'met a restart':>14} {'failed':>7} {'clear err':>10} {'unclear':>8} {'late':>6}  target\n")
    targets = {"idempotent": "0 failures", "never_sent": "0 failures", "non_idempotent": "failures clear, in deadline"}
    for kind in ("idempotent", "never_sent", "non_idempotent"):
        row = s["kinds"][kind]
        w(
            f"{kind:<16} {row['calls']:>7} {row['met_a_restart']:>14} {row['failures']:>7} {row['clear_errors']:>10} "
            f"{row['unclear']:>8} {row['past_deadline']:>6}  {targets[kind]}\n"
        )
    for era, rows in s["by_era"].items():
        parts = ", ".join(f"{k} {rows[k]['failures']}/{rows[k]['calls']}" for k in ("idempotent", "never_sent", "non_idempotent"))
        w(f"  {era}: failed/calls: {parts}\n")
    for kind in ("idempotent", "never_sent", "non_idempotent"):
        reasons = s["kinds"][kind]["reasons"]
        if reasons:
            w(f"  {kind} failures by reason: {reasons}\n")
    missed = [f for f in s["failure_examples"] if f["kind"] in ("idempotent", "never_sent")][:6]
    for f in missed:
        w(
            f"  e.g. {f['era']} {f['tool']} {f['ref']} at {f['started']:.2f} s: {f['reason'] or f['detail'][:80]}; "
            f"the proxy's failed attempts: {f['failed_attempts'] or 'none recorded'}\n"
        )
    e = s["executions"]
    w(
        f"\nwrite executions: {e['executions']} for {e['write_calls']} calls; refs executed more than once: "
        f"{e['executed_more_than_once']} (most: {e['most_executions_of_one_ref']}); failed calls that ran: "
        f"{e['failed_but_executed']}; answered ok without running: {e['ok_without_execution']}\n"
    )
    lat = s["latency_ms"]
    w(
        f"latency ms: all p50 {lat['all']['p50']} p99 {lat['all']['p99']} max {lat['all']['max']}; around restarts "
        f"({lat['around_restarts']['calls']} calls in flight from a kill to {s['around_restart_s']:g} s after the server was back) "
        f"p99 {lat['around_restarts']['p99']} worst {lat['around_restarts']['max']}; deadline {s['deadline_s'] * 1000:.0f}\n"
    )
    ev = s["events"]
    w(
        f"proxy events: session_lost {ev['session_lost']}, session_recovered {ev['session_recovered']}, "
        f"stream_resumed {ev['stream_resumed']}; all: {ev['by_type']}\n"
        f"  session_lost by recovery: {ev['session_lost_by_recovery']}\n"
    )
    legacy = report["legacy_sessions"]
    w(
        f"raw legacy sessions: {legacy['opened']} opened, {legacy['reinitialized']} re-initialized by their client after "
        f"a failure that named the session (target 0), {legacy['init_failures']} initialize attempts failed; GET streams: "
        f"{legacy['get_streams_opened']} opened, {legacy['get_streams_ended']} ended under their client (target 0)\n"
    )
    sdk = report["sdk_clients"]
    w(
        f"SDK clients: {sdk['opened']} opened, {sdk['replaced']} replaced after a failure that spent them (target 0), "
        f"{sdk['errors']} raised outside a call{': ' + '; '.join(sdk['error_examples']) if sdk['errors'] else ''}\n"
    )
    w("\n")
    for name, ok in s["targets"].items():
        w(f"{'PASS' if ok else 'FAIL'} {name}\n")
