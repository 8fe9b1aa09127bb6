"""Shared fixtures: a fault-injecting upstream, an in-process proxy, and the proxy as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, settings

from proxy.app import ProxyServer, running_proxy
from proxy.config.model import ProxyConfig
from proxy.mcp import sse
from tests.fault_upstream import FaultUpstream

REPO = Path(__file__).resolve().parent.parent

# Property tests: no deadline (a slow machine is not a failure) and derandomized, so a CI run is
# reproducible; `HYPOTHESIS_PROFILE=explore` searches with fresh seeds and more examples.
settings.register_profile(
    "ci", deadline=None, derandomize=True, max_examples=200, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", deadline=None, max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def proxy_config(upstream_url: str, **overrides: Any) -> ProxyConfig:
    """A config with one upstream at /mcp, free ports, and `overrides` merged in at the top level.

    Active health probes are off unless a test turns them on: they would add requests to the
    upstream's exact attempt counts.
    """
    upstream = {"name": "up", "url": upstream_url, "health": {"active": {"enabled": False}}, **overrides.pop("upstream", {})}
    raw: dict[str, Any] = {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "upstreams": [upstream],
        **overrides,
    }
    return ProxyConfig.model_validate(raw)


@pytest.fixture
async def upstream() -> AsyncIterator[FaultUpstream]:
    server = FaultUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def proxy(upstream: FaultUpstream) -> AsyncIterator[ProxyServer]:
    async with running_proxy(proxy_config(upstream.url)) as server:
        yield server


class ProxyProcess:
    """The proxy run as a user runs it: `python -m proxy serve --config FILE`, in its own process."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, admin_url: str) -> None:
        self.process = process
        self.url = url
        self.admin_url = admin_url
        self.log_lines: list[dict[str, Any]] = []

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode or 0


async def start_proxy_process(config: dict[str, Any], tmp_path: Path) -> ProxyProcess:
    """Write `config` as YAML, start the proxy, and wait for its `proxy_started` log line."""
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return await launch_proxy([sys.executable, "-m", "proxy", "serve", "--config", str(path)])


PROXY_COMMAND = Path(sys.executable).parent / "mcp-resilience-proxy"
"""The console script pip installed beside the interpreter running the tests (``.venv/bin``)."""


async def start_proxy_cli(upstream_url: str) -> ProxyProcess:
    """The README's quick start as a user types it: ``mcp-resilience-proxy serve --upstream URL``.

    Default settings for everything; only the two listeners are given, on 127.0.0.1 with ports the
    OS picks (read back from the `proxy_started` line), so parallel or repeated runs never collide.
    """
    argv = [str(PROXY_COMMAND), "serve", "--upstream", upstream_url, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
    return await launch_proxy(argv)


async def launch_proxy(argv: list[str]) -> ProxyProcess:
    """Run a proxy command line (cwd: the repo) and wait for its `proxy_started` log line."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    lines: list[dict[str, Any]] = []
    async with asyncio.timeout(30):
        while True:
            raw = await process.stderr.readline()
            if not raw:
                raise RuntimeError(f"proxy exited early: {lines}")
            line = json.loads(raw)
            lines.append(line)
            if line.get("event") == "proxy_started":
                break
    started = ProxyProcess(process, line["listen"], line["admin"])
    started.log_lines = lines

    async def collect() -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            try:
                started.log_lines.append(json.loads(raw))
            except ValueError:
                started.log_lines.append({"raw": raw.decode(errors="replace")})

    started.collector = asyncio.ensure_future(collect())  # type: ignore[attr-defined]
    return started


@pytest.fixture
async def proxy_process(tmp_path: Path) -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[ProxyProcess]]]:
    started: list[ProxyProcess] = []

    async def start(config: dict[str, Any]) -> ProxyProcess:
        process = await start_proxy_process(config, tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        await process.stop()


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every JSON text the SSE watcher parses, in order: its own reference to orjson is replaced by one
    that records each `loads` (the relay and the watcher tests hold each event parsed at most once)."""
    seen: list[str] = []

    class Recording:
        JSONDecodeError = orjson.JSONDecodeError

        @staticmethod
        def loads(data: str) -> Any:
            seen.append(data)
            return orjson.loads(data)

    monkeypatch.setattr(sse, "orjson", Recording)
    return seen


@pytest.fixture(autouse=True)
def _strict_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every in-process test raises on a malformed event emission (unknown kind, missing or unknown
    field), where serving would log ``event_malformed`` and publish it untyped."""
    from proxy.events.recorder import EventRecorder

    monkeypatch.setattr(EventRecorder, "strict", True)
