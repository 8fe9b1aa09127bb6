"""A fast MCP-shaped upstream for the benchmark: aiohttp on uvloop, one POST endpoint at /mcp.

It parses the JSON-RPC request (as a real server would), echoes its id and answers a tiny
``tools/call`` result, as ``application/json`` or, with ``--sse``, as a one-event
``text/event-stream`` (chunked, the way MCP SDKs stream). Prints ``LISTENING <port>`` on stdout
once bound; ``--port 0`` picks a free port. With ``--fail-every N`` every Nth request (counted over the
process's life) gets a bare ``HTTP 503`` instead (text body, no JSON-RPC error), the failure-heavy
workload of ``python -m tests.perf --events-compare``.

For the other modes of ``python -m tests.perf``:

- ``--tools N``: ``tools/list`` is answered with N tools (``echo``, then ``tool-1`` ... ``tool-{N-1}``, each
  with a description and an input schema, as real servers list them), so the proxy learns a catalog
  of N tools (``--config-size``);
- ``--payload BYTES``: the text of a ``tools/call`` result is padded to about BYTES, and made from the
  call's arguments, so distinct arguments get distinct answers (``--memory`` fills the cache with them);
- a ``tools/call`` of the tool ``hold`` is always answered as SSE: one ``notifications/progress`` event,
  then nothing until the upstream stops (``--memory``'s open streams).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvloop
from aiohttp import web

from tests.perf.serving import listening_until_signalled

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RESULT = {"content": [{"type": "text", "text": "pong"}], "isError": False}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def _tool(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "description": f"The benchmark's tool {name}: echoes its text.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
        "annotations": {"readOnlyHint": True},
    }


class Answers:
    """What the upstream answers to each parsed request (see the module docstring for the options)."""

    def __init__(self, tools: int = 0, payload: int = 0) -> None:
        self._tools = {"tools": [_tool("echo"), *(_tool(f"tool-{i}") for i in range(1, tools))]} if tools else None
        self._payload = payload

    def result(self, request: dict[str, Any]) -> dict[str, Any]:
        if self._tools is not None and request.get("method") == "tools/list":
            return self._tools
        if not self._payload:
            return _RESULT
        seed = orjson.dumps(request.get("params")).decode()
        text = (seed * (self._payload // max(1, len(seed)) + 1))[: self._payload]
        return {"content": [{"type": "text", "text": text}], "isError": False}

    def body(self, raw: bytes) -> tuple[bytes, bool]:
        """The JSON-RPC answer to the request `raw`, and whether it is a call to ``hold``."""
        request = orjson.loads(raw)
        params = request.get("params")
        hold = request.get("method") == "tools/call" and isinstance(params, dict) and params.get("name") == "hold"
        return orjson.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": self.result(request)}), hold


def _handlers(answers: Answers) -> tuple[Handler, Handler]:
    async def hold(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 0}}
        await response.write(b"event: message\ndata: " + orjson.dumps(progress) + b"\n\n")
        await asyncio.Event().wait()  # until the upstream stops
        return response

    async def json(request: web.Request) -> web.StreamResponse:
        body, held = answers.body(await request.read())
        if held:
            return await hold(request)
        return web.Response(body=body, content_type="application/json")

    async def sse(request: web.Request) -> web.StreamResponse:
        body, held = answers.body(await request.read())
        if held:
            return await hold(request)
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        await response.write(b"event: message\ndata: " + body + b"\n\n")
        await response.write_eof()
        return response

    return json, sse


def _failing(every: int, handler: Handler) -> Handler:
    """`handler`, except that every `every`-th request is answered 503 (deterministic: exactly 1/every)."""
    count = 0

    async def answer(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        if count % every == 0:
            await request.read()
            return web.Response(status=503, text="Service Unavailable")
        return await handler(request)

    return answer


async def _main(host: str, port: int, sse: bool, fail_every: int = 0, tools: int = 0, payload: int = 0) -> None:
    app = web.Application()
    json, streamed = _handlers(Answers(tools, payload))
    handler = streamed if sse else json
    app.router.add_post("/mcp", _failing(fail_every, handler) if fail_every > 0 else handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await listening_until_signalled(bound)
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sse", action="store_true", help="answer as text/event-stream instead of JSON")
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        metavar="N",
        help="answer every Nth request with HTTP 503 (default 0: never)",
    )
    parser.add_argument("--tools", type=int, default=0, metavar="N", help="answer tools/list with N tools (default 0: like any call)")
    parser.add_argument("--payload", type=int, default=0, metavar="BYTES", help="pad each tools/call answer's text to BYTES")
    args = parser.parse_args()
    uvloop.run(_main(args.host, args.port, args.sse, args.fail_every, args.tools, args.payload))
