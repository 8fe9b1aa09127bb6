"""`DeadlineClock`: many deadlines kept by one timer, for limits checked on every call.

An `asyncio.timeout` makes a timer when it is entered and cancels it when it is left: on uvloop that is
about 4 µs per use (measured), paid by every attempt (`proxy.policies.timeout`) and every wait for an SSE
event (`proxy.upstream.transport`), although nearly every one of those limits never fires. Here a
deadline is a dict entry: `waiting` adds it, `done` removes it, and one timer, armed only for a deadline
earlier than every timer already armed, fires at the earliest. What is past its deadline then is
expired (its `expire` called) and the timer armed for the next. Nothing is ever cancelled: a timer that
finds nothing due only arms the next one, so with one limit in use there is one timer at a time.
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Protocol

__all__ = ["DeadlineClock", "Expiring"]


class Expiring(Protocol):
    """What a `DeadlineClock` keeps: told once, by `expire`, that its deadline passed."""

    def expire(self) -> None: ...


class DeadlineClock:
    """Deadlines on the running loop's clock (`now`), all kept by one armed timer at a time."""

    __slots__ = ("_armed", "_loop", "_waiting")

    def __init__(self) -> None:
        self._waiting: dict[Expiring, float] = {}
        self._armed: list[float] = []
        """When the timers armed and not yet fired will fire (a heap): one is armed only for a deadline
        earlier than all of them."""
        self._loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    def waiting(self, item: Expiring, deadline: float) -> None:
        """`item` expires at `deadline` (on `now`'s clock) unless `done` comes first."""
        self._waiting[item] = deadline
        if not self._armed or deadline < self._armed[0]:
            self._arm(deadline)

    def done(self, item: Expiring) -> None:
        self._waiting.pop(item, None)

    def __len__(self) -> int:
        return len(self._waiting)

    def _arm(self, at: float) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        heapq.heappush(self._armed, at)
        self._loop.call_at(at, self._tick)

    def _tick(self) -> None:
        heapq.heappop(self._armed)
        now = self.now()
        # In deadline order, however late the tick (a busy loop may find several due at once).
        due = sorted((deadline, n, item) for n, (item, deadline) in enumerate(self._waiting.items()) if deadline <= now)
        for _, _, item in due:
            del self._waiting[item]
            item.expire()
        if self._waiting:
            earliest = min(self._waiting.values())
            if not self._armed or earliest < self._armed[0]:
                self._arm(earliest)
