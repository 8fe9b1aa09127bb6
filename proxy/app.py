"""`ProxyServer`: the MCP listener, the admin listener, and the lifecycle around them.

The admin listener is separate so probes and scrapes never queue behind client traffic, and so it
can stay on loopback while the MCP listener binds a pod address. Lifecycle, in order:

The MCP listener bounds what a client connection may hold (`proxy.server.listener`): a header timeout,
an idle keep-alive timeout, a cap on open connections (default derived from the file-descriptor limit,
leaving room for the upstream pools, the admin listener and reloads), and a request-head size and
header count. The admin listener is another server, outside that cap: probes and scrapes keep
working while the MCP listener is full.

- **start**: open upstream pools, start health probes, bind both listeners, start the reloader;
- **reload** (file change, SIGHUP, ``POST /reload``): validate, build the next runtime carrying state
  over, open new pools, swap the reference, retire replaced pools after `drain_timeout`;
- **stop** (SIGTERM): `/readyz` turns 503 at once; long-lived streams (the legacy GET stream,
  `subscriptions/listen`) are ended cleanly; the MCP listener stops accepting and calls in flight get
  up to `drain_timeout` to finish; then probes, reloader, admin listener and pools are closed.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from proxy.ops.logs import admits, configure_logging  # the first of ours: it imports structlog, without rich (see there)

import structlog
from proxy.config.model import LOOPBACK_NAMES, ProxyConfig, UpstreamConfig, allowing_hosts, parse_duration, safe_url
from proxy.events.sinks import JsonlFile, events_endpoint, log_event
from proxy.events.recorder import EventBus, EventRecorder, FanOut
from proxy.server.handler import McpHandler
from proxy.ops.health import HealthProber
from proxy.ops.metrics import ProxyMetrics
from proxy.policies.base import Clock, MonotonicClock
from proxy.ops.reload import ConfigReloader
from proxy.runtime import Runtime, RuntimeRef, build_runtime
from proxy.redact import redact_text
from proxy.server.listener import JsonRpcServer, ListenerLimits
from proxy.server.status import status_document
from proxy.upstream.transport import HttpUpstream
from proxy.sessions import carry
from proxy.tasks import Owner, cancel_and_wait, spawn

if TYPE_CHECKING:
    from proxy.analyzer.embedded import EmbeddedAnalyzer
    from proxy.trials.shadow import TrialManager

__all__ = ["BindError", "ProxyServer", "running_proxy"]

log = structlog.get_logger("proxy")


_WILDCARD_HOSTS: frozenset[str] = frozenset(("0.0.0.0", "::", ""))

_BIND_REASONS: dict[int, str] = {
    errno.EADDRINUSE: "the port is already in use by another process",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "no network interface of this machine has that address",
}


class BindError(Exception):
    """A listener could not bind its address: which one (`listener`, ``listen`` or ``admin``), where, and why."""

    def __init__(self, listener: str, address: tuple[str, int], reason: str) -> None:
        self.listener = listener
        self.address = address
        self.reason = reason
        what = "the MCP listener" if listener == "listen" else "the admin listener"
        super().__init__(f"cannot bind {listener} ({what}) to {_host_port(*address)}: {reason}")


def _json(status: int, payload: object) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


class ProxyServer:
    """Owns the runtime, the upstream pools, the probes, the reloader and both listeners."""

    def __init__(
        self,
        config: ProxyConfig,
        metrics: ProxyMetrics | None = None,
        config_path: Path | None = None,
        clock: Clock | None = None,
        allow_hosts: Sequence[str] = (),
    ) -> None:
        """`allow_hosts` (``serve --allow-host``) are added to ``security.allowed_hosts`` of this config and
        of every config a reload brings."""
        self._allow_hosts = tuple(allow_hosts)
        config = allowing_hosts(config, self._allow_hosts)
        self.metrics = metrics or ProxyMetrics()
        self.clock = clock or MonotonicClock()
        events = config.events
        self.bus = EventBus(events.buffer, events.subscriber_queue)
        self._events_log = events.log  # event sinks change on restart only
        self.events = EventRecorder(
            self.bus,
            events.include_params,
            events.enabled,
            _events_as_lines(config.logging.level, events.log),
            summary_interval=events.summary_interval,
        )
        if events.log:
            self.bus.listeners.append(self._log_event)
        self._event_file = JsonlFile(events.file.path, events.file.max_bytes, events.file.backups) if events.file.path else None
        if self._event_file is not None:
            self.bus.listeners.append(self._event_file)
        if events.fixtures.dir:
            from proxy.ops.fixtures import FixtureWriter  # imported only when used: serving imports what it uses

            self.events.failure_listeners.append(FixtureWriter(events.fixtures.dir, events.fixtures.per_signature).on_failure)
        self._tasks: Owner = set()
        self.runtime = RuntimeRef(build_runtime(config, self.metrics, self.events, self.clock))
        self.handler = McpHandler(self.runtime)
        self._limits_of: ProxyConfig | None = None
        self._limits: ListenerLimits
        self.draining = False
        self.started_at = time.time()
        self._started = False
        self._proxy_runner: web.BaseRunner | None = None
        self._admin_runner: web.BaseRunner | None = None
        self._retiring: Owner = set()
        self.listen_address: tuple[str, int] = (config.listen.host, config.listen.port)
        self.admin_address: tuple[str, int] = (config.admin.host, config.admin.port)
        self.listen_bound: list[tuple[str, int]] = []  # every socket each listener bound (localhost: two)
        self.admin_bound: list[tuple[str, int]] = []
        self.reloader = (
            # Metrics count reloads; the bus carries config_reloaded/config_rejected to /events, the event
            # file and the embedded analyzer (which starts a fresh window after a reload).
            ConfigReloader(
                config_path, self.apply, config.reload.interval, config.reload.watch, FanOut(self.metrics, self.events)
            )
            if config_path is not None
            else None
        )
        self.config_path = config_path
        self.trials: TrialManager | None = None
        """Shadow trials (``/trials``), made on first use: a proxy that never runs one never imports them."""
        self.analyzer: EmbeddedAnalyzer | None = None
        if config_path is not None and config.analyzer.enabled:
            # Imported only when enabled: the analyzer (and the YAML editor it applies proposals with) is
            # code a proxy that does not run it never needs in memory.
            from proxy.analyzer.embedded import EmbeddedAnalyzer

            self.analyzer = EmbeddedAnalyzer(config_path, config.analyzer, self.bus, self.events, self.trial_manager())

    def _log_event(self, event: dict[str, Any]) -> None:
        """Bus listener: an event as a log line, while the logging level admits it (`_events_as_lines`)."""
        if self.events.logged:
            log_event(event)

    @property
    def url(self) -> str:
        """Base URL of the MCP listener (add an upstream's path)."""
        host, port = self.listen_address
        return f"http://{_url_host(host)}:{port}"

    @property
    def admin_url(self) -> str:
        host, port = self.admin_address
        return f"http://{_url_host(host)}:{port}"

    def proxy_server(self) -> JsonRpcServer:
        """The MCP listener: aiohttp's low-level server, since the handler routes by path itself
        (a router and an Application add measurable work to every request and nothing else).
        Its connections keep the listener limits of the config in force (`proxy.server.listener`)."""
        # auto_decompress off: aiohttp would inflate a compressed request body while parsing it, past
        # limits.max_body_bytes (a 10 KB gzip body is 10 MiB), and the inflated bytes would then be
        # forwarded under the client's Content-Encoding. The handler refuses encoded bodies instead.
        return JsonRpcServer(
            self.handler.handle, self.listener_limits, self._reject, handler_cancellation=True, access_log=None,
            auto_decompress=False,
        )

    def listener_limits(self) -> ListenerLimits:
        """The MCP listener's limits under the current config (computed once per config)."""
        runtime = self.runtime.current
        if self._limits_of is not runtime.config:
            limits = runtime.config.limits
            pools = [upstream.pool.max_connections for upstream in runtime.config.upstreams]
            self._limits = ListenerLimits(
                header_timeout=limits.header_timeout,
                idle_timeout=limits.idle_timeout,
                send_timeout=limits.send_timeout,
                max_connections=limits.connection_cap(pools),
                max_head_bytes=limits.max_request_head_bytes,
                max_headers=limits.max_request_headers,
            )
            self._limits_of = runtime.config
        return self._limits

    def _reject(self, reason: str) -> None:
        self.runtime.current.metrics.reject(reason)

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/status", self._status)
        app.router.add_post("/reload", self._reload)
        app.router.add_get("/events", events_endpoint(self.bus))
        app.router.add_get("/proposals", self._proposals)
        app.router.add_post("/trials", self._start_trial)
        app.router.add_get("/trials", self._trials)
        app.router.add_delete("/trials/{trial}", self._abort_trial)
        return app

    async def _proposals(self, _: web.Request) -> web.Response:
        if self.analyzer is None:
            return _json(404, {"error": "the embedded analyzer is off: set analyzer.enabled and serve --config FILE"})
        document = self.analyzer.document()
        trials = self.trials.document() if self.trials is not None else None
        document["trial"] = None if trials is None else trials["running"] or next(iter(trials["finished"]), None)
        return _json(200, document)

    # --- shadow trials (proxy.trials.shadow) -------------------------------------------------------

    def trial_manager(self) -> TrialManager | None:
        """The proxy's `TrialManager` (made on first use); None without ``serve --config FILE``."""
        if self.trials is None and self.config_path is not None:
            from proxy.trials.shadow import TrialManager

            self.trials = TrialManager(
                self.config_path, self.runtime.current.config.analyzer.shadow, self.bus, self.events,
                flush=self.events.flush_summaries,
            )  # fmt: skip
        return self.trials

    async def _start_trial(self, request: web.Request) -> web.Response:
        from proxy.trials.shadow import MAX_TRIAL_BODY_BYTES, TrialRefused

        trials = self.trial_manager()
        if trials is None:
            return _json(409, {"error": "shadow trials need a proxy started with serve --config FILE (they end by writing it)"})
        if self.reloader is not None and self.reloader.last is not None and self.reloader.last.outcome == "rejected":
            return _json(409, {"error": "the config file's last reload was rejected: the file is not the config in force"})
        body = await _read_bounded(request, MAX_TRIAL_BODY_BYTES)
        if body is None:
            return _json(413, {"error": f"a trial request is at most {MAX_TRIAL_BODY_BYTES} bytes"})
        try:
            spec = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _json(400, {"error": "the body must be JSON: {proposal, candidate, base_hash, duration?}"})
        if not isinstance(spec, dict):
            return _json(400, {"error": "the body must be a JSON object: {proposal, candidate, base_hash, duration?}"})
        try:
            duration = None if spec.get("duration") is None else parse_duration(spec["duration"])
        except (ValueError, TypeError) as exc:
            return _json(422, {"error": f"duration: {exc}"})
        try:
            trial = trials.start(spec.get("proposal"), spec.get("candidate"), spec.get("base_hash"), duration)
        except TrialRefused as exc:
            return _json(exc.status, {"error": redact_text(str(exc))})
        return _json(201, {"trial": trials.document()["running"], "watch": "GET /trials", "abort": f"DELETE /trials/{trial.id}"})

    async def _trials(self, _: web.Request) -> web.Response:
        trials = self.trial_manager()
        if trials is None:
            return _json(409, {"error": "shadow trials need a proxy started with serve --config FILE"})
        return _json(200, trials.document())

    async def _abort_trial(self, request: web.Request) -> web.Response:
        from proxy.trials.shadow import TrialRefused

        trials = self.trial_manager()
        if trials is None:
            return _json(409, {"error": "shadow trials need a proxy started with serve --config FILE"})
        try:
            trials.abort(request.match_info["trial"])
        except TrialRefused as exc:
            return _json(exc.status, {"error": redact_text(str(exc))})
        return _json(200, trials.document()["finished"][0])

    # --- admin endpoints -------------------------------------------------------------------------

    async def _healthz(self, _: web.Request) -> web.Response:
        """The process serves requests. Never depends on an upstream: a restart would not help it."""
        return _json(200, {"status": "ok"})

    def ready(self) -> tuple[bool, str]:
        """(ready?, why): listeners up, not draining, and a healthy upstream when the config asks for one."""
        if self.draining:
            return False, "draining"
        if not self._started:
            return False, "starting"
        runtime = self.runtime.current
        if runtime.config.readiness.require_healthy_upstream and not any(
            state.health.serving for state in runtime.states.values()
        ):
            return False, "no healthy upstream"
        return True, "ready"

    async def _readyz(self, _: web.Request) -> web.Response:
        ready, why = self.ready()
        return _json(200 if ready else 503, {"status": why, "config_hash": self.runtime.current.config_hash})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def _status(self, _: web.Request) -> web.Response:
        return _json(200, self.status())

    def status(self) -> dict[str, Any]:
        """Everything an operator asks first, as one JSON document (see `proxy.server.status`)."""
        ready, why = self.ready()
        return status_document(self.runtime.current, self.reloader, ready, why, self.draining, self.started_at)

    async def _reload(self, _: web.Request) -> web.Response:
        if self.reloader is None:
            return _json(409, {"outcome": "unavailable", "errors": ["the proxy was started without --config"]})
        result = await self.reloader.check("api", force=True)
        return _json(200 if result.outcome != "rejected" else 422, result.as_dict())

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open pools, start probes, bind both listeners (port 0 picks a free port), start the reloader.

        A listener that cannot bind raises `BindError`, after closing what this call opened."""
        runtime = self.runtime.current
        await self._open(runtime, previous=None)
        if runtime.config.sessions_file is not None:
            carried = carry.load(runtime.config.sessions_file, {n: s.sessions for n, s in runtime.states.items()})
            log.info("sessions_carried_over", sessions=carried, path=runtime.config.sessions_file)
        drain = runtime.config.drain_timeout
        proxy_runner = web.ServerRunner(self.proxy_server(), shutdown_timeout=drain)
        admin_runner = web.AppRunner(self.admin_app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        try:
            self.listen_bound = await _bind(proxy_runner, self.listen_address, "listen")
            self._proxy_runner, self.listen_address = proxy_runner, (self.listen_address[0], self.listen_bound[0][1])
            self.admin_bound = await _bind(admin_runner, self.admin_address, "admin")
            self._admin_runner, self.admin_address = admin_runner, (self.admin_address[0], self.admin_bound[0][1])
        except BaseException:
            if self._proxy_runner is not None:
                await self._proxy_runner.cleanup()
            await self._close(runtime)
            raise
        if self.reloader is not None:
            self.reloader.start()
        spawn(self._summarize(), name="event-summaries", owner=self._tasks)
        if self.analyzer is not None:
            self.analyzer.start()
        self._started = True
        log.info(
            "proxy_started",
            listen=self.url,
            admin=self.admin_url,
            listen_bound=[_host_port(*address) for address in self.listen_bound],
            admin_bound=[_host_port(*address) for address in self.admin_bound],
            upstreams={u.name: f"{u.path} -> {_target(u)}" for u in runtime.config.upstreams},
            config_hash=runtime.config_hash,
            max_connections=self.listener_limits().max_connections,
        )
        if self.listen_address[0] in _WILDCARD_HOSTS and runtime.hosts.serves_only(LOOPBACK_NAMES):
            log.warning(
                "allowed_hosts_loopback_only",
                listen=[_host_port(*address) for address in self.listen_bound],
                allowed_hosts=list(runtime.config.security.allowed_hosts),
                note="listening on every address, but only loopback names are allowed: a client that reaches this "
                "proxy by any other name gets 403; add the name it uses to security.allowed_hosts or pass "
                "--allow-host NAME",
            )

    async def _summarize(self) -> None:
        """Publish the call_ok summaries every `events.summary_interval`."""
        while True:
            await asyncio.sleep(self.runtime.current.config.events.summary_interval)
            self.events.flush_summaries()

    async def _open(self, runtime: Runtime, previous: Runtime | None) -> None:
        """Start what `runtime` has that `previous` did not: pools and health probes."""
        old = previous.states if previous is not None else {}
        for name, state in runtime.states.items():
            before = old.get(name)
            if before is None or before.transport is not state.transport:
                await state.transport.start()
            if before is not None and before.health is state.health and before.transport is state.transport:
                state.prober = before.prober
            elif state.health.config.active.enabled:
                state.prober = HealthProber(state.transport, state.health, self.clock, breaker=state.breaker)
                state.breaker.on_open(state.prober.wake)
                state.prober.start()

    async def apply(self, config: ProxyConfig) -> None:
        """Swap in a new, already validated config; calls in flight finish on the old runtime."""
        config = allowing_hosts(config, self._allow_hosts)
        previous = self.runtime.current
        if (config.listen, config.admin) != (previous.config.listen, previous.config.admin):
            log.warning("reload_needs_restart", keys=["listen", "admin"], note="listener addresses change on restart only")
        if config.events.file != previous.config.events.file or config.events.log != previous.config.events.log:
            log.warning("reload_needs_restart", keys=["events.file", "events.log"], note="event sinks change on restart only")
        runtime = build_runtime(config, self.metrics, self.events, self.clock, previous)
        try:
            await self._open(runtime, previous)
        except BaseException:
            await self._close_new(runtime, previous)  # the old runtime keeps serving, untouched
            raise
        self.runtime.current = runtime
        # Only once the new runtime is in place: a reload that fails above changes nothing.
        if config.logging != previous.config.logging:
            configure_logging(config.logging.level, config.logging.format)
            self.events.logged = _events_as_lines(config.logging.level, self._events_log)
        if self.analyzer is not None:
            self.analyzer.config = config.analyzer
        if self.trials is not None:
            self.trials.config = config.analyzer.shadow
        self.events.enabled = config.events.enabled
        self.events.include_params = config.events.include_params
        self.events.summary_interval = config.events.summary_interval  # the timeline's slots, from the next window
        probers, transports = _left_behind(previous, runtime)
        for prober in probers:
            await prober.stop()
        for transport in transports:
            self._retire(transport, runtime.config.drain_timeout)

    async def _close_new(self, runtime: Runtime, previous: Runtime) -> None:
        """Undo `_open` for what `runtime` started and `previous` does not share."""
        probers, transports = _left_behind(runtime, previous)
        for prober in probers:
            await prober.stop()
        for transport in transports:
            await transport.close()

    def _retire(self, transport: HttpUpstream, after: float) -> None:
        """Close a replaced pool once the calls that started on it had `after` seconds to finish."""
        transport.retiring()

        async def close_later() -> None:
            try:
                await asyncio.sleep(after)
            finally:  # stopped early (the proxy shuts down): the pool still closes
                await transport.close()

        spawn(close_later(), name=f"retire-pool:{transport.name}", owner=self._retiring)

    async def stop(self) -> None:
        """Drain: not ready, end long-lived streams, stop accepting, let calls finish, then close everything."""
        self.draining = True
        log.info("proxy_draining", drain_timeout=self.runtime.current.config.drain_timeout)
        await self.handler.end_streams()
        if self._proxy_runner is not None:
            await self._proxy_runner.cleanup()
        await self._hand_over_sessions(self.runtime.current)
        if self.reloader is not None:
            await self.reloader.stop()
        await cancel_and_wait(self._tasks)
        if self.analyzer is not None:
            await self.analyzer.stop()
        if self.trials is not None:
            await self.trials.stop()
        self.events.flush_summaries()
        await self._close(self.runtime.current)
        log.info("proxy_stopped")

    async def _hand_over_sessions(self, runtime: Runtime) -> None:
        """The legacy sessions the proxy keeps, once no call is left: saved for the next proxy when
        `sessions_file` is set, else the ones only this proxy can route are ended upstream (`proxy.sessions.carry`)."""
        keepers = {name: state.sessions for name, state in runtime.states.items()}
        path = runtime.config.sessions_file
        if path is not None:
            try:
                log.info("sessions_saved", sessions=carry.save(path, keepers), path=path)
                return
            except OSError as exc:
                log.error("sessions_not_saved", path=path, error=str(exc))
        ending = [state.sessions.end_remapped(state.transport) for state in runtime.states.values()]
        try:
            async with asyncio.timeout(max(1.0, min(5.0, runtime.config.drain_timeout))):
                ended = sum(await asyncio.gather(*ending))
        except TimeoutError:
            ended = -1
        if ended:
            log.info("sessions_ended", sessions=ended, note="rebuilt sessions nobody else can route; their clients initialize again")

    async def _close(self, runtime: Runtime) -> None:
        """The end of `stop`, and all a failed `start` has to undo: probes, admin listener, pools, event file."""
        for state in runtime.states.values():
            if state.prober is not None:
                await state.prober.stop()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await cancel_and_wait(self._retiring)  # each still closes its pool
        for state in runtime.states.values():
            await state.transport.close()
        if self._event_file is not None:
            self._event_file.close()

    async def serve_forever(self, stop: asyncio.Event, reload: asyncio.Event) -> None:
        """Run until `stop` is set (SIGTERM/SIGINT); each time `reload` is set (SIGHUP), re-read the config."""
        await self.start()
        waits: Owner = set()
        waiter = spawn(stop.wait(), name="wait-for-stop", owner=waits, awaited=True)
        try:
            while not stop.is_set():
                hup = spawn(reload.wait(), name="wait-for-sighup", owner=waits, awaited=True)
                await asyncio.wait({waiter, hup}, return_when=asyncio.FIRST_COMPLETED)
                if reload.is_set():
                    reload.clear()
                    if self.reloader is not None:
                        await self.reloader.check("sighup", force=True)
                await cancel_and_wait([hup])
        finally:
            await cancel_and_wait(waits)
            await self.stop()


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The request's body, or None when it is (or says it is) longer than `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    while chunk := await request.content.read(65536):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def _bind(runner: web.BaseRunner, address: tuple[str, int], listener: str) -> list[tuple[str, int]]:
    """Start `runner` listening on `address`; return every socket address bound (the real port for
    port 0; a name such as localhost may bind two). `BindError` if it cannot."""
    await runner.setup()
    site = web.TCPSite(runner, address[0], address[1], reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        reason = _BIND_REASONS.get(exc.errno or 0) or (
            "cannot resolve that host name" if isinstance(exc, socket.gaierror) else exc.strerror or str(exc)
        )
        if exc.errno == errno.EADDRINUSE and listener == "admin":  # listen is bound first: it may be the one
            reason = "the port is already in use, by another process or by listen (two names for one address)"
        raise BindError(listener, address, reason) from None
    return [(str(sockname[0]), int(sockname[1])) for sockname in runner.addresses]


def _events_as_lines(level: str, events_log: bool) -> bool:
    """Are events written as log lines? With ``events.log``, while ``logging.level`` admits info, their level:
    at ``warning`` a cache hit (an event) writes no line. Otherwise the recorder writes the moments that
    must reach the log itself (`EventRecorder.logged` False), through structlog at their own level."""
    return events_log and admits(level, "info")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _left_behind(old: Runtime, new: Runtime) -> tuple[list[HealthProber], list[HttpUpstream]]:
    """The probes and pools `old` runs that `new` does not share: what a swap must stop or close."""
    kept_probers = {id(state.prober) for state in new.states.values()}
    kept_transports = {id(state.transport) for state in new.states.values()}
    probers = [s.prober for s in old.states.values() if s.prober is not None and id(s.prober) not in kept_probers]
    transports = [s.transport for s in old.states.values() if id(s.transport) not in kept_transports]
    return probers, transports


def _target(upstream: UpstreamConfig) -> str:
    """What an upstream is, for the start-up line: its URL without credentials, or its program (never the
    child's arguments, which may carry a token)."""
    if upstream.url is not None:
        return safe_url(upstream.url)
    return f"stdio: {upstream.command[0] if upstream.command else '?'}"


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@asynccontextmanager
async def running_proxy(config: ProxyConfig, config_path: Path | None = None) -> AsyncIterator[ProxyServer]:
    """Run a proxy for the duration of a `with` block (demo, tests)."""
    server = ProxyServer(config, config_path=config_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
