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

Bounded: at most `SessionsConfig.max_sessions` entries, and `MAX_TABLE_BYTES` of recorded state in all;
past either, or past `idle_timeout` unused (a session whose GET stream is open is in use), the least
recently used go first. What a session records is kept small and canonical: its ``initialize`` as sent
(at most `MAX_RECORDED_BODY`), its log level (a word), the URIs it subscribed to (each at most `MAX_URI`,
at most `MAX_SUBSCRIPTIONS`); past them the session is kept but not restorable (`restorable`). A client's
padding in a request never costs the proxy memory beyond the request.
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

__all__ = ["MAX_RECORDED_BODY", "MAX_SESSION_ID", "MAX_SUBSCRIPTIONS", "MAX_TABLE_BYTES", "MAX_URI", "LegacySession", "SessionTable"]

MAX_RECORDED_BODY: Final = 16 * 1024
"""The largest ``initialize`` a session records to replay (real ones are well under 2 KiB); a session
whose initialize is larger is passed through unrecorded (no recovery)."""
MAX_SESSION_ID: Final = 256
"""The longest upstream session id a session is kept for (real ones are UUIDs); a longer one passes through
unrecorded, and the ids kept count in the table's budget."""
MAX_URI: Final = 1024
"""The longest subscribed URI recorded."""
MAX_SUBSCRIPTIONS: Final = 256
"""Resource subscriptions one session records; past it the session is no longer restorable."""
MAX_FORGOTTEN: Final = 4096
"""Client ids of sessions forgotten to make room that the table still recognises (`was_forgotten`)."""
MAX_TABLE_BYTES: Final = 64 * 1024 * 1024
"""Recorded state (initialize bodies and URIs) of one upstream's sessions in all: past it the least
recently used session is forgotten, as at `max_sessions`."""
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
    log_level: str | None = None
    """The level of the client's last successful ``logging/setLevel``."""
    subscriptions: dict[str, None] = field(default_factory=dict)
    """Each URI the client subscribed to (oldest first)."""
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
    owner: str = ""
    """A digest of the credentials that made it (`proxy.sessions.keeper.owner_of`): only a request
    carrying the same ones may have it rebuilt (a stale or guessed id is no way into someone's session)."""
    streams: int = 0
    """Its GET streams open now: a session listened to is in use, never idle."""
    ended: bool = False
    """Forgotten (its client deleted it, or the table made room): never rebuilt from now on."""
    epoch: int = 0
    """The table's `SessionTable.epoch` when the session last worked: an outage noted since means its
    upstream id may belong to a server life that is over."""
    deleting: bool = False
    """Its client's DELETE is on its way upstream: not rebuilt meanwhile (a request racing the DELETE
    must not bring back the session the client ends), and its GET stream ends with it."""
    rebuilt: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (and replaced) at each rebuild: a GET stream waiting to reopen reopens at once."""

    @property
    def size(self) -> int:
        """The bytes of recorded state it holds (what `MAX_TABLE_BYTES` counts)."""
        return len(self.initialize) + sum(map(len, self.subscriptions)) + 2 * MAX_SESSION_ID + 64
    @property
    def remapped(self) -> bool:
        """The client's id is no longer the upstream's: only the proxy can route it."""
        return self.client_id != self.upstream_id


class SessionTable:
    """The sessions of one upstream, least recently used first."""

    __slots__ = ("_clock", "_forgotten", "_routes", "_sessions", "bytes", "config", "epoch")

    def __init__(self, config: SessionsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._sessions: dict[str, LegacySession] = {}
        self._routes: dict[str, LegacySession] = {}
        """Each upstream id a kept session routes to, and that session: one upstream session, one client."""
        self.bytes = 0
        """Recorded state of the kept sessions (`LegacySession.size`), bounded by `MAX_TABLE_BYTES`."""
        self.epoch = 0
        """Outages noted (`note_outage`: a lost session, a broken GET stream): what tells a server that
        restarted and numbers its sessions again from one that hands several clients one session."""
        self._forgotten: dict[str, None] = {}
        """Client ids of sessions forgotten to make room (not deleted by their client), the newest
        `MAX_FORGOTTEN`: a loss of one is the proxy's bound at work, of any other unknown id a client's."""

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, client_id: str) -> LegacySession | None:
        """The session `client_id` names, marked used (moved to the end of the order)."""
        session = self._sessions.pop(client_id, None)
        if session is not None:
            session.last_used = self._clock()
            self._sessions[client_id] = session
        return session

    def note_outage(self) -> None:
        """The upstream lost a session, or broke a stream: its server may have restarted."""
        self.epoch += 1

    def worked(self, session: LegacySession) -> None:
        """A request of `session` was answered on its upstream id: that id is of the server's present life."""
        session.epoch = self.epoch

    def open(
        self, upstream_id: str, initialize: bytes, protocol: str, capabilities: Any
    ) -> tuple[LegacySession | None, list[LegacySession]]:
        """Record a new session; returns it (None: not recorded) and the sessions forgotten to make room
        (the caller ends the remapped ones upstream). Its client id is the upstream's, unless that one is
        taken here by a session that may be of a server life that is over (rebuilt, or an outage noted
        since it last worked: a server numbering its sessions again after a restart); then the proxy's own.
        An id a kept session still uses in the server's present life is the server handing several clients
        one session: that is the server's to do, and the proxy keeps the one record it has."""
        taken = self._sessions.get(upstream_id)
        if taken is not None and not taken.remapped and taken.epoch == self.epoch:
            return None, []
        forgotten = self._make_room(len(initialize) + 2 * MAX_SESSION_ID + 64)
        client_id = upstream_id
        while client_id in self._sessions:
            client_id = secrets.token_urlsafe(24)
        session = LegacySession(client_id, upstream_id, initialize, protocol, capabilities, self._clock(), epoch=self.epoch)
        self._sessions[client_id] = session
        self.bytes += session.size
        self.route(session, upstream_id)
        return session, forgotten

    def was_forgotten(self, client_id: str) -> bool:
        """Whether `client_id` named a session this table forgot to make room (`_make_room`)."""
        return client_id in self._forgotten

    def routed_elsewhere(self, client_id: str) -> bool:
        """`client_id` is no kept session's, yet a kept session of another client routes to it upstream (a
        restarted server gave the id again): a request naming it must not reach that session."""
        other = self._routes.get(client_id)
        return other is not None and other.client_id != client_id

    def grew(self, session: LegacySession, by: int) -> bool:
        """`session` records `by` more bytes; False (nothing recorded) when that takes the table past its
        budget or the session past `MAX_SUBSCRIPTIONS`' worth: the session is then not restorable."""
        if self.bytes + by > MAX_TABLE_BYTES:
            session.restorable = False
            return False
        self.bytes += by
        return True

    def route(self, session: LegacySession, upstream_id: str) -> None:
        """`session` goes to `upstream_id` from now on. Another kept session still routed there that has not
        worked since an outage was noted (a server that numbers its sessions again after a restart) lost
        its own upstream session with that restart: it is sent to no session at all, so its next request
        meets the loss and is rebuilt, and never lands in this one's session (one client's data never
        reaches another). One that worked since is sharing the server's session, as the server wants."""
        if self._routes.get(session.upstream_id) is session:
            del self._routes[session.upstream_id]
        if session.ended or self._sessions.get(session.client_id) is not session:
            session.upstream_id = upstream_id  # forgotten meanwhile: routes nothing here
            return
        other = self._routes.get(upstream_id)
        if other is not None and other is not session and other.epoch < self.epoch:
            other.upstream_id = f"lost-{secrets.token_urlsafe(18)}"  # no server has it: the next request is a loss
            self._routes[other.upstream_id] = other
        session.upstream_id = upstream_id
        session.epoch = self.epoch
        self._routes[upstream_id] = session

    def forget(self, client_id: str) -> LegacySession | None:
        session = self._sessions.pop(client_id, None)
        if session is not None:
            session.ended = True
            self.bytes -= session.size
            if self._routes.get(session.upstream_id) is session:
                del self._routes[session.upstream_id]
        return session

    def adopt(self, session: LegacySession) -> bool:
        """Take a session carried over from a previous proxy (`proxy.sessions.carry`), marked used now;
        False when its id is taken here or the table is full."""
        full = len(self._sessions) >= self.config.max_sessions or self.bytes + session.size > MAX_TABLE_BYTES
        if session.client_id in self._sessions or full:
            return False
        session.last_used = self._clock()
        self._sessions[session.client_id] = session
        self.bytes += session.size
        self.route(session, session.upstream_id)
        return True

    def sessions(self) -> list[LegacySession]:
        """Every kept session, least recently used first."""
        return list(self._sessions.values())

    def remapped(self) -> list[LegacySession]:
        """The sessions only the proxy can route (each rebuilt at least once)."""
        return [session for session in self._sessions.values() if session.remapped]

    def _remember_forgotten(self, client_id: str) -> None:
        self._forgotten.pop(client_id, None)
        self._forgotten[client_id] = None
        if len(self._forgotten) > MAX_FORGOTTEN:
            del self._forgotten[next(iter(self._forgotten))]

    def _make_room(self, adding: int) -> list[LegacySession]:
        """Forget the idle ones at the front (a bounded number), then the least recently used while full
        (sessions or bytes, with `adding` more to come). A session listened to (an open GET stream) is
        in use: it goes to the back instead. One being rebuilt is left alone while any other can go (its
        rebuild's new upstream session would be left to nobody)."""
        forgotten: list[LegacySession] = []
        horizon = self._clock() - self.config.idle_timeout
        for _ in range(_SWEEP_PER_OPEN):
            oldest = next(iter(self._sessions.values()), None)
            if oldest is None or oldest.last_used > horizon or oldest.rebuilding is not None:
                break
            if oldest.streams:
                self.get(oldest.client_id)  # listened to: in use
                continue
            forgotten.append(oldest)
            self.forget(oldest.client_id)
            self._remember_forgotten(oldest.client_id)
        while self._sessions and (
            len(self._sessions) >= self.config.max_sessions or self.bytes + adding > MAX_TABLE_BYTES
        ):
            sessions = self._sessions.values()
            victim = next((s for s in sessions if s.rebuilding is None and not s.streams), None)
            victim = victim or next((s for s in sessions if s.rebuilding is None), None) or next(iter(sessions))
            forgotten.append(victim)
            self.forget(victim.client_id)
            self._remember_forgotten(victim.client_id)
        return forgotten
