"""``python -m tests.perf``: requests/s and latency of direct upstream vs. the proxy vs. a naive forwarder.

One run starts, on 127.0.0.1 only:

- a fast upstream (`tests.perf.upstream`: aiohttp on uvloop, JSON or ``--mode sse`` answers);
- the real proxy, ``python -m proxy serve --config FILE`` with a generated YAML config (ports 0,
  addresses read from its ``proxy_started`` log line);
- a naive ~40-line aiohttp forwarder (`tests.perf.naive_forwarder`);

then, for each target, drives `wrk` with a JSON-RPC ``tools/call`` POST: a warm-up, requests/s at
``--connections`` for ``--duration`` seconds, and p50/p99 latency at 1 connection (wrk's exact 1 µs
histogram). It prints a table and the ratios the issue asks for, and with ``--json FILE`` writes all of
it as JSON. Every process it starts is stopped at the end, even on error or Ctrl-C.

Pinning (``--pin split``, the default, for 2 cores): wrk and the upstream share CPU 0, the forwarder
under test (proxy or naive) has CPU 1 to itself, so proxy and naive compete for exactly the same
CPU and the upstream is never the bottleneck (the "direct" row shows what CPU 0 alone can do).
``--pin none`` leaves placement to the scheduler.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.perf.procs import Child, Processes, cpu_seconds, machine_busy_seconds
from tests.perf.wrk import WRK_HEADERS, find_wrk, run_wrk, write_script

TARGETS = ("direct", "proxy", "naive")
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'
GOAL_THROUGHPUT_VS_NAIVE = 1.0
GOAL_ADDED_P50_US = 150.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.perf", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=6.0,
        help="seconds of each throughput run (default 6)",
    )
    parser.add_argument(
        "--latency-duration",
        type=float,
        default=4.0,
        help="seconds of each 1-connection run (default 4)",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=1.0,
        help="seconds of warm-up per target (default 1)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=32,
        help="concurrent connections for throughput (default 32)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="wrk threads (default 1: wrk shares one CPU)",
    )
    parser.add_argument(
        "--mode",
        choices=("json", "sse", "both"),
        default="json",
        help="upstream answer type (default json)",
    )
    parser.add_argument(
        "--pin",
        choices=("split", "none"),
        default="split",
        help="CPU placement (default split, see above)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every target this many times; report medians",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write the results as JSON to FILE"
    )
    parser.add_argument(
        "--proxy-src",
        metavar="DIR",
        help="run the proxy package found in DIR (put first on its PYTHONPATH), e.g. a `git worktree` of another "
        "commit, to compare a patch against a baseline; default: the installed (editable) package",
    )
    return parser.parse_args(argv)


def _placement(pin: str) -> dict[str, str | None]:
    cpus = os.sched_getaffinity(0)
    if pin == "none" or len(cpus) < 2:
        return {"wrk": None, "upstream": None, "forwarder": None}
    first, second = sorted(cpus)[:2]
    return {"wrk": str(first), "upstream": str(first), "forwarder": str(second)}


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


def _proxy_config(upstream_url: str, connections: int) -> str:
    return f"""\
# Written by tests.perf: the proxy with its defaults, in front of the benchmark upstream.
listen: {{host: 127.0.0.1, port: 0}}
admin: {{host: 127.0.0.1, port: 0}}
logging: {{level: info, format: json, access_log: false}}
upstreams:
  - name: bench
    url: {upstream_url}
    path: /mcp
    pool: {{max_connections: {max(256, connections)}}}
"""


def _start_targets(
    procs: Processes,
    workdir: Path,
    mode: str,
    place: dict[str, str | None],
    args: argparse.Namespace,
) -> dict[str, tuple[str, Child]]:
    """Start upstream, proxy and naive forwarder; return each target's URL and the process under test."""
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proxy_env = env
    if args.proxy_src:
        src = str(Path(args.proxy_src).resolve())
        proxy_env = {
            **env,
            "PYTHONPATH": os.pathsep.join(filter(None, (src, env.get("PYTHONPATH")))),
        }
    upstream_argv = [
        python,
        "-m",
        "tests.perf.upstream",
        "--port",
        "0",
        *(["--sse"] if mode == "sse" else []),
    ]
    upstream = procs.start(f"upstream-{mode}", upstream_argv, place["upstream"], env)
    upstream_url = (
        f"http://127.0.0.1:{upstream.wait_for_line('stdout', _listening)}/mcp"
    )

    config = workdir / f"proxy-{mode}.yaml"
    config.write_text(_proxy_config(upstream_url, args.connections))
    proxy_argv = [python, "-m", "proxy", "serve", "--config", str(config)]
    # With --proxy-src the proxy runs from the work directory, so `python -m` does not put this checkout first.
    proxy_cwd = workdir if args.proxy_src else None
    proxy = procs.start(
        f"proxy-{mode}", proxy_argv, place["forwarder"], proxy_env, proxy_cwd
    )
    proxy_url = proxy.wait_for_line("stderr", _proxy_started).rstrip("/") + "/mcp"

    naive_argv = [
        python,
        "-m",
        "tests.perf.naive_forwarder",
        "--port",
        "0",
        "--upstream",
        upstream_url,
    ]
    naive = procs.start(f"naive-{mode}", naive_argv, place["forwarder"], env)
    naive_url = f"http://127.0.0.1:{naive.wait_for_line('stdout', _listening)}/mcp"
    return {
        "direct": (upstream_url, upstream),
        "proxy": (proxy_url, proxy),
        "naive": (naive_url, naive),
    }


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


def _measure(
    wrk: str,
    url: str,
    script: Path,
    args: argparse.Namespace,
    pin: list[str],
    under_test: Child,
    procs: Processes,
) -> dict[str, Any]:
    run_wrk(
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
    time.sleep(0.3)
    single = run_wrk(
        wrk,
        url,
        script,
        connections=1,
        duration=args.latency_duration,
        threads=1,
        pin=pin,
    )
    seconds = loaded["duration_us"] / 1e6
    return {
        "rps": loaded["rps"],
        "errors": loaded["error_count"] + single["error_count"],
        "latency_loaded_us": loaded["latency_us"],
        "rps_1conn": single["rps"],
        "latency_1conn_us": single["latency_us"],
        "cpu_percent": 100.0 * cpu / seconds,
        "cpu_us_per_request": 1e6 * cpu / loaded["requests"]
        if loaded["requests"]
        else None,
        # CPU used by processes that are not part of the benchmark (other workloads on the machine):
        # more than a few percent means the figures of this run are disturbed.
        "background_cpu_percent": max(0.0, 100.0 * background / seconds),
    }


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    if len(rounds) == 1:
        return rounds[0]

    def med(get: Any) -> float:
        return statistics.median(get(r) for r in rounds)

    return {
        "rps": med(lambda r: r["rps"]),
        "errors": sum(r["errors"] for r in rounds),
        "latency_loaded_us": {
            k: med(lambda r, k=k: r["latency_loaded_us"][k])
            for k in rounds[0]["latency_loaded_us"]
        },
        "rps_1conn": med(lambda r: r["rps_1conn"]),
        "latency_1conn_us": {
            k: med(lambda r, k=k: r["latency_1conn_us"][k])
            for k in rounds[0]["latency_1conn_us"]
        },
        "cpu_percent": med(lambda r: r["cpu_percent"]),
        "cpu_us_per_request": med(lambda r: r["cpu_us_per_request"] or 0.0),
        "background_cpu_percent": max(r["background_cpu_percent"] for r in rounds),
        "rounds": rounds,
    }


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    direct, proxy, naive = results["direct"], results["proxy"], results["naive"]
    lat = {name: results[name]["latency_1conn_us"] for name in TARGETS}
    ratios = {
        "proxy_vs_naive_throughput": proxy["rps"] / naive["rps"],
        "proxy_vs_direct_throughput": proxy["rps"] / direct["rps"],
        "naive_vs_direct_throughput": naive["rps"] / direct["rps"],
        "proxy_added_p50_us": lat["proxy"]["p50"] - lat["direct"]["p50"],
        "proxy_added_p99_us": lat["proxy"]["p99"] - lat["direct"]["p99"],
        "naive_added_p50_us": lat["naive"]["p50"] - lat["direct"]["p50"],
        "naive_added_p99_us": lat["naive"]["p99"] - lat["direct"]["p99"],
        "proxy_vs_naive_cpu_per_request": (proxy["cpu_us_per_request"] or 0)
        / (naive["cpu_us_per_request"] or 1),
    }
    ratios["goal_throughput_met"] = (
        ratios["proxy_vs_naive_throughput"] >= GOAL_THROUGHPUT_VS_NAIVE
    )
    ratios["goal_added_p50_met"] = ratios["proxy_added_p50_us"] <= GOAL_ADDED_P50_US
    return ratios


def _print_mode(
    mode: str,
    results: dict[str, dict[str, Any]],
    ratios: dict[str, Any],
    args: argparse.Namespace,
) -> None:
    out = sys.stdout.write
    out(f"\n== upstream answers {mode.upper()} ==\n")
    out(
        f"{'target':<8} {f'req/s@{args.connections}':>11} {'p50@1 us':>9} {'p99@1 us':>9} {'req/s@1':>8} "
        f"{f'p50@{args.connections} us':>11} {f'p99@{args.connections} us':>11} {'CPU%':>6} {'CPU us/req':>10} {'errors':>6} "
        f"{'other%':>6}\n"
    )
    for name in TARGETS:
        r = results[name]
        single, loaded = r["latency_1conn_us"], r["latency_loaded_us"]
        cpu_note = "(CPU: upstream)" if name == "direct" else ""
        out(
            f"{name:<8} {r['rps']:>11,.0f} {single['p50']:>9,.0f} {single['p99']:>9,.0f} {r['rps_1conn']:>8,.0f} "
            f"{loaded['p50']:>11,.0f} {loaded['p99']:>11,.0f} {r['cpu_percent']:>6.0f} "
            f"{r['cpu_us_per_request'] or 0:>10.1f} {r['errors']:>6} {r['background_cpu_percent']:>6.0f} {cpu_note}\n"
        )
    ok = {True: "met", False: "NOT met"}
    out(
        f"proxy/naive throughput  {ratios['proxy_vs_naive_throughput']:.3f}x   "
        f"(goal >= {GOAL_THROUGHPUT_VS_NAIVE:.1f}x: {ok[ratios['goal_throughput_met']]})\n"
    )
    out(
        f"proxy/direct throughput {ratios['proxy_vs_direct_throughput']:.3f}x   "
        f"(naive/direct {ratios['naive_vs_direct_throughput']:.3f}x)\n"
    )
    out(
        f"proxy added p50 {ratios['proxy_added_p50_us']:+.0f} us, p99 {ratios['proxy_added_p99_us']:+.0f} us over direct   "
        f"(goal p50 <= {GOAL_ADDED_P50_US:.0f} us: {ok[ratios['goal_added_p50_met']]}); "
        f"naive added p50 {ratios['naive_added_p50_us']:+.0f} us, p99 {ratios['naive_added_p99_us']:+.0f} us\n"
    )
    out(
        f"proxy CPU per request {ratios['proxy_vs_naive_cpu_per_request']:.2f}x the naive forwarder's\n"
    )
    noisy = max(results[name]["background_cpu_percent"] for name in TARGETS)
    if noisy > 10:
        out(
            f"WARNING: other processes used up to {noisy:.0f}% of a CPU during the runs; figures are disturbed "
            "(CPU us/req is the least affected)\n"
        )
    sys.stdout.flush()


def _run(
    args: argparse.Namespace, workdir: Path, procs: Processes, wrk: str
) -> dict[str, Any]:
    place = _placement(args.pin)
    pin = procs.pinned([], place["wrk"])
    script = write_script(workdir / "post.lua", BODY, WRK_HEADERS)
    modes = ("json", "sse") if args.mode == "both" else (args.mode,)
    report: dict[str, Any] = {
        "settings": {
            "duration_s": args.duration,
            "latency_duration_s": args.latency_duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "rounds": args.rounds,
            "cpus_available": sorted(os.sched_getaffinity(0)),
            "placement": place,
            "latency_tool": "wrk --latency histogram (1 us resolution), -t1 -c1",
            "python": sys.version.split()[0],
            "proxy_src": str(Path(args.proxy_src).resolve())
            if args.proxy_src
            else None,
        },
        "modes": {},
    }
    sys.stdout.write(
        f"pinning: wrk -> CPU {place['wrk']}, upstream -> CPU {place['upstream']}, proxy/naive -> CPU {place['forwarder']}\n"
        if place["forwarder"] is not None
        else "pinning: none (scheduler decides)\n"
    )
    sys.stdout.write(
        f"columns: req/s@{args.connections} and p50/p99@{args.connections} from {args.duration:g}s at {args.connections} "
        f"connections; p50/p99@1 and req/s@1 from {args.latency_duration:g}s at 1 connection (wrk, 1 us histogram); "
        "CPU% and CPU us/req of the forwarder under load (direct: of the upstream); other% = CPU used meanwhile by "
        "processes outside the benchmark\n"
    )
    for mode in modes:
        targets = _start_targets(procs, workdir, mode, place, args)
        for name, (url, _) in targets.items():
            _check_answer(name, url, mode)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in TARGETS}
        for round_no in range(args.rounds):
            order = (
                TARGETS[round_no % 3 :] + TARGETS[: round_no % 3]
            )  # rotate, so no target always goes first
            for name in order:
                url, child = targets[name]
                sys.stdout.write(
                    f"  [{mode} round {round_no + 1}/{args.rounds}] {name:<6} {url}\n"
                )
                sys.stdout.flush()
                rounds[name].append(_measure(wrk, url, script, args, pin, child, procs))
        results = {name: _median_of(rounds[name]) for name in TARGETS}
        ratios = _ratios(results)
        report["modes"][mode] = {
            "urls": {n: u for n, (u, _) in targets.items()},
            "results": results,
            "ratios": ratios,
        }
        _print_mode(mode, results, ratios, args)
        for _, child in targets.values():
            procs.stop(child)
    return report


def _terminate(signum: int, _: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    wrk = find_wrk()
    if wrk is None:
        sys.stderr.write("wrk not found: apt-get install -y wrk (Debian/Ubuntu)\n")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcp-perf-") as tmp:
        procs = Processes(Path(tmp))
        try:
            report = _run(args, Path(tmp), procs, wrk)
        except BaseException:
            for child in procs.children:
                sys.stderr.write(
                    f"--- {child.name} (pid {child.pid}) last output:\n{child.tail()}\n"
                )
            raise
        finally:
            procs.close()
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    sys.stdout.write(f"\ntotal {report['wall_seconds']} s\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        sys.stdout.write(f"results written to {args.json}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
