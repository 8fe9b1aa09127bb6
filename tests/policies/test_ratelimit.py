"""The rate-limit stage: bursts, refusals with a true retryAfter, key isolation, bounded maps and waits.

aiolimiter runs on the event loop's clock, so nothing here sleeps: refusals are immediate
(`max_wait` 0, or a wait that could not succeed in time) and cancelled waiters never reach their
token. Only `test_a_short_wait_lets_the_call_through` waits for real, about 10 ms.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from proxy.errors import RateLimited, UpstreamTimeout
from proxy.policies.base import Call
from proxy.policies.ratelimit import RateLimitStage
from proxy.policy_config import RateLimitConfig
from tests.fakes import FakeUpstream, make_call, tool_call, upstream_config

TOLERANCE = 0.05


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
async def test_the_burst_passes_then_the_next_call_is_refused_with_a_true_retry_after(
    rate: float, per: float, burst: int | None, size: int, retry_after: float
) -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=rate, per=per, burst=burst)
    await spend(stage, call, upstream, size)
    assert upstream.attempts == size

    error = await refused(stage, call, upstream)
    assert upstream.attempts == size
    assert error.retry_after == pytest.approx(retry_after, abs=TOLERANCE)
    data = error.error_data()
    assert data["reason"] == "rate_limited" and data["upstream"] == "up"
    assert data["retryAfter"] == pytest.approx(retry_after, abs=TOLERANCE)


async def test_a_refusal_takes_no_token() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=1, per=10)
    await stage(call, upstream)
    for _ in range(5):
        assert (await refused(stage, call, upstream)).retry_after == pytest.approx(10.0, abs=TOLERANCE)
    assert stage.stats()["rejected"] == 5


async def test_a_failed_call_still_spent_its_token() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream(UpstreamTimeout("slow"))
    call = limited(rate=1, per=10)
    with pytest.raises(UpstreamTimeout):
        await stage(call, upstream)
    await refused(stage, call, upstream)
    assert upstream.attempts == 1


async def test_clients_have_their_own_buckets() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    await spend(stage, limited("alice", rate=2), upstream, 2)
    await refused(stage, limited("alice", rate=2), upstream)
    await spend(stage, limited("bob", rate=2), upstream, 2)
    assert upstream.attempts == 4
    assert stage.stats()["buckets"] == 2


async def test_key_tool_isolates_tools_and_shares_across_clients() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    await stage(limited("alice", "search", rate=1, key="tool"), upstream)
    await refused(stage, limited("bob", "search", rate=1, key="tool"), upstream)
    await stage(limited("alice", "fetch", rate=1, key="tool"), upstream)
    assert upstream.attempts == 2


async def test_key_tool_falls_back_to_the_method() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    listing = make_call(upstream=upstream_config(rate_limit={"rate": 1, "key": "tool"}))
    await stage(listing, upstream)
    await refused(stage, listing, upstream)
    await stage(limited("alice", "search", rate=1, key="tool"), upstream)


@pytest.mark.parametrize(("key", "other_upstream_passes"), [("upstream", True), ("global", False)])
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


async def test_random_client_keys_keep_the_map_at_max_keys() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=1, per=60, max_keys=100)
    for _ in range(10_000):
        call.client = f"c{random.getrandbits(64):x}"
        await stage(call, upstream)
    assert upstream.attempts == 10_000
    assert stage.stats()["buckets"] == 100
    await refused(stage, call, upstream)  # the most recent key is kept, with its empty bucket


async def test_the_least_recently_used_key_is_evicted_and_starts_full() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    clients = [limited(f"c{i}", rate=1, per=60, max_keys=2) for i in range(3)]
    for call in clients:
        await stage(call, upstream)
    await refused(stage, clients[2], upstream)
    await stage(clients[0], upstream)  # evicted by c2: a fresh bucket
    assert stage.stats()["buckets"] == 2


async def test_a_short_wait_lets_the_call_through() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=100, burst=1, max_wait=0.5)
    loop = asyncio.get_running_loop()
    await stage(call, upstream)
    started = loop.time()
    await stage(call, upstream)
    assert upstream.attempts == 2
    assert 0.005 <= loop.time() - started < 0.4
    assert stage.stats() == {"buckets": 1, "waiting": 0, "rejected": 0}


async def test_a_wait_that_cannot_succeed_in_time_is_refused_at_once() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=1, max_wait=0.2)
    loop = asyncio.get_running_loop()
    await stage(call, upstream)
    started = loop.time()
    assert (await refused(stage, call, upstream)).retry_after == pytest.approx(1.0, abs=TOLERANCE)
    assert loop.time() - started < 0.05


async def test_retry_after_counts_the_callers_queued_ahead() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=10, burst=1, max_wait=0.15)
    await stage(call, upstream)
    waiter = asyncio.create_task(stage(call, upstream))
    await asyncio.sleep(0)
    assert stage.stats()["waiting"] == 1
    # The queued caller takes the token freed at 0.1 s; the next one frees at 0.2 s, past max_wait.
    assert (await refused(stage, call, upstream)).retry_after == pytest.approx(0.2, abs=TOLERANCE)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_a_cancelled_waiter_takes_no_token() -> None:
    stage, upstream = RateLimitStage(), FakeUpstream()
    call = limited(rate=1, burst=1, max_wait=5)
    await stage(call, upstream)
    waiter = asyncio.create_task(stage(call, upstream))
    await asyncio.sleep(0)
    assert stage.stats()["waiting"] == 1
    assert stage.retry_after(call) == pytest.approx(2.0, abs=TOLERANCE)

    waiter.cancel()  # the client went away while queued
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)  # aiolimiter clears the cancelled waiter in a done-callback
    assert stage.stats() == {"buckets": 1, "waiting": 0, "rejected": 0}
    assert stage.retry_after(call) == pytest.approx(1.0, abs=TOLERANCE)
    assert upstream.attempts == 1


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
