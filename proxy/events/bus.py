"""The in-process event stream: a ring of recent events, bounded subscribers, synchronous listeners.

The `EventBus` keeps the last `buffer` events in a ring and fans them out to subscribers through
bounded queues: a slow or absent consumer never blocks or slows the proxy; its oldest events are
dropped and counted.

An event about a name the upstream's catalog (`proxy.mcp.tool_catalog`) says it does not have (a
tool it did not list, a method the MCP specification does not define) goes to a ring of its own,
`MAX_UNLISTED_EVENTS` long; everything else shares the main ring of `buffer` events, so a flood of
invented names pushes out only its own kind; `recent()` reads both in id order.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import structlog

__all__ = ["MAX_UNLISTED_EVENTS", "EventBus", "Subscription"]

_log = structlog.get_logger("proxy.events.recorder")

MAX_UNLISTED_EVENTS: Final = 1000
"""Events kept about names the upstream does not have, apart from the main ring."""


def _safely(listener: Callable[..., None], *args: Any) -> None:
    """Run a sink; a sink that fails (a full disk, a bug) must never fail the call being reported."""
    try:
        listener(*args)
    except Exception as exc:
        _log.error("event_sink_failed", sink=getattr(listener, "__qualname__", repr(listener)), error=repr(exc))


class Subscription:
    """One consumer's view of the bus: the backlog since its cursor, then live events, bounded."""

    def __init__(self, bus: EventBus, backlog: list[dict[str, Any]], capacity: int) -> None:
        self._bus = bus
        self._queue: deque[dict[str, Any]] = deque(backlog[-capacity:], maxlen=capacity)
        self._ready = asyncio.Event()
        self.dropped = max(0, len(backlog) - capacity)
        if self._queue:
            self._ready.set()

    def offer(self, event: dict[str, Any]) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1  # the oldest goes: a slow consumer never holds the proxy back
            self._bus.dropped += 1
        self._queue.append(event)
        self._ready.set()

    async def get(self) -> dict[str, Any]:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        return self._queue.popleft()

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        try:
            while True:
                yield await self.get()
        finally:
            self.close()


class EventBus:
    """The in-process event stream: a ring of recent events (and one for events about names the upstream
    does not have) plus bounded per-subscriber queues."""

    def __init__(
        self,
        capacity: int = 10_000,
        subscriber_queue: int = 1000,
        wall: Callable[[], float] = time.time,
        unlisted_capacity: int = MAX_UNLISTED_EVENTS,
    ) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._unlisted: deque[dict[str, Any]] = deque(maxlen=unlisted_capacity)
        self._subscribers: set[Subscription] = set()
        self._subscriber_queue = subscriber_queue
        self._wall = wall
        self._next_id = 1
        self.published = 0
        self.dropped = 0
        """Events subscribers lost because they fell behind."""
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        """Synchronous sinks (the structlog line, the JSONL file): called for every event, must be cheap."""

    def publish(self, event: dict[str, Any], unlisted: bool = False) -> dict[str, Any]:
        """Stamp `event` with its id and time, keep it (in the unlisted ring when it is about a name the
        upstream does not have), and hand it to every subscriber and listener."""
        event["id"] = self._next_id
        event["ts"] = round(self._wall(), 6)
        self._next_id += 1
        self.published += 1
        (self._unlisted if unlisted else self._ring).append(event)
        for subscriber in self._subscribers:
            subscriber.offer(event)
        for listener in self.listeners:
            _safely(listener, event)
        return event

    def recent(self, since: int = 0) -> list[dict[str, Any]]:
        """Events kept (in both rings) with an id above `since`, in id order."""
        if not self._unlisted:
            return [event for event in self._ring if event["id"] > since]
        both = heapq.merge(self._ring, self._unlisted, key=_event_id)
        return [event for event in both if event["id"] > since]

    def subscribe(self, since: int | None = None) -> Subscription:
        """A subscription starting after event `since` (None: only new events)."""
        backlog = self.recent(since) if since is not None else []
        subscription = Subscription(self, backlog, self._subscriber_queue)
        self._subscribers.add(subscription)
        return subscription

    def stats(self) -> dict[str, int]:
        return {
            "published": self.published,
            "buffered": len(self._ring) + len(self._unlisted),
            "buffered_unlisted": len(self._unlisted),
            "subscribers": len(self._subscribers),
            "dropped": self.dropped,
        }


def _event_id(event: dict[str, Any]) -> int:
    return int(event["id"])
