"""``python -m tests.perf``: requests/s and latency of direct upstream vs. the proxy vs. a naive forwarder.

One run starts, on 127.0.0.1 only:

- a fast upstream (`tests.perf.upstream`: aiohttp on uvloop, JSON or ``--mode sse`` answers);
- the real proxy, ``python -m proxy serve --config FILE`` with a generated YAML config (ports 0,
  addresses read from its ``proxy_started`` log line);
- a naive aiohttp forwarder of about 40 lines of code (`tests.perf.naive_forwarder`);
- a reference "floor" (`tests.perf.floor_forwarder`): an llhttp server protocol in front of the
  proxy's own upstream client, no aiohttp and nothing per call: what any Python forwarder here costs
  at least (not a goal, a yardstick);

then, for each target, drives `wrk` with a JSON-RPC ``tools/call`` POST: a warm-up, requests/s at
``--connections`` for ``--duration`` seconds, and p50/p99 latency at 1 connection (wrk's exact 1 µs
histogram). It prints a table and the ratios the issue asks for, and with ``--json FILE`` writes all of
it as JSON. Every process it starts is stopped at the end, even on error or Ctrl-C.

Pinning (``--pin split``, the default, for 2 cores): wrk and the upstream share CPU 0, the forwarder
under test (proxy or naive) has CPU 1 to itself, so proxy and naive compete for exactly the same
CPU and the upstream is never the bottleneck (the "direct" row shows what CPU 0 alone can do).
``--pin none`` leaves placement to the scheduler.

``--policies all`` adds a target ``all``: the proxy with every policy on (retry, breaker, a rate limit
per client that never refuses, the fallback cache, the application breaker, events; `ALL_POLICIES`)
beside the default config, and prints its throughput and CPU per request against the naive
forwarder's and the default config's, same run. Every request then carries its own text argument,
for every target, so the cache stores an answer per call (single flight would otherwise merge the
identical concurrent calls and flatter it). About 1.5 minutes per round.

Modes instead of the above (each under 1.5 minutes with its defaults):

- ``--config-size``: the proxy with 1 policy rule vs. 500 rules and an upstream listing ``--tools``
  tools; throughput and CPU per call within 5% (`tests.perf.config_size`);
- ``--memory``: idle RSS of ``serve``, RSS per cached answer, per open SSE stream, and the peak with
  ``--entries`` cached answers and ``--streams`` open streams (`tests.perf.memory`);
- ``--instructions``: user-space instructions per request of the proxy, the naive forwarder, the aiofloor
  and the floor, counted by valgrind's callgrind over ``--requests`` calls on one keep-alive connection
  after a warm-up, with ``PYTHONHASHSEED=0``: repeatable to about 0.2% where CPU time drifts by 10-20%;
  proxy/naive, proxy/aiofloor and the per-call work, proxy minus aiofloor (`tests.perf.instructions`;
  needs valgrind, otherwise it says so and measures nothing);
- ``--events-compare``, below;
- ``--analyzer``: can the analyzer keep up with 5,000 events/s on one core (`tests.perf.analyzer_rate`)?
  First the analyzer alone: a seeded realistic event mix at ``--event-rate`` events/s of event time
  (default 5000) for ``--span`` seconds (default 300) into a ``--window`` s window (default 300), the
  analysis and the rules recomputed every ``--analysis-every`` s of event time (default 30): CPU seconds
  per second of events (the share of one core), the events/s one core could sustain, peak RSS growth;
  ``--refold`` adds the old way's cost, re-folding the whole window's raw events at once. Then live: two
  proxies pinned to the forwarder CPU, the embedded analyzer on and off, in front of an upstream that
  answers every ``--analyzer-fail-every`` th call (default 2) with a 503, retried twice: events
  published/s, the events the analyzer saw and missed (/proposals), req/s on vs off, ``--rounds``
  rounds (default 3) alternating which goes first. About 2.5 minutes with the defaults.

- ``--restart``: the upstream SIGKILLed and restarted on its port ``--restarts`` times while ``--legacy``
  legacy-session clients and ``--modern`` 2026-07-28 clients call a read-only and a non-idempotent tool
  without pause, a restart after every ``--calls-between`` successful calls (`tests.perf.restart`):
  calls, failures, clear JSON-RPC errors and late ones per kind (idempotent, never sent,
  non-idempotent), executions per non-idempotent call (at most one), latency around the restarts, the
  proxy's session events, PASS/FAIL against issue 13's targets. Needs no wrk. About a minute with the
  defaults.
- ``--stdio``: a stdio upstream (`tests.perf.stdio`): the fast child of `tests.perf.stdio_child` called
  directly over its stdin/stdout by one client (sequential: p50/p99; ``--connections`` calls pipelined:
  calls/s) against the same child behind ``serve`` (its ``command:`` upstream), called over HTTP by
  2026-07-28 stateless clients and by legacy-session clients (``Mcp-Session-Id`` after an
  ``initialize``): req/s at ``--connections``, p50/p99 at 1 connection (also with the proxy on the
  clients' CPU), the proxy's and the child's CPU per call; proxy/direct throughput and the added
  latency. wrk when installed, else a raw-socket asyncio HTTP client (the report says which). About
  45 seconds with the defaults.

``--events-compare`` (instead of the above): the cost of failure events, "events on must cost <= 5%
throughput versus events off, in the same run". Four proxies run side by side on the forwarder CPU:
events on (the default config: ``events.enabled`` and ``events.log`` true) and events off
(``events: {enabled: false}``), each for two workloads:

- ``success``: every call answered 200, the proxy's default config otherwise;
- ``failing``: the upstream answers every ``--fail-every`` th call (default 10, i.e. 10%) with a bare
  HTTP 503, and both configs set ``retry: {max_attempts: 1}``, ``breaker: {enabled: false}`` and health
  checks off, so each failure is exactly one failed call: one ``call_failed`` event (and its JSON log
  line) with events on, the handler's own ``call_failed`` warning line with events off.

The proxies' stderr, where the log lines go, is a regular file in the work directory (never a pipe).
``--rounds`` (default 3 in this mode) rounds interleave workloads and alternate which variant goes
first; each run is a ``--warmup`` then ``--duration`` seconds at ``--connections``. It prints, per
workload and variant, the median req/s, CPU µs/request, p50/p99 under load, the failed share, log bytes
per request and ``call_failed`` lines per failure, then the on/off ratios (of the medians, and per
round) and PASS/FAIL against a throughput cost of at most 5%. About 1.5 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.perf.analyzer_rate import analyzer
from tests.perf.config_size import config_size
from tests.perf.events_compare import _events_compare
from tests.perf.harness import (
    BODY,
    _check_answer,
    _listening,
    _loaded,
    _move,
    _placement,
    _proxy_config,
    _start_proxy,
    _start_upstream,
)
from tests.perf.instructions import instructions, missing_tools
from tests.perf.memory import memory
from tests.perf.procs import Child, Processes
from tests.perf.restart import restart
from tests.perf.stdio import stdio
from tests.perf.wrk import WRK_HEADERS, find_wrk, run_wrk, write_script

TARGETS = ("direct", "proxy", "naive", "aiofloor", "floor")
ALL_TARGETS = ("direct", "proxy", "all", "naive", "aiofloor", "floor")
"""With ``--policies all``: the proxy with every policy on runs beside the default config."""
ALL_POLICIES = """\
    rate_limit: {rate: 1000000000, per: 1s, burst: 1000000000, key: client}
    cache: {mode: fallback, max_entries: 1000}
    app_breaker: {errors: [is_error, timeout]}
    rules:
      - match: {method: tools/call, tool: echo}
        idempotent: true
"""
"""Every policy on (``--policies all``), inside the upstream: retry and the breaker (on by default), a rate
limit per client far above any rate reached here (it never refuses, but every call takes a token), the
cache in fallback mode (every answer is stored; a failure would be answered from it), the application
breaker, and the benchmark's tool declared idempotent so that retry and cache apply to it. Events are on
by default (a log line per event, the ring buffer for /events)."""
VARY = b'"hello"'
"""With ``--policies all`` every request's text argument differs (``hello-1``, ``hello-2``, ...) for every
target: the cache stores (and evicts) an answer per call instead of single-flighting identical calls."""
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
        default=None,
        help="measure every target this many times; report medians (default 1; 3 with --events-compare or --config-size)",
    )
    parser.add_argument(
        "--policies",
        choices=("default", "all"),
        default="default",
        help="all: also run the proxy with every policy on (retry, breaker, rate limit, cache, app breaker, "
        "events) beside the default config; every request then has its own arguments (see above)",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--events-compare",
        action="store_true",
        help="instead of direct/proxy/naive/floor: the proxy with events on vs. off, same run (see above)",
    )
    what.add_argument(
        "--config-size",
        action="store_true",
        help="instead: the proxy with 1 policy rule vs. 500 rules and a catalog of --tools tools, same run (see above)",
    )
    what.add_argument(
        "--memory",
        action="store_true",
        help="instead: the proxy's memory idle, with --entries cached answers and --streams open SSE streams (see above)",
    )
    what.add_argument(
        "--analyzer",
        action="store_true",
        help="instead: the analyzer's capacity at --event-rate events/s, then live with a proxy on one CPU (see above)",
    )
    what.add_argument(
        "--instructions",
        action="store_true",
        help="instead: instructions per request of proxy, naive, aiofloor and floor under callgrind (see above)",
    )
    what.add_argument(
        "--restart",
        action="store_true",
        help="instead: the upstream killed and restarted under load by clients of both eras (see above)",
    )
    what.add_argument(
        "--stdio",
        action="store_true",
        help="instead: a stdio child called directly over its pipes vs. through the proxy (see above)",
    )
    parser.add_argument("--legacy", type=int, default=8, metavar="N", help="with --restart: legacy-session clients (default 8)")
    parser.add_argument("--modern", type=int, default=8, metavar="N", help="with --restart: 2026-07-28 clients (default 8)")
    parser.add_argument(
        "--sdk", type=int, default=1, metavar="N", help="with --restart: official SDK clients (mcp.Client) per era besides (default 1)"
    )
    parser.add_argument("--restarts", type=int, default=3, metavar="N", help="with --restart: SIGKILL restarts (default 3)")
    parser.add_argument(
        "--calls-between", type=int, default=400, metavar="N",
        help="with --restart: successful calls before each restart and after the last (default 400)",
    )
    parser.add_argument("--work-ms", type=float, default=10.0, help="with --restart: each tool's work time, ms (default 10)")
    parser.add_argument("--per-try", type=float, default=10.0, help="with --restart: the upstream's timeouts.per_try, s (default 10)")
    parser.add_argument(
        "--total", type=float, default=30.0, help="with --restart: the upstream's timeouts.total, every call's deadline, s (default 30)"
    )
    parser.add_argument(
        "--retry-attempts", type=int, default=20, metavar="N", help="with --restart: the upstream's retry.max_attempts (default 20, the most it takes)"
    )
    parser.add_argument(
        "--breaker-threshold", type=int, default=None, metavar="N",
        help="with --restart: the upstream breaker's failure_threshold (default: the proxy's default, 5; 0: breaker off)",
    )
    parser.add_argument(
        "--budget-ratio", type=float, default=None, metavar="R",
        help="with --restart: the upstream retry budget's ratio (default: the proxy's default, 0.2)",
    )
    parser.add_argument(
        "--json-answers", action="store_true", help="with --restart: the server answers JSON instead of SSE (the SDK's default)"
    )
    parser.add_argument(
        "--requests", type=int, default=1000, metavar="N",
        help="with --instructions: requests counted per target, after a 200-request warm-up (default 1000)",
    )
    parser.add_argument(
        "--tools", type=int, default=1000, metavar="N", help="with --config-size: tools the large configs' upstream lists (default 1000)"
    )
    parser.add_argument(
        "--entries", type=int, default=10_000, metavar="N", help="with --memory: answers to cache (default 10000)"
    )
    parser.add_argument(
        "--streams", type=int, default=1000, metavar="N", help="with --memory: SSE streams to hold open (default 1000)"
    )
    parser.add_argument(
        "--payload", type=int, default=390, metavar="BYTES",
        help="with --memory: the text of each cached answer (default 390: a result of about 530 bytes)",
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, metavar="SECONDS",
        help="with --memory: the wait before each reading of the proxy's memory (default 1)",
    )
    parser.add_argument("--event-rate", type=float, default=5000.0, help="with --analyzer: events/s of event time (default 5000)")
    parser.add_argument("--span", type=float, default=300.0, help="with --analyzer: seconds of event time fed (default 300)")
    parser.add_argument("--window", type=float, default=300.0, help="with --analyzer: the window, seconds (default 300)")
    parser.add_argument(
        "--analysis-every", type=float, default=30.0, help="with --analyzer: seconds of event time between analyses (default 30)"
    )
    parser.add_argument("--refold", action="store_true", help="with --analyzer: also time re-folding the whole window at once")
    parser.add_argument(
        "--analyzer-fail-every", type=int, default=2, metavar="N",
        help="with --analyzer: the live upstream answers every Nth call 503 (default 2)",
    )
    parser.add_argument(
        "--fail-every",
        type=int,
        default=10,
        metavar="N",
        help="with --events-compare: the failing workload's upstream answers every Nth call 503 (default 10)",
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
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.events_compare or args.config_size or args.analyzer else 1
    if args.rounds < 1 or args.fail_every < 1 or args.requests < 1:
        parser.error("--rounds, --fail-every and --requests must be at least 1")
    return args


def _start_targets(
    procs: Processes,
    workdir: Path,
    mode: str,
    place: dict[str, str | None],
    args: argparse.Namespace,
) -> dict[str, tuple[str, Child]]:
    """Start upstream, proxy (and with ``--policies all`` the proxy with every policy on), naive and floor
    forwarders; return each target's URL and the process under test."""
    python = sys.executable
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    upstream_url, upstream = _start_upstream(
        procs, f"upstream-{mode}", mode, place["upstream"]
    )
    proxy_url, proxy = _start_proxy(
        procs,
        workdir,
        f"proxy-{mode}",
        _proxy_config(upstream_url, args.connections),
        place["forwarder"],
        args,
    )
    every_policy = (
        {
            "all": _start_proxy(
                procs,
                workdir,
                f"proxy-all-{mode}",
                _proxy_config(upstream_url, args.connections, upstream_extra=ALL_POLICIES),
                place["forwarder"],
                args,
            )
        }
        if args.policies == "all"
        else {}
    )

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
    floor_argv = [python, "-m", "tests.perf.floor_forwarder", "--port", "0", "--upstream", upstream_url]
    floor = procs.start(f"floor-{mode}", floor_argv, place["forwarder"], env)
    floor_url = f"http://127.0.0.1:{floor.wait_for_line('stdout', _listening)}/mcp"
    aiofloor_argv = [python, "-m", "tests.perf.aiohttp_floor", "--port", "0", "--upstream", upstream_url]
    aiofloor = procs.start(f"aiofloor-{mode}", aiofloor_argv, place["forwarder"], env)
    aiofloor_url = f"http://127.0.0.1:{aiofloor.wait_for_line('stdout', _listening)}/mcp"
    return {
        "direct": (upstream_url, upstream),
        "proxy": (proxy_url, proxy),
        **every_policy,
        "naive": (naive_url, naive),
        "aiofloor": (aiofloor_url, aiofloor),
        "floor": (floor_url, floor),
    }



def _measure(
    wrk: str,
    url: str,
    script: Path,
    args: argparse.Namespace,
    pin: list[str],
    under_test: Child,
    procs: Processes,
    share_cpu: int | None,
) -> dict[str, Any]:
    """Throughput and CPU under load, then 1-connection latency as placed (and, when `share_cpu` is
    given, once more with the process under test on that CPU, beside wrk and the upstream)."""
    def one_connection() -> dict[str, Any]:
        time.sleep(0.3)
        return run_wrk(wrk, url, script, connections=1, duration=args.latency_duration, threads=1, pin=pin)

    loaded = _loaded(wrk, url, script, args, pin, under_test, procs)
    single = shared = one_connection()
    if share_cpu is not None:
        # The same 1-connection run with the forwarder moved onto the load generator's and upstream's CPU.
        # Split across CPUs, every hop is a cross-CPU wake-up, which on a VM costs as much as the work:
        # this run shows the forwarder's own added latency, the other the placement's.
        before = _move(under_test.pid, {share_cpu})
        try:
            shared = one_connection()
        finally:
            _move(under_test.pid, before)
    return {
        "rps": loaded["rps"],
        "errors": loaded["errors"] + single["error_count"] + (shared["error_count"] if shared is not single else 0),
        "latency_loaded_us": loaded["latency_loaded_us"],
        "rps_1conn": single["rps"],
        "latency_1conn_us": single["latency_us"],
        "latency_1conn_one_cpu_us": shared["latency_us"],
        "cpu_percent": loaded["cpu_percent"],
        "cpu_us_per_request": loaded["cpu_us_per_request"],
        "background_cpu_percent": loaded["background_cpu_percent"],
    }


def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    if len(rounds) == 1:
        return rounds[0]

    def med(get: Any) -> float:
        return float(statistics.median(get(r) for r in rounds))

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
        "latency_1conn_one_cpu_us": {
            k: med(lambda r, k=k: r["latency_1conn_one_cpu_us"][k])
            for k in rounds[0]["latency_1conn_one_cpu_us"]
        },
        "cpu_percent": med(lambda r: r["cpu_percent"]),
        "cpu_us_per_request": med(lambda r: r["cpu_us_per_request"] or 0.0),
        "background_cpu_percent": max(r["background_cpu_percent"] for r in rounds),
        "rounds": rounds,
    }


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    direct, proxy, naive = results["direct"], results["proxy"], results["naive"]
    lat = {name: r["latency_1conn_us"] for name, r in results.items()}
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
        "floor_added_p50_us": lat["floor"]["p50"] - lat["direct"]["p50"],
        "floor_cpu_us_per_request": results["floor"]["cpu_us_per_request"],
        "aiofloor_vs_naive_cpu_per_request": (results["aiofloor"]["cpu_us_per_request"] or 0)
        / (naive["cpu_us_per_request"] or 1),
        "aiofloor_vs_naive_throughput": results["aiofloor"]["rps"] / naive["rps"],
        "proxy_vs_aiofloor_cpu_per_request": (proxy["cpu_us_per_request"] or 0)
        / (results["aiofloor"]["cpu_us_per_request"] or 1),
    }
    ratios["goal_throughput_met"] = (
        ratios["proxy_vs_naive_throughput"] >= GOAL_THROUGHPUT_VS_NAIVE
    )
    ratios["goal_added_p50_met"] = ratios["proxy_added_p50_us"] <= GOAL_ADDED_P50_US
    one = {name: r["latency_1conn_one_cpu_us"] for name, r in results.items()}
    ratios["proxy_added_p50_one_cpu_us"] = one["proxy"]["p50"] - one["direct"]["p50"]
    ratios["proxy_added_p99_one_cpu_us"] = one["proxy"]["p99"] - one["direct"]["p99"]
    ratios["naive_added_p50_one_cpu_us"] = one["naive"]["p50"] - one["direct"]["p50"]
    ratios["floor_added_p50_one_cpu_us"] = one["floor"]["p50"] - one["direct"]["p50"]
    ratios["aiofloor_added_p50_one_cpu_us"] = one["aiofloor"]["p50"] - one["direct"]["p50"]
    ratios["goal_added_p50_one_cpu_met"] = ratios["proxy_added_p50_one_cpu_us"] <= GOAL_ADDED_P50_US
    if "all" in results:
        every = results["all"]
        ratios["all_vs_naive_throughput"] = every["rps"] / naive["rps"]
        ratios["all_vs_naive_cpu_per_request"] = (every["cpu_us_per_request"] or 0) / (naive["cpu_us_per_request"] or 1)
        ratios["all_vs_proxy_throughput"] = every["rps"] / proxy["rps"]
        ratios["all_vs_proxy_cpu_per_request"] = (every["cpu_us_per_request"] or 0) / (proxy["cpu_us_per_request"] or 1)
        ratios["all_added_p50_one_cpu_us"] = one["all"]["p50"] - one["direct"]["p50"]
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
        f"{'target':<8} {f'req/s@{args.connections}':>11} {'p50@1 us':>9} {'p99@1 us':>9} {'1cpu p50':>9} {'1cpu p99':>9} "
        f"{'req/s@1':>8} "
        f"{f'p50@{args.connections} us':>11} {f'p99@{args.connections} us':>11} {'CPU%':>6} {'CPU us/req':>10} {'errors':>6} "
        f"{'other%':>6}\n"
    )
    for name, r in results.items():
        single, loaded = r["latency_1conn_us"], r["latency_loaded_us"]
        one = r["latency_1conn_one_cpu_us"]
        cpu_note = "(CPU: upstream)" if name == "direct" else ""
        out(
            f"{name:<8} {r['rps']:>11,.0f} {single['p50']:>9,.0f} {single['p99']:>9,.0f} {one['p50']:>9,.0f} "
            f"{one['p99']:>9,.0f} {r['rps_1conn']:>8,.0f} "
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
    if _placement(args.pin)["forwarder"] is not None:
        out(
            f"on one CPU: proxy added p50 {ratios['proxy_added_p50_one_cpu_us']:+.0f} us, "
            f"p99 {ratios['proxy_added_p99_one_cpu_us']:+.0f} us over direct   "
            f"(goal p50 <= {GOAL_ADDED_P50_US:.0f} us: {ok[ratios['goal_added_p50_one_cpu_met']]}); "
            f"naive added p50 {ratios['naive_added_p50_one_cpu_us']:+.0f} us; "
            f"floor added p50 {ratios['floor_added_p50_one_cpu_us']:+.0f} us\n"
        )
    out(
        f"proxy CPU per request {ratios['proxy_vs_naive_cpu_per_request']:.2f}x the naive forwarder's; "
        f"floor (no aiohttp, no per-call work): {ratios['floor_cpu_us_per_request'] or 0:.1f} us per request, "
        f"added p50 {ratios['floor_added_p50_us']:+.0f} us\n"
    )
    out(
        f"aiofloor (aiohttp's low-level server + the proxy's client, nothing per call): CPU per request "
        f"{ratios['aiofloor_vs_naive_cpu_per_request']:.2f}x the naive forwarder's, throughput "
        f"{ratios['aiofloor_vs_naive_throughput']:.3f}x; the proxy's CPU per request is "
        f"{ratios['proxy_vs_aiofloor_cpu_per_request']:.2f}x the aiofloor's\n"
    )
    if "all" in results:
        out(
            f"every policy on (all): throughput {ratios['all_vs_naive_throughput']:.3f}x the naive forwarder's "
            f"({ratios['all_vs_proxy_throughput']:.3f}x the default config's), CPU per request "
            f"{ratios['all_vs_naive_cpu_per_request']:.2f}x the naive forwarder's "
            f"({ratios['all_vs_proxy_cpu_per_request']:.2f}x the default config's); on one CPU added p50 "
            f"{ratios['all_added_p50_one_cpu_us']:+.0f} us\n"
        )
    noisy = max(r["background_cpu_percent"] for r in results.values())
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
    every_policy = args.policies == "all"
    script = write_script(workdir / "post.lua", BODY, WRK_HEADERS, vary=VARY if every_policy else None)
    names = ALL_TARGETS if every_policy else TARGETS
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
            "policies": args.policies,
            "request_arguments": "a new text argument per request" if every_policy else "the same request every time",
        },
        "modes": {},
    }
    sys.stdout.write(
        f"pinning: wrk -> CPU {place['wrk']}, upstream -> CPU {place['upstream']}, proxy/naive/floor -> CPU {place['forwarder']}\n"
        if place["forwarder"] is not None
        else "pinning: none (scheduler decides)\n"
    )
    sys.stdout.write(
        f"columns: req/s@{args.connections} and p50/p99@{args.connections} from {args.duration:g}s at {args.connections} "
        f"connections; p50/p99@1 and req/s@1 from {args.latency_duration:g}s at 1 connection (wrk, 1 us histogram); "
        "1cpu p50/p99: the same 1-connection run with the forwarder moved onto wrk's and the upstream's CPU "
        "(no cross-CPU wake-ups); CPU% and CPU us/req of the forwarder under load (direct: of the upstream); "
        "other% = CPU used meanwhile by processes outside the benchmark\n"
    )
    if every_policy:
        sys.stdout.write(
            "all = the proxy with every policy on (retry, breaker, rate limit that never refuses, fallback cache, "
            "app breaker, events); every target gets a new text argument per request\n"
        )
    for mode in modes:
        targets = _start_targets(procs, workdir, mode, place, args)
        for name, (url, _) in targets.items():
            _check_answer(name, url, mode)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for round_no in range(args.rounds):
            order = names[round_no % len(names) :] + names[: round_no % len(names)]  # no target always goes first
            for name in order:
                url, child = targets[name]
                sys.stdout.write(
                    f"  [{mode} round {round_no + 1}/{args.rounds}] {name:<6} {url}\n"
                )
                sys.stdout.flush()
                share = int(place["wrk"]) if place["forwarder"] is not None and name != "direct" else None
                rounds[name].append(_measure(wrk, url, script, args, pin, child, procs, share))
        results = {name: _median_of(rounds[name]) for name in names}
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
    if args.instructions:
        missing = missing_tools()
        if missing:
            sys.stderr.write(
                f"--instructions skipped: {' and '.join(missing)} not found: apt-get install -y valgrind (Debian/Ubuntu)\n"
            )
            return 0
        wrk = ""  # this mode runs no wrk
    elif args.restart:
        wrk = ""  # nor does this one
    elif args.stdio:
        wrk = find_wrk() or ""  # wrk if installed, else its own Python load generator
    else:
        found = find_wrk()
        if found is None:
            sys.stderr.write("wrk not found: apt-get install -y wrk (Debian/Ubuntu)\n")
            return 2
        wrk = found
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcp-perf-") as tmp:
        procs = Processes(Path(tmp))
        try:
            if args.events_compare:
                report = _events_compare(args, Path(tmp), procs, wrk)
            elif args.config_size:
                report = config_size(args, Path(tmp), procs, wrk)
            elif args.memory:
                report = memory(args, Path(tmp), procs)
            elif args.analyzer:
                report = analyzer(args, Path(tmp), procs, wrk)
            elif args.instructions:
                report = instructions(args, Path(tmp), procs)
            elif args.restart:
                report = restart(args, Path(tmp), procs)
            elif args.stdio:
                report = stdio(args, Path(tmp), procs, wrk)
            else:
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
