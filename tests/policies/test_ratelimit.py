"""The rate-limit stage: bursts, refusals with a true retryAfter, key isolation, bounded maps and waits.

aiolimiter (and `asyncio.timeout` around a wait) take their time from the running event loop:
`loop.time()` to drain a bucket, `loop.call_at` to wake a waiter. So the stage's clock is the loop's,
and this module injects a fake one there: each test runs, through `@virtual_time`, on a
`VirtualTimeLoop`, whose clock stands still while code runs and jumps straight to the next timer when
nothing else is ready. A wait of 10 ms takes exactly 10 ms of loop time and no real time, and each
`retryAfter` is what the arithmetic says, on any machine, however slow or loaded.
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import selectors
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from proxy.errors import RateLimited, UpstreamTimeout
from proxy.policies.base import Call
from proxy.policies.ratelimit import RateLimitStage
from proxy.config.policies import RateLimitConfig
from tests.fakes import FakeUpstream, make_call, tool_call, upstream_config

FLOAT = 1e-9
"""How far a `retryAfter` may be from its exact value: float rounding, never elapsed time."""


class _JumpingSelector(selectors.DefaultSelector):
    """Never sleeps until a timer: with no I/O ready, it moves the loop's clock on to that timer instead."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # no timer pending: only I/O can wake the loop, as on a real one
            return super().select(None)
        ready = super().select(0)
        if not ready:
            # At least one step of the float, as a real clock always moves on: aiolimiter re-arms a
            # timer for the rounding residue of a drained bucket, due "now", until time passes.
            self._loop.now = max(self._loop.now + timeout, math.nextafter(self._loop.now, math.inf))
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on a fake clock, starting at 1000.0, that only the loop's waits move on."""

    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now


def virtual_time(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run the async `test` on a fresh `VirtualTimeLoop` (pytest sees a plain function with its arguments)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runner.run(test(*args, **kwargs))

    return run


@virtual_time
async def test_the_tests_run_in_virtual_time() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    started = loop.time()
    await asyncio.sleep(3600)
    assert loop.time() - started == pytest.approx(3600, abs=FLOAT)


def limited(client: str = "alice", tool: str = "search", **rate_limit: Any) -> Call:
    """A tools/call of `tool` by `client` under an upstream-wide `rate_limit`."""
    call = make_call(tool_call(tool), upstream_config(rate_limit=rate_limit))
    call.client = client
    return call


async def spend(stage: RateLimitStage, call: Call, upstream: FakeUpstream, n: int) -> None:
    for _ in range(n):
        await stage(call, upstream)


async def refused(stage: RateLimitStage, call: Call, upstream: FakeUpstream) -> RateLimited:
    with pytest.raises(RateLimited) as info:
        await stage(call, upstream)
    return info.value


@virtual_time
async def test_no_policy_means_no_limit() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = make_call(tool_call("search"))
    assert call.policy.rate_limit is None
    await spend(stage, call, upstream, 100)
    assert upstream.attempts == 100
    assert stage.stats() == {"buckets": 0, "waiting": 0, "rejected": 0}
    assert stage.retry_after(call) == 0.0


@pytest.mark.parametrize(
    ("rate", "per", "burst", "size", "retry_after"),
    [
        (2, 1.0, 5, 5, 0.5),  # explicit burst; refill every per/rate
        (3, 60.0, None, 3, 20.0),  # burst defaults to rate
        (0.5, 1.0, None, 1, 2.0),  # a fractional rate still allows one call at once
    ],
)
@virtual_time
async def test_the_burst_passes_then_the_next_call_is_refused_with_a_true_retry_after(
    rate: float, per: float, burst: int | None, size: int, retry_after: float
) -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=rate, per=per, burst=burst)
    await spend(stage, call, upstream, size)
    assert upstream.attempts == size

    error = await refused(stage, call, upstream)
    assert upstream.attempts == size
    assert error.retry_after == pytest.approx(retry_after, abs=FLOAT)
    data = error.error_data()
    assert data["reason"] == "rate_limited" and data["upstream"] == "up"
    assert data["retryAfter"] == pytest.approx(retry_after, abs=FLOAT)


@virtual_time
async def test_a_refusal_takes_no_token() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=1, per=10)
    await stage(call, upstream)
    for _ in range(5):
        assert (await refused(stage, call, upstream)).retry_after == pytest.approx(10.0, abs=FLOAT)
    assert stage.stats()["rejected"] == 5


@virtual_time
async def test_a_failed_call_still_spent_its_token() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream(UpstreamTimeout("slow"))
    call = limited(rate=1, per=10)
    with pytest.raises(UpstreamTimeout):
        await stage(call, upstream)
    await refused(stage, call, upstream)
    assert upstream.attempts == 1


@virtual_time
async def test_clients_have_their_own_buckets() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    await spend(stage, limited("alice", rate=2), upstream, 2)
    await refused(stage, limited("alice", rate=2), upstream)
    await spend(stage, limited("bob", rate=2), upstream, 2)
    assert upstream.attempts == 4
    assert stage.stats()["buckets"] == 2


@virtual_time
async def test_key_tool_isolates_tools_and_shares_across_clients() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    await stage(limited("alice", "search", rate=1, key="tool"), upstream)
    await refused(stage, limited("bob", "search", rate=1, key="tool"), upstream)
    await stage(limited("alice", "fetch", rate=1, key="tool"), upstream)
    assert upstream.attempts == 2


@virtual_time
async def test_key_tool_falls_back_to_the_method() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    listing = make_call(upstream=upstream_config(rate_limit={"rate": 1, "key": "tool"}))
    await stage(listing, upstream)
    await refused(stage, listing, upstream)
    await stage(limited("alice", "search", rate=1, key="tool"), upstream)


@pytest.mark.parametrize(("key", "other_upstream_passes"), [("upstream", True), ("global", False)])
@virtual_time
async def test_key_upstream_shares_one_bucket_per_upstream_and_global_one_for_all(
    key: str, other_upstream_passes: bool
) -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    await stage(limited("alice", "search", rate=2, key=key), upstream)
    await stage(limited("bob", "fetch", rate=2, key=key), upstream)
    await refused(stage, limited("carol", "other", rate=2, key=key), upstream)
    elsewhere = limited("carol", rate=2, key=key)
    elsewhere.upstream = "other"
    if other_upstream_passes:
        await stage(elsewhere, upstream)
    else:
        await refused(stage, elsewhere, upstream)
    assert upstream.attempts == 2 + other_upstream_passes


@virtual_time
async def test_rules_with_different_limits_never_share_a_bucket() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    config = upstream_config(rate_limit={"rate": 1}, rules=[{"match": {"tool": "slow"}, "rate_limit": {"rate": 2}}])
    slow, fast = make_call(tool_call("slow"), config), make_call(tool_call("fast"), config)
    assert slow.client == fast.client and slow.policy.rate_limit != fast.policy.rate_limit
    await stage(fast, upstream)
    await refused(stage, fast, upstream)
    await spend(stage, slow, upstream, 2)
    await refused(stage, slow, upstream)
    assert upstream.attempts == 3


@virtual_time
async def test_random_client_keys_keep_the_map_at_max_keys() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=1, per=60, max_keys=100)
    for _ in range(10_000):
        call.client = f"c{random.getrandbits(64):x}"
        await stage(call, upstream)
    assert upstream.attempts == 10_000
    assert stage.stats()["buckets"] == 100
    await refused(stage, call, upstream)  # the most recent key is kept, with its empty bucket


@virtual_time
async def test_the_least_recently_used_key_is_evicted_and_starts_full() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    clients = [limited(f"c{i}", rate=1, per=60, max_keys=2) for i in range(3)]
    for call in clients:
        await stage(call, upstream)
    await refused(stage, clients[2], upstream)
    await stage(clients[0], upstream)  # evicted by c2: a fresh bucket
    assert stage.stats()["buckets"] == 2


@virtual_time
async def test_a_short_wait_lets_the_call_through() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=100, burst=1, max_wait=0.5)
    loop = asyncio.get_running_loop()
    await stage(call, upstream)
    started = loop.time()
    await stage(call, upstream)
    assert upstream.attempts == 2
    assert loop.time() - started == pytest.approx(0.01, abs=FLOAT)  # one token frees every 1/rate s
    assert stage.stats() == {"buckets": 1, "waiting": 0, "rejected": 0}


@virtual_time
async def test_a_wait_that_cannot_succeed_in_time_is_refused_at_once() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=1, max_wait=0.2)
    loop = asyncio.get_running_loop()
    await stage(call, upstream)
    started = loop.time()
    assert (await refused(stage, call, upstream)).retry_after == pytest.approx(1.0, abs=FLOAT)
    assert loop.time() == started  # not after waiting out max_wait
    assert stage.stats() == {"buckets": 1, "waiting": 0, "rejected": 1}


@virtual_time
async def test_retry_after_counts_the_callers_queued_ahead() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=10, burst=1, max_wait=0.15)
    await stage(call, upstream)
    waiter = asyncio.create_task(stage(call, upstream))
    await asyncio.sleep(0)
    assert stage.stats()["waiting"] == 1
    # The queued caller takes the token freed at 0.1 s; the next one frees at 0.2 s, past max_wait.
    assert (await refused(stage, call, upstream)).retry_after == pytest.approx(0.2, abs=FLOAT)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


@virtual_time
async def test_a_cancelled_waiter_takes_no_token() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=1, burst=1, max_wait=5)
    await stage(call, upstream)
    waiter = asyncio.create_task(stage(call, upstream))
    await asyncio.sleep(0)
    assert stage.stats()["waiting"] == 1
    assert stage.retry_after(call) == pytest.approx(2.0, abs=FLOAT)

    waiter.cancel()  # the client went away while queued
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)  # aiolimiter clears the cancelled waiter in a done-callback
    assert stage.stats() == {"buckets": 1, "waiting": 0, "rejected": 0}
    assert stage.retry_after(call) == pytest.approx(1.0, abs=FLOAT)
    assert upstream.attempts == 1


@virtual_time
async def test_retain_drops_the_buckets_of_configs_no_longer_in_use() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    kept, dropped = limited(rate=1), limited(rate=2)
    await stage(kept, upstream)
    await stage(dropped, upstream)
    assert stage.stats()["buckets"] == 2
    assert isinstance(kept.policy.rate_limit, RateLimitConfig)
    stage.retain([kept.policy.rate_limit])
    assert stage.stats()["buckets"] == 1
    await refused(stage, kept, upstream)  # an unchanged config keeps its state


@pytest.mark.parametrize(("seconds", "shown"), [(0.0003, 0.001), (1e-9, 0.001), (1e-15, 0.001), (2.5, 2.5), (2.5001, 2.501), (0.0, 0.0)])
def test_retry_after_is_rounded_up_to_the_millisecond_never_to_zero(seconds: float, shown: float) -> None:
    """A refusal after a bounded wait can come a fraction of a millisecond before the token frees: the
    client is told the next millisecond, never ``retryAfter: 0`` (come back now, to be refused again)."""
    assert RateLimited("r", upstream="up", retry_after=seconds).error_data()["retryAfter"] == shown
