"""Whole recordings for what-if tests: each call's events as the proxy emits them, and the summaries that count it.

`tests.analyzer.builders.Stream` makes single events; `Recording` makes *calls*: every attempt's events
(``timeout``, ``timeout_observed``, ``retry``), the end (``retry_exhausted``, ``call_failed`` or
``fallback_served``) and the call counted into the current ``call_ok`` window by outcome and attempt,
as the recorder does, so a stream is consistent the way a real proxy's is.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tests.analyzer.builders import T0, Stream, hashed

REASONS = {"timeout": "upstream_timeout", "connect_error": "upstream_unavailable"}


@dataclass
class _Window:
    outcomes: Counter[str] = field(default_factory=Counter)
    ok_by_attempt: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    ok_at: list[float] = field(default_factory=list)
    ok_params: list[str] = field(default_factory=list)
    """The params of each idempotent success, in order (the recorder's `ok_params`, before deduplication)."""


class Recording:
    """Calls of one upstream; `flush(at)` publishes the summaries of the calls since the last flush."""

    def __init__(self, upstream: str = "api") -> None:
        self.stream = Stream(upstream)
        self._windows: dict[tuple[str, str | None], _Window] = defaultdict(_Window)
        self._started = 0.0

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.stream.events

    def ok(
        self, at: float, *, method: str = "tools/call", tool: str | None = "search", attempt: int = 1, latency_ms: float = 100.0,
        params: str = "p",
    ) -> None:
        """A call that succeeded without events (on attempt 1; a later attempt needs `call` with retries)."""
        window = self._windows[(method, tool)]
        window.ok_params.append(params)
        window.outcomes["ok"] += 1
        window.ok_by_attempt[attempt] += 1
        window.latencies.append(latency_ms)
        window.ok_at.append(at)

    def call(
        self, at: float, attempts: list[str], *, method: str = "tools/call", tool: str | None = "search",
        idempotent: bool = True, params: str = "p", observed: dict[int, float | None] | None = None,
        limit_ms: float = 200.0, stale_age: float | None = None, client: str = "client-a", why: str = "max_attempts",
        step: float = 0.01,
    ) -> None:
        """One call whose attempts ended as `attempts` (``ok`` last if it succeeded, failure kinds before);
        a failed call is answered stale when `stale_age` is given. Its events are `step` seconds apart."""
        s = self.stream
        call_id = s.call_id()
        kw: dict[str, Any] = {"method": method, "tool": tool, "idempotent": idempotent, "params": params, "call_id": call_id}
        observed = observed or {}
        t = at
        succeeded = attempts[-1] == "ok"
        for number, kind in enumerate(attempts, 1):
            if kind == "ok":
                break
            if kind == "circuit_open":
                s.circuit_open(t)
            if kind == "timeout":
                s.timeout(t, limit_ms, attempt=number, **kw)
                if idempotent:
                    s.timeout_observed(t + step / 2, limit_ms, observed.get(number), attempt=number, **kw)
            last = number == len(attempts)
            if not last:
                s.retry(t, kind, attempt=number, **kw)
            elif len(attempts) > 1 and kind not in ("circuit_open", "rate_limited"):
                s.retry_exhausted(t, kind, why=why, attempt=number, **kw)
            t += step
        window = self._windows[(method, tool)]
        if (succeeded or stale_age is not None) and idempotent:
            window.ok_params.append(params)
        if succeeded:
            window.outcomes["ok"] += 1
            window.ok_by_attempt[len(attempts)] += 1
            window.latencies.append(100.0)
            window.ok_at.append(at)
            return
        kind = attempts[-1]
        if kind == "rate_limited":
            s.rate_limited(t, **kw)
        if stale_age is not None:
            s.fallback_served(t, status="stale", age=stale_age, attempt=len(attempts), **kw)
            window.outcomes["ok"] += 1
            window.ok_by_attempt[len(attempts)] += 1
            window.latencies.append(1.0)
            window.ok_at.append(at)
            return
        reason = REASONS.get(kind, kind)
        event = s.call_failed(t, kind, attempt=len(attempts), client=client, **kw)
        event["reason"] = reason
        window.outcomes[reason] += 1

    def flush(self, at: float, slot_s: float | None = None, *, named: bool = False, bound: int = 256) -> None:
        """Publish this window's summaries at `at` (and start the next); with `slot_s`, an ``ok_timeline``;
        `named`: with ``ok_params`` (at most `bound`, the rest of the successes counted in the overflow),
        for summaries with an idempotent success, as the recorder writes them."""
        for (method, tool), window in sorted(self._windows.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            calls, ok = sum(window.outcomes.values()), window.outcomes["ok"]
            event = self.stream.call_ok(
                at, method=method, tool=tool, ok=ok, calls=calls, ok_by_attempt=dict(window.ok_by_attempt),
                latencies_ms=window.latencies, window_s=at - self._started, outcomes=dict(window.outcomes),
            )  # fmt: skip
            event["window_end"] = T0 + at
            if slot_s is not None:
                timeline = [0] * max(1, round((at - self._started) / slot_s))
                for ok_at in window.ok_at:
                    timeline[min(len(timeline) - 1, int((ok_at - self._started) // slot_s))] += 1
                event["ok_timeline"], event["timeline_slot_s"] = timeline, slot_s
            if named and window.ok_params:
                kept = list(dict.fromkeys(window.ok_params))[:bound]
                event["ok_params"] = [hashed(p) for p in kept]
                event["ok_params_overflow"] = sum(1 for p in window.ok_params if p not in kept)
        self._windows.clear()
        self._started = at
