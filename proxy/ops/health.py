"""Upstream health: one state machine per upstream, fed by active probes and by real traffic.

Active probes find an upstream that is down before a client pays for it, and find its recovery
while no traffic flows. They are MCP requests over POST, never a GET (many MCP servers accept only
POST): `server/discover` on the stateless 2026-07-28 wire, or `ping` on a dedicated health session
on the legacy wire. Passive outlier detection finds, from real calls judged by `proxy.policies.failures`, an
upstream that answers probes but cannot be talked to for real work. `UpstreamHealth` decides every
transition::

    unknown            --first probe ok, or first real call ok-------------------> healthy
    unknown            --first probe failed------------------------------------> unhealthy
    healthy            --active.unhealthy_threshold failed probes in a row-------> unhealthy
    unknown, healthy   --passive.consecutive_failures transport failures in a row-> unhealthy
    unhealthy          --active.healthy_threshold successes in a row------------> healthy

A success streak counts probes and real calls alike: a call that worked is the best evidence there
is, and without it an upstream marked down by passive checks with probing off could never return.
A real success also resets the probe failure streak; a probe success does not reset the real-call
failure streak, so a cheap probe that passes cannot hide real calls that keep failing.

Passive checks count only transport failures (`Verdict.transport_failure`: no connection, a connection
that broke, an answer that is not HTTP, a stream cut short): health decides readiness, and a pod must
leave its Service only when its server cannot be talked to, never because of what clients asked. A
timeout or a 502/503/504 may be one slow or overloaded tool: the breaker sheds those, and active probes
(with their own timeout) find a hung server. Any answer the server gave, an application error included
(-32603, a 4xx, an `isError` result), proves it reachable and counts as a success.

Neutral outcomes neither count nor reset anything: a probe answered 429 (the upstream is alive and
asking for less), and real calls that are no verdict on reachability (timeouts, 5xx, 429, the proxy's
own overload, cancelled calls).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import structlog

from proxy import __version__
from proxy.config.model import HealthConfig
from proxy.errors import ProxyError, ProxyOverloaded
from proxy.mcp.eras import LEGACY_VERSION, MODERN_VERSION
from proxy.tasks import Owner, cancel_and_wait, spawn
from proxy.policies.failures import Failure, Verdict, classify_error, classify_reply, judged
from proxy.policies.base import NULL_OBSERVER, Attempt, AttemptHandler, Clock, MonotonicClock, Observer, Reply
from proxy.policies.breaker import BreakerStage
from proxy.upstream.transport import HttpUpstream

__all__ = ["HealthProber", "PassiveHealthStage", "UpstreamHealth"]

log = structlog.get_logger("proxy")

State = Literal["unknown", "healthy", "unhealthy"]
CLIENT_INFO = {"name": "mcp-resilience-proxy-health", "version": __version__}
UNSUPPORTED_STATUS = frozenset({400, 404, 405, 406})
"""What a legacy-only server answers to a sessionless `server/discover` (the SDK: 400 Missing session ID)."""
UNSUPPORTED_CODES = frozenset({-32600, -32601})
SESSION_LOST_STATUS = frozenset({400, 404})
"""An ended or unknown legacy session: 404 per the spec, 400 from some servers."""
_BASE_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
    "User-Agent": f"mcp-resilience-proxy-health/{__version__}",
}


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    result: bool | None
    """True ok, False failed, None ignored (429)."""
    at: float
    error: str | None


class UpstreamHealth:
    """The health of one upstream. Cheap and synchronous: probes and the pipeline call it inline."""

    __slots__ = ("_changed_at", "_clock", "_failures", "_observer", "_passive_failures", "_successes",
                 "config", "counts", "last_probe", "name", "protocol", "state")  # fmt: skip

    def __init__(
        self, name: str, config: HealthConfig, observer: Observer = NULL_OBSERVER, clock: Clock | None = None
    ) -> None:
        self.name = name
        self.config = config
        self._observer = observer
        self._clock = clock = clock or MonotonicClock()
        self.state: State = "unknown"
        self.protocol: str | None = None
        """The probe protocol in use ("modern", "legacy"; None before `auto` has decided)."""
        self.last_probe: ProbeRecord | None = None
        self.counts: Counter[str] = Counter()
        self._successes = 0  # probes and real calls, in a row
        self._failures = 0  # failed probes in a row
        self._passive_failures = 0  # transport failures of real calls in a row
        self._changed_at = clock.monotonic()

    @property
    def probe_failures(self) -> int:
        """Failed probes in a row."""
        return self._failures

    @property
    def healthy(self) -> bool:
        return self.state == "healthy"

    @property
    def serving(self) -> bool:
        """For /readyz: healthy; or unknown while nothing probes it (active checks off), since real
        traffic is then the only thing that can ever decide, and an unready proxy gets none."""
        return self.state == "healthy" or (self.state == "unknown" and not self.config.active.enabled)

    def record_probe(self, result: bool | None, error: str | None = None) -> None:
        """The outcome of one active probe: True ok, False failed, None ignored."""
        self.last_probe = ProbeRecord(result, self._clock.monotonic(), error)
        if result is None:
            self.counts["probes_ignored"] += 1
        elif result:
            self.counts["probes_ok"] += 1
            self._failures = 0
            self._succeeded("active", "probe ok")
        else:
            self.counts["probes_failed"] += 1
            self._successes = 0
            self._failures += 1
            if self.state == "unknown" or (
                self.state == "healthy" and self._failures >= self.config.active.unhealthy_threshold
            ):
                self._move("unhealthy", "active", f"{self._failures} failed probe(s), last: {error or 'failed'}")

    def record_call(self, verdict: Verdict) -> None:
        """The verdict on one real attempt (passive checks): a transport failure fails, any answer the
        server gave (a result, or an application error: it answered) succeeds, the rest count nothing."""
        if not self.config.passive.enabled:
            return
        if verdict.transport_failure:
            self.counts["calls_failed"] += 1
            self._successes = 0
            self._passive_failures += 1
            if self.state != "unhealthy" and self._passive_failures >= self.config.passive.consecutive_failures:
                detail = f"{self._passive_failures} failed calls in a row, last: {verdict.kind}: {verdict.message}"
                self._move("unhealthy", "passive", detail)
        elif verdict.ok or verdict.application_answer:
            self.counts["calls_ok"] += 1
            self._failures = self._passive_failures = 0
            self._succeeded("passive", "call ok")

    def _succeeded(self, cause: str, detail: str) -> None:
        self._successes += 1
        if self.state == "unknown" or (
            self.state == "unhealthy" and self._successes >= self.config.active.healthy_threshold
        ):
            self._move("healthy", cause, detail)

    def _move(self, new: State, cause: str, detail: str) -> None:
        old, self.state = self.state, new
        self._changed_at = self._clock.monotonic()
        self.counts["transitions"] += 1
        # Invariant: a fresh state starts its opposing streaks from zero.
        if new == "healthy":
            self._failures = self._passive_failures = 0
        else:
            self._successes = 0
        self._observer.policy_event("health_changed", None, upstream=self.name, old=old, new=new, cause=cause, detail=detail)

    def snapshot(self) -> dict[str, Any]:
        """Everything /status shows about this upstream's health."""
        now = self._clock.monotonic()
        probe = self.last_probe
        return {
            "state": self.state,
            "serving": self.serving,
            "seconds_in_state": round(now - self._changed_at, 3),
            "protocol": self.protocol,
            "last_probe": None if probe is None else {
                "result": {True: "ok", False: "failed", None: "ignored"}[probe.result],
                "seconds_ago": round(now - probe.at, 3),
                "error": probe.error,
            },
            "streaks": {"successes": self._successes, "probe_failures": self._failures, "call_failures": self._passive_failures},
            "counts": dict(self.counts),
        }


class PassiveHealthStage:
    """Feeds each attempt's verdict to `UpstreamHealth.record_call`; belongs between breaker and timeout,
    so it sees every attempt, timeouts included, whatever the breaker config."""

    __slots__ = ("_health",)

    def __init__(self, health: UpstreamHealth) -> None:
        self._health = health

    async def __call__(self, attempt: Attempt, next: AttemptHandler) -> Reply:
        return await judged(attempt, next, self._health.record_call)


class _Failed(Exception):
    """This probe failed; the message says why."""


class _SessionLost(_Failed):
    """The legacy health session is gone (upstream restarted, session expired)."""


class _Unsupported(Exception):
    """The upstream does not speak the modern protocol."""


class _RateLimited(Exception):
    """429: the probe counts as nothing."""


class HealthProber:
    """Active checks for one upstream: `start()` runs a probe now and then every jittered interval."""

    __slots__ = ("_breaker", "_clock", "_config", "_ids", "_initialized", "_last_woken", "_random", "_session", "_tasks",
                 "_upstream", "_version", "_woken", "health", "mode")  # fmt: skip

    def __init__(
        self,
        upstream: HttpUpstream,
        health: UpstreamHealth,
        clock: Clock,
        rand: Callable[[], float] = random.random,
        breaker: BreakerStage | None = None,
    ) -> None:
        self._upstream = upstream
        self._breaker = breaker
        """The upstream's breakers: a passed probe half-opens an open one (`BreakerStage.probe_passed`), and
        while one is open the probes come every `unhealthy_interval`."""
        self._woken = asyncio.Event()
        self._last_woken = float("-inf")
        self.health = health
        self._config = health.config.active
        self._clock = clock
        self._random = rand
        self.mode: str = self._config.protocol
        """"auto" until the upstream's answer decides, then "modern" or "legacy" for good."""
        health.protocol = None if self.mode == "auto" else self.mode
        self._ids = itertools.count(1)
        self._tasks: Owner = set()
        self._session: str | None = None
        self._initialized = False
        self._version = LEGACY_VERSION

    def start(self) -> None:
        """Start probing (a no-op when active checks are off or already running)."""
        if not self._tasks and self._config.enabled:
            spawn(self._run(), name=f"health-probe:{self._upstream.name}", owner=self._tasks)

    async def stop(self) -> None:
        """Stop probing and end the legacy health session (best effort). Call before closing the pool."""
        await cancel_and_wait(self._tasks)
        session, self._session, self._initialized = self._session, None, False
        if session is not None:
            headers = {"Mcp-Session-Id": session, "MCP-Protocol-Version": self._version}
            try:
                reply = await self._upstream.exchange("DELETE", headers, None, self._config.timeout, None, probe=True)
                if reply.stream is not None:
                    await reply.stream.close()
            except ProxyError:
                pass

    def next_interval(self) -> float:
        """interval × (1 ± jitter): probes of many proxies do not arrive in lockstep; `unhealthy_interval`
        instead while the last probe failed or the upstream's breaker is open (a restart is seen to end
        within about that long, and the breaker half-opened then rather than at its `reset_timeout`)."""
        failing = self.health.probe_failures > 0 or (self._breaker is not None and self._breaker.any_open())
        base = self._config.unhealthy_interval if failing else self._config.interval
        return min(base, self._config.interval) * (1 + self._config.jitter * (2 * self._random() - 1))

    def wake(self) -> None:
        """Probe now, not at the end of the current interval (the upstream's breaker just opened); at most
        once per `unhealthy_interval`, so a breaker that keeps reopening never drives the probes."""
        now = self._clock.monotonic()
        if now - self._last_woken >= self._config.unhealthy_interval:
            self._last_woken = now
            self._woken.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.probe_once()
            except Exception as exc:  # a bug must neither end probing nor leave a stale "healthy"
                log.exception("health_probe_crashed", upstream=self._upstream.name)
                self.health.record_probe(False, f"probe crashed: {type(exc).__name__}: {exc}")
            await self._pause(self.next_interval())

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds` on the clock, or less if `wake` is called meanwhile."""
        self._woken.clear()
        sleeping = spawn(self._clock.sleep(seconds), name=f"health-pause:{self._upstream.name}", owner=self._tasks, awaited=True)
        woken = spawn(self._woken.wait(), name=f"health-wake:{self._upstream.name}", owner=self._tasks, awaited=True)
        try:
            await asyncio.wait((sleeping, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait((sleeping, woken))

    async def probe_once(self) -> bool | None:
        """One probe within `active.timeout`, recorded in `health`: True ok, False failed, None ignored (a
        429, or the proxy itself out of resources: neither says anything about the upstream)."""
        result: bool | None = False
        error: str | None = None
        try:
            async with asyncio.timeout(self._config.timeout):
                result = await self._probe()
        except _RateLimited:
            result, error = None, "rate limited (HTTP 429)"
        except _Failed as exc:
            error = str(exc)
        except TimeoutError:
            error = f"timeout: no answer within {self._config.timeout:g}s"
        except ProxyOverloaded as exc:  # the proxy out of file descriptors or ports: no word on the upstream
            result, error = None, f"ignored: {exc.message}"
        except ProxyError as exc:
            verdict = classify_error(exc)
            error = f"{verdict.kind}: {verdict.message}"
        self.health.record_probe(result, error)
        if result and self._breaker is not None:
            self._breaker.probe_passed()
        return result

    async def _probe(self) -> bool:
        if self.mode != "legacy":
            try:
                return await self._discover()
            except _Unsupported as exc:
                if self.mode == "modern":
                    raise _Failed(str(exc)) from None
                self.mode = self.health.protocol = "legacy"
                log.info("health_probe_legacy", upstream=self._upstream.name, reason=str(exc))
        return await self._legacy()

    async def _post(
        self, method: str, params: dict[str, Any] | None, headers: dict[str, str], notify: bool = False
    ) -> tuple[Reply, Verdict]:
        """One exchange; 429 aborts the probe as ignored, anything else is for the caller to judge."""
        request_id = None if notify else next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        message.update({"id": request_id} if request_id is not None else {})
        message.update({"params": params} if params is not None else {})
        headers = {**_BASE_HEADERS, **headers}
        reply = await self._upstream.request(headers, orjson.dumps(message), request_id, self._config.timeout)
        verdict = classify_reply(reply, "Mcp-Session-Id" in headers)
        if verdict.kind is Failure.HTTP_429:
            raise _RateLimited
        return reply, verdict

    @staticmethod
    def _result(method: str, reply: Reply, verdict: Verdict) -> dict[str, Any]:
        message = reply.message
        if verdict.ok and 200 <= reply.status < 300 and isinstance(message, dict) and isinstance(message.get("result"), dict):
            return message["result"]  # type: ignore[no-any-return]
        raise _Failed(f"{method}: {verdict.message or f'HTTP {reply.status} without a JSON-RPC result'}")

    async def _discover(self) -> bool:
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
        }
        headers = {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": "server/discover"}
        reply, verdict = await self._post("server/discover", {"_meta": meta}, headers)
        if reply.status in UNSUPPORTED_STATUS or verdict.jsonrpc_code in UNSUPPORTED_CODES:
            raise _Unsupported(f"server/discover: {verdict.message or f'HTTP {reply.status}'}")
        self._result("server/discover", reply, verdict)
        if self.mode == "auto":
            self.mode = self.health.protocol = "modern"
        return True

    async def _legacy(self) -> bool:
        """Ping on the health session; a lost session is re-initialized once within the same probe."""
        fresh = not self._initialized
        if fresh:
            await self._initialize()
        try:
            await self._ping()
        except _SessionLost:
            if fresh:
                raise
            await self._initialize()
            await self._ping()
        return True

    def _session_headers(self) -> dict[str, str]:
        headers = {"MCP-Protocol-Version": self._version}
        if self._session is not None:
            headers["Mcp-Session-Id"] = self._session
        return headers

    async def _initialize(self) -> None:
        self._initialized, self._session, self._version = False, None, LEGACY_VERSION
        params = {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
        reply, verdict = await self._post("initialize", params, {})
        result = self._result("initialize", reply, verdict)
        self._session = reply.headers.get("Mcp-Session-Id")
        version = result.get("protocolVersion")
        self._version = version if isinstance(version, str) else LEGACY_VERSION
        reply, _ = await self._post("notifications/initialized", None, self._session_headers(), notify=True)
        if not 200 <= reply.status < 300:
            raise _Failed(f"notifications/initialized: HTTP {reply.status}")
        self._initialized = True

    async def _ping(self) -> None:
        reply, verdict = await self._post("ping", None, self._session_headers())
        if self._session is not None and reply.status in SESSION_LOST_STATUS:
            self._initialized = False
            raise _SessionLost(f"ping: health session gone (HTTP {reply.status})")
        self._result("ping", reply, verdict)
