"""Retry: exponential backoff with full jitter, Retry-After, an overall deadline and a retry budget.

The retry stage is where a `Call` becomes its tries: one `Attempt` each, numbered from 1, all with the
call's deadline; the stages inside it see only the try. What it returns or raises carries the try it
came from (`Reply.attempt`, `ProxyError.attempt`), which the events about the call's end name.

An attempt is retried only when all of these hold:

- its verdict (`proxy.policies.failures`) has a `retry_on` key the policy lists;
- the call is idempotent (read method, trusted annotation, or the policy says so), or the request
  provably never reached the upstream (`never_sent`: connect refused, DNS, pool wait);
- attempts are left (`max_attempts` counts the first one);
- an upstream `Retry-After` is not longer than `backoff.max_retry_after` (a longer one is not obeyed
  blindly: the retries stop and the client hears the upstream's answer with its `retryAfter`);
- the backoff still fits before the call's deadline (`timeouts.total`, set here, covering every
  attempt and every backoff);
- the upstream's retry budget has a retry left;
- the answer is not the one the previous attempt got: an application answer (a JSON-RPC error, when
  `server_error` is listed) that repeats itself is deterministic, and a retry would only repeat it.

By default only what a retry can fix is retried (connect errors, timeouts and 502/503/504 of idempotent
calls, 429 after its Retry-After); JSON-RPC errors only when `server_error` is listed. `CircuitOpen`,
`RateLimited`, `RetryBudgetExhausted` and the proxy's own overload are never retried. When retries stop, the client
gets the last attempt's outcome: the upstream's answer as it was, or the last error, except that a
stop for lack of budget turns an error into `RetryBudgetExhausted` (naming the last failure), so
operators can tell a budget-limited failure from a plain one. (An upstream answer that retrying could
not fix, a 429 included, reaches the client unchanged.) Retry acts only before the first byte
of an answer left for the client: the stages below return a streamed answer only once committed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


from proxy.errors import CircuitOpen, ProxyError, ProxyOverloaded, RateLimited, RetryBudgetExhausted
from proxy.policies.failures import Verdict, classify_error, verdict_of
from proxy.policies.base import NULL_OBSERVER, Attempt, AttemptHandler, Call, Clock, Observer, Reply
from proxy.policies.budget import RetryBudget
from proxy.config.policies import BackoffConfig, BudgetConfig, RetryConfig

__all__ = ["RetryStage", "backoff_ceiling"]


_NEVER_RETRIED = (CircuitOpen, RateLimited, RetryBudgetExhausted, ProxyOverloaded)


def backoff_ceiling(backoff: BackoffConfig, attempt: int) -> float:
    """The upper bound of the sleep after attempt number `attempt` (1-based)."""
    return float(min(backoff.max, backoff.base * 2 ** (attempt - 1)))


class RetryStage:
    """Retries one upstream's calls; owns that upstream's retry budgets (one per budget config)."""

    __slots__ = ("_budgets", "_clock", "_observer", "_random", "_wall")

    def __init__(
        self,
        clock: Clock,
        observer: Observer = NULL_OBSERVER,
        rng: Callable[[], float] = random.random,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._observer = observer
        self._random = rng
        self._wall = wall
        self._budgets: dict[BudgetConfig, RetryBudget] = {}

    def budget(self, config: BudgetConfig) -> RetryBudget:
        budget = self._budgets.get(config)
        if budget is None:
            budget = self._budgets[config] = RetryBudget(config, self._clock)
        return budget

    @property
    def budgets(self) -> list[RetryBudget]:
        return list(self._budgets.values())

    async def __call__(self, call: Call, next: AttemptHandler) -> Reply:
        """Make `call`'s tries, one `Attempt` each, until one may stand; the outcome carries the last try
        (`Reply.attempt`, `ProxyError.attempt`): the events about the call's outcome name it."""
        policy = call.policy.retry
        budget = self.budget(policy.budget)
        budget.record_request()
        deadline = self._clock.monotonic() + call.policy.timeouts.total
        number = 0
        previous: Verdict | None = None
        while True:
            number += 1
            attempt = Attempt(call, number, deadline)
            reply: Reply | None = None
            error: ProxyError | None = None
            try:
                reply = await next(attempt)
                verdict = verdict_of(reply, call.session_id is not None, self._wall())
            except _NEVER_RETRIED as exc:
                exc.attempt = attempt
                raise
            except ProxyError as exc:
                error, verdict = exc, classify_error(exc)
            if verdict.ok:
                reply.attempt = attempt  # type: ignore[union-attr]
                return reply  # type: ignore[return-value]
            stop, delay = self._plan(attempt, verdict, policy)
            if stop is None and _repeated(previous, verdict):
                stop = "same_answer"
            previous = verdict
            if stop is None and not budget.try_spend():
                stop = "budget"
            if stop is not None:
                return self._give_up(attempt, stop, verdict, reply, error)
            if reply is not None and reply.stream is not None:
                await reply.stream.close()
            self._observer.policy_event(
                "retry", attempt, failure=verdict.kind.value, delay_ms=round(delay * 1000, 3), error=verdict.as_error()
            )
            await self._clock.sleep(delay)

    def _plan(self, attempt: Attempt, verdict: Verdict, policy: RetryConfig) -> tuple[str | None, float]:
        """(why retrying stops, or None; the backoff before the next attempt)."""
        key = verdict.retry_key
        if key is None or key not in policy.retry_on:
            return "not_retryable", 0.0
        if not (attempt.call.idempotent or verdict.never_sent):
            return "not_idempotent", 0.0
        if attempt.number >= policy.max_attempts:
            return "max_attempts", 0.0
        delay = self._random() * backoff_ceiling(policy.backoff, attempt.number)
        if verdict.retry_after is not None:
            if verdict.retry_after > policy.backoff.max_retry_after:
                return "retry_after_too_long", 0.0
            delay = max(delay, verdict.retry_after)
        assert attempt.deadline is not None
        if self._clock.monotonic() + delay >= attempt.deadline:
            return "deadline", 0.0
        return None, delay

    def _give_up(
        self, attempt: Attempt, stop: str, verdict: Verdict, reply: Reply | None, error: ProxyError | None
    ) -> Reply:
        if stop == "budget":  # whether the client then gets the upstream's answer or an error: counted
            self._observer.policy_event(
                "retry_budget_exhausted", attempt, failure=verdict.kind.value, error=verdict.as_error()
            )
        elif attempt.number > 1:
            self._observer.policy_event("retry_exhausted", attempt, why=stop, error=verdict.as_error())
        if error is None:
            assert reply is not None
            reply.attempt = attempt
            return reply
        if stop == "budget":
            exhausted = RetryBudgetExhausted(
                f"retry budget exhausted after {attempt.number} attempt(s); last failure: {error.message}",
                upstream=attempt.call.upstream,
                retry_after=error.retry_after,
            )
            exhausted.attempt = attempt
            raise exhausted from error
        error.attempt = attempt
        raise error


def _repeated(previous: Verdict | None, verdict: Verdict) -> bool:
    """The same application error as the attempt before: the server's deterministic answer to this request."""
    return (
        previous is not None
        and verdict.application_answer
        and (previous.kind, previous.jsonrpc_code, previous.message) == (verdict.kind, verdict.jsonrpc_code, verdict.message)
    )
