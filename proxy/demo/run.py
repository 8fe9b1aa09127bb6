"""``mcp-resilience-proxy demo``: the built-in MCP server, the proxy in front of it, and a client workload.

Nothing else is needed: the server and the client are the official MCP SDK's, on 127.0.0.1. The run
walks the upstream through four phases and prints, per phase, what the clients saw and what the
proxy did about it:

1. **healthy**: every call succeeds, in all three client modes (legacy, 2026-07-28, auto);
2. **flaky**: 20% of requests get a bare HTTP 503 before the server runs them; the proxy retries
   the idempotent ones (reads, and tools the server annotates read-only), so clients see errors only
   from `create_ticket`, which is never retried after it may have reached the server;
3. **down**: every request fails; the breaker opens and fails calls fast, and reads are answered
   from the fallback cache (marked stale) instead of failing;
4. **recovered**: the breaker lets trial calls through, closes, and traffic flows again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.app import running_proxy
from proxy.config import ProxyConfig
from proxy.demo.server import DemoState, running_demo_server
from proxy.demo.workload import WorkloadStats, run_workload

__all__ = ["run_demo"]

TICK_S = 0.25


@dataclass(frozen=True)
class Phase:
    name: str
    starts_at: float  # fraction of the run
    http_error_rate: float
    what: str


PHASES = (
    Phase("healthy", 0.0, 0.0, "the upstream answers everything"),
    Phase("flaky", 0.3, 0.2, "20% of requests get HTTP 503"),
    Phase("down", 0.6, 1.0, "every request fails"),
    Phase("recovered", 0.8, 0.0, "the upstream is back"),
)


def demo_config(upstream_url: str, listen: str, admin: str) -> ProxyConfig:
    """The demo's policies: trusted annotations, fast retries, a quick breaker, stale reads on failure."""
    listen_host, _, listen_port = listen.rpartition(":")
    admin_host, _, admin_port = admin.rpartition(":")
    return ProxyConfig.model_validate(
        {
            "listen": {"host": listen_host or "127.0.0.1", "port": int(listen_port)},
            "admin": {"host": admin_host or "127.0.0.1", "port": int(admin_port)},
            "logging": {"level": "warning"},
            "upstreams": [
                {
                    "name": "demo",
                    "url": upstream_url,
                    "trust_annotations": True,
                    "timeouts": {"per_try": "2s", "total": "5s"},
                    "retry": {"max_attempts": 4, "backoff": {"base": "20ms", "max": "200ms"}},
                    "breaker": {"failure_threshold": 10, "reset_timeout": "1500ms", "half_open_max_calls": 2},
                    "cache": {"mode": "fallback", "ttl": "0s", "max_stale": "10m"},
                }
            ],
        }
    )


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


async def run_demo(duration: float, listen: str, admin: str, out: Callable[[str], None]) -> int:
    """Run the demo for `duration` seconds, writing the live summary through `out`; return the exit code."""
    state = DemoState()
    stats = WorkloadStats()
    async with running_demo_server("127.0.0.1", 0, state=state) as server_url:
        async with running_proxy(demo_config(server_url, listen, admin)) as proxy:
            client_url = f"{proxy.url}/mcp"
            out(f"demo MCP server : {server_url}")
            out(f"proxy           : {client_url}  (admin {proxy.admin_url}: /healthz /readyz /metrics)")
            out(f"workload        : official MCP SDK client, modes legacy / 2026-07-28 / auto, {duration:g}s")
            out("")
            out(f"{'phase':<10} {'upstream':<32} {'calls':>6} {'failed':>7} {'retries':>8} {'stale':>6} {'fast-fail':>10}")
            workload = asyncio.ensure_future(run_workload(client_url, duration, stats=stats, concurrency=2))
            started = time.monotonic()
            before = (0, 0, _proxy_counts(""))
            for index, phase in enumerate(PHASES):
                state.http_error_rate = phase.http_error_rate
                ends_at = PHASES[index + 1].starts_at * duration if index + 1 < len(PHASES) else None
                while not workload.done() and (ends_at is None or time.monotonic() - started < ends_at):
                    await asyncio.wait({workload}, timeout=TICK_S)
                counts = _proxy_counts(proxy.metrics.render().decode())
                calls, failed = stats.total_calls - before[0], stats.failed_calls - before[1]
                delta = {k: counts[k] - before[2][k] for k in counts}
                out(
                    f"{phase.name:<10} {phase.what:<32} {calls:>6} {failed:>7} {delta['retries']:>8}"
                    f" {delta['stale']:>6} {delta['circuit_open']:>10}"
                )
                before = (stats.total_calls, stats.failed_calls, counts)
            final: WorkloadStats = await workload
            out("")
            out(f"=== demo finished after {time.monotonic() - started:.1f}s ===")
            out(final.render())
            outcomes = _metric_totals(proxy.metrics.render().decode(), "mcp_proxy_requests_total", "outcome")
            out("proxy requests by outcome: " + ", ".join(f"{k}={int(v)}" for k, v in sorted(outcomes.items())))
            out(f"server counters: {state.snapshot()}")
    return 0
