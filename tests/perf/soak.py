"""``python -m tests.perf.soak``: does the proxy's memory stay flat under good and hostile traffic for long?

A bounded soak, not a test: the proxy (``python -m proxy serve``, as a user runs it) in front of the
benchmark upstream (`tests.perf.upstream`, every 10th answer a bare 503), and in this process a mix of
clients for ``--minutes`` (default 10), all on 127.0.0.1:

- **good**: ``--good`` clients, each with its own Authorization, calling ``tools/call`` and
  ``tools/list`` at a steady pace (their answers are counted: ok, upstream 503, proxy errors);
- **hostile**, each at its own pace: tool names that exist nowhere (a new one every call), method names
  of 10 KiB, batches of 3 MiB, params nested 600 deep, requests with 300 headers, bodies over the
  limit, a new credential per call on cached reads with new arguments every time (cache churn),
  slow-loris connections trickling a request head a byte at a time, idle keep-alive connections.

Every ``--sample`` seconds it reads the proxy's RSS and open file descriptors from ``/proc``, and from
``/status`` what its bounded structures hold (events buffered, cache entries, rate-limit buckets). After
the warm-up (the first ``--warmup`` share of the run, 40% by default) both should stay flat: it prints the samples, the
figures at the end of warm-up, the peak and last after it, and the least-squares slope of RSS over the
rest of the run (MiB per minute), and writes everything as JSON with ``--json FILE``. The hostile
clients' own outcomes are counted too (what status each got), so a run shows that they were refused,
not served.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.perf.harness import _listening, _proxy_started
from tests.perf.procs import Processes

_MIB = 1024 * 1024


def _config(upstream_url: str) -> str:
    return f"""\
# Written by tests.perf.soak: defaults plus a cache, a per-tool breaker and a per-client rate limit.
# rate_limit.max_keys is 2000 (default 10000) so that every bounded structure reaches its bound within the
# warm-up: a new credential arrives 20 times a second, and 10000 buckets would take 8 minutes to fill.
listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
logging: {{level: info, format: json, access_log: false}}
upstreams:
  - name: soak
    url: {upstream_url}
    path: /mcp
    rate_limit: {{rate: 500, per: 1s, burst: 500, key: client, max_keys: 2000}}
    app_breaker: {{errors: [is_error, timeout], min_clients: 2}}
    rules:
      - match: {{method: tools/list}}
        cache: {{mode: ttl, ttl: 5s}}
      - match: {{method: resources/read}}
        cache: {{mode: ttl, ttl: 60s}}
"""


def _admin_started(line: str) -> str | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event["admin"] if isinstance(event, dict) and event.get("event") == "proxy_started" else None


def _rss_and_fds(pid: int) -> tuple[float, int]:
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    num = sum((t - mean_t) * (v - mean_v) for t, v in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return 60 * num / den if den else 0.0


class Soak:
    def __init__(self, url: str, stop_at: float) -> None:
        self.url = url
        self.host, _, rest = url.removeprefix("http://").partition("/")
        self.stop_at = stop_at
        self.outcomes: dict[str, Counter[str]] = {}
        self.ids = itertools.count(1)

    def running(self) -> bool:
        return time.monotonic() < self.stop_at

    def count(self, who: str, what: str) -> None:
        self.outcomes.setdefault(who, Counter())[what] += 1

    def message(self, method: str, params: Any) -> bytes:
        return orjson.dumps({"jsonrpc": "2.0", "id": next(self.ids), "method": method, "params": params})

    async def post(self, session: aiohttp.ClientSession, who: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            async with session.post(
                self.url, data=body, headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **(headers or {})}
            ) as response:
                await response.read()
                self.count(who, str(response.status))
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            self.count(who, type(exc).__name__)

    async def paced(self, who: str, per_second: float, one: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> None:
        """Call `one` `per_second` times a second until the end (a benchmark may pace with sleeps)."""
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            interval = 1 / per_second
            next_at = time.monotonic()
            while self.running():
                await one(session)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    # The clients ------------------------------------------------------------------------------------

    def good(self, n: int) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
        headers = {"Authorization": f"Bearer good-client-{n}"}
        calls = itertools.cycle([("tools/call", {"name": "echo", "arguments": {"n": n}}), ("tools/list", {})])

        async def one(session: aiohttp.ClientSession) -> None:
            method, params = next(calls)
            await self.post(session, "good", self.message(method, params), headers)

        return one

    async def junk_tool(self, session: aiohttp.ClientSession) -> None:
        name = f"junk-{random.getrandbits(64):x}-" + "x" * 200
        await self.post(session, "junk_tool_names", self.message("tools/call", {"name": name, "arguments": {}}))

    async def long_method(self, session: aiohttp.ClientSession) -> None:
        await self.post(session, "long_method_names", self.message("x" * 10240 + str(random.getrandbits(32)), {}))

    async def big_batch(self, session: aiohttp.ClientSession) -> None:
        item = b'{"jsonrpc":"2.0","id":1,"method":"ping"},'
        body = b"[" + item * (3 * _MIB // len(item)) + b'{"jsonrpc":"2.0","id":2,"method":"ping"}]'
        await self.post(session, "big_batches", body, {"MCP-Protocol-Version": "2025-03-26"})

    async def deep(self, session: aiohttp.ClientSession) -> None:
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":' + b"[" * 600 + b"]" * 600 + b"}}"
        await self.post(session, "deep_params", body)

    async def many_headers(self, session: aiohttp.ClientSession) -> None:
        headers = {f"X-Pad-{i}": "v" * 50 for i in range(300)}
        await self.post(session, "many_headers", self.message("tools/list", {}), headers)

    async def oversized(self, session: aiohttp.ClientSession) -> None:
        await self.post(session, "oversized_bodies", b'{"x":"' + b"a" * (5 * _MIB) + b'"}')

    async def cache_churn(self, session: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer churn-{random.getrandbits(64):x}"}
        uri = f"file:///soak/{random.getrandbits(64):x}"
        await self.post(session, "cache_churn", self.message("resources/read", {"uri": uri}), headers)

    async def slow_loris(self, connections: int) -> None:
        """Keep `connections` connections trickling a request head, a byte every second; reopen closed ones."""

        async def one() -> None:
            while self.running():
                try:
                    reader, writer = await asyncio.open_connection(*self._addr())
                    head = f"POST /mcp HTTP/1.1\r\nHost: {self.host}\r\n" + "X-Slow: " + "s" * 4000
                    for byte in head.encode():
                        if not self.running() or reader.at_eof():
                            break
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(1)
                    self.count("slow_loris", "closed_by_proxy" if reader.at_eof() else "ended")
                    writer.close()
                except OSError as exc:
                    self.count("slow_loris", type(exc).__name__)
                    await asyncio.sleep(1)

        await asyncio.gather(*(one() for _ in range(connections)))

    async def idle(self, connections: int) -> None:
        """Keep `connections` keep-alive connections that sent one request and then say nothing."""

        async def one() -> None:
            while self.running():
                try:
                    reader, writer = await asyncio.open_connection(*self._addr())
                    body = self.message("ping", {})
                    writer.write(
                        f"POST /mcp HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                        f"Accept: application/json, text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                    )
                    await writer.drain()
                    while self.running() and await reader.read(65536):
                        pass  # the answer, then nothing until the proxy closes the idle connection
                    self.count("idle_keepalive", "closed_by_proxy" if self.running() else "ended")
                    writer.close()
                except OSError as exc:
                    self.count("idle_keepalive", type(exc).__name__)
                    await asyncio.sleep(1)

        await asyncio.gather(*(one() for _ in range(connections)))

    def _addr(self) -> tuple[str, int]:
        host, _, port = self.host.rpartition(":")
        return host, int(port)


async def _held(session: aiohttp.ClientSession, admin: str) -> dict[str, Any]:
    """What the proxy's bounded structures hold now (from /status): growth is attributed, not guessed."""
    try:
        async with session.get(admin + "/status") as response:
            status = await response.json()
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return {}
    return {"events": status.get("events"), "cache": status.get("cache"), "rate_limit": status.get("rate_limit")}


async def _drive(
    url: str, admin: str, seconds: float, good: int, sample: float, pid: int
) -> tuple[list[dict[str, Any]], dict[str, Counter[str]]]:
    start = time.monotonic()
    soak = Soak(url, start + seconds)
    samples: list[dict[str, Any]] = []

    async def sampler() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while soak.running():
                rss, fds = _rss_and_fds(pid)
                held = await _held(session, admin)
                samples.append({"t": round(time.monotonic() - start, 1), "rss_mib": round(rss, 1), "fds": fds, "held": held})
                await asyncio.sleep(sample)

    clients = [soak.paced("good", 20, soak.good(n)) for n in range(good)]
    clients += [
        soak.paced("junk_tool_names", 20, soak.junk_tool),
        soak.paced("long_method_names", 5, soak.long_method),
        soak.paced("big_batches", 0.2, soak.big_batch),
        soak.paced("deep_params", 2, soak.deep),
        soak.paced("many_headers", 2, soak.many_headers),
        soak.paced("oversized_bodies", 1, soak.oversized),
        soak.paced("cache_churn", 20, soak.cache_churn),
        soak.slow_loris(100),
        soak.idle(100),
    ]
    tasks = [asyncio.ensure_future(client) for client in (sampler(), *clients)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()  # a hung client (an idle connection the proxy never closes) ends with the run
    await asyncio.gather(*tasks, return_exceptions=True)
    return samples, soak.outcomes


def _report(samples: list[dict[str, Any]], outcomes: dict[str, Counter[str]], warmup_share: float, seconds: float) -> dict[str, Any]:
    warm_end = seconds * warmup_share
    after = [s for s in samples if s["t"] >= warm_end]
    at_warm = after[0] if after else samples[-1]
    summary = {
        "samples": samples,
        "warmup_s": warm_end,
        "rss_at_warmup_end_mib": at_warm["rss_mib"],
        "rss_peak_after_mib": max(s["rss_mib"] for s in after) if after else None,
        "rss_last_mib": samples[-1]["rss_mib"],
        "rss_slope_mib_per_min": round(_slope([(s["t"], s["rss_mib"]) for s in after]), 3),
        "fds_at_warmup_end": at_warm["fds"],
        "fds_peak_after": max(s["fds"] for s in after) if after else None,
        "fds_last": samples[-1]["fds"],
        "outcomes": {who: dict(counts) for who, counts in outcomes.items()},
    }
    for s in samples[:: max(1, len(samples) // 20)]:
        sys.stdout.write(f"t={s['t']:>6}s  rss={s['rss_mib']:>7.1f} MiB  fds={s['fds']}  held={json.dumps(s['held'], sort_keys=True)}\n")
    for key in ("rss_at_warmup_end_mib", "rss_peak_after_mib", "rss_last_mib", "rss_slope_mib_per_min",
                "fds_at_warmup_end", "fds_peak_after", "fds_last"):
        sys.stdout.write(f"{key}: {summary[key]}\n")
    for who, counts in sorted(summary["outcomes"].items()):
        sys.stdout.write(f"{who}: {json.dumps(counts, sort_keys=True)}\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=0.4, help="share of the run before memory must be flat (the default mix fills its bounded structures in about 3 minutes)")
    parser.add_argument("--good", type=int, default=8, help="good clients, 20 calls/s each")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mcp-soak-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            upstream = procs.start("upstream", [sys.executable, "-m", "tests.perf.upstream", "--port", "0", "--fail-every", "10"], None, env)
            upstream_url = f"http://127.0.0.1:{upstream.wait_for_line('stdout', _listening)}/mcp"
            config = workdir / "soak.yaml"
            config.write_text(_config(upstream_url))
            proxy = procs.start("proxy", [sys.executable, "-m", "proxy", "serve", "--config", str(config)], None, env)
            url = proxy.wait_for_line("stderr", _proxy_started).rstrip("/") + "/mcp"
            admin = proxy.wait_for_line("stderr", _admin_started).rstrip("/")
            seconds = args.minutes * 60
            samples, outcomes = asyncio.run(_drive(url, admin, seconds, args.good, args.sample, proxy.pid))
            summary = _report(samples, outcomes, args.warmup, seconds)
            summary["proxy_stderr_bytes"] = proxy.stderr.stat().st_size
            if args.json:
                args.json.write_text(json.dumps(summary, indent=2))
        finally:
            procs.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
