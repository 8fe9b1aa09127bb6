"""Circuit breakers: pybreaker's state machine and storage, behind one asyncio adapter. Every breaker
decision lives in this module.

pybreaker 1.4 has no working asyncio path (its `call()` on a coroutine records a success and never a
failure; `calling()` counts `CancelledError` as a failure and admits unlimited half-open calls; its
clock is `datetime.now`). So the adapter drives pybreaker's public transitions (`open`, `half_open`,
`close`) and counters itself, with these semantics:

- only server-side failures count (`Verdict.server_failure`: connect errors, lost connections,
  timeouts, 5xx, JSON-RPC server errors); a 429, a client error, a tool's `isError` result and a
  cancelled call count as nothing;
- closed → open after `failure_threshold` consecutive failures, or when `failure_rate` of the calls in
  the last `window` failed (once `min_calls` calls were seen);
- open: calls fail fast with `CircuitOpen` (its `retryAfter` = time left) until `reset_timeout` passes
  on the injected clock;
- half-open: exactly `half_open_max_calls` trial calls are admitted; when all of them succeed the
  breaker closes, the first failed trial opens it again; a cancelled trial frees its slot.

Breakers are per upstream, or per tool (`scope: tool`), and per breaker config, so a rule with its own
thresholds never shares counts with another. State changes are logged and exported as metrics.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pybreaker
from cachetools import LRUCache

from proxy.errors import CircuitOpen
from proxy.failures import CANCELLED, Verdict, judged
from proxy.policies.base import NULL_OBSERVER, Call, Clock, Handler, Observer, Reply
from proxy.policy_config import BreakerConfig

__all__ = ["Breaker", "BreakerStage"]


CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
MAX_TOOL_BREAKERS = 1000
_NO_CONSECUTIVE_LIMIT = 2**31

class _Transitions(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breaker) -> None:
        self._owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self._owner._changed(old_state.name if old_state is not None else CLOSED, new_state.name)


class Breaker:
    """One circuit."""

    __slots__ = ("_cb", "_clock", "_observer", "_opened_at", "_outcomes", "_period", "_trials", "config", "name", "upstream")

    def __init__(
        self, upstream: str, name: str, config: BreakerConfig, clock: Clock, observer: Observer = NULL_OBSERVER
    ) -> None:
        self.upstream = upstream
        self.name = name
        self.config = config
        self._clock = clock
        self._observer = observer
        self._opened_at = 0.0
        self._trials = 0
        self._period = 0
        """Counts half-open periods: a trial speaks only for the period that admitted it."""
        self._outcomes: deque[tuple[float, bool]] = deque()
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.consecutive_threshold or _NO_CONSECUTIVE_LIMIT,
            reset_timeout=config.reset_timeout,
            success_threshold=config.half_open_max_calls,
            listeners=[_Transitions(self)],
            name=name,
        )

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self._cb.current_state)

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return int(self._cb.fail_counter)

    def _changed(self, old: str, new: str) -> None:
        if new == OPEN:
            self._opened_at = self._clock.monotonic()
        if new == HALF_OPEN:
            self._period += 1
        if new != HALF_OPEN:
            self._trials = 0
        self._outcomes.clear()
        self._observer.policy_event("breaker_state", None, upstream=self.upstream, breaker=self.name, old=old, new=new)

    def admit(self) -> int | None:
        """Let a call through, or raise `CircuitOpen`; a half-open trial gets its period's number, others None."""
        upstream = self.upstream
        state = self.state
        if state == OPEN:
            left = self._opened_at + self.config.reset_timeout - self._clock.monotonic()
            if left > 0:
                self._observer.policy_event("circuit_open", None, upstream=upstream, breaker=self.name)
                raise CircuitOpen(f"circuit {self.name} is open", upstream=upstream, retry_after=left)
            self._cb.half_open()
            state = HALF_OPEN
        if state == HALF_OPEN:
            if self._trials >= self.config.half_open_max_calls:
                self._observer.policy_event("circuit_open", None, upstream=upstream, breaker=self.name)
                raise CircuitOpen(
                    f"circuit {self.name} is half-open and its trial calls are taken",
                    upstream=upstream,
                    retry_after=self.config.reset_timeout,
                )
            self._trials += 1
            return self._period
        return None

    def record(self, trial: int | None, verdict: Verdict) -> None:
        """Count the outcome of an admitted call (`trial`: what `admit` returned for it)."""
        state = self.state
        current = trial is not None and trial == self._period and state == HALF_OPEN
        if verdict is CANCELLED or not (verdict.ok or verdict.server_failure):
            if current:
                self._trials -= 1  # nothing learned: the slot goes to the next call
            return
        storage = self._cb._state_storage
        if state == HALF_OPEN:
            if not current:
                return  # admitted while closed, or a trial of an earlier period: only this period's trials decide
            if verdict.server_failure:
                self._cb.open()
                return
            storage.increment_success_counter()
            if storage.success_counter >= self.config.half_open_max_calls:
                self._cb.close()
            return
        if state != CLOSED:
            return  # a call admitted before the breaker opened: its outcome is stale
        if verdict.ok:
            storage.reset_counter()
        else:
            storage.increment_counter()
        if self._tripped(verdict.server_failure):
            self._cb.open()

    def _tripped(self, failed: bool) -> bool:
        """Record the outcome; True when a failure just crossed the threshold (a success never trips)."""
        config = self.config
        if config.failure_rate is None:
            return failed and self.failures >= (config.consecutive_threshold or _NO_CONSECUTIVE_LIMIT)
        now = self._clock.monotonic()
        self._outcomes.append((now, failed))
        while self._outcomes and self._outcomes[0][0] <= now - config.window:
            self._outcomes.popleft()
        calls = len(self._outcomes)
        return failed and calls >= config.min_calls and sum(f for _, f in self._outcomes) / calls >= config.failure_rate


class BreakerStage:
    """Guards each attempt with its breaker (per upstream or per tool, per breaker config)."""

    __slots__ = ("_breakers", "_clock", "_observer", "_upstream")

    def __init__(self, upstream: str, clock: Clock, observer: Observer = NULL_OBSERVER) -> None:
        self._upstream = upstream
        self._clock = clock
        self._observer = observer
        self._breakers: LRUCache[tuple[BreakerConfig, str | None], Breaker] = LRUCache(maxsize=MAX_TOOL_BREAKERS)

    def breaker_for(self, call: Call) -> Breaker | None:
        config = call.policy.breaker
        if not config.enabled:
            return None
        tool = (call.tool or call.method) if config.scope == "tool" else None
        key = (config, tool)
        breaker = self._breakers.get(key)
        if breaker is None:
            name = self._upstream if tool is None else f"{self._upstream}/{tool}"
            breaker = self._breakers[key] = Breaker(self._upstream, name, config, self._clock, self._observer)
        return breaker

    @property
    def breakers(self) -> list[Breaker]:
        return list(self._breakers.values())

    async def __call__(self, call: Call, next: Handler) -> Reply:
        breaker = self.breaker_for(call)
        if breaker is None:
            return await next(call)
        trial = breaker.admit()
        return await judged(call, next, lambda verdict: breaker.record(trial, verdict))
