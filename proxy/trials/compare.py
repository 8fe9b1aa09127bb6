"""A proposal's own estimate beside the replayed figures, and whether the replay reproduces it.

The analyzer's rules estimate their effect from counts (`Proposal.effect.numbers`); the replay runs
the same window through the policy logic. Only a few estimate keys say something a replay measures
too, and they are read by name, nothing else about a rule is assumed (rules change):

| key | the replayed figure it is held against |
|---|---|
| `would_complete` | timed-out attempts, before - after |
| `would_succeed` | client-visible errors, before - after |
| `attempts_saved` | upstream attempts, before - after |
| `would_be_served` | stale answers, after - before |

An estimate is **reproduced** when every such key the proposal has is within `TOLERANCE` of its
replayed figure: ``|replayed - estimated| <= max(TOLERANCE_ABS, TOLERANCE_REL * |estimated|)`` (the
rules round and estimate some effects from rates, the replay carries fractions over whole calls).
A proposal with none of these keys has nothing to compare: its numbers are shown as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from proxy.trials.simulate import Figures

__all__ = ["COMPARABLE", "TOLERANCE_ABS", "TOLERANCE_REL", "Comparison", "Estimate", "compare"]

TOLERANCE_ABS: Final = 1
"""An estimate within this many of the replay is reproduced, however small."""
TOLERANCE_REL: Final = 0.1
"""... or within this share of the estimate."""

COMPARABLE: Final[dict[str, tuple[str, Callable[[Figures], int]]]] = {
    "would_complete": ("timed-out attempts avoided", lambda f: f.before.timeouts - f.after.timeouts),
    "would_succeed": ("client-visible errors avoided", lambda f: f.before.errors - f.after.errors),
    "attempts_saved": ("upstream attempts saved", lambda f: f.before.attempts - f.after.attempts),
    "would_be_served": ("more stale answers", lambda f: f.after.served_stale - f.before.served_stale),
}
"""Estimate keys a replay measures: what the replayed figure is, and how it comes from the figures."""

Status = Literal["reproduced", "not_reproduced", "no_estimate"]


@dataclass(frozen=True, slots=True)
class Estimate:
    key: str
    meaning: str
    estimated: float
    replayed: int

    @property
    def within(self) -> bool:
        return abs(self.replayed - self.estimated) <= max(TOLERANCE_ABS, TOLERANCE_REL * abs(self.estimated))


@dataclass(frozen=True, slots=True)
class Comparison:
    estimates: tuple[Estimate, ...]
    status: Status

    @property
    def text(self) -> str:
        """The one-line verdict."""
        if self.status == "no_estimate":
            return f"no estimate to compare (the proposal states none of {', '.join(COMPARABLE)})"
        shown = "; ".join(f"replayed {e.replayed} vs estimated {e.estimated:g} for {e.key}" for e in self.estimates)
        word = "reproduced" if self.status == "reproduced" else "not reproduced"
        return f"{word} ({shown}; tolerance max({TOLERANCE_ABS}, {TOLERANCE_REL:.0%}))"

    def to_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "text": self.text,
            "estimates": [
                {"figure": e.key, "meaning": e.meaning, "estimated": e.estimated, "replayed": e.replayed, "within_tolerance": e.within}
                for e in self.estimates
            ],
        }


def compare(numbers: Mapping[str, float | int], figures: Figures) -> Comparison:
    """Hold the comparable keys of a proposal's `numbers` against `figures` (the proposal's scope)."""
    estimates = tuple(
        Estimate(key, meaning, float(numbers[key]), measure(figures))
        for key, (meaning, measure) in COMPARABLE.items()
        if isinstance(numbers.get(key), int | float) and not isinstance(numbers.get(key), bool)
    )
    if not estimates:
        return Comparison((), "no_estimate")
    return Comparison(estimates, "reproduced" if all(e.within for e in estimates) else "not_reproduced")
