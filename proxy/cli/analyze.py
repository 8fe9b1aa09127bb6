"""``mcp-resilience-proxy analyze``: run the analyzer on a recorded event file or a live proxy.

Offline (``--events FILE``) it reads a JSON-lines file written by ``events.file``; live
(``--follow ADMIN_URL``) it takes the proxy's buffered events from ``GET /events?format=json`` and then
follows the ``/events`` SSE stream, re-analyzing every ``--interval`` until ``--duration`` ends (or at
once with ``--once``). Either way it prints the terminal report, can write a Markdown report, print
the proposals as JSON, and apply one (``--apply ID``): validated, backed up, written atomically; a
proxy running on that file hot-reloads it by itself.

``--what-if PROPOSAL_ID`` (one of this analysis's proposals) or ``--what-if OTHER.yaml`` (with
``--events``) replays the recorded window through the policy logic on simulated time
(`proxy.trials`) and prints before/after figures instead of the report, with the proposal's own
estimate beside the replayed one and whether the replay reproduces it (`proxy.trials.compare`).

This module is the analyzer's only contact with the network: a client of the proxy's own admin API.
Everything it prints or writes passes through `proxy.redact.redact_text`: a diff's context lines are
lines of the operator's file, which may hold an upstream URL with its credentials.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.analyzer import Analysis, ApplyError, Proposal, Window, analyze, apply_proposal, propose, read_events
from proxy.analyzer import edit_text, render_markdown, render_text
from proxy.redact import redact_text
from proxy.analyzer.report import one_line
from proxy.config.model import ConfigError, ProxyConfig, load_config, load_config_file
from proxy.mcp.sse import SSEParser
from proxy.trials import FIGURES, Figures, records_from_events, replay
from proxy.trials.compare import Comparison, compare
from proxy.trials.simulate import CallKind

__all__ = ["run_analyze"]


async def _snapshot(session: aiohttp.ClientSession, admin: str) -> list[dict[str, Any]]:
    async with session.get(f"{admin}/events", params={"format": "json", "since": "0"}) as response:
        response.raise_for_status()
        return list(await response.json())


async def _follow(
    admin: str,
    window: Window,
    duration: float,
    interval: float,
    config_text: str,
    out: Callable[[str], None],
    err: Callable[[str], None],
) -> tuple[Analysis, list[Proposal]]:
    """Collect live events into `window`, re-analyzing every `interval` seconds; return the last result."""
    last_id = 0
    seen: set[str] = set()
    deadline = time.monotonic() + duration
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for event in await _snapshot(session, admin):
            window.add(event)
            last_id = max(last_id, int(event["id"]))
        async with session.get(f"{admin}/events", headers={"Last-Event-ID": str(last_id)}) as response:
            response.raise_for_status()
            next_report = time.monotonic()
            parser = SSEParser()
            while (now := time.monotonic()) < deadline:
                if now >= next_report:
                    for proposal in propose(window.analysis(), config_text):
                        if proposal.id not in seen:
                            seen.add(proposal.id)
                            out(f"[{time.strftime('%H:%M:%S')}] proposal {proposal.id}: {one_line(proposal.title)}")
                    next_report = now + interval
                try:
                    chunk = await asyncio.wait_for(response.content.readany(), timeout=min(interval, max(0.01, deadline - now)))
                except TimeoutError:
                    continue
                if not chunk:
                    break
                for sse in parser.feed(chunk):
                    if sse.event == "dropped":
                        err(f"analyze: the proxy dropped events this consumer could not take: {one_line(sse.data)}")
                        continue
                    try:
                        window.add(orjson.loads(sse.data))
                    except orjson.JSONDecodeError:
                        continue  # not an event: skip it, keep following
    analysis = window.analysis()
    return analysis, propose(analysis, config_text)


async def run_analyze(args: Any, out: Callable[[str], None], err: Callable[[str], None]) -> int:
    """The `analyze` subcommand; returns the exit code (0 ok, 1 bad input or failed apply)."""
    config_path = Path(args.config)
    from proxy.cli.shadow import shadow_usage_error, start_trial

    if problem := shadow_usage_error(args):
        err(f"analyze: {problem}")
        return 1
    try:
        config_text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        err(f"analyze: cannot read {config_path}: {exc.strerror or exc}")
        return 1
    if getattr(args, "what_if", None) and not args.events:
        err("analyze: --what-if replays a recorded file: give it --events FILE")
        return 1
    try:
        if args.events:
            events = list(read_events(args.events))
            _warn_of_reloads(events, args.window, err)
            analysis, proposals = analyze(events, config_text, window_s=args.window)
            if getattr(args, "what_if", None):
                return _what_if(args, events, config_text, proposals, out, err)
        else:
            window = Window(args.window)
            if args.once:
                async with aiohttp.ClientSession() as session:
                    for event in await _snapshot(session, args.follow.rstrip("/")):
                        window.add(event)
                analysis = window.analysis()
                proposals = propose(analysis, config_text)
            else:
                analysis, proposals = await _follow(
                    args.follow.rstrip("/"), window, args.duration, args.interval, config_text, out, err
                )
    except ConfigError as exc:
        err(f"analyze: {config_path} is not a valid config:")
        for line in exc.errors:
            err(f"  {one_line(line)}")
        return 1
    except aiohttp.ClientError as exc:
        err(f"analyze: cannot read events from {args.follow}: {exc}")
        return 1
    if args.json:
        out(redact_text(orjson.dumps([p.to_dict() for p in proposals], option=orjson.OPT_INDENT_2).decode()))
    else:
        out(redact_text(render_text(analysis, proposals)))
    if args.report:
        Path(args.report).write_text(redact_text(render_markdown(analysis, proposals)), encoding="utf-8")
        err(f"analyze: Markdown report written to {args.report}")
    if args.apply:
        chosen = [p for p in proposals if p.id == args.apply]
        if not chosen:
            err(f"analyze: no proposal {args.apply} in this analysis ({', '.join(p.id for p in proposals) or 'none'})")
            return 1
        if getattr(args, "shadow", None) is not None:
            return await start_trial(args.follow, config_path, chosen[0], args.shadow, out, err)
        try:
            backup = apply_proposal(config_path, chosen[0])
        except ApplyError as exc:
            err(f"analyze: {exc}")
            return 1
        err(f"analyze: applied {args.apply} to {config_path} (backup: {backup}); a proxy watching it reloads by itself")
    return 0


def _label(kind: CallKind) -> str:
    """A call kind as the analyzer names its targets: ``upstream tool`` or ``upstream method``."""
    upstream, method, tool = kind
    return f"{upstream} {tool or method}"


def _scope(figures: Figures, proposal: Proposal | None) -> tuple[str, Figures]:
    """The part of the window a proposal is about: its call kind, else its upstream, else everything."""
    if proposal is not None:
        exact = figures.select(lambda kind: _label(kind) == proposal.target)
        if exact.kinds:
            return proposal.target, exact
        upstream = figures.select(lambda kind: kind[0] == proposal.target)
        if upstream.kinds:
            return f"upstream {proposal.target}", upstream
    return "the whole window", figures


def _warn_of_reloads(events: list[dict[str, Any]], window_s: float | None, err: Callable[[str], None]) -> None:
    """Say so when the recorded window spans a config change: the events before it were made under another
    policy than --config's, which both the analysis and a replay take for the recorded one."""
    times = [e["ts"] for e in events if isinstance(e.get("ts"), int | float)]
    if not times:
        return
    start = max(times) - window_s if window_s is not None else float("-inf")
    reloads = [e for e in events if e.get("type") == "config_reloaded" and isinstance(e.get("ts"), int | float) and e["ts"] >= start]
    if reloads:
        err(
            f"analyze: the window spans {len(reloads)} config reload(s), the last at {time.strftime('%H:%M:%S', time.gmtime(reloads[-1]['ts']))}Z: "
            f"events before it were made under another config than --config; to read only what came after, "
            f"use --window shorter than the time since"
        )


def _what_if(
    args: Any, events: list[dict[str, Any]], config_text: str, proposals: list[Proposal],
    out: Callable[[str], None], err: Callable[[str], None],
) -> int:
    """Replay the window under the config as it is and as `--what-if` would make it; print the figures."""
    before = load_config(config_text)
    proposal: Proposal | None = None
    chosen = [p for p in proposals if p.id == args.what_if]
    if chosen:
        proposal = chosen[0]
        if proposal.advisory:
            err(f"analyze: proposal {proposal.id} is advice only: it changes nothing to replay")
            return 1
        after: ProxyConfig = load_config(edit_text(config_text, proposal.changes))
        what = f"proposal {proposal.id} ({proposal.rule}): {one_line(proposal.title)}"
    elif Path(args.what_if).is_file():
        after = load_config_file(args.what_if)
        what = f"config {args.what_if}"
    else:
        known = ", ".join(p.id for p in proposals if not p.advisory) or "none"
        err(f"analyze: --what-if {args.what_if}: neither a proposal of this analysis ({known}) nor a config file")
        return 1
    records = records_from_events(events, args.window)
    whole = replay(records, before, after)
    scope, figures = _scope(whole, proposal)
    comparison = compare(proposal.effect.numbers, figures) if proposal is not None else None
    if args.json:
        document = {
            "what_if": {"proposal": proposal.id if proposal else None, "config": None if proposal else args.what_if, "title": what},
            "scope": scope,
            "records": len(records),
            "figures": figures.to_dict(),
            "window": whole.to_dict(),
            "estimate": proposal.effect.numbers if proposal else None,
            "verdict": comparison.to_dict() if comparison else None,
        }
        out(redact_text(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode()))
    else:
        out(redact_text(_render(what, scope, len(records), figures, whole, proposal, comparison)))
    return 0


def _render(
    what: str, scope: str, records: int, figures: Figures, whole: Figures, proposal: Proposal | None,
    comparison: Comparison | None,
) -> str:
    lines = [
        f"What if: {what}",
        f"Replayed {figures.before.calls} calls of {scope} ({records} in the window) through the policy logic, on simulated time.",
        "",
        f"{'figure':<30}{'before':>10}{'after':>10}{'change':>10}",
    ]
    change = figures.change()
    for name, label in FIGURES:
        lines.append(f"{label:<30}{getattr(figures.before, name):>10}{getattr(figures.after, name):>10}{change[name]:>+10}")
        if name == "errors":
            kinds = sorted(set(figures.before.errors_by_kind) | set(figures.after.errors_by_kind))
            for kind in kinds:
                b, a = figures.before.errors_by_kind.get(kind, 0), figures.after.errors_by_kind.get(kind, 0)
                lines.append(f"{'  ' + kind:<30}{b:>10}{a:>10}{a - b:>+10}")
    if whole is not figures and whole.before.calls != figures.before.calls:
        lines.append(f"(whole window: client-visible errors {whole.before.errors} -> {whole.after.errors})")
    if figures.after.estimated:
        lines.append(f"{figures.after.estimated} outcome(s) after are estimates: attempts the recording never sent, or stale answers for params not known to have succeeded (see docs/analyzer.md)")
    if proposal is not None and comparison is not None:
        lines.append("")
        lines.append(f"the proposal's estimate: {one_line(proposal.effect.text)}")
        for estimate in comparison.estimates:
            lines.append(f"  {estimate.key} ({estimate.meaning}): estimated {estimate.estimated:g}, replayed {estimate.replayed}")
        others = {k: v for k, v in proposal.effect.numbers.items() if k not in {e.key for e in comparison.estimates}}
        if others:
            lines.append("  its other numbers: " + ", ".join(f"{k} {v}" for k, v in others.items()))
        lines.append(f"verdict: {comparison.text}")
    return "\n".join(lines)
