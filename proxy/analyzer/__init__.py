"""The failure-event analyzer: events in, config proposals out (DESIGN.md section 5).

It reads only events (`proxy.events.recorder`, schema v1) and the user's config file, never the running proxy:
`analyze(events, config_text)` aggregates a window, runs each rule, and returns proposals whose diffs
edit the user's own file; `apply_proposal` writes one, validated and backed up.
"""

from proxy.analyzer.aggregate import DEFAULT_WINDOW_S, Analysis, Window, read_events
from proxy.analyzer.apply import ApplyError, apply_proposal
from proxy.analyzer.engine import RULES, analyze, propose
from proxy.analyzer.proposal import Change, Effect, Match, Proposal
from proxy.analyzer.report import render_markdown, render_text
from proxy.analyzer.yamledit import EditError, edit_text

__all__ = [
    "DEFAULT_WINDOW_S",
    "RULES",
    "Analysis",
    "ApplyError",
    "Change",
    "EditError",
    "Effect",
    "Match",
    "Proposal",
    "Window",
    "analyze",
    "apply_proposal",
    "edit_text",
    "propose",
    "read_events",
    "render_markdown",
    "render_text",
]
