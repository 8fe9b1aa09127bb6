"""Render an analysis and its proposals for a terminal (`render_text`) or an issue (`render_markdown`).

Both show the same things in the same order: the window, the top failure signatures with counts and
example event ids, a health table per called tool, then each proposal with its evidence, estimated
effect, confidence and diff. One builder produces the rows; the two renderers only format them.
"""

from __future__ import annotations

import time
from typing import Any

from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.proposal import Proposal

__all__ = ["render_markdown", "render_text"]

TOP_SIGNATURES = 10
_TOOL_HEADER = ("upstream", "method/tool", "calls", "ok", "success", "p50 ms", "p90 ms", "p99 ms", "failures", "timeouts", "retries")
_SIGNATURE_HEADER = ("signature", "count", "kind", "where", "message", "examples")


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + "Z"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _window(analysis: Analysis) -> str:
    span = (analysis.window_end or 0.0) - (analysis.window_start or 0.0)
    text = f"{_when(analysis.window_start)} .. {_when(analysis.window_end)} ({span:.0f}s, {analysis.events} events"
    if analysis.skipped:
        text += f", {analysis.skipped} skipped"
    if analysis.config_changes:
        text += f", config reloaded {len(analysis.config_changes)}x"
    return text + ")"


def _signature_rows(analysis: Analysis) -> list[tuple[str, ...]]:
    return [
        (g.signature, str(g.count), g.kind, " ".join(p for p in (g.upstream, g.tool or g.method) if p),
         g.message[:60], ", ".join(map(str, g.example_ids)))
        for g in analysis.top_signatures(TOP_SIGNATURES)
    ]  # fmt: skip


def _tool_rows(analysis: Analysis) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for s in analysis.all_targets():
        rate = s.success_rate
        failures = ", ".join(f"{k} {v}" for k, v in sorted(s.failures.items())) or "-"
        rows.append((
            s.target.upstream, s.target.tool or s.target.method, str(s.calls), str(s.ok),
            "-" if rate is None else f"{rate:.1%}", _ms(s.latency(0.5)), _ms(s.latency(0.9)), _ms(s.latency(0.99)),
            failures, str(s.timeouts), str(s.retries),
        ))  # fmt: skip
    return rows


def _evidence(evidence: dict[str, Any]) -> str:
    shown = {k: v for k, v in evidence.items() if k not in ("window_start", "window_end")}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in (header, *rows)]


def render_text(analysis: Analysis, proposals: list[Proposal]) -> str:
    """A terminal summary."""
    lines = [f"Window: {_window(analysis)}", "", "Top failure signatures:"]
    rows = _signature_rows(analysis)
    lines += ["  " + line for line in _table(_SIGNATURE_HEADER, rows)] if rows else ["  none"]
    lines += ["", "Calls per tool:"]
    rows = _tool_rows(analysis)
    lines += ["  " + line for line in _table(_TOOL_HEADER, rows)] if rows else ["  none"]
    lines += ["", f"Proposals: {len(proposals) or 'none'}"]
    for p in proposals:
        lines += [
            "", f"[{p.id}] {p.title}" + (" (advice only)" if p.advisory else ""),
            f"  why: {p.rationale}", f"  evidence: {_evidence(p.evidence)}", f"  effect: {p.effect.text}",
            f"  confidence: {p.confidence} ({p.confidence_reason})",
        ]  # fmt: skip
        lines += [f"  change: {c.describe()}" for c in p.changes]
        if p.diff:
            lines += ["  " + line for line in p.diff.rstrip("\n").splitlines()]
    return "\n".join(lines) + "\n"


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [row(header), "|" + "---|" * len(header), *(row(r) for r in rows)]


def render_markdown(analysis: Analysis, proposals: list[Proposal]) -> str:
    """The same summary as Markdown, for pasting into an issue."""
    lines = ["## MCP proxy analysis", "", f"**Window:** {_window(analysis)}", "", "### Top failure signatures", ""]
    rows = _signature_rows(analysis)
    lines += _md_table(_SIGNATURE_HEADER, rows) if rows else ["None."]
    lines += ["", "### Calls per tool", ""]
    rows = _tool_rows(analysis)
    lines += _md_table(_TOOL_HEADER, rows) if rows else ["None."]
    lines += ["", "### Proposals", ""]
    if not proposals:
        lines.append("None: nothing in this window calls for a change.")
    for p in proposals:
        lines += [
            f"#### `{p.id}` {p.title}" + (" (advice only)" if p.advisory else ""), "", p.rationale, "",
            f"- **Evidence:** {_evidence(p.evidence)}", f"- **Estimated effect:** {p.effect.text}",
            f"- **Confidence:** {p.confidence} ({p.confidence_reason})",
        ]  # fmt: skip
        lines += [f"- **Change:** `{c.describe()}`" for c in p.changes]
        if p.diff:
            lines += ["", "```diff", p.diff.rstrip("\n"), "```"]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
