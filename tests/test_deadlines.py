"""`DeadlineClock` (many deadlines, one timer) and the timeout stage on it: what fires, in which order,
and which cancellation is the stage's own."""

from __future__ import annotations

import asyncio

import pytest

from proxy.deadlines import DeadlineClock
from proxy.errors import UpstreamTimeout
from proxy.policies.base import Attempt, Reply
from proxy.policies.timeout import TimeoutStage
from tests.fakes import FakeClock, first, make_call, reply_ok, tool_call, upstream_config


class _Item:
    def __init__(self, name: str, expired: list[str], done: asyncio.Event | None = None) -> None:
        self.name, self._expired, self._done = name, expired, done

    def expire(self) -> None:
        self._expired.append(self.name)
        if self._done is not None:
            self._done.set()


async def test_items_expire_in_deadline_order_and_a_done_one_never() -> None:
    """Deadlines already past when the timer fires (a busy or slow loop) all expire at once, still in
    deadline order, not in the order they were registered."""
    clock, expired, last = DeadlineClock(), [], asyncio.Event()
    now = clock.now()
    c, a, b, gone = _Item("c", expired), _Item("a", expired), _Item("b", expired, last), _Item("gone", expired)
    clock.waiting(c, now - 0.002)
    clock.waiting(a, now - 0.004)
    clock.waiting(gone, now - 0.003)
    clock.waiting(b, now - 0.001)
    clock.done(gone)
    await last.wait()
    assert expired == ["a", "c", "b"]
    assert len(clock) == 0


async def test_one_timer_for_many_deadlines_of_one_limit() -> None:
    """Deadlines that only grow (one limit, calls one after the other) arm one timer, not one each."""
    clock, expired = DeadlineClock(), []
    now = clock.now()
    items = [_Item(str(n), expired) for n in range(100)]
    for n, item in enumerate(items):
        clock.waiting(item, now + 60 + n)
    assert len(clock._armed) == 1
    for item in items:
        clock.done(item)
    assert (len(clock), expired) == (0, [])


def _gated(gate: asyncio.Event, written: bool = True):  # type: ignore[no-untyped-def]
    async def next(attempt: Attempt) -> Reply:
        attempt.written = written
        await gate.wait()
        return reply_ok()

    return next


CONFIG = upstream_config(timeouts={"per_try": "10ms"}, retry={"max_attempts": 1})


async def test_an_attempt_past_its_limit_is_an_upstream_timeout() -> None:
    stage = TimeoutStage(FakeClock())
    with pytest.raises(UpstreamTimeout):
        await stage(first(make_call(tool_call("slow"), CONFIG)), _gated(asyncio.Event()))
    assert len(stage._deadlines) == 0


async def test_an_attempt_within_its_limit_leaves_no_deadline_behind() -> None:
    stage, gate = TimeoutStage(FakeClock()), asyncio.Event()
    gate.set()
    reply = await stage(first(make_call(tool_call("fast"), upstream_config())), _gated(gate))
    assert reply.status == 200
    assert len(stage._deadlines) == 0


async def test_a_cancellation_of_the_caller_is_never_turned_into_a_timeout() -> None:
    """The client went away (its handler task is cancelled) while the attempt waited: the cancellation
    propagates as itself, though the limit passed too before the task ran again."""
    stage, started = TimeoutStage(FakeClock()), asyncio.Event()

    async def next(attempt: Attempt) -> Reply:
        attempt.written = True
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("never answered")

    call = make_call(tool_call("slow"), upstream_config(timeouts={"per_try": "10ms"}))
    task = asyncio.ensure_future(stage(first(call), next))
    await started.wait()
    task.cancel()  # the caller's own cancellation, pending when the stage's fires (or before)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(stage._deadlines) == 0


async def test_a_timeout_inside_a_task_cancelled_by_someone_else_stays_cancelled() -> None:
    """When the limit fires while another cancellation of the same task is pending, the other wins: the
    task ends cancelled, as with `asyncio.timeout`."""
    stage, fired = TimeoutStage(FakeClock()), asyncio.Event()

    async def next(attempt: Attempt) -> Reply:
        attempt.written = True
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            fired.set()
            # Someone else cancels too while the stage's cancellation is being delivered.
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            raise
        raise AssertionError("never answered")

    call = make_call(tool_call("slow"), upstream_config(timeouts={"per_try": "10ms"}))
    task = asyncio.ensure_future(stage(first(call), next))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fired.is_set()
