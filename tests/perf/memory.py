"""``python -m tests.perf --memory``: what the proxy holds in memory, idle and loaded.

Memory is not noisy the way CPU is, so this mode pins nothing and runs each step once:

1. **idle**: ``python -m proxy serve`` with the benchmark's default config, its resident set
   (``VmRSS``) ``--settle`` seconds after its ``proxy_started`` line (goal: at most 45 MiB);
2. **cache**: another proxy whose ``tools/call`` of ``echo`` is declared idempotent and cached (``ttl``
   mode, room for every entry), in front of an upstream whose answers carry a text of ``--payload``
   bytes made from the call's arguments; ``--entries`` calls with distinct arguments (16 at a time)
   fill its cache (checked in ``/status``). RSS per entry = the growth of RSS over the fill / the
   entries stored, against the bytes of one answer's ``result`` (goal: at most 2x);
3. **streams**: ``--streams`` calls of the upstream's ``hold`` tool, each answered with an SSE stream
   that stays open after its first event; every one is read up to that event, then RSS is read
   again. RSS per stream = its growth / streams.

The peak (``VmHWM``, the largest resident set the proxy ever had) after step 3 is checked against
120 MB (10^6 bytes: the issue's figure). About 30 seconds with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.perf.harness import _proxy_config, _start_proxy, _start_upstream, admin_url, get_json, post_json
from tests.perf.procs import Processes
from tests.perf.wrk import WRK_HEADERS

GOAL_IDLE_MIB = 45.0
GOAL_PEAK_MB = 120.0
GOAL_ENTRY_VS_ANSWER = 2.0
_MIB = 1024 * 1024
_CONCURRENCY = 16


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of `pid`, in KiB (from /proc/PID/status)."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            found[key] = int(value.split()[0])
    return found


def _mib(kib: int) -> float:
    return kib / 1024


def _loaded_config(upstream_url: str, entries: int, streams: int) -> str:
    room = streams + 256
    return _proxy_config(
        upstream_url,
        room,
        pool=f"{{max_connections: {room}, max_per_client: {room}}}",
        upstream_extra=f"""\
    rules:
      - match: {{method: tools/call, tool: echo}}
        idempotent: true
        cache: {{mode: ttl, ttl: 3600s, max_entries: {entries + 1000}, max_bytes: 1GiB}}
""",
    )


def _call(request_id: int, tool: str, text: str) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": tool, "arguments": {"text": text}}}
    )


async def _fill(url: str, entries: int) -> int:
    """`entries` calls of ``echo``, each with its own argument, `_CONCURRENCY` at a time; returns the failures."""
    failures = 0
    queue = iter(range(entries))

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        for i in queue:
            async with session.post(url, data=_call(i, "echo", f"entry-{i}"), headers=WRK_HEADERS) as response:
                await response.read()
                failures += response.status != 200

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=_CONCURRENCY)) as session:
        await asyncio.gather(*(worker(session) for _ in range(_CONCURRENCY)))
    return failures


async def _hold_streams(url: str, count: int, pid: int) -> tuple[dict[str, int], int]:
    """Open `count` held SSE streams through the proxy, read each to its first event, read the proxy's
    memory with all of them open; return it and how many streams opened."""
    opened = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        responses: list[aiohttp.ClientResponse] = []

        async def open_one(i: int) -> None:
            nonlocal opened
            response = await session.post(url, data=_call(i, "hold", f"stream-{i}"), headers=WRK_HEADERS)
            responses.append(response)
            if response.status == 200 and response.content_type == "text/event-stream":
                await asyncio.wait_for(response.content.readuntil(b"\n\n"), 30)
                opened += 1

        try:
            for start in range(0, count, 100):  # a hundred at a time: no connect storm on the listener's backlog
                await asyncio.gather(*(open_one(i) for i in range(start, min(count, start + 100))))
            await asyncio.sleep(0.5)
            memory = _status_kib(pid)
        finally:
            for response in responses:
                response.close()
    return memory, opened


def memory(args: argparse.Namespace, workdir: Path, procs: Processes) -> dict[str, Any]:
    out = sys.stdout.write
    upstream_url, upstream = _start_upstream(procs, "upstream-memory", "json", None, options=["--payload", str(args.payload)])

    idle_url, idle_proxy = _start_proxy(procs, workdir, "proxy-idle", _proxy_config(upstream_url, 32), None, args)
    time.sleep(args.settle)
    idle = _status_kib(idle_proxy.pid)
    procs.stop(idle_proxy)
    out(f"idle: serve with the default config, {args.settle:g}s after start: RSS {_mib(idle['VmRSS']):.1f} MiB "
        f"(anonymous {_mib(idle['RssAnon']):.1f}, file-backed {_mib(idle['RssFile']):.1f}); "
        f"goal <= {GOAL_IDLE_MIB:.0f} MiB: {'met' if _mib(idle['VmRSS']) <= GOAL_IDLE_MIB else 'NOT met'}\n")
    sys.stdout.flush()

    url, proxy = _start_proxy(
        procs, workdir, "proxy-loaded", _loaded_config(upstream_url, args.entries, args.streams), None, args
    )
    status_url = admin_url(proxy) + "/status"
    sample = post_json(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "entry-sample"}}})
    answer_bytes = len(orjson.dumps(sample["result"]))
    time.sleep(args.settle)
    before, cache_before = _status_kib(proxy.pid), get_json(status_url)["cache"]
    started = time.monotonic()
    failures = asyncio.run(_fill(url, args.entries))
    fill_seconds = time.monotonic() - started
    time.sleep(args.settle)
    filled, cache = _status_kib(proxy.pid), get_json(status_url)["cache"]
    stored = cache["entries"] - cache_before["entries"]
    per_entry = (filled["VmRSS"] - before["VmRSS"]) * 1024 / max(1, stored)
    out(f"cache: {stored:,} entries stored by {args.entries:,} calls ({failures} failed) in {fill_seconds:.1f}s; "
        f"RSS {_mib(before['VmRSS']):.1f} -> {_mib(filled['VmRSS']):.1f} MiB: {per_entry:,.0f} B per entry for "
        f"a {answer_bytes} B answer ({per_entry / answer_bytes:.1f}x; the cache counts {cache['bytes'] / max(1, cache['entries']):,.0f} B "
        f"per entry); goal <= {GOAL_ENTRY_VS_ANSWER:.0f}x: {'met' if per_entry <= GOAL_ENTRY_VS_ANSWER * answer_bytes else 'NOT met'}\n")
    sys.stdout.flush()

    streamed, opened = asyncio.run(_hold_streams(url, args.streams, proxy.pid))
    per_stream = (streamed["VmRSS"] - filled["VmRSS"]) * 1024 / max(1, opened)
    peak_mb = streamed["VmHWM"] * 1024 / 1e6
    out(f"streams: {opened:,} of {args.streams:,} SSE streams open: RSS {_mib(filled['VmRSS']):.1f} -> "
        f"{_mib(streamed['VmRSS']):.1f} MiB, {per_stream / 1024:,.1f} KiB per stream\n")
    out(f"peak (VmHWM) with {stored:,} cached answers and {opened:,} open streams: {peak_mb:.1f} MB "
        f"({_mib(streamed['VmHWM']):.1f} MiB); goal <= {GOAL_PEAK_MB:.0f} MB: "
        f"{'met' if peak_mb <= GOAL_PEAK_MB else 'NOT met'}\n")
    sys.stdout.flush()
    for child in (proxy, upstream):
        procs.stop(child)
    return {
        "settings": {
            "entries": args.entries,
            "streams": args.streams,
            "payload": args.payload,
            "settle_s": args.settle,
            "python": sys.version.split()[0],
            "proxy_src": str(Path(args.proxy_src).resolve()) if args.proxy_src else None,
        },
        "idle_kib": idle,
        "idle_url": idle_url,
        "answer_bytes": answer_bytes,
        "cache": {
            "stored": stored,
            "failures": failures,
            "before_kib": before,
            "after_kib": filled,
            "status": cache,
            "rss_bytes_per_entry": per_entry,
        },
        "streams": {"opened": opened, "after_kib": streamed, "rss_bytes_per_stream": per_stream},
        "peak_mb": peak_mb,
        "goals": {
            "idle": _mib(idle["VmRSS"]) <= GOAL_IDLE_MIB,
            "entry": per_entry <= GOAL_ENTRY_VS_ANSWER * answer_bytes,
            "peak": peak_mb <= GOAL_PEAK_MB,
        },
    }

