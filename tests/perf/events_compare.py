"""``python -m tests.perf --events-compare``: the proxy with failure events on vs. off, same run (see
`tests.perf.__main__`'s docstring)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from tests.perf.harness import BODY, _check_answer, _loaded, _placement, _proxy_config, _start_proxy, _start_upstream
from tests.perf.procs import Child, Processes
from tests.perf.wrk import WRK_HEADERS, write_script

GOAL_EVENTS_MAX_COST = 0.05
"""Events on may cost at most this share of the throughput of events off (the issue's requirement)."""
EVENTS_VARIANTS = ("on", "off")
EVENTS_TOP = {"on": "", "off": "events: {enabled: false}\n"}
EVENTS_WORKLOADS = ("success", "failing")
# Failing workload, in both variants: no retry and no breaker, so each upstream 503 is exactly one failed
# call (one `call_failed` event with events on; the handler's own `call_failed` warning line with events
# off), and no health checking, so the upstream is never taken out of rotation by the failures.
FAILING_UPSTREAM_EXTRA = """\
    retry: {max_attempts: 1}
    breaker: {enabled: false}
    health: {active: {enabled: false}, passive: {enabled: false}}
"""


def _stderr_size(child: Child) -> int:
    return child.stderr.stat().st_size


def _stderr_since(child: Child, offset: int) -> bytes:
    with child.stderr.open("rb") as f:
        f.seek(offset)
        return f.read()


def _measure_events(
    wrk: str,
    url: str,
    script: Path,
    args: argparse.Namespace,
    pin: list[str],
    proxy: Child,
    procs: Processes,
) -> dict[str, Any]:
    offset = _stderr_size(proxy)
    result = _loaded(wrk, url, script, args, pin, proxy, procs)
    written = _stderr_since(proxy, offset)
    requests = result["warmup_requests"] + result["requests"]
    failures = result["warmup_status_errors"] + result["status_errors"]
    result["failed_share"] = result["status_errors"] / result["requests"] if result["requests"] else 0.0
    result["stderr_bytes_per_request"] = len(written) / requests if requests else 0.0
    result["call_failed_lines_per_failure"] = (
        written.count(b'"call_failed"') / failures if failures else None
    )
    return result


def _events_median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] or 0.0 for r in rounds)

    return {
        "rps": med("rps"),
        "cpu_us_per_request": med("cpu_us_per_request"),
        "cpu_percent": med("cpu_percent"),
        "p50_loaded_us": statistics.median(r["latency_loaded_us"]["p50"] for r in rounds),
        "p99_loaded_us": statistics.median(r["latency_loaded_us"]["p99"] for r in rounds),
        "failed_share": med("failed_share"),
        "other_errors": sum(r["errors"] - r["status_errors"] for r in rounds),
        "stderr_bytes_per_request": med("stderr_bytes_per_request"),
        "call_failed_lines_per_failure": statistics.median(
            r["call_failed_lines_per_failure"] for r in rounds
        )
        if all(r["call_failed_lines_per_failure"] is not None for r in rounds)
        else None,
        "background_cpu_percent": max(r["background_cpu_percent"] for r in rounds),
        "rounds": rounds,
    }


def _events_compare(
    args: argparse.Namespace, workdir: Path, procs: Processes, wrk: str
) -> dict[str, Any]:
    """Events on (the default config) vs. events off, for an all-success and a failure-heavy workload.

    All four proxies run at once (on the forwarder CPU; the idle ones cost nothing measurable), so the
    rounds can interleave workloads and variants: round r runs the workloads in turn, and within each,
    "on" and "off" back to back, the one that goes first alternating between rounds and workloads."""
    place = _placement(args.pin)
    pin = procs.pinned([], place["wrk"])
    script = write_script(workdir / "post.lua", BODY, WRK_HEADERS)
    rounds_n = args.rounds
    fail_every = args.fail_every
    sys.stdout.write(
        "events on vs off: pinning "
        + (
            f"wrk -> CPU {place['wrk']}, upstreams -> CPU {place['upstream']}, proxies -> CPU {place['forwarder']}\n"
            if place["forwarder"] is not None
            else "none (scheduler decides)\n"
        )
    )
    sys.stdout.write(
        f"workloads: success = every call answered 200, default config; failing = upstream answers 1 call in "
        f"{fail_every} with a bare HTTP 503, retry.max_attempts 1, breaker and health checks off (both variants)\n"
        f"variants: on = default events config (enabled, log: true, one JSON log line per event); off = "
        f"events: {{enabled: false}}\n"
        f"proxy stderr (where log lines go) -> a regular file in {workdir}, not a pipe\n"
        f"{rounds_n} rounds x {args.warmup:g}s warm-up + {args.duration:g}s at {args.connections} connections, medians\n"
    )
    upstreams = {
        "success": _start_upstream(procs, "upstream-success", "json", place["upstream"]),
        "failing": _start_upstream(
            procs, "upstream-failing", "json", place["upstream"], fail_every=fail_every
        ),
    }
    proxies: dict[tuple[str, str], tuple[str, Child]] = {}
    for workload in EVENTS_WORKLOADS:
        upstream_url = upstreams[workload][0]
        extra = FAILING_UPSTREAM_EXTRA if workload == "failing" else ""
        for variant in EVENTS_VARIANTS:
            name = f"proxy-{workload}-events-{variant}"
            config = _proxy_config(upstream_url, args.connections, EVENTS_TOP[variant], extra)
            proxies[workload, variant] = _start_proxy(
                procs, workdir, name, config, place["forwarder"], args
            )
    for (workload, variant), (url, _) in proxies.items():
        _check_answer(f"proxy {workload} events {variant}", url, "json")

    runs: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in proxies}
    for round_no in range(rounds_n):
        workloads = EVENTS_WORKLOADS if round_no % 2 == 0 else EVENTS_WORKLOADS[::-1]
        for w_no, workload in enumerate(workloads):
            variants = EVENTS_VARIANTS if (round_no + w_no) % 2 == 0 else EVENTS_VARIANTS[::-1]
            for variant in variants:
                url, child = proxies[workload, variant]
                sys.stdout.write(
                    f"  [round {round_no + 1}/{rounds_n}] {workload:<7} events {variant:<3} {url}\n"
                )
                sys.stdout.flush()
                runs[workload, variant].append(
                    _measure_events(wrk, url, script, args, pin, child, procs)
                )

    report: dict[str, Any] = {
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "rounds": rounds_n,
            "fail_every": fail_every,
            "cpus_available": sorted(os.sched_getaffinity(0)),
            "placement": place,
            "proxy_stderr": "regular file in the temporary work directory",
            "python": sys.version.split()[0],
            "proxy_src": str(Path(args.proxy_src).resolve()) if args.proxy_src else None,
        },
        "workloads": {},
    }
    out = sys.stdout.write
    out(
        f"\n== events on vs off ({rounds_n} rounds, medians) ==\n"
        f"{'workload':<8} {'events':<6} {f'req/s@{args.connections}':>11} {'CPU us/req':>10} {'CPU%':>5} "
        f"{f'p50@{args.connections} us':>11} {f'p99@{args.connections} us':>11} {'failed':>7} "
        f"{'log B/req':>9} {'lines/fail':>10} {'other%':>6}\n"
    )
    all_pass = True
    for workload in EVENTS_WORKLOADS:
        results = {v: _events_median(runs[workload, v]) for v in EVENTS_VARIANTS}
        for variant in EVENTS_VARIANTS:
            r = results[variant]
            lines = r["call_failed_lines_per_failure"]
            out(
                f"{workload:<8} {variant:<6} {r['rps']:>11,.0f} {r['cpu_us_per_request']:>10.1f} {r['cpu_percent']:>5.0f} "
                f"{r['p50_loaded_us']:>11,.0f} {r['p99_loaded_us']:>11,.0f} {100 * r['failed_share']:>6.1f}% "
                f"{r['stderr_bytes_per_request']:>9.1f} {'-' if lines is None else f'{lines:.2f}':>10} "
                f"{r['background_cpu_percent']:>6.0f}\n"
            )
        on, off = results["on"], results["off"]
        paired = [
            a["rps"] / b["rps"] for a, b in zip(runs[workload, "on"], runs[workload, "off"], strict=True)
        ]
        ratio = on["rps"] / off["rps"]
        cpu_ratio = on["cpu_us_per_request"] / off["cpu_us_per_request"]
        passed = ratio >= 1.0 - GOAL_EVENTS_MAX_COST
        all_pass &= passed
        report["workloads"][workload] = {
            "results": results,
            "throughput_on_vs_off": ratio,
            "throughput_on_vs_off_per_round": paired,
            "cpu_per_request_on_vs_off": cpu_ratio,
            "pass": passed,
        }
        out(
            f"  {workload}: on/off throughput {ratio:.3f}x (cost {100 * (1 - ratio):+.1f}%; per round "
            + ", ".join(f"{p:.3f}" for p in paired)
            + f"), CPU us/req on/off {cpu_ratio:.3f}x (cost {100 * (cpu_ratio - 1):+.1f}%) -> "
            f"{'PASS' if passed else 'FAIL'} (goal: cost <= {100 * GOAL_EVENTS_MAX_COST:.0f}%)\n"
        )
    report["pass"] = all_pass
    out(f"events on vs off: {'PASS' if all_pass else 'FAIL'}\n")
    noisy = max(
        report["workloads"][w]["results"][v]["background_cpu_percent"]
        for w in EVENTS_WORKLOADS
        for v in EVENTS_VARIANTS
    )
    if noisy > 10:
        out(
            f"WARNING: other processes used up to {noisy:.0f}% of a CPU during the runs; figures are disturbed "
            "(CPU us/req is the least affected)\n"
        )
    out(
        "columns: failed = share of calls the client got non-2xx (expected 1/fail-every in the failing workload); "
        "log B/req = proxy stderr bytes per request; lines/fail = call_failed log lines per failed call; "
        "other% = CPU used meanwhile by processes outside the benchmark\n"
    )
    sys.stdout.flush()
    for _, child in [*proxies.values(), *upstreams.values()]:
        procs.stop(child)
    return report
