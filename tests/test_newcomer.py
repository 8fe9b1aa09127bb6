"""Issue 9 item 9, newcomer rough edges, as a user meets them: a port already taken, listen equal to
admin, a proxy on 0.0.0.0 that refuses every name but localhost, and where the bound ports are.

End-to-end tests run the proxy as a subprocess; every socket is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import structlog
import yaml

from proxy import app
from proxy.app import running_proxy
from tests.conftest import REPO, ProxyProcess, proxy_config
from tests.fault_upstream import FaultUpstream

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
IN_USE = "the port is already in use by another process"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other program listens on, on 127.0.0.1."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def write_config(tmp_path: Path, **sections: Any) -> Path:
    """A config file with one upstream that is never called (no health probes) and warnings-only logs."""
    raw = {
        "logging": {"level": "warning"},
        "upstreams": [{"name": "up", "url": "http://127.0.0.1:9/mcp", "health": {"active": {"enabled": False}}}],
        **sections,
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# --- 1. a listen port already in use, listen equal to admin ----------------------------------------


def test_serve_names_the_listen_port_in_use_and_exits_2(tmp_path: Path, busy_port: int) -> None:
    path = write_config(tmp_path, listen={"port": busy_port}, admin={"port": 0})
    result = run_cli("serve", "--config", str(path))
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        [
            f"serve: cannot bind listen (the MCP listener) to 127.0.0.1:{busy_port}: {IN_USE}",
            f"  choose another address for listen in {path} (port 0 picks a free one)",
        ],
    )


def test_quick_start_names_the_admin_port_in_use_and_exits_2(busy_port: int) -> None:
    result = run_cli(
        "serve", "--upstream", "http://127.0.0.1:9/mcp", "--listen", "127.0.0.1:0", "--admin", f"127.0.0.1:{busy_port}"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    # Before it: at most a health probe's line about the (absent) upstream.
    assert result.stderr.splitlines()[-2:] == [
        f"serve: cannot bind admin (the admin listener) to 127.0.0.1:{busy_port}: "
        "the port is already in use, by another process or by listen (two names for one address)",
        "  choose another address with --admin HOST:PORT (port 0 picks a free one)",
    ]


def test_demo_names_the_port_in_use_and_exits_2(busy_port: int) -> None:
    result = run_cli("demo", "--listen", f"127.0.0.1:{busy_port}", "--duration", "1")
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        [
            f"demo: cannot bind listen (the MCP listener) to 127.0.0.1:{busy_port}: {IN_USE}",
            "  choose another address with --listen HOST:PORT (port 0 picks a free one)",
        ],
    )


@pytest.mark.parametrize(
    ("listen_host", "admin_host", "why"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1:{port}"),
        ("0.0.0.0", "127.0.0.1", "admin 127.0.0.1:{port} overlaps listen 0.0.0.0:{port}"),
    ],
)
def test_validate_rejects_listen_equal_to_admin(tmp_path: Path, listen_host: str, admin_host: str, why: str) -> None:
    path = write_config(tmp_path, listen={"host": listen_host, "port": 8080}, admin={"host": admin_host, "port": 8080})
    result = run_cli("validate", str(path))
    assert (result.returncode, result.stderr.splitlines()) == (
        1,
        [f"{path}: invalid configuration", f"  admin: must not be the same address as listen ({why.format(port=8080)})"],
    )


def test_serve_refuses_listen_equal_to_admin_before_binding(busy_port: int) -> None:
    # The port is taken: had serve tried to bind it, it would name the port in use. It says why the two
    # listeners clash instead, with the exit code of a bind failure (2), which is what it would become.
    address = f"127.0.0.1:{busy_port}"
    result = run_cli("serve", "--upstream", "http://127.0.0.1:9/mcp", "--listen", address, "--admin", address)
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        ["invalid configuration:", f"  admin: must not be the same address as listen ({address})"],
    )


# --- 2. refused Hosts are logged once each; --allow-host; where the listeners are ------------------


async def post(session: aiohttp.ClientSession, url: str, **headers: str) -> int:
    async with session.post(url, json=PING, headers=headers) as response:
        await response.read()
        return response.status


async def stopped(proxy: ProxyProcess) -> list[dict[str, Any]]:
    """Every line the proxy logged, once it has exited (its stderr read to the end: no waiting on time)."""
    assert await proxy.stop() == 0
    await asyncio.wait_for(proxy.collector, 10)  # type: ignore[attr-defined]
    return proxy.log_lines


async def test_each_refused_host_and_origin_is_logged_once_with_the_fix(
    upstream: FaultUpstream, proxy_process: Callable[[dict[str, Any]], Awaitable[ProxyProcess]]
) -> None:
    proxy = await proxy_process(
        {"listen": {"port": 0}, "admin": {"port": 0}, "upstreams": [{"name": "up", "url": upstream.url}]}
    )
    url = proxy.url + "/mcp"
    async with aiohttp.ClientSession() as session:
        statuses = [
            await post(session, url, Host="proxy.internal:8080"),
            await post(session, url, Host="proxy.internal:8080"),
            await post(session, url, Host="PROXY.internal:9090"),  # the same name: no second line
            await post(session, url, Host="other.internal"),
            await post(session, url, Host="localhost", Origin="https://app.example.com"),
            await post(session, url, Host="localhost", Origin="https://app.example.com/"),
            await post(session, url, Host="localhost"),
        ]
    assert statuses == [403, 403, 403, 403, 403, 403, 200]
    refusals = [line for line in await stopped(proxy) if line["event"] in ("host_refused", "origin_refused")]
    assert [{k: line.get(k) for k in ("event", "level", "host", "origin", "fix")} for line in refusals] == [
        {
            "event": "host_refused", "level": "warning", "host": "proxy.internal:8080", "origin": None,
            "fix": "add proxy.internal to security.allowed_hosts or pass --allow-host proxy.internal",
        },
        {
            "event": "host_refused", "level": "warning", "host": "other.internal", "origin": None,
            "fix": "add other.internal to security.allowed_hosts or pass --allow-host other.internal",
        },
        {
            "event": "origin_refused", "level": "warning", "host": None, "origin": "https://app.example.com",
            "fix": "add https://app.example.com to security.allowed_origins",
        },
    ]


async def test_allow_host_admits_the_name_and_outlives_a_reload(upstream: FaultUpstream, tmp_path: Path) -> None:
    path = write_config(
        tmp_path, listen={"port": 0}, admin={"port": 0}, logging={}, upstreams=[{"name": "up", "url": upstream.url}]
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--config", str(path),
        "--allow-host", "proxy.internal", "--allow-host", "mcp.svc.cluster.local",
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while (started := json.loads(await process.stderr.readline()))["event"] != "proxy_started":
                pass  # a health probe may report before the listeners are up
        url = started["listen"] + "/mcp"
        async with aiohttp.ClientSession() as session:
            before = [
                await post(session, url, Host="proxy.internal:8080"),
                await post(session, url, Host="mcp.svc.cluster.local"),
                await post(session, url, Host="localhost"),
                await post(session, url, Host="third.internal"),
            ]
            async with session.post(started["admin"] + "/reload") as response:
                assert (response.status, (await response.json())["outcome"]) == (200, "applied")
            after = await post(session, url, Host="proxy.internal:8080")
        assert (before, after) == ([200, 200, 200, 403], 200)
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


def test_serve_help_lists_allow_host() -> None:
    assert "--allow-host NAME" in run_cli("serve", "--help").stdout


async def test_proxy_started_shows_the_ports_bound_for_port_0(
    upstream: FaultUpstream, proxy_process: Callable[[dict[str, Any]], Awaitable[ProxyProcess]]
) -> None:
    proxy = await proxy_process(
        {"listen": {"port": 0}, "admin": {"port": 0}, "upstreams": [{"name": "up", "url": upstream.url}]}
    )
    started = next(line for line in proxy.log_lines if line["event"] == "proxy_started")
    listen_port, admin_port = urlsplit(started["listen"]).port, urlsplit(started["admin"]).port
    assert listen_port and admin_port and listen_port != admin_port
    assert (started["listen_bound"], started["admin_bound"]) == ([f"127.0.0.1:{listen_port}"], [f"127.0.0.1:{admin_port}"])
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{started['admin_bound'][0]}/healthz") as response:
            assert response.status == 200
        assert await post(session, f"http://{started['listen_bound'][0]}/mcp") == 200
    assert not any(line["event"] == "allowed_hosts_loopback_only" for line in await stopped(proxy))


@pytest.mark.parametrize(
    ("host", "allowed_hosts", "warns"),
    [
        ("0.0.0.0", None, True),  # the default: loopback names only
        ("::", ["localhost", "127.0.0.1:8080"], True),
        ("0.0.0.0", ["localhost", "proxy.internal"], False),
        ("0.0.0.0", ["*"], False),
        ("127.0.0.1", None, False),
    ],
)
async def test_a_wildcard_listener_with_only_loopback_names_warns_at_start(
    upstream: FaultUpstream, monkeypatch: pytest.MonkeyPatch, host: str, allowed_hosts: list[str] | None, warns: bool
) -> None:
    bind = app._bind

    async def on_loopback(runner: Any, address: tuple[str, int], listener: str) -> list[tuple[str, int]]:
        return await bind(runner, ("127.0.0.1", address[1]), listener)  # tests bind 127.0.0.1 only

    monkeypatch.setattr(app, "_bind", on_loopback)
    security = {"allowed_hosts": allowed_hosts} if allowed_hosts is not None else {}
    config = proxy_config(upstream.url, listen={"host": host, "port": 0}, security=security)
    with structlog.testing.capture_logs() as logs:
        async with running_proxy(config):
            pass
    warnings = [line for line in logs if line["event"] == "allowed_hosts_loopback_only"]
    assert len(warnings) == (1 if warns else 0)
    if warns:
        assert warnings[0]["log_level"] == "warning"
        assert "pass --allow-host NAME" in warnings[0]["note"]
