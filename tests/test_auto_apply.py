"""The embedded analyzer: /proposals, and auto-apply inside operator bounds with rollback when worse."""

from __future__ import annotations

import asyncio
import gc
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.analyzer import Change, Match, Proposal
from proxy.analyzer.proposal import Effect
from proxy.analyzer_embedded import within_bounds
from proxy.app import ProxyServer, running_proxy
from proxy.config import AnalyzerConfig, load_config
from tests.fault_upstream import FaultUpstream

READ = {"jsonrpc": "2.0", "method": "resources/read", "params": {"uri": "demo://facts"}}


def proposal(key: str, value: Any) -> Proposal:
    return Proposal(
        rule="timeouts", target="up", title="t", rationale="r", evidence={}, effect=Effect("e"),
        confidence="low", confidence_reason="", changes=(Change("up", Match("resources/read"), key, value, None),),
        advisory=False, diff="",
    )


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [("timeouts.per_try", "500ms", True), ("timeouts.per_try", "5s", False), ("retry.max_attempts", 2, False)],
)
def test_auto_apply_only_inside_declared_bounds(key: str, value: Any, allowed: bool) -> None:
    config = AnalyzerConfig.model_validate({"auto_apply": {"enabled": True, "bounds": {"timeouts.per_try": {"min": "100ms", "max": "2s"}}}})
    assert within_bounds(proposal(key, value), config) is allowed


def file_config(upstream_url: str) -> dict[str, Any]:
    return {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "reload": {"watch": False, "interval": "1h"},
        "events": {"observe_timeouts": "5s", "log": False, "summary_interval": "1h"},
        "analyzer": {
            "enabled": True,
            "interval": "1h",
            "auto_apply": {"enabled": True, "bounds": {"timeouts.per_try": {"min": "100ms", "max": "2s"}}, "verify_after": "30s", "min_calls": 10},
        },
        "upstreams": [
            {
                "name": "docs", "url": upstream_url, "health": {"active": {"enabled": False}},
                "timeouts": {"per_try": "200ms", "total": "1s"}, "retry": {"max_attempts": 1}, "breaker": {"enabled": False},
            }
        ],
    }


async def burst(session: aiohttp.ClientSession, url: str, payload: dict[str, Any], count: int) -> list[int]:
    async def one(n: int) -> int:
        async with session.post(url, json={**payload, "id": n}) as response:
            await response.read()
            return response.status

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def learn(proxy: ProxyServer, session: aiohttp.ClientSession) -> None:
    """25 timed-out reads (observed) and 25 good lists, summarized.

    The reads' observed latencies decide the proposed per_try (p95 x 1.2, rounded up to a readable
    value: 500ms for a 0.4 s upstream), so nothing else may stall the loop meanwhile: a full garbage
    collection of the heap a long test session leaves behind took ~50 ms and made it 750ms.
    """
    gc.collect()
    assert await burst(session, proxy.url + "/mcp", READ, 25) == [504] * 25
    assert await burst(session, proxy.url + "/mcp", {"jsonrpc": "2.0", "method": "tools/list"}, 25) == [200] * 25
    async with asyncio.timeout(15):
        while sum(e["type"] == "timeout_observed" for e in proxy.bus.recent()) < 25:
            await asyncio.sleep(0.05)
    proxy.events.flush_summaries()


async def test_auto_apply_keeps_a_change_that_helps(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("resources/read", delay=0.4)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(file_config(upstream.url)))
    async with running_proxy(load_config(path.read_text(), {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        assert proxy.analyzer is not None
        await learn(proxy, session)
        now = time.time()
        proxy.analyzer.step(now)
        applied = [e for e in proxy.bus.recent() if e["type"] == "proposal_applied"]
        assert len(applied) == 1 and applied[0]["error_rate_before"] == 0.5
        assert "per_try: 500ms" in path.read_text()
        async with session.post(proxy.admin_url + "/reload") as response:
            assert response.status == 200
        assert await burst(session, proxy.url + "/mcp", READ, 25) == [200] * 25
        proxy.events.flush_summaries()
        proxy.analyzer.step(now + 31)
        async with session.get(proxy.admin_url + "/proposals") as response:
            document = await response.json()
    (kept,) = [e for e in proxy.bus.recent() if e["type"] == "proposal_kept"]
    assert (kept["error_rate_after"], kept["verified"]) == (0.0, True)
    assert "per_try: 500ms" in path.read_text()
    assert document["auto_apply"] is True and document["verifying"] is None


async def test_auto_apply_rolls_back_a_change_that_hurts(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("resources/read", delay=0.4)
    path = tmp_path / "proxy.yaml"
    original = yaml.safe_dump(file_config(upstream.url))
    path.write_text(original)
    async with running_proxy(load_config(original, {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        assert proxy.analyzer is not None
        await learn(proxy, session)
        now = time.time()
        proxy.analyzer.step(now)
        assert path.read_text() != original
        proxy.bus.publish({"v": 1, "type": "call_ok", "upstream": "docs", "method": "tools/list", "tool": None, "calls": 40, "ok": 4})
        proxy.analyzer.step(now + 31)
    (rolled,) = [e for e in proxy.bus.recent() if e["type"] == "proposal_rolled_back"]
    assert (rolled["error_rate_before"], rolled["error_rate_after"]) == (0.5, 0.9)
    assert path.read_text() == original


async def test_proposals_endpoint_says_when_the_analyzer_is_off(upstream: FaultUpstream) -> None:
    from tests.conftest import proxy_config

    async with running_proxy(proxy_config(upstream.url)) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.admin_url + "/proposals") as response:
            assert response.status == 404
            assert "analyzer" in (await response.json())["error"]


async def test_a_rollback_never_overwrites_an_operators_later_edit(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("resources/read", delay=0.4)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(file_config(upstream.url)))
    path.chmod(0o600)
    async with running_proxy(load_config(path.read_text(), {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        assert proxy.analyzer is not None
        await learn(proxy, session)
        now = time.time()
        proxy.analyzer.step(now)
        edited = path.read_text() + "# the operator was here\n"
        path.write_text(edited)
        proxy.bus.publish({"v": 1, "type": "call_ok", "upstream": "docs", "method": "tools/list", "tool": None, "calls": 40, "ok": 4})
        proxy.analyzer.step(now + 31)
    (kept,) = [e for e in proxy.bus.recent() if e["type"] == "proposal_kept"]
    assert kept["verified"] is False and "edited since" in kept["note"]
    assert path.read_text() == edited and path.stat().st_mode & 0o777 == 0o600
