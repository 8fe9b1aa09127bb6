"""A stdio upstream across hot reloads and the proxy's stop: which reload restarts the child, which keeps it.

The proxy runs in-process (`running_proxy`) in front of the scripted child (`tests.stdio_children`); the
child's pid is read from /status's source (`StdioUpstream.gateway.snapshot`) and its end from /proc, so
nothing here depends on the code under test to say a process is gone.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from proxy.app import ProxyServer, running_proxy
from proxy.config.model import ProxyConfig
from proxy.upstream.stdio.upstream import StdioUpstream

REPO = Path(__file__).resolve().parents[1]
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}
MODERN = {
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "echo",
    "Accept": "application/json, text/event-stream",
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
}


def config(**upstream: Any) -> ProxyConfig:
    entry: dict[str, Any] = {
        "name": "kid",
        "command": [sys.executable, "-m", "tests.stdio_children", "echo"],
        "cwd": str(REPO),
        "env": {"PYTHONPATH": str(REPO)},
        "health": {"active": {"enabled": False}},
        **upstream,
    }
    return ProxyConfig.model_validate(
        {"listen": {"port": 0}, "admin": {"port": 0}, "drain_timeout": "100ms", "upstreams": [entry]}
    )


def transport(server: ProxyServer) -> StdioUpstream:
    found = server.runtime.current.states["kid"].transport
    assert isinstance(found, StdioUpstream)
    return found


async def pid_when_up(server: ProxyServer) -> int:
    async with asyncio.timeout(20):
        while True:
            state = transport(server).gateway.snapshot()
            if state["state"] == "up":
                return int(state["pid"])
            await asyncio.sleep(0.02)


async def gone(pid: int) -> None:
    async with asyncio.timeout(20):
        while os.path.exists(f"/proc/{pid}") and "zombie" not in _state(pid):
            await asyncio.sleep(0.02)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


async def echo(server: ProxyServer) -> Any:
    body = {**CALL, "params": {**CALL["params"], "_meta": META}}
    async with aiohttp.ClientSession() as http, http.post(f"{server.url}/mcp", json=body, headers=MODERN) as reply:
        assert reply.status == 200
        return await reply.json()


async def test_a_reload_of_policies_only_keeps_the_child() -> None:
    async with running_proxy(config()) as server:
        pid = await pid_when_up(server)
        assert (await echo(server))["result"]["content"] == [{"type": "text", "text": "hi"}]
        await server.apply(config(retry={"max_attempts": 5}))
        assert transport(server).gateway.snapshot()["pid"] == pid
        assert (await echo(server))["result"]["content"] == [{"type": "text", "text": "hi"}]
        assert transport(server).gateway.snapshot()["restarts"] == 0


async def test_a_reload_that_changes_the_child_starts_a_new_one_and_stops_the_old() -> None:
    async with running_proxy(config()) as server:
        old = await pid_when_up(server)
        await server.apply(config(env={"PYTHONPATH": str(REPO), "EXTRA": "1"}))
        new = await pid_when_up(server)
        assert new != old
        assert (await echo(server))["result"]["content"] == [{"type": "text", "text": "hi"}]
        await gone(old)  # after drain_timeout, the replaced gateway stops its child


async def test_the_proxys_stop_stops_the_child() -> None:
    async with running_proxy(config()) as server:
        pid = await pid_when_up(server)
        socket_dir = Path(transport(server).gateway.socket_path).parent
    await gone(pid)
    assert not socket_dir.exists()


async def test_a_get_stream_open_across_a_reload_that_replaces_the_child_hears_the_new_child(tmp_path: Path) -> None:
    """The old gateway cuts its GET streams at once; the proxy reopens the stream on the new one (rebuilding
    the session there), so a notification of the new child reaches the client's stream, which stayed open."""

    def recording(extra: str) -> ProxyConfig:
        argv = [sys.executable, "-m", "tests.stdio_recording_child", str(tmp_path / "record.jsonl")]
        return config(command=argv, env={"PYTHONPATH": str(REPO), "EXTRA": extra})

    async with running_proxy(recording("1")) as server, aiohttp.ClientSession() as http:
        url = f"{server.url}/mcp"
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        accept = {"Accept": "application/json, text/event-stream"}
        async with http.post(url, json=init, headers=accept) as reply:
            session = reply.headers["Mcp-Session-Id"]
        headers = {**accept, "Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-11-25"}
        old = await pid_when_up(server)
        async with http.get(url, headers=headers) as stream:
            await server.apply(recording("2"))
            assert await pid_when_up(server) != old
            notify = {"name": "notify", "arguments": {"method": "notifications/tools/list_changed"}}
            heard = b""
            async with asyncio.timeout(20):
                while b"notifications/tools/list_changed" not in heard:
                    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": notify}
                    async with http.post(url, json=call, headers=headers) as reply:
                        assert reply.status == 200
                    try:
                        chunk = await asyncio.wait_for(stream.content.readany(), 0.5)
                        assert chunk or not stream.content.at_eof(), f"the client's stream ended: {heard!r}"
                        heard += chunk
                    except TimeoutError:
                        continue  # not reopened yet: the next notification will find it
        await gone(old)
