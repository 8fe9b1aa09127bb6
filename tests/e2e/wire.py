"""What a bad client sends and what it gets back, as raw HTTP and through the official SDK client.

The suite never hard-codes a server's answer to a mistake: it sends the same request to the server
directly and through the proxy and compares (:func:`assert_same_answer`). Raw HTTP sees everything
(status, headers, the final JSON-RPC message whether it came as JSON or SSE); the SDK client sees
what a real application sees (the ``MCPError`` or result it raises or returns), plus the HTTP status
of the exchange through :class:`WireLog`.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import httpx2
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult

from tests.e2e.upstreams import Era, GoodCall
from tests.sdk_helpers import (
    ACCEPT,
    LEGACY_VERSION,
    MODERN_VERSION,
    HttpLog,
    legacy_headers,
    modern_meta,
    read_sse,
    recorded_transport,
)

PROXY_ERROR_HEADER: Final = "x-mcp-proxy-error"
PROXY_ERROR_CODES: Final = range(-32059, -32049)
"""The proxy's own JSON-RPC error codes (-32050..-32059, README "What clients get when something is wrong")."""

REPEAT: Final = 12
"""How often each bad call is made in a row: more than the default breaker's threshold of 5 consecutive
failures. In a row, because a success in between would reset a consecutive-failure count and hide
exactly the harm the suite looks for."""


# --------------------------------------------------------------------------------------
# Raw HTTP
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: status, the final JSON-RPC message (JSON body or last SSE event), the proxy's mark."""

    status: int
    message: dict[str, Any] | None
    proxy_error: str | None
    body: str
    """The raw body (SSE as received), for failure messages."""
    session_id: str | None = None
    """The answer's ``Mcp-Session-Id`` header, if any."""

    def describe(self) -> str:
        mark = f" {PROXY_ERROR_HEADER}: {self.proxy_error}" if self.proxy_error else ""
        return f"HTTP {self.status}{mark} {self.body[:600]!r}"


async def send(http: httpx2.AsyncClient, url: str, body: dict[str, Any] | bytes, headers: dict[str, str]) -> Answer:
    """POST `body` (bytes: sent as they are) to `url` and read the whole answer (JSON or SSE; for SSE the
    message carrying the id)."""
    payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":"))
    request_headers = {"content-type": "application/json", **headers}
    async with http.stream("POST", url, content=payload, headers=request_headers) as response:
        message: dict[str, Any] | None = None
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            raw: list[str] = []
            async for event in read_sse(response):
                raw.append(event.data)
                if not event.data:
                    continue  # a priming event (id only, empty data) before the answer
                parsed = json.loads(event.data)
                if isinstance(parsed, dict) and "method" not in parsed:
                    message = parsed
                    break
            text = "\n".join(raw)
        else:
            text = (await response.aread()).decode(errors="replace")
            if text.strip():
                try:
                    parsed = json.loads(text)
                except ValueError:
                    parsed = None
                message = parsed if isinstance(parsed, dict) else None
        return Answer(
            response.status_code,
            message,
            response.headers.get(PROXY_ERROR_HEADER),
            text,
            response.headers.get("mcp-session-id"),
        )


RequestBuilder = Callable[[int, bool], tuple[dict[str, Any], dict[str, str]]]
"""``(repetition, via_proxy) -> (body, headers)``: the same request for the proxy and for the server."""


async def raw_burst(
    http: httpx2.AsyncClient, proxy_url: str, direct_url: str, build: RequestBuilder, what: str
) -> None:
    """Send :data:`REPEAT` bad requests in a row through the proxy, each compared with the same one sent direct."""
    for i in range(REPEAT):
        body, headers = build(i, True)
        proxied = await send(http, proxy_url, body, headers)
        body, headers = build(i, False)
        direct = await send(http, direct_url, body, headers)
        assert_same_answer(proxied, direct, f"raw {what} #{i + 1}")


def request(method: str, params: dict[str, Any] | None, request_id: int) -> dict[str, Any]:
    """A JSON-RPC request body."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        body["params"] = params
    return body


def modern_request(
    method: str, params: dict[str, Any], request_id: int, name: str | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """A 2026-07-28 request: ``_meta`` in the body, the mirroring headers (``Mcp-Name`` when `name`)."""
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN_VERSION, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return request(method, {**params, "_meta": modern_meta()}, request_id), headers


def sessionless_headers() -> dict[str, str]:
    """A legacy request's headers with the session left out (the client forgot ``initialize``)."""
    return {"accept": ACCEPT, "mcp-protocol-version": LEGACY_VERSION}


def unknown_session_id() -> str:
    """A session id no server handed out."""
    return uuid.uuid4().hex


def assert_same_answer(proxied: Answer, direct: Answer, what: str) -> None:
    """The client got the server's own answer: not a proxy error, and the same status and message as direct.

    The whole final JSON-RPC message is compared (code, message, data; or the result), not just the
    code: every server here answers a repeated mistake with the same bytes, so any difference is
    something the proxy did.
    """
    assert proxied.proxy_error is None, (
        f"{what}: a proxy error where the server answered\n proxy:  {proxied.describe()}\n direct: {direct.describe()}"
    )
    error = (proxied.message or {}).get("error")
    if isinstance(error, dict):
        data = error.get("data")
        assert not (isinstance(data, dict) and "reason" in data), f"{what}: a proxy verdict: {proxied.describe()}"
        assert error.get("code") not in PROXY_ERROR_CODES, f"{what}: a proxy error code: {proxied.describe()}"
    assert (proxied.status, proxied.message) == (direct.status, direct.message), (
        f"{what}: the answer through the proxy differs from the server's\n proxy:  {proxied.describe()}\n direct: {direct.describe()}"
    )


# --------------------------------------------------------------------------------------
# The official SDK client
# --------------------------------------------------------------------------------------


@dataclass
class WireLog(HttpLog):
    """:class:`HttpLog` plus the proxy's error mark of each answer (the SDK client hides headers)."""

    proxy_errors: list[str] = field(default_factory=list)

    async def on_response(self, response: httpx2.Response) -> None:
        await super().on_response(response)
        mark = response.headers.get(PROXY_ERROR_HEADER)
        if mark:
            self.proxy_errors.append(f"{response.request.method} {response.status_code} {mark}")


@dataclass(frozen=True)
class SdkOutcome:
    """What one SDK call came to: the HTTP status of its POST and the error raised or the result returned."""

    status: int | None
    outcome: tuple[Any, ...]
    proxy_errors: tuple[str, ...]


async def sdk_outcome(client: Client, log: WireLog, call: Callable[[Client], Awaitable[Any]]) -> SdkOutcome:
    """Run `call` on `client`; record its outcome (``("error", code, message, data)`` or the result)."""
    posts_before = len(log.by_method("POST"))
    marks_before = len(log.proxy_errors)
    try:
        result = await call(client)
    except MCPError as exc:
        outcome: tuple[Any, ...] = ("error", exc.code, exc.message, exc.data)
    else:
        outcome = ("result", result.model_dump(mode="json", exclude_none=True))
    posts = log.by_method("POST")[posts_before:]
    status = posts[-1].status if posts else None
    return SdkOutcome(status, outcome, tuple(log.proxy_errors[marks_before:]))


def assert_same_sdk_outcome(proxied: SdkOutcome, direct: SdkOutcome, what: str) -> None:
    """The SDK client through the proxy raised or returned exactly what it did talking to the server."""
    assert proxied.proxy_errors == (), f"{what}: proxy errors {proxied.proxy_errors}; outcome {proxied.outcome}"
    if proxied.outcome[0] == "error":
        code, data = proxied.outcome[1], proxied.outcome[3]
        assert code not in PROXY_ERROR_CODES and not (isinstance(data, dict) and "reason" in data), (
            f"{what}: a proxy error {proxied.outcome}"
        )
    assert (proxied.status, proxied.outcome) == (direct.status, direct.outcome), (
        f"{what}: through the proxy {proxied}\n direct: {direct}"
    )


@dataclass(frozen=True)
class SdkPair:
    """Two SDK clients in the same situation, one through the proxy and one talking to the server."""

    proxied: Client
    proxied_log: WireLog
    direct: Client
    direct_log: WireLog


def sdk_client(url: str, mode: str, log: WireLog, **options: Any) -> Client:
    """An official SDK client whose HTTP exchanges (and the proxy's error marks) land in `log`;
    `options` go to ``Client`` (``message_handler=``...)."""
    return Client(recorded_transport(url, log), mode=mode, **options)


async def open_sdk_pair(scope: contextlib.AsyncExitStack, proxy_url: str, direct_url: str, mode: str) -> SdkPair:
    """Connect an SDK client in `mode` through the proxy and one straight to the server (closed with `scope`)."""
    proxied_log, direct_log = WireLog(), WireLog()
    proxied = await scope.enter_async_context(sdk_client(proxy_url, mode, proxied_log))
    direct = await scope.enter_async_context(sdk_client(direct_url, mode, direct_log))
    return SdkPair(proxied, proxied_log, direct, direct_log)


async def sdk_burst(pair: SdkPair, call: Callable[[Client], Awaitable[Any]], what: str) -> None:
    """Make `call` :data:`REPEAT` times in a row through the proxy, each compared with the direct client's."""
    for i in range(REPEAT):
        assert_same_sdk_outcome(
            await sdk_outcome(pair.proxied, pair.proxied_log, call),
            await sdk_outcome(pair.direct, pair.direct_log, call),
            f"SDK {what} #{i + 1}",
        )


async def good_call(client: Client, call: GoodCall, what: str) -> None:
    """The well-behaved client's call succeeds with the expected text."""
    try:
        result = await client.call_tool(call.tool, call.arguments)
    except MCPError as exc:
        raise AssertionError(
            f"{what}: the good client's {call.tool} failed: {exc.code} {exc.message} {exc.data}"
        ) from exc
    assert isinstance(result, CallToolResult) and not result.is_error, f"{what}: {result}"
    texts = [getattr(item, "text", None) for item in result.content]
    assert texts == [call.text], f"{what}: the good client's {call.tool} returned {texts}"


def era_request(
    era: Era, method: str, params: dict[str, Any], request_id: int, name: str | None, session_id: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The request a client of `era` sends: legacy with its session, modern with ``_meta`` and headers."""
    if era == "modern":
        return modern_request(method, params, request_id, name)
    assert session_id is not None
    return request(method, params, request_id), legacy_headers(session_id)
