"""The CLI as a user runs it: a subprocess, its exit code, what it prints, what it logs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from proxy import __version__
from tests.conftest import REPO, ProxyProcess
from tests.fault_upstream import FaultUpstream


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.strip() == f"mcp-resilience-proxy {__version__}"
    help_text = run_cli("serve", "--help").stdout
    for flag in ("--config", "--upstream", "--listen", "--admin"):
        assert flag in help_text


def test_validate_accepts_the_default_file() -> None:
    result = run_cli("validate", "config/proxy.yaml")
    assert (result.returncode, result.stdout.strip()) == (0, "config/proxy.yaml: OK (1 upstream(s): default)")


def test_validate_lists_every_error_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  - name: x\n    url: not-a-url\n    retries: 3\n")
    result = run_cli("validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}: invalid configuration",
        "  upstreams[0].url: not a URL: need http:// or https:// and a host (got 'not-a-url')",
        "  upstreams[0].retries: unknown key",
    ]


def test_serve_refuses_a_bad_config_before_binding(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: [\n")
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 1
    assert "invalid YAML" in result.stderr


def test_schema_command_prints_the_exported_schema() -> None:
    result = run_cli("schema")
    assert json.loads(result.stdout) == json.loads((REPO / "config" / "proxy.schema.json").read_text())


async def test_secrets_never_reach_the_logs(
    upstream: FaultUpstream, proxy_process: Callable[[dict[str, Any]], Awaitable[ProxyProcess]]
) -> None:
    upstream.fault("tools/call", "lookup", status=500)
    proxy = await proxy_process(
        {
            "listen": {"port": 0}, "admin": {"port": 0}, "logging": {"access_log": True},
            "upstreams": [{"name": "up", "url": upstream.url}, {"name": "dead", "url": "http://127.0.0.1:9/mcp", "path": "/dead"}],
        }
    )
    secret = "Bearer sk-live-very-secret-token"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "lookup", "arguments": {}}}
    async with aiohttp.ClientSession() as session:
        for path in ("/mcp", "/dead"):
            async with session.post(proxy.url + path, json=body, headers={"Authorization": secret}) as response:
                await response.read()
    assert upstream.received[-1].headers["Authorization"] == secret
    await proxy.stop()
    await asyncio.wait_for(proxy.collector, 10)  # type: ignore[attr-defined]
    lines = proxy.log_lines
    assert [line["event"] for line in lines if line.get("event") in ("access", "call_failed")] == ["call_failed", "access", "call_failed", "access"]
    assert all("sk-live" not in json.dumps(line) for line in lines)


async def test_quick_start_serves_in_front_of_one_upstream(upstream: FaultUpstream) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        cwd=REPO, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while (started := json.loads(await process.stderr.readline()))["event"] != "proxy_started":
                pass  # a health probe may report before the listeners are up
        async with aiohttp.ClientSession() as session:
            async with session.post(started["listen"] + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}) as response:
                assert response.status == 200
                assert (await response.json())["result"]["tools"][0]["name"] == "lookup"
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


def test_demo_runs_its_phases_learns_and_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "demo", "--duration", "16"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    names = ("healthy", "flaky", "down", "recovered", "slow", "fixed")
    rows = {
        words[0]: words
        for words in (line.split() for line in result.stdout.splitlines())
        if words and words[0] in names and all(w.isdigit() for w in words[-6:])
    }
    assert list(rows) == list(names)
    calls, failed, reads_failed, retries, stale, fast_fail = (-6, -5, -4, -3, -2, -1)
    assert int(rows["healthy"][calls]) > 0 and int(rows["healthy"][failed]) == 0
    assert int(rows["flaky"][retries]) > 0  # the proxy retried
    assert int(rows["down"][stale]) > 0 and int(rows["down"][fast_fail]) > 0  # fallback answers, breaker open
    assert int(rows["slow"][reads_failed]) >= 20  # reads time out ...
    assert "analyzer proposal" in result.stdout and "+      per_try: " in result.stdout  # ... the analyzer proposes ...
    assert int(rows["fixed"][reads_failed]) < int(rows["slow"][reads_failed]) // 4  # ... and once applied, they pass
    assert "slow progress: 4 notifications" in result.stdout
    assert result.stderr == ""


def test_demo_rejects_a_bad_listen_address_with_a_clear_error() -> None:
    result = run_cli("demo", "--listen", "nonsense", "--duration", "1")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == ["invalid demo options:", "  --listen: must be HOST:PORT (got 'nonsense')"]
