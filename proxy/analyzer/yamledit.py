"""Edit the user's own YAML file with ruamel.yaml round-trip: comments, key order and quoting survive.

A change sets one dotted key under an upstream's defaults or under the rules entry whose `match`
equals the target (appended, with `rules:` itself created, when there is none). Values set from the
environment (``${VAR}``) are never overwritten: the file does not hold the value, so the edit refuses.

ruamel keeps the comment lines that follow a key on that key (``rate_limit: null`` then a commented
example). When such a scalar becomes a mapping, or a key or rule is appended after it, those lines are
moved to the new last key, so they stay below the new content instead of splitting it.

A new rule's match is written from `Match.to_yaml` (glob and ``${`` syntax already escaped there).
ruamel writes YAML 1.2, the config loader reads YAML 1.1 (PyYAML): a plain ``yes``, ``null``,
``1:30`` or ``1_000`` would come back as a boolean, None or a number. So a match value is written
plain only when it is a simple name both read as the same string, and double-quoted otherwise
(with escapes for newlines and control characters).
"""

from __future__ import annotations

import difflib
import io
import re
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, YAMLError
from ruamel.yaml.representer import RoundTripRepresenter
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent

from proxy.analyzer.proposal import Change, Match

__all__ = ["EditError", "edit_text", "unified_diff"]


class EditError(Exception):
    """The file cannot take this change (no such upstream, a value from the environment, not YAML)."""


def _represent_none(representer: RoundTripRepresenter, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def _yaml(text: str) -> YAML:
    _, indent, offset = load_yaml_guess_indent(text)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap the user's long lines
    yaml.indent(mapping=2, sequence=indent or 2, offset=offset or 0)
    yaml.representer.add_representer(type(None), _represent_none)
    return yaml


def _split_trailing(container: CommentedMap | CommentedSeq, key: Any) -> str | None:
    """Detach the full-line comments after `key` (its end-of-line comment stays); return them."""
    entry = container.ca.items.get(key)
    if not entry or len(entry) < 3 or entry[2] is None:
        return None
    token: CommentToken = entry[2]
    value: str = token.value
    head, newline, rest = value.partition("\n")
    if not rest:
        return None
    if head.strip():
        token.value = head + newline
    else:
        entry[2] = None
    return rest


def _deepest_last(node: Any) -> tuple[CommentedMap | CommentedSeq, Any] | None:
    """The (container, key) whose trailing comment ends `node` in block style."""
    if isinstance(node, CommentedMap) and node and not node.fa.flow_style():
        key = list(node.keys())[-1]
        return _deepest_last(node[key]) or (node, key)
    if isinstance(node, CommentedSeq) and node and not node.fa.flow_style():
        return _deepest_last(node[-1]) or (node, len(node) - 1)
    return None


def _attach_trailing(node: Any, comment: str | None) -> None:
    if not comment:
        return
    place = _deepest_last(node)
    if place is None:
        return
    container, key = place
    entry = container.ca.items.setdefault(key, [None, None, None, None])
    if entry[2] is None:
        entry[2] = CommentToken("\n" + comment, CommentMark(0), None)
    else:
        entry[2].value += comment


_SIMPLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*")
_STR_TAG = "tag:yaml.org,2002:str"


def _match_value(value: str) -> str:
    """`value` plain when YAML 1.1 and 1.2 both read it back as this very string, else double-quoted."""
    resolved: object = pyyaml.resolver.Resolver().resolve(pyyaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    if _SIMPLE.fullmatch(value) and resolved == _STR_TAG:
        return value
    quoted: str = DoubleQuotedScalarString(value)
    return quoted


def _to_node(value: Any) -> Any:
    if isinstance(value, dict):
        node = CommentedMap()
        for key, item in value.items():
            node[key] = _to_node(item)
        return node
    return value


def _plain(value: Any) -> Any:
    """`value` as plain dicts, lists and scalars (ruamel's nodes carry anchors and comments)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _shared(node: Any) -> bool:
    """True for a node other parts of the file also use (an &anchor, or a mapping with `<<:` merges)."""
    anchor = getattr(node, "anchor", None)
    return bool(getattr(anchor, "value", None)) or bool(getattr(node, "merge", None))


def _is_env(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _set(node: CommentedMap, path: list[str], value: Any, where: str) -> None:
    """Set `path` under `node`, creating mappings (or replacing a null) on the way."""
    key, rest = path[0], path[1:]
    here = f"{where}.{key}"
    current = node.get(key)
    if _shared(node) or _shared(current):
        raise EditError(f"{here} is shared through a YAML anchor or merge; editing it would change other places too")
    if _is_env(current):
        raise EditError(f"{here} is set from the environment ({current}); left untouched")
    if rest and isinstance(current, CommentedMap):
        _set(current, rest, value, here)
        return
    if rest and current is not None:
        raise EditError(f"{here} is {current!r}, not a mapping")
    new = _to_node(value)
    for name in reversed(rest):
        new = CommentedMap([(name, new)])
    if key in node:
        moved = _split_trailing(node, key) if isinstance(new, CommentedMap) else None
        node[key] = new
        _attach_trailing(new, moved)
    else:
        _append(node, key, new)


def _append(node: CommentedMap | CommentedSeq, key: Any, new: Any) -> None:
    """Add `new` at the end of `node` (before an upstream's `rules`, which reads best last).

    The comment lines that followed the entry before it move below the new entry, so a comment
    introducing the next section stays next to it.
    """
    if isinstance(node, CommentedMap) and "rules" in node and key != "rules":
        keys = list(node.keys())
        position = keys.index("rules")
        place = (_deepest_last(node[keys[position - 1]]) or (node, keys[position - 1])) if position else None
        moved = _split_trailing(*place) if place is not None else None
        node.insert(position, key, new)
        if isinstance(new, CommentedMap):
            _attach_trailing(new, moved)
        else:
            _keep(node, key, moved)
        return
    place = _deepest_last(node)
    moved = _split_trailing(*place) if place is not None else None
    if isinstance(node, CommentedSeq):
        node.append(new)
    else:
        node[key] = new
    _attach_trailing(node, moved)


def _keep(node: CommentedMap, key: Any, comment: str | None) -> None:
    """Put `comment` lines after the scalar entry `key`."""
    if comment:
        node.ca.items.setdefault(key, [None, None, None, None])[2] = CommentToken("\n" + comment, CommentMark(0), None)


def _upstream(data: Any, name: str) -> CommentedMap:
    upstreams = data.get("upstreams") if isinstance(data, CommentedMap) else None
    for upstream in upstreams if isinstance(upstreams, CommentedSeq) else ():
        if isinstance(upstream, CommentedMap) and upstream.get("name") == name:
            return upstream
    raise EditError(f"no upstream named {name!r} in the file")


def _rule(upstream: CommentedMap, match: Match, where: str) -> CommentedMap:
    """The rules entry whose match equals `match`; appended (and `rules:` created) when none does."""
    rules = upstream.get("rules")
    if rules is not None and not isinstance(rules, CommentedSeq):
        raise EditError(f"{where}.rules is not a list")
    for entry in rules or ():
        found = entry.get("match") if isinstance(entry, CommentedMap) else None
        if isinstance(found, dict) and (found.get("method", "*"), found.get("tool")) == match.written():
            return entry  # type: ignore[no-any-return]
    written = CommentedMap((key, _match_value(value)) for key, value in match.to_yaml().items())
    written.fa.set_flow_style()
    entry = CommentedMap([("match", written)])
    if match.inherit_from is not None:
        template = _rule(upstream, match.inherit_from, where)
        for key, value in template.items():
            if key != "match":
                entry[key] = _to_node(_plain(value))  # a copy without anchors or comments
    if rules is not None:
        rules.fa.set_block_style()
        _append(rules, len(rules), entry)
    elif "rules" in upstream:  # rules: null
        moved = _split_trailing(upstream, "rules")
        upstream["rules"] = CommentedSeq([entry])
        _attach_trailing(upstream["rules"], moved)
    else:
        _append(upstream, "rules", CommentedSeq([entry]))
    return entry


def edit_text(text: str, changes: tuple[Change, ...] | list[Change]) -> str:
    """`text` with every change applied, everything else as it was."""
    try:
        yaml = _yaml(text)
        data = yaml.load(text)
    except YAMLError as exc:
        raise EditError(f"not YAML: {exc}") from exc
    for change in changes:
        upstream = _upstream(data, change.upstream)
        where = f"upstreams[{change.upstream}]"
        node = upstream if change.match is None else _rule(upstream, change.match, where)
        if change.match is not None:
            where += f".rules[{change.match.describe()}]"
        _set(node, change.key.split("."), change.value, where)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def unified_diff(old: str, new: str, name: str = "proxy.yaml") -> str:
    """A `git apply`-able unified diff of the file (a/NAME, b/NAME)."""
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{name}", f"b/{name}")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)
