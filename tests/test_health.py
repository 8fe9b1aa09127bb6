"""Health: the state machine (passive, from verdicts), and active probes over real HTTP on 127.0.0.1.

Probes run against the fault-injecting upstream (modern wire), the official SDK's everything server
in-process (both eras), and a tiny legacy-only server. Time never passes for real except inside a
probe's own timeout: the loop sleeps on a clock the test steps.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import structlog
import uvicorn
from aiohttp import web

from proxy.config.model import HealthConfig, LimitsConfig, UpstreamConfig
from proxy.errors import NeverSent, ProxyOverloaded, StreamBroken, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from proxy.policies.failures import CANCELLED, classify_error, classify_reply
from proxy.ops.health import HealthProber, PassiveHealthStage, UpstreamHealth
from proxy.policies.base import Call, Reply
from proxy.upstream.transport import HttpUpstream
from tests.fakes import FakeClock, FakeUpstream, first, make_call, reply_error, reply_ok, reply_result, reply_status, tool_call
from tests.fault_upstream import FaultUpstream
from tests.servers.everything import build_app


class Events:
    """An observer that keeps health transitions as (old, new, cause)."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []
        self.details: list[str] = []

    def policy_event(self, kind: str, call: Call | None, **fields: Any) -> None:
        assert kind == "health_changed" and call is None and fields["upstream"] == "up"
        self.changes.append((fields["old"], fields["new"], fields["cause"]))
        self.details.append(fields["detail"])


class StepClock(FakeClock):
    """A fake clock whose `sleep` parks until the test lets it go, so a loop can be stepped."""

    def __init__(self) -> None:
        super().__init__()
        self.asleep: asyncio.Queue[float] = asyncio.Queue()
        self.wake: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        await super().sleep(seconds)
        self.asleep.put_nowait(seconds)
        await self.wake.get()

    async def next_sleep(self) -> float:
        return await asyncio.wait_for(self.asleep.get(), 10)


@dataclass
class Probe:
    transport: HttpUpstream
    health: UpstreamHealth
    prober: HealthProber
    events: Events


MakeProbe = Callable[..., Awaitable[Probe]]


@pytest.fixture
async def make_probe() -> AsyncIterator[MakeProbe]:
    made: list[Probe] = []

    async def make(
        url: str,
        clock: FakeClock | None = None,
        rand: Callable[[], float] = lambda: 0.5,
        start: bool = True,
        passive: dict[str, Any] | None = None,
        **active: Any,
    ) -> Probe:
        config = UpstreamConfig.model_validate(
            {"name": "up", "url": url, "health": {"active": active, "passive": passive or {}}}
        )
        transport = HttpUpstream(config, LimitsConfig())
        if start:
            await transport.start()
        clock = clock or FakeClock()
        events = Events()
        health = UpstreamHealth("up", config.health, events, clock)
        probe = Probe(transport, health, HealthProber(transport, health, clock, rand), events)
        made.append(probe)
        return probe

    yield make
    for probe in made:
        await probe.prober.stop()
        await probe.transport.close()


# --- passive checks and the state machine, no network -------------------------------------------


def health_for(events: Events | None = None, **sections: dict[str, Any]) -> UpstreamHealth:
    return UpstreamHealth("up", HealthConfig.model_validate(sections), events or Events(), FakeClock())


SERVER_FAILURES = [  # transport failures: the only real-call outcomes that move health (and so readiness)
    classify_error(NeverSent("refused")),
    classify_error(UpstreamUnavailable("reset")),
    classify_error(StreamBroken("broke")),
    classify_error(UpstreamProtocolError("not http")),
]
NEUTRAL = [  # no verdict on whether the upstream can be talked to
    classify_reply(reply_status(429, **{"Retry-After": "3"}), False),
    classify_reply(reply_status(503), False),
    classify_error(UpstreamTimeout("t")),
    classify_error(ProxyOverloaded("pool busy")),
    CANCELLED,
]
ANSWERED = [  # the server answered, with an error of its own: it is reachable
    classify_reply(reply_status(400), False),
    classify_reply(reply_error(-32602), False),
    classify_reply(reply_error(-32603), False),
    classify_reply(reply_error(-32000, status=400, message="Bad Request: Server not initialized"), False),
    classify_reply(reply_result({"content": [], "isError": True}), False),
    classify_reply(reply_status(404), True),  # session expired
]
OK = classify_reply(reply_ok(), False)


def test_the_verdict_lists_mean_what_the_tests_say() -> None:
    assert all(v.transport_failure for v in SERVER_FAILURES)
    assert not any(v.transport_failure or v.ok or v.application_answer for v in NEUTRAL)
    assert all(v.application_answer and not v.server_failure for v in ANSWERED)
    assert OK.ok


@pytest.mark.parametrize("answer", ANSWERED, ids=lambda v: f"{v.kind}-{v.http_status}-{v.jsonrpc_code}")
def test_a_clients_mistakes_never_make_the_upstream_unhealthy(answer: Any) -> None:
    """The issue's case: bad requests answered -32603 or 400 -32000 must never pull /readyz."""
    health = health_for(passive={"consecutive_failures": 1})
    for _ in range(50):
        health.record_call(answer)
    assert health.state == "healthy" and health.serving
    health.record_call(SERVER_FAILURES[0])
    health.record_call(answer)  # an answer proves it reachable again and resets the streak
    assert health.snapshot()["streaks"]["call_failures"] == 0


@pytest.mark.parametrize("failure", SERVER_FAILURES, ids=lambda v: str(v.kind))
def test_passive_consecutive_server_failures_mark_unhealthy_exactly_at_the_threshold(failure: Any) -> None:
    events = Events()
    health = health_for(events, passive={"consecutive_failures": 3})
    health.record_call(OK)
    assert health.state == "healthy"
    for _ in range(2):
        health.record_call(failure)
        assert health.state == "healthy"
    health.record_call(failure)
    assert health.state == "unhealthy" and not health.serving
    assert events.changes == [("unknown", "healthy", "passive"), ("healthy", "unhealthy", "passive")]
    assert events.details[-1].startswith(f"3 failed calls in a row, last: {failure.kind}")


def test_passive_timeouts_5xx_429_and_overload_neither_count_nor_reset() -> None:
    health = health_for(passive={"consecutive_failures": 3})
    health.record_call(OK)
    for _ in range(10):
        for verdict in NEUTRAL:
            health.record_call(verdict)
    assert health.state == "healthy" and health.snapshot()["streaks"]["call_failures"] == 0
    health.record_call(SERVER_FAILURES[0])
    health.record_call(SERVER_FAILURES[0])
    for verdict in NEUTRAL:
        health.record_call(verdict)
    assert health.snapshot()["streaks"]["call_failures"] == 2
    health.record_call(SERVER_FAILURES[0])
    assert health.state == "unhealthy"


def test_passive_a_successful_call_resets_the_streak() -> None:
    health = health_for(passive={"consecutive_failures": 2})
    for _ in range(5):
        health.record_call(SERVER_FAILURES[0])
        health.record_call(OK)
    assert health.state == "healthy"


def test_passive_off_ignores_real_calls() -> None:
    health = health_for(passive={"enabled": False, "consecutive_failures": 1})
    health.record_call(SERVER_FAILURES[0])
    health.record_call(OK)
    assert health.state == "unknown" and health.counts == {}


def test_real_successes_count_toward_recovery_and_a_failed_probe_breaks_the_streak() -> None:
    events = Events()
    health = health_for(events, active={"healthy_threshold": 3}, passive={"consecutive_failures": 1})
    health.record_probe(True)
    health.record_call(SERVER_FAILURES[0])
    assert health.state == "unhealthy"
    health.record_call(OK)
    health.record_probe(True)
    health.record_probe(False, "boom")  # breaks the streak of 2
    health.record_call(OK)
    health.record_probe(True)
    assert health.state == "unhealthy"
    health.record_call(OK)
    assert health.state == "healthy"
    assert events.changes == [
        ("unknown", "healthy", "active"),
        ("healthy", "unhealthy", "passive"),
        ("unhealthy", "healthy", "passive"),
    ]


def test_a_passing_probe_does_not_hide_failing_calls_but_a_passing_call_resets_failing_probes() -> None:
    health = health_for(active={"unhealthy_threshold": 2}, passive={"consecutive_failures": 2})
    health.record_probe(True)
    health.record_call(SERVER_FAILURES[0])
    health.record_probe(True)
    health.record_call(SERVER_FAILURES[0])
    assert health.state == "unhealthy"
    health.record_probe(True)
    health.record_probe(True)
    assert health.state == "healthy"
    health.record_probe(False)
    health.record_call(OK)
    health.record_probe(False)
    assert health.state == "healthy"
    health.record_probe(False)
    assert health.state == "unhealthy"


def test_unknown_is_serving_only_while_nothing_probes() -> None:
    assert not health_for().serving
    assert health_for(active={"enabled": False}).serving
    unknown_failed = health_for(active={"enabled": False}, passive={"consecutive_failures": 1})
    unknown_failed.record_call(SERVER_FAILURES[0])
    assert unknown_failed.state == "unhealthy" and not unknown_failed.serving


def test_first_probe_decides_from_unknown_and_ignored_probes_decide_nothing() -> None:
    down = health_for()
    down.record_probe(None)
    assert down.state == "unknown"
    down.record_probe(False, "refused")
    assert down.state == "unhealthy"
    up = health_for()
    up.record_probe(True)
    assert up.state == "healthy" and up.healthy and up.serving


def test_snapshot_for_status() -> None:
    clock = FakeClock()
    health = UpstreamHealth("up", HealthConfig(), Events(), clock)
    assert health.snapshot()["last_probe"] is None
    health.record_probe(True)
    clock.advance(4)
    health.record_probe(False, "connect_error: refused")
    clock.advance(1.5)
    health.record_call(OK)
    assert health.snapshot() == {
        "state": "healthy",
        "serving": True,
        "seconds_in_state": 5.5,
        "protocol": None,
        "last_probe": {"result": "failed", "seconds_ago": 1.5, "error": "connect_error: refused"},
        "streaks": {"successes": 1, "probe_failures": 0, "call_failures": 0},
        "counts": {"probes_ok": 1, "probes_failed": 1, "calls_ok": 1, "transitions": 1},
    }


async def test_passive_stage_feeds_every_attempt_and_passes_answers_and_errors_on() -> None:
    health = health_for(passive={"consecutive_failures": 2})
    stage = PassiveHealthStage(health)
    call = make_call()
    failing = FakeUpstream(reply_status(503))
    assert (await stage(first(call), failing)).status == 503
    with pytest.raises(UpstreamTimeout):
        await stage(first(call), FakeUpstream(UpstreamTimeout("slow")))
    assert health.state == "unknown"  # neither a 503 nor a timeout says the upstream cannot be reached
    with pytest.raises(UpstreamUnavailable):
        await stage(first(call), FakeUpstream(UpstreamUnavailable("reset")))
    with pytest.raises(NeverSent):
        await stage(first(call), FakeUpstream(NeverSent("refused")))
    assert health.state == "unhealthy"
    await stage(first(call), FakeUpstream(reply_status(429)))
    assert health.snapshot()["streaks"] == {"successes": 0, "probe_failures": 0, "call_failures": 2}
    await stage(first(call), FakeUpstream(reply_ok()))
    await stage(first(call), FakeUpstream(reply_ok()))
    assert health.state == "healthy"


# --- active probes against the fault-injecting upstream (modern wire) ----------------------------


@pytest.mark.parametrize("protocol", ["modern", "auto"])
async def test_probes_cross_both_thresholds_exactly(upstream: FaultUpstream, make_probe: MakeProbe, protocol: str) -> None:
    probe = await make_probe(upstream.url, protocol=protocol, unhealthy_threshold=3, healthy_threshold=2)
    assert probe.health.state == "unknown"
    assert await probe.prober.probe_once() is True
    assert (probe.health.state, upstream.attempts["server/discover"]) == ("healthy", 1)
    upstream.fault("server/discover", status=503, times=3)
    expected = ["healthy", "healthy", "unhealthy"]
    for n, state in enumerate(expected, start=2):
        assert await probe.prober.probe_once() is False
        assert (probe.health.state, upstream.attempts["server/discover"]) == (state, n)
    for n, state in enumerate(["unhealthy", "healthy"], start=5):
        assert await probe.prober.probe_once() is True
        assert (probe.health.state, upstream.attempts["server/discover"]) == (state, n)
    assert probe.events.changes == [
        ("unknown", "healthy", "active"),
        ("healthy", "unhealthy", "active"),
        ("unhealthy", "healthy", "active"),
    ]
    assert "upstream answered HTTP 503" in probe.events.details[1]
    assert probe.prober.mode == probe.health.protocol == "modern"
    assert set(upstream.attempts) == {"server/discover"}  # a 5xx is a failure, never a reason to fall back


async def test_429_is_ignored_and_never_marks_unhealthy(upstream: FaultUpstream, make_probe: MakeProbe) -> None:
    probe = await make_probe(upstream.url, unhealthy_threshold=3)
    upstream.fault("server/discover", status=429, retry_after="5", times=3)
    for _ in range(3):
        assert await probe.prober.probe_once() is None
    assert probe.health.state == "unknown"
    assert probe.health.snapshot()["last_probe"]["result"] == "ignored"
    assert await probe.prober.probe_once() is True
    upstream.fault("server/discover", status=429)
    for _ in range(10):
        assert await probe.prober.probe_once() is None
    assert probe.health.state == "healthy"
    # Nor does a 429 end a failure streak: 503, 503, 429, 503 is three failures in a row.
    for status in (503, 503, 429, 429):
        upstream.fault("server/discover", status=status, times=1)
        await probe.prober.probe_once()
    assert probe.health.state == "healthy"
    upstream.fault("server/discover", status=503, times=1)
    assert await probe.prober.probe_once() is False
    assert probe.health.state == "unhealthy"
    assert upstream.attempts["server/discover"] == 3 + 1 + 10 + 4 + 1
    assert probe.health.counts["probes_ignored"] == 3 + 10 + 2


async def test_a_post_only_upstream_is_probed_with_a_modern_post(upstream: FaultUpstream, make_probe: MakeProbe) -> None:
    async with aiohttp.ClientSession() as session, session.get(upstream.url) as got:
        assert got.status == 405  # this upstream refuses GET, as many MCP servers do
    probe = await make_probe(upstream.url, protocol="modern")
    assert await probe.prober.probe_once() is True
    [received] = upstream.received
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert headers["mcp-protocol-version"] == "2026-07-28"
    assert headers["mcp-method"] == "server/discover"
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json, text/event-stream"
    body = json.loads(received.body)
    assert body["method"] == "server/discover" and isinstance(body["id"], int)
    meta = body["params"]["_meta"]
    assert meta["io.modelcontextprotocol/protocolVersion"] == "2026-07-28"
    assert meta["io.modelcontextprotocol/clientCapabilities"] == {}
    assert meta["io.modelcontextprotocol/clientInfo"]["name"] == "mcp-resilience-proxy-health"


async def test_a_hanging_upstream_times_out_and_the_probe_fails(upstream: FaultUpstream, make_probe: MakeProbe) -> None:
    probe = await make_probe(upstream.url, timeout=0.2)
    upstream.fault("server/discover", hang=True)
    assert await probe.prober.probe_once() is False
    assert probe.health.state == "unhealthy"
    error = probe.health.snapshot()["last_probe"]["error"]
    assert "timeout" in error and "0.2s" in error
    await asyncio.wait_for(upstream.gone.wait(), 10)  # the probe's connection was closed, not left hanging


async def test_sse_answers_and_errors_on_the_wire(upstream: FaultUpstream, make_probe: MakeProbe) -> None:
    probe = await make_probe(upstream.url, protocol="auto")
    upstream.fault("server/discover", sse=True, times=1)
    assert await probe.prober.probe_once() is True
    upstream.fault("server/discover", jsonrpc_error=-32603, times=1)
    assert await probe.prober.probe_once() is False
    upstream.fault("server/discover", drop="before_headers", times=1)
    assert await probe.prober.probe_once() is False
    assert probe.health.snapshot()["last_probe"]["error"].startswith("connection_lost")
    assert probe.prober.mode == "modern" and upstream.attempts["server/discover"] == 3


async def test_a_refused_connection_fails(make_probe: MakeProbe) -> None:
    closed = FaultUpstream()
    await closed.start()
    await closed.stop()
    probe = await make_probe(closed.url)
    assert await probe.prober.probe_once() is False
    assert probe.health.state == "unhealthy"
    assert probe.health.snapshot()["last_probe"]["error"].startswith("connect_error")


async def test_modern_never_falls_back(upstream: FaultUpstream, make_probe: MakeProbe) -> None:
    probe = await make_probe(upstream.url, protocol="modern")
    upstream.fault("server/discover", jsonrpc_error=-32601)
    assert await probe.prober.probe_once() is False
    upstream.fault("server/discover", status=404)
    assert await probe.prober.probe_once() is False
    assert probe.prober.mode == "modern"
    assert dict(upstream.attempts) == {"server/discover": 2}


# --- the official SDK's everything server, in process -------------------------------------------


class Recorder:
    """ASGI middleware that logs each HTTP exchange as (HTTP method, JSON-RPC method, status)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log: list[tuple[str, str | None, int]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)  # type: ignore[no-any-return]
        body = bytearray()

        async def receive_body() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                method = json.loads(body).get("method") if body else None
                self.log.append((scope["method"], method, message["status"]))
            await send(message)

        await self.app(scope, receive_body, send_status)

    def take(self) -> list[tuple[str, str | None, int]]:
        taken, self.log = self.log, []
        return taken


@dataclass
class Everything:
    url: str
    recorder: Recorder


@pytest.fixture
async def everything() -> AsyncIterator[Everything]:
    recorder = Recorder(build_app("127.0.0.1"))
    server = uvicorn.Server(uvicorn.Config(recorder, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(), name="everything-server")
    async with asyncio.timeout(30):
        while not server.started:
            assert not serving.done(), "everything server exited early"
            await asyncio.sleep(0.01)  # polling for the bound port; bounded by the timeout
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Everything(f"http://127.0.0.1:{port}/mcp", recorder)
    server.should_exit = True
    await asyncio.wait_for(serving, 30)


async def test_legacy_pings_a_health_session_and_survives_losing_it(everything: Everything, make_probe: MakeProbe) -> None:
    probe = await make_probe(everything.url, protocol="legacy")
    assert probe.health.protocol == "legacy"
    assert await probe.prober.probe_once() is True
    assert everything.recorder.take() == [
        ("POST", "initialize", 200),
        ("POST", "notifications/initialized", 202),
        ("POST", "ping", 200),
    ]
    assert await probe.prober.probe_once() is True
    assert everything.recorder.take() == [("POST", "ping", 200)]
    first = probe.prober._session
    assert first is not None

    # The session ends behind the prober's back (as when the upstream restarts).
    headers = {"Mcp-Session-Id": first, "MCP-Protocol-Version": "2025-11-25"}
    async with aiohttp.ClientSession() as session, session.delete(everything.url, headers=headers) as deleted:
        assert deleted.status == 200
    everything.recorder.take()
    assert await probe.prober.probe_once() is True
    assert everything.recorder.take() == [
        ("POST", "ping", 404),
        ("POST", "initialize", 200),
        ("POST", "notifications/initialized", 202),
        ("POST", "ping", 200),
    ]
    assert probe.prober._session not in (None, first)
    assert probe.health.state == "healthy" and probe.events.changes == [("unknown", "healthy", "active")]

    await probe.prober.stop()
    assert everything.recorder.take() == [("DELETE", None, 200)]


async def test_auto_speaks_modern_to_the_everything_server(everything: Everything, make_probe: MakeProbe) -> None:
    probe = await make_probe(everything.url, protocol="auto")
    assert probe.health.protocol is None
    for _ in range(2):
        assert await probe.prober.probe_once() is True
    assert everything.recorder.take() == [("POST", "server/discover", 200)] * 2
    assert probe.prober.mode == probe.health.protocol == "modern"
    await probe.prober.stop()
    assert everything.recorder.take() == []  # no session to end


# --- a legacy-only upstream ----------------------------------------------------------------------


class LegacyOnly:
    """A 2025-era server that knows nothing of server/discover: like the SDK's legacy transport, any
    request without a session except `initialize` gets 400 "Missing session ID"."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str | None, int]] = []
        self.versions: list[str | None] = []
        self.sessions: set[str] = set()
        self.status: dict[str, int] = {}
        """Per JSON-RPC method: answer this bare HTTP status instead."""
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/mcp", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/mcp"

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        session = request.headers.get("Mcp-Session-Id")
        body = await request.json() if request.method == "POST" else {}
        method = body.get("method")
        response = self._answer(request.method, method, session, body)
        self.log.append((request.method, method, response.status))
        self.versions.append(request.headers.get("MCP-Protocol-Version"))
        return response

    def _answer(self, http_method: str, method: str | None, session: str | None, body: dict[str, Any]) -> web.Response:
        if http_method == "DELETE" and session in self.sessions:
            self.sessions.discard(session)
            return web.Response(status=200)
        if http_method != "POST":
            return web.Response(status=405)
        if method in self.status:
            return web.Response(status=self.status[method])
        if method == "initialize":
            new = f"session-{len(self.log)}"
            self.sessions.add(new)
            result = {"protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "legacy", "version": "1"}}
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result}, headers={"Mcp-Session-Id": new})
        if session is None:
            error = {"code": -32600, "message": "Bad Request: Missing session ID"}
            return web.json_response({"jsonrpc": "2.0", "id": "server-error", "error": error}, status=400)
        if session not in self.sessions:
            return web.Response(status=404)
        if "id" not in body:
            return web.Response(status=202)
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": {}})


@pytest.fixture
async def legacy_only() -> AsyncIterator[LegacyOnly]:
    server = LegacyOnly()
    await server.start()
    yield server
    await server.stop()


async def test_auto_falls_back_to_legacy_for_good_and_says_so_once(legacy_only: LegacyOnly, make_probe: MakeProbe) -> None:
    probe = await make_probe(legacy_only.url, protocol="auto")
    with structlog.testing.capture_logs() as logs:
        assert await probe.prober.probe_once() is True
        assert await probe.prober.probe_once() is True
    assert legacy_only.log == [
        ("POST", "server/discover", 400),
        ("POST", "initialize", 200),
        ("POST", "notifications/initialized", 202),
        ("POST", "ping", 200),
        ("POST", "ping", 200),
    ]
    # The version the server negotiated is the one later requests carry.
    assert legacy_only.versions == ["2026-07-28", None, "2025-06-18", "2025-06-18", "2025-06-18"]
    assert [entry["event"] for entry in logs] == ["health_probe_legacy"]
    assert "Missing session ID" in logs[0]["reason"]
    assert probe.prober.mode == probe.health.protocol == "legacy"
    assert probe.health.state == "healthy"
    await probe.prober.stop()
    assert legacy_only.log[-1] == ("DELETE", None, 200) and legacy_only.sessions == set()


async def test_legacy_failures_fail_the_probe_and_a_lost_session_is_renewed_once(
    legacy_only: LegacyOnly, make_probe: MakeProbe
) -> None:
    probe = await make_probe(legacy_only.url, protocol="legacy", unhealthy_threshold=1, healthy_threshold=1)
    assert await probe.prober.probe_once() is True
    legacy_only.log.clear()

    legacy_only.status["ping"] = 503
    assert await probe.prober.probe_once() is False
    del legacy_only.status["ping"]
    assert await probe.prober.probe_once() is True  # the session outlived the failure
    assert legacy_only.log == [("POST", "ping", 503), ("POST", "ping", 200)]
    legacy_only.log.clear()

    legacy_only.sessions.clear()
    legacy_only.status["initialize"] = 500
    assert await probe.prober.probe_once() is False
    assert legacy_only.log == [("POST", "ping", 404), ("POST", "initialize", 500)]
    del legacy_only.status["initialize"]
    legacy_only.log.clear()
    assert await probe.prober.probe_once() is True
    assert legacy_only.log == [("POST", "initialize", 200), ("POST", "notifications/initialized", 202), ("POST", "ping", 200)]
    legacy_only.log.clear()

    legacy_only.status["ping"] = 404  # a server that loses every session at once: renewed once per probe
    assert await probe.prober.probe_once() is False
    assert legacy_only.log == [
        ("POST", "ping", 404),
        ("POST", "initialize", 200),
        ("POST", "notifications/initialized", 202),
        ("POST", "ping", 404),
    ]
    legacy_only.log.clear()
    assert await probe.prober.probe_once() is False
    assert legacy_only.log == [
        ("POST", "initialize", 200),
        ("POST", "notifications/initialized", 202),
        ("POST", "ping", 404),
    ]
    assert probe.health.snapshot()["last_probe"]["error"] == "ping: health session gone (HTTP 404)"
    assert [new for _, new, _ in probe.events.changes] == ["healthy", "unhealthy", "healthy", "unhealthy", "healthy", "unhealthy"]


# --- the loop --------------------------------------------------------------------------------


def sequence(*values: float) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


async def test_the_loop_probes_at_once_then_every_jittered_interval(upstream: FaultUpstream, make_probe: MakeProbe) -> None:
    clock = StepClock()
    probe = await make_probe(upstream.url, clock=clock, rand=sequence(0.0, 1.0, 0.5), interval=10, jitter=0.1)
    probe.prober.start()
    probe.prober.start()  # idempotent
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "health-probe:up"]
    assert len(tasks) == 1
    expected = [9.0, 11.0, 10.0]
    for n, interval in enumerate(expected, start=1):
        assert await clock.next_sleep() == pytest.approx(interval)
        assert upstream.attempts["server/discover"] == n
        clock.wake.put_nowait(None)
    assert clock.sleeps == pytest.approx(expected)
    await probe.prober.stop()
    assert tasks[0].cancelled()
    assert upstream.attempts["server/discover"] == 3
    assert probe.health.state == "healthy"


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5, 1.0])
def test_jitter_stays_within_bounds(jitter: float) -> None:
    health = UpstreamHealth("up", HealthConfig.model_validate({"active": {"interval": 10, "jitter": jitter}}))
    intervals = [HealthProber(None, health, FakeClock(), lambda: r).next_interval() for r in (0.0, 0.123, 0.5, 0.999999, 1.0)]  # type: ignore[arg-type]
    assert all(10 * (1 - jitter) <= i <= 10 * (1 + jitter) for i in intervals)
    assert (intervals[0], intervals[2], intervals[4]) == pytest.approx((10 * (1 - jitter), 10, 10 * (1 + jitter)))


async def test_a_crashing_probe_counts_as_failed_and_the_loop_goes_on(upstream: FaultUpstream, make_probe: MakeProbe) -> None:
    clock = StepClock()
    probe = await make_probe(upstream.url, clock=clock, start=False)  # a pool never opened: a wiring bug
    with structlog.testing.capture_logs() as logs:
        probe.prober.start()
        await clock.next_sleep()
        clock.wake.put_nowait(None)
        await clock.next_sleep()
    assert [entry["event"] for entry in logs] == ["health_probe_crashed"] * 2
    assert probe.health.state == "unhealthy"
    assert probe.health.snapshot()["last_probe"]["error"].startswith("probe crashed: RuntimeError")
    await probe.prober.stop()


async def test_start_is_a_no_op_when_active_checks_are_off(upstream: FaultUpstream, make_probe: MakeProbe) -> None:
    probe = await make_probe(upstream.url, enabled=False)
    probe.prober.start()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "health-probe:up"]
    await probe.prober.stop()
    assert upstream.attempts == {}



async def test_a_pool_full_of_client_calls_never_fails_a_probe(upstream: FaultUpstream) -> None:
    """Probes have connections of their own: clients holding every pooled connection (stuck calls,
    streams) is the proxy's load, and must not read as a dead upstream and pull /readyz."""
    upstream.fault("tools/call", "lookup", hang=True)
    config = UpstreamConfig.model_validate(
        {"name": "up", "url": upstream.url, "pool": {"max_connections": 1},
         "health": {"active": {"protocol": "modern", "timeout": "2s"}}}
    )  # fmt: skip
    transport = HttpUpstream(config, LimitsConfig())
    await transport.start()
    try:
        health = UpstreamHealth("up", config.health, Events(), FakeClock())
        prober = HealthProber(transport, health, FakeClock(), lambda: 0.5)
        stuck = asyncio.create_task(transport.send(first(make_call(tool_call("lookup")))))
        await asyncio.wait_for(upstream.arrived.wait(), 10)
        assert transport.pool.size == 1
        for _ in range(3):
            assert await prober.probe_once() is True
        assert health.state == "healthy"
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
    finally:
        await transport.close()


async def test_a_probe_the_proxy_cannot_send_for_its_own_lack_of_resources_counts_nothing(
    make_probe: MakeProbe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors (idle client sockets are cheap to open): the probe says nothing about
    the upstream, so it must not make it unhealthy and pull /readyz."""
    probe = await make_probe("http://127.0.0.1:9/mcp", protocol="modern", unhealthy_threshold=1)

    async def out_of_descriptors(*args: object, **kwargs: object) -> Reply:
        raise ProxyOverloaded("the proxy is out of resources: OSError: Too many open files", upstream="up")

    monkeypatch.setattr(probe.transport, "request", out_of_descriptors)
    for _ in range(5):
        assert await probe.prober.probe_once() is None
    assert probe.health.state == "unknown" and probe.health.counts["probes_ignored"] == 5
