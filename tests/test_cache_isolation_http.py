"""Single flight over real HTTP: a follower never receives what was the leader's own (issue 10, item 1).

client A, client B -> proxy (in process, cache on) -> an upstream on 127.0.0.1 that sets a cookie per call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.app import ProxyServer, running_proxy
from tests.conftest import proxy_config
from tests.test_forwarding import JSON_HEADERS

TOOLS_LIST = {"jsonrpc": "2.0", "method": "tools/list"}


class CookieUpstream:
    """Answers every tools/list with the same tools and a `Set-Cookie` naming the call; the first call
    is held until `release` is set, so a second identical call can join its flight."""

    def __init__(self) -> None:
        self.calls = 0
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/mcp", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/mcp"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls += 1
        number = self.calls
        self.arrived.set()
        if number == 1:
            await self.release.wait()
        answer = {"jsonrpc": "2.0", "id": body["id"], "result": {"tools": []}}
        return web.json_response(answer, headers={"Set-Cookie": f"sid=secret-of-call-{number}", "X-User": f"user-{number}"})


@pytest.fixture
async def cookie_upstream() -> AsyncIterator[CookieUpstream]:
    server = CookieUpstream()
    await server.start()
    yield server
    await server.stop()


async def send(session: aiohttp.ClientSession, url: str, request_id: int) -> tuple[int, dict[str, str], Any]:
    async with session.post(url, json={**TOOLS_LIST, "id": request_id}, headers=JSON_HEADERS) as response:
        return response.status, dict(response.headers), json.loads(await response.read())


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until `condition` holds (the proxy runs in this loop); a bounded number of turns."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def waiters(proxy: ProxyServer) -> int:
    """How many callers wait on the cache stage's flights (white box: the only way to know B joined A's)."""
    return sum(flight.waiters for flight in proxy.runtime.current.shared.cache._flights.values())


async def test_a_follower_never_receives_the_leaders_set_cookie(cookie_upstream: CookieUpstream) -> None:
    config = proxy_config(cookie_upstream.url, upstream={"cache": {"mode": "ttl", "ttl": "1m"}})
    async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
        url = proxy.url + "/mcp"
        leader = asyncio.create_task(send(session, url, 1))
        await cookie_upstream.arrived.wait()
        follower = asyncio.create_task(send(session, url, 2))
        await until(lambda: waiters(proxy) == 2)  # B is in A's flight
        cookie_upstream.release.set()
        (lead_status, lead_headers, lead_body), (status, headers, body) = await leader, await follower
    assert (lead_status, lead_headers["Set-Cookie"], lead_headers["X-User"]) == (200, "sid=secret-of-call-1", "user-1")
    assert lead_body["id"] == 1
    # the leader's answer set a cookie: it is A's own, so B made its own call and got its own cookie
    assert (status, body) == (200, {"jsonrpc": "2.0", "id": 2, "result": {"tools": []}})
    assert (headers["Set-Cookie"], headers["X-User"]) == ("sid=secret-of-call-2", "user-2")
    assert cookie_upstream.calls == 2
