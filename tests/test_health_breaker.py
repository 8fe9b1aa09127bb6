"""Active probes and the upstream breaker: an open breaker is half-opened by a passing probe (as Envoy
un-ejects a host that passes an active check), it wakes the prober at once, and probes come every
`unhealthy_interval` while it stays open or probes fail, so a restarted upstream is back within about a
probe, not at the end of `reset_timeout`."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from proxy.config.model import HealthConfig
from proxy.ops.health import HealthProber, UpstreamHealth
from proxy.policies.breaker import BreakerStage
from proxy.policies.failures import Failure, Verdict
from tests.fakes import FakeClock, make_call, tool_call, upstream_config

REFUSED = Verdict(Failure.CONNECT_ERROR, never_sent=True, message="refused")


def open_upstream_breaker(stage: BreakerStage, tool_too: bool = False) -> None:
    """Five refused connections: the upstream-wide breaker (and with `tool_too` a per-tool one) opens."""
    calls = [make_call()]
    if tool_too:
        calls.append(make_call(tool_call("slow"), upstream=upstream_config(breaker={"scope": "tool"})))
    for call in calls:
        breaker = stage.breaker_for(call)
        assert breaker is not None
        for _ in range(5):
            breaker.record(breaker.admit(), REFUSED)
        assert breaker.state == "open"


def prober_for(stage: BreakerStage | None, clock: FakeClock | None = None) -> HealthProber:
    health = UpstreamHealth("up", HealthConfig.model_validate({"active": {"interval": "10s", "unhealthy_interval": "1s", "jitter": 0}}))
    upstream = SimpleNamespace(name="up")  # never asked anything here: no probe is sent
    return HealthProber(upstream, health, clock or FakeClock(), lambda: 0.5, breaker=stage)  # type: ignore[arg-type]


def test_a_passing_probe_half_opens_the_open_upstream_breaker_and_only_it() -> None:
    stage = BreakerStage("up", FakeClock())
    open_upstream_breaker(stage, tool_too=True)
    stage.probe_passed()
    states = sorted((breaker.name, breaker.state) for breaker in stage.breakers)
    assert states == [("up", "half-open"), ("up/slow", "open")]
    stage.probe_passed()  # nothing open upstream-wide any more: nothing changes
    assert sorted((b.name, b.state) for b in stage.breakers) == states


def test_the_upstream_breaker_opening_tells_its_listener() -> None:
    stage = BreakerStage("up", FakeClock())
    told: list[str] = []
    stage.on_open(lambda: told.append("open"))
    open_upstream_breaker(stage, tool_too=True)
    assert told == ["open"]  # the per-tool breaker's opening is not the upstream's


def test_probes_come_every_unhealthy_interval_while_the_breaker_is_open_or_probes_fail() -> None:
    stage = BreakerStage("up", FakeClock())
    prober = prober_for(stage)
    assert prober.next_interval() == 10.0
    open_upstream_breaker(stage)
    assert prober.next_interval() == 1.0
    stage.probe_passed()
    assert prober.next_interval() == 10.0
    prober.health.record_probe(False, "refused")
    assert prober.next_interval() == 1.0
    prober.health.record_probe(True)
    assert prober.next_interval() == 10.0


async def test_wake_ends_the_pause_between_probes_at_once() -> None:
    sleeping = asyncio.Event()

    class StuckClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            sleeping.set()
            await asyncio.Event().wait()  # never ends by itself

    clock = StuckClock()
    prober = prober_for(None, clock)
    pause = asyncio.ensure_future(prober._pause(10.0))
    await asyncio.wait_for(sleeping.wait(), 5)
    assert not pause.done() and clock.sleeps == [10.0]
    prober.wake()
    await asyncio.wait_for(pause, 5)
    assert not prober._tasks  # the sleep it did not finish was cancelled and awaited


def test_a_probe_half_opens_once_per_outage_so_a_server_failing_real_calls_keeps_its_breaker_open() -> None:
    """Broken-server review: a server that answers probes but fails every call had its breaker half-opened
    by each probe, every trial reaching it and the probes driven at the call rate."""
    stage = BreakerStage("up", FakeClock())
    open_upstream_breaker(stage)
    (breaker,) = stage.breakers
    stage.probe_passed()
    assert breaker.state == "half-open"
    breaker.record(breaker.admit("a"), REFUSED, "a")  # the trial fails: open again
    assert breaker.state == "open"
    stage.probe_passed()
    assert breaker.state == "open"  # this opening lasts its reset_timeout


def test_the_prober_is_woken_at_most_once_per_unhealthy_interval() -> None:
    clock = FakeClock()
    prober = prober_for(None, clock)
    prober.wake()
    assert prober._woken.is_set()
    prober._woken.clear()
    clock.advance(0.5)
    prober.wake()
    assert not prober._woken.is_set()
    clock.advance(0.5)
    prober.wake()
    assert prober._woken.is_set()
