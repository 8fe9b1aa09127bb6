"""The per-try timeout: each attempt gets `timeouts.per_try`, never more than the call's deadline leaves.

It is the innermost stage, so a timed-out attempt is seen by the breaker (as a failure) and by retry
(as a `timeout`). It bounds the attempt up to the answer's headers and, for JSON answers and
buffered read methods, the whole body; a streamed answer is then paced by `stream_idle` instead.
"""

from __future__ import annotations

import asyncio

from proxy.errors import UpstreamTimeout
from proxy.policies.base import Call, Clock, Handler, Reply

__all__ = ["TimeoutStage"]


class TimeoutStage:
    """Bounds one attempt."""

    __slots__ = ("_clock",)

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    async def __call__(self, call: Call, next: Handler) -> Reply:
        limit = call.policy.timeouts.per_try
        if call.deadline is not None:
            left = call.deadline - self._clock.monotonic()
            if left <= 0:
                raise UpstreamTimeout("the call's deadline passed before this attempt", upstream=call.upstream)
            limit = min(limit, left)
        try:
            async with asyncio.timeout(limit):
                return await next(call)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream did not answer within {limit:.3g}s", upstream=call.upstream) from None
