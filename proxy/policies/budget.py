"""The retry budget: retries may be at most `ratio` of recent requests, plus a floor per second.

Without it, a dead upstream behind N clients sees N × max_attempts requests: a retry storm that keeps
it dead. With it (Linkerd's and Finagle's design), retries add at most `ratio` to the load, while the
floor (`min_per_second` over the window) keeps retries possible when traffic is light.
Counts live in a ring of time buckets, so memory is fixed whatever the traffic.
"""

from __future__ import annotations

import math

from proxy.policies.base import Clock
from proxy.config.policies import BudgetConfig

__all__ = ["RetryBudget"]

BUCKETS = 10


class _SlidingCount:
    """Events over the last `window` seconds, in `BUCKETS` slices (resolution window/BUCKETS)."""

    __slots__ = ("_counts", "_slice", "_stamps")

    def __init__(self, window: float) -> None:
        self._slice = window / BUCKETS
        self._counts = [0] * BUCKETS
        self._stamps = [-1] * BUCKETS

    def add(self, now: float) -> None:
        tick = math.floor(now / self._slice)
        index = tick % BUCKETS
        if self._stamps[index] != tick:
            self._stamps[index], self._counts[index] = tick, 0
        self._counts[index] += 1

    def total(self, now: float) -> int:
        oldest = math.floor(now / self._slice) - BUCKETS + 1
        return sum(count for count, stamp in zip(self._counts, self._stamps, strict=True) if stamp >= oldest)


class RetryBudget:
    """One upstream's budget. `record_request()` per client call; `try_spend()` before each retry."""

    __slots__ = ("_clock", "_config", "_requests", "_retries", "exhausted")

    def __init__(self, config: BudgetConfig, clock: Clock) -> None:
        self._config = config
        self._clock = clock
        self._requests = _SlidingCount(config.window)
        self._retries = _SlidingCount(config.window)
        self.exhausted = 0
        """Retries refused so far (for /status and metrics)."""

    @property
    def config(self) -> BudgetConfig:
        return self._config

    def record_request(self) -> None:
        self._requests.add(self._clock.monotonic())

    def allowance(self) -> float:
        """Retries the budget allows over the current window."""
        now = self._clock.monotonic()
        return self._config.min_per_second * self._config.window + self._config.ratio * self._requests.total(now)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False (and counted) when there is none left."""
        now = self._clock.monotonic()
        if self._retries.total(now) + 1 > self.allowance():
            self.exhausted += 1
            return False
        self._retries.add(now)
        return True
