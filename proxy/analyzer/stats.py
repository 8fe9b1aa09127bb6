"""Small numeric helpers: percentiles from `call_ok` histograms and from exact samples, readable durations,
and the confidence bounds the rules decide with (Wilson score bounds of a proportion, `Share`).

Kept apart from the aggregation so the rules and the report format numbers the same way, and so the
arithmetic that decides a proposal's value is tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "Z_95", "Histogram", "Share", "format_duration", "nice_duration", "percentile", "wilson_bounds", "wilson_lower",
    "wilson_upper",
]  # fmt: skip

_NICE_SECONDS = (
    0.01, 0.02, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
    6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0,
)  # fmt: skip
"""The durations a proposal may write: values a person would have typed themselves."""


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q` (0..1) percentile of exact samples, linearly interpolated between ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class Histogram:
    """Latency counts merged from `call_ok` summaries; the last count is everything above the last bound.

    Bucket ``i`` holds latencies in ``(bounds[i-1], bounds[i]]`` (the recorder files a latency with
    `bisect_left`), so a percentile interpolates linearly inside the bucket where its rank falls; the
    overflow bucket reaches up to the largest latency any summary reported.
    """

    __slots__ = ("bounds", "counts", "max_ms")

    def __init__(self) -> None:
        self.bounds: tuple[float, ...] = ()
        self.counts: list[int] = []
        self.max_ms = 0.0

    def add(self, bounds: Sequence[float], counts: Sequence[int], max_ms: float | None) -> bool:
        """Merge one summary; False (ignored) when its bounds differ from the ones already merged."""
        if len(counts) != len(bounds) + 1:
            return False
        if not self.bounds:
            self.bounds, self.counts = tuple(bounds), [0] * len(counts)
        elif tuple(bounds) != self.bounds:
            return False
        for index, count in enumerate(counts):
            self.counts[index] += int(count)
        if max_ms is not None:
            self.max_ms = max(self.max_ms, float(max_ms))
        return True

    def merge(self, other: Histogram) -> None:
        """Add another histogram's counts (a later time slice of the same target): the same as having
        added its summaries here, since it kept only those matching its own first bounds."""
        if other.counts:
            self.add(other.bounds, other.counts, other.max_ms)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def percentile(self, q: float) -> float | None:
        """The `q` (0..1) percentile in ms, or None without data."""
        total = self.total
        if total == 0:
            return None
        rank = q * total
        cumulative = 0
        for index, count in enumerate(self.counts):
            if count and cumulative + count >= rank:
                lower = self.bounds[index - 1] if index > 0 else 0.0
                upper = self.bounds[index] if index < len(self.bounds) else max(self.max_ms, lower)
                return lower + (upper - lower) * (rank - cumulative) / count
            cumulative += count
        return self.max_ms  # pragma: no cover - the loop always returns when total > 0


def nice_duration(seconds: float, cap: float | None = None) -> float:
    """The smallest readable duration at or above `seconds` (whole minutes past the table), at most `cap`."""
    value = next((nice for nice in _NICE_SECONDS if nice >= seconds - 1e-9), None)
    if value is None:
        value = math.ceil(seconds / 60.0) * 60.0
    return min(value, cap) if cap is not None else value


def format_duration(seconds: float) -> str:
    """``250ms``, ``1.5s``, ``4s``, ``2m``, ``90s``: the way config/proxy.yaml writes durations."""
    if seconds < 1.0:
        return f"{round(seconds * 1000):d}ms"
    if seconds >= 60.0 and seconds % 60.0 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


Z_95: Final = 1.645
"""One-sided 95%: the confidence every rule decides at."""
Z_975: Final = 1.96
Z_995: Final = 2.576
LEVELS: Final = ((Z_995, "high"), (Z_975, "medium"), (Z_95, "low"))
"""A decision that still holds at a stricter z earns a higher confidence level (one-sided 99.5% / 97.5% / 95%)."""


def wilson_bounds(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``k/n``: each end a one-sided bound at `z`.

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = k/n``. Unlike the normal
    approximation it stays inside [0, 1] and is honest for small n and for p at 0 or 1 (8 of 8 gives a
    lower bound of n/(n+z²) = 0.747 at z = 1.645, not 1), which is what lets a rule decide on a handful
    of events when they all agree and stay quiet on many that do not. (0, 1) without data.
    """
    if n <= 0:
        return 0.0, 1.0
    k = min(max(k, 0), n)
    p, z2 = k / n, z * z
    denominator = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def wilson_lower(k: int, n: int, z: float = Z_95) -> float:
    """The share is at least this, with one-sided confidence given by `z` (0 without data)."""
    return wilson_bounds(k, n, z)[0]


def wilson_upper(k: int, n: int, z: float = Z_95) -> float:
    """The share is at most this, with one-sided confidence given by `z` (1 without data)."""
    return wilson_bounds(k, n, z)[1]


@dataclass(frozen=True, slots=True)
class Share:
    """A proportion ``k/n`` a rule decides on, and its claim: the Wilson bound on one `side` against `threshold`.

    ``side="lower"`` claims the true share is at least `threshold` (the lower bound must reach it);
    ``"upper"`` claims it is at most `threshold`. The claim is made at one-sided 95% (`Z_95`); `level`
    says how much stricter a confidence it survives.
    """

    what: str
    """What is counted, in words: "timed-out attempts that would complete"."""
    k: int
    n: int
    side: Literal["lower", "upper"]
    threshold: float

    @property
    def proportion(self) -> float:
        return self.k / self.n if self.n else 0.0

    def bound(self, z: float = Z_95) -> float:
        low, high = wilson_bounds(self.k, self.n, z)
        return low if self.side == "lower" else high

    def holds(self, z: float = Z_95) -> bool:
        if self.n <= 0:
            return False
        bound = self.bound(z)
        return bound >= self.threshold if self.side == "lower" else bound <= self.threshold

    @property
    def level(self) -> str:
        """high / medium / low: the strictest of one-sided 99.5%, 97.5%, 95% at which the claim holds."""
        return next((name for z, name in LEVELS if self.holds(z)), "none")

    def describe(self) -> str:
        sign = ">=" if self.side == "lower" else "<="
        return (
            f"{self.what}: {self.k}/{self.n} ({self.proportion:.1%}), 95% {self.side} bound "
            f"{self.bound():.1%} {sign} {self.threshold:.0%}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the counts, the proportion, the bound and what it was held against."""
        return {
            "what": self.what, "k": self.k, "n": self.n, "proportion": round(self.proportion, 4),
            "side": self.side, "bound": round(self.bound(), 4), "threshold": self.threshold,
            "confidence": 0.95, "method": "wilson", "holds": self.holds(), "level": self.level,
        }  # fmt: skip
