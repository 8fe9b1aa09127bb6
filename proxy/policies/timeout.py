"""The per-try timeout: each attempt gets `timeouts.per_try`, never more than the call's deadline leaves.

It is the innermost stage, so a timed-out attempt is seen by the breaker (as a failure) and by retry
(as a `timeout`). An attempt whose request never reached a socket is not an upstream timeout: still
queued for a pooled connection it is `ProxyOverloaded` (the proxy's limit, counted nowhere), still
connecting it is `NeverSent` (the upstream never saw it, so any call may retry). It bounds the attempt
up to the answer's headers and, for JSON answers and buffered read methods, the whole body; a streamed
answer is then paced by `stream_idle` instead.

**Timeout observation.** A timeout says only that an answer was late, not by how much, and that is
what a better limit must be chosen from. So after a timeout of an *idempotent* call (a read, or a tool
known to be safe to repeat) the attempt is not cancelled at once: it runs on in the background for up
to `observe` seconds, its answer is never delivered, and a ``timeout_observed`` event records when it
would have arrived. Non-idempotent attempts are cancelled at once, as are observations beyond
`MAX_OBSERVATIONS` at a time, so a failing upstream never piles up work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Final

from proxy.errors import NeverSent, ProxyOverloaded, UpstreamTimeout
from proxy.mcp.jsonrpc import CLIENT_PACED_METHODS
from proxy.policies.base import NULL_OBSERVER, Call, Clock, Handler, Observer, Reply
from proxy.tasks import Owner, cancel_and_wait, spawn

__all__ = ["MAX_OBSERVATIONS", "TimeoutStage"]

MAX_OBSERVATIONS: Final = 64
_observing: Owner = set()  # process-wide, so the bound holds across reloads
_attempts: Owner = set()  # attempts raced against their time (awaited by their call, or by a watcher)


class TimeoutStage:
    """Bounds one attempt; optionally observes how late a timed-out idempotent answer really was."""

    __slots__ = ("_clock", "_observe", "_observer")

    def __init__(self, clock: Clock, observer: Observer = NULL_OBSERVER, observe: float = 0.0) -> None:
        self._clock = clock
        self._observer = observer
        self._observe = observe

    async def __call__(self, call: Call, next: Handler) -> Reply:
        limit = call.policy.timeouts.per_try
        if call.deadline is not None:
            left = call.deadline - self._clock.monotonic()
            if left <= 0:
                raise UpstreamTimeout("the call's deadline passed before this attempt", upstream=call.upstream)
            limit = min(limit, left)
        if self._observe > 0 and call.idempotent:
            return await self._observed(call, next, limit)
        try:
            async with asyncio.timeout(limit):
                return await next(call)
        except TimeoutError:
            if not call.written:
                raise _still_waiting(call, limit) from None
            self._timed_out(call, limit, observing=False)
            raise _timeout(call, limit) from None

    def _timed_out(self, call: Call, limit: float, observing: bool) -> None:
        self._observer.policy_event("timeout", call, limit_ms=round(limit * 1000, 3), observing=observing)

    async def _observed(self, call: Call, next: Handler, limit: float) -> Reply:
        started = time.monotonic()
        attempt = spawn(_attempt(next, call), name=f"attempt:{call.call_id}:{call.attempt}", owner=_attempts, awaited=True)
        try:
            done, _ = await asyncio.wait({attempt}, timeout=limit)
        except asyncio.CancelledError:
            await _abandon(attempt)
            raise
        if done:
            return attempt.result()
        if not call.written:
            await _abandon(attempt)
            raise _still_waiting(call, limit)
        observing = len(_observing) < MAX_OBSERVATIONS
        attempt.add_done_callback(_retrieve)  # however it ends, even after shutdown, nobody is left unheard
        self._timed_out(call, limit, observing)
        if observing:
            as_it_was = dataclasses.replace(call)  # retry moves `call.attempt` on; the event names this one
            spawn(self._watch(attempt, as_it_was, limit, started), name=f"observe-timeout:{call.call_id}:{call.attempt}", owner=_observing)
        else:
            await _abandon(attempt)
        raise _timeout(call, limit)

    async def _watch(self, attempt: asyncio.Future[Reply], call: Call, limit: float, started: float) -> None:
        """Wait (bounded) for a timed-out attempt, record when it finished, and throw its answer away."""
        done, _ = await asyncio.wait({attempt}, timeout=self._observe)
        observed_ms: float | None = None
        if done and not attempt.cancelled() and attempt.exception() is None:
            observed_ms = round((time.monotonic() - started) * 1000, 3)
            reply = attempt.result()
            if reply.stream is not None:
                await reply.stream.close()
        elif not done:
            await _abandon(attempt)
        fields: dict[str, object] = {"limit_ms": round(limit * 1000, 3), "observed_ms": observed_ms}
        if observed_ms is None:
            fields["waited_ms"] = round((time.monotonic() - started) * 1000, 3)
        self._observer.policy_event("timeout_observed", call, **fields)


async def _abandon(attempt: asyncio.Future[Reply]) -> None:
    """Stop an attempt nobody will read. Cancelled in the very turn it finished, it may hold a streamed
    answer: that stream is closed here, or its upstream connection would stay out of the pool."""
    await cancel_and_wait([attempt])
    if not attempt.cancelled() and attempt.exception() is None and (stream := attempt.result().stream) is not None:
        await stream.close()


async def _attempt(next: Handler, call: Call) -> Reply:
    """One attempt as a coroutine of its own, so it can run on as a task once its time is up."""
    return await next(call)


def _retrieve(attempt: asyncio.Future[Reply]) -> None:
    """Take an abandoned attempt's exception, so asyncio never logs it as "never retrieved" (a traceback
    inside the JSON log) when the pool closes under an observation at shutdown."""
    if not attempt.cancelled():
        attempt.exception()


def _timeout(call: Call, limit: float) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"upstream did not answer within {limit:.3g}s",
        upstream=call.upstream,
        excused=call.method in CLIENT_PACED_METHODS or call.waited,
    )


def _still_waiting(call: Call, limit: float) -> NeverSent | ProxyOverloaded:
    """The attempt ran out of time before its request reached a socket: not an upstream timeout. Still
    queued for a pooled connection (all busy), it is the proxy's own overload; connecting, the upstream
    did not accept in time, which any call may retry since the upstream never saw the request."""
    if call.queued:  # still in the queue when time ran out
        return ProxyOverloaded(
            f"no free upstream connection within {limit:.3g}s; the request was not sent", upstream=call.upstream
        )
    return NeverSent(f"no connection to the upstream within {limit:.3g}s; the request was not sent", upstream=call.upstream)
