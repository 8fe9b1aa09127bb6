"""The legacy sessions the proxy keeps, per upstream: what it needs to rebuild one the upstream lost.

A client keeps the ``Mcp-Session-Id`` the upstream first gave it: the proxy passes the upstream's id
through on the initialize answer, and routes it onward to whatever session the upstream knows now
(`LegacySession.upstream_id`, a new one after each recovery). So forgetting a session the upstream
still knows costs its client nothing but the protection: its id goes through unchanged, as without the
proxy (a proxy restarted in front of a live upstream, a session forgotten at `max_sessions`). Only a
session already rebuilt depends on the proxy's record; forgetting one of those ends it upstream (the
caller sends the DELETE), and its client hears the upstream's 404 next, as it would have without the
proxy at the restart that lost it.

The proxy issues an id of its own only when the upstream's collides with one a client already uses
here (a server that numbers its sessions from 1 again after a restart): two clients never share one.

Bounded: at most `SessionsConfig.max_sessions` entries; past it, or past `idle_timeout` unused, the least
recently used go first. Each entry holds at most `MAX_RECORDED_BODY` bytes per recorded request and
`MAX_SUBSCRIPTIONS` subscriptions (past them the session is kept but not restorable: `restorable`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from proxy.config.model import SessionsConfig

__all__ = ["MAX_RECORDED_BODY", "MAX_SUBSCRIPTIONS", "LegacySession", "SessionTable"]

MAX_RECORDED_BODY: Final = 64 * 1024
"""The largest request body a session records to replay (initialize, setLevel, a subscribe); a session
whose initialize is larger is passed through unrecorded (no recovery)."""
MAX_SUBSCRIPTIONS: Final = 1024
"""Resource subscriptions one session records; past it the session is no longer restorable."""
_SWEEP_PER_OPEN: Final = 16
"""Idle entries forgotten at most per new session: the sweep's cost per initialize stays constant."""


@dataclass(slots=True, eq=False)
class LegacySession:
    """One client's legacy session as the proxy keeps it."""

    client_id: str
    """The id the client sends (the upstream's first one, unless it collided)."""
    upstream_id: str
    """The id the upstream knows now."""
    initialize: bytes
    """The client's initialize request, as it sent it: replayed to rebuild the session."""
    protocol: str
    """The protocol version the upstream answered: a rebuilt session must answer the same."""
    capabilities: Any
    """The upstream's capabilities as it first answered: a rebuilt session must answer the same."""
    last_used: float
    generation: int = 0
    """Rebuilds so far (0: the upstream's first session)."""
    log_level: bytes | None = None
    """The client's last successful ``logging/setLevel`` request."""
    subscriptions: dict[str, bytes] = field(default_factory=dict)
    """Each subscribed URI and the ``resources/subscribe`` request that made it (oldest first)."""
    restorable: bool = True
    """False once a recorded request was over its bound: a rebuild would lose state, so none is tried."""
    lost: str | None = None
    """Why it can never be rebuilt (the upstream's new session differs): its client hears a 404."""
    rebuilding: asyncio.Future[list[str]] | None = None
    """The rebuild in flight (one at a time: every request that met the loss waits for it)."""
    rebuilds: deque[float] = field(default_factory=lambda: deque(maxlen=3))
    """When the last rebuilds succeeded (bounded: `proxy.sessions.keeper.MAX_REBUILDS_PER_MINUTE`)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """The headers the client last made the session with (its initialize, then the request that met a
    loss), credentials included: what ends it upstream when the proxy must (never written to a file)."""

    @property
    def remapped(self) -> bool:
        """The client's id is no longer the upstream's: only the proxy can route it."""
        return self.client_id != self.upstream_id


class SessionTable:
    """The sessions of one upstream, least recently used first."""

    __slots__ = ("_clock", "_routes", "_sessions", "config")

    def __init__(self, config: SessionsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._sessions: dict[str, LegacySession] = {}
        self._routes: dict[str, LegacySession] = {}
        """Each upstream id a kept session routes to, and that session: one upstream session, one client."""

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, client_id: str) -> LegacySession | None:
        """The session `client_id` names, marked used (moved to the end of the order)."""
        session = self._sessions.pop(client_id, None)
        if session is not None:
            session.last_used = self._clock()
            self._sessions[client_id] = session
        return session

    def open(self, upstream_id: str, initialize: bytes, protocol: str, capabilities: Any) -> tuple[LegacySession, list[LegacySession]]:
        """Record a new session; returns it and the sessions forgotten to make room (the caller ends the
        remapped ones upstream). Its client id is the upstream's unless that one is taken here."""
        forgotten = self._make_room()
        client_id = upstream_id
        while client_id in self._sessions:
            client_id = secrets.token_urlsafe(24)
        session = LegacySession(client_id, upstream_id, initialize, protocol, capabilities, self._clock())
        self._sessions[client_id] = session
        self.route(session, upstream_id)
        return session, forgotten

    def route(self, session: LegacySession, upstream_id: str) -> None:
        """`session` goes to `upstream_id` from now on. Another kept session still routed there (a server
        that numbers its sessions again after a restart) lost its own upstream session with that restart:
        it is sent to no session at all, so its next request meets the loss and is rebuilt, and never
        lands in this one's session (one client's data never reaches another)."""
        if self._routes.get(session.upstream_id) is session:
            del self._routes[session.upstream_id]
        other = self._routes.get(upstream_id)
        if other is not None and other is not session:
            other.upstream_id = f"lost-{secrets.token_urlsafe(18)}"  # no server has it: the next request is a loss
            self._routes[other.upstream_id] = other
        session.upstream_id = upstream_id
        self._routes[upstream_id] = session

    def forget(self, client_id: str) -> LegacySession | None:
        session = self._sessions.pop(client_id, None)
        if session is not None and self._routes.get(session.upstream_id) is session:
            del self._routes[session.upstream_id]
        return session

    def adopt(self, session: LegacySession) -> bool:
        """Take a session carried over from a previous proxy (`proxy.sessions.carry`), marked used now;
        False when its id is taken here or the table is full."""
        if session.client_id in self._sessions or len(self._sessions) >= self.config.max_sessions:
            return False
        session.last_used = self._clock()
        self._sessions[session.client_id] = session
        self.route(session, session.upstream_id)
        return True

    def sessions(self) -> list[LegacySession]:
        """Every kept session, least recently used first."""
        return list(self._sessions.values())

    def remapped(self) -> list[LegacySession]:
        """The sessions only the proxy can route (each rebuilt at least once)."""
        return [session for session in self._sessions.values() if session.remapped]

    def _make_room(self) -> list[LegacySession]:
        """Forget the idle ones at the front (a bounded number), then the least recently used while full."""
        forgotten: list[LegacySession] = []
        horizon = self._clock() - self.config.idle_timeout
        for _ in range(_SWEEP_PER_OPEN):
            oldest = next(iter(self._sessions.values()), None)
            if oldest is None or oldest.last_used > horizon or oldest.rebuilding is not None:
                break
            forgotten.append(oldest)
            self.forget(oldest.client_id)
        while len(self._sessions) >= self.config.max_sessions:
            # The least recently used that is not being rebuilt (a rebuild's new upstream session would
            # be left to nobody); all of them being rebuilt: the least recently used anyway.
            victim = next((s for s in self._sessions.values() if s.rebuilding is None), None)
            victim = victim or next(iter(self._sessions.values()))
            forgotten.append(victim)
            self.forget(victim.client_id)
        return forgotten
