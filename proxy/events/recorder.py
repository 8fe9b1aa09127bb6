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
- **size**: every string field (the error message, `last_failure`, `cause`, names) is cut at
  `MAX_FIELD_CHARS` with a ``…[N more characters]`` marker, lists at `MAX_LIST_ITEMS`, and `params`
  (with `include_params`) are replaced by ``{"_omitted": ...}`` beyond `MAX_PARAMS_BYTES`: no event
  exceeds `MAX_EVENT_BYTES`. The signature is taken over the cut message.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import heapq
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import structlog

from proxy.ops.logs import redact
from proxy.policies.base import Call, Observer
from proxy.mcp.tool_catalog import MCP_METHODS, ToolCatalog, listed

__all__ = [
    "EVENT_TYPES",
    "LATENCY_BUCKETS_MS",
    "MAX_EVENT_BYTES",
    "MAX_FIELD_CHARS",
    "MAX_LIST_ITEMS",
    "MAX_PARAMS_BYTES",
    "MAX_SUMMARIES",
    "MAX_UNLISTED_EVENTS",
    "OVERFLOW",
    "SCHEMA_VERSION",
    "EventBus",
    "EventRecorder",
    "FanOut",
    "Subscription",
    "make_event",
    "signature",
]

_log = structlog.get_logger("proxy.events.recorder")

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

MAX_FIELD_CHARS: Final = 1000
"""Longest string kept in an event field (error messages, `last_failure`, names); the rest is cut with a marker."""
MAX_LIST_ITEMS: Final = 10
"""Most items kept of a list field (a rejected config's errors); a last item says how many were left out."""
MAX_PARAMS_BYTES: Final = 4096
"""Largest `params` (serialized) an event carries with `include_params`; bigger ones are omitted (the hash stays)."""
MAX_EVENT_BYTES: Final = 64 * 1024
"""What the bounds above hold any event to, serialized, even when every character kept is one JSON
escapes in six bytes (checked by the tests, not at run time: it follows from the bounds above)."""
MAX_UNLISTED_EVENTS: Final = 1000
"""Events kept about names the upstream does not have, apart from the main ring."""
MAX_SUMMARIES: Final = 1000
"""Distinct (upstream, method, tool) summaries per window; later keys fold into the overflow summary."""
OVERFLOW: Final = "_other"
"""The name summaries of unlisted (or too many) names fold into; the same as metrics' overflow label."""

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


def _cut(text: str) -> str:
    """`text` no longer than `MAX_FIELD_CHARS`, with a marker saying how much was cut."""
    if len(text) <= MAX_FIELD_CHARS:
        return text
    return f"{text[:MAX_FIELD_CHARS]}…[{len(text) - MAX_FIELD_CHARS} more characters]"


def _bounded(value: Any) -> Any:
    """A per-type field bounded: strings cut, lists of strings shortened (one level: the proxy's own
    fields are flat; its lists of numbers, the latency histogram, have a fixed length)."""
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, list | tuple) and any(isinstance(v, str) for v in value):
        items = [_cut(v) if isinstance(v, str) else v for v in value[:MAX_LIST_ITEMS]]
        if len(value) > MAX_LIST_ITEMS:
            items.append(f"…[{len(value) - MAX_LIST_ITEMS} more]")
        return items
    return value


def _params(call: Call, include: bool) -> dict[str, Any]:
    if not include:
        return {"params_hash": hashlib.blake2b(call.message.canonical_arguments(), digest_size=8).hexdigest()}
    arguments = call.message.arguments
    try:
        size = len(orjson.dumps(arguments))
    except (orjson.JSONEncodeError, RecursionError):  # too deep, an integer beyond 64 bits
        return {"params": {"_omitted": "params orjson cannot write (too deep, or a number too big)"}}
    if size > MAX_PARAMS_BYTES:
        return {"params": {"_omitted": f"params of {size} bytes (over {MAX_PARAMS_BYTES})"}}
    try:
        return {"params": redact(arguments)}
    except RecursionError:
        return {"params": {"_omitted": "params too deep to redact"}}


def make_event(
    type: str,
    call: Call | None = None,
    *,
    error: dict[str, Any] | None = None,
    latency_ms: float | None = None,
    include_params: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """An event dict (without `id` and `ts`, which the bus assigns). `fields` are the per-type fields.

    Bounded whatever its inputs (`MAX_EVENT_BYTES`): strings are cut, lists shortened, params omitted."""
    upstream = fields.pop("upstream", None) if call is None else call.upstream
    event: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "type": type,
        "upstream": upstream if upstream is None else _cut(str(upstream)),
        "method": None if call is None else _cut(call.method),
        "tool": None if call is None or call.tool is None else _cut(call.tool),
        "call_id": None if call is None else call.call_id,
        "attempt": None if call is None else call.attempt,
        "latency_ms": None if latency_ms is None else round(latency_ms, 3),
        "policy": None if call is None else call.policy.rule,
        "error": error,
        "signature": None,
    }
    if error is not None:
        error = {key: _cut(value) if isinstance(value, str) else value for key, value in error.items()}
        event["error"] = error
        event["signature"] = signature(
            event["upstream"], event["method"], event["tool"], str(error.get("kind", "")), str(error.get("message", ""))
        )
    if call is not None:
        fields["idempotent"] = call.idempotent
        fields.update(_params(call, include_params))
    for name, value in fields.items():
        event[name if name not in _ENVELOPE else f"x_{name}"] = _bounded(value)
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
    """The in-process event stream: a ring of recent events (and one for events about names the upstream
    does not have) plus bounded per-subscriber queues."""

    def __init__(
        self,
        capacity: int = 10_000,
        subscriber_queue: int = 1000,
        wall: Callable[[], float] = time.time,
        unlisted_capacity: int = MAX_UNLISTED_EVENTS,
    ) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._unlisted: deque[dict[str, Any]] = deque(maxlen=unlisted_capacity)
        self._subscribers: set[Subscription] = set()
        self._subscriber_queue = subscriber_queue
        self._wall = wall
        self._next_id = 1
        self.published = 0
        self.dropped = 0
        """Events subscribers lost because they fell behind."""
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """Synchronous sinks (the structlog line, the JSONL file): called for every event, must be cheap."""

    def publish(self, event: dict[str, Any], unlisted: bool = False) -> dict[str, Any]:
        """Stamp `event` with its id and time, keep it (in the unlisted ring when it is about a name the
        upstream does not have), and hand it to every subscriber and listener."""
        event["id"] = self._next_id
        event["ts"] = round(self._wall(), 6)
        self._next_id += 1
        self.published += 1
        (self._unlisted if unlisted else self._ring).append(event)
        for subscriber in self._subscribers:
            subscriber.offer(event)
        for listener in self.listeners:
            _safely(listener, event)
        return event

    def recent(self, since: int = 0) -> list[dict[str, Any]]:
        """Events kept (in both rings) with an id above `since`, in id order."""
        if not self._unlisted:
            return [event for event in self._ring if event["id"] > since]
        both = heapq.merge(self._ring, self._unlisted, key=_event_id)
        return [event for event in both if event["id"] > since]

    def subscribe(self, since: int | None = None) -> Subscription:
        """A subscription starting after event `since` (None: only new events)."""
        backlog = self.recent(since) if since is not None else []
        subscription = Subscription(self, backlog, self._subscriber_queue)
        self._subscribers.add(subscription)
        return subscription

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "buffered": len(self._ring) + len(self._unlisted),
            "buffered_unlisted": len(self._unlisted),
            "subscribers": len(self._subscribers),
            "dropped": self.dropped,
        }


def _event_id(event: dict[str, Any]) -> int:
    return int(event["id"])


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
    bounded = {key: _bounded(value) for key, value in line.items()}  # as an event's fields are
    getattr(_log, _LOGGED_WITHOUT_EVENTS[kind])(kind, **bounded)


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
        unlisted = self._unlisted(call, fields)
        if kind in _CALL_KINDS and call is not None:
            event = make_event(kind, call, error=error, latency_ms=latency, include_params=self.include_params, **fields)
        else:
            event = make_event(kind, call, error=error, latency_ms=latency, **fields)
        self.bus.publish(event, unlisted)

    def _unlisted(self, call: Call | None, fields: dict[str, Any]) -> bool:
        """True when the event is about a name its upstream's listing says it does not have."""
        if call is not None:
            return listed(self.catalogs.get(call.upstream), call.method, call.tool) is False
        upstream, breaker = fields.get("upstream"), fields.get("breaker")
        if not isinstance(upstream, str) or not isinstance(breaker, str) or breaker == upstream:
            return False
        name = breaker.removeprefix(f"{upstream}/")  # a per-tool breaker: named by its tool, or method
        catalog = self.catalogs.get(upstream)
        return catalog is not None and catalog.known and name not in MCP_METHODS and not catalog.has(name)

    def call_failed(self, call: Call, error: dict[str, Any], latency_ms: float, **fields: Any) -> None:
        """The final failure a client heard (after every retry and fallback)."""
        if not (self.enabled and self.logged):
            _log_plainly("call_failed", call, {"error": error, "latency_ms": latency_ms, **fields})
        if not self.enabled:
            return
        event = self.bus.publish(
            make_event("call_failed", call, error=error, latency_ms=latency_ms, include_params=self.include_params, **fields),
            self._unlisted(call, fields),
        )
        for listener in self.failure_listeners:
            _safely(listener, call, event)

    def call_finished(self, call: Call, outcome: str, latency_ms: float) -> None:
        """Count a finished call into the current window's summary (cheap: no event per call)."""
        if not self.enabled:
            return
        key = self._summary_key(call)
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

    def flush_summaries(self) -> int:
        """Publish one `call_ok` event per (upstream, method, tool) seen since the last flush (names
        folded as `_summary_key` says)."""
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
