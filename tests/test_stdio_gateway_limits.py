"""The gateway's bounds and isolation under hostile clients (the adversarial review's findings, each fixed).

In process, over the recording child (`tests.stdio_recording_child`), as `tests/test_stdio_gateway.py`
runs it: concurrent connections past a Unix socket's default accept queue, a shared child's tasks, a
listen or subscriptions past their bounds, an initialize flood against sessions in use, and a
per-session child whose client left while it started.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.upstream.stdio import gateway as gateway_module
from proxy.upstream.stdio.child import ChildSpec, child_environment
from proxy.upstream.stdio.gateway import MAX_SUBSCRIPTIONS, Gateway
from tests.test_stdio_gateway import (
    TIMING,
    URL,
    WAIT,
    Client,
    listen_request,
    recording_spec,
    serving,
    until,
)

REPO = Path(__file__).resolve().parent.parent


async def test_more_concurrent_calls_than_a_unix_sockets_default_queue_all_connect(tmp_path: Path) -> None:
    """aiohttp's default backlog is 128: a Unix socket refuses the 129th waiting connect at once (EAGAIN)
    where TCP would retry; the gateway's queue holds what the proxy's pool may open at once."""
    spec, _ = recording_spec(tmp_path)
    async with serving(spec) as (gateway, client):
        session = await client.initialize()
        connector = aiohttp.UnixConnector(path=gateway.socket_path, limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(n: int) -> int:
                body = {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"text": str(n)}},
                }
                headers = {"Accept": "application/json", "Content-Type": "application/json", "Mcp-Session-Id": session}
                async with http.post(URL, data=json.dumps(body), headers=headers) as reply:
                    await reply.read()
                    return reply.status

            statuses = await asyncio.gather(*(one(n) for n in range(600)))
    assert statuses == [200] * 600


async def test_a_shared_childs_tasks_are_withheld_and_refused(tmp_path: Path) -> None:
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"tools": {}, "tasks": {"list": {}, "requests": {"tools": {"call": {}}}}}))
    spec, _ = recording_spec(tmp_path, CAPS_PATH=str(caps))
    async with serving(spec) as (_, client):
        answer = await client.post(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {"protocolVersion": "2025-11-25", "capabilities": {}},
            }
        )
        assert answer.json["result"]["capabilities"] == {"tools": {}}
        session = answer.headers["Mcp-Session-Id"]
        listed = await client.post({"jsonrpc": "2.0", "id": 2, "method": "tasks/list"}, session)
        assert listed.status == 200
        assert listed.json["error"]["code"] == -32601
        assert "isolation: per_session" in listed.json["error"]["message"]


async def test_a_listen_past_its_bound_is_refused_before_the_child_hears_of_it(tmp_path: Path) -> None:
    spec, record = recording_spec(tmp_path)
    async with serving(spec) as (gateway, client):
        uris = [f"test://{n}" for n in range(MAX_SUBSCRIPTIONS + 1)]
        body, headers = listen_request(9, resourceSubscriptions=uris)
        async with client.http.post(URL, data=body, headers=headers) as reply:
            assert reply.status == 400
            refused = await reply.json()
        assert refused["error"]["code"] == -32602
        assert f"at most {MAX_SUBSCRIPTIONS} resources" in refused["error"]["message"]
        assert gateway.board.listeners == set()
        session = await client.initialize()
        await client.call(session, "sync", "echo", text="sync")
        assert record.methods("resources/subscribe") == []


async def test_the_childs_subscriptions_for_all_clients_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "MAX_CHILD_SUBSCRIPTIONS", 3)
    spec, _ = recording_spec(tmp_path)
    async with serving(spec) as (_, client):
        sessions = [await client.initialize() for _ in range(2)]
        for n in range(3):
            answer = await client.post(subscribe(n, f"test://{n}"), sessions[n % 2])
            assert "result" in answer.json, answer.json
        refused = await client.post(subscribe(3, "test://3"), sessions[1])
        assert refused.json["error"]["code"] == -32602
        again = await client.post(subscribe(4, "test://0"), sessions[1])  # one the child holds already: fine
        assert "result" in again.json


def subscribe(request_id: int, uri: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "resources/subscribe", "params": {"uri": uri}}


async def test_an_initialize_flood_evicts_its_own_sessions_before_one_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_module, "MAX_SESSIONS", 5)
    spec, _ = recording_spec(tmp_path)
    async with serving(spec) as (gateway, client):
        victim = await client.initialize()
        assert (await client.call(victim, 1, "echo", text="mine")).status == 200
        for _ in range(20):
            await client.initialize()
        assert len(gateway.board.sessions) == 5
        assert victim in gateway.board.sessions
        assert (await client.call(victim, 2, "echo", text="still mine")).status == 200


async def test_a_per_session_child_whose_client_left_while_it_started_is_stopped(tmp_path: Path) -> None:
    argv = (sys.executable, "-m", "tests.stdio_children", "no_init")
    spec = ChildSpec(name="kid", argv=argv, env=child_environment({"PYTHONPATH": str(REPO)}), cwd=str(REPO))
    gateway = Gateway(spec, TIMING, max_body=1 << 20, idle_timeout=3600.0, isolation="per_session", max_children=2)
    await gateway.start()
    client = Client(gateway)
    try:
        pending = asyncio.ensure_future(client.initialize())
        await until(lambda: gateway.snapshot()["session_children"] == 1, "the session's child starting")
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await until(lambda: gateway.snapshot()["session_children"] == 0, "the abandoned child stopped", timeout=WAIT)
    finally:
        await client.close()
        await gateway.stop()
