"""``mcp-resilience-proxy analyze``: run the analyzer on a recorded event file or a live proxy.

Offline (``--events FILE``) it reads a JSON-lines file written by ``events.file``; live
(``--follow ADMIN_URL``) it takes the proxy's buffered events from ``GET /events?format=json`` and then
follows the ``/events`` SSE stream, re-analyzing every ``--interval`` until ``--duration`` ends (or at
once with ``--once``). Either way it prints the terminal report, can write a Markdown report, print
the proposals as JSON, and apply one (``--apply ID``): validated, backed up, written atomically; a
proxy running on that file hot-reloads it by itself.

This module is the analyzer's only contact with the network: a client of the proxy's own admin API.
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
from proxy.analyzer import render_markdown, render_text
from proxy.analyzer.report import one_line
from proxy.config.model import ConfigError
from proxy.mcp.sse import SSEParser

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
    try:
        if args.events:
            analysis, proposals = analyze(read_events(args.events), config_text, window_s=args.window)
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
        out(orjson.dumps([p.to_dict() for p in proposals], option=orjson.OPT_INDENT_2).decode())
    else:
        out(render_text(analysis, proposals))
    if args.report:
        Path(args.report).write_text(render_markdown(analysis, proposals), encoding="utf-8")
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
