"""The recorder: policy reports and finished calls become events on the bus (schema v1).

`EventRecorder` is the `Observer` the policy stages report to, and turns their reports into events
(`proxy.events.build` makes each record: envelope, bounds, signature); it also aggregates every
finished call into periodic `call_ok` summaries (counts, outcomes, attempts, a latency histogram and
a timeline of the successes per upstream/method/tool), so the analyzer sees successes, not only
failures. The bus is `proxy.events.bus`'s; the names those modules export are re-exported here, where
callers found them first.

Names come from clients, sizes from clients and upstreams; neither can crowd out or blow up evidence:

- **lanes**: an event about a name the upstream's catalog (`proxy.mcp.tool_catalog`) says it does not
  have (a tool it did not list, a method the MCP specification does not define) goes to a ring of its
  own, `MAX_UNLISTED_EVENTS` long; everything else (listed tools, MCP methods, the proxy's own events,
  and any tool before the upstream's first listing, when nothing can be told apart) shares the main
  ring of `buffer` events. So a flood of invented names pushes out only its own kind; `recent()` reads
  both in id order. A per-signature cap was the alternative: it does not hold, as every invented name
  makes a signature of its own.
- **summaries**: names not listed fold into one summary per upstream under `OVERFLOW` (``_other``:
  the tool for tools/call, else the method), and a window holds at most `MAX_SUMMARIES` distinct
  (upstream, method, tool) keys; later ones fold into (`OVERFLOW`, `OVERFLOW`) of their upstream.
- **size**: see `proxy.events.build`.

**Timelines.** Each summary counts its successes per slot of the window as well (`ok_timeline`): a
slot is `timeline_slot` of the configured `events.summary_interval` (1 s, or a 60th of a window longer
than a minute, or the whole of one shorter than a second), so a timeline has at most `TIMELINE_SLOTS` slots. A whole window is as long as its
interval: the analyzer can then tell the seconds an upstream was answering 429 from the seconds
before, and estimate the rate it accepted while it was limiting, which a whole window's count mixes
with the traffic from before the limiting began. Each success costs a clock read, a subtraction, a
division and an index increment; a window that runs over its interval (the timer fired late) counts
its last moments in its last slot, and a shorter one (the last, at shutdown) has fewer slots.

**Params of the successes.** A summary names the distinct params hashes of its successful idempotent calls
(`ok_params`, the same `params_hash` their call events carry), so the analyzer can tell failures whose
params had succeeded before (a cache would have held an answer for them) from failures of params that
never did (no cache would have helped). At most `MAX_OK_PARAMS` per summary; the successes of further
params are counted in `ok_params_overflow`. Each successful idempotent call costs one hash of its
canonical arguments and a dict lookup; other calls, nothing.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from proxy.events.build import MalformedEvent, Subject, _bounded, _cut, _split, build, checked_record, make_event, params_hash, signature
from proxy.events.bus import MAX_UNLISTED_EVENTS, EventBus, Subscription, _safely
from proxy.events.envelope import (
    ABSENT,
    LATENCY_BUCKETS_MS,
    MAX_EVENT_BYTES,
    MAX_FIELD_CHARS,
    MAX_LIST_ITEMS,
    MAX_OK_PARAMS,
    MAX_PARAMS_BYTES,
    OVERFLOW,
    SCHEMA_VERSION,
    TIMELINE_SLOTS,
)
from proxy.config.operations import EventsConfig
from proxy.events.types import EVENT_TYPES, KINDS, CallOk
from proxy.policies.base import Attempt, Call, Observer
from proxy.mcp.tool_catalog import MCP_METHODS, ToolCatalog, listed

__all__ = [
    "EVENT_TYPES",
    "LATENCY_BUCKETS_MS",
    "MAX_EVENT_BYTES",
    "MAX_FIELD_CHARS",
    "MAX_LIST_ITEMS",
    "MAX_OK_PARAMS",
    "MAX_PARAMS_BYTES",
    "MAX_SUMMARIES",
    "MAX_UNLISTED_EVENTS",
    "OVERFLOW",
    "SCHEMA_VERSION",
    "TIMELINE_SLOTS",
    "EventBus",
    "EventRecorder",
    "FanOut",
    "Subscription",
    "make_event",
    "signature",
    "timeline_slot",
]

_log = structlog.get_logger("proxy.events.recorder")

MAX_SUMMARIES: Final = 1000
"""Distinct (upstream, method, tool) summaries per window; later keys fold into the overflow summary."""

_DEFAULT_INTERVAL: Final[float] = EventsConfig.model_fields["summary_interval"].default


def timeline_slot(interval: float) -> float:
    """How long one slot of `ok_timeline` is (s) for summaries every `interval` seconds: 1 s, or longer so
    that a window has at most `TIMELINE_SLOTS` slots, and never longer than the window itself (summaries
    every 200 ms have one slot of 200 ms, not a second that a rate would be divided by)."""
    return min(interval, max(1.0, interval / TIMELINE_SLOTS))


def _slots(window_s: float, slot: float) -> int:
    """Slots that cover `window_s` (at least one); a float's last bit never adds an empty slot."""
    return max(1, math.ceil(window_s / slot - 1e-9))


@dataclass
class _Summary:
    """One (upstream, method, tool)'s finished calls within the current summary window."""

    ok_timeline: list[int]
    """Successes per slot of the window (`EventRecorder.call_finished`)."""
    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    ok_by_attempt: dict[int, int] = field(default_factory=dict)
    histogram: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0
    ok_params: dict[str, None] | None = None
    """The params hashes of the idempotent calls that succeeded, in first-success order (a dict: ordered,
    deduplicated), at most `MAX_OK_PARAMS`; None until one did."""
    ok_params_overflow: int = 0


_LOGGED_WITHOUT_EVENTS: Final = {"retry": "info", "retry_exhausted": "info", "retry_budget_exhausted": "warning", "breaker_state": "warning", "call_failed": "warning"}
"""Moments that must reach the log even when events do not (off, or not written as log lines), and at what level."""


def _log_plainly(kind: str, about: Subject, fields: dict[str, Any]) -> None:
    """One structlog line for `kind`: what the event would have said, with the error as its message only."""
    call, attempt = _split(about)
    line = {} if call is None else {"upstream": call.upstream, "method": call.method, "tool": call.tool, "attempt": attempt}
    line.update(fields)
    error = line.get("error")
    if isinstance(error, dict):
        line["error"] = error.get("message")
    bounded = {key: _bounded(value) for key, value in line.items()}  # as an event's fields are
    getattr(_log, _LOGGED_WITHOUT_EVENTS[kind])(kind, **bounded)


MAX_MALFORMED_REPORTS: Final = 64
"""Distinct malformed emissions (kind and problem) logged; later ones are counted only."""


class EventRecorder:
    """The `Observer` that turns policy reports and finished calls into events of the types in
    `proxy.events.types`, published on the bus as their records (``policy_event(kind, about, **fields)``
    names the kind, what it is about, a try, a call or nothing (`proxy.events.build.Subject`), and
    passes its fields)."""

    strict = False
    """True (tests set it): each record is its typed event's (`proxy.events.build.build`), and an emission
    that does not fit its kind raises `MalformedEvent`. False (serving): each record is checked against
    its type and written directly (`checked_record`); a malformed emission is logged once per kind and
    problem (``event_malformed``, an error), counted in `malformed`, and published as `make_event` makes
    it, untyped: a bug in a report never fails the call it reports on, nor loses its evidence."""

    def __init__(
        self,
        bus: EventBus,
        include_params: bool = False,
        enabled: bool = True,
        logged: bool = True,
        *,
        summary_interval: float = _DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.include_params = include_params
        self.enabled = enabled
        self.logged = logged
        """True when a bus listener writes each event as a log line (the handler then logs nothing itself)."""
        self.failure_listeners: list[Callable[[Call, dict[str, Any]], None]] = []
        """Called with each failed call and its `call_failed` event (regression fixtures)."""
        self._summaries: dict[tuple[str, str, str | None], _Summary] = {}
        self.catalogs: dict[str, ToolCatalog] = {}
        """Each upstream's tool catalog (set by `proxy.runtime.build_runtime`): what counts as a real name."""
        self.summary_interval = summary_interval
        """`events.summary_interval`: how long a summary window is meant to be, which sets the length of its
        timeline's slots; read when a window starts (the owner sets it anew on reload)."""
        self._clock = clock
        """Unix time (`time.time`; tests pass a fake): the windows' ends and the successes' slots."""
        self._window_started = 0.0
        self._slot = 1.0
        self._timeline_slots = 1
        self._start_window(clock())
        self.malformed = 0
        """Emissions that did not fit their kind (published untyped)."""
        self._reported: set[tuple[str, str]] = set()

    def policy_event(self, kind: str, about: Call | Attempt | None, **fields: Any) -> None:
        if not (self.enabled and self.logged) and kind in _LOGGED_WITHOUT_EVENTS:
            _log_plainly(kind, about, fields)
        if not self.enabled:
            return
        self.bus.publish(self._record(kind, about, fields), self._unlisted(about, fields))

    def _record(self, kind: str, about: Subject, fields: dict[str, Any]) -> dict[str, Any]:
        """The record of one emission: its typed event's, or (a malformed emission, when serving) the untyped one."""
        try:
            if self.strict:  # tests: every record is the typed event's own
                return build(kind, about, fields, self.include_params).as_record()
            return checked_record(kind, about, fields, self.include_params)
        except MalformedEvent as exc:
            if self.strict:
                raise
            self._malformed(kind, str(exc))
        cls = KINDS.get(kind)
        include = self.include_params and about is not None and cls is not None and cls.WITH_PARAMS
        return make_event(kind, about, include_params=include, **fields)

    def _malformed(self, kind: str, problem: str) -> None:
        self.malformed += 1
        key = (kind, problem)
        if key not in self._reported and len(self._reported) < MAX_MALFORMED_REPORTS:
            self._reported.add(key)
            _log.error("event_malformed", kind=_cut(kind), problem=_cut(problem))

    def _unlisted(self, about: Subject, fields: dict[str, Any]) -> bool:
        """True when the event is about a name its upstream's listing says it does not have."""
        call = about.call if isinstance(about, Attempt) else about
        if call is not None:
            return listed(self.catalogs.get(call.upstream), call.method, call.tool) is False
        upstream, breaker = fields.get("upstream"), fields.get("breaker")
        if not isinstance(upstream, str) or not isinstance(breaker, str) or breaker == upstream:
            return False
        name = breaker.removeprefix(f"{upstream}/")  # a per-tool breaker: named by its tool, or method
        catalog = self.catalogs.get(upstream)
        return catalog is not None and catalog.known and name not in MCP_METHODS and not catalog.has(name)

    def call_failed(self, about: Call | Attempt, error: dict[str, Any], latency_ms: float, **fields: Any) -> None:
        """The final failure a client heard (after every retry and fallback); `about` is the call's last
        try (`proxy.policies.base.last_attempt`), or the call when it made none of its own but its first."""
        if not (self.enabled and self.logged):
            _log_plainly("call_failed", about, {"error": error, "latency_ms": latency_ms, **fields})
        if not self.enabled:
            return
        record = self._record("call_failed", about, {"error": error, "latency_ms": latency_ms, **fields})
        event = self.bus.publish(record, self._unlisted(about, fields))
        call = about.call if isinstance(about, Attempt) else about
        for listener in self.failure_listeners:
            _safely(listener, call, event)

    def call_finished(self, about: Call | Attempt, outcome: str, latency_ms: float) -> None:
        """Count a finished call into the current window's summary (cheap: no event per call); `about` is
        the try that answered (`Reply.attempt`), or the call when that was its first."""
        if not self.enabled:
            return
        if isinstance(about, Attempt):
            call, attempt = about.call, about.number
        else:
            call, attempt = about, 1
        key = self._summary_key(call)
        summary = self._summaries.get(key)
        if summary is None:
            summary = self._summaries[key] = _Summary([0] * self._timeline_slots)
        summary.calls += 1
        summary.outcomes[outcome] = summary.outcomes.get(outcome, 0) + 1
        if outcome == "ok":
            summary.ok_by_attempt[attempt] = summary.ok_by_attempt.get(attempt, 0) + 1
            summary.histogram[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
            summary.latency_sum_ms += latency_ms
            summary.latency_max_ms = max(summary.latency_max_ms, latency_ms)
            slot = int((self._clock() - self._window_started) / self._slot)
            if 0 <= slot < self._timeline_slots:
                summary.ok_timeline[slot] += 1
            else:  # past the window's interval (a late flush), or a clock set back: the nearest slot
                summary.ok_timeline[0 if slot < 0 else -1] += 1
            if call.idempotent:  # only these may be answered from a cache: the analyzer matches their params
                self._ok_params(summary, params_hash(call))

    @staticmethod
    def _ok_params(summary: _Summary, hashed: str) -> None:
        """Name `hashed` among the summary's successful params, or count it past `MAX_OK_PARAMS`."""
        seen = summary.ok_params
        if seen is None:
            seen = summary.ok_params = {}
        if hashed in seen:
            return
        if len(seen) < MAX_OK_PARAMS:
            seen[hashed] = None
        else:
            summary.ok_params_overflow += 1

    def _summary_key(self, call: Call) -> tuple[str, str, str | None]:
        """(upstream, method, tool), with names the upstream does not have, and keys past
        `MAX_SUMMARIES` in this window, folded into `OVERFLOW`."""
        upstream, method, tool = call.upstream, call.method, call.tool
        if listed(self.catalogs.get(upstream), method, tool) is False:
            if method in MCP_METHODS:
                tool = OVERFLOW  # a tools/call of a tool not listed
            else:
                method, tool = OVERFLOW, None
        key = (upstream, method, tool)
        if key not in self._summaries and len(self._summaries) >= MAX_SUMMARIES:
            return (upstream, OVERFLOW, OVERFLOW)
        return key

    def _start_window(self, now: float) -> None:
        """A summary window starts at `now`: its timeline's slots are set by the interval in force."""
        self._window_started = now
        self._slot = timeline_slot(self.summary_interval)
        self._timeline_slots = _slots(self.summary_interval, self._slot)

    def flush_summaries(self) -> int:
        """Publish one `call_ok` event per (upstream, method, tool) seen since the last flush (names
        folded as `_summary_key` says), and start the next window."""
        now = self._clock()
        summaries, self._summaries = self._summaries, {}
        started, slot, slots = self._window_started, self._slot, self._timeline_slots
        self._start_window(now)
        window_s = round(now - started, 3)
        kept = min(slots, _slots(window_s, slot))  # a window cut short (at shutdown) has fewer slots
        for (upstream, method, tool), summary in summaries.items():
            ok = summary.outcomes.get("ok", 0)
            timeline = summary.ok_timeline
            if kept < slots:
                timeline = timeline[:kept]
                timeline[-1] += sum(summary.ok_timeline[kept:])  # a success at its very end, or a clock set back
            event = CallOk(
                upstream=_cut(upstream),
                method=method,
                tool=tool,
                window_s=window_s,
                window_end=round(now, 6),
                calls=summary.calls,
                ok=ok,
                outcomes=summary.outcomes,
                ok_by_attempt={str(k): v for k, v in sorted(summary.ok_by_attempt.items())},
                latency_buckets_ms=list(LATENCY_BUCKETS_MS),
                latency_histogram=summary.histogram,
                latency_mean_ms=round(summary.latency_sum_ms / ok, 3) if ok else None,
                latency_max_ms=round(summary.latency_max_ms, 3) if ok else None,
                ok_timeline=timeline,
                timeline_slot_s=slot,
                ok_params=ABSENT if summary.ok_params is None else list(summary.ok_params),
                ok_params_overflow=ABSENT if summary.ok_params is None else summary.ok_params_overflow,
            )
            self.bus.publish(event.as_record())
        return len(summaries)


class FanOut:
    """Several observers behind one (metrics and events both hear every policy report)."""

    __slots__ = ("_observers",)

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers

    def policy_event(self, kind: str, about: Call | Attempt | None, **fields: Any) -> None:
        for observer in self._observers:
            observer.policy_event(kind, about, **fields)
