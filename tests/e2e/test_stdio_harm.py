"""Bad clients in front of real stdio servers: they get the server's own answer, and cost nobody else anything.

The stdio counterpart of ``test_bad_clients.py``. Each of the three real stdio servers runs as the
child of a default proxy (``serve --stdio -- CMD``, one shared child), one proxy per server for the
module. A well-behaved SDK client is connected through each test; each bad call is made
:data:`~tests.e2e.wire.REPEAT` times in a row (more than the default breaker's 5 failures). After each
burst (:func:`after_burst`): the good client's call succeeds, ``/readyz`` is 200, the upstream breaker
is closed, the proxy retried nothing, and the child was not restarted (same pid, same ``restarts`` in
``/status``).

Where the server answers the mistake itself, the bad client must get the server's own answer: the same
request is asked of the same server run directly over raw pipes (:mod:`tests.e2e.stdio_direct`, one
process per server for the module) and the JSON-RPC error, or the result, compared with ids left out
and, for a 2026-07-28 client, the modern result's stamps (``resultType``, cache hints, ``serverInfo``)
left out. Where the proxy must answer itself (a session it never gave out, no session at all, a batch)
the exact answer is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Final

import httpx2
import pytest
import pytest_asyncio
from mcp import Client
from mcp.client.session import ClientRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, CreateMessageRequestParams, CreateMessageResult, TextContent

from tests.e2e.admin import assert_upstream_fine
from tests.e2e.stdio_direct import DirectStdio
from tests.e2e.stdio_support import (
    NPM_STDIO,
    SDK_STDIO,
    STDIO_SERVERS,
    WAIT_S,
    StdioProxies,
    StdioProxy,
    StdioServer,
    require,
)
from tests.e2e.test_bad_clients import UNUSUAL_JSON
from tests.e2e.upstreams import Era
from tests.e2e.wire import (
    PROXY_ERROR_CODES,
    REPEAT,
    Answer,
    era_request,
    request,
    send,
    sessionless_headers,
    unknown_session_id,
)
from tests.sdk_helpers import ACCEPT, MODERN_VERSION, legacy_handshake, legacy_headers, modern_meta, read_sse

pytestmark = pytest.mark.asyncio(loop_scope="package")

ERAS: Final[tuple[Era, ...]] = ("legacy", "modern")
SDK_MODE: Final[dict[Era, str]] = {"legacy": "legacy", "modern": MODERN_VERSION}
SERVERS = [pytest.param(server, id=server.name) for server in STDIO_SERVERS]
SERVER_ERAS = [pytest.param(server, era, id=f"{server}-{era}") for server in STDIO_SERVERS for era in ERAS]

MODERN_STATUS: Final = {-32700: 400, -32600: 400, -32602: 400, -32601: 404}
"""The HTTP status an SDK 2.3 server gives a 2026-07-28 JSON error answer, by code (else 200)."""
MODERN_STAMPS: Final = ("resultType", "ttlMs", "cacheScope")
SERVER_INFO_META: Final = "io.modelcontextprotocol/serverInfo"


# --------------------------------------------------------------------------------------
# Fixtures: one proxy and one direct reference process per server, for the module
# --------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def proxies(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StdioProxies]:
    shared = StdioProxies(tmp_path_factory.mktemp("stdio-harm"))
    try:
        yield shared
    finally:
        await shared.close()


class Directs:
    """Each server's direct reference process, started on first use."""

    def __init__(self) -> None:
        self._running: dict[str, DirectStdio] = {}
        self._lock = asyncio.Lock()

    async def get(self, server: StdioServer) -> DirectStdio:
        async with self._lock:
            if server.name not in self._running:
                self._running[server.name] = await DirectStdio.start(server)
            return self._running[server.name]

    async def close(self) -> None:
        for direct in self._running.values():
            await direct.close()


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def directs() -> AsyncIterator[Directs]:
    shared = Directs()
    try:
        yield shared
    finally:
        await shared.close()


@dataclass
class Scene:
    """One test's setting: the proxy, the server run directly, the good client and the child as it was."""

    server: StdioServer
    proxy: StdioProxy
    direct: DirectStdio
    http: httpx2.AsyncClient
    good: Client
    pid: int
    restarts: int

    async def after_burst(self, what: str) -> None:
        """What must hold after every burst of bad calls."""
        try:
            result = await self.good.call_tool(self.server.tool, self.server.arguments)
        except MCPError as exc:
            raise AssertionError(f"{what}: the good client's call failed: {exc.code} {exc.message} {exc.data}") from exc
        assert isinstance(result, CallToolResult) and not result.is_error, f"{what}: {result}"
        assert texts(result) == [self.server.text], f"{what}: the good client got {texts(result)}"
        await assert_upstream_fine(self.proxy.admin_url, what)
        child = await self.proxy.child()
        assert (child["state"], child["pid"], child["restarts"]) == ("up", self.pid, self.restarts), (
            f"{what}: the child was restarted or is not up: {child}"
        )


@contextlib.asynccontextmanager
async def scene(
    server: StdioServer, proxies: StdioProxies, directs: Directs, good_mode: str = "legacy"
) -> AsyncIterator[Scene]:
    require(server.missing())
    proxy = await proxies.get(server)
    direct = await directs.get(server)
    child = await proxy.wait_up()
    async with httpx2.AsyncClient(timeout=WAIT_S) as http, Client(proxy.url, mode=good_mode) as good:
        found = Scene(server, proxy, direct, http, good, child["pid"], child["restarts"])
        await found.after_burst(f"{server}: before any bad call")
        yield found


def texts(result: CallToolResult) -> list[str | None]:
    return [getattr(item, "text", None) for item in result.content]


# --------------------------------------------------------------------------------------
# Comparing an answer through the proxy with the server's own
# --------------------------------------------------------------------------------------


def normalized(message: dict[str, Any] | None, era: Era) -> dict[str, Any] | None:
    """`message` without its id and ``jsonrpc``, and a 2026-07-28 result without the modern stamps."""
    if message is None:
        return None
    found = {key: value for key, value in message.items() if key not in ("id", "jsonrpc")}
    result = found.get("result")
    if era == "modern" and isinstance(result, dict):
        result = {key: value for key, value in result.items() if key not in MODERN_STAMPS}
        meta = result.get("_meta")
        if isinstance(meta, dict):
            meta = {key: value for key, value in meta.items() if key != SERVER_INFO_META}
            result = {**{k: v for k, v in result.items() if k != "_meta"}, **({"_meta": meta} if meta else {})}
        found["result"] = result
    error = found.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        found["error"] = {**error, "message": _unordered(error["message"])}
    return found


_SET_REPR: Final = re.compile(r"\{'[^{}]*'\}")
"""A Python set printed in a server's message ("Missing required arguments: {'arg2', 'arg1'}"): its order
is the interpreter's hash seed's, one per process, so two processes of the same server print it apart."""


def _unordered(message: Any) -> Any:
    """A server's message with the Python sets it prints sorted (`_SET_REPR`)."""
    return _SET_REPR.sub(_sorted_set, message) if isinstance(message, str) else message


def _sorted_set(match: re.Match[str]) -> str:
    return "{" + ", ".join(sorted(match.group(0)[1:-1].split(", "))) + "}"


def expected_status(direct: dict[str, Any], era: Era) -> int:
    """A legacy answer rides in a 200; a modern one as the SDK server gives it."""
    error = direct.get("error")
    if era == "legacy" or not isinstance(error, dict):
        return 200
    return MODERN_STATUS.get(error.get("code", 0), 200)


def assert_not_the_proxys(proxied: Answer, what: str) -> None:
    assert proxied.proxy_error is None, f"{what}: a proxy error: {proxied.describe()}"
    error = (proxied.message or {}).get("error")
    if isinstance(error, dict):
        assert error.get("code") not in PROXY_ERROR_CODES, f"{what}: a proxy error code: {proxied.describe()}"


def assert_servers_answer(proxied: Answer, direct: dict[str, Any] | None, era: Era, what: str) -> None:
    """The bad client got what the server answers, as its era carries it."""
    assert_not_the_proxys(proxied, what)
    assert direct is not None, f"{what}: the server answered nothing directly; through the proxy {proxied.describe()}"
    assert (proxied.status, normalized(proxied.message, era)) == (
        expected_status(direct, era),
        normalized(direct, era),
    ), (
        f"{what}: the answer through the proxy differs from the server's\n proxy:  {proxied.describe()}\n direct: {direct}"
    )


def params_for_child(params: dict[str, Any]) -> dict[str, Any]:
    """What the child gets of a client's params (the proxy strips nothing else a test sends)."""
    return {key: value for key, value in params.items() if key != "_meta"}


async def raw_burst(scene: Scene, era: Era, method: str, params: dict[str, Any], name: str | None, what: str) -> None:
    """:data:`REPEAT` raw requests through the proxy at once (no success in between, as a breaker counts
    them), each compared with the server's direct answer and carrying its own id."""
    session = await legacy_handshake(scene.http, scene.proxy.url) if era == "legacy" else None
    direct = await scene.direct.reference(method, params_for_child(params))

    async def one(i: int) -> None:
        body, headers = era_request(era, method, params, 100 + i, name, session)
        proxied = await send(scene.http, scene.proxy.url, body, headers)
        assert_servers_answer(proxied, direct, era, f"raw {what} #{i + 1}")
        assert (proxied.message or {}).get("id") == 100 + i, (
            f"raw {what} #{i + 1}: not its own id: {proxied.describe()}"
        )

    await asyncio.gather(*(one(i) for i in range(REPEAT)))


def sdk_expected(direct: dict[str, Any]) -> tuple[Any, ...]:
    """What an SDK client raises or returns for the server's answer `direct`."""
    error = direct.get("error")
    if isinstance(error, dict):
        return ("error", error.get("code"), _unordered(error.get("message")), error.get("data"))
    result = direct["result"]
    if "isError" in result or "content" in result:
        return ("tool", bool(result.get("isError")), [item.get("text") for item in result.get("content", [])])
    return ("result", result)


async def sdk_burst(
    scene: Scene, era: Era, call: Callable[[Client], Awaitable[Any]], direct: dict[str, Any], what: str
) -> None:
    """:data:`REPEAT` SDK calls through the proxy at once, each raising or returning what the server answers."""
    expected = sdk_expected(direct)

    async def one(bad: Client, i: int) -> None:
        try:
            result = await call(bad)
        except MCPError as exc:
            got: tuple[Any, ...] = ("error", exc.code, _unordered(exc.message), exc.data)
        else:
            assert isinstance(result, CallToolResult), f"SDK {what}: {result}"
            got = ("tool", result.is_error, texts(result))
        assert got == expected, f"SDK {what} #{i + 1}: through the proxy {got}\n direct: {direct}"

    async with Client(scene.proxy.url, mode=SDK_MODE[era]) as bad:
        await asyncio.gather(*(one(bad, i) for i in range(REPEAT)))


# --------------------------------------------------------------------------------------
# Unknown names, wrong arguments
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadCall:
    """A request a server refuses, raw and (when the SDK client can send it) as an SDK call."""

    kind: str
    method: str
    params: Callable[[StdioServer], dict[str, Any]]
    name: Callable[[StdioServer], str]
    sdk_call: Callable[[StdioServer], Callable[[Client], Awaitable[Any]] | None]


UNKNOWN_NAMES: Final = (
    BadCall(
        "unknown tool",
        "tools/call",
        lambda s: {"name": "no_such_tool", "arguments": {}},
        lambda s: "no_such_tool",
        lambda s: lambda c: c.call_tool("no_such_tool", {}),
    ),
    BadCall(
        "unknown prompt",
        "prompts/get",
        lambda s: {"name": "no-such-prompt"},
        lambda s: "no-such-prompt",
        lambda s: lambda c: c.get_prompt("no-such-prompt"),
    ),
    BadCall(
        "unknown resource",
        "resources/read",
        lambda s: {"uri": "test://no-such-resource"},
        lambda s: "test://no-such-resource",
        lambda s: lambda c: c.read_resource("test://no-such-resource"),
    ),
)
WRONG_ARGUMENTS: Final = (
    BadCall(
        "tool without arguments",
        "tools/call",
        lambda s: {"name": s.tool, "arguments": {}},
        lambda s: s.tool,
        lambda s: lambda c: c.call_tool(s.tool, {}),
    ),
    BadCall(
        "tool with wrong-typed arguments",
        "tools/call",
        lambda s: {"name": s.tool, "arguments": {key: [7] for key in s.arguments}},
        lambda s: s.tool,
        lambda s: lambda c: c.call_tool(s.tool, {key: [7] for key in s.arguments}),
    ),
    BadCall(
        "prompt without arguments",
        "prompts/get",
        lambda s: {"name": s.prompt},
        lambda s: s.prompt,
        lambda s: lambda c: c.get_prompt(s.prompt),
    ),
    BadCall(
        "prompt with wrong-typed arguments",
        "prompts/get",
        lambda s: {"name": s.prompt, "arguments": {key: 5 for key in s.prompt_arguments}},
        lambda s: s.prompt,
        lambda s: None,  # the SDK client types prompt arguments as strings: only a raw client sends this
    ),
)
BAD_CALLS: Final = (*UNKNOWN_NAMES, *WRONG_ARGUMENTS)


@pytest.mark.parametrize(("server", "era"), SERVER_ERAS)
async def test_server_refuses_the_call(server: StdioServer, era: Era, proxies: StdioProxies, directs: Directs) -> None:
    """An unknown tool, prompt or resource; a tool or prompt called without its arguments or with
    wrong-typed ones: raw in both eras and through the SDK client, each answered as the server answers.

    The SDK client's bursts run in the legacy era only: the SDK everything server renders a rich
    traceback on stderr for every prompt it refuses (~0.4 s of CPU each, directly as behind the proxy),
    and a 2026-07-28 SDK client sends the same request the raw modern burst already sends."""
    async with scene(server, proxies, directs, SDK_MODE[era]) as here:
        for bad in BAD_CALLS:
            what = f"{server}/{era} {bad.kind}"
            params = bad.params(server)
            await raw_burst(here, era, bad.method, params, bad.name(server), what)
            await here.after_burst(f"raw {what}")
            sdk_call = bad.sdk_call(server)
            if sdk_call is not None and era == "legacy":
                direct = await here.direct.reference(bad.method, params)
                await sdk_burst(here, era, sdk_call, direct, what)
                await here.after_burst(f"SDK {what}")


# --------------------------------------------------------------------------------------
# What the proxy answers itself: no session, a session it never gave out, a batch
# --------------------------------------------------------------------------------------


async def assert_burst_answered(
    scene: Scene, build: Callable[[int], tuple[str, bytes, dict[str, str]]], expected: tuple[int, Any], what: str
) -> None:
    """:data:`REPEAT` requests (method, body, headers); each answered exactly `expected` (status, JSON body)."""
    for i in range(REPEAT):
        method, body, headers = build(i)
        response = await scene.http.request(
            method, scene.proxy.url, content=body, headers={"content-type": "application/json", **headers}
        )
        got = (response.status_code, response.json() if response.content else None)
        assert got == expected, f"{what} #{i + 1}: {got} {dict(response.headers)}"


SESSION_NOT_FOUND: Final = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
NO_SESSION: Final = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {"code": -32000, "message": "Bad Request: No valid session ID provided"},
}
BATCH_NOT_IN_VERSION: Final = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {
        "code": -32600,
        "message": "JSON-RPC batches are not part of MCP 2025-11-25",
        "data": {"reason": "batch"},
    },
}
"""The proxy's own answer to a batch from a client that said it speaks 2025-11-25 (any upstream)."""
BATCH_REFUSED: Final = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {
        "code": -32600,
        "message": "Invalid Request: a stdio upstream takes one JSON-RPC message per POST, not a batch",
    },
}


BATCHES: Final = {"2025-11-25": (400, BATCH_NOT_IN_VERSION), "2025-03-26": (400, BATCH_REFUSED)}
"""A batch's answer by the version the client says it speaks: 2025-03-26 still had batches, so there the
stdio gateway refuses it (a stdio server's transport has none)."""


@pytest.mark.parametrize("server", SERVERS)
async def test_session_mistakes_and_batches(server: StdioServer, proxies: StdioProxies, directs: Directs) -> None:
    """A legacy POST without ``Mcp-Session-Id`` (400), with one nobody gave out (404), a DELETE of such a
    session (404), a GET stream for it (404), and a batch (400, -32600: the stdio transport has none)."""
    async with scene(server, proxies, directs) as here:

        def sessionless(i: int) -> tuple[str, bytes, dict[str, str]]:
            return "POST", json.dumps(request("tools/list", None, 200 + i)).encode(), sessionless_headers()

        await assert_burst_answered(here, sessionless, (400, NO_SESSION), f"{server} sessionless POST")
        await here.after_burst(f"{server} sessionless POSTs")

        def unknown(i: int) -> tuple[str, bytes, dict[str, str]]:
            body = json.dumps(request("tools/list", None, 300 + i)).encode()
            return "POST", body, legacy_headers(unknown_session_id())

        await assert_burst_answered(here, unknown, (404, SESSION_NOT_FOUND), f"{server} unknown session")
        await here.after_burst(f"{server} unknown sessions")

        def delete(i: int) -> tuple[str, bytes, dict[str, str]]:
            return "DELETE", b"", legacy_headers(unknown_session_id())

        await assert_burst_answered(here, delete, (404, SESSION_NOT_FOUND), f"{server} DELETE of an unknown session")
        await here.after_burst(f"{server} DELETEs of unknown sessions")

        def stream(i: int) -> tuple[str, bytes, dict[str, str]]:
            return "GET", b"", {**legacy_headers(unknown_session_id()), "accept": "text/event-stream"}

        await assert_burst_answered(here, stream, (404, SESSION_NOT_FOUND), f"{server} GET of an unknown session")
        await here.after_burst(f"{server} GETs of unknown sessions")

        session = await legacy_handshake(here.http, here.proxy.url)
        for version, expected in BATCHES.items():

            def batch(i: int) -> tuple[str, bytes, dict[str, str]]:
                calls = [request("tools/call", {"name": server.tool, "arguments": server.arguments}, 400 + i)]
                headers = {**legacy_headers(session), "mcp-protocol-version": version}
                return "POST", json.dumps(calls).encode(), headers

            await assert_burst_answered(here, batch, expected, f"{server} batch ({version})")
            await here.after_burst(f"{server} batches ({version})")


# --------------------------------------------------------------------------------------
# Unusual but valid JSON
# --------------------------------------------------------------------------------------


BEYOND_DOUBLE: Final = {(server.name, "1e999") for server in STDIO_SERVERS}
"""Valid JSON the proxy cannot carry to a stdio child, refused clearly (-32700 naming why): ``1e999`` is
past a double's range, and the gateway must write the message again (ids renamed) where an HTTP upstream
gets the bytes as they are; every server answers that call itself (an ``isError`` result). A documented
limit (docs/stdio.md), not a silent change of the number."""
MODERN_ID_REFUSED: Final = {
    "jsonrpc": "2.0",
    "id": None,
    "error": {"code": -32600, "message": "Body must be a single JSON-RPC request or notification object"},
}
"""A 2026-07-28 request with the id ``1.0``: the SDK 2.3 server takes only string and integer ids, and the
gateway serves the modern era as that server does (``proxy/upstream/stdio/modern.py``)."""


async def unusual_answers(here: Scene, era: Era, edge: str) -> tuple[dict[str, Any] | None, list[Answer]]:
    """The server's direct answer to the `edge` line (None: it answered nothing) and the proxy's answers
    to :data:`REPEAT` of them sent at once, as a client of `era` sends it."""
    template = UNUSUAL_JSON[edge]
    fill = {b"tool": here.server.tool.encode(), b"meta": b"", b"bare_meta": b""}
    plain = template.removeprefix(b"\xef\xbb\xbf") % fill
    request_id, method = json.loads(plain)["id"], json.loads(plain)["method"]
    key = (here.server.name, edge)
    if key not in _unusual_direct:
        _unusual_direct[key] = await here.direct.ask(template % fill, request_id)
    if _unusual_direct[key] is None and edge == "lone surrogate":
        # The Python servers drop the line unanswered (their parser refuses the escape), and the gateway passes
        # it on as the server-everything case shows: through the proxy the client waits, as it does directly,
        # for the per-try timeout. Nothing to compare, and nothing but time to spend on it.
        return None, []
    if era == "modern":
        meta = json.dumps(modern_meta()).encode()
        fill = {**fill, b"meta": b',"_meta":' + meta, b"bare_meta": b'"_meta":' + meta}
        headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN_VERSION, "mcp-method": method}
        if method == "tools/call":
            headers["mcp-name"] = here.server.tool
    else:
        headers = legacy_headers(await legacy_handshake(here.http, here.proxy.url))
    answers = await asyncio.gather(*(send(here.http, here.proxy.url, template % fill, headers) for _ in range(REPEAT)))
    return _unusual_direct[key], list(answers)


_unusual_direct: dict[tuple[str, str], dict[str, Any] | None] = {}


@pytest.mark.parametrize(("server", "era"), SERVER_ERAS)
async def test_unusual_valid_json(server: StdioServer, era: Era, proxies: StdioProxies, directs: Directs) -> None:
    """``1e999``, a lone surrogate escape, a UTF-8 BOM, an id written ``1.0``, an empty method: where the
    server answers the line, the client hears that answer; where it answers nothing (the Python SDK drops
    a line it cannot validate, and its client would wait for ever), any prompt answer carrying the
    request's id, or a 4xx JSON-RPC error, is no harm. (The lines :data:`BEYOND_DOUBLE` are
    `test_a_number_beyond_a_double_is_refused_clearly`'s.)"""
    async with scene(server, proxies, directs, SDK_MODE[era]) as here:
        for edge in UNUSUAL_JSON:
            if (server.name, edge) in BEYOND_DOUBLE:
                continue
            what = f"{server}/{era} {edge}"
            direct, answers = await unusual_answers(here, era, edge)
            for i, proxied in enumerate(answers):
                if era == "modern" and edge == "id 1.0":
                    got = (proxied.status, proxied.message)
                    assert got == (400, MODERN_ID_REFUSED), f"{what} #{i + 1}: {proxied.describe()}"
                elif direct is None:
                    assert_not_the_proxys(proxied, f"{what} #{i + 1}")
                    message = proxied.message or {}
                    answered = "result" in message or "error" in message
                    assert answered and (proxied.status == 200 or 400 <= proxied.status < 500), (
                        f"{what} #{i + 1}: {proxied.describe()}"
                    )
                else:
                    assert_servers_answer(proxied, direct, era, f"{what} #{i + 1}")
            await here.after_burst(what)


@pytest.mark.parametrize(
    ("server", "era"),
    [pytest.param(server, era, id=f"{server}-{era}") for server in STDIO_SERVERS for era in ERAS],
)
async def test_a_number_beyond_a_double_is_refused_clearly(
    server: StdioServer, era: Era, proxies: StdioProxies, directs: Directs
) -> None:
    """:data:`BEYOND_DOUBLE`: the client hears why, and nobody else is any the worse."""
    what = f"{server}/{era} 1e999"
    async with scene(server, proxies, directs, SDK_MODE[era]) as here:
        _, answers = await unusual_answers(here, era, "1e999")
        await here.after_burst(what)
    for answer in answers:
        assert answer.status == 400, answer.describe()
        assert answer.message is not None and answer.message["error"]["code"] == -32700, answer.describe()
        assert "beyond a double's range" in answer.message["error"]["message"], answer.describe()


# --------------------------------------------------------------------------------------
# Clients that leave, cancel or answer what is not theirs
# --------------------------------------------------------------------------------------

HELD: Final[dict[str, tuple[str, Callable[[str], dict[str, Any]]]]] = {
    NPM_STDIO.name: ("trigger-long-running-operation", lambda key: {"duration": 0.6, "steps": 6}),
    SDK_STDIO.name: ("held", lambda key: {"key": key}),
}
"""A call that is still running after its first progress notification (FastMCP's app has none)."""


async def disconnect_after_progress(
    scene: Scene, session: str, tool: str, arguments: dict[str, Any], token: str
) -> None:
    """Call `tool` on a stream, read its first progress notification, and go away."""
    body = request("tools/call", {"name": tool, "arguments": arguments, "_meta": {"progressToken": token}}, 1)
    headers = {"content-type": "application/json", **legacy_headers(session)}
    async with scene.http.stream("POST", scene.proxy.url, content=json.dumps(body), headers=headers) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        async for event in read_sse(response):
            if event.data and json.loads(event.data).get("method") == "notifications/progress":
                return
    raise AssertionError(f"{scene.server}: the {tool} call ended before its first progress notification")


async def disconnect_at_once(scene: Scene, session: str) -> None:
    """Write a whole call and close the connection without reading a byte of its answer."""
    body = json.dumps(request("tools/call", {"name": scene.server.tool, "arguments": scene.server.arguments}, 1))
    host, port = scene.proxy.process.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(
        f"{key}: {value}\r\n"
        for key, value in {
            "Host": f"{host}:{port}",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            **legacy_headers(session),
        }.items()
    )
    writer.write(f"POST /mcp HTTP/1.1\r\n{head}\r\n{body}".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize("server", SERVERS)
async def test_client_disconnects_mid_call(server: StdioServer, proxies: StdioProxies, directs: Directs) -> None:
    """A client that goes away with its call in the child's hands (after its first progress notification;
    FastMCP's app has no call that lasts, so there the connection is closed right after the request):
    its call is abandoned, nothing is counted against the server, and nothing stays in flight."""
    async with scene(server, proxies, directs) as here:
        session = await legacy_handshake(here.http, here.proxy.url)
        for i in range(REPEAT):
            if server.name in HELD:
                tool, arguments = HELD[server.name]
                await disconnect_after_progress(here, session, tool, arguments(f"gone-{i}"), f"token-{i}")
            else:
                await disconnect_at_once(here, session)
        await here.proxy.wait_child(lambda c: c.get("in_flight") == 0, f"{server}: no abandoned call left in flight")
        await here.after_burst(f"{server} {REPEAT} clients gone mid-call")


async def good_call_in_flight(scene: Scene, key: str) -> asyncio.Task[CallToolResult]:
    """The good client's long call, running in the child (its first progress notification came)."""
    tool, arguments = HELD[scene.server.name]
    progressed = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        progressed.set()

    task = asyncio.create_task(scene.good.call_tool(tool, arguments(key), progress_callback=on_progress))
    async with asyncio.timeout(WAIT_S):
        await progressed.wait()
    return task


async def finish_good_call(scene: Scene, task: asyncio.Task[CallToolResult], key: str, what: str) -> None:
    if scene.server is SDK_STDIO:
        async with Client(scene.proxy.url, mode="legacy") as other:
            await other.call_tool("release", {"key": key})
    async with asyncio.timeout(WAIT_S):
        result = await task
    assert not result.is_error, f"{what}: the good client's long call: {result}"
    expected = f"released {key}" if scene.server is SDK_STDIO else "Long running operation completed."
    assert (texts(result)[0] or "").startswith(expected), f"{what}: the good client's long call: {texts(result)}"


CANCELLED_IDS: Final = [*range(64), *(str(i) for i in range(64))]
"""Request ids a bad client names in its cancellations: the good client's (the SDK numbers its requests
from 0) and every id the proxy has used with the child so far (small integers), as numbers and strings."""


@pytest.mark.parametrize("server", [pytest.param(s, id=s.name) for s in (NPM_STDIO, SDK_STDIO)])
async def test_cancellation_of_another_clients_request(
    server: StdioServer, proxies: StdioProxies, directs: Directs
) -> None:
    """A client sends ``notifications/cancelled`` naming ids that are another client's (the good client's
    call is in flight in the child meanwhile): nothing of the good client's is cancelled. FastMCP's app
    has no call that lasts, so it cannot have one in flight."""
    what = f"{server} cancellations of another client's request"
    async with scene(server, proxies, directs) as here:
        task = await good_call_in_flight(here, "cancel-me")
        session = await legacy_handshake(here.http, here.proxy.url)
        for request_id in CANCELLED_IDS:
            body = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": request_id}}
            response = await here.http.post(here.proxy.url, json=body, headers=legacy_headers(session))
            assert response.status_code == 202, f"{what} ({request_id!r}): {response.status_code} {response.text}"
        if server is SDK_STDIO:  # held until released: still in the child, whatever the machine's speed
            assert not task.done(), f"{what}: the good client's call ended before it was released: {task}"
        await finish_good_call(here, task, "cancel-me", what)
        await here.after_burst(what)


QUESTION: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    NPM_STDIO.name: ("trigger-sampling-request", {"prompt": "hello", "maxTokens": 5}),
    SDK_STDIO.name: ("ask_llm", {"question": "hello"}),
}
"""A call that asks its client a sampling question (FastMCP's app has none)."""


@pytest_asyncio.fixture(loop_scope="package")
async def quiet_proxies(tmp_path: Path) -> AsyncIterator[StdioProxies]:
    """Proxies of their own: on the module's shared ones, a call another test abandoned still owns what its
    child sends for `ABANDONED_FOR` (a question of the child's then cannot be told from that call's)."""
    fresh = StdioProxies(tmp_path)
    try:
        yield fresh
    finally:
        await fresh.close()


@pytest.mark.parametrize("server", SERVERS)
async def test_answers_to_questions_never_asked(
    server: StdioServer, quiet_proxies: StdioProxies, directs: Directs
) -> None:
    """A client answers question ids it was never asked (``mcp-proxy-1`` and on, the form the proxy's own
    ids take), with results and with errors, while (where the server can ask one) the good client is being
    asked a real one: each answer is acknowledged (202) and dropped; the good client's answer is the one
    the child gets."""
    proxies = quiet_proxies
    what = f"{server} answers to questions never asked"
    asked = asyncio.Event()
    answer_now = asyncio.Event()

    async def sampling(context: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
        asked.set()
        await answer_now.wait()
        return CreateMessageResult(role="assistant", content=TextContent(type="text", text="GOOD"), model="good")

    async with (
        scene(server, proxies, directs) as here,
        Client(here.proxy.url, mode="legacy", sampling_callback=sampling) as asked_client,
    ):
        task: asyncio.Task[CallToolResult] | None = None
        if server.name in QUESTION:
            tool, arguments = QUESTION[server.name]
            task = asyncio.create_task(asked_client.call_tool(tool, arguments))
            async with asyncio.timeout(WAIT_S):
                await asked.wait()
        session = await legacy_handshake(here.http, here.proxy.url)
        for i in range(1, 4 * REPEAT + 1):
            for answer in (
                {
                    "jsonrpc": "2.0",
                    "id": f"mcp-proxy-{i}",
                    "result": {"role": "assistant", "model": "bad", "content": {"type": "text", "text": "BAD"}},
                },
                {"jsonrpc": "2.0", "id": f"mcp-proxy-{i}", "error": {"code": -32603, "message": "BAD"}},
            ):
                response = await here.http.post(here.proxy.url, json=answer, headers=legacy_headers(session))
                assert (response.status_code, response.content) == (202, b""), (
                    f"{what} ({answer['id']}): {response.status_code} {response.text}"
                )
        if task is not None:
            assert not task.done(), f"{what}: the asked client's call ended before it answered: {task}"
            answer_now.set()
            async with asyncio.timeout(WAIT_S):
                result = await task
            assert not result.is_error and "GOOD" in " ".join(t or "" for t in texts(result)), (
                f"{what}: the asked client's call did not carry its own answer: {result}"
            )
        await here.after_burst(what)
