"""``mcp-resilience-proxy demo``: the built-in MCP server, the proxy in front of it, and a client workload.

Nothing else is needed: the server and the client are the official MCP SDK's, on 127.0.0.1, and the
proxy runs from a config file in a temporary directory, as it would in production. The run walks the
upstream through six phases and prints, per phase, what the clients saw and what the proxy did:

1. **healthy**: every call succeeds, in all three client modes (legacy, 2026-07-28, auto);
2. **flaky**: 20% of requests get a bare HTTP 503 before the server runs them; the proxy retries the
   idempotent ones, so clients see errors only from `create_ticket`, which is never retried once it
   may have reached the server;
3. **down**: every request fails; the breaker opens and fails calls fast, and reads are answered from
   the fallback cache (marked stale) instead of failing;
4. **recovered**: the breaker lets trial calls through, closes, and traffic flows again;
5. **slow reads**: the resource now takes 300 ms while its policy allows 150 ms: reads time out. The
   proxy keeps watching the timed-out reads and records when they would have answered; the analyzer
   reads those events and proposes a new timeout, with its evidence and a diff of the config file;
6. **fixed**: the proposal is applied to the file, the proxy hot-reloads it, and the reads succeed.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.analyzer import Proposal, Window, apply_proposal, propose
from proxy.app import ProxyServer, running_proxy
from proxy.config.model import host_port, load_config
from proxy.demo.server import DemoState, running_demo_server
from proxy.demo.workload import WorkloadStats, run_workload
from proxy.tasks import Owner, cancel_and_wait, spawn

__all__ = ["run_demo"]

TICK_S = 0.25
READ_LIMIT = "150ms"
SLOW_READ_S = 0.3


@dataclass(frozen=True)
class Phase:
    name: str
    starts_at: float  # fraction of the run
    what: str
    http_error_rate: float = 0.0
    read_latency_s: float = 0.0


PHASES = (
    Phase("healthy", 0.0, "the upstream answers everything"),
    Phase("flaky", 0.12, "20% of requests get HTTP 503", http_error_rate=0.2),
    Phase("down", 0.26, "every request fails", http_error_rate=1.0),
    Phase("recovered", 0.4, "the upstream is back"),
    Phase("slow", 0.5, f"reads take {SLOW_READ_S * 1000:.0f}ms, limit {READ_LIMIT}", read_latency_s=SLOW_READ_S),
    Phase("fixed", 0.8, "the proposal is applied", read_latency_s=SLOW_READ_S),
)


def demo_config(upstream_url: str, listen: str, admin: str) -> dict[str, Any]:
    """The demo's policy file: trusted annotations, fast retries, a quick breaker, stale reads on
    failure, and a read policy (no cache, tight timeout) that the analyzer will have to fix."""
    return {
        "listen": host_port(listen, "--listen"),
        "admin": host_port(admin, "--admin"),
        "logging": {"level": "error"},
        "reload": {"interval": "200ms"},
        "events": {"log": False, "summary_interval": "1s", "observe_timeouts": "3s"},
        "upstreams": [
            {
                "name": "demo",
                "url": upstream_url,
                "trust_annotations": True,
                "timeouts": {"per_try": "2s", "total": "5s"},
                "retry": {"max_attempts": 4, "backoff": {"base": "20ms", "max": "200ms"}},
                "breaker": {"failure_threshold": 10, "reset_timeout": "1500ms", "half_open_max_calls": 2},
                "cache": {"mode": "fallback", "ttl": "0s", "max_stale": "10m"},
                "rules": [
                    {
                        "match": {"method": "resources/read"},
                        "timeouts": {"per_try": READ_LIMIT},
                        "retry": {"max_attempts": 1},
                        "cache": None,
                    }
                ],
            }
        ],
    }


def _metric_totals(text: str, name: str, label: str) -> dict[str, float]:
    """Sum a counter's samples by one label, from Prometheus text."""
    totals: dict[str, float] = {}
    prefix = name + "{"
    for line in text.splitlines():
        if line.startswith(prefix):
            labels, value = line.rsplit(" ", 1)
            key = labels.split(f'{label}="', 1)[1].split('"', 1)[0] if f'{label}="' in labels else ""
            totals[key] = totals.get(key, 0) + float(value)
    return totals


def _proxy_counts(text: str) -> dict[str, int]:
    retries = sum(_metric_totals(text, "mcp_proxy_retries_total", "failure").values())
    served = _metric_totals(text, "mcp_proxy_cache_served_total", "status")
    fast = _metric_totals(text, "mcp_proxy_policy_rejections_total", "reason")
    return {"retries": int(retries), "stale": int(served.get("stale", 0)), "circuit_open": int(fast.get("circuit_open", 0))}


def _learn(events: list[dict[str, Any]], path: Path, out: Callable[[str], None]) -> Proposal | None:
    """Analyze the proxy's own `events`; show and apply the timeout proposal, if there is one.

    It runs in a worker thread (it reads and writes the config file), so `events` must be a copy the
    event loop took: the bus's ring is a deque the loop keeps appending to, and iterating it here
    could raise "deque mutated during iteration".
    """
    window = Window(60)
    for event in events:
        window.add(event)
    proposals = [p for p in propose(window.analysis(), path.read_text()) if p.rule == "timeouts"]
    if not proposals:
        out("    the analyzer has no timeout proposal yet (too few timed-out reads observed)")
        return None
    proposal = proposals[0]
    out(f"    analyzer proposal {proposal.id}: {proposal.title}")
    out(f"      why      : {proposal.rationale}")
    evidence = {k: v for k, v in proposal.evidence.items() if k not in ("window_start", "window_end")}
    out(f"      evidence : {evidence}")
    out(f"      effect   : {proposal.effect.text}")
    for line in (proposal.diff or "").splitlines():
        out(f"      {line}")
    backup = apply_proposal(path, proposal)
    out(f"    applied to {path.name} (backup {backup.name}); the proxy reloads it by itself")
    return proposal


async def run_demo(duration: float, listen: str, admin: str, out: Callable[[str], None]) -> int:
    """Run the demo for `duration` seconds, writing the live summary through `out`; return the exit code."""
    state = DemoState()
    stats = WorkloadStats()
    with tempfile.TemporaryDirectory(prefix="mcp-proxy-demo-") as workdir:
        async with running_demo_server("127.0.0.1", 0, state=state) as server_url:
            path = Path(workdir) / "proxy.yaml"
            path.write_text(yaml.safe_dump(demo_config(server_url, listen, admin), sort_keys=False))
            async with running_proxy(load_config(path.read_text()), config_path=path) as proxy:
                await _walk(proxy, path, state, stats, server_url, duration, out)
    return 0


async def _walk(
    proxy: ProxyServer, path: Path, state: DemoState, stats: WorkloadStats, server_url: str, duration: float,
    out: Callable[[str], None],
) -> None:
    client_url = f"{proxy.url}/mcp"
    out(f"demo MCP server : {server_url}")
    out(f"proxy           : {client_url}  (admin {proxy.admin_url}: /healthz /readyz /status /metrics /events)")
    out(f"workload        : official MCP SDK client, modes legacy / 2026-07-28 / auto, {duration:g}s")
    out("")
    out(f"{'phase':<10} {'upstream':<32} {'calls':>6} {'failed':>7} {'reads failed':>13} {'retries':>8} {'stale':>6} {'fast-fail':>10}")
    tasks: Owner = set()
    workload = spawn(run_workload(client_url, duration, stats=stats, concurrency=2), name="demo-workload", owner=tasks, awaited=True)
    try:
        started = time.monotonic()
        before = (0, 0, 0, _proxy_counts(""))
        for index, phase in enumerate(PHASES):
            state.http_error_rate = phase.http_error_rate
            state.read_latency_s = phase.read_latency_s
            if phase.name == "fixed":
                reloads = proxy.reloader.applied if proxy.reloader is not None else 0
                events = proxy.bus.recent()  # copied here, on the loop: see _learn
                if await asyncio.to_thread(_learn, events, path, out) is not None and proxy.reloader is not None:
                    async with asyncio.timeout(10):
                        while proxy.reloader.applied == reloads:
                            await asyncio.sleep(0.05)
            ends_at = PHASES[index + 1].starts_at * duration if index + 1 < len(PHASES) else None
            while not workload.done() and (ends_at is None or time.monotonic() - started < ends_at):
                await asyncio.wait({workload}, timeout=TICK_S)
            counts = _proxy_counts(proxy.metrics.render().decode())
            reads = stats.ops["resources/read"]
            read_failures = reads.total - reads.ok
            calls, failed = stats.total_calls - before[0], stats.failed_calls - before[1]
            delta = {k: counts[k] - before[3][k] for k in counts}
            out(
                f"{phase.name:<10} {phase.what:<32} {calls:>6} {failed:>7} {read_failures - before[2]:>13}"
                f" {delta['retries']:>8} {delta['stale']:>6} {delta['circuit_open']:>10}"
            )
            before = (stats.total_calls, stats.failed_calls, read_failures, counts)
        final: WorkloadStats = await workload
    finally:
        await cancel_and_wait(tasks)  # the workload, should a phase have raised
    out("")
    out(f"=== demo finished after {time.monotonic() - started:.1f}s ===")
    out(final.render())
    outcomes = _metric_totals(proxy.metrics.render().decode(), "mcp_proxy_requests_total", "outcome")
    out("proxy requests by outcome: " + ", ".join(f"{k}={int(v)}" for k, v in sorted(outcomes.items())))
    out(f"events published: {proxy.bus.published}; server counters: {state.snapshot()}")
