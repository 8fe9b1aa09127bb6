"""The per-try timeout: each attempt gets `timeouts.per_try`, never more than the call's deadline leaves.

It is the innermost stage, so a timed-out attempt is seen by the breaker (as a failure) and by retry
(as a `timeout`). An attempt whose request never reached a socket is not an upstream timeout: still
queued for a pooled connection it is `ProxyOverloaded` (the proxy's limit, counted nowhere), still
connecting it is `NeverSent` (the upstream never saw it, so any call may retry). It bounds the attempt
up to the answer's headers and, for JSON answers and buffered read methods, the whole body; a streamed
answer is then paced by `stream_idle` instead. What it reads of the try is the try's own `Attempt`: its
deadline, and what the transport reported (`written`, `queued`, `waited`).

**Timeout observation.** A timeout says only that an answer was late, not by how much, and that is
what a better limit must be chosen from. So after a timeout of an attempt whose request was written
the attempt is not cancelled at once: it runs on in the background for up to `observe` seconds, its
answer is never delivered, and a ``timeout_observed`` event records when it would have arrived; it
holds the timed-out `Attempt`, so the event names that try even once the retry stage has made the next
one. This holds whatever the call's idempotency. A write (a tool not known to be safe to repeat) that
timed out is executing upstream anyway: letting it finish costs the upstream nothing more, and it is the
only way to learn how long the write really takes, which is what a better limit for it is chosen from;
cancelling it mid-flight may even leave it half done. Its answer is thrown away all the same, and the
call is not retried because of it (the retry stage never retries a timeout of a non-idempotent call):
the client gets the timeout, and the upstream executed the write exactly once. A streamed answer (SSE)
is read to its end and thrown away (`_drain`), within the same `observe` seconds: closed at its head,
the upstream would be cut off mid-answer. Observations beyond the bounds below are cancelled at once,
so a failing upstream never piles up work.

A watched attempt keeps its upstream connection while its client, answered, may call again: unbounded,
one client calling a slow tool could hold the whole pool that way, past its per-client cap (which counts
only calls still waiting for their answer). So the attempts watched at once are bounded per upstream
(`max_observed`, a quarter of its pool as the per-client cap is, at most `MAX_OBSERVATIONS`) and per
client (`OBSERVED_PER_CLIENT`, for clients the proxy can tell apart: `proxy.policies.fairness.identifies`);
a timed-out attempt beyond either is cancelled at once, as before observation existed. Both bounds are
process-wide, keyed by the upstream's name, so they hold across reloads.

With observation on, every attempt therefore runs as a task of its own (only a task can go on running
once its caller has been answered), raced against its limit in the stage's `DeadlineClock` (`_Race`);
with it off (`observe` 0) the attempt runs in the call's task and its limit cancels it there. The task
is the price of the evidence: about 37k instructions of a JSON tools/call's 660k through the proxy
(``python -m tests.perf --instructions``; with `asyncio.wait` as the race it cost 66k). Creating a task
is most of it; the race itself is a future the attempt's task settles directly.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable
from typing import Final

from proxy.deadlines import DeadlineClock
from proxy.errors import NeverSent, ProxyError, ProxyOverloaded, UpstreamTimeout
from proxy.mcp.jsonrpc import CLIENT_PACED_METHODS
from proxy.policies.base import NULL_OBSERVER, Attempt, AttemptHandler, Clock, Observer, Reply, ReplyStream
from proxy.policies.fairness import identifies
from proxy.tasks import Owner, cancel_and_wait, spawn

__all__ = ["MAX_OBSERVATIONS", "OBSERVED_PER_CLIENT", "TimeoutStage"]

MAX_OBSERVATIONS: Final = 64
"""Timed-out attempts watched at once, per upstream, whatever its pool."""
OBSERVED_PER_CLIENT: Final = 1
"""Timed-out attempts of one client (one that `identifies`) watched at once, per upstream."""
_observing: Owner = set()  # process-wide, so the bounds hold across reloads
_watched: Counter[str] = Counter()
"""Attempts watched now, per upstream and per (upstream, client) key (`_keys`)."""
_attempts: Owner = set()  # attempts raced against their time (awaited by their call, or by a watcher)


class TimeoutStage:
    """Bounds one attempt; optionally observes how late a timed-out answer really was."""

    __slots__ = ("_clock", "_deadlines", "_max_observed", "_observe", "_observer")

    def __init__(
        self, clock: Clock, observer: Observer = NULL_OBSERVER, observe: float = 0.0, max_observed: int = MAX_OBSERVATIONS
    ) -> None:
        self._clock = clock
        self._observer = observer
        self._observe = observe
        self._max_observed = min(max_observed, MAX_OBSERVATIONS)
        """Attempts of this stage's upstream watched at once: a quarter of its pool (`build_stages`)."""
        self._deadlines = DeadlineClock()
        """Every attempt's limit, kept by one timer (`proxy.deadlines`): an `asyncio.timeout` per attempt
        made and cancelled a timer each time, for a limit that almost never fires."""

    async def __call__(self, attempt: Attempt, next: AttemptHandler) -> Reply:
        call = attempt.call
        limit = call.policy.timeouts.per_try
        if attempt.deadline is not None:
            left = attempt.deadline - self._clock.monotonic()
            if left <= 0:
                raise UpstreamTimeout("the call's deadline passed before this attempt", upstream=call.upstream)
            limit = min(limit, left)
        if self._observe > 0:
            return await self._observed(attempt, next, limit)
        task = asyncio.current_task()
        assert task is not None
        expiry = _Expiry(task)
        deadlines = self._deadlines
        deadlines.waiting(expiry, deadlines.now() + limit)
        try:
            return await next(attempt)
        except asyncio.CancelledError:
            # Ours only when it fired and no other cancellation is pending (as `asyncio.timeout` decides).
            if not expiry.fired or task.uncancel() > expiry.cancelling:
                raise
            if not attempt.written:
                raise _still_waiting(attempt, limit) from None
            self._timed_out(attempt, limit, observing=False)
            raise _timeout(attempt, limit) from None
        finally:
            deadlines.done(expiry)

    def _timed_out(self, attempt: Attempt, limit: float, observing: bool) -> None:
        self._observer.policy_event("timeout", attempt, limit_ms=round(limit * 1000, 3), observing=observing)

    async def _observed(self, attempt: Attempt, next: AttemptHandler, limit: float) -> Reply:
        """The attempt as a task of its own, raced against its limit (a `_Race` in the stage's deadlines: no
        timer per attempt, as `asyncio.wait` with a timeout made); once timed out after its request was
        written, it runs on under a watcher (`_watch`) and the caller gets the timeout."""
        started = time.monotonic()
        race = _Race(asyncio.get_running_loop().create_future())
        running = spawn(_raced(next(attempt), race.over), name="attempt", owner=_attempts, awaited=True)
        deadlines = self._deadlines
        deadlines.waiting(race, deadlines.now() + limit)
        try:
            reply = await race.over
        except asyncio.CancelledError:
            await _abandon(running)
            raise
        finally:
            deadlines.done(race)
        if reply is not None:
            return reply
        if running.done():  # it ended in the very turn its time ran out: its own outcome stands
            return _outcome(running)
        if not attempt.written:
            await _abandon(running)
            raise _still_waiting(attempt, limit)
        keys = _keys(attempt)
        observing = self._may_watch(keys)
        running.add_done_callback(_retrieve)  # however it ends, even after shutdown, nobody is left unheard
        self._timed_out(attempt, limit, observing)
        if observing:  # the event names this try: the retry stage's next one is another `Attempt`
            call_id, number = attempt.call.call_id, attempt.number
            running.set_name(f"observed-attempt:{call_id}:{number}")  # named only now: most attempts never are
            _watched.update(keys)
            watcher = spawn(self._watch(running, attempt, limit, started), name=f"observe-timeout:{call_id}:{number}", owner=_observing)
            watcher.add_done_callback(lambda _: _unwatch(keys))
        else:
            await _abandon(running)
        raise _timeout(attempt, limit)

    def _may_watch(self, keys: tuple[str, ...]) -> bool:
        """Whether one more attempt of this upstream (and this client, when it `identifies`) may be watched."""
        if _watched[keys[0]] >= self._max_observed:
            return False
        return len(keys) == 1 or _watched[keys[1]] < OBSERVED_PER_CLIENT

    async def _watch(self, running: asyncio.Future[Reply | None], attempt: Attempt, limit: float, started: float) -> None:
        """Wait (bounded) for a timed-out attempt, record when it finished, and throw its answer away."""
        done, _ = await asyncio.wait({running}, timeout=self._observe)
        observed_ms: float | None = None
        reply: Reply | None = None
        if done and not running.cancelled() and running.exception() is None:
            observed_ms = round((time.monotonic() - started) * 1000, 3)
            reply = running.result()
        elif not done:
            await _abandon(running)
        fields: dict[str, object] = {"limit_ms": round(limit * 1000, 3), "observed_ms": observed_ms}
        if observed_ms is None:
            fields["waited_ms"] = round((time.monotonic() - started) * 1000, 3)
        self._observer.policy_event("timeout_observed", attempt, **fields)
        if reply is not None and reply.stream is not None:
            await _drain(reply.stream, self._observe - (time.monotonic() - started))


class _Expiry:
    """One attempt's limit in the stage's `DeadlineClock`: when it passes, the attempt's task is cancelled,
    and the stage tells that cancellation (`fired`, and the task's count of pending cancellations when
    the attempt began) from anyone else's."""

    __slots__ = ("cancelling", "fired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.cancelling = task.cancelling()
        self.fired = False

    def expire(self) -> None:
        self.fired = True
        # Not `cancel_and_wait`: the task cancelled is the one that will catch it, in the stage's own
        # ``except CancelledError`` (as `asyncio.timeout` does); nothing is left to wait for.
        self.task.cancel()


class _Race:
    """An attempt's task against its limit: `over` gets the attempt's outcome from the task itself
    (`_raced`), or None from `expire` (the stage's `DeadlineClock`) when the limit passes first. Its
    caller awaits `over`, not the task, so that neither the limit nor the caller's own cancellation
    cancels the attempt behind its back."""

    __slots__ = ("over",)

    def __init__(self, over: asyncio.Future[Reply | None]) -> None:
        self.over = over

    def expire(self) -> None:
        if not self.over.done():
            self.over.set_result(None)


async def _raced(work: Awaitable[Reply], over: asyncio.Future[Reply | None]) -> Reply | None:
    """Run one attempt in its own task and hand its outcome straight to its caller's `over` (a done
    callback would cost one more turn of the loop per call). Once `over` is settled (the limit passed,
    or the caller went away), the outcome is the task's own, for the watcher or for `_abandon`."""
    try:
        reply = await work
    except BaseException as exc:
        if over.done():
            raise  # timed out or abandoned already: the outcome is the task's own
        over.set_exception(exc)  # the caller raises it, a cancellation too (the loop closing under it)
        if isinstance(exc, Exception):
            return None  # raised by the caller alone: nothing is left unretrieved in the task
        raise
    if not over.done():
        over.set_result(reply)
    return reply


def _outcome(running: asyncio.Task[Reply | None]) -> Reply:
    """The outcome of an attempt's task that settled its `over` after the limit did: its answer, or its error."""
    reply = running.result()
    assert reply is not None  # a task returns None only when it handed its error to a waiting caller
    return reply


async def _abandon(attempt: asyncio.Future[Reply | None]) -> None:
    """Stop an attempt nobody will read. Cancelled in the very turn it finished, it may hold a streamed
    answer: that stream is closed here, or its upstream connection would stay out of the pool."""
    await cancel_and_wait([attempt])
    if attempt.cancelled() or attempt.exception() is not None:
        return
    reply = attempt.result()
    if reply is not None and reply.stream is not None:
        await reply.stream.close()


async def _drain(stream: ReplyStream, seconds: float) -> None:
    """Read a watched attempt's streamed answer to its end (for at most `seconds`), throwing it away, then
    close it. Closing it at its head would cut the upstream off mid-answer: a streamed write (progress
    events, then its result) would be cancelled half done, which watching it was meant never to do. The
    figure (`observed_ms`, when its head came) is what `per_try` bounds for a streamed answer."""
    try:
        async with asyncio.timeout(max(0.0, seconds)):
            async for _ in stream:
                pass
    except (TimeoutError, ProxyError):
        pass  # out of time, or the stream broke or went idle: nobody reads it anyway
    finally:
        await stream.close()


def _keys(attempt: Attempt) -> tuple[str, ...]:
    """What a watched attempt counts against: its upstream, and its client where the client `identifies`."""
    call = attempt.call
    return (call.upstream, f"{call.upstream}\0{call.client}") if identifies(call.client) else (call.upstream,)


def _unwatch(keys: tuple[str, ...]) -> None:
    _watched.subtract(keys)
    for key in keys:
        if _watched[key] <= 0:
            del _watched[key]


def _retrieve(attempt: asyncio.Future[Reply | None]) -> None:
    """Take an abandoned attempt's exception, so asyncio never logs it as "never retrieved" (a traceback
    inside the JSON log) when the pool closes under an observation at shutdown."""
    if not attempt.cancelled():
        attempt.exception()


def _timeout(attempt: Attempt, limit: float) -> UpstreamTimeout:
    call = attempt.call
    return UpstreamTimeout(
        f"upstream did not answer within {limit:.3g}s",
        upstream=call.upstream,
        excused=call.method in CLIENT_PACED_METHODS or attempt.waited,
    )


def _still_waiting(attempt: Attempt, limit: float) -> NeverSent | ProxyOverloaded:
    """The attempt ran out of time before its request reached a socket: not an upstream timeout. Still
    queued for a pooled connection (all busy), it is the proxy's own overload; connecting, the upstream
    did not accept in time, which any call may retry since the upstream never saw the request."""
    upstream = attempt.call.upstream
    if attempt.queued:  # still in the queue when time ran out
        return ProxyOverloaded(
            f"no free upstream connection within {limit:.3g}s; the request was not sent", upstream=upstream
        )
    return NeverSent(f"no connection to the upstream within {limit:.3g}s; the request was not sent", upstream=upstream)
