"""Real failures through a real proxy (in-process, a fault-injecting upstream on 127.0.0.1): every event
they produce is typed (the recorder is strict: a malformed emission fails the test) and validates against
the exported JSON Schema. Between them the scenarios produce every kind the proxy emits while serving
(the analyzer's proposals are `tests/test_auto_apply.py`'s; their emissions are checked statically in
`tests/test_event_types.py`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml

from proxy.app import ProxyServer, running_proxy
from proxy.config.model import load_config
from proxy.events.bus import Subscription
from proxy.events.recorder import EventRecorder
from tests.conftest import REPO, proxy_config
from tests.fault_upstream import FaultUpstream
from tests.test_forwarding import JSON_HEADERS

LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
READ = {"jsonrpc": "2.0", "id": 2, "method": "resources/read", "params": {"uri": "demo://x"}}
FAST_RETRY = {"max_attempts": 2, "backoff": {"base": "1ms", "max": "1ms"}}
QUIET = {"summary_interval": "1h"}

Scenario = Callable[[FaultUpstream, Path], Awaitable[list[dict[str, Any]]]]


@pytest.fixture(autouse=True)
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EventRecorder, "strict", True)


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((REPO / "config" / "events.schema.json").read_text()))


async def post(url: str, payload: dict[str, Any], **headers: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=payload, headers={**JSON_HEADERS, **headers}) as response:
            await response.read()
            return response.status


async def until(subscription: Subscription, kind: str) -> None:
    """Wait (bounded) for the next event of `kind` on the bus."""
    async with asyncio.timeout(30):
        while (await subscription.get())["type"] != kind:
            pass


def events_of(proxy: ProxyServer) -> list[dict[str, Any]]:
    proxy.events.flush_summaries()
    return proxy.bus.recent()


@pytest.fixture
async def proxied(upstream: FaultUpstream) -> AsyncIterator[Callable[..., Any]]:
    def start(**upstream_config: Any) -> Any:
        return running_proxy(proxy_config(upstream.url, upstream=upstream_config, events=QUIET))

    yield start


async def retries_and_the_breaker(upstream: FaultUpstream, start: Callable[..., Any]) -> list[dict[str, Any]]:
    upstream.fault("tools/list", status=503)
    async with start(retry=FAST_RETRY, breaker={"failure_threshold": 2, "reset_timeout": "1h"}) as proxy:
        for _ in range(2):
            await post(proxy.url + "/mcp", LIST)
        return events_of(proxy)


async def an_observed_timeout(upstream: FaultUpstream, start: Callable[..., Any]) -> list[dict[str, Any]]:
    upstream.fault("resources/read", delay=0.3)
    config = proxy_config(
        upstream.url, upstream={"timeouts": {"per_try": "100ms"}, "retry": {"max_attempts": 1}},
        events={**QUIET, "observe_timeouts": "1h"},
    )  # fmt: skip
    async with running_proxy(config) as proxy:
        subscription = proxy.bus.subscribe()
        assert await post(proxy.url + "/mcp", READ) == 504
        await until(subscription, "timeout_observed")
        return events_of(proxy)


async def the_rate_limit(upstream: FaultUpstream, start: Callable[..., Any]) -> list[dict[str, Any]]:
    async with start(rate_limit={"rate": 1, "per": "1h", "burst": 1}) as proxy:
        statuses = [await post(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": n, "method": "ping"}) for n in range(2)]
        assert statuses == [200, 429]
        return events_of(proxy)


async def the_cache(upstream: FaultUpstream, start: Callable[..., Any]) -> list[dict[str, Any]]:
    async with start(cache={"mode": "ttl", "ttl": "1m"}) as proxy:
        assert [await post(proxy.url + "/mcp", READ) for _ in range(2)] == [200, 200]
        events = events_of(proxy)
    async with start(retry={"max_attempts": 1}, cache={"mode": "fallback", "ttl": "0s", "max_stale": "1h"}) as proxy:
        assert await post(proxy.url + "/mcp", READ) == 200
        upstream.fault("resources/read", status=500)
        assert await post(proxy.url + "/mcp", READ) == 200
        return events + events_of(proxy)


async def a_lost_session(upstream: FaultUpstream, start: Callable[..., Any]) -> list[dict[str, Any]]:
    upstream.fault("tools/list", status=404)
    async with start(retry={"max_attempts": 1}) as proxy:
        assert await post(proxy.url + "/mcp", LIST, **{"Mcp-Session-Id": "gone"}) == 404
        return events_of(proxy)


async def passive_health(upstream: FaultUpstream, start: Callable[..., Any]) -> list[dict[str, Any]]:
    upstream.fault("tools/list", drop="before_headers")
    health = {"active": {"enabled": False}, "passive": {"consecutive_failures": 1}}
    async with start(retry={"max_attempts": 1}, health=health) as proxy:
        subscription = proxy.bus.subscribe()
        await post(proxy.url + "/mcp", LIST)
        await until(subscription, "health_changed")
        return events_of(proxy)


async def reloads(upstream: FaultUpstream, path: Path) -> list[dict[str, Any]]:
    def config(max_attempts: int) -> str:
        upstreams = [{"name": "up", "url": upstream.url, "health": {"active": {"enabled": False}}, "retry": {"max_attempts": max_attempts}}]
        raw = {"listen": {"port": 0}, "admin": {"port": 0}, "reload": {"interval": "1h", "watch": False}, "upstreams": upstreams, "events": QUIET}
        return yaml.safe_dump(raw)

    path.write_text(config(2))
    async with running_proxy(load_config(path.read_text(), {}), config_path=path) as proxy:
        async with aiohttp.ClientSession() as session:
            for attempts in (0, 3):
                path.write_text(config(attempts))
                async with session.post(proxy.admin_url + "/reload") as response:
                    await response.read()
        return events_of(proxy)


SERVING = ("retry", "retry_exhausted", "call_failed", "breaker_state", "circuit_open", "timeout", "timeout_observed",
           "rate_limited", "fallback_served", "session_lost", "health_changed", "config_rejected", "config_reloaded", "call_ok")  # fmt: skip


async def test_every_event_real_failures_produce_is_typed_and_fits_the_exported_schema(
    upstream: FaultUpstream, proxied: Callable[..., Any], tmp_path: Path, validator: jsonschema.Draft202012Validator
) -> None:
    events: list[dict[str, Any]] = []
    for scenario in (retries_and_the_breaker, an_observed_timeout, the_rate_limit, the_cache, a_lost_session, passive_health):
        upstream.faults.clear()
        events += await scenario(upstream, proxied)
    events += await reloads(upstream, tmp_path / "proxy.yaml")
    for event in events:
        validator.validate(event)
    assert set(SERVING) <= {e["type"] for e in events}, set(SERVING) - {e["type"] for e in events}
    statuses = {e["status"] for e in events if e["type"] == "fallback_served"}
    assert statuses == {"hit", "stale"}
