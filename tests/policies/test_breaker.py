"""Circuit breaker: opens at its threshold, fails fast, admits exactly K trials, closes on success.

States are driven with a fake clock: nothing here waits for real time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.errors import CircuitOpen, UpstreamTimeout, UpstreamUnavailable
from proxy.policies.base import Call
from proxy.policies.breaker import BreakerStage
from tests.fakes import FakeClock, FakeUpstream, make_call, reply_error, reply_ok, reply_result, reply_status, tool_call, upstream_config

LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def policy_event(self, kind: str, call: Call | None, **fields: Any) -> None:
        self.seen.append((kind, fields))

    def transitions(self) -> list[tuple[str, str]]:
        return [(f["breaker"], f["new"]) for kind, f in self.seen if kind == "breaker_state"]


def breaker_config(**fields: Any) -> Any:
    return upstream_config(breaker={"failure_threshold": 3, "reset_timeout": "10s", **fields})


async def fail(stage: BreakerStage, call: Call, upstream: FakeUpstream, times: int) -> None:
    for _ in range(times):
        with pytest.raises(UpstreamTimeout):
            await stage(call, upstream)


async def test_opens_at_threshold_and_fails_fast_with_retry_after() -> None:
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    upstream = FakeUpstream(UpstreamTimeout("slow"))
    call = make_call(LIST, breaker_config())
    await fail(stage, call, upstream, 3)
    assert events.transitions() == [("up", "open")]
    clock.advance(4)
    with pytest.raises(CircuitOpen) as caught:
        await stage(call, upstream)
    assert upstream.attempts == 3
    assert caught.value.retry_after == pytest.approx(6.0)
    assert caught.value.error_data() == {"reason": "circuit_open", "upstream": "up", "retryAfter": 6.0}


async def test_a_success_resets_the_consecutive_count() -> None:
    stage = BreakerStage("up", FakeClock())
    call = make_call(LIST, breaker_config())
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 2)
    await stage(call, FakeUpstream(reply_ok()))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 2)
    assert stage.breakers[0].state == "closed"


async def test_half_open_admits_exactly_k_trials_then_closes_when_all_succeed() -> None:
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    call = make_call(LIST, breaker_config(half_open_max_calls=2))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 3)
    clock.advance(10)
    upstream = FakeUpstream(reply_ok())
    upstream.gate = asyncio.Event()
    trials = [asyncio.ensure_future(stage(call, upstream)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen, match="trial calls are taken"):
        await stage(call, upstream)
    assert upstream.attempts == 2
    upstream.gate.set()
    await asyncio.gather(*trials)
    assert events.transitions() == [("up", "open"), ("up", "half-open"), ("up", "closed")]
    await stage(call, upstream)
    assert upstream.attempts == 3


async def test_a_failed_trial_opens_it_again_for_a_full_reset_timeout() -> None:
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    call = make_call(LIST, breaker_config())
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 3)
    clock.advance(10)
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)
    assert events.transitions() == [("up", "open"), ("up", "half-open"), ("up", "open")]
    clock.advance(9.9)
    with pytest.raises(CircuitOpen):
        await stage(call, FakeUpstream())


@pytest.mark.parametrize(
    "outcome",
    [reply_status(429), reply_status(400), reply_error(-32602), reply_error(-32601, status=404), reply_result({"isError": True, "content": []})],
    ids=["429", "400", "-32602", "-32601", "isError"],
)
async def test_client_errors_rate_limits_and_tool_errors_do_not_count(outcome: Any) -> None:
    stage = BreakerStage("up", FakeClock())
    call = make_call(LIST, breaker_config(failure_threshold=1))
    for _ in range(5):
        await stage(call, FakeUpstream(outcome))
    assert stage.breakers[0].state == "closed" and stage.breakers[0].failures == 0


@pytest.mark.parametrize("outcome", [reply_status(503), reply_error(-32603), UpstreamUnavailable("reset")], ids=["503", "-32603", "reset"])
async def test_server_side_failures_count(outcome: Any) -> None:
    stage = BreakerStage("up", FakeClock())
    call = make_call(LIST, breaker_config(failure_threshold=1))
    try:
        await stage(call, FakeUpstream(outcome))
    except UpstreamUnavailable:
        pass
    assert stage.breakers[0].state == "open"


async def test_cancelled_calls_count_as_nothing_and_free_their_trial_slot() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, breaker_config(failure_threshold=1))
    hanging = FakeUpstream(reply_ok())
    hanging.gate = asyncio.Event()
    task = asyncio.ensure_future(stage(call, hanging))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stage.breakers[0].state == "closed" and stage.breakers[0].failures == 0
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)
    clock.advance(10)
    task = asyncio.ensure_future(stage(call, hanging))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stage.breakers[0].state == "half-open"
    await stage(call, FakeUpstream(reply_ok()))  # the cancelled trial gave its slot back
    assert stage.breakers[0].state == "closed"


async def test_per_tool_breaker_isolates_one_bad_tool() -> None:
    stage = BreakerStage("up", FakeClock())
    config = upstream_config(breaker={"scope": "tool", "failure_threshold": 2})
    bad, good = make_call(tool_call("bad"), config), make_call(tool_call("good"), config)
    await fail(stage, bad, FakeUpstream(UpstreamTimeout("slow")), 2)
    with pytest.raises(CircuitOpen, match="circuit up/bad is open"):
        await stage(bad, FakeUpstream())
    assert (await stage(good, FakeUpstream(reply_ok()))).status == 200


async def test_failure_rate_mode_needs_min_calls() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, upstream_config(breaker={"failure_rate": 0.5, "min_calls": 4, "window": "10s"}))
    ok, bad = FakeUpstream(reply_ok()), FakeUpstream(UpstreamTimeout("slow"))
    await fail(stage, call, bad, 3)  # 3/3 failed, but fewer than min_calls
    assert stage.breakers[0].state == "closed"
    await stage(call, ok)  # 3/4 = 75% >= 50%, but a success never trips it
    await fail(stage, call, bad, 1)  # 4/5 = 80%
    assert stage.breakers[0].state == "open"


async def test_failure_rate_window_forgets_old_calls() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, upstream_config(breaker={"failure_rate": 0.5, "min_calls": 2, "window": "10s"}))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)
    clock.advance(11)
    await stage(call, FakeUpstream(reply_ok()))
    await stage(call, FakeUpstream(reply_ok()))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)  # 1 of the last 3 in the window
    assert stage.breakers[0].state == "closed"


async def test_disabled_breaker_passes_everything() -> None:
    stage = BreakerStage("up", FakeClock())
    call = make_call(LIST, upstream_config(breaker={"enabled": False}))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 10)
    assert stage.breakers == []


async def test_only_the_trials_decide_a_half_open_breaker() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, breaker_config(failure_threshold=1))
    straggler = FakeUpstream(reply_ok())
    straggler.gate = asyncio.Event()
    early = asyncio.ensure_future(stage(call, straggler))  # admitted while closed, answers late
    await asyncio.sleep(0)
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)
    clock.advance(10)
    trial_upstream = FakeUpstream(reply_ok())
    trial_upstream.gate = asyncio.Event()
    trial = asyncio.ensure_future(stage(call, trial_upstream))
    await asyncio.sleep(0)
    straggler.gate.set()
    await early
    assert stage.breakers[0].state == "half-open"  # the straggler's success proves nothing
    trial_upstream.gate.set()
    await trial
    assert stage.breakers[0].state == "closed"


async def test_a_trial_from_an_earlier_half_open_period_does_not_count() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, breaker_config(failure_threshold=1, half_open_max_calls=2))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)
    clock.advance(10)
    slow = FakeUpstream(reply_ok())
    slow.gate = asyncio.Event()
    first_period_trial = asyncio.ensure_future(stage(call, slow))
    await asyncio.sleep(0)
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)  # the other trial fails: open again
    clock.advance(10)
    waiting = FakeUpstream(reply_ok())
    waiting.gate = asyncio.Event()
    second_period_trial = asyncio.ensure_future(stage(call, waiting))
    await asyncio.sleep(0)
    slow.gate.set()
    await first_period_trial
    breaker = stage.breakers[0]
    assert breaker.state == "half-open" and breaker._cb._state_storage.success_counter == 0
    waiting.gate.set()
    await second_period_trial
    await stage(call, FakeUpstream(reply_ok()))
    assert breaker.state == "closed"
