"""Client-chosen names in the rules the analyzer writes: glob and ${ syntax escaped, YAML quoting exact, reports inert.

A tool's name comes from a client. Written as it is, a tool named ``*`` would become a rule for every
tool, ``${HOME}`` would be interpolated by the config loader, ``yes`` or ``1:30`` would be read back
by the YAML 1.1 loader as a boolean or a number, and a newline would start a new line in a report.
"""

from __future__ import annotations

import fnmatch
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.analyzer import Change, Match, analyze, edit_text, render_markdown, render_text
from proxy.analyzer.proposal import literal_glob, yaml_literal
from proxy.config.model import load_config
from proxy.config.resolve import PolicyResolver
from tests.analyzer.builders import Stream
from tests.analyzer.scenarios import CONFIG

ENV = {"HOME": "/root", "API_URL": "http://127.0.0.1:3000/mcp"}
ODD_NAMES = ["*", "?", "[a]", "[!x]*", "${HOME}", "$${HOME}", "a\nb", "yes", "null", "1:30", "~", "&anchor", "#x", "- x", "é☃"]


def slow(tool: str) -> list[dict[str, object]]:
    """The `slow_search` scenario for a tool of any name: 40 timeouts, 36 seen finishing shortly after."""
    s = Stream()
    s.call_ok(100.0, tool=tool, ok=200, latencies_ms=[300.0] * 200)
    s.call_ok(100.0, tool="search", ok=200, latencies_ms=[300.0] * 200)
    for i in range(40):
        call = s.call_id()
        s.timeout(1.0 + i, 2000.0, call_id=call, tool=tool)
        s.timeout_observed(2.0 + i, 2000.0, 2100.0 + 20 * i if i < 36 else None, call_id=call, tool=tool)
    return s.events


@pytest.mark.parametrize("tool", ODD_NAMES)
def test_a_proposal_for_an_odd_tool_name_governs_that_tool_alone(tool: str) -> None:
    _, proposals = analyze(slow(tool), CONFIG, env=ENV)
    [proposal] = [p for p in proposals if p.rule == "timeouts"]
    config = load_config(edit_text(CONFIG, proposal.changes), ENV)
    resolver = PolicyResolver(config.upstreams[0])
    assert resolver.resolve("tools/call", tool).timeouts.per_try == 4.0
    for other in ("search", "x", "/root", "a", "$/root", "report_pdf", ""):
        if other != tool:
            assert resolver.resolve("tools/call", other).timeouts.per_try in (2.0, 20.0), other


def test_a_tool_named_star_gets_a_rule_that_matches_only_star() -> None:
    _, proposals = analyze(slow("*"), CONFIG, env=ENV)
    [proposal] = [p for p in proposals if p.rule == "timeouts"]
    assert proposal.diff is not None and '+      - match: {tool: "[*]"}' in proposal.diff
    edited = load_config(edit_text(CONFIG, proposal.changes), ENV)
    assert edited.upstreams[0].rules[-1].match.tool == "[*]"


def test_an_interpolation_in_a_tool_name_stays_literal() -> None:
    _, proposals = analyze(slow("${HOME}"), CONFIG, env=ENV)
    [proposal] = [p for p in proposals if p.rule == "timeouts"]
    assert proposal.diff is not None and '{tool: "$${HOME}"}' in proposal.diff
    config = load_config(edit_text(CONFIG, proposal.changes), ENV)
    assert config.upstreams[0].rules[-1].match.tool == "${HOME}"


def test_the_same_rule_is_found_again_not_appended_twice() -> None:
    change = Change("api", Match(tool=literal_glob("${HOME}*")), "timeouts.per_try", "4s")
    once = edit_text(CONFIG, [change])
    twice = edit_text(once, [Change("api", Match(tool=literal_glob("${HOME}*")), "timeouts.total", "20s")])
    assert twice.count("match:") == once.count("match:") == CONFIG.count("match:") + 1


@given(st.text(min_size=1, max_size=40))
def test_any_name_round_trips_through_the_file_as_a_pattern_for_itself_alone(name: str) -> None:
    pattern = literal_glob(name)
    assert fnmatch.fnmatchcase(name, pattern)
    for other in (name + "x", "x" + name, name[:-1], "*", "?", "[a]"):
        if other != name:
            assert not fnmatch.fnmatchcase(other, pattern)
    assert yaml_literal(pattern) == pattern.replace("${", "$${")
    edited = edit_text(CONFIG, [Change("api", Match(tool=pattern), "timeouts.per_try", "4s")])
    config = load_config(edited, ENV)
    assert config.upstreams[0].rules[-1].match.tool == pattern


@given(st.text(min_size=1, max_size=20))
def test_any_method_name_round_trips_too(name: str) -> None:
    edited = edit_text(CONFIG, [Change("api", Match(method=literal_glob(name)), "timeouts.per_try", "4s")])
    rule = load_config(edited, ENV).upstreams[0].rules[-1]
    assert rule.match.method == literal_glob(name) and rule.match.tool is None


def test_reports_show_control_characters_escaped_and_markdown_inert() -> None:
    tool = "x\n[ab12cd34ef] Fake proposal\x1b[31m <img src=x> `code` | *"
    analysis, proposals = analyze(slow(tool), CONFIG, env=ENV)
    text = render_text(analysis, proposals)
    assert "\x1b" not in text and "\n[ab12cd34ef]" not in text and "\\x1b" in text and "\\n" in text
    markdown = render_markdown(analysis, proposals)
    assert "\x1b" not in markdown and "\n[ab12cd34ef]" not in markdown
    [title] = [line for line in markdown.splitlines() if line.startswith("#### ")]
    assert re.search(r"(?<!\\)[<>`|*\[]", title.split("` ", 1)[1]) is None  # nothing active outside the id's code span
    assert "\\<img src=x\\>" in markdown


def test_a_carved_out_literal_rule_outranks_the_glob_it_was_carved_from() -> None:
    _, proposals = analyze(slow("fetch_*"), CONFIG, env=ENV)
    [proposal] = [p for p in proposals if p.rule == "timeouts"]
    config = load_config(edit_text(CONFIG, proposal.changes), ENV)
    resolver = PolicyResolver(config.upstreams[0])
    assert resolver.resolve("tools/call", "fetch_*").rule == f"rules[{len(config.upstreams[0].rules) - 1}] (tool=fetch_[*])"
