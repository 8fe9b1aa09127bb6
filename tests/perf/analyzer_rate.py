"""``python -m tests.perf --analyzer``: can the analyzer keep up with 5,000 events/s on one core?

Two measurements (see `tests.perf.__main__`'s docstring):

- ``capacity``: the analyzer alone, in this process. A seeded realistic event mix
  (`tests.analyzer.event_mix`) at ``--event-rate`` events per second of event time is fed to a
  `Window` of ``--window`` seconds for ``--span`` seconds of event time, with the analysis (and the
  rules: `propose`) recomputed every ``--analysis-every`` seconds of event time, as the embedded analyzer
  does. Events are generated in batches outside the measured time; the CPU time (`time.process_time`)
  of taking them in and of the analyses is the analyzer's cost: CPU seconds per second of events is
  the share of one core it needs, its inverse times the rate the events/s one core could sustain.
  Peak RSS growth is the process's high-water mark (``ru_maxrss``) over its RSS before the run (a
  second of generated events is alive at a time: a few MiB of it are the generator's). With
  ``--refold``, one more figure: the old way, `Analysis.from_events` over all of the last window's
  events, re-folded at once (what the window did before time slices), and its RSS growth.
- ``live``: a real proxy (``python -m proxy serve --config FILE``) pinned to one CPU with the embedded
  analyzer on, in front of an upstream answering every ``--analyzer-fail-every``th call with a bare 503
  and a retry policy that retries it, so each failed call publishes several events; wrk drives it at
  ``--connections``. Two proxies run side by side, analyzer on and off, and are measured in turn
  (``--rounds`` times, alternating which goes first): events published per second (the bus's
  ``published`` counter before and after, from /status), the events the analyzer saw and missed
  (``events_seen``/``events_missed`` of /proposals), and the throughput of each.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from proxy.analyzer import Analysis, Window, propose
from tests.analyzer.event_mix import T0, EventMix
from tests.perf.harness import BODY, _check_answer, _loaded, _placement, _proxy_config, _start_proxy, _start_upstream, admin_url, get_json
from tests.perf.procs import Child, Processes
from tests.perf.wrk import WRK_HEADERS, write_script

GOAL_EVENTS_PER_S = 5000.0
CONFIG = """\
upstreams:
  - name: api
    url: http://127.0.0.1:1/mcp
"""
"""The config text `propose` reads: the rules need one to write proposals against."""


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # pragma: no cover - Linux always has it


def capacity(rate: float, window_s: float, span: float, every: float, seed: int, refold: bool) -> dict[str, Any]:
    """Feed `span` seconds of the mix at `rate` events/s to a `Window`, analyzing every `every` seconds."""
    mix = EventMix(seed, rate)
    window = Window(window_s)
    gc.collect()
    rss_before = _rss_kib()
    add_cpu = analysis_cpu = 0.0
    analyses: list[float] = []
    events = 0
    recent: list[list[dict[str, Any]]] = []
    at = 0.0
    next_analysis = every
    while at < span:
        at += 1.0
        batch = list(mix.until(at))  # one second of events, generated outside the measured time
        events += len(batch)
        started = time.process_time()
        for event in batch:
            window.add(event)
        add_cpu += time.process_time() - started
        if refold:
            recent = [*recent, batch][-int(window_s) - 1 :]
        del batch
        if at >= next_analysis:
            next_analysis += every
            started = time.process_time()
            propose(window.analysis(), CONFIG)
            spent = time.process_time() - started
            analysis_cpu += spent
            analyses.append(spent)
    if not analyses:  # a span shorter than the analysis interval: analyze once at its end
        started = time.process_time()
        propose(window.analysis(), CONFIG)
        analyses.append(time.process_time() - started)
        analysis_cpu += analyses[-1]
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = add_cpu + analysis_cpu
    result: dict[str, Any] = {
        "events": events,
        "event_rate": events / span,
        "span_s": span,
        "window_s": window_s,
        "analysis_every_s": every,
        "in_window_at_end": len(window),
        "cpu_s": cpu,
        "cpu_s_add": add_cpu,
        "cpu_s_analyses": analysis_cpu,
        "analysis_cpu_s_max": max(analyses),
        "analysis_cpu_s_median": statistics.median(analyses),
        "core_share": cpu / span,
        "sustainable_events_per_s": events / cpu if cpu else None,
        "add_us_per_event": 1e6 * add_cpu / events,
        "rss_before_mib": rss_before / 1024,
        "peak_rss_growth_mib": (peak_kib - rss_before) / 1024,
    }
    if refold:
        held = [e for chunk in recent for e in chunk if e["ts"] >= T0 + at - window_s]
        rss = _rss_kib()
        started = time.process_time()
        Analysis.from_events(held, window_s)
        result["refold"] = {
            "events": len(held),
            "cpu_s": time.process_time() - started,
            "rss_of_raw_events_mib": (rss - rss_before) / 1024,
        }
    return result


def _report_capacity(result: dict[str, Any]) -> None:
    out = sys.stdout.write
    out(
        f"\n== analyzer capacity ({result['event_rate']:,.0f} events/s of event time, {result['window_s']:g}s window, "
        f"analysis every {result['analysis_every_s']:g}s, {result['span_s']:g}s) ==\n"
        f"events taken in      : {result['events']:,} ({result['in_window_at_end']:,} in the window at the end)\n"
        f"CPU                  : {result['cpu_s']:.2f}s = {result['cpu_s_add']:.2f}s taking events in "
        f"({result['add_us_per_event']:.1f} us/event) + {result['cpu_s_analyses']:.2f}s of analyses "
        f"(median {result['analysis_cpu_s_median']:.3f}s, max {result['analysis_cpu_s_max']:.3f}s each)\n"
        f"share of one core    : {100 * result['core_share']:.1f}% at this rate\n"
        f"sustainable on 1 core: {result['sustainable_events_per_s']:,.0f} events/s "
        f"({'PASS' if result['sustainable_events_per_s'] >= GOAL_EVENTS_PER_S else 'FAIL'}: goal {GOAL_EVENTS_PER_S:,.0f})\n"
        f"peak RSS growth      : {result['peak_rss_growth_mib']:.0f} MiB"
        f"{' (with --refold: the raw events kept to re-fold included)' if 'refold' in result else ''}\n"
    )
    if "refold" in result:
        refold = result["refold"]
        out(
            f"before (re-fold)     : Analysis.from_events of the window's {refold['events']:,} raw events: "
            f"{refold['cpu_s']:.2f}s CPU per analysis, raw events held {refold['rss_of_raw_events_mib']:.0f} MiB\n"
        )
    sys.stdout.flush()


ANALYZER_TOP = {
    "on": "analyzer: {{enabled: true, interval: {interval}}}\n",
    "off": "",
}
FAILING_EXTRA = """\
    retry: {max_attempts: 3, backoff: {base: 1ms, max: 2ms}, budget: {ratio: 10, min_per_second: 100000}}
    breaker: {enabled: false}
    health: {active: {enabled: false}, passive: {enabled: false}}
    rules:
      - match: {method: tools/call, tool: echo}
        idempotent: true
"""
"""Every failed call is retried twice at once and fails each time: a `retry` per attempt, a
`retry_exhausted` and a `call_failed`, so a few thousand failed calls a second publish >= 5,000 events."""


def _counters(proxy: Child) -> dict[str, int]:
    admin = admin_url(proxy)
    stats = get_json(f"{admin}/status")
    published = int(stats.get("events", {}).get("published", 0))
    if "on" not in proxy.name:
        return {"published": published}
    document = get_json(f"{admin}/proposals")
    return {"published": published, "seen": int(document["events_seen"]), "missed": int(document["events_missed"])}


def live(args: argparse.Namespace, workdir: Path, procs: Processes, wrk: str) -> dict[str, Any]:
    """The proxy with the embedded analyzer on vs. off, under a failure-heavy load, same run."""
    place = _placement(args.pin)
    pin = procs.pinned([], place["wrk"])
    script = write_script(workdir / "post.lua", BODY, WRK_HEADERS)
    upstream_url, upstream = _start_upstream(procs, "upstream-failing", "json", place["upstream"], fail_every=args.analyzer_fail_every)
    proxies: dict[str, tuple[str, Child]] = {}
    for variant, top in ANALYZER_TOP.items():
        config = _proxy_config(upstream_url, args.connections, top.format(interval="30s"), FAILING_EXTRA)
        proxies[variant] = _start_proxy(procs, workdir, f"proxy-analyzer-{variant}", config, place["forwarder"], args)
    if args.analyzer_fail_every > 1:  # with 1, every call fails: there is no answer to check
        for variant, (url, _) in proxies.items():
            _check_answer(f"proxy analyzer {variant}", url, "json")
    sys.stdout.write(
        f"live: proxies on CPU {place['forwarder']}, wrk on CPU {place['wrk']}, upstream fails 1 call in "
        f"{args.analyzer_fail_every} (503), retried twice; {args.rounds} rounds x {args.warmup:g}s + {args.duration:g}s "
        f"at {args.connections} connections\n"
    )
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in proxies}
    for round_no in range(args.rounds):
        for variant in ANALYZER_TOP if round_no % 2 == 0 else list(ANALYZER_TOP)[::-1]:
            url, child = proxies[variant]
            before = _counters(child)
            started = time.monotonic()
            result = _loaded(wrk, url, script, args, pin, child, procs)
            elapsed = time.monotonic() - started
            time.sleep(1.5)  # the analyzer takes events in every second: let it read the last ones
            after = _counters(child)
            result["events_published"] = after["published"] - before["published"]
            result["events_per_s"] = result["events_published"] / elapsed
            if variant == "on":
                result["events_seen"] = after["seen"] - before["seen"]
                result["events_missed"] = after["missed"] - before["missed"]
            runs[variant].append(result)
            sys.stdout.write(
                f"  [round {round_no + 1}/{args.rounds}] analyzer {variant:<3}: {result['rps']:,.0f} req/s, "
                f"{result['events_per_s']:,.0f} events/s published"
                + (f", analyzer saw {result['events_seen']:,} missed {result['events_missed']:,}" if variant == "on" else "")
                + f", proxy CPU {result['cpu_percent']:.0f}%\n"
            )
            sys.stdout.flush()
    on, off = runs["on"], runs["off"]
    report = {
        "settings": {
            "fail_every": args.analyzer_fail_every, "rounds": args.rounds, "duration_s": args.duration,
            "connections": args.connections, "placement": place, "cpus_available": sorted(os.sched_getaffinity(0)),
        },
        "on": on,
        "off": off,
        "rps_on": statistics.median(r["rps"] for r in on),
        "rps_off": statistics.median(r["rps"] for r in off),
        "events_per_s_on": statistics.median(r["events_per_s"] for r in on),
        "events_seen": sum(r["events_seen"] for r in on),
        "events_missed": sum(r["events_missed"] for r in on),
    }  # fmt: skip
    report["throughput_on_vs_off"] = report["rps_on"] / report["rps_off"]
    sys.stdout.write(
        f"\n== analyzer live (medians of {args.rounds}) ==\n"
        f"analyzer on : {report['rps_on']:,.0f} req/s, {report['events_per_s_on']:,.0f} events/s published, "
        f"analyzer saw {report['events_seen']:,}, missed {report['events_missed']:,}\n"
        f"analyzer off: {report['rps_off']:,.0f} req/s; on/off throughput {report['throughput_on_vs_off']:.3f}x\n"
    )
    sys.stdout.flush()
    for _, child in [*proxies.values(), (upstream_url, upstream)]:
        procs.stop(child)
    return report


def analyzer(args: argparse.Namespace, workdir: Path, procs: Processes, wrk: str | None) -> dict[str, Any]:
    """Both measurements (the live one needs wrk)."""
    result = capacity(args.event_rate, args.window, args.span, args.analysis_every, seed=12, refold=args.refold)
    _report_capacity(result)
    report: dict[str, Any] = {"capacity": result}
    if wrk is None:
        sys.stdout.write("live: wrk not found, not measured\n")
    else:
        report["live"] = live(args, workdir, procs, wrk)
    return report
