"""Edits of the user's own file: comments, key order, quoting and ${ENV} values survive; the result validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.analyzer import Change, EditError, Match, edit_text
from proxy.analyzer.yamledit import unified_diff
from proxy.config.model import load_config
from proxy.config.resolve import PolicyResolver

REPO = Path(__file__).resolve().parents[2]
PROXY_YAML = (REPO / "config" / "proxy.yaml").read_text()


def comments(text: str) -> list[str]:
    return [line.split("#", 1)[1].rstrip() for line in text.splitlines() if "#" in line and "${" not in line and '"#' not in line]


def changed(old: str, new: str) -> list[str]:
    return [line for line in unified_diff(old, new).splitlines()[2:] if line[:1] in "+-"]


def test_the_documented_config_keeps_every_comment_and_only_the_changed_lines_change() -> None:
    changes = [
        Change("default", None, "timeouts.per_try", "4s"),
        Change("default", None, "rate_limit.rate", 12),
        Change("default", None, "rate_limit.key", "upstream"),
        Change("default", Match(tool="search"), "timeouts.per_try", "4s"),
        Change("default", Match(method="resources/read"), "cache.mode", "fallback"),
    ]
    edited = edit_text(PROXY_YAML, changes)
    assert comments(edited) == comments(PROXY_YAML)
    assert changed(PROXY_YAML, edited) == [
        "-      per_try: 5m                       # one attempt: until the headers (and a JSON answer's, or a read's, whole body)",
        "+      per_try: 4s                       # one attempt: until the headers (and a JSON answer's, or a read's, whole body)",
        "-    rate_limit: null",
        "+    rate_limit:",
        "+      rate: 12",
        "+      key: upstream",
        "-    rules: []",
        "+    rules:",
        "+      - match: {tool: search}",
        "+        timeouts:",
        "+          per_try: 4s",
        "+      - match: {method: resources/read}",
        "+        cache:",
        "+          mode: fallback",
    ]
    # the commented-out example that followed `rate_limit: null` now follows the new mapping
    assert "      key: upstream\n    #  rate: 10\n" in edited
    config = load_config(edited, {})
    resolver = PolicyResolver(config.upstreams[0])
    assert resolver.resolve("tools/call", "search").timeouts.per_try == 4.0
    assert resolver.resolve("resources/read", None).cache is not None
    assert config.upstreams[0].rate_limit is not None and config.upstreams[0].rate_limit.rate == 12
    for kept in ("${MCP_PROXY_LISTEN_HOST:-127.0.0.1}", "${MCP_UPSTREAM_URL:-http://127.0.0.1:3000/mcp}", '"[::1]"', "header: null"):
        assert kept in edited


SMALL = """\
upstreams:
  - name: a   # first
    url: http://127.0.0.1:1/mcp
    retry:
      max_attempts: 3   # attempts

  # the second one
  - name: b
    url: http://127.0.0.1:2/mcp
    path: /b
    rules: null         # none yet
"""


def test_rules_are_created_when_absent_or_null_and_the_right_upstream_is_edited() -> None:
    edited = edit_text(SMALL, [Change("a", Match(tool="t"), "retry.max_attempts", 2), Change("b", Match(tool="u"), "idempotent", True)])
    assert edited == """\
upstreams:
  - name: a   # first
    url: http://127.0.0.1:1/mcp
    retry:
      max_attempts: 3   # attempts
    rules:
      - match: {tool: t}
        retry:
          max_attempts: 2

  # the second one
  - name: b
    url: http://127.0.0.1:2/mcp
    path: /b
    rules:              # none yet
      - match: {tool: u}
        idempotent: true
"""
    load_config(edited, {})


def test_an_existing_rule_whose_match_equals_the_target_is_edited_in_place() -> None:
    text = SMALL.replace("rules: null         # none yet", "rules:\n      - match: {method: tools/call, tool: t}\n        retry: {max_attempts: 2}\n      - match: {tool: t}   # mine\n        retry: {max_attempts: 2}\n      # end of rules")
    edited = edit_text(text, [Change("b", Match(tool="t"), "retry.max_attempts", 4), Change("b", Match(tool="v"), "idempotent", False)])
    assert changed(text, edited) == [
        "-        retry: {max_attempts: 2}",
        "+        retry: {max_attempts: 4}",
        "+      - match: {tool: v}",
        "+        idempotent: false",
    ]
    assert edited.endswith("        idempotent: false\n      # end of rules\n")


def test_edits_that_cannot_be_made_say_why() -> None:
    with pytest.raises(EditError, match="no upstream named 'c'"):
        edit_text(SMALL, [Change("c", None, "retry.max_attempts", 2)])
    with pytest.raises(EditError, match=r"upstreams\[a\]\.retry\.max_attempts is 3, not a mapping"):
        edit_text(SMALL, [Change("a", None, "retry.max_attempts.x", 2)])
    with pytest.raises(EditError, match=r"upstreams\[a\]\.url is set from the environment"):
        edit_text(SMALL.replace("http://127.0.0.1:1/mcp", "${A_URL}"), [Change("a", None, "url", "http://x/mcp")])
    with pytest.raises(EditError, match="not YAML"):
        edit_text("a: [", [Change("a", None, "x", 1)])


def test_a_value_shared_through_an_anchor_is_never_edited() -> None:
    import pytest as _pytest

    from proxy.analyzer import Change, EditError, edit_text

    text = (
        "upstreams:\n"
        "  - name: a\n    url: http://127.0.0.1:1/mcp\n    timeouts: &slow {per_try: 2s}\n"
        "  - name: b\n    url: http://127.0.0.1:2/mcp\n    timeouts: *slow\n"
    )
    with _pytest.raises(EditError, match="shared through a YAML anchor"):
        edit_text(text, (Change("b", None, "timeouts.per_try", "4s", "2s"),))
