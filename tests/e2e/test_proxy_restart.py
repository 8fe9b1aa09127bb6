"""The proxy itself restarts (SIGTERM, then a new process on the same port) in front of a server that runs on.

* With ``sessions_file``, the new proxy carries the legacy sessions over: the official SDK client goes on
  calling without initializing again, and when the SERVER restarts afterwards, the session is rebuilt
  by the new proxy from the record the old one saved (nothing else could rebuild it).
* Without it, a session the server still knows passes through the new proxy unchanged (its id is the
  server's); a session the old proxy had rebuilt, which only it could route, is ended upstream on
  SIGTERM (its ``sessions_ended`` log line), and its client hears a 404 from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client

from tests.conftest import ProxyProcess, start_proxy_process
from tests.e2e.admin import wait_ready
from tests.e2e.conftest import Upstreams
from tests.e2e.upstreams import SDK, UpstreamProcess
from tests.e2e.wire import good_call, request
from tests.sdk_helpers import free_port, legacy_handshake, legacy_headers

pytestmark = pytest.mark.asyncio(loop_scope="package")


def _config(upstream: UpstreamProcess, port: int, tmp_path: Path, sessions_file: Path | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "admin": {"host": "127.0.0.1", "port": 0},
        "events": {"file": {"path": str(tmp_path / "events.jsonl")}},
        "upstreams": [{"name": "sdk", "url": upstream.url}],
    }
    if sessions_file is not None:
        config["sessions_file"] = str(sessions_file)
    return config


async def _proxy(config: dict[str, Any], tmp_path: Path) -> ProxyProcess:
    proxy = await start_proxy_process(config, tmp_path)
    await wait_ready(proxy.admin_url)
    return proxy


async def _events(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    """The events of `kind` in the proxy's events file, once there is one (the file is written behind)."""
    path = tmp_path / "events.jsonl"
    async with asyncio.timeout(15):
        while True:
            lines = path.read_text().splitlines() if path.exists() else []
            found = [event for event in map(json.loads, lines) if event["type"] == kind]
            if found:
                return found
            await asyncio.sleep(0.05)  # polling a file the proxy appends to; bounded above


async def test_with_a_sessions_file_the_new_proxy_carries_the_sdk_clients_session_over(upstreams: Upstreams, tmp_path: Path) -> None:
    server = await upstreams.private(SDK, tmp_path)
    sessions_file = tmp_path / "sessions.json"
    config = _config(server, free_port(), tmp_path, sessions_file)
    call = SDK.good_call
    old = await _proxy(config, tmp_path)
    try:
        async with Client(f"{old.url}/mcp", mode="legacy") as client:
            await good_call(client, call, "before the proxy restarts")
            assert await old.stop() == 0
            saved = json.loads(sessions_file.read_text())
            assert [len(records) for records in saved["upstreams"].values()] == [1]
            new = await _proxy(config, tmp_path)
            try:
                assert not sessions_file.exists()  # read once, for the one restart it was written for
                await good_call(client, call, "through the new proxy")
                await server.restart()
                await good_call(client, call, "after the server restarted behind the new proxy")
                (recovered,) = await _events(tmp_path, "session_recovered")
                assert (recovered["method"], recovered["generation"]) == ("tools/call", 1)
            finally:
                await new.stop()
    finally:
        await old.stop()
        await server.stop()


async def test_without_a_sessions_file_known_sessions_pass_and_rebuilt_ones_end(upstreams: Upstreams, tmp_path: Path) -> None:
    server = await upstreams.private(SDK, tmp_path)
    config = _config(server, free_port(), tmp_path, None)
    call = request("tools/call", {"name": SDK.good_call.tool, "arguments": SDK.good_call.arguments}, 7)
    old = await _proxy(config, tmp_path)
    async with contextlib.AsyncExitStack() as scope:
        http = await scope.enter_async_context(httpx2.AsyncClient(timeout=30))
        url = f"{old.url}/mcp"
        rebuilt = await legacy_handshake(http, url)
        await server.restart()
        answer = await http.post(url, json=call, headers=legacy_headers(rebuilt))
        assert answer.status_code == 200, answer.text  # rebuilt by the old proxy: its id is now only the proxy's
        kept = await legacy_handshake(http, url)  # made after the restart: the server's id, never rebuilt
        assert await old.stop() == 0
        ended = [line for line in old.log_lines if line.get("event") == "sessions_ended"]
        assert [line["sessions"] for line in ended] == [1]
        new = await _proxy(config, tmp_path)
        try:
            answer = await http.post(url, json=call, headers=legacy_headers(kept))
            assert answer.status_code == 200, answer.text
            answer = await http.post(url, json=call, headers=legacy_headers(rebuilt))
            assert answer.status_code == 404, answer.text  # the server's own answer: the proxy knew nothing of it
            assert "X-Mcp-Proxy-Error" not in answer.headers
        finally:
            await new.stop()
    await server.stop()
