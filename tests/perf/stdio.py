"""``python -m tests.perf --stdio``: what the proxy costs in front of a stdio MCP server, against calling it directly.

One run starts, on 127.0.0.1 only, the fast child of `tests.perf.stdio_child` twice:

- **direct**: a child of this process, spoken to over its stdin/stdout by a synchronous client in this
  process (blocking ``os.write``/``os.read``, no event loop: the least a client can cost): sequential
  ``tools/call`` for ``--latency-duration`` s (p50/p99 from ``perf_counter_ns``), then ``--connections``
  calls kept in flight (pipelined on the one pipe) for ``--duration`` s after a ``--warmup``: calls/s;
- **proxy**: ``python -m proxy serve --config FILE`` with the child as its one upstream (``command:``),
  reached over HTTP, a call costing client→proxy HTTP, proxy→gateway HTTP on the Unix socket and a line
  to the child (`proxy.upstream.stdio.gateway`). Two kinds of client: ``modern`` (2026-07-28 stateless
  requests, headers and ``_meta``) and ``legacy`` (one session: ``initialize`` and
  ``notifications/initialized`` first, then every call carries its ``Mcp-Session-Id``, as most stdio
  clients are legacy). Each gets throughput at ``--connections`` connections (warm-up first), then
  p50/p99 at 1 connection, then that again with the proxy moved onto the client's CPU.

The load generator is wrk when it is installed (the 1 µs histogram of the other modes), else a raw-socket
asyncio HTTP/1.1 client in this process (keep-alive, one request in flight per connection, latency per
request); the report names which.

Pinning (``--pin split``, the default, for 2 CPUs): the clients (wrk, or this process) and both children
on CPU 0, the proxy (its gateway runs in its own process) on CPU 1. So the direct rows are one CPU's
worth and the proxy rows have a second CPU: the "one CPU" latency puts everything on CPU 0 and is the
fair added latency. The proxy's CPU per call and the child's are measured (``/proc``); the child's shows
whether it ever was the bottleneck. One round; ``--rounds`` does not apply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tests.perf.harness import _move, _placement, _start_proxy
from tests.perf.procs import Child, Processes, cpu_seconds, machine_busy_seconds
from tests.perf.wrk import WRK_HEADERS, run_wrk, write_script

__all__ = ["CHILD", "Settings", "run_stdio", "stdio"]

CHILD: Final = Path(__file__).with_name("stdio_child.py")
LEGACY_VERSION: Final = "2025-11-25"
MODERN_VERSION: Final = "2026-07-28"
CALL: Final = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "hello"}},
}
LINE: Final = json.dumps(CALL, separators=(",", ":")).encode() + b"\n"
MODERN_META: Final = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "perf-stdio", "version": "1"},
}
VARIANTS: Final = ("modern", "legacy")

Load = Callable[[int, float], dict[str, Any]]
"""One load run at (connections, seconds): wrk's result shape (`tests.perf.wrk.run_wrk`)."""


@dataclass(frozen=True)
class Settings:
    duration: float = 6.0
    latency_duration: float = 4.0
    warmup: float = 1.0
    connections: int = 32
    threads: int = 1
    pin: str = "split"
    proxy_src: str | None = None


def _percentiles(nanos: list[int]) -> dict[str, float]:
    """Nearest-rank percentiles in µs (wrk's keys)."""
    if not nanos:
        return {k: 0.0 for k in ("mean", "min", "p50", "p90", "p99", "p999", "max")}
    ordered = sorted(nanos)

    def rank(q: float) -> float:
        return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))] / 1000

    return {
        "mean": sum(ordered) / len(ordered) / 1000,
        "min": ordered[0] / 1000,
        "p50": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": ordered[-1] / 1000,
    }


@contextmanager
def _on_cpu(cpu: str | None) -> Iterator[None]:
    """Run this (single-threaded) process on `cpu` meanwhile: the client sits where wrk would."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(cpu)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _own_cpu() -> float:
    """CPU of this process and of its finished children (wrk)."""
    me, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + waited.ru_utime + waited.ru_stime


class _Meter:
    """CPU used by the measured processes over one run, and by everything else on the machine."""

    def __init__(self, pids: dict[str, int], others: list[Child]) -> None:
        self.pids, self.others = pids, others
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        found = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        found["_ours"] = _own_cpu() + sum(cpu_seconds(c.pid) for c in self.others if c.pid not in self.pids.values())
        found["_busy"] = machine_busy_seconds()
        found["_wall"] = time.monotonic()
        return found

    def done(self) -> dict[str, float]:
        after = self._read()
        used = {k: after[k] - self.before[k] for k in after}
        wall = used.pop("_wall")
        ours = used.pop("_ours") + sum(used[name] for name in self.pids)
        background = used.pop("_busy") - ours
        return {**used, "_wall": wall, "background_cpu_percent": max(0.0, 100.0 * background / wall)}


# --------------------------------------------------------------------------------------------------
# direct: one client on the child's pipes
# --------------------------------------------------------------------------------------------------


class DirectChild:
    """The child started with pipes; `handshake`, then the calls; `close` ends it (EOF, then a kill)."""

    def __init__(self, workdir: Path, procs: Processes, cpu: str | None) -> None:
        self.stderr = (workdir / "direct-child.err").open("wb")
        self.process = subprocess.Popen(
            procs.pinned([sys.executable, str(CHILD)], cpu),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.w, self.r = self.process.stdin.fileno(), self.process.stdout.fileno()
        self.pending = b""

    def _line(self) -> bytes:
        while b"\n" not in self.pending:
            chunk = os.read(self.r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the direct child closed its stdout (exit {self.process.poll()})")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line

    def handshake(self) -> None:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": LEGACY_VERSION}}
        os.write(self.w, json.dumps(init).encode() + b"\n")
        if b'"protocolVersion"' not in self._line():
            raise RuntimeError("the direct child did not answer initialize")
        os.write(self.w, b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        os.write(self.w, LINE)
        answer = json.loads(self._line())
        if answer.get("id") != 1 or answer.get("result", {}).get("content", [{}])[0].get("text") != "hello":
            raise RuntimeError(f"the direct child answered {answer!r}")

    def sequential(self, seconds: float) -> dict[str, Any]:
        """One call at a time: each one's round trip."""
        nanos: list[int] = []
        errors = 0
        end = time.perf_counter() + seconds
        started = time.perf_counter_ns()
        while time.perf_counter() < end:
            t0 = time.perf_counter_ns()
            os.write(self.w, LINE)
            line = self._line()
            nanos.append(time.perf_counter_ns() - t0)
            errors += b'"result"' not in line
        elapsed = (time.perf_counter_ns() - started) / 1e9
        return {
            "requests": len(nanos),
            "rps": len(nanos) / elapsed,
            "errors": errors,
            "latency_us": _percentiles(nanos),
        }

    def pipelined(self, depth: int, seconds: float) -> dict[str, Any]:
        """`depth` calls in flight: a new one written for every answer read, until `seconds` pass."""
        os.write(self.w, LINE * depth)
        sent, answered, errors = depth, 0, 0
        started = time.perf_counter()
        end = started + seconds
        buffer = self.pending
        while answered < sent:
            buffer += os.read(self.r, 1 << 20)
            cut = buffer.rfind(b"\n") + 1
            if not cut:
                continue
            done, buffer = buffer[:cut], buffer[cut:]
            count = done.count(b"\n")
            answered += count
            errors += count - done.count(b'"result"')
            if time.perf_counter() < end:
                os.write(self.w, LINE * count)
                sent += count
        elapsed = time.perf_counter() - started
        self.pending = buffer
        return {"requests": answered, "rps": answered / elapsed, "errors": errors, "seconds": elapsed}

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.stderr.close()


def _direct(workdir: Path, procs: Processes, settings: Settings, cpu: str | None) -> dict[str, Any]:
    child = DirectChild(workdir, procs, cpu)
    try:
        with _on_cpu(cpu):
            child.handshake()
            child.pipelined(settings.connections, settings.warmup)
            meter = _Meter({"child": child.process.pid}, procs.children)
            loaded = child.pipelined(settings.connections, settings.duration)
            used = meter.done()
            time.sleep(0.3)
            single = child.sequential(settings.latency_duration)
    finally:
        child.close()
    return {
        "rps": loaded["rps"],
        "requests": loaded["requests"],
        "errors": loaded["errors"] + single["errors"],
        "rps_1conn": single["rps"],
        "requests_1conn": single["requests"],
        "latency_1conn_us": single["latency_us"],
        "latency_1conn_one_cpu_us": single["latency_us"],
        "cpu_us_per_request": None,
        "child_cpu_percent": 100.0 * used["child"] / used["_wall"],
        "child_cpu_us_per_request": 1e6 * used["child"] / loaded["requests"] if loaded["requests"] else None,
        "background_cpu_percent": used["background_cpu_percent"],
    }


# --------------------------------------------------------------------------------------------------
# proxy: HTTP clients -> serve -> gateway -> child
# --------------------------------------------------------------------------------------------------


def proxy_config(connections: int) -> str:
    room = max(256, connections)
    command = json.dumps([sys.executable, str(CHILD)])
    return f"""\
# Written by tests.perf --stdio: the proxy with its defaults, the benchmark's stdio child as its upstream.
listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
logging: {{level: info, format: json, access_log: false}}
upstreams:
  - name: bench
    command: {command}
    pool: {{max_connections: {room}, max_per_client: {room}}}
"""


def _child_pid(line: str) -> str | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return str(event["pid"]) if isinstance(event, dict) and event.get("event") == "stdio_child_up" else None


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def _request(variant: str, url: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of this variant's call (a legacy session is opened for it here)."""
    if variant == "modern":
        message = {**CALL, "params": {**CALL["params"], "_meta": MODERN_META}}  # type: ignore[dict-item]
        headers = {
            **WRK_HEADERS,
            "MCP-Protocol-Version": MODERN_VERSION,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "echo",
        }
        return json.dumps(message, separators=(",", ":")).encode(), headers
    init = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "perf-stdio", "version": "1"},
        },
    }
    status, answer_headers, raw = _post(url, json.dumps(init).encode(), WRK_HEADERS)
    session = {k.lower(): v for k, v in answer_headers.items()}.get("mcp-session-id")
    if status != 200 or not session:
        raise RuntimeError(f"initialize through the proxy answered {status} without a session: {raw[:200]!r}")
    headers = {**WRK_HEADERS, "Mcp-Session-Id": session, "MCP-Protocol-Version": LEGACY_VERSION}
    status, _, raw = _post(url, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', headers)
    if status != 202:
        raise RuntimeError(f"notifications/initialized through the proxy answered {status}: {raw[:200]!r}")
    return LINE.rstrip(), headers


def _check(variant: str, url: str, body: bytes, headers: dict[str, str]) -> None:
    status, answer_headers, raw = _post(url, body, headers)
    if answer_headers.get("Content-Type", "").startswith("text/event-stream"):
        raw = [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")][-1]
    answer = json.loads(raw)
    if (
        status != 200
        or answer.get("id") != 1
        or answer.get("result", {}).get("content", [{}])[0].get("text") != "hello"
    ):
        raise RuntimeError(f"{variant} call through the proxy answered {status}: {raw[:300]!r}")


async def _http_load(
    url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float
) -> dict[str, Any]:
    """Keep-alive HTTP/1.1 POSTs, one in flight per connection, for `seconds`: wrk's result shape."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    request = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    nanos: list[int] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    end = time.perf_counter() + seconds

    async def connection() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            errors["connect"] += 1
            return
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter_ns()
                writer.write(request)
                answer = await reader.readuntil(b"\r\n\r\n")
                fields = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(b":") for line in answer.split(b"\r\n")[1:] if line)
                }
                if b"content-length" in fields:
                    await reader.readexactly(int(fields[b"content-length"]))
                else:  # chunked (an SSE answer)
                    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                        await reader.readexactly(size + 2)
                    await reader.readuntil(b"\r\n")
                nanos.append(time.perf_counter_ns() - t0)
                errors["status"] += not answer.startswith(b"HTTP/1.1 2")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            errors["read"] += 1
        finally:
            writer.close()

    started = time.perf_counter_ns()
    await asyncio.gather(*(connection() for _ in range(connections)))
    duration_us = (time.perf_counter_ns() - started) / 1000
    return {
        "requests": len(nanos),
        "duration_us": duration_us,
        "errors": errors,
        "error_count": sum(errors.values()),
        "rps": len(nanos) / (duration_us / 1e6),
        "latency_us": _percentiles(nanos),
    }


def _python_load(url: str, body: bytes, headers: dict[str, str], cpu: str | None) -> Load:
    def run(connections: int, seconds: float) -> dict[str, Any]:
        with _on_cpu(cpu):
            try:
                import uvloop
            except ImportError:
                return asyncio.run(_http_load(url, body, headers, connections, seconds))
            return uvloop.run(_http_load(url, body, headers, connections, seconds))

    return run


def _wrk_load(wrk: str, url: str, script: Path, threads: int, pin: list[str]) -> Load:
    def run(connections: int, seconds: float) -> dict[str, Any]:
        return run_wrk(wrk, url, script, connections=connections, duration=seconds, threads=threads, pin=pin)

    return run


def _through_proxy(
    load: Load, proxy: Child, child_pid: int, procs: Processes, settings: Settings, cpu: str | None
) -> dict[str, Any]:
    """Throughput and CPU per call under load, then 1-connection latency as placed and on one CPU."""
    warm = load(settings.connections, settings.warmup)
    meter = _Meter({"proxy": proxy.pid, "child": child_pid}, procs.children)
    loaded = load(settings.connections, settings.duration)
    used = meter.done()
    time.sleep(0.3)
    single = shared = load(1, settings.latency_duration)
    if cpu is not None:
        before = _move(proxy.pid, {int(cpu)})
        try:
            time.sleep(0.3)
            shared = load(1, settings.latency_duration)
        finally:
            _move(proxy.pid, before)
    requests = loaded["requests"]
    return {
        "rps": loaded["rps"],
        "requests": requests,
        "warmup_requests": warm["requests"],
        "errors": warm["error_count"]
        + loaded["error_count"]
        + single["error_count"]
        + (shared["error_count"] if shared is not single else 0),
        "latency_loaded_us": loaded["latency_us"],
        "rps_1conn": single["rps"],
        "requests_1conn": single["requests"],
        "latency_1conn_us": single["latency_us"],
        "requests_1conn_one_cpu": shared["requests"],
        "latency_1conn_one_cpu_us": shared["latency_us"],
        "cpu_percent": 100.0 * used["proxy"] / used["_wall"],
        "cpu_us_per_request": 1e6 * used["proxy"] / requests if requests else None,
        "child_cpu_percent": 100.0 * used["child"] / used["_wall"],
        "child_cpu_us_per_request": 1e6 * used["child"] / requests if requests else None,
        "background_cpu_percent": used["background_cpu_percent"],
    }


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    direct = results["direct"]
    ratios: dict[str, Any] = {}
    for variant in VARIANTS:
        r = results[variant]
        ratios[variant] = {
            "throughput_vs_direct": r["rps"] / direct["rps"] if direct["rps"] else None,
            "added_p50_us": r["latency_1conn_us"]["p50"] - direct["latency_1conn_us"]["p50"],
            "added_p99_us": r["latency_1conn_us"]["p99"] - direct["latency_1conn_us"]["p99"],
            "added_p50_one_cpu_us": r["latency_1conn_one_cpu_us"]["p50"] - direct["latency_1conn_us"]["p50"],
            "added_p99_one_cpu_us": r["latency_1conn_one_cpu_us"]["p99"] - direct["latency_1conn_us"]["p99"],
            "proxy_cpu_us_per_call": r["cpu_us_per_request"],
        }
    return ratios


def run_stdio(settings: Settings, workdir: Path, procs: Processes, wrk: str | None) -> dict[str, Any]:
    """Start the children and the proxy, measure direct then both proxy variants; the report."""
    place = _placement(settings.pin)
    client_cpu = place["wrk"]
    tool = f"wrk ({wrk})" if wrk else "asyncio raw-socket HTTP/1.1 client in the benchmark process"
    results: dict[str, dict[str, Any]] = {"direct": _direct(workdir, procs, settings, client_cpu)}
    args = argparse.Namespace(proxy_src=settings.proxy_src)
    url, proxy = _start_proxy(
        procs, workdir, "proxy-stdio", proxy_config(settings.connections), place["forwarder"], args
    )
    child_pid = int(proxy.wait_for_line("stderr", _child_pid))
    if client_cpu is not None:
        _move(child_pid, {int(client_cpu)})  # it inherited the proxy's CPU; it belongs beside the clients
    for variant in VARIANTS:
        body, headers = _request(variant, url)
        _check(variant, url, body, headers)
        sys.stdout.write(f"  [stdio] {variant} through the proxy at {url}\n")
        sys.stdout.flush()
        if wrk:
            script = write_script(workdir / f"stdio-{variant}.lua", body, headers)
            load = _wrk_load(wrk, url, script, settings.threads, procs.pinned([], client_cpu))
        else:
            load = _python_load(url, body, headers, client_cpu)
        results[variant] = _through_proxy(load, proxy, child_pid, procs, settings, place["forwarder"] and client_cpu)
    procs.stop(proxy)
    return {
        "settings": {
            **vars(settings),
            "cpus_available": sorted(os.sched_getaffinity(0)),
            "placement": {"clients_and_children": client_cpu, "proxy": place["forwarder"]},
            "load_generator": tool,
            "direct_client": "synchronous os.write/os.read on the child's pipes, in the benchmark process",
            "python": sys.version.split()[0],
        },
        "results": results,
        "ratios": _ratios(results),
    }


def print_report(report: dict[str, Any], out: Callable[[str], Any]) -> None:
    s, results, ratios = report["settings"], report["results"], report["ratios"]
    c = s["connections"]
    out(f"\n== stdio upstream: direct over pipes vs. through the proxy (load: {s['load_generator']}) ==\n")
    out(
        f"{'target':<8} {f'req/s@{c}':>10} {'p50@1 us':>9} {'p99@1 us':>9} {'1cpu p50':>9} {'1cpu p99':>9} {'req/s@1':>8} "
        f"{'proxy us/call':>13} {'child us/call':>13} {'child CPU%':>10} {'errors':>6} {'other%':>6}\n"
    )
    for name, r in results.items():
        one, single = r["latency_1conn_one_cpu_us"], r["latency_1conn_us"]
        proxy_cpu = f"{r['cpu_us_per_request']:.1f}" if r["cpu_us_per_request"] is not None else "-"
        out(
            f"{name:<8} {r['rps']:>10,.0f} {single['p50']:>9,.0f} {single['p99']:>9,.0f} {one['p50']:>9,.0f} {one['p99']:>9,.0f} "
            f"{r['rps_1conn']:>8,.0f} {proxy_cpu:>13} {r['child_cpu_us_per_request'] or 0:>13.1f} "
            f"{r['child_cpu_percent']:>10.0f} {r['errors']:>6} {r['background_cpu_percent']:>6.0f}\n"
        )
    for variant in VARIANTS:
        q = ratios[variant]
        out(
            f"{variant}: proxy/direct throughput {q['throughput_vs_direct']:.3f}x; added p50 {q['added_p50_us']:+.0f} us, "
            f"p99 {q['added_p99_us']:+.0f} us (proxy on its own CPU); on one CPU added p50 {q['added_p50_one_cpu_us']:+.0f} us, "
            f"p99 {q['added_p99_one_cpu_us']:+.0f} us; proxy CPU {q['proxy_cpu_us_per_call'] or 0:.1f} us per call\n"
        )
    noisy = max(r["background_cpu_percent"] for r in results.values())
    if noisy > 10:
        out(f"WARNING: other processes used up to {noisy:.0f}% of a CPU during the runs; figures are disturbed\n")


def stdio(args: argparse.Namespace, workdir: Path, procs: Processes, wrk: str) -> dict[str, Any]:
    """The ``--stdio`` mode: measure, print the table, return the report (`wrk` "" for the Python client)."""
    settings = Settings(
        duration=args.duration,
        latency_duration=args.latency_duration,
        warmup=args.warmup,
        connections=args.connections,
        threads=args.threads,
        pin=args.pin,
        proxy_src=args.proxy_src,
    )
    report = run_stdio(settings, workdir, procs, wrk or None)
    print_report(report, sys.stdout.write)
    sys.stdout.flush()
    return report
