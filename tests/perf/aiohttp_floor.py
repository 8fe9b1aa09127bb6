"""A second reference point: the least a forwarder on the proxy's own listener stack can cost.

aiohttp's low-level `web.Server` (the class the proxy's listener is built on; no Application, no
router, no access log) in front of the proxy's own upstream client, on uvloop: read the request body,
send it upstream, answer with the upstream's status and Content-Type, a JSON body whole and an SSE
body passed on chunk by chunk as it arrives. No validation, no policies, no metrics, no events.

The project fixed aiohttp's server as the MCP listener (issue 11's decision), so this row is the floor
under any per-call saving the proxy can make: the proxy's CPU per call minus this one is everything
the proxy does per call; this one against the naive forwarder is the most the proxy could ever gain.
Prints ``LISTENING <port>`` on stdout once bound.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop
from aiohttp import web

from proxy.upstream.http11.client import BadResponse, ConnectFailed, ConnectionBroken, ConnectionPool, Origin
from tests.perf.serving import listening_until_signalled

_UPSTREAM_HEADERS = [("Content-Type", "application/json"), ("Accept", "application/json, text/event-stream")]


def _handler(pool: ConnectionPool) -> web.Server:
    async def forward(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        try:
            response = await pool.request("POST", _UPSTREAM_HEADERS, body)
            if not response.content_type.startswith("text/event-stream"):
                return web.Response(status=response.status, body=await response.read(), content_type=response.content_type)
            streamed = web.StreamResponse(status=response.status, headers={"Content-Type": response.content_type})
            await streamed.prepare(request)
            while chunk := await response.next_chunk():
                await streamed.write(chunk)
            await streamed.write_eof()
            return streamed
        except (ConnectFailed, ConnectionBroken, BadResponse):
            return web.Response(status=502)

    return web.Server(forward, access_log=None)


async def _main(host: str, port: int, upstream: str) -> None:
    async with ConnectionPool(Origin(upstream), limit=256, keepalive=30.0, connect_timeout=5.0) as pool:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_handler(pool), host, port, backlog=1024)
        await listening_until_signalled(server.sockets[0].getsockname()[1])
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="URL of the MCP endpoint, e.g. http://127.0.0.1:3000/mcp")
    args = parser.parse_args()
    uvloop.run(_main(args.host, args.port, args.upstream))
