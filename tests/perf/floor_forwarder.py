"""A reference point, not a proxy: the least any Python forwarder on this machine can cost.

An llhttp (httptools) server protocol in front of the proxy's own upstream client
(`proxy.upstream.http11.client.ConnectionPool`) on uvloop: parse the request, send its body upstream, write the
answer back with its status and Content-Type. No aiohttp, no validation, no policies, no metrics; one
request at a time per connection, Content-Length answers only. Its row in ``python -m tests.perf``
shows how much of the proxy's cost is the HTTP server layer plus everything the proxy does per call.
Prints ``LISTENING <port>`` on stdout once bound.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop

from proxy.upstream.http11.client import BadResponse, ConnectFailed, ConnectionBroken, ConnectionPool, Origin
from tests.perf.serving import listening_until_signalled

_REASONS = {200: b"OK", 202: b"Accepted", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}


class _Forward(asyncio.Protocol):
    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpRequestParser(self)
        self._body: list[bytes] = []
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.close()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body, self._body = b"".join(self._body), []
        asyncio.get_running_loop().create_task(self._answer(body))

    async def _answer(self, body: bytes) -> None:
        assert self._transport is not None
        try:
            # `read` ends the response either way: the whole body (the connection back to the pool), or an
            # error (the connection closed). No `async with` needed, and none paid for on the floor.
            response = await self._pool.request("POST", [("Content-Type", "application/json")], body)
            payload = await response.read()
        except (ConnectFailed, ConnectionBroken, BadResponse):
            self._transport.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self._transport.close()
            return
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
            response.status,
            _REASONS.get(response.status, b"Status"),
            response.content_type.encode(),
            len(payload),
        )
        self._transport.write(head + payload)


async def _main(host: str, port: int, upstream: str) -> None:
    async with ConnectionPool(Origin(upstream), limit=256, keepalive=30.0, connect_timeout=5.0) as pool:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Forward(pool), host, port, backlog=1024)
        await listening_until_signalled(server.sockets[0].getsockname()[1])
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", required=True, help="URL of the MCP endpoint, e.g. http://127.0.0.1:3000/mcp")
    args = parser.parse_args()
    uvloop.run(_main(args.host, args.port, args.upstream))
