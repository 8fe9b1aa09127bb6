"""End to end: the official SDK client, through the proxy run as a user runs it, to an SDK server.

Three processes: the everything server (``python -m tests.servers.everything``), a second server
that also pushes messages outside requests (``python -m tests.sdk_helpers``, for the legacy GET
stream), and the proxy (``python -m proxy serve``) in front of both. The client is ``mcp.Client``
in each connect mode: ``legacy`` (initialize, session, GET stream, DELETE), ``2026-07-28``
(stateless, adopted without a probe) and ``auto`` (``server/discover`` first). Raw HTTP (httpx2)
checks what the SDK hides: the session's 404 after DELETE, and the SSE events' order and streaming.

The servers and the proxy are shared by the module; every test reads only what it caused: tool
run counts and metrics are compared before and after, and the metrics tests use upstream entries
(paths) of their own.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import pytest_asyncio
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import (
    BlobResourceContents,
    CallToolResult,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    LoggingMessageNotificationParams,
    ResourceUpdatedNotification,
    TextContent,
    TextResourceContents,
    ToolListChangedNotification,
)

from tests.conftest import ProxyProcess, start_proxy_process
from tests.sdk_helpers import (
    ACCEPT,
    BROADCAST_LOGGER,
    BROADCAST_URI,
    LEGACY_VERSION,
    MODERN_VERSION,
    HttpLog,
    ServerProcess,
    SseEvent,
    legacy_handshake,
    legacy_headers,
    modern_meta,
    read_sse,
    recorded_transport,
    requests_total,
    settled_delta,
    start_server,
)
from tests.servers.everything import PNG_BASE64, SERVER_NAME

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODES = ("legacy", "2026-07-28", "auto")
NEGOTIATED = {"legacy": LEGACY_VERSION, "2026-07-28": MODERN_VERSION, "auto": MODERN_VERSION}
LLM_ANSWER = "Paris"
METRICS_PATHS = {mode: f"/metrics-{mode}" for mode in MODES}
"""One upstream entry (same server) per mode for the metrics tests, so their counts are theirs alone."""


# --------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------


@dataclass
class Stack:
    proxy: ProxyProcess
    everything: ServerProcess
    push: ServerProcess

    def url(self, path: str = "/mcp") -> str:
        return f"{self.proxy.url}{path}"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("e2e_sdk")
    started: list[ServerProcess] = []
    proxy: ProxyProcess | None = None
    try:
        results = await asyncio.gather(
            start_server("tests.servers.everything", tmp / "everything.log"),
            start_server("tests.sdk_helpers", tmp / "push.log"),
            return_exceptions=True,
        )
        started = [r for r in results if isinstance(r, ServerProcess)]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        everything, push = started
        upstreams: list[dict[str, Any]] = [
            {"name": "everything", "url": everything.url},
            {"name": "push", "url": push.url, "path": "/push"},
        ]
        upstreams += [{"name": f"m-{mode}", "url": everything.url, "path": path} for mode, path in METRICS_PATHS.items()]
        proxy = await start_proxy_process({"listen": {"port": 0}, "admin": {"port": 0}, "upstreams": upstreams}, tmp)
        yield Stack(proxy, everything, push)
    finally:
        if proxy is not None:
            await proxy.stop()
        for server in started:
            await server.stop()


@dataclass
class Recorder:
    """Everything the server asked of, or told, one SDK client, plus its HTTP exchanges."""

    http: HttpLog = field(default_factory=HttpLog)
    samples: list[CreateMessageRequestParams] = field(default_factory=list)
    elicitations: list[ElicitRequestParams] = field(default_factory=list)
    elicit_answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: list[LoggingMessageNotificationParams] = field(default_factory=list)
    notifications: list[Any] = field(default_factory=list)
    tools_changed: anyio.Event = field(default_factory=anyio.Event)

    async def sampling(self, context: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
        self.samples.append(params)
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text=LLM_ANSWER), model="test-llm")

    async def elicitation(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        self.elicitations.append(params)
        return ElicitResult(action="accept", content=self.elicit_answers.get(params.message, {"confirm": True}))

    async def logging(self, params: LoggingMessageNotificationParams) -> None:
        self.logs.append(params)

    async def messages(self, message: Any) -> None:
        self.notifications.append(message)
        if isinstance(message, ToolListChangedNotification):
            self.tools_changed.set()

    def client(self, url: str, mode: str) -> Client:
        return Client(
            recorded_transport(url, self.http),
            mode=mode,
            sampling_callback=self.sampling,
            elicitation_callback=self.elicitation,
            logging_callback=self.logging,
            message_handler=self.messages,
        )


def text_of(result: CallToolResult) -> str:
    assert not result.is_error, result
    assert len(result.content) == 1 and isinstance(result.content[0], TextContent), result.content
    return result.content[0].text


async def call_counts(client: Client) -> dict[str, int]:
    result = await client.call_tool("call_counts", {})
    assert not result.is_error
    assert result.structured_content is not None
    return dict(result.structured_content)


def ran(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """How many times each tool ran between two `call_counts` readings (tools that did not run left out)."""
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


# --------------------------------------------------------------------------------------
# Handshake, tools, resources, prompts
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_connects_and_negotiates_through_the_proxy(stack: Stack, mode: str) -> None:
    recorder = Recorder()
    async with recorder.client(stack.url(), mode) as client:
        assert client.protocol_version == NEGOTIATED[mode]
        if mode != "2026-07-28":  # a pinned modern mode adopts a synthesized discover result
            assert client.server_info is not None and client.server_info.name == SERVER_NAME
        await client.list_tools()

    first = recorder.http.exchanges[0]
    if mode == "legacy":
        assert (first.method, first.status) == ("POST", 200)
        (session_id,) = recorder.http.session_ids()
        assert first.response_session_id == session_id
        assert [(e.session_id, e.status) for e in recorder.http.by_method("DELETE")] == [(session_id, 200)]
    else:
        assert recorder.http.session_ids() == set()
        assert recorder.http.by_method("GET") == [] and recorder.http.by_method("DELETE") == []
        methods = [e.mcp_method for e in recorder.http.exchanges]
        assert methods == (["server/discover", "tools/list"] if mode == "auto" else ["tools/list"])
        assert {e.status for e in recorder.http.exchanges} == {200}


@pytest.mark.parametrize("mode", MODES)
async def test_list_and_call_tools(stack: Stack, mode: str) -> None:
    async with Recorder().client(stack.url(), mode) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        beta = await client.call_tool("lookup", {"key": "beta"})
        missing = await client.call_tool("lookup", {"key": "zeta"})
        failing = await client.call_tool("test_error_handling", {})

    assert {"lookup", "slow", "increment", "call_counts", "ask_llm", "confirm_action", "emit_log"} <= set(tools)
    assert tools["lookup"].annotations is not None and tools["lookup"].annotations.read_only_hint is True
    assert tools["increment"].annotations is not None and tools["increment"].annotations.idempotent_hint is False
    assert tools["slow"].input_schema["required"] == ["seconds"]
    assert text_of(beta) == "2"
    assert beta.structured_content == {"result": "2"}
    assert text_of(missing) == "not found"
    assert failing.is_error is True
    assert failing.content == [TextContent(type="text", text="Error executing tool test_error_handling")]


@pytest.mark.parametrize("mode", MODES)
async def test_list_and_read_resources(stack: Stack, mode: str) -> None:
    async with Recorder().client(stack.url(), mode) as client:
        listed = await client.list_resources()
        templates = await client.list_resource_templates()
        text = (await client.read_resource("test://static-text")).contents
        binary = (await client.read_resource("test://static-binary")).contents
        templated = (await client.read_resource("test://template/42/data")).contents

    assert {(str(r.uri), r.mime_type) for r in listed.resources} == {
        ("test://static-text", "text/plain"),
        ("test://static-binary", "image/png"),
        ("test://watched-resource", "text/plain"),
    }
    assert [t.uri_template for t in templates.resource_templates] == ["test://template/{id}/data"]
    assert text == [
        TextResourceContents(
            uri="test://static-text", mime_type="text/plain", text="This is the content of the static text resource."
        )
    ]
    assert len(binary) == 1 and isinstance(binary[0], BlobResourceContents)
    assert (binary[0].mime_type, binary[0].blob) == ("image/png", PNG_BASE64)
    assert len(templated) == 1 and isinstance(templated[0], TextResourceContents)
    assert json.loads(templated[0].text) == {"id": "42", "templateTest": True, "data": "Data for ID: 42"}


@pytest.mark.parametrize("mode", MODES)
async def test_list_and_get_prompts(stack: Stack, mode: str) -> None:
    async with Recorder().client(stack.url(), mode) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
        got = await client.get_prompt("test_prompt_with_arguments", {"arg1": "x", "arg2": "y"})
        simple = await client.get_prompt("test_simple_prompt")

    assert set(prompts) == {
        "test_simple_prompt",
        "test_prompt_with_arguments",
        "test_prompt_with_embedded_resource",
        "test_prompt_with_image",
        "test_input_required_result_prompt",
    }
    assert [(a.name, a.required) for a in prompts["test_prompt_with_arguments"].arguments or []] == [
        ("arg1", True),
        ("arg2", True),
    ]
    assert [(m.role, m.content) for m in got.messages] == [
        ("user", TextContent(type="text", text="Prompt with arguments: arg1='x', arg2='y'"))
    ]
    assert [m.content for m in simple.messages] == [TextContent(type="text", text="This is a simple prompt for testing.")]


# --------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_progress_arrives_in_order_before_the_result(stack: Stack, mode: str) -> None:
    seen: list[Any] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Recorder().client(stack.url(), mode) as client:
        result = await client.call_tool("slow", {"seconds": 0.2}, progress_callback=on_progress)
        seen.append("result")

    assert [s[0] if isinstance(s, tuple) else s for s in seen] == [1, 2, 3, 4, "result"]
    assert seen[:4] == [(step, 4, f"step {step}") for step in (1, 2, 3, 4)]
    assert text_of(result) == "slept 0.2"
    assert result.structured_content == {"slept": 0.2, "steps": 4}


async def release(stack: Stack, http: httpx2.AsyncClient, key: str) -> None:
    """Let the everything server's ``held(key)`` call go on: its ``release`` tool, called directly
    (2026-07-28, stateless), not through the proxy under test."""
    call = {
        "jsonrpc": "2.0",
        "id": f"release-{key}",
        "method": "tools/call",
        "params": {"name": "release", "arguments": {"key": key}, "_meta": modern_meta()},
    }
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/call", "mcp-name": "release"}
    response = await http.post(stack.everything.url, json=call, headers=headers)
    assert response.status_code == 200 and f"released {key}" in response.text


@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_progress_events_are_streamed_not_buffered(stack: Stack, era: str) -> None:
    """On the wire: progress, then more progress and the response, each passed on as the server sends it.

    ``held`` sends progress 1 and then waits for its release, which the test gives only once progress 1
    has come through the proxy; a proxy that buffered the stream until the response would hand nothing
    over, and its per-try timeout (30 s) would end the call with a 504."""
    key = f"streamed-{era}"
    call: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "held", "arguments": {"key": key}, "_meta": {"progressToken": "p-7"}},
    }
    async with httpx2.AsyncClient(timeout=30) as http:
        if era == "legacy":
            session_id = await legacy_handshake(http, stack.url())
            headers = legacy_headers(session_id)
        else:
            call["params"]["_meta"].update(modern_meta())
            headers = {
                "accept": ACCEPT,
                "mcp-protocol-version": MODERN_VERSION,
                "mcp-method": "tools/call",
                "mcp-name": "held",
            }
        async with http.stream("POST", stack.url(), json=call, headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_sse(response)
            try:
                before = [event async for event in _until_data(events)]
            finally:
                await release(stack, http, key)
            after = [event async for event in events]
        if era == "legacy":
            assert (await http.delete(stack.url(), headers=legacy_headers(session_id))).status_code == 200

    held, *rest = [json.loads(event.data) for event in before + after if event.data]
    assert (held["method"], held["params"]) == (
        "notifications/progress",
        {"progressToken": "p-7", "progress": 1, "total": 2, "message": "held"},
    )
    assert [m.get("method", "response") for m in rest] == ["notifications/progress", "response"]
    assert (rest[0]["params"]["progress"], rest[0]["params"]["message"]) == (2, "released")
    final = rest[-1]
    assert final["id"] == 7 and final["result"]["content"] == [{"type": "text", "text": f"released {key}"}]


async def _until_data(events: AsyncIterator[SseEvent]) -> AsyncIterator[SseEvent]:
    """The events of `events` up to and including the first that carries data (leaving the rest unread)."""
    async for event in events:
        yield event
        if event.data:
            return


# --------------------------------------------------------------------------------------
# Server -> client requests: legacy mid-call requests, 2026-07-28 input_required rounds
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_sampling_round_trip(stack: Stack, mode: str) -> None:
    recorder = Recorder()
    async with recorder.client(stack.url(), mode) as client:
        await client.list_tools()  # else the SDK lists them during the call, to check its output schema
        before = await call_counts(client)
        mark = len(recorder.http.exchanges)
        result = await client.call_tool("ask_llm", {"question": "Capital of France?"})
        during = recorder.http.exchanges[mark:]
        after = await call_counts(client)

    assert text_of(result) == f"LLM says: {LLM_ANSWER}"
    assert len(recorder.samples) == 1
    sample = recorder.samples[0]
    assert [m.content for m in sample.messages] == [TextContent(type="text", text="Capital of France?")]
    assert sample.max_tokens == 100
    assert ran(before, after) == {"ask_llm": 1}
    if mode == "legacy":
        # The call's POST (its SSE stream carries the sampling request), and the client's answer.
        posts = [e for e in during if e.method == "POST"]
        assert sorted((e.status, e.content_type.split(";")[0]) for e in posts) == [
            (200, "text/event-stream"),
            (202, "application/json"),
        ]
    else:
        # input_required, then the retry carrying inputResponses.
        assert [(e.mcp_method, e.mcp_name, e.status) for e in during] == [("tools/call", "ask_llm", 200)] * 2


@pytest.mark.parametrize("mode", MODES)
async def test_elicitation_round_trip(stack: Stack, mode: str) -> None:
    recorder = Recorder()
    recorder.elicit_answers["Really rollback?"] = {"confirm": False}
    async with recorder.client(stack.url(), mode) as client:
        await client.list_tools()  # else the SDK lists them during the call, to check its output schema
        mark = len(recorder.http.exchanges)
        deploy = await client.call_tool("confirm_action", {"action": "deploy"})
        during = recorder.http.exchanges[mark:]
        rollback = await client.call_tool("confirm_action", {"action": "rollback"})

    assert text_of(deploy) == "deploy: confirmed"
    assert text_of(rollback) == "rollback: refused"
    assert [e.message for e in recorder.elicitations] == ["Really deploy?", "Really rollback?"]
    for params in recorder.elicitations:
        schema = params.requested_schema  # type: ignore[union-attr]
        assert schema["required"] == ["confirm"] and schema["properties"]["confirm"]["type"] == "boolean"
    if mode == "legacy":
        assert sorted(e.status for e in during if e.method == "POST") == [200, 202]
    else:
        assert [(e.mcp_method, e.mcp_name, e.status) for e in during] == [("tools/call", "confirm_action", 200)] * 2


@pytest.mark.parametrize("mode", ["2026-07-28", "auto"])
async def test_input_required_prompt_round_trip(stack: Stack, mode: str) -> None:
    """SEP-2322 on a request other than tools/call: prompts/get answered input_required, then retried."""
    recorder = Recorder()
    recorder.elicit_answers["What context should the prompt use?"] = {"context": "the proxy"}
    async with recorder.client(stack.url(), mode) as client:
        prompt = await client.get_prompt("test_input_required_result_prompt")

    assert [m.content for m in prompt.messages] == [TextContent(type="text", text="Use the following context: the proxy")]
    assert [e.message for e in recorder.elicitations] == ["What context should the prompt use?"]
    gets = [e for e in recorder.http.exchanges if e.mcp_method == "prompts/get"]
    assert [(e.mcp_name, e.status) for e in gets] == [("test_input_required_result_prompt", 200)] * 2


# --------------------------------------------------------------------------------------
# Legacy streams: notifications on the call's stream, on the GET stream, and resumption
# --------------------------------------------------------------------------------------


async def test_legacy_log_rides_the_call_stream(stack: Stack) -> None:
    recorder = Recorder()
    async with recorder.client(stack.url(), "legacy") as client:
        result = await client.call_tool("emit_log", {"message": "disk almost full", "level": "warning"})
        logs_at_result = list(recorder.logs)

    assert text_of(result) == "logged warning: disk almost full"
    assert [(log.level, log.logger, log.data) for log in logs_at_result] == [("warning", None, "disk almost full")]


async def test_legacy_get_stream_notifications_reach_the_client(stack: Stack) -> None:
    recorder = Recorder()
    async with recorder.client(stack.url("/push"), "legacy") as client:
        with anyio.fail_after(10):
            await recorder.http.get_stream_open.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await client.subscribe_resource(BROADCAST_URI)
        result = await client.call_tool("broadcast", {"text": "hello"})
        with anyio.fail_after(10):
            await recorder.tools_changed.wait()  # broadcast sends it last
        notifications = list(recorder.notifications)
        logs = list(recorder.logs)

    assert text_of(result) == "broadcast hello"
    assert [(log.level, log.logger, log.data) for log in logs] == [("info", BROADCAST_LOGGER, "hello")]
    kinds = [n.method for n in notifications]
    assert kinds == ["notifications/message", "notifications/resources/updated", "notifications/tools/list_changed"]
    updated = [n for n in notifications if isinstance(n, ResourceUpdatedNotification)]
    assert [str(n.params.uri) for n in updated] == [BROADCAST_URI]
    gets = recorder.http.by_method("GET")
    assert [(e.status, e.content_type.split(";")[0]) for e in gets[:1]] == [(200, "text/event-stream")]


async def test_legacy_call_resumes_on_get_after_the_server_closes_its_stream(stack: Stack) -> None:
    """SEP-1699: the server ends the call's SSE stream mid-call; the client resumes with Last-Event-ID."""
    recorder = Recorder()
    async with recorder.client(stack.url(), "legacy") as client:
        mark = len(recorder.http.exchanges)
        result = await client.call_tool("test_reconnection", {})
        during = recorder.http.exchanges[mark:]

    assert text_of(result) == "Reconnection test completed"
    assert [log.data for log in recorder.logs] == ["Before disconnect", "After reconnect"]
    resumed = [e for e in during if e.method == "GET" and e.last_event_id is not None]
    assert [(e.status, e.content_type.split(";")[0]) for e in resumed] == [(200, "text/event-stream")]


# --------------------------------------------------------------------------------------
# DELETE ends the session
# --------------------------------------------------------------------------------------


async def test_client_exit_deletes_the_session(stack: Stack) -> None:
    recorder = Recorder()
    async with recorder.client(stack.url(), "legacy") as client:
        await client.list_tools()
    (session_id,) = recorder.http.session_ids()
    deletes = recorder.http.by_method("DELETE")
    assert [(e.session_id, e.status) for e in deletes] == [(session_id, 200)]

    request = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
    async with httpx2.AsyncClient(timeout=10) as http:
        stale = await http.post(stack.url(), json=request, headers=legacy_headers(session_id))
        stale_get = await http.get(stack.url(), headers=legacy_headers(session_id))
    assert stale.status_code == 404
    assert stale.headers["content-type"].startswith("application/json")
    assert stale.json()["error"]["code"] == -32600
    assert stale_get.status_code == 404


async def test_raw_delete_ends_the_session(stack: Stack) -> None:
    request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "lookup", "arguments": {"key": "gamma"}}}
    async with httpx2.AsyncClient(timeout=10) as http:
        session_id = await legacy_handshake(http, stack.url())
        live = await http.post(stack.url(), json=request, headers=legacy_headers(session_id))
        deleted = await http.delete(stack.url(), headers=legacy_headers(session_id))
        after = await http.post(stack.url(), json=request, headers=legacy_headers(session_id))
        deleted_again = await http.delete(stack.url(), headers=legacy_headers(session_id))

    assert live.status_code == 200
    assert '"text":"3"' in live.text.replace(" ", "")
    assert deleted.status_code == 200
    assert after.status_code == 404
    assert after.json()["error"]["code"] == -32600
    assert deleted_again.status_code == 404


# --------------------------------------------------------------------------------------
# Non-idempotent calls run exactly once
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_non_idempotent_tool_runs_once_per_call(stack: Stack, mode: str) -> None:
    recorder = Recorder()
    async with recorder.client(stack.url(), mode) as client:
        before = await call_counts(client)
        first = await client.call_tool("increment", {"by": 5})
        second = await client.call_tool("increment", {"by": 7})
        third = await client.call_tool("increment", {})
        after = await call_counts(client)

    values = [int(text_of(r)) for r in (first, second, third)]
    assert values[1] == values[0] + 7 and values[2] == values[1] + 1
    assert [r.structured_content for r in (first, second, third)] == [{"result": v} for v in values]
    assert ran(before, after) == {"increment": 3}
    if mode != "legacy":
        assert len(recorder.http.calls("increment")) == 3


# --------------------------------------------------------------------------------------
# /metrics
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_metrics_count_each_request_once_with_outcome_ok(stack: Stack, mode: str) -> None:
    """Every request the client made is counted once, as ``ok``, and the proxy logs only JSON meanwhile.

    The SDK client closes an SSE answer as soon as it has read the response in it, which can be
    before the proxy has seen the upstream's end of stream: the call was still answered, so it is
    ``ok``, not ``cancelled``. Many calls make that timing likely to occur at least once.
    """
    upstream = f"m-{mode}"
    before = await requests_total(stack.proxy.admin_url)
    log_mark = len(stack.proxy.log_lines)
    lookups = 40
    async with Recorder().client(stack.url(METRICS_PATHS[mode]), mode) as client:
        await client.list_tools()
        for _ in range(lookups):
            await client.call_tool("lookup", {"key": "alpha"})
        await client.call_tool("slow", {"seconds": 0.04})
        await client.call_tool("ask_llm", {"question": "q"})
        await client.read_resource("test://static-text")
        await client.get_prompt("test_simple_prompt")

    expected: dict[tuple[str, str, str, str], float] = {
        (upstream, "tools/list", "", "ok"): 1,
        (upstream, "tools/call", "lookup", "ok"): lookups,
        (upstream, "tools/call", "slow", "ok"): 1,
        # The 2026-07-28 input_required answer and its retry are two requests.
        (upstream, "tools/call", "ask_llm", "ok"): 1 if mode == "legacy" else 2,
        (upstream, "resources/read", "", "ok"): 1,
        (upstream, "prompts/get", "", "ok"): 1,
    }
    if mode == "legacy":
        expected[(upstream, "initialize", "", "ok")] = 1
    if mode == "auto":
        expected[(upstream, "server/discover", "", "ok")] = 1
    delta = await settled_delta(stack.proxy.admin_url, before, upstream, int(sum(expected.values())))
    assert delta == expected
    # Every line the proxy wrote meanwhile is a JSON log record (no stray tracebacks).
    stray = "".join(line["raw"] for line in stack.proxy.log_lines[log_mark:] if "raw" in line)
    assert not stray, stray
