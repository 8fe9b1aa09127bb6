"""What every benchmark mode shares: placing processes on CPUs, starting the upstream and the proxy,
checking one answer by hand, and one loaded wrk run with the CPU the process under test used."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.perf.procs import Child, Processes, cpu_seconds, machine_busy_seconds
from tests.perf.wrk import WRK_HEADERS, run_wrk

BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'


def _placement(pin: str) -> dict[str, str | None]:
    cpus = os.sched_getaffinity(0)
    if pin == "none" or len(cpus) < 2:
        return {"wrk": None, "upstream": None, "forwarder": None}
    first, second = sorted(cpus)[:2]
    return {"wrk": str(first), "upstream": str(first), "forwarder": str(second)}


def _move(pid: int, cpus: set[int]) -> set[int]:
    """Put every thread of `pid` on `cpus`; return the CPUs it had (its main thread's)."""
    before = os.sched_getaffinity(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)
    return before


def _listening(line: str) -> str | None:
    return line.split()[1] if line.startswith("LISTENING ") else None


def _proxy_started(line: str) -> str | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return (
        event["listen"]
        if isinstance(event, dict) and event.get("event") == "proxy_started"
        else None
    )


def _proxy_config(
    upstream_url: str, connections: int, top: str = "", upstream_extra: str = "", pool: str | None = None
) -> str:
    """The proxy with its defaults in front of the benchmark upstream; `top` and `upstream_extra` are
    extra YAML lines at the top level and inside the upstream (already indented); `pool` the upstream's
    pool section (default: room for `connections`, at least 256, all of it for one client: every wrk
    connection comes from 127.0.0.1 without credentials, one client identity, and the default per-client
    cap of a quarter of the pool would refuse past 64 of them)."""
    room = max(256, connections)
    pool = pool or f"{{max_connections: {room}, max_per_client: {room}}}"
    return f"""\
# Written by tests.perf: the proxy with its defaults, in front of the benchmark upstream.
listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
logging: {{level: info, format: json, access_log: false}}
{top}upstreams:
  - name: bench
    url: {upstream_url}
    path: /mcp
    pool: {pool}
{upstream_extra}"""


def _start_proxy(
    procs: Processes,
    workdir: Path,
    name: str,
    config_text: str,
    cpus: str | None,
    args: argparse.Namespace,
) -> tuple[str, Child]:
    """Start ``python -m proxy serve`` on a generated config; return its MCP URL and the process.

    Its stdout and stderr go to regular files in the work directory (`Processes.start`), never a pipe,
    so a proxy that logs a lot (events as log lines) can never block on a full pipe."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.proxy_src:
        src = str(Path(args.proxy_src).resolve())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (src, env.get("PYTHONPATH"))))
    config = workdir / f"{name}.yaml"
    config.write_text(config_text)
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config)]
    # With --proxy-src the proxy runs from the work directory, so `python -m` does not put this checkout first.
    cwd = workdir if args.proxy_src else None
    proxy = procs.start(name, argv, cpus, env, cwd)
    return proxy.wait_for_line("stderr", _proxy_started).rstrip("/") + "/mcp", proxy


def _start_upstream(
    procs: Processes,
    name: str,
    mode: str,
    cpus: str | None,
    fail_every: int = 0,
    options: Sequence[str] = (),
) -> tuple[str, Child]:
    """Start `tests.perf.upstream` (with more of its command-line `options`); return its MCP URL and the process."""
    argv = [
        sys.executable,
        "-m",
        "tests.perf.upstream",
        "--port",
        "0",
        *(["--sse"] if mode == "sse" else []),
        *(["--fail-every", str(fail_every)] if fail_every else []),
        *options,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    upstream = procs.start(name, argv, cpus, env)
    return f"http://127.0.0.1:{upstream.wait_for_line('stdout', _listening)}/mcp", upstream


def admin_url(proxy: Child) -> str:
    """The admin URL a started proxy announced in its ``proxy_started`` line."""

    def admin(line: str) -> str | None:
        try:
            event = json.loads(line)
        except ValueError:
            return None
        return event["admin"] if isinstance(event, dict) and event.get("event") == "proxy_started" else None

    return proxy.wait_for_line("stderr", admin).rstrip("/")


def post_json(url: str, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """POST one JSON-RPC message as an MCP client would; return the JSON answer (an SSE answer's last event)."""
    request = urllib.request.Request(url, data=json.dumps(message).encode(), headers=WRK_HEADERS, method="POST")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
        if response.headers.get("Content-Type", "").startswith("text/event-stream"):
            raw = [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")][-1]
    answer: dict[str, Any] = json.loads(raw)
    return answer


def get_json(url: str, timeout: float = 10.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document

def _check_answer(name: str, url: str, mode: str) -> None:
    """One request by hand: the target must answer 200 with the echoed id and the tool result."""
    request = urllib.request.Request(url, data=BODY, headers=WRK_HEADERS, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        status, content_type, raw = (
            response.status,
            response.headers.get("Content-Type", ""),
            response.read(),
        )
    if mode == "sse":
        data = [
            line[5:].strip()
            for line in raw.decode().splitlines()
            if line.startswith("data:")
        ]
        raw = data[-1].encode() if data else b""
    wanted = "text/event-stream" if mode == "sse" else "application/json"
    answer = json.loads(raw) if raw else {}
    if (
        status != 200
        or not content_type.startswith(wanted)
        or answer.get("id") != 1
        or "result" not in answer
    ):
        raise RuntimeError(
            f"{name} at {url} answered {status} {content_type!r}: {raw[:200]!r}"
        )


def _ours(children: list[Child]) -> float:
    """CPU time of our children: the servers (still running) and every finished wrk."""
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (
        sum(cpu_seconds(child.pid) for child in children)
        + waited.ru_utime
        + waited.ru_stime
    )


def _loaded(
    wrk: str,
    url: str,
    script: Path,
    args: argparse.Namespace,
    pin: list[str],
    under_test: Child,
    procs: Processes,
) -> dict[str, Any]:
    """A warm-up, then requests/s at ``--connections`` with the CPU the process under test used."""
    warm = run_wrk(
        wrk,
        url,
        script,
        connections=args.connections,
        duration=args.warmup,
        threads=args.threads,
        pin=pin,
    )
    before, ours_before, busy_before = (
        cpu_seconds(under_test.pid),
        _ours(procs.children),
        machine_busy_seconds(),
    )
    loaded = run_wrk(
        wrk,
        url,
        script,
        connections=args.connections,
        duration=args.duration,
        threads=args.threads,
        pin=pin,
    )
    cpu = cpu_seconds(under_test.pid) - before
    background = (machine_busy_seconds() - busy_before) - (
        _ours(procs.children) - ours_before
    )
    seconds = loaded["duration_us"] / 1e6
    return {
        "rps": loaded["rps"],
        "requests": loaded["requests"],
        "errors": loaded["error_count"],
        "status_errors": loaded["errors"]["status"],
        "warmup_requests": warm["requests"],
        "warmup_status_errors": warm["errors"]["status"],
        "latency_loaded_us": loaded["latency_us"],
        "cpu_percent": 100.0 * cpu / seconds,
        "cpu_us_per_request": 1e6 * cpu / loaded["requests"]
        if loaded["requests"]
        else None,
        # CPU used by processes that are not part of the benchmark (other workloads on the machine):
        # more than a few percent means the figures of this run are disturbed.
        "background_cpu_percent": max(0.0, 100.0 * background / seconds),
    }
