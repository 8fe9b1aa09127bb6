"""Advice: one proposal without a change, assembled from the findings a rule cannot mend with config.

Two rules end this way (`rules_upstream.session_lost`, `rules_stdio.stdio`): each finding is an
`AdvicePart` (its words, its numbers, its example events), and `advisory` joins the parts of one
upstream into a single proposal, so an operator reads one note per upstream rather than one per finding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.proposal import Effect, Proposal
from proxy.analyzer.scope import window_evidence
from proxy.analyzer.stats import Share

__all__ = ["AdvicePart", "advisory"]


@dataclass(frozen=True, slots=True)
class AdvicePart:
    """One finding of an advisory: its words, its numbers, its example event ids."""

    title: str
    rationale: str
    effect: str
    numbers: dict[str, float | int]
    evidence: dict[str, object]
    ids: list[int]
    share: Share | None = None


def advisory(
    analysis: Analysis,
    *,
    rule: str,
    target: str,
    title: str,
    parts: Sequence[AdvicePart],
    examples: Callable[[list[int]], list[int]],
    numbers: dict[str, float | int] | None = None,
    counts: dict[str, object] | None = None,
) -> Proposal:
    """The advisory of `parts` (at least one): `title` then each part's title, their rationales and
    effects joined, their numbers and evidence merged over `numbers` and `counts`, and the example event
    ids `examples` picks of each part's."""
    merged_numbers: dict[str, float | int] = dict(numbers or {})
    merged_counts: dict[str, object] = dict(counts or {})
    for part in parts:
        merged_numbers.update(part.numbers)
        merged_counts.update(part.evidence)
    return Proposal(
        rule=rule, target=target,
        title=title + "; ".join(part.title for part in parts),
        rationale=" ".join(part.rationale for part in parts),
        evidence=window_evidence(analysis, [i for part in parts for i in examples(part.ids)], **merged_counts),
        effect=Effect("; ".join(part.effect for part in parts), merged_numbers),
        confidence="low", confidence_reason="advice only: no change to estimate", advisory=True,
        statistics=tuple(share for part in parts if (share := part.share) is not None),
    )  # fmt: skip
