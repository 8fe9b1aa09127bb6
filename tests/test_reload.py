"""Hot reload and graceful drain, as an operator meets them.

The ConfigMap case reproduces what the kubelet does (a new timestamped directory, a `..data_tmp`
symlink renamed over `..data`); waits are bounded polls of the proxy's own state, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.app import running_proxy
from proxy.config.model import load_config
from tests.conftest import ProxyProcess, proxy_config
from tests.fault_upstream import FaultUpstream

LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def config_dict(upstream_url: str, max_attempts: int = 3, **top: Any) -> dict[str, Any]:
    return {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "reload": {"interval": "100ms", "watch": True},
        "upstreams": [
            {
                "name": "up",
                "url": upstream_url,
                "health": {"active": {"enabled": False}},
                "retry": {"max_attempts": max_attempts, "backoff": {"base": "1ms", "max": "1ms"}},
            }
        ],
        **top,
    }


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll `predicate` (bounded) until it holds: the reloader works on its own schedule."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


class ConfigMapDir:
    """A directory laid out like a mounted ConfigMap, updated the way the kubelet updates it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0

    @property
    def path(self) -> Path:
        return self.root / "proxy.yaml"

    def publish(self, text: str) -> None:
        self.version += 1
        target = self.root / f"..2026_11_22_00_00_{self.version:02d}.000000001"
        target.mkdir()
        (target / "proxy.yaml").write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(target.name)
        os.replace(tmp, self.root / "..data")  # the atomic swap
        if not self.path.is_symlink():
            self.path.symlink_to("..data/proxy.yaml")


async def test_configmap_symlink_swap_is_picked_up_twice_in_a_row(upstream: FaultUpstream, tmp_path: Path) -> None:
    configmap = ConfigMapDir(tmp_path)
    configmap.publish(yaml.safe_dump(config_dict(upstream.url, max_attempts=3)))
    config = load_config(configmap.path.read_text(), {})
    async with running_proxy(config, config_path=configmap.path) as proxy:
        for attempts in (5, 7):
            configmap.publish(yaml.safe_dump(config_dict(upstream.url, max_attempts=attempts)))
            await eventually(
                lambda: proxy.runtime.current.config.upstreams[0].retry.max_attempts == attempts, f"max_attempts={attempts}"
            )
        assert proxy.reloader is not None and proxy.reloader.applied == 2 and proxy.reloader.rejected == 0


async def test_invalid_file_keeps_the_old_config_and_says_why(upstream: FaultUpstream, tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config_dict(upstream.url)))
    async with running_proxy(load_config(path.read_text(), {}), config_path=path) as proxy:
        before = proxy.runtime.current
        bad = config_dict(upstream.url)
        bad["upstreams"][0]["retry"]["max_attempts"] = 0
        path.write_text(yaml.safe_dump(bad))
        await eventually(lambda: proxy.reloader is not None and proxy.reloader.rejected == 1, "rejected")
        assert proxy.runtime.current is before
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.admin_url + "/status") as response:
                status = await response.json()
            async with session.post(proxy.url + "/mcp", json=LIST) as response:
                assert response.status == 200
            async with session.get(proxy.admin_url + "/metrics") as response:
                metrics = await response.text()
        events = [e for e in proxy.bus.recent() if e["type"] == "config_rejected"]
    assert [e["errors"] for e in events] == [["upstreams[0].retry.max_attempts: must be >= 1 (got 0)"]]
    assert status["config"]["last_reload"]["outcome"] == "rejected"
    assert status["config"]["last_reload"]["errors"] == ["upstreams[0].retry.max_attempts: must be >= 1 (got 0)"]
    assert status["config"]["hash"] == before.config_hash
    assert 'mcp_proxy_config_reloads_total{result="rejected"} 1.0' in metrics


async def test_reload_under_load_drops_no_call(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("tools/list", delay=0.002)
    path = tmp_path / "proxy.yaml"
    base = config_dict(upstream.url, reload={"watch": False, "interval": "1h"})
    path.write_text(yaml.safe_dump(base))
    async with running_proxy(load_config(path.read_text(), {}), config_path=path) as proxy:
        stop = asyncio.Event()
        outcomes: list[int] = []

        async def client() -> None:
            async with aiohttp.ClientSession() as session:
                while not stop.is_set():
                    async with session.post(proxy.url + "/mcp", json=LIST) as response:
                        await response.read()
                        outcomes.append(response.status)

        clients = [asyncio.create_task(client()) for _ in range(4)]
        results: list[int] = []
        async with aiohttp.ClientSession() as admin:
            for version in range(20):
                valid = version % 2 == 0
                doc = config_dict(upstream.url, max_attempts=2 + version, reload={"watch": False, "interval": "1h"})
                text = yaml.safe_dump(doc) if valid else yaml.safe_dump(doc).replace("max_attempts", "max_atempts")
                path.write_text(text)
                async with admin.post(proxy.admin_url + "/reload") as response:
                    results.append(response.status)
                await eventually(lambda: len(outcomes) > 5 * (version + 1), "traffic between reloads")
        stop.set()
        await asyncio.gather(*clients)
        assert proxy.reloader is not None
        assert (proxy.reloader.applied, proxy.reloader.rejected) == (10, 10)
        assert proxy.runtime.current.config.upstreams[0].retry.max_attempts == 2 + 18
    assert results == [200, 422] * 10
    assert set(outcomes) == {200} and len(outcomes) > 100


async def test_unchanged_breaker_keeps_its_state_across_a_reload(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("tools/list", status=500)
    path = tmp_path / "proxy.yaml"
    doc = config_dict(upstream.url, max_attempts=1, reload={"watch": False, "interval": "1h"})
    doc["upstreams"][0]["breaker"] = {"failure_threshold": 1, "reset_timeout": "1h"}
    path.write_text(yaml.safe_dump(doc))
    async with running_proxy(load_config(path.read_text(), {}), config_path=path) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/mcp", json=LIST) as response:
                assert response.status == 500
            doc["upstreams"][0]["timeouts"] = {"per_try": "9s"}  # another policy changes, the breaker does not
            path.write_text(yaml.safe_dump(doc))
            async with session.post(proxy.admin_url + "/reload") as response:
                assert response.status == 200
            async with session.post(proxy.url + "/mcp", json=LIST) as response:
                assert response.status == 503
                assert (await response.json())["error"]["data"]["reason"] == "circuit_open"
            doc["upstreams"][0]["breaker"]["failure_threshold"] = 2  # the breaker changes: it starts closed
            path.write_text(yaml.safe_dump(doc))
            async with session.post(proxy.admin_url + "/reload") as response:
                assert response.status == 200
            async with session.post(proxy.url + "/mcp", json=LIST) as response:
                assert response.status == 500
    assert upstream.attempts["tools/list"] == 2


async def test_sighup_reloads_a_running_process(
    upstream: FaultUpstream, proxy_process: Callable[[dict[str, Any]], Awaitable[ProxyProcess]], tmp_path: Path
) -> None:
    doc = config_dict(upstream.url, reload={"watch": False, "interval": "1h"})
    proxy = await proxy_process(doc)
    doc["upstreams"][0]["retry"]["max_attempts"] = 9
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(doc))
    proxy.process.send_signal(signal.SIGHUP)

    async def last_reload() -> Any:
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.admin_url + "/status") as response:
                return (await response.json())["config"]["last_reload"]

    async with asyncio.timeout(10):
        while (reload := await last_reload()) is None:
            await asyncio.sleep(0.05)
    assert (reload["outcome"], reload["trigger"]) == ("applied", "sighup")


async def test_sigterm_lets_the_call_in_flight_finish_and_refuses_new_connections(
    upstream: FaultUpstream, proxy_process: Callable[[dict[str, Any]], Awaitable[ProxyProcess]]
) -> None:
    held = asyncio.Event()  # the call stays in flight until the test has seen the drain begin
    upstream.fault("tools/call", "slow", gate=held)
    doc = config_dict(upstream.url, drain_timeout="1h")
    doc["upstreams"][0]["timeouts"] = {"per_try": "1h", "total": "1h"}  # only the gate ends the call
    proxy = await proxy_process(doc)
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "slow", "arguments": {}}}
    async with aiohttp.ClientSession() as session:
        in_flight = asyncio.create_task(session.post(proxy.url + "/mcp", json=call))
        try:
            async with asyncio.timeout(10):  # the call, not just any request, reached the upstream
                while not upstream.attempts["tools/call:slow"]:
                    upstream.arrived.clear()
                    await upstream.arrived.wait()
            proxy.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                while True:
                    async with session.get(proxy.admin_url + "/readyz") as response:
                        if response.status == 503:
                            break
                    await asyncio.sleep(0.01)
            async with aiohttp.ClientSession() as fresh:
                with pytest.raises(aiohttp.ClientConnectorError):
                    await fresh.post(proxy.url + "/mcp", json=LIST)
            assert not in_flight.done() and proxy.process.returncode is None
        finally:
            held.set()
        response = await in_flight
        assert response.status == 200
        assert (await response.json())["result"]["content"][0]["text"] == "slow ok #1"
    assert await asyncio.wait_for(proxy.process.wait(), 30) == 0


async def test_readyz_follows_upstream_health(upstream: FaultUpstream) -> None:
    config = proxy_config(
        upstream.url,
        upstream={"health": {"active": {"interval": "1h", "unhealthy_threshold": 3, "healthy_threshold": 2}}},
    )
    async with running_proxy(config) as proxy:
        state = proxy.runtime.current.states["up"]
        assert state.prober is not None
        await eventually(lambda: state.health.state == "healthy", "the first probe")

        async def readyz() -> int:
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.admin_url + "/readyz") as response:
                    return response.status

        assert await readyz() == 200
        upstream.fault("server/discover", status=500)
        seen = []
        for _ in range(3):
            await state.prober.probe_once()
            seen.append(await readyz())
        assert seen == [200, 200, 503]
        upstream.faults.clear()
        seen = []
        for _ in range(2):
            await state.prober.probe_once()
            seen.append(await readyz())
        assert seen == [503, 200]
        assert upstream.attempts["server/discover"] == 1 + 3 + 2


async def test_a_pool_retired_by_a_reload_is_closed_when_the_proxy_stops_before_its_drain_time(
    upstream: FaultUpstream,
) -> None:
    other = FaultUpstream()
    await other.start()
    try:
        async with running_proxy(proxy_config(upstream.url, drain_timeout="1h")) as proxy:
            old = proxy.runtime.current.states["up"].transport
            await proxy.apply(proxy_config(other.url, drain_timeout="1h"))
            assert proxy.runtime.current.states["up"].transport is not old
            assert old._pool is not None  # noqa: SLF001 - retired, waiting out its drain time
        assert old._pool is None  # noqa: SLF001 - closed by stop(), not left open
    finally:
        await other.stop()


async def test_a_missing_file_and_an_empty_file_are_rejected_each_with_its_own_reason(
    upstream: FaultUpstream, tmp_path: Path
) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config_dict(upstream.url)))
    async with running_proxy(load_config(path.read_text(), {}), config_path=path) as proxy:
        assert proxy.reloader is not None
        before = proxy.runtime.current
        path.unlink()
        missing = await proxy.reloader.check("test")
        path.write_text("")
        empty = await proxy.reloader.check("test")
        assert proxy.runtime.current is before
    assert missing.errors == (f"cannot read {path}: No such file or directory",)
    assert empty.errors and not empty.errors[0].startswith("cannot read")
