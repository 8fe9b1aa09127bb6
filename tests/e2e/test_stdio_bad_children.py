"""Broken stdio children behind the proxy: clients get a clear error that names why, /readyz says so.

The children are ``tests/stdio_children.py``'s scripted modes: ``garbage_only`` (writes only non-JSON
lines, never answers ``initialize``), ``no_init`` (answers nothing), ``exit_now`` (exits with code 3 at
once), and ``garbage`` (non-JSON lines first, then a correct server: the lines are skipped and it works).
Each runs behind its own proxy (all four started at once), with ``child.start_timeout: 1s``, a short
restart backoff, one failed probe enough to be unhealthy, and no retries, so each call shows the
gateway's answer as it is: 503, the proxy's upstream_unavailable code, the reason, ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx2
import pytest
import pytest_asyncio
from mcp import Client
from mcp.types import TextContent

from tests.e2e.restart_support import within
from tests.e2e.stdio_support import CHILDREN_ARGV, StdioProxy, post_all, start_stdio_proxy
from tests.e2e.wire import modern_request
from tests.sdk_helpers import LEGACY_VERSION

pytestmark = pytest.mark.asyncio(loop_scope="package")

MODES = ("garbage_only", "no_init", "exit_now", "garbage")
REASONS = {
    "garbage_only": "the child did not answer initialize within 1s",
    "no_init": "the child did not answer initialize within 1s",
    "exit_now": "the child exited with code 3 before answering initialize",
}


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def proxies(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, StdioProxy]]:
    upstream = {
        "child": {"start_timeout": "1s", "stop_grace": "200ms", "restart_backoff": {"base": "100ms", "max": "500ms"}},
        "health": {"active": {"unhealthy_threshold": 1}},
        "retry": {"max_attempts": 1},
    }
    started = await asyncio.gather(
        *(
            start_stdio_proxy([*CHILDREN_ARGV, mode], tmp_path_factory.mktemp(f"stdio-{mode}"), upstream=upstream)
            for mode in MODES
        ),
        return_exceptions=True,
    )
    running = [proxy for proxy in started if isinstance(proxy, StdioProxy)]
    try:
        for proxy in started:
            if isinstance(proxy, BaseException):
                raise proxy
        yield dict(zip(MODES, running, strict=True))
    finally:
        await asyncio.gather(*(proxy.stop() for proxy in running))


def unavailable(reason: str) -> re.Pattern[str]:
    """The gateway's message while no child is up: the state it is in varies with the moment asked."""
    return re.compile(
        r"the stdio server is not running: upstream default: no initialized child \((starting|backoff)\): "
        + re.escape(reason)
    )


@pytest.mark.parametrize("mode", ["garbage_only", "no_init", "exit_now"])
async def test_call_gets_the_reason(mode: str, proxies: dict[str, StdioProxy]) -> None:
    proxy = proxies[mode]
    reason = REASONS[mode]
    await proxy.wait_child(lambda c: c["last_error"] == reason, f"{mode}: the first start failed")
    async with httpx2.AsyncClient(timeout=30) as http:
        body, headers = modern_request("tools/call", {"name": "echo", "arguments": {"text": "hi"}}, 5, "echo")
        modern = await http.post(proxy.url, json=body, headers=headers)
        init = {
            "jsonrpc": "2.0",
            "id": 6,
            "method": "initialize",
            "params": {
                "protocolVersion": LEGACY_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "e2e", "version": "1"},
            },
        }
        legacy = await post_all(http, proxy.url, init, {})
    assert modern.status_code == 503, modern.text
    assert int(modern.headers["retry-after"]) >= 1
    answer = modern.json()
    assert (answer["jsonrpc"], answer["id"], answer["error"]["code"]) == ("2.0", 5, -32050), answer
    assert unavailable(reason).fullmatch(answer["error"]["message"]), answer
    assert "initialize" in answer["error"]["message"]
    status, [message] = legacy
    assert (status, message["id"], message["error"]["code"]) == (503, 6, -32050), message
    assert unavailable(reason).fullmatch(message["error"]["message"]), message

    await proxy.wait_readyz(503, f"{mode}: /readyz unready")
    readyz = await proxy.admin("/readyz")
    assert readyz.json()["status"] == "no healthy upstream", readyz.text


async def test_exit_now_restarts_with_its_exit_code(proxies: dict[str, StdioProxy]) -> None:
    proxy = proxies["exit_now"]
    child = await proxy.wait_child(lambda c: c["restarts"] >= 2, "exit_now restarted again and again")
    assert child["last_exit"] == {"code": 3}, child
    assert child["last_error"] == REASONS["exit_now"]
    assert child["state"] in ("starting", "backoff"), child
    failed = proxy.log_events("stdio_child_start_failed")
    assert failed, "no stdio_child_start_failed log line"
    assert all(REASONS["exit_now"] in str(line) for line in failed), failed[:3]


async def test_garbage_lines_are_skipped(proxies: dict[str, StdioProxy]) -> None:
    proxy = proxies["garbage"]
    child = await proxy.wait_up("the garbage child up")
    assert (child["restarts"], child["last_error"]) == (0, None), child
    await proxy.wait_readyz(200, "garbage: /readyz ready")
    for mode in ("legacy", "2026-07-28"):
        async with Client(proxy.url, mode=mode) as client:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            result = await within(client.call_tool("echo", {"text": f"through the garbage ({mode})"}), "echo")
        assert tools == ["echo", "sleep"]
        assert not result.is_error and len(result.content) == 1, result
        assert isinstance(result.content[0], TextContent)
        assert result.content[0].text == f"through the garbage ({mode})"
    assert (await proxy.child())["restarts"] == 0
