"""The terminal and Markdown reports show the window, signatures, per-tool table and each proposal with its diff."""

from __future__ import annotations

from proxy.analyzer import analyze, render_markdown, render_text
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import Stream


def test_text_report() -> None:
    analysis, proposals = analyze(sc.slow_search() + sc.lost_sessions(), sc.CONFIG, env={})
    text = render_text(analysis, proposals)
    assert text.startswith("Window: 2023-11-14 22:13:20Z .. 2023-11-14 22:15:00Z (100s, 85 events)\n")
    assert "Top failure signatures:" in text and "session not found" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("upstream  method/tool"))
    assert header.split() == ["upstream", "method/tool", "calls", "ok", "success", "p50", "ms", "p90", "ms", "p99", "ms", "failures", "timeouts", "retries"]
    assert any(line.split()[:5] == ["api", "search", "200", "200", "100.0%"] for line in lines)
    assert "Proposals: 2" in text
    assert "[183f50df40] Raise per_try for api search from 2s to 4s" in text
    assert "  effect: with per_try 4s, 90% of the 40 timed-out attempts would have completed" in text
    assert "  change: upstream api, rule (tool=search): timeouts.per_try: 2s -> 4s" in text
    assert "  confidence: high (one-sided Wilson score bounds, decided at 95%, holding at 99.5%)\n" in text
    assert "    decided on: timed-out attempts that would complete: 36/40 (90.0%), 95% lower bound 79.5% >= 50%\n" in text
    assert "] Legacy sessions of api: 4 requests met a lost session (recorded without what became of it) (advice only)\n" in text
    assert "  confidence: low (advice only: no change to estimate)\n" in text
    assert "  +          per_try: 4s" in text
    assert "addresses:" not in text  # no timeout failed a call here: the attempts were retried
    # The sessions table: a recording from before recovery says nothing of what became of its 4 losses.
    at = lines.index("Legacy sessions lost:")
    assert [line.split() for line in lines[at + 1 : at + 3]] == [
        ["upstream", "lost", "recovered", "failed", "unknown", "recovery", "off", "unrecorded", "rebuild", "p50", "ms", "rebuild", "max", "ms", "streams", "resumed"],
        ["api", "4", "0", "0", "0", "0", "4", "-", "-", "0"],
    ]
    assert lines[at + 3] == ""


def test_the_sessions_table_counts_what_became_of_each_loss() -> None:
    """5 losses met: 3 recovered (rebuilds of 40, 60 and 900 ms), 1 failed (the server came back changed),
    1 unknown to the proxy; a GET stream reopened twice. Below every floor: no proposal, the table only."""
    s = Stream()
    for i, ms in enumerate((40.0, 60.0, 900.0)):
        call = s.call_id()
        s.session_lost(10.0 * i, recovery="recovering", call_id=call)
        s.session_recovered(10.0 * i + 1, recovery_ms=ms, call_id=call)
    s.session_lost(40.0, recovery="recovering", call_id="c-changed")
    s.session_lost(40.5, recovery="failed", why="version_changed", call_id="c-changed")
    s.session_lost(50.0, recovery="unknown_session")
    s.stream_resumed(51.0)
    s.stream_resumed(52.0, stream="answer", from_event_id=True)
    analysis, proposals = analyze(s.events, sc.CONFIG, env={})
    assert proposals == []
    lines = render_text(analysis, proposals).splitlines()
    at = lines.index("Legacy sessions lost:")
    assert lines[at + 2].split() == ["api", "5", "3", "1", "1", "0", "0", "60", "900", "2"]
    md = render_markdown(analysis, proposals)
    assert (
        "### Legacy sessions lost\n\n| upstream | lost | recovered | failed | unknown | recovery off | unrecorded | rebuild p50 ms "
        "| rebuild max ms | streams resumed |\n|---|---|---|---|---|---|---|---|---|---|\n| api | 5 | 3 | 1 | 1 | 0 | 0 | 60 | 900 | 2 |\n"
    ) in md


def test_no_sessions_table_without_session_events() -> None:
    analysis, proposals = analyze(sc.slow_search(), sc.CONFIG, env={})
    assert "Legacy sessions" not in render_text(analysis, proposals)
    assert "Legacy sessions" not in render_markdown(analysis, proposals)


def test_markdown_report() -> None:
    analysis, proposals = analyze(sc.throttled(), sc.CONFIG, env={})
    md = render_markdown(analysis, proposals)
    assert md.startswith("## MCP proxy analysis\n")
    assert "| signature | count | kind | where | message | examples |" in md
    assert "#### `95b7143180` Rate-limit calls to api at 12/s" in md
    assert "- **Estimated effect:** at most 12 calls/s would reach api" in md
    assert "- **Confidence:** medium (one-sided Wilson score bounds, decided at 95%, holding at 97.5%)\n" in md
    assert "  - decided on: attempts answered 429 while the upstream limited: 30/390 (7.7%), 95% lower bound 5.8% \\>= 5%\n" in md  # ">" escaped for Markdown
    assert "- **Addresses:** 30 failed call(s) whose cause this fixes (no cached fallback is proposed for them)\n" in md
    assert "```diff\n--- a/proxy.yaml\n+++ b/proxy.yaml\n" in md and md.rstrip().endswith("```")


def test_reports_of_nothing() -> None:
    analysis, proposals = analyze([], sc.CONFIG, env={})
    assert "Proposals: none" in render_text(analysis, proposals)
    assert "None: nothing in this window calls for a change." in render_markdown(analysis, proposals)
