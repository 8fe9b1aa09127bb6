"""``mcp-resilience-proxy demo``: the built-in MCP server, the proxy in front of it, and a client workload.

Nothing else is needed: the server and the client are the official MCP SDK's, on 127.0.0.1. The run
has two phases so the summary shows the proxy carrying both a healthy and a misbehaving upstream:

1. **healthy**: every call should succeed, in all three client modes (legacy, 2026-07-28, auto);
2. **flaky upstream**: the server answers a share of requests with a bare HTTP 503 and adds latency;
   the proxy passes those failures through as they are, which the live summary makes visible.
   (Resilience policies are what later turn this phase green.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from proxy.app import running_proxy
from proxy.config import quickstart_config
from proxy.demo.server import DemoState, running_demo_server
from proxy.demo.workload import WorkloadStats, run_workload

__all__ = ["run_demo"]

SUMMARY_EVERY_S = 5.0
TICK_S = 0.25
FLAKY_HTTP_ERROR_RATE = 0.15
FLAKY_EXTRA_LATENCY_S = 0.02


def _proxy_outcomes(text: str) -> str:
    """The proxy's own request counters, from its /metrics text, as one line per outcome."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("mcp_proxy_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
            totals[outcome] = totals.get(outcome, 0) + float(value)
    return ", ".join(f"{k}={int(v)}" for k, v in sorted(totals.items())) or "-"


async def run_demo(duration: float, listen: str, admin: str, out: Callable[[str], None]) -> int:
    """Run the demo for `duration` seconds, writing the live summary through `out`; return the exit code."""
    state = DemoState()
    stats = WorkloadStats()
    async with running_demo_server("127.0.0.1", 0, state=state) as server_url:
        config = quickstart_config(server_url, listen, admin)
        async with running_proxy(config) as proxy:
            client_url = f"{proxy.url}/mcp"
            out(f"demo MCP server : {server_url}")
            out(f"proxy           : {client_url}  (admin {proxy.admin_url}: /healthz /readyz /metrics)")
            out(f"workload        : official MCP SDK client, modes legacy / 2026-07-28 / auto, {duration:g}s")
            out("")
            workload = asyncio.ensure_future(run_workload(client_url, duration, stats=stats, concurrency=2))
            started = time.monotonic()
            next_summary = SUMMARY_EVERY_S
            flaky = False
            while not workload.done():
                await asyncio.wait({workload}, timeout=TICK_S)
                elapsed = time.monotonic() - started
                if not flaky and elapsed >= duration / 2:
                    flaky = True
                    state.http_error_rate = FLAKY_HTTP_ERROR_RATE
                    state.extra_latency_s = FLAKY_EXTRA_LATENCY_S
                    out(f"--- {elapsed:4.1f}s: the upstream turns flaky ({FLAKY_HTTP_ERROR_RATE:.0%} of requests answer 503) ---")
                if elapsed >= next_summary and not workload.done():
                    next_summary += SUMMARY_EVERY_S
                    phase = "flaky" if flaky else "healthy"
                    out(f"--- {elapsed:4.1f}s ({phase}): {stats.total_calls} calls, {stats.failed_calls} failed ---")
            final = workload.result()
            metrics = proxy.metrics.render().decode()
            out("")
            out(f"=== demo finished after {time.monotonic() - started:.1f}s ===")
            out(final.render())
            out(f"proxy requests by outcome: {_proxy_outcomes(metrics)}")
            out(f"server counters: {state.snapshot()}")
    return 0

