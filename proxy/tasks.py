"""Background tasks with a name and an owner: the one place the proxy starts a task.

asyncio holds only a weak reference to a running task, so a task nobody keeps can vanish mid-flight;
an exception in a task nobody awaits surfaces, if at all, as "Task exception was never retrieved" when
the task is collected, far from its cause; and a task that was cancelled but not awaited may still be
running its cleanup (closing a pool, ending a session) after its owner believes it stopped. So:

- `spawn` starts a task under a name (it shows in logs and in `asyncio.all_tasks()` dumps) and adds
  it to its owner's set, a strong reference that lasts exactly as long as the task runs. A background
  task that fails is logged once, with its name, when it ends.
- `cancel_and_wait` is how an owner stops its tasks: each is cancelled, and the call returns only
  when every one of them has finished, its cleanup included.

`pyproject.toml` bans `asyncio.create_task` and `asyncio.ensure_future` elsewhere (ruff TID251), and
`tests/test_architecture.py` finds every other way of starting or cancelling a task in `proxy/`. Tasks
a `asyncio.TaskGroup` starts are owned by the group (it awaits them) and need neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, TypeAlias, TypeVar

import structlog

__all__ = ["Owner", "cancel_and_wait", "spawn"]

log = structlog.get_logger("proxy.tasks")

T = TypeVar("T")

Owner: TypeAlias = set[asyncio.Task[Any]]
"""The tasks an object has started and not yet seen end; `spawn` adds to it and removes when each ends."""


def spawn(coro: Coroutine[Any, Any, T], *, name: str, owner: Owner, awaited: bool = False) -> asyncio.Task[T]:
    """Start `coro` as a task called `name`, held in `owner` until it ends.

    A background task (the default) is one nobody awaits for its outcome: if it fails (an exception
    other than cancellation) the failure is logged as ``background_task_failed`` with the task's name.
    Pass ``awaited=True`` for a task whose outcome a caller does read (an attempt raced against a
    timeout, a flight several callers wait on): its failure is theirs to handle, and is not logged.

    Must be called from a coroutine or callback running on the event loop; otherwise it raises
    `RuntimeError`, and `coro` is closed (never started, so it warns of nothing).
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        coro.close()
        raise
    task = loop.create_task(coro, name=name)
    owner.add(task)
    task.add_done_callback(_settle(owner, awaited))
    return task


def _settle(owner: Owner, awaited: bool) -> Callable[[asyncio.Task[Any]], None]:
    def settle(task: asyncio.Task[Any]) -> None:
        owner.discard(task)
        if awaited or task.cancelled():
            return
        exc = task.exception()  # read, so asyncio does not report it again at collection
        if exc is not None:
            log.error("background_task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)

    return settle


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel `tasks` and return once every one has finished (done ones are left as they are).

    `tasks` is read once, so an owner's set may be passed as it is, though it shrinks as tasks end.
    Outcomes are not read: a background task's failure was logged by `spawn`.

    If the caller is cancelled while waiting, the tasks (all cancelled already) are still waited for,
    as `asyncio.TaskGroup` does, and then the caller's cancellation goes on: no task outlives the call.
    A task that refuses to stop therefore holds its owner up; none of the proxy's do.
    """
    pending = {task for task in tasks if not task.done()}
    for task in pending:
        task.cancel()
    interrupted = False
    while pending:
        try:
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError

