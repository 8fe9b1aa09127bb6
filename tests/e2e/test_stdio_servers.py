"""Three real stdio servers behind the quick start (``serve --stdio -- CMD``), reached with the SDK client.

npm server-everything, the SDK 2.3 everything server and FastMCP 4.1.6, each run as the proxy's child
and reached over HTTP with the official client in every connect mode (``legacy``: initialize;
``2026-07-28``: the stateless era, which the proxy serves on top of a legacy child; ``auto``: discover,
which the proxy answers, so 2026-07-28 too). What they list is compared name by name with the same
server reached directly over stdio by a client declaring what the proxy declares to its children
(sampling, form elicitation, roots): a server such as server-everything lists tools by the client's
capabilities. One proxy per server is shared by the module; each test opens sessions of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp import Client
from mcp.types import LoggingMessageNotificationParams, TextContent

from tests.e2e.stdio_support import (
    NPM_STDIO,
    SDK_STDIO,
    STDIO_SERVERS,
    StdioProxies,
    StdioServer,
    direct_tool_names,
    full_client,
    require,
)
from tests.sdk_helpers import LEGACY_VERSION, MODERN_VERSION

pytestmark = pytest.mark.asyncio(loop_scope="package")

MODES = ("legacy", "auto", MODERN_VERSION)
NEGOTIATED = {"legacy": LEGACY_VERSION, "auto": MODERN_VERSION, MODERN_VERSION: MODERN_VERSION}
"""The version each mode ends up speaking through the proxy (auto: the proxy answers server/discover)."""
SERVER_MODES = [pytest.param(server, mode, id=f"{server}-{mode}") for server in STDIO_SERVERS for mode in MODES]


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def proxies(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StdioProxies]:
    shared = StdioProxies(tmp_path_factory.mktemp("stdio-servers"))
    try:
        yield shared
    finally:
        await shared.close()


_direct: dict[str, list[str]] = {}


async def direct_tools(server: StdioServer) -> list[str]:
    """`direct_tool_names`, once per server for the module (each call starts the server once more)."""
    if server.name not in _direct:
        _direct[server.name] = await direct_tool_names(server)
    return _direct[server.name]


def text_of(content: Any) -> str:
    assert isinstance(content, TextContent), content
    return content.text


@pytest.mark.parametrize(("server", "mode"), SERVER_MODES)
async def test_lists_calls_reads_prompts_as_direct(server: StdioServer, mode: str, proxies: StdioProxies) -> None:
    proxy = await proxies.get(server)
    expected_tools = await direct_tools(server)
    async with Client(proxy.url, mode=mode) as client:
        assert client.protocol_version == NEGOTIATED[mode]
        tools = [tool.name for tool in (await client.list_tools()).tools]
        assert tools == expected_tools, f"{server}/{mode}: through the proxy {tools}, direct {expected_tools}"

        result = await client.call_tool(server.tool, server.arguments)
        assert not result.is_error, result
        assert [text_of(c) for c in result.content] == [server.text]

        read = await client.read_resource(server.resource)
        assert len(read.contents) == 1 and str(read.contents[0].uri) == server.resource, read
        assert getattr(read.contents[0], "text", "").startswith(server.resource_text), read

        prompt = await client.get_prompt(server.prompt, server.prompt_arguments)
        assert len(prompt.messages) >= 1, prompt
        assert server.prompt_text in text_of(prompt.messages[0].content), prompt


FULL_CLIENT_SERVERS = [
    pytest.param(s, id=s.name) for s in STDIO_SERVERS
]


@pytest.mark.parametrize("server", FULL_CLIENT_SERVERS)
async def test_proxy_declares_what_a_full_sdk_client_declares(server: StdioServer, proxies: StdioProxies) -> None:
    """The official client with every callback set, directly and through the proxy, lists the same tools."""
    proxy = await proxies.get(server)
    require(server.missing())
    async with full_client(server.params(), "legacy") as direct:
        expected = sorted(tool.name for tool in (await direct.list_tools()).tools)
    async with full_client(proxy.url, "legacy") as client:
        assert sorted(tool.name for tool in (await client.list_tools()).tools) == expected


PROGRESS = {
    NPM_STDIO.name: (
        "trigger-long-running-operation",
        {"duration": 0.3, "steps": 3},
        [(1.0, 3.0, None), (2.0, 3.0, None), (3.0, 3.0, None)],
        "Long running operation completed. Duration: 0.3 seconds, Steps: 3.",
    ),
    SDK_STDIO.name: (
        "test_tool_with_progress",
        {},
        [
            (0.0, 100.0, "Completed step 0 of 100"),
            (50.0, 100.0, "Completed step 50 of 100"),
            (100.0, 100.0, "Completed step 100 of 100"),
        ],
        None,
    ),
}


@pytest.mark.parametrize(
    ("server", "mode"),
    [pytest.param(s, m, id=f"{s}-{m}") for s in (NPM_STDIO, SDK_STDIO) for m in MODES],
)
async def test_progress_reaches_the_caller(server: StdioServer, mode: str, proxies: StdioProxies) -> None:
    tool, arguments, expected, answer = PROGRESS[server.name]
    proxy = await proxies.get(server)
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(proxy.url, mode=mode) as client:
        result = await client.call_tool(tool, arguments, progress_callback=on_progress)
    assert not result.is_error, result
    assert seen == expected
    if answer is not None:
        assert [text_of(c) for c in result.content] == [answer]


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_legacy_log_level_and_log_lines(proxies: StdioProxies) -> None:
    """``logging/setLevel`` through the proxy sets what the child sends this session: below it, nothing."""
    proxy = await proxies.get(SDK_STDIO)
    logs: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with Client(proxy.url, mode="legacy", logging_callback=on_log) as client:
        await client.set_logging_level("info")
        result = await client.call_tool("emit_log", {"message": "first", "level": "info"})
        assert [text_of(c) for c in result.content] == ["logged info: first"]
        assert [(p.level, p.data) for p in logs] == [("info", "first")]

        await client.set_logging_level("warning")
        await client.call_tool("emit_log", {"message": "quiet", "level": "info"})
        await client.call_tool("emit_log", {"message": "loud", "level": "warning"})
        # A log line travels before its call's answer on the same stream: once the call returned, it is here.
        assert [(p.level, p.data) for p in logs] == [("info", "first"), ("warning", "loud")]

        result = await client.call_tool("test_tool_with_logging", {})
        assert [text_of(c) for c in result.content] == ["Tool with logging executed successfully"]
        assert [(p.level, p.data) for p in logs] == [("info", "first"), ("warning", "loud")]
