"""Synthetic event streams for analyzer tests: one builder per event type, ids and times assigned in order.

Events are made with `proxy.events.recorder.make_event` (the envelope the proxy publishes), then given what the
bus and the call would add: `id`, `ts`, the call's method/tool/call_id/attempt and the signature.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from typing import Any

from proxy.events.recorder import LATENCY_BUCKETS_MS, make_event, signature

T0 = 1_700_000_000.0
"""Where every stream's clock starts (its `at` arguments are seconds after this)."""


def hashed(params: str) -> str:
    """The `params_hash` a call built with ``params=params`` carries (and a summary's `ok_params` names it by)."""
    return hashlib.sha256(params.encode()).hexdigest()[:16]


class Stream:
    """A list of events being built, with increasing ids; `at` is seconds after T0."""

    def __init__(self, upstream: str = "api", first_id: int = 1) -> None:
        self.upstream = upstream
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(first_id)
        self._calls = itertools.count(1)

    def call_id(self) -> str:
        return f"c{next(self._calls)}"

    def _publish(self, event: dict[str, Any], at: float) -> dict[str, Any]:
        event["id"] = next(self._ids)
        event["ts"] = T0 + at
        self.events.append(event)
        return event

    def _call(
        self, type: str, at: float, *, tool: str | None = "search", method: str = "tools/call", kind: str | None = None,
        message: str = "", attempt: int = 1, call_id: str | None = None, idempotent: bool | None = True,
        latency_ms: float | None = None, params: str = "p", upstream: str | None = None, **fields: Any,
    ) -> dict[str, Any]:
        upstream = upstream or self.upstream
        error = None if kind is None else {"kind": kind, "http_status": None, "jsonrpc_code": None, "message": message or kind}
        event = make_event(type, None, error=error, latency_ms=latency_ms, upstream=upstream, **fields)
        event.update(method=method, tool=tool if method == "tools/call" else None, call_id=call_id or self.call_id(),
                     attempt=attempt, policy="default", params_hash=hashed(params))  # fmt: skip
        if idempotent is not None:
            event["idempotent"] = idempotent
        if error is not None:
            event["signature"] = signature(upstream, method, event["tool"], kind or "", str(error["message"]))
        return self._publish(event, at)

    def call_failed(self, at: float, kind: str, **kw: Any) -> dict[str, Any]:
        return self._call("call_failed", at, kind=kind, reason=kind, http_status=502, **kw)

    def retry(self, at: float, kind: str, **kw: Any) -> dict[str, Any]:
        return self._call("retry", at, kind=kind, delay_ms=100.0, **kw)

    def retry_exhausted(self, at: float, kind: str, why: str = "max_attempts", **kw: Any) -> dict[str, Any]:
        return self._call("retry_exhausted", at, kind=kind, why=why, **kw)

    def retry_budget_exhausted(self, at: float, kind: str, **kw: Any) -> dict[str, Any]:
        return self._call("retry_budget_exhausted", at, kind=kind, **kw)

    def timeout(self, at: float, limit_ms: float, **kw: Any) -> dict[str, Any]:
        return self._call("timeout", at, kind="timeout", message="per-try timeout", limit_ms=limit_ms, observing=True, **kw)

    def timeout_observed(self, at: float, limit_ms: float, observed_ms: float | None, **kw: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {} if observed_ms is not None else {"waited_ms": 10_000.0}
        return self._call("timeout_observed", at, limit_ms=limit_ms, observed_ms=observed_ms, **extra, **kw)

    def rate_limited(self, at: float, **kw: Any) -> dict[str, Any]:
        return self._call("rate_limited", at, retry_after=0.5, **kw)

    def fallback_served(self, at: float, status: str = "stale", age: float = 40.0, **kw: Any) -> dict[str, Any]:
        return self._call("fallback_served", at, status=status, age=age, **kw)

    def call_ok(
        self, at: float, *, tool: str | None = "search", method: str = "tools/call", ok: int, calls: int | None = None,
        ok_by_attempt: dict[int, int] | None = None, latencies_ms: list[float] | None = None, window_s: float = 10.0,
        outcomes: dict[str, int] | None = None, upstream: str | None = None, ok_timeline: list[int] | None = None,
        timeline_slot_s: float | None = None, ok_params: list[str] | None = None, ok_params_overflow: int = 0,
    ) -> dict[str, Any]:
        """A summary; `latencies_ms` (default: `ok` calls of 100 ms) fill the histogram like the recorder does.
        Its window ends at `at` (`window_end`); `ok_timeline` gives successes per `timeline_slot_s` slot;
        `ok_params` names the params (as the calls' ``params=``) that succeeded, hashed as the proxy does."""
        latencies = latencies_ms if latencies_ms is not None else [100.0] * ok
        histogram = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        for latency in latencies:
            histogram[bisect.bisect_left(LATENCY_BUCKETS_MS, latency)] += 1
        calls = ok if calls is None else calls
        event = make_event(
            "call_ok", None, upstream=upstream or self.upstream, window_s=window_s, calls=calls, ok=ok,
            outcomes=outcomes or ({"ok": ok} | ({"http_5xx": calls - ok} if calls > ok else {})),
            ok_by_attempt={str(k): v for k, v in (ok_by_attempt or {1: ok}).items()},
            latency_buckets_ms=list(LATENCY_BUCKETS_MS), latency_histogram=histogram,
            latency_mean_ms=sum(latencies) / len(latencies) if latencies else None,
            latency_max_ms=max(latencies) if latencies else None,
        )  # fmt: skip
        event["method"], event["tool"] = method, tool if method == "tools/call" else None
        if ok_timeline is not None:
            event["window_end"], event["ok_timeline"], event["timeline_slot_s"] = T0 + at, ok_timeline, timeline_slot_s
        if ok_params is not None:
            event["ok_params"], event["ok_params_overflow"] = [hashed(p) for p in ok_params], ok_params_overflow
        return self._publish(event, at)

    def _upstream_event(self, type: str, at: float, **fields: Any) -> dict[str, Any]:
        return self._publish(make_event(type, None, upstream=fields.pop("upstream", self.upstream), **fields), at)

    def breaker_state(self, at: float, old: str, new: str, breaker: str | None = None, last_failure_kind: str | None = None) -> dict[str, Any]:
        extra = {} if last_failure_kind is None else {"last_failure_kind": last_failure_kind}
        return self._upstream_event("breaker_state", at, breaker=breaker or self.upstream, old=old, new=new, **extra)

    def circuit_open(self, at: float, breaker: str | None = None) -> dict[str, Any]:
        return self._upstream_event("circuit_open", at, breaker=breaker or self.upstream)

    def health_changed(self, at: float, old: str, new: str, cause: str = "active") -> dict[str, Any]:
        return self._upstream_event("health_changed", at, old=old, new=new, cause=cause, detail="probe")

    def session_lost(self, at: float, recovery: str | None = None, why: str | None = None, **kw: Any) -> dict[str, Any]:
        """A lost legacy session. Without `recovery`: as a proxy recorded it before it recovered sessions (an
        upstream event, no call, no `recovery`); with it: the call event the proxy publishes now."""
        if recovery is None:
            return self._upstream_event("session_lost", at, error={"kind": "session_expired", "http_status": 404, "jsonrpc_code": None, "message": "session not found"})
        return self._call("session_lost", at, recovery=recovery, why=why, **kw)

    def session_recovered(self, at: float, recovery_ms: float, generation: int = 1, restored: list[str] | None = None, **kw: Any) -> dict[str, Any]:
        return self._call("session_recovered", at, generation=generation, recovery_ms=recovery_ms, restored=restored or ["initialized"], **kw)

    def stream_resumed(self, at: float, stream: str = "get", from_event_id: bool = False, generation: int = 1) -> dict[str, Any]:
        return self._upstream_event("stream_resumed", at, stream=stream, from_event_id=from_event_id, generation=generation, gap_ms=120.0)

    def child_exited(
        self, at: float, reason: str, *, phase: str = "running", uptime_ms: float | None = 5000.0, generation: int = 1,
        pid: int | None = 4000, cut_off: int = 0, restarts: int = 0,
    ) -> dict[str, Any]:
        """A stdio child the proxy did not stop ended (`uptime_ms` is dropped in phase starting, as the proxy does)."""
        return self._upstream_event(
            "stdio_child_exited", at, generation=generation, pid=pid, phase=phase, reason=reason,
            uptime_ms=None if phase == "starting" else uptime_ms, cut_off=cut_off, restarts=restarts,
        )  # fmt: skip

    def question_refused(self, at: float, why: str, method: str = "sampling/createMessage", clients_waiting: int = 2) -> dict[str, Any]:
        """A stdio child's question no client could be asked."""
        return self._upstream_event("stdio_question_refused", at, method=method, why=why, clients_waiting=clients_waiting)

    def config_reloaded(self, at: float) -> dict[str, Any]:
        return self._publish(make_event("config_reloaded", None, trigger="watch", file_hash="abc"), at)

    def config_rejected(self, at: float) -> dict[str, Any]:
        return self._publish(make_event("config_rejected", None, trigger="watch", errors=["x: bad"]), at)
