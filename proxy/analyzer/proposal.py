"""A proposal: one config change the events argue for, with its reasons, evidence and expected effect.

A proposal is data: the rules build it, `engine.analyze` attaches the diff of the user's own file,
`apply.apply_proposal` writes it, the report prints it. Its id is a hash of what it changes (rule,
target, keys and values), so the same advice on the next run has the same id and can be tracked,
approved or dismissed across runs.

Method and tool names come from clients, and a rule's `match` is a glob (``fnmatch``) in a file whose
strings are interpolated (``${VAR}``). So a name never goes into a match as it is: `literal_glob`
turns it into the pattern that matches that name alone (``*`` -> ``[*]``, ``?`` -> ``[?]``,
``[`` -> ``[[]``), and `yaml_literal` writes that pattern so that loading the file gives it back
(``${`` -> ``$${``, the loader's escape). `Match` holds patterns as the loaded config has them;
`Match.to_yaml` gives them as the file must hold them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from proxy.analyzer.stats import Share
from proxy.config.policies import MatchConfig

__all__ = [
    "NOTHING", "Addressed", "Change", "Confidence", "Effect", "Match", "Proposal", "confidence", "decided",
    "literal_glob", "yaml_literal",
]  # fmt: skip

Confidence = Literal["low", "medium", "high"]

_GLOB_SYNTAX = re.compile(r"[*?\[]")


def literal_glob(name: str) -> str:
    """The fnmatch pattern that matches `name` and nothing else: each ``*``, ``?`` and ``[`` in brackets."""
    return _GLOB_SYNTAX.sub(lambda m: f"[{m.group(0)}]", name)


def yaml_literal(value: str) -> str:
    """`value` as the config file must hold it so that loading gives `value` back: ``${`` written ``$${``."""
    return value.replace("${", "$${")


@dataclass(frozen=True, slots=True)
class Match:
    """A rule's `match`: a method glob ("*" = any) and an optional tool glob, as the loaded config holds them.

    For a call kind seen in events use `exact`, never the names themselves: they are client-chosen.
    """

    method: str = "*"
    tool: str | None = None
    inherit_from: Match | None = field(default=None, compare=False)
    """For a new exact rule carved out of a glob rule: that rule, whose other settings the new one copies
    (so the target keeps everything it had but the change)."""

    @classmethod
    def from_config(cls, match: MatchConfig) -> Match:
        return cls(match.method, match.tool)

    @classmethod
    def exact(cls, method: str, tool: str | None) -> Match:
        """The match for exactly this call kind: the tool for tools/call, else the method, as literal patterns."""
        return cls(tool=literal_glob(tool)) if tool is not None else cls(method=literal_glob(method))

    def exact_for(self, method: str, tool: str | None) -> bool:
        """True when this match selects exactly that call kind and nothing else."""
        if tool is not None:
            return self.tool == literal_glob(tool) and self.method in ("*", "tools/call")
        return self.tool is None and self.method == literal_glob(method)

    def written(self) -> tuple[str, str | None]:
        """(method, tool) as the file holds them (``$${`` for a literal ``${``)."""
        return yaml_literal(self.method), None if self.tool is None else yaml_literal(self.tool)

    def to_yaml(self) -> dict[str, str]:
        """The mapping written into a new rule, as the file holds it: only the keys that narrow it."""
        method, tool = self.written()
        written: dict[str, str] = {}
        if self.method != "*":
            written["method"] = method
        if tool is not None:
            written["tool"] = tool
        return written

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.to_yaml().items()) or "any call"


@dataclass(frozen=True, slots=True)
class Change:
    """Set `key` (dotted, relative to the upstream or to the rule) to `value` in one upstream.

    `match` None means the upstream's defaults; otherwise the rules entry whose match equals it (created
    when absent). `value` is written as is, so durations arrive here already readable ("4s"). `old` is
    the effective value before, for people: the edit never reads it.
    """

    upstream: str
    match: Match | None
    key: str
    value: Any
    old: Any = None

    @property
    def where(self) -> str:
        scope = "defaults" if self.match is None else f"rule ({self.match.describe()})"
        return f"upstream {self.upstream}, {scope}"

    def describe(self) -> str:
        return f"{self.where}: {self.key}: {_show(self.old)} -> {_show(self.value)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "match": None if self.match is None else self.match.to_yaml(),
            "setting": self.key,  # not "key": a field of that name reads as a secret to `proxy.redact`
            "value": self.value,
            "old": self.old,
        }


def _show(value: Any) -> str:
    return "unset" if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Effect:
    """The expected effect, estimated from the window's own events: a sentence and its numbers."""

    text: str
    numbers: dict[str, float | int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Proposal:
    """One change to the policy file, and why. `advisory` proposals carry no change: advice only."""

    rule: str
    target: str
    title: str
    rationale: str
    evidence: dict[str, Any]
    effect: Effect
    confidence: Confidence
    confidence_reason: str
    changes: tuple[Change, ...] = ()
    advisory: bool = False
    diff: str | None = None
    statistics: tuple[Share, ...] = ()
    """The proportions the rule decided on, each with its 95% Wilson bound and the threshold it passed
    (empty for the rules that decide on a count: breaker and health flaps, lost sessions)."""
    addresses: frozenset[int] = frozenset()
    """The client-visible failures (ids of `call_failed` events) this change is expected to remove: those
    whose cause it fixes. Rules run later in `engine.RULES` (the symptom rules: a cached fallback, a longer
    max_stale) leave them out once this proposal is kept, so a stale answer never stands in for a failure
    whose cause has its own proposal. Not part of the id: it moves with the window, the advice does not."""
    addresses_openings: frozenset[int] = frozenset()
    """The breaker openings (ids of their `breaker_state` events) this change is expected to prevent:
    `breaker_flaps` does not count them (the breaker did its job on a cause that has its own proposal)."""

    @property
    def id(self) -> str:
        """Stable across runs: the rule, the target and the change (keys and new values), hashed; never the
        statistics, which move with every event while the advice stays the same."""
        what = [self.rule, self.target, [[c.upstream, c.match and c.match.to_yaml(), c.key, c.value] for c in self.changes]]
        return hashlib.sha256(orjson.dumps(what, option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]

    def with_diff(self, diff: str) -> Proposal:
        return dataclasses.replace(self, diff=diff)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the `analyze --json` shape)."""
        return {
            "id": self.id,
            "rule": self.rule,
            "target": self.target,
            "title": self.title,
            "rationale": self.rationale,
            "evidence": self.evidence,
            "effect": {"text": self.effect.text, "numbers": dict(self.effect.numbers)},
            "confidence": {
                "level": self.confidence, "reason": self.confidence_reason,
                "statistics": [share.to_dict() for share in self.statistics],
            },  # fmt: skip
            "changes": [change.to_dict() for change in self.changes],
            "addresses": {"failures": len(self.addresses), "openings": len(self.addresses_openings)},
            "advisory": self.advisory,
            "diff": self.diff,
        }


@dataclass(frozen=True, slots=True)
class Addressed:
    """What the proposals kept so far address (`Proposal.addresses`, `Proposal.addresses_openings`), together.

    The engine hands it to each rule in turn, grown by the proposals of the rules before it that survived
    validation and the safety guard (`engine.propose`): a symptom rule leaves out the failures in
    `failures`, and `breaker_flaps` the openings in `openings`.
    """

    failures: frozenset[int] = frozenset()
    openings: frozenset[int] = frozenset()

    def adding(self, proposal: Proposal) -> Addressed:
        """This and what `proposal` addresses."""
        if not (proposal.addresses or proposal.addresses_openings):
            return self
        return Addressed(self.failures | proposal.addresses, self.openings | proposal.addresses_openings)


NOTHING = Addressed()
"""Nothing addressed yet: what the first rule sees, and the default of a rule called on its own."""


_RANK: dict[str, int] = {"none": 0, "low": 1, "medium": 2, "high": 3}


def decided(*shares: Share) -> tuple[Confidence, str]:
    """The level and reason of a decision made on `shares` (each holding at one-sided 95%): the level is
    the weakest share's (`Share.level`: high when it still holds at 99.5%, medium at 97.5%)."""
    weakest = min((share.level for share in shares), key=_RANK.__getitem__, default="low")
    level: Confidence = "high" if weakest == "high" else "medium" if weakest == "medium" else "low"
    strictest = {"high": "99.5%", "medium": "97.5%"}.get(level, "95%")
    return level, "; ".join(share.describe() for share in shares) + f" (holds at one-sided {strictest})"


def confidence(evidence: int, minimum: int, what: str) -> tuple[Confidence, str]:
    """For the rules that decide on a count (no proportion to bound): high from 5x the minimum evidence,
    medium from 2x, else low; with the reason in words."""
    if evidence >= 5 * minimum:
        return "high", f"{evidence} {what}, at least {5 * minimum} needed for high confidence"
    if evidence >= 2 * minimum:
        return "medium", f"{evidence} {what}; {5 * minimum} would give high confidence"
    return "low", f"only {evidence} {what} (minimum {minimum}); {2 * minimum} would give medium confidence"
