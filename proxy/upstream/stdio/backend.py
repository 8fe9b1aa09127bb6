"""One stdio child and the routing of the clients it serves: what the gateway asks, per child.

`isolation: shared` runs one `ChildBackend` for every client; `per_session` one per legacy session (and
one shared for 2026-07-28 clients, which have no session). A backend keeps its child running
(`proxy.upstream.stdio.supervisor`), routes what the child writes (`proxy.upstream.stdio.routing`), and
carries its sessions over a restart of the child: the new child is set to the most verbose log level a
session asked for, subscribed again to every resource a session or listener watches, and every GET
stream and listener is told its lists may have changed (a restarted child replays nothing, and is often
a new version). A child that comes back with another protocol version or other capabilities is another
server as far as its clients can tell: their sessions end (the proxy's session keeper rebuilds them,
`docs/sessions.md`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Any, Final

import structlog

from proxy.policies.base import Observer
from proxy.tasks import cancel_and_wait, spawn
from proxy.upstream.stdio.child import ChildGone, ChildNotRunning, ChildSpec
from proxy.upstream.stdio.output import Window
from proxy.upstream.stdio.routing import OWN_ID_PREFIX, Caller, Session, Switchboard
from proxy.upstream.stdio.supervisor import Handshake, Link, Supervisor, Timing

__all__ = ["ChildBackend"]

log = structlog.get_logger("proxy")

REFUSAL_EVENTS_PER_S: Final = 10
"""`stdio_question_refused` events one child may cause a second; past it they are counted in one
``stdio_question_events_suppressed`` log line when the next second starts."""


class ChildBackend:
    """A supervised child with its switchboard. `start`, `ready`, then `stop`."""

    def __init__(
        self,
        spec: ChildSpec,
        timing: Timing,
        handshake: Handshake,
        *,
        exclusive: str | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.timing = timing
        self.board = Switchboard(exclusive=exclusive)
        self._observer = observer
        self._refusals = Window(REFUSAL_EVENTS_PER_S, 1.0, clock)
        """Where the child's failures go as events (the runtime's observer: the event stream and metrics)."""
        if observer is not None:
            self.board.on_refused = self._refused
        self.supervisor = Supervisor(
            spec, timing, handshake, on_message=self._from_child, on_up=self._child_up, on_down=self._child_down
        )
        self.link: Link | None = None
        """The live child, None while it is down."""
        self.first: Link | None = None
        """The child its sessions were promised (the first, or the last one that changed)."""
        self.last_used = time.monotonic()
        self._up_at: float | None = None
        self._stopping = False
        self._keys = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.supervisor.start()

    async def stop(self) -> None:
        """Stop the child, then end every stream of its sessions and listeners cleanly."""
        self._stopping = True
        await self.supervisor.stop()
        await cancel_and_wait(self._tasks)
        self.end_streams()

    async def ready(self) -> Link:
        """The live child, waited for within `child.start_timeout`; `ChildUnavailable` when none comes."""
        self.last_used = time.monotonic()
        return await self.supervisor.ready(self.timing.start_timeout)

    def end_streams(self) -> None:
        for session in self.board.sessions.values():
            if session.stream is not None:
                session.stream.put(None)
        for listener in self.board.listeners:
            listener.inbox.put(None)

    def idle_since(self) -> float | None:
        """When this backend's last client went quiet, or None while anything of it is in use."""
        board = self.board
        if board.callers or board.listeners or any(s.stream is not None for s in board.sessions.values()):
            return None
        return self.last_used

    def snapshot(self) -> dict[str, Any]:
        """The child's state: the supervisor's, its uptime in seconds (not the monotonic clock's reading),
        and what is in its hands."""
        state = dict(self.supervisor.snapshot())
        since = state.pop("up_since", None)
        state["uptime_s"] = round(time.monotonic() - since, 1) if isinstance(since, float) else None
        state["in_flight"] = len(self.board.callers)
        state["sessions"] = len(self.board.sessions)
        return state

    def server_info(self) -> dict[str, Any] | None:
        link = self.link or self.first
        info = link.initialized.result.get("serverInfo") if link is not None else None
        return info if isinstance(info, dict) else None

    # -- writing to the child on the proxy's own account ---------------------------------------------

    async def send_quietly(self, link: Link, message: Any) -> None:
        """Write `message`; a child gone meanwhile is the supervisor's to report, not the writer's."""
        with contextlib.suppress(ChildGone, ChildNotRunning):
            await link.send(message)

    def send_later(self, link: Link, message: Any, name: str) -> None:
        spawn(self.send_quietly(link, message), name=f"{name}:{self.spec.name}", owner=self._tasks)

    async def resubscribe(self, link: Link, uris: set[str], method: str) -> None:
        """(Un)subscribe the child to `uris` on the proxy's own account: the answers, under ids no caller
        has, are dropped."""
        for uri in sorted(uris):
            await self.send_quietly(link, self._own(method, {"uri": uri}))

    def release(self, caller: Caller) -> None:
        """A caller answered or gone; the child is told of the questions that went void with it."""
        self._tell_child(self.board.release(caller))

    def session_gone(self, session: Session) -> None:
        """A session ended (DELETE, reaped): its questions go void, the child lets go of the resources no
        one else watches, and its log level falls back to what the remaining sessions asked for."""
        before = session.level
        self._tell_child(self.board.void(session.id))
        link = self.link
        if link is None:
            return
        unneeded = session.subscriptions - self.board.subscribed()
        if unneeded:
            spawn(
                self.resubscribe(link, unneeded, "resources/unsubscribe"), name="stdio-unsubscribe", owner=self._tasks
            )
        level = self.board.most_verbose_level()
        if before is not None and level is not None and level != before:
            self.send_later(link, self._own("logging/setLevel", {"level": level}), "stdio-level")

    def _tell_child(self, replies: list[dict[str, Any]]) -> None:
        if replies and self.link is not None:
            for reply in replies:
                self.send_later(self.link, reply, "stdio-void")

    def _own(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": f"{OWN_ID_PREFIX}own-{next(self._keys)}", "method": method, "params": params}

    # -- the child's events --------------------------------------------------------------------------

    def _from_child(self, link: Link, message: Any) -> None:
        for reply in self.board.route(link.generation, message):
            self.send_later(link, reply, "stdio-reply")

    def _child_up(self, link: Link) -> None:
        first = self.first
        self.link = link
        self._up_at = time.monotonic()
        if first is None:
            self.first = link
            return
        was, now = first.initialized, link.initialized
        if was.protocol_version != now.protocol_version or was.result.get("capabilities") != now.result.get(
            "capabilities"
        ):
            log.warning("stdio_child_changed", upstream=self.spec.name, sessions_ended=len(self.board.sessions))
            for session in self.board.sessions.values():
                if session.stream is not None:
                    session.stream.put(None)
            self.board.sessions.clear()
            self.first = link  # listeners stay: the restore below subscribes their resources and tells them to refetch
        spawn(self._restore(link), name=f"stdio-restore:{self.spec.name}", owner=self._tasks)

    async def _restore(self, link: Link) -> None:
        level = self.board.most_verbose_level()
        if level is not None:
            await self.send_quietly(link, self._own("logging/setLevel", {"level": level}))
        await self.resubscribe(link, self.board.subscribed(), "resources/subscribe")
        capabilities = link.initialized.result.get("capabilities") or {}
        for kind in ("tools", "prompts", "resources"):
            if isinstance(capabilities.get(kind), dict):
                self.board.route(link.generation, {"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"})

    def _child_down(self, link: Link | None, reason: str) -> None:
        cut_off = 0
        if link is not None:
            cut_off = sum(1 for caller in self.board.callers.values() if caller.generation <= link.generation)
            self.board.child_lost(link.generation, reason)
        if link is None or link is self.link:
            self.link = None
        if self._observer is not None and not self._stopping:
            state = self.supervisor.snapshot()
            up_at, self._up_at = self._up_at, None
            self._observer.policy_event(
                "stdio_child_exited",
                None,
                upstream=self.spec.name,
                generation=link.generation if link is not None else int(state.get("generation") or 0),
                pid=link.pid if link is not None else state.get("last_pid"),
                phase="running" if link is not None else "starting",
                reason=reason,
                uptime_ms=round((time.monotonic() - up_at) * 1000, 1)
                if link is not None and up_at is not None
                else None,
                cut_off=cut_off,
                restarts=int(state.get("restarts") or 0),
            )

    def _refused(self, method: str, why: str, waiting: int) -> None:
        assert self._observer is not None
        dropped = self._refusals.roll()
        if dropped:
            log.warning("stdio_question_events_suppressed", upstream=self.spec.name, count=dropped)
        if not self._refusals.allow():
            return  # a child asking in a loop must not flood the event stream (and push out everyone's evidence)
        self._observer.policy_event(
            "stdio_question_refused", None, upstream=self.spec.name, method=method, why=why, clients_waiting=waiting
        )
