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
import contextlib
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx2

from tests.perf.harness import _proxy_started
from tests.perf.procs import Child, Processes
from tests.perf.restart_report import CallRecord, RestartWindow, print_report, read_events, read_executions, summarize
from tests.sdk_helpers import ACCEPT, LEGACY_VERSION, MODERN_VERSION, free_port, legacy_headers, modern_meta, read_sse

__all__ = ["Settings", "restart", "run_scenario", "settings_from"]

SERVER_START_TIMEOUT: Final = 60.0
"""Seconds a (re)started server may take to say ``LISTENING`` (the SDK's imports on a busy 2-CPU VM)."""
TOOLS: Final = ("read", "write")
"""What a client calls next, drawn at random (seeded per client, so runs repeat the same sequence): in
strict turns, the call after a ``write`` that failed at a kill would always be a ``read``, and no
``write`` would ever be made while the server is down."""
RETRY_PAUSE: Final = 0.2
"""A client's pause after a failed call, or a failed ``initialize``, before its next one: an agent does not
call again within the same millisecond, and without it a proxy that fails fast (an open breaker) would
have the clients make tens of thousands of calls a second that say nothing more than the first."""


@dataclass(frozen=True)
class Settings:
    legacy: int = 8
    modern: int = 8
    restarts: int = 3
    calls_between: int = 400
    work_ms: float = 10.0
    per_try: float = 10.0
    total: float = 30.0
    retry_attempts: int = 10
    backoff_base_ms: int = 100
    backoff_max_ms: int = 1000
    json_answers: bool = False
    breaker_threshold: int | None = None
    """The upstream breaker's ``failure_threshold``; None: the default (5); 0: ``breaker: {enabled: false}``."""
    around: float = 1.0
    """Seconds after a restart's end during which a call still counts as 'around' it."""
    grace: float = 5.0
    """Seconds past the deadline a client waits before it gives up on an answer (counted as unclear)."""
    phase_timeout: float = 120.0
    """Seconds a phase may take to reach its successful calls; past it the run goes on without them."""

    def user_settings(self) -> list[str]:
        """What the scenario sets for the upstream beyond the defaults, as a user would (for the report)."""
        return [
            "trust_annotations: true (believe the server's readOnlyHint/idempotentHint: `read` is retried)",
            f"timeouts: {{per_try: {self.per_try:g}s, total: {self.total:g}s}}",
            f"retry: {{max_attempts: {self.retry_attempts}, backoff: {{base: {self.backoff_base_ms}ms, max: {self.backoff_max_ms}ms}}}}"
            " (enough attempts to outlast a restart)",
            *([self._breaker_yaml().strip()] if self.breaker_threshold is not None else []),
        ]

    def _breaker_yaml(self) -> str:
        if self.breaker_threshold is None:
            return ""
        if self.breaker_threshold == 0:
            return "    breaker: {enabled: false}\n"
        return f"    breaker: {{failure_threshold: {self.breaker_threshold}}}\n"

    def upstream_yaml(self) -> str:
        return (
            "    trust_annotations: true\n"
            f"    timeouts: {{per_try: {self.per_try:g}s, total: {self.total:g}s}}\n"
            f"    retry: {{max_attempts: {self.retry_attempts}, "
            f"backoff: {{base: {self.backoff_base_ms}ms, max: {self.backoff_max_ms}ms}}}}\n"
            + self._breaker_yaml()
        )


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
# The clients
# --------------------------------------------------------------------------------------------------


@dataclass
class Load:
    """What the clients share: the records, the count that paces the restarts, the stop signal."""

    url: str
    settings: Settings
    t0: float = field(default_factory=time.perf_counter)
    records: list[CallRecord] = field(default_factory=list)
    ok_since_ready: int = 0
    phase_done: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sessions_opened: int = 0
    reinitialized: int = 0
    init_failures: int = 0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, record: CallRecord) -> None:
        self.records.append(record)
        if record.outcome == "ok":
            self.ok_since_ready += 1
            if self.ok_since_ready >= self.settings.calls_between:
                self.phase_done.set()

    def new_phase(self) -> None:
        self.ok_since_ready = 0
        self.phase_done.clear()


@dataclass(frozen=True)
class Answer:
    status: int | None
    message: dict[str, Any] | None
    session: str | None
    detail: str


async def _post(http: httpx2.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
    """POST one JSON-RPC message; the answer's status, the JSON-RPC response (JSON body or the SSE event
    that is no request or notification) and the session id header."""
    request_headers = {"content-type": "application/json", **headers}
    async with http.stream("POST", url, content=json.dumps(body), headers=request_headers) as response:
        session = response.headers.get("mcp-session-id")
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            async for event in read_sse(response):
                if not event.data:
                    continue
                parsed = json.loads(event.data)
                if isinstance(parsed, dict) and "method" not in parsed:
                    return Answer(response.status_code, parsed, session, "")
            return Answer(response.status_code, None, session, "SSE ended without a response")
        raw = await response.aread()
        if response.status_code == 202 or not raw.strip():
            return Answer(response.status_code, None, session, f"HTTP {response.status_code} without a body")
        try:
            parsed = json.loads(raw)
        except ValueError:
            return Answer(response.status_code, None, session, f"HTTP {response.status_code}: {raw[:120]!r}")
        if not isinstance(parsed, dict):
            return Answer(response.status_code, None, session, f"HTTP {response.status_code}: not an object")
        return Answer(response.status_code, parsed, session, "")


def _session_named(answer: Answer) -> bool:
    """The answer says the session is gone: a 404 on a session request, or an error that names the session."""
    if answer.status == 404:
        return True
    error = (answer.message or {}).get("error")
    return isinstance(error, dict) and "session" in str(error.get("message", "")).lower()


async def _call(
    load: Load, http: httpx2.AsyncClient, era: str, client: int, tool: str, ref: str, request_id: int,
    headers: dict[str, str],
) -> tuple[CallRecord, Answer | None]:
    """One ``tools/call`` of `tool` with `ref`, judged: ok, a clear JSON-RPC error, or unclear."""
    params: dict[str, Any] = {"name": tool, "arguments": {"ref": ref}}
    if era == "modern":
        params["_meta"] = modern_meta()
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    started = load.now()
    answer: Answer | None = None
    try:
        async with asyncio.timeout(load.settings.total + load.settings.grace):
            answer = await _post(http, load.url, body, headers)
    except TimeoutError:
        detail = f"no answer within the deadline + {load.settings.grace:g} s"
    except (httpx2.HTTPError, OSError, ValueError) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:200]
    ended = load.now()
    if answer is None:
        return CallRecord(era, client, tool, ref, started, ended, "unclear", detail=detail), None
    message, expected = answer.message or {}, f"{'read' if tool == 'read' else 'wrote'} {ref}"
    error = message.get("error")
    result = message.get("result")
    same_id = message.get("id") == request_id and type(message.get("id")) is int
    outcome, code, reason, detail = "unclear", None, None, answer.detail
    if isinstance(error, dict):
        raw_code = error.get("code")
        code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
        data = error.get("data")
        reason = str(data.get("reason")) if isinstance(data, dict) and "reason" in data else None
        detail = f"HTTP {answer.status} {str(error.get('message'))[:100]}"
        clear = message.get("jsonrpc") == "2.0" and same_id and code is not None and isinstance(error.get("message"), str)
        outcome = "error" if clear else "unclear"
        if not same_id:
            detail += f" (id {message.get('id')!r}, not {request_id})"
    elif isinstance(result, dict):
        content = result.get("content")
        text = content[0].get("text") if isinstance(content, list) and content and isinstance(content[0], dict) else None
        if same_id and not result.get("isError") and text == expected:
            outcome = "ok"
        else:
            detail = f"HTTP {answer.status} unexpected result {json.dumps(result)[:120]}"
    record = CallRecord(
        era, client, tool, ref, started, ended, outcome, answer.status, code, reason, detail,
        session_rejected=era == "legacy" and outcome != "ok" and _session_named(answer),
    )
    return record, answer


async def _initialize(load: Load, http: httpx2.AsyncClient, client: int) -> str | None:
    """A legacy session: ``initialize``, ``notifications/initialized``, ``tools/list`` (so the proxy learns
    the tools' annotations); tried again until it works or the run stops. Its id, None when stopped."""
    init = {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": f"bench-legacy-{client}", "version": "1"}},
    }
    while not load.stop.is_set():
        try:
            async with asyncio.timeout(load.settings.total + load.settings.grace):
                answer = await _post(http, load.url, init, {"accept": ACCEPT})
                session = answer.session
                if answer.status == 200 and session and "result" in (answer.message or {}):
                    headers = legacy_headers(session)
                    await _post(http, load.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
                    listed = await _post(http, load.url, {"jsonrpc": "2.0", "id": -1, "method": "tools/list"}, headers)
                    if "result" in (listed.message or {}):
                        load.sessions_opened += 1
                        return session
        except (TimeoutError, httpx2.HTTPError, OSError, ValueError):
            pass
        load.init_failures += 1
        await asyncio.sleep(RETRY_PAUSE)  # a client's backoff before it initializes again
    return None


async def legacy_client(load: Load, client: int) -> None:
    """A legacy-era client: one session, ``read`` or ``write`` (`TOOLS`) until the run stops."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(load.settings.total + load.settings.grace)) as http:
        session = await _initialize(load, http, client)
        choose = random.Random(f"legacy-{client}")
        seq = 0
        while session is not None and not load.stop.is_set():
            tool = choose.choice(TOOLS)
            record, _ = await _call(load, http, "legacy", client, tool, f"L{client}-{seq}", seq + 1, legacy_headers(session))
            load.add(record)
            seq += 1
            if record.outcome != "ok":
                await asyncio.sleep(RETRY_PAUSE)  # a client's pause after a failure, not synchronisation
            if record.session_rejected:
                load.reinitialized += 1
                session = await _initialize(load, http, client)
        if session is not None:
            with contextlib.suppress(httpx2.HTTPError, OSError):
                await http.delete(load.url, headers=legacy_headers(session))


def _modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN_VERSION, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return headers


async def modern_client(load: Load, client: int) -> None:
    """A 2026-07-28 client: stateless requests, ``tools/list`` once, then ``read`` or ``write`` (`TOOLS`)."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(load.settings.total + load.settings.grace)) as http:
        listing = {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": {"_meta": modern_meta()}}
        with contextlib.suppress(httpx2.HTTPError, OSError, ValueError):
            await _post(http, load.url, listing, _modern_headers("tools/list"))
        choose = random.Random(f"modern-{client}")
        seq = 0
        while not load.stop.is_set():
            tool = choose.choice(TOOLS)
            record, _ = await _call(
                load, http, "modern", client, tool, f"M{client}-{seq}", seq + 1, _modern_headers("tools/call", tool)
            )
            load.add(record)
            seq += 1
            if record.outcome != "ok":
                await asyncio.sleep(RETRY_PAUSE)  # a client's pause after a failure, not synchronisation


# --------------------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------------------


async def _drive(load: Load, server: Server, settings: Settings) -> tuple[list[RestartWindow], list[str]]:
    """Run the clients; restart the server after every phase of successful calls; stop after the last."""
    clients = [asyncio.create_task(legacy_client(load, i)) for i in range(settings.legacy)]
    clients += [asyncio.create_task(modern_client(load, i)) for i in range(settings.modern)]
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


async def run_scenario(settings: Settings, workdir: Path, procs: Processes, proxy_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Start server and proxy, drive the load through the restarts, stop the proxy, judge the records."""
    executions, events_path = workdir / "executions.txt", workdir / "events.jsonl"
    server = Server(procs, free_port(), executions, settings)
    await server.start()
    config = workdir / "restart-proxy.yaml"
    config_text = proxy_config(server.url, events_path, settings)
    config.write_text(config_text)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(proxy_env or {})}
    proxy = procs.start("proxy-restart", [sys.executable, "-m", "proxy", "serve", "--config", str(config)], None, env)
    listen: list[str] = []

    def started(line: str) -> bool:
        found = _proxy_started(line)
        if found is not None:
            listen.append(found)
        return found is not None

    await _until_line(proxy, "stderr", started, SERVER_START_TIMEOUT)
    load = Load(listen[0].rstrip("/") + "/mcp", settings)
    windows, notes = await _drive(load, server, settings)
    procs.stop(proxy, grace=30.0)  # a clean stop writes out the events file
    server.kill()
    summary = summarize(load.records, windows, read_executions(executions), read_events(events_path), settings.total, settings.around)
    return {
        "settings": {k: v for k, v in vars(settings).items()},
        "user_settings": settings.user_settings(),
        "measurement_settings": MEASUREMENT_SETTINGS,
        "proxy_config": config_text,
        "legacy_sessions": {"opened": load.sessions_opened, "reinitialized": load.reinitialized, "init_failures": load.init_failures},
        "notes": notes,
        "summary": summary,
    }



def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        legacy=args.legacy, modern=args.modern, restarts=args.restarts, calls_between=args.calls_between,
        work_ms=args.work_ms, per_try=args.per_try, total=args.total, retry_attempts=args.retry_attempts,
        json_answers=args.json_answers, breaker_threshold=args.breaker_threshold,
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
    report = asyncio.run(run_scenario(settings, workdir, procs))
    print_report(report, sys.stdout)
    for note in report["notes"]:
        sys.stdout.write(f"NOTE: {note}\n")
    sys.stdout.flush()
    return report
