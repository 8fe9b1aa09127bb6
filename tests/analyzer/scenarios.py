"""Recorded-style event streams, one per situation a rule looks for, and the small commented config they run against."""

from __future__ import annotations

from typing import Any

from tests.analyzer.builders import Stream

CONFIG = """\
# Analyzer test config: every comment here must survive an edit.
upstreams:
  - name: api                  # the main server
    url: ${API_URL:-http://127.0.0.1:3000/mcp}
    timeouts:
      per_try: 2s              # one attempt
      total: 10s               # the whole call
    retry:
      max_attempts: 3          # the first included
    breaker:
      failure_threshold: 5
      reset_timeout: 30s       # then half-open

    # Overrides per tool.
    rules:
      - match: {tool: "report_*"}    # slow reports
        timeouts: {per_try: 20s}
        idempotent: true
      - match: {tool: "fetch_*"}
        retry: {max_attempts: 3}
"""

Events = list[dict[str, Any]]


def healthy() -> Events:
    """Busy, fine traffic with the odd blip: no rule may propose anything."""
    s = Stream()
    for minute in range(5):
        at = 60.0 * minute + 10
        s.call_ok(at, tool="search", ok=400, ok_by_attempt={1: 398, 2: 2}, latencies_ms=[80.0] * 390 + [400.0] * 10)
        s.call_ok(at, tool="report_pdf", ok=20, latencies_ms=[5000.0] * 20)
        s.call_ok(at, method="resources/read", ok=50)
    for i in range(2):
        call = s.call_id()
        s.timeout(30.0 + i, 2000.0, call_id=call)
        s.timeout_observed(31.0 + i, 2000.0, 2300.0, call_id=call)
        s.retry(31.0 + i, "timeout", call_id=call)
    s.call_failed(100.0, "http_5xx", tool="search")
    s.health_changed(1.0, "unknown", "healthy")
    s.breaker_state(50.0, "closed", "open")
    s.breaker_state(80.0, "open", "half-open")
    s.breaker_state(81.0, "half-open", "closed")
    s.session_lost(120.0)
    return s.events


def slow_search() -> Events:
    """40 attempts of `search` time out at 2s; 36 are seen finishing between 2.1s and 2.8s, 4 never."""
    s = Stream()
    s.call_ok(100.0, tool="search", ok=200, latencies_ms=[300.0] * 198 + [1800.0] * 2)
    for i in range(40):
        call = s.call_id()
        s.timeout(1.0 + i, 2000.0, call_id=call)
        s.timeout_observed(2.0 + i, 2000.0, 2100.0 + 20 * i if i < 36 else None, call_id=call)
    return s.events


def slow_reports() -> Events:
    """`report_pdf` (rule report_*, per_try 20s, total 10s from the upstream) times out; answers come at ~25-30s."""
    s = Stream()
    s.call_ok(100.0, tool="report_pdf", ok=50, latencies_ms=[9000.0] * 50)
    for i in range(25):
        call = s.call_id()
        s.timeout(1.0 + i, 20000.0, tool="report_pdf", call_id=call)
        s.timeout_observed(2.0 + i, 20000.0, 25000.0 + 200 * i, tool="report_pdf", call_id=call)
    return s.events


def retries_never_help() -> Events:
    """25 calls of `flaky` (not idempotent, never sent: connect errors) fail all 3 attempts."""
    s = Stream()
    s.call_ok(100.0, tool="flaky", ok=100, calls=125)
    for i in range(25):
        call = s.call_id()
        for attempt in (1, 2):
            s.retry(i + attempt / 10, "connect_error", tool="flaky", attempt=attempt, call_id=call, idempotent=False)
        s.retry_exhausted(i + 0.3, "connect_error", tool="flaky", attempt=3, call_id=call, idempotent=False)
        s.call_failed(i + 0.3, "connect_error", tool="flaky", attempt=3, call_id=call, idempotent=False)
    return s.events


def late_recovery(tool: str = "slow_start", idempotent: bool = True) -> Events:
    """Successes pile up on attempt 3 of 3 while 12 calls run out of attempts."""
    s = Stream()
    s.call_ok(100.0, tool=tool, ok=140, calls=152, ok_by_attempt={1: 100, 2: 10, 3: 30})
    for i in range(12):
        call = s.call_id()
        for attempt in (1, 2):
            s.retry(i + attempt / 10, "server_error", tool=tool, attempt=attempt, call_id=call, idempotent=idempotent)
        s.retry_exhausted(i + 0.3, "server_error", tool=tool, attempt=3, call_id=call, idempotent=idempotent)
        s.call_failed(i + 0.3, "server_error", tool=tool, attempt=3, call_id=call, idempotent=idempotent)
    return s.events


def throttled() -> Events:
    """The upstream answers 429 thirty times while accepting 12 calls/s."""
    s = Stream()
    for end, ok in ((20.0, 120), (30.0, 130), (40.0, 110), (60.0, 200)):
        s.call_ok(end, tool="search", ok=ok)
    for i in range(30):
        s.call_failed(11.0 + i * 29 / 29, "http_429", tool="search", idempotent=False)
    return s.events


def flapping_breaker(failed_trials: bool = True) -> Events:
    """The api breaker opens three times: after failed trials, or each time after closing again."""
    s = Stream()
    at = 0.0
    steps = (
        [("closed", "open"), ("open", "half-open"), ("half-open", "open")] * 1
        + [("open", "half-open"), ("half-open", "open"), ("open", "half-open"), ("half-open", "closed")]
        if failed_trials
        else [("closed", "open"), ("open", "half-open"), ("half-open", "closed")] * 3
    )
    for old, new in steps:
        at += 20.0
        s.breaker_state(at, old, new)
    for i in range(4):
        s.circuit_open(25.0 + i)
    return s.events


def one_bad_tool() -> Events:
    """`scrape` causes every failure behind the shared breaker; `search` is healthy but gets refused."""
    s = Stream()
    s.call_ok(100.0, tool="scrape", ok=10, calls=40)
    s.call_ok(100.0, tool="search", ok=195, calls=200, outcomes={"ok": 195, "circuit_open": 5})
    for i in range(30):
        s.call_failed(1.0 + i, "http_5xx", tool="scrape", idempotent=False)
    s.breaker_state(20.0, "closed", "open")
    s.breaker_state(50.0, "open", "half-open")
    s.breaker_state(51.0, "half-open", "closed")
    for i in range(5):
        s.circuit_open(21.0 + i)
    return s.events


def outage_without_cache() -> Events:
    """`lookup` (idempotent) fails 25 times, 5 distinct params, with no cache to fall back on."""
    s = Stream()
    s.call_ok(10.0, tool="lookup", ok=100)
    for i in range(25):
        s.call_failed(20.0 + i, "http_5xx", tool="lookup", params=f"p{i % 5}")
    return s.events


CACHED_CONFIG = CONFIG + """\
      - match: {tool: lookup}
        cache:
          mode: fallback
          max_stale: 1m          # short on purpose
"""


def stale_ran_out() -> Events:
    """Stale answers for `lookup` stop at age 80s (max_stale 1m); 25 failures follow, 5s apart."""
    s = Stream()
    s.call_ok(1.0, tool="lookup", ok=100)
    for i in range(10):
        s.fallback_served(i * 5.0, age=35.0 + i * 5.0, tool="lookup")
    for i in range(25):
        s.call_failed(50.0 + 5 * i, "http_5xx", tool="lookup")
    return s.events


def flapping_health() -> Events:
    s = Stream()
    s.health_changed(1.0, "unknown", "healthy")
    for at, (old, new) in zip((10.0, 40.0, 55.0, 100.0), [("healthy", "unhealthy"), ("unhealthy", "healthy")] * 2, strict=True):
        s.health_changed(at, old, new)
    return s.events


def lost_sessions() -> Events:
    s = Stream()
    for i in range(4):
        s.session_lost(10.0 * i)
    return s.events


def slow_behind_breaker(observed: bool = True) -> Events:
    """`search` turns slow past its 2s per_try (answers at 2.4-2.8s) and the shared breaker hides it.

    In 40 s only 7 attempts time out: 5 open the breaker (at 5 s), and each later opening is a half-open
    trial that times out too (at 21 s and 37 s). Meanwhile the breaker refuses 100 calls of `search` and
    20 of the healthy `lookup`. Without `observed`, nobody saw the timed-out attempts answer.
    """
    s = Stream()
    s.call_ok(40.0, tool="search", ok=60, calls=167, outcomes={"ok": 60, "upstream_timeout": 7, "circuit_open": 100})
    s.call_ok(40.0, tool="lookup", ok=80, calls=100, outcomes={"ok": 80, "circuit_open": 20})
    def slow(at: float) -> None:
        call = s.call_id()
        s.timeout(at, 2000.0, call_id=call)
        s.timeout_observed(at + 0.5, 2000.0, 2400.0 + 400 * (at % 2) if observed else None, call_id=call)
        s.call_failed(at, "timeout", call_id=call)

    for i in range(5):
        slow(0.5 + i)
    s.breaker_state(5.0, "closed", "open", last_failure_kind="upstream_timeout")
    s.breaker_state(20.0, "open", "half-open")
    slow(20.5)
    s.breaker_state(21.0, "half-open", "open", last_failure_kind="upstream_timeout")
    s.breaker_state(36.0, "open", "half-open")
    slow(36.5)
    s.breaker_state(37.0, "half-open", "open", last_failure_kind="upstream_timeout")
    for i in range(100):
        at = 5.1 + i * 0.3
        if not 20.0 <= at < 21.0 and not 36.0 <= at < 37.0:
            s.call_failed(at, "circuit_open", tool="search", params=f"p{i % 7}")
            s.circuit_open(at)
    for i in range(20):
        s.call_failed(6.05 + i * 1.5, "circuit_open", tool="lookup", params=f"q{i % 3}")
    return s.events


WRITES_CONFIG = CONFIG + """\
      - match: {tool: create_issue}
        timeouts: {per_try: 1s}
"""


def slow_writes(count: int = 8) -> Events:
    """`create_issue` (not idempotent) always takes 2s against its 1s per_try: each call times out,
    is never retried, and the proxy watches the upstream finish it."""
    s = Stream()
    s.call_ok(60.0, tool="create_issue", ok=0, calls=count, outcomes={"upstream_timeout": count}, latencies_ms=[])
    for i in range(count):
        call = s.call_id()
        s.timeout(1.0 + i, 1000.0, tool="create_issue", call_id=call, idempotent=False)
        s.timeout_observed(2.0 + i, 1000.0, 2000.0, tool="create_issue", call_id=call, idempotent=False)
        s.call_failed(1.0 + i, "timeout", tool="create_issue", call_id=call, idempotent=False)
    return s.events


def declared_read_only(failures: int = 30, calls_ok: int = 200, kind: str = "http_5xx", **hints: bool) -> Events:
    """`get_weather` fails `failures` times among `calls_ok` successes; the server declares it read-only
    (or as `hints` say), the proxy does not trust annotations, so every call is `idempotent: false`."""
    declared = hints or {"read_only_hint": True}
    s = Stream()
    s.call_ok(100.0, tool="get_weather", ok=calls_ok, calls=calls_ok + failures)
    for i in range(failures):
        s.call_failed(1.0 + i * 0.5, kind, tool="get_weather", idempotent=False, params=f"city{i % 4}", **declared)
    return s.events
