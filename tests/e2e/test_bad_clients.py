"""Bad clients in front of real servers: they get the server's own answer, and cost nobody else anything.

Each pattern runs through a fresh default proxy (``serve --upstream URL``) in front of a real server,
in each era the server speaks, driven as raw HTTP and with the official SDK client. A well-behaved
SDK client is connected the whole time. Each bad call is made :data:`~tests.e2e.wire.REPEAT` times in
a row (more than the default breaker's 5), each compared with the same request sent to the server
directly. After each burst the good client's call succeeds, ``/readyz`` is 200, the upstream breaker
is closed and the proxy retried nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.e2e.admin import assert_upstream_fine
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.upstreams import Era, SDK_MODE, SERVERS, SERVER_ERAS, ServerSpec
from tests.e2e.wire import (
    REPEAT,
    WireLog,
    assert_same_answer,
    era_request,
    good_call,
    modern_request,
    open_sdk_pair,
    raw_burst,
    request,
    sdk_burst,
    sdk_client,
    send,
    sessionless_headers,
    unknown_session_id,
)
from tests.sdk_helpers import legacy_handshake, legacy_headers, modern_meta

pytestmark = pytest.mark.asyncio(loop_scope="package")

LEGACY_SERVERS = [pytest.param(spec, id=spec.name) for spec in SERVERS if "legacy" in spec.eras]
ALL_SERVERS = [pytest.param(spec, id=spec.name) for spec in SERVERS]


@dataclass(frozen=True)
class UnknownName:
    """A request naming something the server does not have, raw and as an SDK call."""

    kind: str
    method: str
    params: dict[str, Any]
    name: str
    """What the request names (a 2026-07-28 request mirrors it in ``Mcp-Name``)."""
    sdk_call: Callable[[Client], Awaitable[Any]]


UNKNOWN_NAMES = [
    UnknownName(
        "prompt", "prompts/get", {"name": "no-such-prompt"}, "no-such-prompt", lambda c: c.get_prompt("no-such-prompt")
    ),
    UnknownName(
        "resource",
        "resources/read",
        {"uri": "test://no-such-resource"},
        "test://no-such-resource",
        lambda c: c.read_resource("test://no-such-resource"),
    ),
    UnknownName(
        "tool",
        "tools/call",
        {"name": "no_such_tool", "arguments": {}},
        "no_such_tool",
        lambda c: c.call_tool("no_such_tool", {}),
    ),
]


async def after_burst(stack: Stack, good: Client, spec: ServerSpec, what: str) -> None:
    """What must hold after every burst of bad calls."""
    await good_call(good, spec.good_call, f"the good client after {what}")
    await assert_upstream_fine(stack.admin_url, f"after {what}")


@pytest.mark.parametrize("unknown", [pytest.param(u, id=u.kind) for u in UNKNOWN_NAMES])
@pytest.mark.parametrize(("spec", "era"), SERVER_ERAS)
async def test_unknown_name(spec: ServerSpec, era: Era, unknown: UnknownName, stack_for: StackFactory) -> None:
    """``prompts/get``, ``resources/read``, ``tools/call`` of a name the server does not have."""
    stack = await stack_for(spec)
    mode = SDK_MODE[era]
    what = f"{spec}/{era} unknown {unknown.kind}"
    async with contextlib.AsyncExitStack() as scope:
        http = await scope.enter_async_context(httpx2.AsyncClient(timeout=30))
        good = await scope.enter_async_context(Client(stack.url, mode=mode))
        await good_call(good, spec.good_call, f"{what}: the good client before")
        sessions: dict[bool, str | None] = {True: None, False: None}
        if era == "legacy":
            sessions = {
                True: await legacy_handshake(http, stack.url),
                False: await legacy_handshake(http, stack.direct_url),
            }
        pair = await open_sdk_pair(scope, stack.url, stack.direct_url, mode)

        def build(i: int, via_proxy: bool) -> tuple[dict[str, Any], dict[str, str]]:
            return era_request(era, unknown.method, unknown.params, 100 + i, unknown.name, sessions[via_proxy])

        await raw_burst(http, stack.url, stack.direct_url, build, what)
        await after_burst(stack, good, spec, f"raw {what}")
        await sdk_burst(pair, unknown.sdk_call, what)
        await after_burst(stack, good, spec, f"SDK {what}")


@pytest.mark.parametrize("spec", LEGACY_SERVERS)
async def test_sessionless_post(spec: ServerSpec, stack_for: StackFactory) -> None:
    """A legacy request without ``Mcp-Session-Id`` (the client skipped ``initialize``).

    For a legacy-only server the SDK client pinned to 2026-07-28 is such a client too (a modern
    request carries no session), so it is driven as well.
    """
    stack = await stack_for(spec)
    what = f"{spec} sessionless POST"
    async with contextlib.AsyncExitStack() as scope:
        http = await scope.enter_async_context(httpx2.AsyncClient(timeout=30))
        good = await scope.enter_async_context(Client(stack.url, mode="legacy"))
        await good_call(good, spec.good_call, f"{what}: the good client before")

        def build(i: int, via_proxy: bool) -> tuple[dict[str, Any], dict[str, str]]:
            return request("tools/list", None, 200 + i), sessionless_headers()

        await raw_burst(http, stack.url, stack.direct_url, build, what)
        await after_burst(stack, good, spec, f"raw {what}")
        if "modern" not in spec.eras:
            pair = await open_sdk_pair(scope, stack.url, stack.direct_url, SDK_MODE["modern"])
            call = spec.good_call
            await sdk_burst(pair, lambda c: c.call_tool(call.tool, call.arguments), f"{what} (2026-07-28 mode)")
            await after_burst(stack, good, spec, f"SDK {what} (2026-07-28 mode)")


@pytest.mark.parametrize("spec", LEGACY_SERVERS)
async def test_unknown_session(spec: ServerSpec, stack_for: StackFactory) -> None:
    """A session id the server does not know: made up (raw), or one the server has ended (SDK client).

    A made-up id is no session the proxy keeps: the server's own answer reaches the client. The SDK
    clients' sessions are ended with a DELETE sent straight to the server, so each client still holds
    an id its server no longer knows, as after a server-side session timeout: the direct client fails,
    and the proxied one goes on working, its session rebuilt by the proxy (docs/sessions.md).
    """
    stack = await stack_for(spec)
    bogus = unknown_session_id()
    what = f"{spec} unknown session"
    async with contextlib.AsyncExitStack() as scope:
        http = await scope.enter_async_context(httpx2.AsyncClient(timeout=30))
        good = await scope.enter_async_context(Client(stack.url, mode="legacy"))
        await good_call(good, spec.good_call, f"{what}: the good client before")

        def build(i: int, via_proxy: bool) -> tuple[dict[str, Any], dict[str, str]]:
            return request("tools/list", None, 300 + i), legacy_headers(bogus)

        await raw_burst(http, stack.url, stack.direct_url, build, what)
        await after_burst(stack, good, spec, f"raw {what}")

        pair = await open_sdk_pair(scope, stack.url, stack.direct_url, "legacy")
        for log in (pair.proxied_log, pair.direct_log):
            (session_id,) = log.session_ids()
            ended = await http.delete(stack.direct_url, headers=legacy_headers(session_id))
            assert ended.status_code == 200, ended.text
        call = spec.good_call
        with pytest.raises(MCPError):
            await pair.direct.call_tool(call.tool, call.arguments)
        for i in range(REPEAT):
            await good_call(pair.proxied, call, f"{what}: the proxied SDK client's call #{i + 1} (ended by the server)")
        await after_burst(stack, good, spec, f"SDK {what}")


@pytest.mark.parametrize("spec", ALL_SERVERS)
async def test_auto_clients_connecting_at_once(spec: ServerSpec, stack_for: StackFactory) -> None:
    """:data:`REPEAT` SDK clients in their default ``auto`` mode connect at the same moment.

    ``auto`` probes ``server/discover`` first; a legacy-only server answers it with an error and the
    client falls back to ``initialize``. Each client must end up where a lone client talking to the
    server directly ends up: same answer to its probe, same protocol version, a working call.
    """
    stack = await stack_for(spec)
    reference_log = WireLog()
    async with sdk_client(stack.direct_url, "auto", reference_log) as reference:
        version = reference.protocol_version
    probe_status = reference_log.exchanges[0].status
    start = asyncio.Event()

    async def connect(index: int) -> tuple[WireLog, str | None]:
        log = WireLog()
        await start.wait()
        async with sdk_client(stack.url, "auto", log) as client:
            await good_call(client, spec.good_call, f"{spec} auto client {index}")
            return log, client.protocol_version

    async with Client(stack.url, mode="legacy") as good:
        await good_call(good, spec.good_call, f"{spec}: the good client before")
        tasks = [asyncio.create_task(connect(i)) for i in range(REPEAT)]
        start.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [repr(r) for r in results if isinstance(r, BaseException)]
        assert failed == [], f"{spec}: auto clients failed: {failed}"
        for index, result in enumerate(results):
            assert not isinstance(result, BaseException)
            log, negotiated = result
            probe = log.exchanges[0]
            assert (probe.mcp_method, probe.status, log.proxy_errors) == ("server/discover", probe_status, []), (
                f"{spec} auto client {index}: probe {probe}, proxy errors {log.proxy_errors}"
            )
            assert negotiated == version, f"{spec} auto client {index}: negotiated {negotiated}, direct {version}"
        await after_burst(stack, good, spec, f"{spec}: {REPEAT} auto clients at once")


UNUSUAL_JSON: dict[str, bytes] = {
    "1e999": b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"%(tool)s","arguments":{"n":1e999}%(meta)s}}',
    "lone surrogate": b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"%(tool)s","arguments":{"s":"\\ud800"}%(meta)s}}',
    "BOM": b'\xef\xbb\xbf{"jsonrpc":"2.0","id":4,"method":"ping","params":{%(bare_meta)s}}',
    "id 1.0": b'{"jsonrpc":"2.0","id":1.0,"method":"ping","params":{%(bare_meta)s}}',
    "empty method": b'{"jsonrpc":"2.0","id":5,"method":"","params":{%(bare_meta)s}}',
}
"""Valid JSON that orjson refuses (or the proxy once refused): a server decides what it makes of it."""


@pytest.mark.parametrize("edge", list(UNUSUAL_JSON))
@pytest.mark.parametrize(("spec", "era"), SERVER_ERAS)
async def test_unusual_valid_json(spec: ServerSpec, era: Era, edge: str, stack_for: StackFactory) -> None:
    """A number past a double's range, a lone surrogate escape, a UTF-8 BOM, an id written ``1.0``, an
    empty method: the client hears what the server answers to it, whatever that is (server-everything
    reads them all and echoes ``"id":1`` for ``1.0``; the SDK servers refuse a surrogate and a BOM in the
    legacy era and read them in 2026-07-28), and the proxy is none the worse."""
    stack = await stack_for(spec)
    what = f"{spec}/{era} {edge}"
    async with contextlib.AsyncExitStack() as scope:
        http = await scope.enter_async_context(httpx2.AsyncClient(timeout=30))
        good = await scope.enter_async_context(Client(stack.url, mode=SDK_MODE[era]))
        answers = []
        for url in (stack.url, stack.direct_url):
            method = b"" if edge == "empty method" else b"tools/call" if b"tools/call" in UNUSUAL_JSON[edge] else b"ping"
            if era == "modern":
                meta = json.dumps(modern_meta()).encode()
                fill = {b"tool": spec.good_call.tool.encode(), b"meta": b',"_meta":' + meta, b"bare_meta": b'"_meta":' + meta}
                _, headers = modern_request(method.decode(), {}, 0, spec.good_call.tool if method == b"tools/call" else None)
            else:
                fill = {b"tool": spec.good_call.tool.encode(), b"meta": b"", b"bare_meta": b""}
                headers = legacy_headers(await legacy_handshake(http, url))
            answers.append(await send(http, url, UNUSUAL_JSON[edge] % fill, headers))
        assert_same_answer(*answers, what)
        await after_burst(stack, good, spec, what)
