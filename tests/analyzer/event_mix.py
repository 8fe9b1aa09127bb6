"""A realistic, seeded mix of analyzer events: what a proxy in trouble publishes, at a chosen rate.

Used by the window's merge-invariant tests (`test_window.py`) and by the analyzer's capacity benchmark
(`tests.perf.analyzer_rate`). Calls of several tools on two upstreams fail in the ways the proxy reports:
5xx, connection errors, tool and client errors, 429s, per-try timeouts (observed or not) followed by a
retry of the same attempt, retries that end exhausted, the retry budget, breaker refusals, stale
fallbacks. Every target sends a `call_ok` summary (latency histogram, ok timeline, the params that
succeeded) every 10 s; the
breakers (per upstream and per tool) open, half-open and close; health flaps; sessions get lost.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from tests.analyzer.builders import T0, Stream

__all__ = ["T0", "EventMix"]

UPSTREAMS = ("api", "db")
TOOLS = ("search", "fetch", "write")
SUMMARY_S = 10.0
PARAMS = [f"p{n}" for n in range(50)]
_PLAIN = ("http_5xx", "http_5xx", "connect_error", "tool_error", "client_error", "http_429", "protocol_error")


class EventMix:
    """Events at about `rate` per second of event time from T0, in id order; `until` yields them.

    A call's events are stamped a millisecond or two apart, so the stream's ts may run back by that much
    where one call's last event and the next call's first meet: what a real bus never does by much more.

    `extras` adds what a real stream rarely has but the analyzer must survive: events of another schema
    version and malformed ones (a histogram holding a string).
    """

    def __init__(self, seed: int, rate: float, extras: bool = False) -> None:
        self.random = random.Random(seed)
        self.rate = rate
        self.extras = extras
        self.streams = {name: Stream(name) for name in UPSTREAMS}
        self._ids = iter(range(1, 1 << 62))
        self.now = 0.0
        self._next_summary = SUMMARY_S
        self._next_breaker = 3.0
        self._breakers: dict[tuple[str, str], str] = {}

    def until(self, end: float) -> Iterator[dict[str, Any]]:
        """Events from the current time up to `end` seconds after T0, in ts order, with fresh ids."""
        rng = self.random
        while True:
            self.now += rng.expovariate(self.rate / 2.42)  # a call makes 2.42 events on average
            if self.now >= end:
                return
            if self.now >= self._next_summary:
                yield from self._summaries(self._next_summary)
                self._next_summary += SUMMARY_S
            if self.now >= self._next_breaker:
                yield from self._breaker(self._next_breaker)
                self._next_breaker += rng.uniform(2.0, 15.0)
            yield from self._call(self.now)

    def _stamp(self, events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for event in events:
            event["id"] = next(self._ids)
            yield event

    def _call(self, at: float) -> Iterator[dict[str, Any]]:
        rng = self.random
        upstream = rng.choice(UPSTREAMS)
        s = self.streams[upstream]
        tool = rng.choice(TOOLS)
        call = s.call_id()
        idempotent = tool != "write"
        kw: dict[str, Any] = {"tool": tool, "call_id": call, "idempotent": idempotent, "params": PARAMS[rng.randrange(50)]}
        if tool == "search":
            kw["read_only_hint"] = True
        before = len(s.events)
        step = 0.001
        roll = rng.random()
        if roll < 0.30:
            s.call_failed(at, rng.choice(_PLAIN), **kw)
        elif roll < 0.55:
            s.timeout(at, 500.0, **kw)
            observed = rng.choice((None, rng.uniform(500.0, 3000.0)))
            s.timeout_observed(at + step, 500.0, observed, **kw)
            s.retry(at + step, "timeout", **kw)
            if rng.random() < 0.5:
                s.timeout(at + 2 * step, 500.0, **kw | {"attempt": 2})
                s.call_failed(at + 2 * step, "timeout", **kw | {"attempt": 2})
        elif roll < 0.70:
            s.retry(at, "http_5xx", **kw)
            s.retry(at + step, "http_5xx", **kw | {"attempt": 2})
            s.retry_exhausted(at + 2 * step, "http_5xx", **kw | {"attempt": 3})
            s.call_failed(at + 2 * step, "http_5xx", **kw | {"attempt": 3})
        elif roll < 0.78:
            s.retry_budget_exhausted(at, "http_5xx", **kw)
            s.call_failed(at, "http_5xx", **kw)
        elif roll < 0.92:
            breaker = rng.choice((upstream, f"{upstream}/{tool}"))
            s.circuit_open(at, breaker=breaker)
            s.call_failed(at, "circuit_open", **kw)
        elif roll < 0.97:
            s.fallback_served(at, status=rng.choice(("stale", "hit")), age=rng.uniform(1.0, 90.0), **kw)
        else:
            s.rate_limited(at, **kw)
        if self.extras and rng.random() < 0.01:
            s.events.append({"v": 2, "ts": T0 + at, "type": "call_failed", "id": 0})
        if self.extras and rng.random() < 0.01:
            bad = s.call_ok(at, tool=tool, ok=1)
            bad["latency_histogram"] = ["x"]
        new = s.events[before:]
        del s.events[before:]
        yield from self._stamp(sorted(new, key=lambda e: e["ts"]))

    def _summaries(self, at: float) -> Iterator[dict[str, Any]]:
        rng = self.random
        batch: list[dict[str, Any]] = []
        for s in self.streams.values():
            for tool in TOOLS:
                ok = rng.randrange(200, 2000)
                failed = rng.randrange(0, 200)
                # The params that succeeded, for idempotent tools (what the calls' params are drawn from);
                # now and then past the summary's bound, or from an older proxy that did not name them.
                named = None if tool == "write" or rng.random() < 0.1 else rng.sample(PARAMS, rng.randrange(1, 20))
                overflow = rng.choice((0, 0, 0, 0, 0, 0, 0, 0, 0, 3)) if named is not None else 0
                latencies = [rng.lognormvariate(4.5, 0.8) for _ in range(20)]
                scale = ok // 20
                s.call_ok(
                    at, tool=tool, ok=ok, calls=ok + failed, ok_by_attempt={1: ok - ok // 10, 2: ok // 10},
                    latencies_ms=[x for x in latencies for _ in range(scale)] + [100.0] * (ok - 20 * scale),
                    window_s=SUMMARY_S, ok_timeline=[ok // 10] * 10, timeline_slot_s=1.0,
                    outcomes={"ok": ok, "http_5xx": failed // 2, "upstream_timeout": failed - failed // 2},
                    ok_params=named, ok_params_overflow=overflow,
                )  # fmt: skip
            batch.extend(s.events)
            s.events.clear()
        yield from self._stamp(batch)

    def _session(self, s: Stream, at: float) -> None:
        """A lost legacy session, and what became of it: recovered, failed (a rebuild that ran out its
        limit, or a server that came back changed), unknown to the proxy, or a recording that does not say;
        sometimes a reopened stream."""
        rng = self.random
        call = s.call_id()
        outcome = rng.choice(("recovered", "recovered", "ran_out", "changed", "unknown", "unstated"))
        if outcome == "unstated":
            s.session_lost(at)
        elif outcome == "unknown":
            s.session_lost(at, recovery="unknown_session", call_id=call)
        else:
            s.session_lost(at, recovery="recovering", call_id=call)
            if outcome == "recovered":
                s.session_recovered(at + 0.001, recovery_ms=rng.uniform(20.0, 9000.0), call_id=call)
            else:
                s.session_lost(at + 0.001, recovery="failed", why="upstream_failed" if outcome == "ran_out" else "version_changed", call_id=call)
        if rng.random() < 0.3:
            s.stream_resumed(at + 0.002, stream=rng.choice(("get", "answer", "listen")))

    def _breaker(self, at: float) -> Iterator[dict[str, Any]]:
        rng = self.random
        upstream = rng.choice(UPSTREAMS)
        s = self.streams[upstream]
        name = rng.choice((upstream, f"{upstream}/{rng.choice(TOOLS)}"))
        state = self._breakers.get((upstream, name), "closed")
        new = {"closed": "open", "open": "half-open", "half-open": rng.choice(("closed", "open"))}[state]
        self._breakers[upstream, name] = new
        s.breaker_state(at, state, new, breaker=name, last_failure_kind=rng.choice(("http_5xx", "upstream_timeout", None)))
        roll = rng.random()
        if roll < 0.2:
            s.health_changed(at, rng.choice(("healthy", "unknown")), rng.choice(("unhealthy", "healthy")))
        elif roll < 0.3:
            self._session(s, at)
        batch = list(s.events)
        s.events.clear()
        yield from self._stamp(batch)
