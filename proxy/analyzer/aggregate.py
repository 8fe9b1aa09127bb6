"""Fold a stream of events into an `Analysis`: offline (a recorded JSONL file) or live (a sliding window).

Only schema v1 events are read; anything else is skipped and counted, never guessed at. The window is
measured on the events' own `ts`, so a recorded file analyzes exactly as it did live.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from proxy.analyzer.model import (
    EXAMPLES,
    SERVER_SIDE,
    SESSION_EVENTS,
    STDIO_EVENTS,
    TOOL_BREAKER_KINDS,
    BreakerStats,
    ChildExit,
    FailedCall,
    HealthStats,
    Opening,
    SessionLoss,
    SessionStats,
    SignatureGroup,
    StdioStats,
    Target,
    TargetStats,
    Transition,
    UpstreamStats,
    streamed_failure,
)
from proxy.events.envelope import SCHEMA_VERSION

__all__ = ["DEFAULT_WINDOW_S", "REORDER_S", "RUN_UP_S", "SLICES", "Analysis", "Window", "number", "read_events", "select_window"]

log = logging.getLogger(__name__)
DEFAULT_WINDOW_S = 300.0
RUN_UP_S = 60.0
"""How far back before a breaker opened its failures are looked for, at most (and never before the
breaker's previous transition): a breaker trips on a streak or a rate over a short window, so failures
older than a minute did not open it."""
_TIMEOUT_REASONS = {"upstream_timeout": "timeout", "upstream_unavailable": "connect_error"}
"""`breaker_state.last_failure_kind` may name a client-facing reason: the failure kind it stands for."""

Event = dict[str, Any]


def _error(event: Event) -> dict[str, Any]:
    error = event.get("error")
    return error if isinstance(error, dict) else {}


def _kind(event: Event) -> str:
    """The failure kind: ``error.kind``; a bare ``failure`` field (how retry stages first reported it) also counts."""
    kind = _error(event).get("kind", event.get("failure"))
    return "" if kind is None else str(kind)


def _attempt(event: Event) -> int:
    """The event's own attempt number: `make_event` renames a per-type `attempt` field to `x_attempt`."""
    return int(_num(event.get("x_attempt", event.get("attempt")), 1))


def number(value: Any, default: float = 0.0) -> float:
    """A JSON number of an event as a float (`default` for anything else, a bool included)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


_num = number


def select_window(events: Iterable[Event], window_s: float | None) -> tuple[list[Event], int]:
    """(the schema v1 events with a numeric `ts`, in (ts, id) order, those within `window_s` of the latest
    when given; how many were skipped as not v1). The one selection of a recorded window: the analysis
    and the what-if replay of it (`proxy.trials.records`) cover exactly the same events."""
    valid: list[Event] = []
    skipped = 0
    for event in events:
        version, ts = (event.get("v"), event.get("ts")) if isinstance(event, dict) else (None, None)
        if version == SCHEMA_VERSION and not isinstance(version, bool) and isinstance(ts, int | float) and not isinstance(ts, bool):
            valid.append(event)
        else:
            skipped += 1
    valid.sort(key=lambda e: (e["ts"], number(e.get("id"))))
    if window_s is not None and valid:
        start = valid[-1]["ts"] - window_s
        valid = [e for e in valid if e["ts"] >= start]
    return valid, skipped


@dataclass(slots=True)
class Analysis:
    """Everything the rules may know about one window of events."""

    window_start: float | None = None
    window_end: float | None = None
    window_s: float | None = None
    events: int = 0
    skipped: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    signatures: dict[str, SignatureGroup] = field(default_factory=dict)
    targets: dict[Target, TargetStats] = field(default_factory=dict)
    breakers: dict[tuple[str, str], BreakerStats] = field(default_factory=dict)
    health: dict[str, HealthStats] = field(default_factory=dict)
    upstreams: dict[str, UpstreamStats] = field(default_factory=dict)
    config_changes: list[int] = field(default_factory=list)
    """Ids of config_reloaded events: evidence before one was gathered under another policy."""
    attempt_failures: list[tuple[float, Target, str]] = field(default_factory=list)
    """Failed attempts (ts, target, kind) a breaker may count, one per attempt (its `timeout` and its
    `retry` or `call_failed` are one failure): the run-up evidence of each opening."""
    refusals: list[tuple[float, Target, FailedCall]] = field(default_factory=list)
    """Calls a breaker refused (`call_failed` with `circuit_open`)."""
    refused_attempts: list[tuple[float, str, str]] = field(default_factory=list)
    """(ts, upstream, breaker) of each `circuit_open` event."""
    _failed_attempts: set[tuple[str, int]] = field(default_factory=set)
    _attempt_keys: list[tuple[str, int] | None] = field(default_factory=list)
    """The attempt of each `attempt_failures` entry (None without a call id): what merging time slices
    deduplicates on, as the fold does with `_failed_attempts`."""
    _openings: list[Opening] = field(default_factory=list)

    @classmethod
    def from_events(cls, events: Iterable[Event], window_s: float | None = DEFAULT_WINDOW_S) -> Analysis:
        """Aggregate `events`; with `window_s`, only those within `window_s` of the latest one count."""
        valid, skipped = select_window(events, window_s)
        if skipped:
            log.info("analyzer skipped %d events that are not schema v%d", skipped, SCHEMA_VERSION)
        analysis = cls(window_s=window_s, skipped=skipped)
        with _collector_paused():
            for event in valid:
                _fold(analysis, event)
            analysis.attribute()
        return analysis

    @classmethod
    def merged(cls, parts: Iterable[Analysis], window_s: float | None) -> Analysis:
        """One analysis of consecutive time slices (`parts`, oldest first, each folded but not attributed):
        the slices merged, then the work that needs the whole window (`attribute`) done once."""
        analysis = cls(window_s=window_s)
        with _collector_paused():
            for part in parts:
                analysis.merge(part)
            analysis.attribute()
        return analysis

    def merge(self, later: Analysis) -> None:
        """Add the partial analysis of a later time slice (folded by `_add`, not attributed): counters add,
        lists concatenate (both sides are in time order, so the result is), records merge per key, and a
        failed attempt already counted here (its timeout here, its retry there) is not counted again.
        `later` is left untouched and nothing mutable of it is shared, so a slice can be merged again."""
        self.events += later.events
        self.skipped += later.skipped
        self.by_type.update(later.by_type)
        for ts in (later.window_start, later.window_end):
            if ts is not None:
                self.window_start = ts if self.window_start is None else min(self.window_start, ts)
                self.window_end = ts if self.window_end is None else max(self.window_end, ts)
        for signature, group in later.signatures.items():
            mine = self.signatures.get(signature)
            if mine is None:
                self.signatures[signature] = group.copy()
            else:
                mine.merge(group)
        for target, stats in later.targets.items():
            self._target_stats(target).merge(stats)
        for key, breaker in later.breakers.items():
            self.breakers.setdefault(key, BreakerStats(breaker.upstream, breaker.name)).merge(breaker)
        for name, health in later.health.items():
            self.health.setdefault(name, HealthStats(name)).merge(health)
        for name, upstream in later.upstreams.items():
            self.upstream(name).merge(upstream)
        self.config_changes.extend(later.config_changes)
        for failure, attempt in zip(later.attempt_failures, later._attempt_keys, strict=True):
            if attempt is not None:
                if attempt in self._failed_attempts:
                    continue
                self._failed_attempts.add(attempt)
            self.attempt_failures.append(failure)
            self._attempt_keys.append(attempt)
        self.refusals.extend(later.refusals)
        self.refused_attempts.extend(later.refused_attempts)

    def attribute(self) -> None:
        """Give each breaker its openings: the failures that led to each, and the calls each refused.

        A refusal belongs to the opening of its breaker in force at the time (from the opening until the
        breaker closed or opened again); a `call_failed` refusal names no breaker, so its tool's (or
        method's) own breaker is tried first, then its upstream's. Refusals with no opening in the window
        (the breaker opened before it) stay unattributed.
        """
        by_upstream: dict[str, list[tuple[float, Target, str]]] = {}
        for failure in self.attempt_failures:  # once, not once per breaker: a window holds many failures
            by_upstream.setdefault(failure[1].upstream, []).append(failure)
        for stats in self.breakers.values():
            stats.openings = _openings(stats, by_upstream.get(stats.upstream, []))
            stats.opening_times = [o.ts for o in stats.openings]
        self._openings = sorted((o for b in self.breakers.values() for o in b.openings), key=lambda o: (o.ts, o.id))
        for ts, target, failed in self.refusals:
            own = self.breakers.get((target.upstream, f"{target.upstream}/{target.tool or target.method}"))
            for breaker in (own, self.breakers.get((target.upstream, target.upstream))):
                opening = None if breaker is None else _in_force(breaker, ts)
                if opening is not None:
                    opening.refused.append((target, failed))
                    break
        for ts, upstream, name in self.refused_attempts:
            named = self.breakers.get((upstream, name))
            opening = None if named is None else _in_force(named, ts)
            if opening is not None:
                opening.refused_attempts += 1

    def openings(self) -> list[Opening]:
        """Every breaker opening in the window, oldest first."""
        return list(self._openings)

    def refusals_caused_by(self, target: Target, kinds: frozenset[str] | set[str]) -> list[tuple[Target, FailedCall]]:
        """Calls (of any target) refused by breakers that `target`'s failures of `kinds` opened."""
        return [refusal for opening in self.openings() if opening.caused_by(target, kinds) for refusal in opening.refused]

    def all_targets(self) -> list[TargetStats]:
        """Every target, in a stable order (upstream, method, tool)."""
        return sorted(self.targets.values(), key=lambda s: (s.target.upstream, s.target.method, s.target.tool or ""))

    def targets_of(self, upstream: str) -> list[TargetStats]:
        return [stats for stats in self.all_targets() if stats.target.upstream == upstream]

    def top_signatures(self, limit: int = 10) -> list[SignatureGroup]:
        return sorted(self.signatures.values(), key=lambda g: (-g.count, g.first_ts, g.signature))[:limit]

    def upstream(self, name: str) -> UpstreamStats:
        stats = self.upstreams.get(name)
        if stats is None:
            stats = self.upstreams[name] = UpstreamStats(name)
        return stats

    def _target(self, event: Event) -> TargetStats | None:
        upstream, method = event.get("upstream"), event.get("method")
        if not isinstance(upstream, str) or not isinstance(method, str):
            return None
        tool = event.get("tool")
        return self._target_stats(Target(upstream, method, tool if isinstance(tool, str) else None))

    def _target_stats(self, target: Target) -> TargetStats:
        stats = self.targets.get(target)
        if stats is None:
            stats = self.targets[target] = TargetStats(target)
        return stats

    def _add(self, event: Event) -> None:
        ts, kind, event_id = float(event["ts"]), str(event.get("type")), int(_num(event.get("id")))
        self.events += 1
        self.by_type[kind] += 1
        self.window_start = ts if self.window_start is None else min(self.window_start, ts)
        self.window_end = ts if self.window_end is None else max(self.window_end, ts)
        self._signature(event, ts, kind, event_id)
        upstream = event.get("upstream")
        if kind == "breaker_state" and isinstance(upstream, str):
            name = str(event.get("breaker") or upstream)
            breaker = self.breakers.setdefault((upstream, name), BreakerStats(upstream, name))
            cause, last_kind = event.get("cause"), event.get("last_failure_kind")
            last_kind = _TIMEOUT_REASONS.get(last_kind, last_kind) if isinstance(last_kind, str) else None
            transition = Transition(event_id, ts, str(event.get("old")), str(event.get("new")), cause if isinstance(cause, str) else None, last_kind)
            breaker.transitions.append(transition)
        elif kind == "circuit_open" and isinstance(upstream, str):
            name = str(event.get("breaker") or upstream)
            self.breakers.setdefault((upstream, name), BreakerStats(upstream, name)).refused += 1
            self.refused_attempts.append((ts, upstream, name))
        elif kind == "health_changed" and isinstance(upstream, str):
            health = self.health.setdefault(upstream, HealthStats(upstream))
            transition = Transition(event_id, ts, str(event.get("old")), str(event.get("new")), event.get("cause"))
            health.transitions.append(transition)
        elif kind in SESSION_EVENTS:
            if isinstance(upstream, str):
                _add_session_event(self.upstream(upstream).sessions, event, ts, kind, event_id)
            return  # an upstream fact, not a call of a target (`SESSION_EVENTS`)
        elif kind in STDIO_EVENTS:
            if isinstance(upstream, str):
                _add_stdio_event(self.upstream(upstream).stdio, event, ts, kind, event_id)
            return  # a child's, not a call of a target (`STDIO_EVENTS`)
        elif kind == "config_reloaded":
            self.config_changes.append(event_id)
        stats = self._target(event)
        if stats is not None:
            _add_call_event(self, stats, event, ts, kind, event_id)

    def _signature(self, event: Event, ts: float, kind: str, event_id: int) -> None:
        signature = event.get("signature")
        if not isinstance(signature, str):
            return
        group = self.signatures.get(signature)
        if group is None:
            error = _error(event)
            group = self.signatures[signature] = SignatureGroup(
                signature, str(error.get("kind", "")), str(error.get("message", "")),
                event.get("upstream"), event.get("method"), event.get("tool"), ts, ts,
            )  # fmt: skip
        group.count += 1
        group.by_type[kind] += 1
        group.first_ts, group.last_ts = min(group.first_ts, ts), max(group.last_ts, ts)
        if len(group.example_ids) < EXAMPLES:
            group.example_ids.append(event_id)


def _call_id(event: Event) -> str | None:
    raw = event.get("call_id")  # an int from the proxy; strings are accepted too
    return str(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else None


def _add_session_event(sessions: SessionStats, event: Event, ts: float, kind: str, event_id: int) -> None:
    """Count one `SESSION_EVENTS` event into its upstream's sessions. A `session_lost` without a textual
    `recovery` is one of a recording from before the proxy recovered sessions (`SessionLoss.recovery` None)."""
    if kind == "session_lost":
        recovery = event.get("recovery")
        why = event.get("why", event.get("reason"))  # named `reason` in the proxy's first recovering build
        sessions.losses.append(SessionLoss(
            event_id, ts, _call_id(event), recovery if isinstance(recovery, str) else None, why if isinstance(why, str) else None,
        ))  # fmt: skip
    elif kind == "session_recovered":
        sessions.recovered_ids.append(event_id)
        took = event.get("recovery_ms")
        if isinstance(took, int | float) and not isinstance(took, bool) and math.isfinite(took) and took >= 0:
            sessions.recovery_ms.append(float(took))
    elif kind == "stream_resumed":
        stream = event.get("stream")
        sessions.resumed[stream if isinstance(stream, str) else "unknown"] += 1


def _add_stdio_event(stdio: StdioStats, event: Event, ts: float, kind: str, event_id: int) -> None:
    """Count one `STDIO_EVENTS` event into its upstream's children. Parsed whole first: a malformed event
    (`_fold` skips it) leaves no half-counted trace."""
    if kind == "stdio_child_exited":
        pid, uptime = event.get("pid"), event.get("uptime_ms")
        exit = ChildExit(
            event_id, ts, int(_num(event.get("generation"))), pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            str(event.get("phase")), str(event.get("reason")),
            float(uptime) if isinstance(uptime, int | float) and not isinstance(uptime, bool) else None,
            int(_num(event.get("cut_off"))),
        )  # fmt: skip
        stdio.exits.append(exit)
        stdio.restarts = max(stdio.restarts, int(_num(event.get("restarts"))))
    else:
        why, method = str(event.get("why")), event.get("method")
        stdio.refused.setdefault(why, []).append(event_id)
        stdio.refused_methods[(why, method if isinstance(method, str) else "unknown")] += 1
        stdio.most_waiting[why] = max(stdio.most_waiting.get(why, 0), int(_num(event.get("clients_waiting"))))


def _add_call_event(analysis: Analysis, stats: TargetStats, event: Event, ts: float, kind: str, event_id: int) -> None:
    """Count one event of a kind of call into its target (and its upstream)."""
    error_kind = _kind(event)
    call_id = _call_id(event)
    idempotent = event.get("idempotent")
    if kind != "call_ok":
        if isinstance(idempotent, bool):
            stats.idempotent_true += idempotent
            stats.idempotent_false += not idempotent
        for name, counter in (("read_only_hint", stats.read_only_hint), ("idempotent_hint", stats.idempotent_hint), ("destructive_hint", stats.destructive_hint)):
            hint = event.get(name)
            if isinstance(hint, bool):
                counter[hint] += 1
    upstream = analysis.upstream(stats.target.upstream)
    if error_kind == "http_429" and kind in ("retry", "call_failed"):
        upstream.http_429_ts.append(ts)
        upstream.http_429_ids.append(event_id)
        client = event.get("client")
        if kind == "call_failed" and isinstance(client, str):
            upstream.http_429_clients[client] += 1
    if error_kind in SERVER_SIDE and kind in ("retry", "call_failed"):
        stats.attempt_failures += 1
    if error_kind in TOOL_BREAKER_KINDS and kind in ("timeout", "retry", "call_failed"):
        attempt = None if call_id is None else (call_id, _attempt(event))
        if attempt is None or attempt not in analysis._failed_attempts:  # an attempt's timeout and its retry: one failure
            if attempt is not None:
                analysis._failed_attempts.add(attempt)
            analysis.attempt_failures.append((ts, stats.target, error_kind))
            analysis._attempt_keys.append(attempt)
    if kind == "call_ok":
        # Parse everything first: an event that fails half-way must leave no half-counted trace.
        calls, ok = int(_num(event.get("calls"))), int(_num(event.get("ok")))
        outcomes = {str(k): int(_num(v)) for k, v in (event.get("outcomes") or {}).items()}
        by_attempt = {int(k): int(_num(v)) for k, v in (event.get("ok_by_attempt") or {}).items()}
        buckets, counts = list(event.get("latency_buckets_ms") or ()), list(event.get("latency_histogram") or ())
        if not all(isinstance(x, int | float) for x in (*buckets, *counts)):
            raise TypeError("latency histogram holds non-numbers")
        named = event.get("ok_params")  # absent: the successes' params are unknown (an older recording)
        if named is not None and not (isinstance(named, list) and all(isinstance(x, str) for x in named)):
            raise TypeError("ok_params is not a list of hashes")
        overflow = max(0, int(_num(event.get("ok_params_overflow"))))
        stats.calls += calls
        stats.ok += ok
        stats.outcomes.update(outcomes)
        stats.ok_by_attempt.update(by_attempt)
        stats.histogram.add(buckets, counts, event.get("latency_max_ms"))
        if named is None:
            stats.ok_params_unknown += ok
        else:
            stats.ok_params_unknown += overflow
            # A summary does not say when in its window each success came: from its start, as far as it can tell.
            stats.saw_params(named, _num(event.get("window_end"), ts) - _num(event.get("window_s")))
        # One flush stamps one `window_end` on all its summaries; older events only have their own ts.
        key = (_num(event.get("window_end"), round(ts, 1)), _num(event.get("window_s")))
        upstream.windows[key] = upstream.windows.get(key, 0) + ok
        timeline, slot = event.get("ok_timeline"), _num(event.get("timeline_slot_s"))
        if isinstance(timeline, list) and slot > 0 and all(isinstance(x, int) and not isinstance(x, bool) for x in timeline):
            line = upstream.timelines.setdefault((*key, slot), [])
            line.extend([0] * (len(timeline) - len(line)))
            for index, count in enumerate(timeline):
                line[index] += count
    elif kind == "call_failed":
        params = event.get("params_hash")
        stats.failed.append(
            FailedCall(event_id, ts, call_id if isinstance(call_id, str) else None, error_kind,
                       idempotent if isinstance(idempotent, bool) else None, params if isinstance(params, str) else None,
                       streamed_failure(event))
        )  # fmt: skip
        if isinstance(call_id, str):
            stats.failed_calls.add(call_id)
        if error_kind == "circuit_open":
            analysis.refusals.append((ts, stats.target, stats.failed[-1]))
    elif kind == "retry":
        stats.retries += 1
        stats.retry_ids.append(event_id)
        if isinstance(call_id, str):
            stats.retried_calls.add(call_id)
    elif kind == "retry_exhausted":
        why = str(event.get("why"))
        stats.exhausted[why] += 1
        if why == "max_attempts":
            stats.exhausted_by_kind[error_kind] += 1
        stats.exhausted_attempts.append(_attempt(event))
        stats.exhausted_ids.append(event_id)
        if isinstance(call_id, str):
            stats.failed_calls.add(call_id)
    elif kind == "retry_budget_exhausted":
        stats.budget_exhausted += 1
        upstream.budget_exhausted += 1
        failure = event.get("failure")
        if call_id is not None:
            stats.budget_failures[call_id] = str(failure) if isinstance(failure, str) else error_kind
    elif kind == "timeout":
        stats.timeouts += 1
        stats.timeout_ids.append(event_id)
    elif kind == "timeout_observed":
        observed = event.get("observed_ms")
        if isinstance(observed, int | float):
            stats.observed_ms.append(float(observed))
            stats.observed_ids.append(event_id)
        else:
            stats.unobserved += 1
    elif kind == "fallback_served":
        if event.get("status") == "stale":
            stats.stale_ts.append(ts)
            stats.stale_ids.append(event_id)
            stats.stale_max_age = max(stats.stale_max_age, _num(event.get("age")))
        else:
            stats.fallback_hit += 1


def _openings(breaker: BreakerStats, failures: list[tuple[float, Target, str]]) -> list[Opening]:
    """Each opening of `breaker` with its run-up failures: those of its scope (its upstream's server-side
    failures; for a per-tool breaker ``upstream/tool``, that tool's, application errors included) after the
    breaker's previous transition and at most `RUN_UP_S` before the opening."""
    transitions = sorted(breaker.transitions, key=lambda t: (t.ts, t.id))
    scope = breaker.tool
    kinds = SERVER_SIDE if scope is None else TOOL_BREAKER_KINDS
    mine = [
        (ts, target, kind) for ts, target, kind in failures
        if target.upstream == breaker.upstream and kind in kinds and (scope is None or scope in (target.tool, target.method))
    ]  # fmt: skip
    times = [ts for ts, _, _ in mine]  # in time order: events are added sorted by ts
    openings = []
    for index, transition in enumerate(transitions):
        if transition.new != "open":
            continue
        since = max(transition.ts - RUN_UP_S, transitions[index - 1].ts if index else float("-inf"))
        until = next((t.ts for t in transitions[index + 1 :] if t.new in ("closed", "open")), float("inf"))
        opening = Opening(breaker.upstream, breaker.name, transition.id, transition.ts, until, transition.last_failure_kind)
        for _, target, kind in mine[bisect.bisect_right(times, since) : bisect.bisect_right(times, transition.ts)]:
            opening.causes[(target, kind)] += 1
        openings.append(opening)
    return openings


def _in_force(breaker: BreakerStats, ts: float) -> Opening | None:
    """The opening of `breaker` whose refusals include one at `ts`, if any: the latest opening at or
    before `ts` (openings are in time order and never overlap), if it had not ended by then."""
    index = bisect.bisect_right(breaker.opening_times, ts) - 1
    opening = breaker.openings[index] if index >= 0 else None
    return opening if opening is not None and ts < opening.until else None


SLICES = 30
"""Time slices per window (`Window`): the window slides, and its old end is cut, a slice at a time."""
REORDER_S = 1.0
"""How long (event time) a `Window` holds an event back before folding it, so that events arriving out of
`ts` order by up to this much are folded in order, exactly as `Analysis.from_events` sorts them."""


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a fold or a merge.

    A fold allocates one small object per failure and keeps them all: the collector would rescan the
    growing heap again and again (measured: more than half the time of 1.5 M events). Nothing here makes
    cycles, and the work never yields to the event loop, so it runs with the collector paused.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _fold(analysis: Analysis, event: Event) -> None:
    """Add one schema-v1 event; a malformed one is counted as skipped, never sinks the analysis."""
    try:
        analysis._add(event)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        analysis.skipped += 1
        log.info("analyzer skipped a malformed %s event %s: %r", event.get("type"), event.get("id"), exc)


class Window:
    """The live analyzer's memory: the last `window_s` seconds of events (by event ts), kept as aggregates.

    The window is cut into `slices` time slices of ``window_s / slices`` seconds (slice ``i`` holds the
    events with ``floor(ts / slice_s) == i``). Each event is folded once, into its slice's partial
    `Analysis`, and dropped; `analysis()` merges the slices (`Analysis.merge`) and attributes the breaker
    openings once, on the merged result. Memory is the slices' aggregates, not the events: per target and
    breaker counters, plus the per-failure lists the rules read (`Analysis.attempt_failures`,
    `TargetStats.failed` and the id lists), which grow with the failures in the window.

    The window is slice-granular: it holds the slice of the latest event and the `slices` slices before
    it, so it reaches back between `window_s` and ``window_s + slice_s`` seconds; older slices are dropped
    as it slides, and an event older than the oldest slice is ignored (counted in `ignored`). Its analysis
    equals ``Analysis.from_events`` of the same events (those `covers` says are in the window, without a
    further cut), field by field, when the events arrive at most `reorder_s` out of ts order: events are
    held back that long and folded in (ts, id) order. An event later than that is folded when it comes
    (counted in `late`): its counts are exact, only its place in the per-failure lists may differ.
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, slices: int = SLICES, reorder_s: float = REORDER_S) -> None:
        if window_s <= 0 or slices < 1:
            raise ValueError("a window needs a positive length and at least one slice")
        self.window_s = window_s
        self.slices = slices
        self.slice_s = window_s / slices
        self.reorder_s = reorder_s
        self.late = 0
        """Events folded after events later than them (out of ts order by more than `reorder_s`)."""
        self.ignored = 0
        """Events older than the window when they came."""
        self._parts: dict[int, Analysis] = {}
        self._sizes: dict[int, int] = {}
        self._pending: list[tuple[float, float, int, Event]] = []
        self._arrivals = 0
        self._folded_to = (float("-inf"), float("-inf"))
        self._latest = float("-inf")
        self._first: int | float = float("-inf")

    def slice_of(self, ts: float) -> int:
        return math.floor(ts / self.slice_s)

    @property
    def start(self) -> float | None:
        """The start of the oldest slice the window holds (None while empty)."""
        return None if self._latest == float("-inf") else self._first * self.slice_s

    def covers(self, ts: float) -> bool:
        """Whether an event at `ts` is inside the window as it stands."""
        return self.slice_of(ts) >= self._first

    def add(self, event: Event) -> None:
        ts = event.get("ts") if isinstance(event, dict) else None
        if not isinstance(ts, int | float):
            return
        ts = float(ts)
        if ts > self._latest:
            self._latest = ts
            self._slide()
        index = self.slice_of(ts)
        if index < self._first:
            self.ignored += 1
            return
        self._sizes[index] = self._sizes.get(index, 0) + 1
        version = event.get("v")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            self._part(index).skipped += 1
            return
        order = (ts, _num(event.get("id")))
        if order < self._folded_to:
            self.late += 1
            with _collector_paused():
                _fold(self._part(index), event)
            return
        self._arrivals += 1
        heapq.heappush(self._pending, (*order, self._arrivals, event))
        if self._pending[0][0] < self._latest - self.reorder_s:
            self._settle(self._latest - self.reorder_s)

    def __len__(self) -> int:
        """Events in the window (every event with a ts in it, skipped ones included)."""
        return sum(self._sizes.values())

    def analysis(self) -> Analysis:
        """The window's analysis: its slices merged, and the events still held back folded on a copy."""
        with _collector_paused():
            tail = Analysis()
            for _, _, _, event in sorted(self._pending):
                if self.covers(float(event["ts"])):
                    _fold(tail, event)
        parts = [self._parts[index] for index in sorted(self._parts)]
        return Analysis.merged([*parts, tail], window_s=self.window_s)

    def _part(self, index: int) -> Analysis:
        part = self._parts.get(index)
        if part is None:
            part = self._parts[index] = Analysis()
        return part

    def _slide(self) -> None:
        first = self.slice_of(self._latest) - self.slices
        if first <= self._first:
            return
        self._first = first
        for index in [i for i in self._sizes if i < first]:
            del self._sizes[index]
            self._parts.pop(index, None)

    def _settle(self, until: float) -> None:
        """Fold, in (ts, id) order, the held-back events older than `until`."""
        with _collector_paused():
            while self._pending and self._pending[0][0] < until:
                ts, number, _, event = heapq.heappop(self._pending)
                self._folded_to = (ts, number)
                index = self.slice_of(ts)
                if index >= self._first:
                    _fold(self._part(index), event)


def read_events(path: str | Path) -> Iterator[Event]:
    """Events from a JSON-lines file (the proxy's `events.file`); lines that are not JSON objects are skipped."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                log.warning("%s:%d: not JSON, skipped", path, number)
                continue
            if isinstance(event, dict):
                yield event
