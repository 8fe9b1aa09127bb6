"""Small numeric helpers: percentiles from `call_ok` histograms and from exact samples, readable durations.

Kept apart from the aggregation so the rules and the report format numbers the same way, and so the
arithmetic that decides a proposal's value is tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["Histogram", "format_duration", "nice_duration", "percentile"]

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
