"""``python -m tests.perf --config-size``: is the cost of a call flat in the size of the config?

Three proxies run side by side on the forwarder CPU, each in front of its own benchmark upstream (both
on the upstream CPU), and serve the same ``tools/call`` of ``echo``:

- ``1 rule``: one policy rule, matching nothing the benchmark calls; the upstream lists 1 tool;
- ``500 rules``: 500 rules of every kind (exact tool names, tool globs, exact methods, method globs,
  names with escaped glob characters as the analyzer writes them, ``tool-[*]7``), none matching the
  call; the upstream lists ``--tools`` tools (default 1,000);
- ``500 rules, 3 match``: the same, with the last three rules matching the call (``tools/*``, ``ec*``
  and ``echo``: the exact one wins), each setting what the defaults already are.

Before measuring, one ``tools/list`` through each proxy teaches it its upstream's catalog (checked in
``/status``). Rounds rotate the variants; each is a warm-up then ``--duration`` seconds at
``--connections``. It prints the median req/s and CPU µs per request, the ratios to ``1 rule`` and
PASS/FAIL against the goal: within 5% (throughput at least 0.95x, CPU per request at most 1.05x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from tests.perf.harness import (
    BODY,
    _check_answer,
    _loaded,
    _placement,
    _proxy_config,
    _start_proxy,
    _start_upstream,
    admin_url,
    get_json,
    post_json,
)
from tests.perf.procs import Child, Processes
from tests.perf.wrk import WRK_HEADERS, write_script

GOAL_MAX_COST = 0.05
"""The large configs may cost at most this share of throughput (and add at most this share of CPU per call)."""
RULES = 500


def policy_rules(count: int, matching: int = 0) -> str:
    """`count` rules as YAML lines for an upstream's ``rules:``; the last `matching` of them match the benchmark's call."""
    kinds = (
        lambda i: f"{{match: {{method: tools/call, tool: tool-{i}}}, retry: {{max_attempts: 2}}}}",
        lambda i: f"{{match: {{tool: 'fam{i}-*'}}, timeouts: {{per_try: 20s}}}}",
        lambda i: f"{{match: {{method: custom/m{i}}}, breaker: {{failure_threshold: 7}}}}",
        lambda i: f"{{match: {{method: 'ext{i}/*'}}, retry: {{max_attempts: 1}}}}",
        lambda i: f"{{match: {{tool: 'tool-[*]{i}'}}, idempotent: false}}",
    )
    matches = (
        "{match: {method: 'tools/*'}, timeouts: {per_try: 30s}}",
        "{match: {tool: 'ec*'}, retry: {max_attempts: 3}}",
        "{match: {tool: echo}, retry: {max_attempts: 3}}",
    )[-matching:] if matching else ()
    rules = [kinds[i % len(kinds)](i) for i in range(count - len(matches))] + list(matches)
    return "    rules:\n" + "".join(f"      - {rule}\n" for rule in rules)


def _variants(tools: int) -> dict[str, tuple[int, str]]:
    """Each variant's upstream catalog size and its rules."""
    return {
        "1 rule": (1, policy_rules(1)),
        f"{RULES} rules": (tools, policy_rules(RULES)),
        f"{RULES} rules, 3 match": (tools, policy_rules(RULES, matching=3)),
    }


def _learn_catalog(url: str, admin: str, tools: int) -> None:
    answer = post_json(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    listed = len(answer.get("result", {}).get("tools", []))
    learned = get_json(admin + "/status")["upstreams"]["bench"]["annotated_tools"]
    if listed != tools or learned != tools:
        raise RuntimeError(f"tools/list through {url}: {listed} tools listed, {learned} learned; expected {tools}")


def _median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float:
        return float(statistics.median(r[key] or 0.0 for r in rounds))

    return {
        "rps": med("rps"),
        "cpu_us_per_request": med("cpu_us_per_request"),
        "cpu_percent": med("cpu_percent"),
        "p50_loaded_us": statistics.median(r["latency_loaded_us"]["p50"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "background_cpu_percent": max(r["background_cpu_percent"] for r in rounds),
        "rounds": rounds,
    }


def config_size(args: argparse.Namespace, workdir: Path, procs: Processes, wrk: str) -> dict[str, Any]:
    place = _placement(args.pin)
    pin = procs.pinned([], place["wrk"])
    script = write_script(workdir / "post.lua", BODY, WRK_HEADERS)
    variants = _variants(args.tools)
    out = sys.stdout.write
    out(
        f"config size: {', '.join(variants)}; upstream catalogs of 1 and {args.tools} tools; pinning "
        + (
            f"wrk -> CPU {place['wrk']}, upstreams -> CPU {place['upstream']}, proxies -> CPU {place['forwarder']}\n"
            if place["forwarder"] is not None
            else "none (scheduler decides)\n"
        )
    )
    upstreams: dict[int, tuple[str, Child]] = {}
    for tools in sorted({tools for tools, _ in variants.values()}):
        upstreams[tools] = _start_upstream(
            procs, f"upstream-{tools}-tools", "json", place["upstream"], options=["--tools", str(tools)]
        )
    proxies: dict[str, tuple[str, Child]] = {}
    for n, (name, (tools, rules)) in enumerate(variants.items()):
        config = _proxy_config(upstreams[tools][0], args.connections, upstream_extra=rules)
        proxies[name] = _start_proxy(procs, workdir, f"proxy-config-{n}", config, place["forwarder"], args)
        _learn_catalog(proxies[name][0], admin_url(proxies[name][1]), tools)
        _check_answer(name, proxies[name][0], "json")

    names = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for round_no in range(args.rounds):
        for name in names[round_no % len(names) :] + names[: round_no % len(names)]:
            url, child = proxies[name]
            out(f"  [round {round_no + 1}/{args.rounds}] {name:<20} {url}\n")
            sys.stdout.flush()
            runs[name].append(_loaded(wrk, url, script, args, pin, child, procs))

    results = {name: _median(runs[name]) for name in names}
    base = results[names[0]]
    out(
        f"\n== config size ({args.rounds} rounds, medians) ==\n"
        f"{'variant':<20} {f'req/s@{args.connections}':>11} {'CPU us/req':>10} {'CPU%':>5} "
        f"{f'p50@{args.connections} us':>11} {'errors':>6} {'other%':>6} {'x throughput':>12} {'x CPU/req':>9}\n"
    )
    report: dict[str, Any] = {
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "rounds": args.rounds,
            "tools": args.tools,
            "rules": RULES,
            "placement": place,
            "python": sys.version.split()[0],
            "proxy_src": str(Path(args.proxy_src).resolve()) if args.proxy_src else None,
            "cpus_available": sorted(os.sched_getaffinity(0)),
        },
        "variants": {},
    }
    all_pass = True
    for name in names:
        r = results[name]
        throughput, cpu = r["rps"] / base["rps"], r["cpu_us_per_request"] / base["cpu_us_per_request"]
        passed = throughput >= 1 - GOAL_MAX_COST and cpu <= 1 + GOAL_MAX_COST
        all_pass &= passed
        per_round = [a["rps"] / b["rps"] for a, b in zip(runs[name], runs[names[0]], strict=True)]
        report["variants"][name] = {
            "results": r,
            "throughput_vs_1_rule": throughput,
            "cpu_per_request_vs_1_rule": cpu,
            "throughput_vs_1_rule_per_round": per_round,
            "pass": passed,
        }
        out(
            f"{name:<20} {r['rps']:>11,.0f} {r['cpu_us_per_request']:>10.1f} {r['cpu_percent']:>5.0f} "
            f"{r['p50_loaded_us']:>11,.0f} {r['errors']:>6} {r['background_cpu_percent']:>6.0f} "
            f"{throughput:>12.3f} {cpu:>9.3f}\n"
        )
    out(
        f"config size: {'PASS' if all_pass else 'FAIL'} (goal: within {100 * GOAL_MAX_COST:.0f}% of 1 rule, "
        "throughput and CPU per request)\n"
    )
    noisy = max(r["background_cpu_percent"] for r in results.values())
    if noisy > 10:
        out(
            f"WARNING: other processes used up to {noisy:.0f}% of a CPU during the runs; figures are disturbed "
            "(CPU us/req is the least affected)\n"
        )
    sys.stdout.flush()
    report["pass"] = all_pass
    for _, child in [*proxies.values(), *upstreams.values()]:
        procs.stop(child)
    return report
