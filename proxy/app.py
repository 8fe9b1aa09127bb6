"""The two aiohttp applications (MCP listener, admin listener) and `ProxyServer`, which runs them.

The admin listener is separate so probes and scrapes never queue behind client traffic, and so it
can stay on loopback while the MCP listener binds a pod address.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import structlog
from aiohttp import web

from proxy.config import ProxyConfig
from proxy.handler import McpHandler
from proxy.metrics import ProxyMetrics
from proxy.runtime import RuntimeRef, build_runtime

__all__ = ["ProxyServer", "running_proxy"]

log = structlog.get_logger("proxy")

RUNTIME_KEY = web.AppKey("runtime", RuntimeRef)


def _json(status: int, payload: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class ProxyServer:
    """Owns the runtime, the upstream pools and both listeners, from `start()` to `stop()`."""

    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics | None = None) -> None:
        self.metrics = metrics or ProxyMetrics()
        self.runtime = RuntimeRef(build_runtime(config, self.metrics))
        self.draining = False
        self._started = False
        self._runners: list[web.AppRunner] = []
        self.listen_address: tuple[str, int] = (config.listen.host, config.listen.port)
        self.admin_address: tuple[str, int] = (config.admin.host, config.admin.port)

    @property
    def url(self) -> str:
        """Base URL of the MCP listener (add an upstream's path)."""
        host, port = self.listen_address
        return f"http://{_url_host(host)}:{port}"

    @property
    def admin_url(self) -> str:
        host, port = self.admin_address
        return f"http://{_url_host(host)}:{port}"

    def proxy_app(self) -> web.Application:
        app = web.Application()
        app[RUNTIME_KEY] = self.runtime
        app.router.add_route("*", "/{tail:.*}", McpHandler(self.runtime).handle)
        return app

    def admin_app(self) -> web.Application:
        app = web.Application()
        app[RUNTIME_KEY] = self.runtime
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, _: web.Request) -> web.Response:
        """The process serves requests. Never depends on an upstream: a restart would not help it."""
        return _json(200, {"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        """Config loaded, listeners up, not draining: send traffic here."""
        if self.draining or not self._started:
            return _json(503, {"status": "draining" if self.draining else "starting"})
        return _json(200, {"status": "ready", "config_hash": self.runtime.current.config_hash})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def start(self) -> None:
        """Open upstream pools, then bind both listeners (port 0 picks a free port; see the addresses)."""
        runtime = self.runtime.current
        for upstream in runtime.upstreams:
            await upstream.start()
        drain = runtime.config.drain_timeout
        self.listen_address = await self._bind(self.proxy_app(), self.listen_address, drain)
        self.admin_address = await self._bind(self.admin_app(), self.admin_address, 1.0)
        self._started = True
        log.info(
            "proxy_started",
            listen=self.url,
            admin=self.admin_url,
            upstreams={u.name: f"{u.path} -> {u.url}" for u in runtime.config.upstreams},
            config_hash=runtime.config_hash,
        )

    async def _bind(self, app: web.Application, address: tuple[str, int], shutdown_timeout: float) -> tuple[str, int]:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=shutdown_timeout)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, address[0], address[1], reuse_address=True)
        await site.start()
        port = runner.addresses[-1][1] if runner.addresses else address[1]
        return address[0], int(port)

    async def stop(self) -> None:
        """Stop accepting, let in-flight calls finish up to `drain_timeout`, then close the pools."""
        self.draining = True
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for upstream in self.runtime.current.upstreams:
            await upstream.close()
        log.info("proxy_stopped")

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set (by a signal handler), then drain and stop."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@asynccontextmanager
async def running_proxy(config: ProxyConfig) -> AsyncIterator[ProxyServer]:
    """Run a proxy for the duration of a `with` block (demo, tests)."""
    server = ProxyServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
