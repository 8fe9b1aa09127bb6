"""Fixtures of the harm suite: shared real servers, and a fresh default proxy per test.

* ``upstreams`` (package scope): each real server is started once, on first use, and shared by every
  test that only talks to it (the servers keep per-session state, and every test makes sessions of
  its own). Tests that restart a server get a private instance instead (``own_server=True``), so a
  restart can never leak into another test.
* ``stack_for`` (per test): the proxy as a user runs it, ``mcp-resilience-proxy serve --upstream URL``
  with default settings, in front of one server. A fresh proxy per test keeps breaker, health and
  cache state from one bad-client pattern out of the next, so a failure names its own pattern.

A server whose package is missing skips its tests locally and fails them under CI (``CI`` set), the
same rule as ``tests/test_conformance.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conformance.runner import ConformanceError, find_harness, find_node
from tests.conftest import ProxyProcess, start_proxy_cli
from tests.e2e.admin import wait_ready
from tests.e2e.upstreams import ServerSpec, UpstreamProcess
from tests.sdk_helpers import free_port


def require(missing: str | None) -> None:
    """Skip (locally) or fail (under CI) when something the test needs is not installed."""
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"required under CI: {missing}")
    pytest.skip(missing)


def harness_missing() -> str | None:
    """Why the conformance harness cannot run here, or None."""
    try:
        find_node()
        find_harness()
    except ConformanceError as exc:
        return f"{exc} (python -m tests.conformance.runner --install)"
    return None


class Upstreams:
    """The package's shared server processes, each started on first use and stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._running: dict[str, UpstreamProcess] = {}
        self._lock = asyncio.Lock()

    async def get(self, spec: ServerSpec) -> UpstreamProcess:
        require(spec.missing())
        async with self._lock:
            if spec.name not in self._running:
                server = UpstreamProcess(spec, free_port(), self.tmp / f"{spec.name}.log")
                await server.start()
                self._running[spec.name] = server
            return self._running[spec.name]

    async def private(self, spec: ServerSpec, tmp: Path) -> UpstreamProcess:
        """A server instance of the caller's own (started; the caller stops it)."""
        require(spec.missing())
        server = UpstreamProcess(spec, free_port(), tmp / f"{spec.name}-own.log")
        await server.start()
        return server

    async def close(self) -> None:
        for server in self._running.values():
            await server.stop()


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def upstreams(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Upstreams]:
    shared = Upstreams(tmp_path_factory.mktemp("e2e-upstreams"))
    try:
        yield shared
    finally:
        await shared.close()


@dataclass
class Stack:
    """A real server and the default proxy in front of it."""

    upstream: UpstreamProcess
    proxy: ProxyProcess

    @property
    def direct_url(self) -> str:
        return self.upstream.url

    @property
    def url(self) -> str:
        """The MCP endpoint through the proxy (``serve --upstream`` serves it at /mcp)."""
        return f"{self.proxy.url}/mcp"

    @property
    def admin_url(self) -> str:
        return self.proxy.admin_url


StackFactory = Callable[..., Awaitable[Stack]]


@pytest_asyncio.fixture(loop_scope="package")
async def stack_for(upstreams: Upstreams, tmp_path: Path) -> AsyncIterator[StackFactory]:
    """``await stack_for(spec, own_server=False)``: the server (shared or private) plus a fresh proxy, ready."""
    proxies: list[ProxyProcess] = []
    own: list[UpstreamProcess] = []

    async def start(spec: ServerSpec, *, own_server: bool = False) -> Stack:
        if own_server:
            server = await upstreams.private(spec, tmp_path)
            own.append(server)
        else:
            server = await upstreams.get(spec)
        proxy = await start_proxy_cli(server.url)
        proxies.append(proxy)
        await wait_ready(proxy.admin_url)
        return Stack(server, proxy)

    try:
        yield start
    finally:
        for proxy in proxies:
            await proxy.stop()
            (tmp_path / "proxy.log").write_text("\n".join(json.dumps(line) for line in proxy.log_lines))
        for server in own:
            await server.stop()
