"""The baseline: the simplest reasonable aiohttp reverse proxy for one MCP endpoint.

One pooled ClientSession on uvloop; read the client's body, POST it upstream, read the whole answer,
return it with its Content-Type. No validation, no header policy, no metrics, no resilience.
Prints ``LISTENING <port>`` on stdout once bound.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvloop
from aiohttp import web

from tests.perf.serving import listening_until_signalled

_FORWARD = (
    "Content-Type",
    "Accept",
    "Mcp-Session-Id",
    "MCP-Protocol-Version",
    "Authorization",
)


async def _main(host: str, port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256), auto_decompress=False
    )

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k in _FORWARD if (v := request.headers.get(k)) is not None}
        async with session.post(upstream, data=body, headers=headers) as reply:
            payload = await reply.read()
            return web.Response(
                status=reply.status, body=payload, content_type=reply.content_type
            )

    app = web.Application()
    app.router.add_post("/mcp", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    await listening_until_signalled(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    await runner.cleanup()
    await session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--upstream",
        required=True,
        help="URL of the MCP endpoint, e.g. http://127.0.0.1:3000/mcp",
    )
    args = parser.parse_args()
    uvloop.run(_main(args.host, args.port, args.upstream))
