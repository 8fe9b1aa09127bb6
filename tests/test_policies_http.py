"""Resilience policies end to end over real HTTP: client -> proxy (in process) -> fault-injecting upstream.

Counts are exact: `upstream.attempts` is what the upstream really received.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from proxy.app import running_proxy
from proxy.config.model import ConfigError, UpstreamConfig, load_config
from proxy.errors import NeverSent
from proxy.upstream.transport import HttpUpstream
from tests.conftest import proxy_config
from tests.fakes import first, make_call
from tests.fault_upstream import FaultUpstream
from tests.test_forwarding import JSON_HEADERS, call_tool

FAST_RETRY = {"backoff": {"base": "1ms", "max": "2ms"}}


async def send(url: str, payload: dict[str, Any], **headers: str) -> tuple[int, dict[str, str], Any]:
    """POST one JSON-RPC message; the body comes back parsed when it is JSON, as bytes otherwise."""
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=payload, headers={**JSON_HEADERS, **headers}) as response:
            raw = await response.read()
            is_json = response.content_type == "application/json"
            return response.status, dict(response.headers), json.loads(raw) if is_json else raw


async def test_read_only_tool_failing_twice_is_retried_to_success(upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "lookup", status=503, times=2)
    config = proxy_config(upstream.url, upstream={"trust_annotations": True, "retry": FAST_RETRY})
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        await send(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})  # the proxy learns lookup is read-only
        status, _, body = await send(url, call_tool("lookup", 2))
    assert status == 200
    assert body["result"]["content"][0]["text"] == "lookup ok #3"
    assert upstream.attempts["tools/call:lookup"] == 3


async def test_annotations_are_ignored_unless_the_upstream_is_trusted(upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "lookup", status=503, times=2)
    async with running_proxy(proxy_config(upstream.url, upstream={"retry": FAST_RETRY})) as proxy:
        url = proxy.url + "/mcp"
        await send(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        status, _, _ = await send(url, call_tool("lookup", 2))
    assert status == 503
    assert upstream.attempts["tools/call:lookup"] == 1


async def test_non_idempotent_tool_timing_out_runs_exactly_once(upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "create_ticket", hang=True)
    config = proxy_config(upstream.url, upstream={"timeouts": {"per_try": "150ms"}, "retry": FAST_RETRY})
    async with running_proxy(config) as proxy:
        status, headers, body = await send(proxy.url + "/mcp", call_tool("create_ticket", 5))
    assert status == 504
    assert body["id"] == 5
    assert body["error"]["code"] == -32051 and body["error"]["data"]["reason"] == "upstream_timeout"
    assert headers["X-Mcp-Proxy-Error"] == "upstream_timeout"
    assert upstream.attempts["tools/call:create_ticket"] == 1


async def test_connection_refused_is_never_sent(unused_tcp_port: int) -> None:
    config = UpstreamConfig.model_validate({"name": "up", "url": f"http://127.0.0.1:{unused_tcp_port}/mcp"})
    transport = HttpUpstream(config, proxy_config("http://127.0.0.1:1/mcp").limits)
    await transport.start()
    try:
        with pytest.raises(NeverSent):
            await transport.send(first(make_call(upstream=config)))
    finally:
        await transport.close()


async def test_retry_budget_bounds_a_storm_against_a_dead_upstream(upstream: FaultUpstream) -> None:
    upstream.fault("tools/list", status=503)
    retry = {**FAST_RETRY, "max_attempts": 3, "budget": {"ratio": 0.2, "min_per_second": 1, "window": "1m"}}
    config = proxy_config(upstream.url, upstream={"retry": retry, "breaker": {"enabled": False}})
    async with running_proxy(config) as proxy:
        for n in range(200):
            status, _, _ = await send(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": n, "method": "tools/list"})
            assert status == 503
    floor = 1 * 60
    assert 200 < upstream.attempts["tools/list"] <= (1 + 0.2) * 200 + floor


def assert_retry_after(retry_after: float, header: str, full: float, elapsed: float) -> None:
    """`retryAfter` is the `full` wait less the time that passed since it started, which lies within
    `elapsed` (the client's measure, on the same clock, around it); `Retry-After` is it in whole
    seconds, rounded (`retryAfter` itself is rounded to the millisecond), and never 0."""
    assert full - elapsed - 0.0005 <= retry_after <= full
    assert int(header) >= 1 and abs(int(header) - retry_after) <= 0.5 + 0.0005


async def test_breaker_opens_and_fails_fast(upstream: FaultUpstream) -> None:
    upstream.fault("tools/list", status=500)
    config = proxy_config(
        upstream.url, upstream={"retry": {"max_attempts": 1}, "breaker": {"failure_threshold": 2, "reset_timeout": "1h"}}
    )
    async with running_proxy(config) as proxy:
        assert (await send(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": 0, "method": "tools/list"}))[0] == 500
        started = time.monotonic()  # the proxy's clock (MonotonicClock); the breaker opens after this
        assert (await send(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))[0] == 500
        status, headers, body = await send(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
        elapsed = time.monotonic() - started
    assert status == 503
    assert body["id"] == 7 and body["error"]["code"] == -32052
    assert body["error"]["data"]["reason"] == "circuit_open"
    assert_retry_after(body["error"]["data"]["retryAfter"], headers["Retry-After"], 3600, elapsed)
    assert upstream.attempts["tools/list"] == 2


async def test_rate_limit_refuses_past_the_burst(upstream: FaultUpstream) -> None:
    config = proxy_config(upstream.url, upstream={"rate_limit": {"rate": 1, "per": "1h", "burst": 2}})
    loop = asyncio.get_running_loop()
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        started = loop.time()  # the limiter's clock; its bucket starts draining after this
        assert [(await send(url, {"jsonrpc": "2.0", "id": n, "method": "ping"}))[0] for n in range(2)] == [200, 200]
        status, headers, body = await send(url, {"jsonrpc": "2.0", "id": 3, "method": "ping"})
        elapsed = loop.time() - started
    assert status == 429
    assert body["error"]["code"] == -32053 and body["error"]["data"]["reason"] == "rate_limited"
    # Two tokens spent of two: the third frees one hour (1/rate) after the first was taken.
    assert_retry_after(body["error"]["data"]["retryAfter"], headers["Retry-After"], 3600, elapsed)
    assert upstream.attempts["ping"] == 2


async def test_upstream_429_with_a_retry_after_too_long_to_wait_reaches_the_client_as_it_was(upstream: FaultUpstream) -> None:
    upstream.fault("tools/list", status=429, retry_after="120")
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        status, headers, body = await send(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": 4, "method": "tools/list"})
    assert (status, headers["Retry-After"], body) == (429, "120", b"upstream says no")
    assert "X-Mcp-Proxy-Error" not in headers
    assert upstream.attempts["tools/list"] == 1  # 120 s is over backoff.max_retry_after: not waited for


def test_rules_cannot_set_the_pool_connect_timeout() -> None:
    with pytest.raises(ConfigError, match=r"rules\[0\]: timeouts.connect belongs to the upstream"):
        load_config("upstreams: [{name: a, url: 'http://h/mcp', rules: [{match: {tool: x}, timeouts: {connect: 1s}}]}]", {})


async def test_fallback_serves_a_stale_answer_while_the_upstream_is_down(upstream: FaultUpstream) -> None:
    config = proxy_config(
        upstream.url, upstream={"retry": {"max_attempts": 1}, "cache": {"mode": "fallback", "ttl": "0s", "max_stale": "1h"}}
    )
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        status, _, fresh = await send(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, Authorization="Bearer a")
        upstream.fault("tools/list", status=503)
        status, headers, stale = await send(url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, Authorization="Bearer a")
        other_status, _, other = await send(url, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, Authorization="Bearer b")
    assert status == 200 and headers["X-Mcp-Proxy-Cache"] == "stale"
    assert stale["id"] == 2
    assert stale["result"]["tools"] == fresh["result"]["tools"]
    assert stale["result"]["_meta"]["io.github.mcp-resilience-proxy/cache"]["status"] == "stale"
    assert other_status == 503  # another Authorization never sees tenant a's answer
    assert upstream.attempts["tools/list"] == 3


async def test_ttl_cache_single_flight_under_50_concurrent_misses(upstream: FaultUpstream) -> None:
    upstream.fault("resources/read", delay=0.2)
    config = proxy_config(upstream.url, upstream={"cache": {"mode": "ttl", "ttl": "1m"}})
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        read = {"method": "resources/read", "params": {"uri": "demo://facts"}}
        answers = await asyncio.gather(*(send(url, {"jsonrpc": "2.0", "id": n, **read}) for n in range(50)))
        again = await send(url, {"jsonrpc": "2.0", "id": 99, **read})
    assert [body["id"] for _, _, body in answers] == list(range(50))
    assert all(status == 200 for status, _, _ in answers)
    assert again[1]["X-Mcp-Proxy-Cache"] == "hit" and again[2]["id"] == 99
    assert upstream.attempts["resources/read"] == 1


@pytest.mark.parametrize("retry_after", ["²", "9" * 400, "soon"])
async def test_odd_retry_after_values_never_break_the_answer(upstream: FaultUpstream, retry_after: str) -> None:
    upstream.fault("tools/call", "create_ticket", status=429, retry_after=retry_after)
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        status, headers, body = await send(proxy.url + "/mcp", call_tool("create_ticket", 5))
    assert (status, body) == (429, b"upstream says no")  # the upstream's answer, whatever its Retry-After says


async def test_batches_never_skip_the_limits(upstream: FaultUpstream) -> None:
    config = proxy_config(upstream.url, upstream={"rate_limit": {"rate": 2, "per": "1m", "burst": 2}})
    batch = [{"jsonrpc": "2.0", "id": n, "method": "ping"} for n in range(3)]
    async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
        url = proxy.url + "/mcp"
        async with session.post(url, json=batch, headers={**JSON_HEADERS, "MCP-Protocol-Version": "2025-11-25"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["message"] == "JSON-RPC batches are not part of MCP 2025-11-25"
        old = {**JSON_HEADERS, "MCP-Protocol-Version": "2025-03-26"}
        async with session.post(url, json=batch[:2], headers=old) as response:
            assert response.status == 200  # two requests, two tokens
        async with session.post(url, json=batch[:1], headers=old) as response:
            assert response.status == 429
            assert (await response.json())["error"]["data"]["reason"] == "rate_limited"
    assert upstream.attempts["ping"] == 2


async def test_a_rules_rate_limit_is_its_own_rate_not_the_upstreams_burst(upstream: FaultUpstream) -> None:
    """A rule that slows one tool to 1 call a minute under a generous upstream limit (100/s, bursts of
    200) lets exactly one call through: the upstream's burst is not inherited by a rule's own rate."""
    config = proxy_config(upstream.url, upstream={
        "rate_limit": {"rate": 100, "burst": 200, "key": "tool"},
        "rules": [{"match": {"tool": "export"}, "rate_limit": {"rate": 1, "per": "1m"}}],
    })  # fmt: skip
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        first = await send(url, call_tool("export", 1))
        second = await send(url, call_tool("export", 2))
        other = await send(url, call_tool("lookup", 3))
    assert (first[0], second[0], other[0]) == (200, 429, 200)
    assert second[2]["error"]["data"]["reason"] == "rate_limited"
    assert upstream.attempts["tools/call:export"] == 1
