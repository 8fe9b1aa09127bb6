"""One client cannot starve the rest: a per-client cap on open requests, and the pool's own limit is the
proxy's condition, never the upstream's (issue 9, item 6)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from proxy.app import ProxyServer, running_proxy
from proxy.errors import ClientOverloaded
from proxy.events.recorder import EventBus, EventRecorder
from proxy.policies.fairness import ClientSlots
from proxy.ops.metrics import ProxyMetrics
from proxy.runtime import build_runtime
from tests.conftest import proxy_config
from tests.fakes import FakeClock
from tests.fault_upstream import FaultUpstream
from tests.test_forwarding import call_tool, post

LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Poll `condition` (state another task or process changes) until it holds, for at most `within` s."""
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


def test_slots_count_per_client_and_forget_a_client_at_zero() -> None:
    slots = ClientSlots("up")
    slots.acquire("a", 2)
    slots.acquire("a", 2)
    with pytest.raises(ClientOverloaded) as refused:
        slots.acquire("a", 2)
    assert refused.value.error_data() == {"reason": "client_overloaded", "upstream": "up"}
    assert refused.value.status() == 429 and refused.value.code == -32059
    slots.acquire("b", 2)
    assert (slots.open_for("a"), slots.open_for("b"), slots.clients) == (2, 1, 2)
    slots.release("a")
    slots.release("a")
    slots.release("b")
    assert slots.clients == 0  # no entry left behind: the map is bounded by what is in flight


def test_a_reload_keeps_each_clients_count() -> None:
    metrics, clock = ProxyMetrics(), FakeClock()
    config = proxy_config("http://127.0.0.1:1/mcp")
    events = EventRecorder(EventBus())
    first = build_runtime(config, metrics, events, clock)
    first.states["up"].clients.acquire("a", 5)
    tighter = proxy_config("http://127.0.0.1:1/mcp", upstream={"pool": {"max_connections": 2}})
    second = build_runtime(tighter, metrics, events, clock, previous=first)
    assert second.states["up"].clients is first.states["up"].clients
    with pytest.raises(ClientOverloaded):
        second.states["up"].clients.acquire("a", tighter.upstreams[0].pool.client_share)


def test_the_default_share_is_a_quarter_of_the_pool() -> None:
    pool = proxy_config("http://h/mcp").upstreams[0].pool
    assert (pool.max_connections, pool.client_share) == (256, 64)
    assert proxy_config("http://h/mcp", upstream={"pool": {"max_connections": 8}}).upstreams[0].pool.client_share == 2
    assert proxy_config("http://h/mcp", upstream={"pool": {"max_connections": 3}}).upstreams[0].pool.client_share == 1
    assert proxy_config("http://h/mcp", upstream={"pool": {"max_connections": 1}}).upstreams[0].pool.client_share == 1
    assert proxy_config("http://h/mcp", upstream={"pool": {"max_per_client": 7}}).upstreams[0].pool.client_share == 7


def upstream_state(proxy: ProxyServer) -> dict[str, Any]:
    state = proxy.runtime.current.states["up"]
    return {"breakers": [b.state for b in state.breaker.breakers], "health": state.health.state}


async def test_two_clients_at_their_default_cap_leave_room_for_a_third(upstream: FaultUpstream) -> None:
    """One client cannot starve the rest, nor can two: each of two clients opens 4 calls that the upstream
    holds open, in an 8-connection pool. With the default share (a quarter: 2), each gets 2 through and
    2 refused at once (429 client_overloaded); half the pool stays free, so a third client's call and its
    tools/list reach the upstream. (With half the pool each, as before, the two filled it and the third
    waited `timeouts.connect` for a 503.)"""
    upstream.fault("tools/call", "lookup", hang=True)
    config = proxy_config(upstream.url, upstream={"pool": {"max_connections": 8}, "timeouts": {"connect": "300ms"}})
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        busy = {
            name: [asyncio.create_task(post(url, call_tool("lookup", n), headers=bearer(name))) for n in range(4)]
            for name in ("first", "second")
        }
        await eventually(lambda: upstream.attempts["tools/call:lookup"] == 4 and all(
            sum(task.done() for task in tasks) == 2 for tasks in busy.values()
        ))  # fmt: skip
        for tasks in busy.values():
            refused = [task.result() for task in tasks if task.done()]
            assert [(status, headers["X-Mcp-Proxy-Error"]) for status, headers, _ in refused] == [(429, "client_overloaded")] * 2
        assert proxy.runtime.current.states["up"].clients.clients == 2
        third = asyncio.create_task(post(url, call_tool("lookup", 9), headers=bearer("third")))
        await eventually(lambda: upstream.attempts["tools/call:lookup"] == 5)
        assert (await post(url, LIST, headers=bearer("third")))[0] == 200
        assert (upstream.attempts["tools/call:lookup"], upstream.attempts["tools/list"], third.done()) == (5, 1, False)
        every = [*busy["first"], *busy["second"], third]
        for task in every:
            task.cancel()
        await asyncio.gather(*every, return_exceptions=True)


async def test_a_greedy_client_is_refused_alone_and_the_pool_limit_opens_nothing(upstream: FaultUpstream) -> None:
    """The issue's case, scaled down: one client opens far more stuck calls than its share (4 of an
    8-connection pool, set so), another fills the rest, and a third finds no free connection. The greedy
    client's excess is refused at once (429 client_overloaded) without reaching the upstream; the third
    waits `timeouts.connect` and gets 503 proxy_overloaded; nothing counts against the upstream, and
    once the stuck calls end everybody is served again."""
    upstream.fault("tools/call", "lookup", hang=True)
    config = proxy_config(
        upstream.url,
        upstream={
            "pool": {"max_connections": 8, "max_per_client": 4},
            "timeouts": {"connect": "300ms"},
            "breaker": {"failure_threshold": 1},
            "health": {"active": {"enabled": False}, "passive": {"consecutive_failures": 1}},
        },
    )
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        greedy = [asyncio.create_task(post(url, call_tool("lookup", n), headers=bearer("greedy"))) for n in range(20)]
        await eventually(lambda: sum(task.done() for task in greedy) == 16)
        refused = [json.loads(task.result()[2]) for task in greedy if task.done()]
        assert {(r["error"]["code"], r["error"]["data"]["reason"]) for r in refused} == {(-32059, "client_overloaded")}
        assert all(task.result()[0] == 429 and task.result()[1]["X-Mcp-Proxy-Error"] == "client_overloaded"
                   for task in greedy if task.done())  # fmt: skip
        await eventually(lambda: upstream.attempts["tools/call:lookup"] == 4)
        assert (await post(url, LIST, headers=bearer("other")))[0] == 200  # the rest of the pool is free

        other = [asyncio.create_task(post(url, call_tool("lookup", n), headers=bearer("other"))) for n in range(4)]
        await eventually(lambda: upstream.attempts["tools/call:lookup"] == 8)
        status, headers, body = await post(url, LIST, headers=bearer("third"))
        assert (status, headers["X-Mcp-Proxy-Error"], json.loads(body)["error"]["code"]) == (503, "proxy_overloaded", -32058)
        assert upstream.attempts["tools/list"] == 1
        assert upstream_state(proxy) == {"breakers": ["closed"], "health": "healthy"}

        for task in [*greedy, *other]:
            task.cancel()
        await asyncio.gather(*greedy, *other, return_exceptions=True)
        await eventually(lambda: proxy.runtime.current.states["up"].clients.clients == 0)
        assert (await post(url, LIST, headers=bearer("greedy")))[0] == 200
        assert (await post(url, LIST, headers=bearer("third")))[0] == 200


async def test_clients_known_only_by_a_loopback_address_are_counted_never_refused(upstream: FaultUpstream) -> None:
    """Behind a local mesh proxy, and in the quick start, every client comes from 127.0.0.1: a cap per
    address would be one cap for all of them. Past the cap (2 here) every call still reaches the upstream."""
    upstream.fault("tools/call", "lookup", hang=True)
    config = proxy_config(upstream.url, upstream={"pool": {"max_connections": 8, "max_per_client": 2}})
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        held = [asyncio.create_task(post(url, call_tool("lookup", n))) for n in range(5)]
        await eventually(lambda: upstream.attempts["tools/call:lookup"] == 5)
        assert not any(task.done() for task in held)
        assert proxy.runtime.current.states["up"].clients.open_for("addr:127.0.0.1") == 5
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": "s1", "result": {"content": {"type": "text", "text": "sampled"}}},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ],
    ids=["answer-to-the-server", "cancelled", "initialized"],
)
async def test_a_client_at_its_cap_still_answers_the_server_and_cancels(upstream: FaultUpstream, message: dict[str, Any]) -> None:
    """A client whose calls wait on the server (a tool that asked it for a sampling) is at its cap: its
    answer to the server, a cancellation and `initialized` still reach the upstream (refused, the server's
    call hangs), and so does its DELETE (refused, the session leaks)."""
    upstream.fault("tools/call", "lookup", hang=True)
    config = proxy_config(upstream.url, upstream={"pool": {"max_connections": 8, "max_per_client": 2}})
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        held = [asyncio.create_task(post(url, call_tool("lookup", n), headers=bearer("a"))) for n in range(2)]
        await eventually(lambda: upstream.attempts["tools/call:lookup"] == 2)
        assert (await post(url, LIST, headers=bearer("a")))[0] == 429  # at its cap for a request
        status, headers, _ = await post(url, message, headers=bearer("a"))
        assert status == 202 and "X-Mcp-Proxy-Error" not in headers
        async with aiohttp.ClientSession() as session:
            async with session.delete(url, headers={**bearer("a"), "Mcp-Session-Id": "s"}) as response:
                assert response.status != 429
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
