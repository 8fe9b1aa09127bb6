"""Policy resolution looks exact names up instead of trying every rule, and resolves exactly as before.

"Before" is the plain definition, written out here on its own: the rules in specificity order (exact
tool > tool glob > any tool, then the same for the method, then file order), the first that matches
wins. The resolver must agree with it for a table of cases (escaped glob characters as the analyzer
writes them included) and for any rule set and call Hypothesis makes up.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.config.resolve import PolicyResolver
from tests.fakes import upstream_config

_ESCAPED = re.compile(r"\[[*?[]\]")


def _rank(pattern: str | None) -> int:
    if pattern is None or pattern == "*":
        return 0
    return 1 if any(ch in _ESCAPED.sub("", pattern) for ch in "*?[") else 2


def _matches(pattern: str | None, value: str | None) -> bool:
    return pattern is None or (value is not None and fnmatch.fnmatchcase(value, pattern))


def reference(rules: list[dict[str, Any]], method: str, tool: str | None) -> int | None:
    """The index of the rule that wins, by the definition (None: no rule, the defaults)."""
    order = sorted(
        range(len(rules)),
        key=lambda i: (-_rank(rules[i]["match"].get("tool")), -_rank(rules[i]["match"].get("method", "*")), i),
    )
    for i in order:
        match = rules[i]["match"]
        if _matches(match.get("method", "*"), method) and _matches(match.get("tool"), tool):
            return i
    return None


def resolved(rules: list[dict[str, Any]], method: str, tool: str | None) -> int | None:
    """The index of the rule the resolver picks (from the rule name it reports)."""
    name = PolicyResolver(upstream_config(rules=rules)).resolve(method, tool).rule
    return None if name == "default" else int(name.removeprefix("rules[").split("]")[0])


RULES: list[dict[str, Any]] = [
    {"match": {"method": "tools/call", "tool": "fetch_[*]"}},  # 0: the tool literally named fetch_*
    {"match": {"tool": "fetch_*"}},  # 1: a glob
    {"match": {"tool": "search"}},  # 2
    {"match": {"method": "tools/*", "tool": "search"}},  # 3: same tool, a more specific method
    {"match": {"method": "resources/read"}},  # 4
    {"match": {"method": "resources/*"}},  # 5
    {"match": {"tool": "*"}},  # 6: any tool, but a tool
    {"match": {"method": "*"}},  # 7: everything
    {"match": {"method": "prompts/get", "tool": "*"}},  # 8: an exact method, any tool (but a tool)
    {"match": {"tool": "a[?]b"}},  # 9: literally a?b
    {"match": {"tool": "x[[]y"}},  # 10: literally x[y
    {"match": {"tool": "q[!z]"}},  # 11: a glob (a class)
    {"match": {"tool": "search"}},  # 12: a later duplicate of 2: never wins
    {"match": {"method": "resources/read"}},  # 13: a later duplicate of 4
]


@pytest.mark.parametrize(
    ("method", "tool", "winner"),
    [
        ("tools/call", "fetch_*", 0),
        ("tools/call", "fetch_x", 1),
        ("tools/list", "fetch_*", 1),  # rule 0 is for tools/call only
        ("tools/call", "search", 3),
        ("prompts/get", "search", 2),
        ("resources/read", None, 4),
        ("resources/list", None, 5),
        ("tools/call", "other", 6),
        ("tools/list", None, 7),
        ("prompts/get", None, 7),  # `tool: *` needs a tool
        ("prompts/get", "p", 8),
        ("tools/call", "a?b", 9),
        ("tools/call", "axb", 6),  # [?] is a literal ?
        ("tools/call", "x[y", 10),
        ("tools/call", "qa", 11),
        ("tools/call", "qz", 6),
    ],
)
def test_the_table_resolves_by_the_definition(method: str, tool: str | None, winner: int | None) -> None:
    assert resolved(RULES, method, tool) == reference(RULES, method, tool) == winner


def test_without_rules_everything_takes_the_defaults() -> None:
    assert resolved([], "tools/call", "x") is None


_NAMES = st.sampled_from(["a", "b", "ab", "a*", "*b", "a*b*", "*a*", "a?", "[ab]", "[!a]*", "a[*]", "[*]", "[?]b", "[[]a", "x", "*"])
_METHODS = st.sampled_from(["tools/call", "tools/list", "tools/*", "resources/read", "resources/*", "*", "a", "a[*]"])
_RULE = st.builds(
    lambda method, tool: {"match": {k: v for k, v in (("method", method), ("tool", tool)) if v is not None}},
    st.one_of(st.none(), _METHODS),
    st.one_of(st.none(), _NAMES),
)
_VALUES = st.sampled_from(["a", "b", "ab", "a*", "*b", "aa", "abab", "bab", "[ab]", "[*]", "*", "?b", "[a", "x", "tools/call", "a?"])


@given(
    rules=st.lists(_RULE, max_size=12),
    method=st.sampled_from(["tools/call", "tools/list", "resources/read", "a", "a*", "*"]),
    tool=st.one_of(st.none(), _VALUES),
)
def test_any_rules_resolve_by_the_definition(rules: list[dict[str, Any]], method: str, tool: str | None) -> None:
    assert resolved(rules, method, tool) == reference(rules, method, tool)


def test_a_remembered_answer_is_the_one_first_resolved() -> None:
    resolver = PolicyResolver(upstream_config(rules=RULES))
    first = resolver.resolve("tools/call", "search")
    assert resolver.resolve("tools/call", "search") is first
    assert [resolver.resolve("tools/call", f"t{n}").rule for n in range(3)] == ["rules[6] (tool=*)"] * 3
