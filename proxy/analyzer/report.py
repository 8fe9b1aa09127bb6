"""Render an analysis and its proposals for a terminal (`render_text`) or an issue (`render_markdown`).

Both show the same things in the same order: the window, the top failure signatures with counts and
example event ids, a health table per called tool, the legacy sessions each upstream lost and what became
of them (when any were), then each proposal with its evidence, estimated effect, confidence and diff. One builder produces the rows; the two renderers only format them.

Names in a report (tools, methods, error messages) come from clients and servers. Neither renderer
lets one act as anything but text: control characters, line breaks and bidi overrides are shown
escaped (``\n``, ``\x1b``: no fake report line, no terminal escape sequence), and the Markdown
renderer backslash-escapes the characters that would make HTML, links, emphasis or table cells,
and fences code with more backticks than the text holds.
"""

from __future__ import annotations

import re
import time
from typing import Any

from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.proposal import Proposal
from proxy.analyzer.stats import percentile

__all__ = ["one_line", "render_markdown", "render_text"]

TOP_SIGNATURES = 10
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_MARKDOWN = re.compile(r"[\\`*\[\]<>|&]")


def one_line(text: str) -> str:
    """`text` on one line, with every control character shown as an escape instead of acting."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 0x100 else f"\\u{ord(m.group(0)):04x}", text)


def _md(text: str) -> str:
    """`text` as inert Markdown: cleaned, and what would make HTML, links, emphasis or cells escaped."""
    return _MARKDOWN.sub(lambda m: "\\" + m.group(0), one_line(text))


def _fence(text: str, least: int) -> str:
    """A backtick fence longer than any run of backticks in `text` (and at least `least` long)."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(least, longest + 1)
_TOOL_HEADER = ("upstream", "method/tool", "calls", "ok", "success", "p50 ms", "p90 ms", "p99 ms", "failures", "timeouts", "retries")
_SESSION_HEADER = ("upstream", "lost", "recovered", "failed", "unknown", "recovery off", "unrecorded", "rebuild p50 ms", "rebuild max ms", "streams resumed")
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


def _session_rows(analysis: Analysis) -> list[tuple[str, ...]]:
    """Per upstream with session events: the requests that met a lost session (`SessionStats.met`), those
    replayed on a rebuilt one, what became of the rest (`session_lost.recovery`; ``unrecorded``: a
    recording that does not say), how long the rebuilds that worked took, the upstream streams reopened."""
    rows: list[tuple[str, ...]] = []
    for upstream in sorted(analysis.upstreams.values(), key=lambda u: u.name):
        s = upstream.sessions
        if not s:
            continue
        rows.append((
            upstream.name, str(len(s.met())), str(len(s.recovered_ids)),
            *(str(len(s.with_recovery(r))) for r in ("failed", "unknown_session", "off", None)),
            _ms(percentile(s.recovery_ms, 0.5)), _ms(max(s.recovery_ms, default=None)), str(sum(s.resumed.values())),
        ))  # fmt: skip
    return rows


def _confidence(proposal: Proposal) -> str:
    """Why the level: for a decision on proportions, the method and the strictest confidence it survives
    (the proportions follow, one line each); for a decision on a count, the rule's own reason."""
    if not proposal.statistics:
        return proposal.confidence_reason
    strictest = {"high": "99.5%", "medium": "97.5%"}.get(proposal.confidence, "95%")
    return f"one-sided Wilson score bounds, decided at 95%, holding at {strictest}"


def _addresses(proposal: Proposal) -> str | None:
    """What the change is expected to remove (`Proposal.addresses`), when anything: the failures a cached
    fallback is then not proposed for."""
    failures, openings = len(proposal.addresses), len(proposal.addresses_openings)
    if not (failures or openings):
        return None
    parts = [f"{failures} failed call(s)"] + ([f"{openings} breaker opening(s)"] if openings else [])
    return " and ".join(parts) + " whose cause this fixes (no cached fallback is proposed for them)"


def _evidence(evidence: dict[str, Any]) -> str:
    shown = {k: v for k, v in evidence.items() if k not in ("window_start", "window_end")}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    rows = [tuple(one_line(cell) for cell in row) for row in rows]
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
    rows = _session_rows(analysis)
    lines += ["", "Legacy sessions lost:", *("  " + line for line in _table(_SESSION_HEADER, rows))] if rows else []
    lines += ["", f"Proposals: {len(proposals) or 'none'}"]
    for p in proposals:
        lines += [
            "", f"[{p.id}] {one_line(p.title)}" + (" (advice only)" if p.advisory else ""),
            f"  why: {one_line(p.rationale)}", f"  evidence: {one_line(_evidence(p.evidence))}",
            f"  effect: {one_line(p.effect.text)}", f"  confidence: {p.confidence} ({one_line(_confidence(p))})",
        ]  # fmt: skip
        lines += [f"    decided on: {one_line(share.describe())}" for share in p.statistics]
        addresses = _addresses(p)
        lines += [f"  addresses: {addresses}"] if addresses else []
        lines += [f"  change: {one_line(c.describe())}" for c in p.changes]
        if p.diff:
            lines += ["  " + one_line(line) for line in p.diff.rstrip("\n").split("\n")]
    return "\n".join(lines) + "\n"


def _md_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(_md(cell) for cell in cells) + " |"

    return [row(header), "|" + "---|" * len(header), *(row(r) for r in rows)]


def render_markdown(analysis: Analysis, proposals: list[Proposal]) -> str:
    """The same summary as Markdown, for pasting into an issue."""
    lines = ["## MCP proxy analysis", "", f"**Window:** {_window(analysis)}", "", "### Top failure signatures", ""]
    rows = _signature_rows(analysis)
    lines += _md_table(_SIGNATURE_HEADER, rows) if rows else ["None."]
    lines += ["", "### Calls per tool", ""]
    rows = _tool_rows(analysis)
    lines += _md_table(_TOOL_HEADER, rows) if rows else ["None."]
    rows = _session_rows(analysis)
    lines += ["", "### Legacy sessions lost", "", *_md_table(_SESSION_HEADER, rows)] if rows else []
    lines += ["", "### Proposals", ""]
    if not proposals:
        lines.append("None: nothing in this window calls for a change.")
    for p in proposals:
        lines += [
            f"#### `{p.id}` {_md(p.title)}" + (" (advice only)" if p.advisory else ""), "", _md(p.rationale), "",
            f"- **Evidence:** {_md(_evidence(p.evidence))}", f"- **Estimated effect:** {_md(p.effect.text)}",
            f"- **Confidence:** {p.confidence} ({_md(_confidence(p))})",
        ]  # fmt: skip
        lines += [f"  - decided on: {_md(share.describe())}" for share in p.statistics]
        addresses = _addresses(p)
        lines += [f"- **Addresses:** {_md(addresses)}"] if addresses else []
        for c in p.changes:
            change = one_line(c.describe())
            fence = _fence(change, 1)
            lines.append(f"- **Change:** {fence} {change} {fence}")
        if p.diff:
            diff = "\n".join(one_line(line) for line in p.diff.rstrip("\n").split("\n"))
            fence = _fence(diff, 3)
            lines += ["", f"{fence}diff", diff, fence]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
