"""`isolation: per_session` against real stdio servers, the proxy run as a user runs it.

Each legacy session gets a child of its own, initialized as that client (its own capabilities), so a
question of the child's reaches its client even while other clients' calls are in flight (with a shared
child it is refused), a session's end stops its child, and `child.max_children` bounds them. Counts come
from `/status` (`stdio.session_children`), processes from `/proc`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.types import TextContent

from tests.e2e.restart_support import within
from tests.e2e.stdio_support import (
    NPM_STDIO,
    SDK_STDIO,
    Asked,
    StdioProxy,
    full_client,
    post_all,
    require,
    start_stdio_proxy,
)
from tests.sdk_helpers import LEGACY_VERSION, legacy_handshake, legacy_headers

pytestmark = pytest.mark.asyncio(loop_scope="package")

PER_SESSION = {"isolation": "per_session", "health": {"active": {"enabled": False}}}


def text_of(content: Any) -> str:
    assert isinstance(content, TextContent), content
    return content.text


async def started(argv: list[str], tmp_path: Path, **child: Any) -> StdioProxy:
    upstream: dict[str, Any] = {**PER_SESSION, **({"child": child} if child else {})}
    return await start_stdio_proxy(argv, tmp_path, upstream=upstream)


async def session_children(proxy: StdioProxy, count: int, what: str) -> None:
    await proxy.wait_child(lambda c: c.get("session_children") == count, what)


async def test_each_session_is_its_own_childs_client_and_is_asked_while_others_wait(tmp_path: Path) -> None:
    """A holds a call open in its child; B's child asks B for sampling: answered, where a shared child
    would have refused it (two clients waiting)."""
    require(SDK_STDIO.missing())
    proxy = await started(SDK_STDIO.argv(), tmp_path)
    try:
        asked_a, asked_b = Asked(), Asked(reply="from B")
        holding = asyncio.Event()

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if progress == 1:
                holding.set()

        async with full_client(proxy.url, "legacy", asked_a) as a, full_client(proxy.url, "legacy", asked_b) as b:
            await session_children(proxy, 2, "a child for each session")
            held = asyncio.ensure_future(a.call_tool("held", {"key": "per-session"}, progress_callback=on_progress))
            try:
                await within(holding.wait(), "A's held call in its child")
                sampled = await b.call_tool("test_sampling", {"prompt": "whose?"})
            finally:
                held.cancel()
                await asyncio.gather(held, return_exceptions=True)
        assert [text_of(c) for c in sampled.content] == ["LLM response: from B"]
        assert [method for method, _ in asked_b.questions] == ["sampling/createMessage"]
        assert asked_a.questions == []
        await session_children(proxy, 0, "each session's child stopped with its session (the client's DELETE)")
    finally:
        await proxy.stop()


async def test_a_child_is_initialized_with_its_own_clients_capabilities(tmp_path: Path) -> None:
    """npm server-everything lists the sampling and elicitation tools only to a client declaring them:
    through one proxy, a bare client and a full one each see what they would see directly."""
    require(NPM_STDIO.missing())
    proxy = await started(NPM_STDIO.argv(), tmp_path)
    try:
        async with Client(proxy.url, mode="legacy") as bare, full_client(proxy.url, "legacy") as full:
            bare_tools = {tool.name for tool in (await bare.list_tools()).tools}
            full_tools = {tool.name for tool in (await full.list_tools()).tools}
        assert "trigger-sampling-request" in full_tools and "trigger-sampling-request" not in bare_tools
        assert bare_tools < full_tools
    finally:
        await proxy.stop()


async def test_max_children_refuses_a_new_session_clearly_and_costs_the_sessions_there_nothing(tmp_path: Path) -> None:
    """Past `child.max_children` a new session is refused with 429 -32058 (the proxy's own limit): neither the
    breaker nor health counts it, so the session already there keeps working however often newcomers try."""
    require(NPM_STDIO.missing())
    proxy = await started(NPM_STDIO.argv(), tmp_path, max_children=1)
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    try:
        async with Client(proxy.url, mode="legacy") as first:
            await first.list_tools()
            async with httpx2.AsyncClient(timeout=30) as http:
                for _ in range(6):  # more than the default breaker's 5
                    status, messages = await post_all(http, proxy.url, initialize, {})
                    assert status == 429
                    [refused] = messages
                    assert refused["error"]["code"] == -32058
                    assert "child.max_children" in refused["error"]["message"]
            echoed = await first.call_tool("echo", {"message": "still here"})
            assert [text_of(c) for c in echoed.content] == ["Echo: still here"]
            assert (await proxy.admin("/readyz")).status_code == 200
        await session_children(proxy, 0, "the first session's child stopped")
    finally:
        await proxy.stop()


async def test_an_idle_sessions_child_is_stopped_and_the_session_rebuilt_on_its_next_call(tmp_path: Path) -> None:
    """`child.idle_timeout` stops the child of a session with no request and no open stream (a raw client
    that never opened its GET stream), which ends the session; the client's next call meets the 404 and the
    proxy's session keeper rebuilds the session on a new child, unseen by the client."""
    require(SDK_STDIO.missing())
    proxy = await started(SDK_STDIO.argv(), tmp_path, idle_timeout="1s")
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "test_simple_text", "arguments": {}}}
    try:
        async with httpx2.AsyncClient(timeout=30) as http:
            session = await legacy_handshake(http, proxy.url)
            status, first = await post_all(http, proxy.url, call, legacy_headers(session))
            assert status == 200
            await session_children(proxy, 1, "the session's child")
            await session_children(proxy, 0, "the idle child stopped")
            status, again = await post_all(http, proxy.url, {**call, "id": 3}, legacy_headers(session))
            assert status == 200
            await session_children(proxy, 1, "a new child for the rebuilt session")
        text = [{"type": "text", "text": "This is a simple text response for testing."}]
        assert first[-1]["result"]["content"] == again[-1]["result"]["content"] == text
        assert [e["method"] for e in proxy.log_events("session_recovered")] == ["tools/call"]
    finally:
        await proxy.stop()
