"""Failure events: the contract between the proxy and the analyzer (schema v1).

Every failure-relevant moment becomes one JSON object with the same envelope::

    v, id, ts, type, upstream, method, tool, call_id, attempt, latency_ms, policy,
    error {kind, http_status, jsonrpc_code, message}, signature, ...per-type fields

`id` grows by one per event (the `/events` resume cursor); `ts` is Unix time in seconds; `policy`
names the rule whose policy applied (``default`` or ``rules[2] (tool=search)``); `call_id` ties the
events of one client call together; `signature` is a stable hash of upstream, method, tool, error
kind and the error message with numbers and ids normalized, so the same failure groups together.
No secrets and no raw params: a call's params appear as `params_hash` unless `events.include_params`
is on, and then with credential-like keys redacted.

The `EventBus` keeps the last `buffer` events in a ring and fans them out to subscribers through
bounded queues: a slow or absent consumer never blocks or slows the proxy; its oldest events are
dropped and counted. `EventRecorder` is the `Observer` the policy stages report to, and turns their
reports into events; it also aggregates every finished call into periodic `call_ok` summaries
(counts, outcomes, attempts and a latency histogram per upstream/method/tool), so the analyzer sees
successes, not only failures.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from proxy.logs import redact
from proxy.policies.base import Call, Observer
from proxy.tool_catalog import ToolCatalog

__all__ = [
    "EVENT_TYPES",
    "LATENCY_BUCKETS_MS",
    "SCHEMA_VERSION",
    "EventBus",
    "EventRecorder",
    "FanOut",
    "Subscription",
    "make_event",
    "signature",
]

_log = structlog.get_logger("proxy.events")

SCHEMA_VERSION: Final = 1
EVENT_TYPES: Final = (
    "call_failed",
    "call_ok",
    "retry",
    "retry_exhausted",
    "retry_budget_exhausted",
    "timeout",
    "timeout_observed",
    "breaker_state",
    "circuit_open",
    "rate_limited",
    "fallback_served",
    "health_changed",
    "session_lost",
    "config_reloaded",
    "config_rejected",
    "proposal_applied",
    "proposal_kept",
    "proposal_rolled_back",
)
LATENCY_BUCKETS_MS: Final = (
    1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500,
    10000, 15000, 20000, 30000, 60000, 120000,
)  # fmt: skip
"""Upper bounds of the call_ok latency histogram (ms); the last bucket is everything above."""

_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{8}-[0-9a-fA-F-]{27,}\b|\b[0-9a-fA-F]{16,}\b|\d+(\.\d+)?")
_ENVELOPE: Final = frozenset(
    {"v", "id", "ts", "type", "upstream", "method", "tool", "call_id", "attempt", "latency_ms", "policy", "error", "signature"}
)


@functools.lru_cache(maxsize=4096)
def signature(upstream: str | None, method: str | None, tool: str | None, kind: str, message: str) -> str:
    """A stable 12-hex-digit name for a kind of failure: numbers, hex ids and UUIDs are normalized away."""
    normalized = _NUMBERS.sub("#", message.strip().lower())
    raw = "\x1f".join((upstream or "", method or "", tool or "", kind, normalized))
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _params(call: Call, include: bool) -> dict[str, Any]:
    if include:
        return {"params": redact(call.message.arguments)}
    return {"params_hash": hashlib.blake2b(call.message.canonical_arguments(), digest_size=8).hexdigest()}


def make_event(
    type: str,
    call: Call | None = None,
    *,
    error: dict[str, Any] | None = None,
    latency_ms: float | None = None,
    include_params: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """An event dict (without `id` and `ts`, which the bus assigns). `fields` are the per-type fields."""
    event: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "type": type,
        "upstream": fields.pop("upstream", None) if call is None else call.upstream,
        "method": None if call is None else call.method,
        "tool": None if call is None else call.tool,
        "call_id": None if call is None else call.call_id,
        "attempt": None if call is None else call.attempt,
        "latency_ms": None if latency_ms is None else round(latency_ms, 3),
        "policy": None if call is None else call.policy.rule,
        "error": error,
        "signature": None,
    }
    if error is not None:
        event["signature"] = signature(
            event["upstream"], event["method"], event["tool"], str(error.get("kind", "")), str(error.get("message", ""))
        )
    if call is not None:
        fields["idempotent"] = call.idempotent
        fields.update(_params(call, include_params))
    for name, value in fields.items():
        event[name if name not in _ENVELOPE else f"x_{name}"] = value
    return event


def _safely(listener: Callable[..., None], *args: Any) -> None:
    """Run a sink; a sink that fails (a full disk, a bug) must never fail the call being reported."""
    try:
        listener(*args)
    except Exception as exc:
        _log.error("event_sink_failed", sink=getattr(listener, "__qualname__", repr(listener)), error=repr(exc))


class Subscription:
    """One consumer's view of the bus: the backlog since its cursor, then live events, bounded."""

    def __init__(self, bus: EventBus, backlog: list[dict[str, Any]], capacity: int) -> None:
        self._bus = bus
        self._queue: deque[dict[str, Any]] = deque(backlog[-capacity:], maxlen=capacity)
        self._ready = asyncio.Event()
        self.dropped = max(0, len(backlog) - capacity)
        if self._queue:
            self._ready.set()

    def offer(self, event: dict[str, Any]) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the oldest goes: a slow consumer never holds the proxy back
            self._bus.dropped += 1
        self._queue.append(event)
        self._ready.set()

    async def get(self) -> dict[str, Any]:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                yield await self.get()
        finally:
            self.close()


class EventBus:
    """The in-process event stream: a ring of recent events plus bounded per-subscriber queues."""

    def __init__(self, capacity: int = 10_000, subscriber_queue: int = 1000, wall: Callable[[], float] = time.time) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._subscribers: set[Subscription] = set()
        self._subscriber_queue = subscriber_queue
        self._wall = wall
        self._next_id = 1
        self.published = 0
        self.dropped = 0
        """Events subscribers lost because they fell behind."""
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """Synchronous sinks (the structlog line, the JSONL file): called for every event, must be cheap."""

    def publish(self, event: dict[str, Any]) -> dict[str, Any]:
        """Stamp `event` with its id and time, keep it, and hand it to every subscriber and listener."""
        event["id"] = self._next_id
        event["ts"] = round(self._wall(), 6)
        self._next_id += 1
        self.published += 1
        self._ring.append(event)
        for subscriber in self._subscribers:
            subscriber.offer(event)
        for listener in self.listeners:
            _safely(listener, event)
        return event

    def recent(self, since: int = 0) -> list[dict[str, Any]]:
        """Events in the ring with an id above `since`."""
        return [event for event in self._ring if event["id"] > since]

    def subscribe(self, since: int | None = None) -> Subscription:
        """A subscription starting after event `since` (None: only new events)."""
        backlog = self.recent(since) if since is not None else []
        subscription = Subscription(self, backlog, self._subscriber_queue)
        self._subscribers.add(subscription)
        return subscription

    def stats(self) -> dict[str, int]:
        return {"published": self.published, "buffered": len(self._ring), "subscribers": len(self._subscribers), "dropped": self.dropped}


@dataclass
class _Summary:
    """One (upstream, method, tool)'s finished calls within the current summary window."""

    calls: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    ok_by_attempt: dict[int, int] = field(default_factory=dict)
    histogram: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_sum_ms: float = 0.0
    latency_max_ms: float = 0.0


_LOGGED_WITHOUT_EVENTS: Final = {"retry": "info", "retry_exhausted": "info", "retry_budget_exhausted": "warning", "breaker_state": "warning", "call_failed": "warning"}
"""Moments that must reach the log even when events do not (off, or not written as log lines), and at what level."""


def _log_plainly(kind: str, call: Call | None, fields: dict[str, Any]) -> None:
    """One structlog line for `kind`: what the event would have said, with the error as its message only."""
    line = {} if call is None else {"upstream": call.upstream, "method": call.method, "tool": call.tool, "attempt": call.attempt}
    line.update(fields)
    error = line.get("error")
    if isinstance(error, dict):
        line["error"] = error.get("message")
    getattr(_log, _LOGGED_WITHOUT_EVENTS[kind])(kind, **line)


_CALL_KINDS: Final = {"retry", "retry_exhausted", "retry_budget_exhausted", "timeout", "timeout_observed", "rate_limited", "fallback_served"}


class EventRecorder:
    """The `Observer` that turns policy reports and finished calls into events on the bus."""

    def __init__(self, bus: EventBus, include_params: bool = False, enabled: bool = True, logged: bool = True) -> None:
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
        self._window_started = time.time()

    def policy_event(self, kind: str, call: Call | None, **fields: Any) -> None:
        if not (self.enabled and self.logged) and kind in _LOGGED_WITHOUT_EVENTS:
            _log_plainly(kind, call, fields)
        if not self.enabled:
            return
        error = fields.pop("error", None)
        latency = fields.pop("latency_ms", None)
        if kind in _CALL_KINDS and call is not None:
            self.bus.publish(make_event(kind, call, error=error, latency_ms=latency, include_params=self.include_params, **fields))
        else:
            self.bus.publish(make_event(kind, call, error=error, latency_ms=latency, **fields))

    def call_failed(self, call: Call, error: dict[str, Any], latency_ms: float, **fields: Any) -> None:
        """The final failure a client heard (after every retry and fallback)."""
        if not (self.enabled and self.logged):
            _log_plainly("call_failed", call, {"error": error, "latency_ms": latency_ms, **fields})
        if not self.enabled:
            return
        event = self.bus.publish(
            make_event("call_failed", call, error=error, latency_ms=latency_ms, include_params=self.include_params, **fields)
        )
        for listener in self.failure_listeners:
            _safely(listener, call, event)

    def call_finished(self, call: Call, outcome: str, latency_ms: float) -> None:
        """Count a finished call into the current window's summary (cheap: no event per call)."""
        if not self.enabled:
            return
        key = (call.upstream, call.method, call.tool)
        summary = self._summaries.get(key)
        if summary is None:
            summary = self._summaries[key] = _Summary()
        summary.calls += 1
        summary.outcomes[outcome] = summary.outcomes.get(outcome, 0) + 1
        if outcome == "ok":
            summary.ok_by_attempt[call.attempt] = summary.ok_by_attempt.get(call.attempt, 0) + 1
            summary.histogram[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
            summary.latency_sum_ms += latency_ms
            summary.latency_max_ms = max(summary.latency_max_ms, latency_ms)

    def flush_summaries(self) -> int:
        """Publish one `call_ok` event per (upstream, method, tool) seen since the last flush."""
        now = time.time()
        summaries, self._summaries = self._summaries, {}
        started, self._window_started = self._window_started, now
        for (upstream, method, tool), summary in summaries.items():
            ok = summary.outcomes.get("ok", 0)
            event = make_event(
                "call_ok",
                None,
                upstream=upstream,
                window_s=round(now - started, 3),
                window_end=round(now, 6),
                calls=summary.calls,
                ok=ok,
                outcomes=summary.outcomes,
                ok_by_attempt={str(k): v for k, v in sorted(summary.ok_by_attempt.items())},
                latency_buckets_ms=list(LATENCY_BUCKETS_MS),
                latency_histogram=summary.histogram,
                latency_mean_ms=round(summary.latency_sum_ms / ok, 3) if ok else None,
                latency_max_ms=round(summary.latency_max_ms, 3) if ok else None,
            )
            event["method"], event["tool"] = method, tool
            self.bus.publish(event)
        return len(summaries)


class FanOut:
    """Several observers behind one (metrics and events both hear every policy report)."""

    __slots__ = ("_observers",)

    def __init__(self, *observers: Observer) -> None:
        self._observers = observers

    def policy_event(self, kind: str, call: Call | None, **fields: Any) -> None:
        for observer in self._observers:
            observer.policy_event(kind, call, **fields)
