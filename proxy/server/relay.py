"""The streaming helpers of the MCP listener: starting an SSE answer, writing to a client that may be gone,
settling a streamed call when its stream ends, and what passing messages teach (moved from the handler;
the one streaming loop comes here next)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from proxy.errors import ProxyError
from proxy.mcp.jsonrpc import error_body, too_many_containers
from proxy.policies.base import Call, Reply
from proxy.policies.failures import Verdict
from proxy.policies.fallback import list_changed_kind
from proxy.runtime import Route, Runtime


def _settle_stream(route: Route, call: Call, verdict: Verdict) -> None:
    """A streamed answer is over: the breaker and passive health saw only its headers (`STREAMING`), so
    its end is their verdict. Its response passed (or the stream ended cleanly: the server's choice):
    a success; it broke before the response: the transport failure that is (a stream silent past
    `stream_idle` excepted: a long run without progress looks the same)."""
    breaker = route.state.breaker.breaker_for(call)
    if breaker is not None:
        breaker.record(None, verdict, call.client)
    route.state.health.record_call(verdict)


def _learn_annotations(route: Route, call: Call, message: Any) -> None:
    """A tools/list answer teaches the upstream's catalog (the retry policy believes it only when the
    upstream is trusted for its annotations). The request's cursor goes along: a page counts only as part
    of a walk the catalog saw start without one (`proxy.mcp.tool_catalog`)."""
    annotations = route.annotations
    if annotations is not None and call.method == "tools/list":
        annotations.learn(message, call.message.params.get("cursor"))  # an error answer has no tools: nothing learned


def _with_extra(reply: Reply) -> Any:
    if not reply.extra:
        return reply.headers
    headers = reply.headers.copy()
    headers.update(reply.extra)
    return headers


async def _start_stream(request: web.BaseRequest, reply: Reply) -> web.StreamResponse:
    response = web.StreamResponse(status=reply.status, reason=reply.reason, headers=_with_extra(reply))
    response.headers["X-Accel-Buffering"] = "no"
    await response.prepare(request)
    return response


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionResetError:
        pass  # the client is gone: nobody to tell


async def _end_quietly(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client closed first, as SDK clients do once they have their response


def _notice(runtime: Runtime, upstream: str, data: str) -> None:
    """React to server notifications passing by: `notifications/<kind>/list_changed` invalidates cached lists."""
    if "list_changed" not in data or too_many_containers(data):
        return
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    kind = list_changed_kind(message.get("method", "")) if isinstance(message, dict) else None
    if kind is not None:
        runtime.shared.cache.invalidate_lists(upstream, kind)


def _sse_error(request_id: str | int | None, error: ProxyError) -> bytes:
    return b"event: message\ndata: " + error_body(request_id, error.code, error.message, error.error_data()) + b"\n\n"
