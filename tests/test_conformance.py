"""The official MCP conformance suite, in server mode, direct and through the proxy, for both eras.

Through the proxy, every check that passes against the server directly must pass, and the
`dns-rebinding-protection` scenario must pass (the proxy rewrites Host, so it checks it itself).
The harness needs Node >= 22 and the npm package; `.ci/run` installs both. Locally, without them,
the test is skipped, but never under CI (CI=true), where a missing harness is a failure.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import REPO, ProxyProcess
from tests.conformance.runner import ConformanceError, find_harness, find_node, regressions, run_conformance


def _tools_present() -> bool:
    try:
        find_node()
        find_harness()
    except ConformanceError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    not _tools_present() and not os.environ.get("CI"),
    reason="conformance harness not installed (python -m tests.conformance.runner --install)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_for_port(port: int, process: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(30):
        while True:
            if process.returncode is not None:
                raise RuntimeError("everything server exited early")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # polling a port that is not open yet; bounded by the timeout
                continue
            writer.close()
            return


@pytest.fixture
async def everything_server() -> AsyncIterator[str]:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.servers.everything", "--host", "127.0.0.1", "--port", str(port),
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        await process.wait()


@pytest.mark.parametrize("requirements", ["2025-11-25", "2026-07-28"])
async def test_conformance_through_the_proxy_matches_direct(
    requirements: str,
    everything_server: str,
    proxy_process: Callable[[dict[str, Any]], Awaitable[ProxyProcess]],
) -> None:
    proxy = await proxy_process(
        {"listen": {"port": 0}, "admin": {"port": 0}, "upstreams": [{"name": "everything", "url": everything_server}]}
    )
    direct = await asyncio.to_thread(run_conformance, everything_server, requirements)
    proxied = await asyncio.to_thread(run_conformance, f"{proxy.url}/mcp", requirements)
    passed_direct = sum(status == "pass" for status in direct.checks.values())
    assert passed_direct >= 60, direct.output_tail
    assert regressions(direct, proxied) == {}
    rebinding = {k: v for k, v in proxied.checks.items() if k.startswith("dns-rebinding-protection:")}
    assert rebinding and set(rebinding.values()) == {"pass"}
