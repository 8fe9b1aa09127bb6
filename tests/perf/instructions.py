"""``python -m tests.perf --instructions``: CPU per request as a count that repeats, not a time that drifts.

CPU µs per request move by 10-20% from hour to hour on the shared VM; a change worth 2% cannot be seen
in them. Instructions executed in user space, counted by valgrind's callgrind, repeat to about ±0.2%
from run to run with 1,000 requests (with 500, the forwarders' counts spread up to 2%) once hash
randomisation is off (``PYTHONHASHSEED=0``: set iteration order, and so the code paths dicts and sets
take, then no longer changes between runs). They are not time (no cache misses, no system calls, no
waiting), but for the same interpreter on the same machine they follow the work done in Python, which is
what a per-call saving changes.

For each of the proxy (``python -m proxy serve`` with the benchmark's generated config; ``--proxy-src DIR``
runs another tree's package) and the naive, aiofloor and floor forwarders, one at a time, in front of the
benchmark upstream (JSON, or SSE with ``--mode sse``; ``both`` runs each):

1. start it under ``valgrind --tool=callgrind --instr-atstart=no``: nothing is counted, start-up and
   imports included;
2. send `WARMUP_REQUESTS` requests on one keep-alive connection (caches, pools and lazy imports filled),
   then ``callgrind_control -i on PID``;
3. send ``--requests`` requests on the same connection, then ``callgrind_control -i off PID``;
4. stop it (SIGTERM) and read the total from the ``Collected : N`` line valgrind prints at exit.

It prints instructions per request for each, proxy/naive and proxy/aiofloor, and the per-call work,
proxy minus aiofloor: the aiofloor is aiohttp's low-level server in front of the proxy's own upstream
client with nothing done per call, so the difference is what the proxy itself does per call. Without
valgrind and callgrind_control (``apt-get install -y valgrind``) the mode says so and measures nothing.
About 30 seconds per answer type with 500 requests on this VM.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.perf.harness import (
    BODY,
    _check_answer,
    _listening,
    _proxy_config,
    _proxy_started,
    _start_upstream,
)
from tests.perf.procs import Child, Processes
from tests.perf.wrk import WRK_HEADERS

__all__ = ["instructions", "missing_tools"]

TARGETS = ("proxy", "naive", "aiofloor", "floor")
FORWARDERS = {
    "naive": "tests.perf.naive_forwarder",
    "aiofloor": "tests.perf.aiohttp_floor",
    "floor": "tests.perf.floor_forwarder",
}
WARMUP_REQUESTS = 200
"""Requests before counting starts: enough for every lazy import, pool connection and cache to be in place."""
_START_TIMEOUT = 120.0
"""Seconds a target may take to listen: under valgrind, importing the proxy takes about 10 s on this VM."""
_STOP_GRACE = 60.0
"""Seconds a target may take to exit after SIGTERM; valgrind writes its profile and totals first."""
_REQUEST_TIMEOUT = 60.0
_COLLECTED = re.compile(r"^==\d+== Collected : (\d+)$", re.MULTILINE)


def missing_tools() -> list[str]:
    """The tools this mode needs that are not on PATH (none: it can run)."""
    return [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]


def _under_callgrind(workdir: Path, name: str, argv: Sequence[str]) -> list[str]:
    """`argv` under callgrind with counting off until `_toggle` turns it on."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={workdir / f'callgrind.{name}.%p'}",
        *argv,
    ]


def _env(proxy_src: str | None = None) -> dict[str, str]:
    """The environment of a measured target: hash randomisation off, so its count repeats."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONHASHSEED": "0"}
    if proxy_src:
        src = str(Path(proxy_src).resolve())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (src, env.get("PYTHONPATH"))))
    return env


def _start_proxy(procs: Processes, workdir: Path, name: str, upstream_url: str, args: argparse.Namespace) -> tuple[str, Child]:
    """The proxy under callgrind with the benchmark's default config (ports 0); its MCP URL and the process.

    Like `tests.perf.harness._start_proxy`, which starts it without valgrind: with ``--proxy-src`` it runs
    from the work directory, so that `python -m` does not put this checkout before DIR."""
    config = workdir / f"{name}.yaml"
    config.write_text(_proxy_config(upstream_url, args.connections))
    argv = _under_callgrind(workdir, name, [sys.executable, "-m", "proxy", "serve", "--config", str(config)])
    cwd = workdir if args.proxy_src else None
    proxy = procs.start(name, argv, None, _env(args.proxy_src), cwd)
    return proxy.wait_for_line("stderr", _proxy_started, _START_TIMEOUT).rstrip("/") + "/mcp", proxy


def _start_forwarder(procs: Processes, workdir: Path, name: str, target: str, upstream_url: str) -> tuple[str, Child]:
    """One of the reference forwarders under callgrind (port 0); its MCP URL and the process."""
    argv = [sys.executable, "-m", FORWARDERS[target], "--port", "0", "--upstream", upstream_url]
    child = procs.start(name, _under_callgrind(workdir, name, argv), None, _env())
    return f"http://127.0.0.1:{child.wait_for_line('stdout', _listening, _START_TIMEOUT)}/mcp", child


def _send(connection: http.client.HTTPConnection, path: str, count: int) -> None:
    """`count` benchmark calls, one after another on `connection`; each must be answered 200."""
    for _ in range(count):
        connection.request("POST", path, BODY, WRK_HEADERS)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"answered {response.status}: {body[:200]!r}")


def _toggle(child: Child, state: str) -> None:
    """Turn callgrind's counting in `child` on or off; returns once valgrind has done it."""
    done = subprocess.run(
        ["callgrind_control", "-i", state, str(child.pid)], capture_output=True, text=True, timeout=_REQUEST_TIMEOUT
    )
    if done.returncode != 0:
        raise RuntimeError(f"callgrind_control -i {state} {child.pid} failed:\n{done.stdout}{done.stderr}")


def _count(procs: Processes, child: Child, url: str, requests: int) -> int:
    """Warm `child` up, count the instructions of `requests` calls on one keep-alive connection, stop it,
    and return the count valgrind printed at exit."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=_REQUEST_TIMEOUT)
    try:
        _send(connection, parts.path, WARMUP_REQUESTS)
        _toggle(child, "on")
        _send(connection, parts.path, requests)
        _toggle(child, "off")
    finally:
        connection.close()
    procs.stop(child, grace=_STOP_GRACE)
    found = _COLLECTED.search(child.stderr.read_text(errors="replace"))
    if found is None:
        raise RuntimeError(f"{child.name}: no 'Collected :' line from valgrind at exit:\n{child.tail()}")
    return int(found.group(1))


def _measure(procs: Processes, workdir: Path, mode: str, target: str, upstream_url: str, args: argparse.Namespace) -> int:
    """Start `target` under callgrind, check one answer by hand, return its instructions for ``--requests`` calls."""
    name = f"{target}-{mode}"
    if target == "proxy":
        url, child = _start_proxy(procs, workdir, name, upstream_url, args)
    else:
        url, child = _start_forwarder(procs, workdir, name, target, upstream_url)
    _check_answer(name, url, mode)
    return _count(procs, child, url, args.requests)


def _ratios(per_request: dict[str, float]) -> dict[str, float]:
    proxy, naive, aiofloor = per_request["proxy"], per_request["naive"], per_request["aiofloor"]
    return {
        "proxy_vs_naive": proxy / naive,
        "proxy_vs_aiofloor": proxy / aiofloor,
        "aiofloor_vs_naive": aiofloor / naive,
        "per_call_work": proxy - aiofloor,
    }


def _print_mode(mode: str, per_request: dict[str, float], ratios: dict[str, float], requests: int) -> None:
    out = sys.stdout.write
    out(f"\n== upstream answers {mode.upper()}: instructions per request ({requests:,} counted after "
        f"{WARMUP_REQUESTS} warm-up, one keep-alive connection) ==\n")
    out(f"{'target':<9} {'instr/req':>12} {'vs naive':>9} {'vs aiofloor':>12}\n")
    for name, value in per_request.items():
        out(f"{name:<9} {value:>12,.0f} {value / per_request['naive']:>8.3f}x {value / per_request['aiofloor']:>11.3f}x\n")
    out(f"proxy/naive {ratios['proxy_vs_naive']:.3f}x, proxy/aiofloor {ratios['proxy_vs_aiofloor']:.3f}x, "
        f"aiofloor/naive {ratios['aiofloor_vs_naive']:.3f}x; per-call work (proxy - aiofloor): "
        f"{ratios['per_call_work']:,.0f} instructions per request\n")
    sys.stdout.flush()


def _run_mode(procs: Processes, workdir: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every target in turn against one upstream answering `mode`; their totals, per request, and the ratios."""
    upstream_url, upstream = _start_upstream(procs, f"upstream-{mode}", mode, None)
    totals: dict[str, int] = {}
    for target in TARGETS:
        sys.stdout.write(f"  [{mode}] {target} under callgrind ...\n")
        sys.stdout.flush()
        totals[target] = _measure(procs, workdir, mode, target, upstream_url, args)
    procs.stop(upstream)
    per_request = {name: total / args.requests for name, total in totals.items()}
    ratios = _ratios(per_request)
    _print_mode(mode, per_request, ratios, args.requests)
    return {"totals": totals, "per_request": per_request, "ratios": ratios}


def instructions(args: argparse.Namespace, workdir: Path, procs: Processes) -> dict[str, Any]:
    """The ``--instructions`` mode (see the module docstring); its figures, for ``--json``."""
    modes = ("json", "sse") if args.mode == "both" else (args.mode,)
    sys.stdout.write(
        "instructions: user-space instructions counted by callgrind (valgrind), PYTHONHASHSEED=0; "
        "repeatable to about 0.2% at 1,000 requests, not a time\n"
    )
    report: dict[str, Any] = {
        "settings": {
            "requests": args.requests,
            "warmup_requests": WARMUP_REQUESTS,
            "python": sys.version.split()[0],
            "proxy_src": str(Path(args.proxy_src).resolve()) if args.proxy_src else None,
        },
        "modes": {},
    }
    for mode in modes:
        report["modes"][mode] = _run_mode(procs, workdir, mode, args)
    return report
