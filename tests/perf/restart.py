"""``python -m tests.perf --restart``: an MCP server SIGKILLed and restarted under load, behind the proxy.

One run starts, on 127.0.0.1 only, the server of `tests.perf.restart_server` (the official SDK, both
eras, a read-only ``read`` and a non-idempotent ``write`` that records each execution in a file) on a
fixed port, and the proxy as a subprocess (``python -m proxy serve``) in front of it, then drives it
with ``--legacy`` legacy-session clients and ``--modern`` 2026-07-28 clients (raw HTTP, ``httpx2``),
each calling ``read`` or ``write`` (drawn at random, seeded) back to back, every call with a ref of its
own. A legacy client initializes its session once, lists the tools, and re-initializes only when an
answer tells it its session is gone (counted: the proxy's session recovery should make that never
happen).

After ``--calls-between`` successful calls, the server is SIGKILLed and started again at once on the same
port; ``--restarts`` times, then ``--calls-between`` more successful calls and the clients stop. The
restarts come at call counts, not after timed sleeps, so each one hits a server under load whatever the
machine's speed. Then the proxy is stopped (so its events file is complete) and the three records are
judged (`tests.perf.restart_report`): the clients' calls, the server's executions, the proxy's events.

The proxy's config is its defaults plus what a user would set for this upstream (`user_settings`,
printed with the results), and two settings for the measurement alone: the events file, with the calls'
params in it (``events.include_params``, so an event names the call's ref).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final


from tests.perf.harness import _proxy_started
from tests.perf.procs import Child, Processes
from tests.perf.restart_clients import Load, legacy_client, modern_client, sdk_client
from tests.perf.restart_report import RestartWindow, print_report, read_events, read_executions, summarize
from tests.sdk_helpers import free_port

__all__ = ["Settings", "restart", "run_scenario", "settings_from"]

SERVER_START_TIMEOUT: Final = 60.0
"""Seconds a (re)started server may take to say ``LISTENING`` (the SDK's imports on a busy 2-CPU VM)."""

@dataclass(frozen=True)
class Settings:
    legacy: int = 8
    modern: int = 8
    sdk: int = 1
    """SDK clients (`mcp.Client`) per era, beside the raw ones."""
    restarts: int = 3
    calls_between: int = 400
    work_ms: float = 10.0
    per_try: float = 10.0
    total: float = 30.0
    retry_attempts: int = 20
    backoff_base_ms: int = 100
    backoff_max_ms: int = 1000
    json_answers: bool = False
    budget_ratio: float | None = None
    """The retry budget's ``ratio``; None: the default (0.2)."""
    breaker_threshold: int | None = None
    """The upstream breaker's ``failure_threshold``; None: the default (5); 0: ``breaker: {enabled: false}``."""
    around: float = 1.0
    """Seconds after a restart's end during which a call still counts as 'around' it."""
    grace: float = 5.0
    """Seconds past the deadline a client waits before it gives up on an answer (counted as unclear)."""
    phase_timeout: float = 120.0
    """Seconds a phase may take to reach its successful calls; past it the run goes on without them."""

    def user_settings(self) -> list[str]:
        """What the scenario sets for the upstream beyond the defaults, as a user would: each a line of
        the upstream's YAML (`upstream_yaml`)."""
        budget = f", budget: {{ratio: {self.budget_ratio:g}}}" if self.budget_ratio is not None else ""
        settings = [
            "trust_annotations: true",
            f"timeouts: {{per_try: {self.per_try:g}s, total: {self.total:g}s}}",
            f"retry: {{max_attempts: {self.retry_attempts}, backoff: {{base: {self.backoff_base_ms}ms, "
            f"max: {self.backoff_max_ms}ms}}{budget}}}",
        ]
        if self.breaker_threshold == 0:
            settings.append("breaker: {enabled: false}")
        elif self.breaker_threshold is not None:
            settings.append(f"breaker: {{failure_threshold: {self.breaker_threshold}}}")
        return settings

    def upstream_yaml(self) -> str:
        return "".join(f"    {line}\n" for line in self.user_settings())


MEASUREMENT_SETTINGS: Final = [
    "events.file (the JSON lines read after the run)",
    "events.include_params: true (an event names the call's ref)",
]


def proxy_config(upstream_url: str, events_path: Path, settings: Settings) -> str:
    return f"""\
# Written by tests.perf --restart: the proxy's defaults, what a user would set for this upstream, and the
# events file the scenario reads.
listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
logging: {{level: info, format: json, access_log: false}}
events:
  include_params: true
  file: {{path: {json.dumps(str(events_path))}, max_bytes: 1GiB, backups: 0}}
upstreams:
  - name: bench
    url: {upstream_url}
{settings.upstream_yaml()}"""


# --------------------------------------------------------------------------------------------------
# The server, killed and started again on its port
# --------------------------------------------------------------------------------------------------


class Server:
    """`tests.perf.restart_server` on a fixed port: started, SIGKILLed, started again."""

    def __init__(self, procs: Processes, port: int, executions: Path, settings: Settings) -> None:
        self.procs, self.port, self.executions, self.settings = procs, port, executions, settings
        self.child: Child | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    async def start(self) -> None:
        argv = [
            sys.executable, "-m", "tests.perf.restart_server", "--port", str(self.port),
            "--executions", str(self.executions), "--work-ms", str(self.settings.work_ms),
            *(["--json-response"] if self.settings.json_answers else []),
        ]
        self.starts += 1
        self.child = self.procs.start(f"server-{self.starts}", argv, None, {**os.environ, "PYTHONUNBUFFERED": "1"})
        await _until_line(self.child, "stdout", lambda line: line.startswith("LISTENING "), SERVER_START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to any session or connection (an OOM kill, a crashed pod)."""
        if self.child is not None:
            self.child.process.kill()
            self.child.process.wait()
            self.procs.stop(self.child)


async def _until_line(child: Child, which: str, accept: Callable[[str], bool], timeout: float) -> None:
    """Wait (polling the child's stdout or stderr file, without blocking the clients' event loop) for a
    line `accept`s; fail if the child exits or `timeout` passes."""
    path = child.stdout if which == "stdout" else child.stderr
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(accept(line) for line in path.read_text(errors="replace").splitlines()):
            return
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}:\n{child.tail()}")
        await asyncio.sleep(0.02)  # a readiness poll of a file; bounded by the timeout
    raise RuntimeError(f"{child.name} not ready after {timeout:g}s:\n{child.tail()}")



# --------------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------------


async def _drive(load: Load, server: Server, settings: Settings) -> tuple[list[RestartWindow], list[str]]:
    """Run the clients; restart the server after every phase of successful calls; stop after the last."""
    clients = [asyncio.create_task(legacy_client(load, i)) for i in range(settings.legacy)]
    clients += [asyncio.create_task(modern_client(load, i)) for i in range(settings.modern)]
    clients += [asyncio.create_task(sdk_client(load, era, i)) for era in ("legacy", "modern") for i in range(settings.sdk)]
    windows: list[RestartWindow] = []
    notes: list[str] = []
    try:
        for phase in range(settings.restarts + 1):
            try:
                await asyncio.wait_for(load.phase_done.wait(), settings.phase_timeout)
            except TimeoutError:
                notes.append(f"phase {phase + 1} reached {load.ok_since_ready} of {settings.calls_between} successes in {settings.phase_timeout:g} s")
            if phase == settings.restarts:
                break
            killed = load.now()
            server.kill()
            await server.start()
            windows.append(RestartWindow(killed, load.now()))
            load.new_phase()
    finally:
        load.stop.set()
        await asyncio.gather(*clients, return_exceptions=True)
    return windows, notes


async def run_scenario(settings: Settings, workdir: Path, procs: Processes, proxy_src: str | None = None) -> dict[str, Any]:
    """Start server and proxy, drive the load through the restarts, stop the proxy, judge the records.
    `proxy_src`: run the proxy package found in that directory (``--proxy-src``), e.g. an older tree."""
    executions, events_path = workdir / "executions.txt", workdir / "events.jsonl"
    server = Server(procs, free_port(), executions, settings)
    await server.start()
    config = workdir / "restart-proxy.yaml"
    config_text = proxy_config(server.url, events_path, settings)
    config.write_text(config_text)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if proxy_src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(Path(proxy_src).resolve()), env.get("PYTHONPATH"))))
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    # With a proxy_src the proxy runs from the work directory, so `python -m` does not put this checkout first.
    proxy = procs.start("proxy-restart", argv, None, env, workdir if proxy_src else None)
    listen: list[str] = []

    def started(line: str) -> bool:
        found = _proxy_started(line)
        if found is not None:
            listen.append(found)
        return found is not None

    await _until_line(proxy, "stderr", started, SERVER_START_TIMEOUT)
    load = Load(listen[0].rstrip("/") + "/mcp", settings.calls_between, settings.total + settings.grace)
    windows, notes = await _drive(load, server, settings)
    procs.stop(proxy, grace=30.0)  # a clean stop writes out the events file
    server.kill()
    summary = summarize(load.records, windows, read_executions(executions), read_events(events_path), settings.total, settings.around)
    return {
        "settings": {k: v for k, v in vars(settings).items()},
        "user_settings": settings.user_settings(),
        "measurement_settings": MEASUREMENT_SETTINGS,
        "proxy_config": config_text,
        "proxy_src": str(Path(proxy_src).resolve()) if proxy_src else None,
        "legacy_sessions": {
            "opened": load.sessions_opened, "reinitialized": load.reinitialized, "init_failures": load.init_failures,
            "get_streams_opened": load.streams_opened, "get_streams_ended": load.streams_ended,
        },
        "sdk_clients": {
            "opened": load.sdk_clients_opened, "replaced": load.sdk_clients_replaced,
            "errors": len(load.sdk_client_errors), "error_examples": load.sdk_client_errors[:5],
        },
        "notes": notes,
        "summary": summary,
    }



def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        legacy=args.legacy, modern=args.modern, sdk=args.sdk, restarts=args.restarts, calls_between=args.calls_between,
        work_ms=args.work_ms, per_try=args.per_try, total=args.total, retry_attempts=args.retry_attempts,
        json_answers=args.json_answers, breaker_threshold=args.breaker_threshold, budget_ratio=args.budget_ratio,
    )


def restart(args: argparse.Namespace, workdir: Path, procs: Processes) -> dict[str, Any]:
    """The ``--restart`` mode: run the scenario, print its table and verdicts, return the report."""
    settings = settings_from(args)
    sys.stdout.write(
        f"restart under load: {settings.legacy} legacy sessions + {settings.modern} modern clients, {settings.restarts} "
        f"SIGKILL restarts of the server, each after {settings.calls_between} successful calls; tools work "
        f"{settings.work_ms:g} ms; answers {'JSON' if settings.json_answers else 'SSE (the SDK default)'}\n"
    )
    sys.stdout.flush()
    report = asyncio.run(run_scenario(settings, workdir, procs, args.proxy_src))
    print_report(report, sys.stdout)
    for note in report["notes"]:
        sys.stdout.write(f"NOTE: {note}\n")
    sys.stdout.flush()
    return report
