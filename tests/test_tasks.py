"""proxy.tasks: a spawned task is named, held by its owner while it runs, and its failure is heard once;
`cancel_and_wait` returns only when every task it stopped has finished its cleanup."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from structlog.testing import capture_logs

from proxy.tasks import Owner, cancel_and_wait, spawn


async def _fail(message: str) -> None:
    raise ValueError(message)


async def test_a_task_has_its_name_and_its_owner_holds_it_exactly_while_it_runs() -> None:
    owner: Owner = set()
    gate = asyncio.Event()
    ref = weakref.ref(spawn(gate.wait(), name="probe:a", owner=owner))
    gc.collect()
    task = ref()
    assert task is not None and not task.done()  # nobody but the owner holds it, and it lives
    assert task.get_name() == "probe:a"
    assert owner == {task}
    gate.set()
    assert await task is True
    assert owner == set()


async def test_a_background_failure_is_logged_once_with_the_task_name_and_never_reported_again() -> None:
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(context))
    owner: Owner = set()
    try:
        with capture_logs() as logs:
            task = spawn(_fail("boom"), name="config-poll:/etc/proxy.yaml", owner=owner)
            await asyncio.wait({task})
        ref = weakref.ref(task)
        del task
        gc.collect()
        assert ref() is None  # collected: asyncio would have reported an unread exception by now
    finally:
        loop.set_exception_handler(None)
    assert [(e["event"], e["log_level"], e["task"], e["error"]) for e in logs] == [
        ("background_task_failed", "error", "config-poll:/etc/proxy.yaml", "ValueError('boom')")
    ]
    assert isinstance(logs[0]["exc_info"], ValueError)
    assert reported == []
    assert owner == set()


async def test_an_awaited_task_leaves_its_failure_to_the_caller() -> None:
    owner: Owner = set()
    with capture_logs() as logs:
        task = spawn(_fail("theirs"), name="cache-flight:tools/call", owner=owner, awaited=True)
        with pytest.raises(ValueError, match="theirs"):
            await task
    assert logs == []
    assert owner == set()


async def test_a_finished_task_gives_its_result_and_logs_nothing() -> None:
    owner: Owner = set()

    async def answer() -> int:
        return 42

    with capture_logs() as logs:
        assert await spawn(answer(), name="answer", owner=owner) == 42
    assert logs == []


async def test_cancel_and_wait_returns_only_after_the_cancelled_task_cleaned_up() -> None:
    owner: Owner = set()
    started = asyncio.Event()
    steps: list[str] = []

    async def worker() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            steps.append("cancelled")
            for _ in range(3):  # a cleanup that yields to the loop, as closing a connection does
                await asyncio.sleep(0)
            steps.append("cleaned up")

    task = spawn(worker(), name="worker", owner=owner)
    await started.wait()
    with capture_logs() as logs:
        await cancel_and_wait(owner)
    assert steps == ["cancelled", "cleaned up"]
    assert task.cancelled()
    assert owner == set()
    assert logs == []  # a cancellation is not a failure


async def test_cancel_and_wait_leaves_finished_tasks_as_they_are_and_accepts_none() -> None:
    owner: Owner = set()
    gate = asyncio.Event()

    async def answer() -> str:
        return "done"

    finished = spawn(answer(), name="finished", owner=set())
    await finished
    waiting = [spawn(gate.wait(), name=f"waiting:{n}", owner=owner) for n in range(3)]
    await cancel_and_wait([finished, *owner])
    assert finished.result() == "done"
    assert all(task.cancelled() for task in waiting)
    assert owner == set()
    await cancel_and_wait([])


async def test_cancel_and_wait_outlives_its_own_cancellation_until_the_tasks_are_done() -> None:
    owner: Owner = set()
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # its cleanup takes until the test says so

    child = spawn(slow_to_stop(), name="slow-to-stop", owner=owner)
    await started.wait()
    stopper = asyncio.create_task(cancel_and_wait(owner))
    child_done_when_stopper_ended: list[bool] = []
    stopper.add_done_callback(lambda _: child_done_when_stopper_ended.append(child.done()))
    while not child.cancelling():  # the stopper's first step cancels the child, then waits for it
        await asyncio.sleep(0)
    stopper.cancel()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not stopper.done() and not child.done()  # still waiting for the child's cleanup
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopper
    assert child_done_when_stopper_ended == [True]
    assert child.cancelled()


def test_spawn_without_a_running_loop_raises_and_closes_the_coroutine() -> None:
    owner: Owner = set()
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError):
        spawn(coro, name="nowhere", owner=owner)
    assert coro.cr_frame is None  # closed: no "coroutine was never awaited" warning
    assert owner == set()
