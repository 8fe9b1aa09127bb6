"""A fast MCP-shaped upstream for the benchmark: aiohttp on uvloop, one POST endpoint at /mcp.

It parses the JSON-RPC request (as a real server would), echoes its id and answers a tiny
``tools/call`` result, as ``application/json`` or, with ``--sse``, as a one-event
``text/event-stream`` (chunked, the way MCP SDKs stream). Prints ``LISTENING <port>`` on stdout
once bound; ``--port 0`` picks a free port. With ``--fail-every N`` every Nth request (counted over the
process's life) gets a bare ``HTTP 503`` instead (text body, no JSON-RPC error), the failure-heavy
workload of ``python -m tests.perf --events-compare``.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable

import orjson
import uvloop
from aiohttp import web

from tests.perf.serving import listening_until_signalled

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RESULT = {"content": [{"type": "text", "text": "pong"}], "isError": False}


def _answer(raw: bytes) -> bytes:
    request = orjson.loads(raw)
    return orjson.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": _RESULT})


async def _json(request: web.Request) -> web.Response:
    return web.Response(
        body=_answer(await request.read()), content_type="application/json"
    )


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


async def _sse(request: web.Request) -> web.StreamResponse:
    body = _answer(await request.read())
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    await response.write(b"event: message\ndata: " + body + b"\n\n")
    await response.write_eof()
    return response


async def _main(host: str, port: int, sse: bool, fail_every: int = 0) -> None:
    app = web.Application()
    handler: Handler = _sse if sse else _json
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
    parser.add_argument(
        "--sse", action="store_true", help="answer as text/event-stream instead of JSON"
    )
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        metavar="N",
        help="answer every Nth request with HTTP 503 (default 0: never)",
    )
    args = parser.parse_args()
    uvloop.run(_main(args.host, args.port, args.sse, args.fail_every))
