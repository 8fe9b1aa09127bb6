"""A pool's idle connections: by owner for reuse, by age for expiry and for making room.

Two views of one set, kept in step: each owner's idle connections as a stack (the most recently used on
top: reused first, as the least likely to have been closed by the server meanwhile), and all of them in
the order they went idle (the least recently used first: what expires first, and what is closed to make
room for another owner at the pool's limit). Whether a connection is still fit is the state machine's
answer (`is_closed`, `has_expired`); a connection found unfit on the way is closed here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.upstream.http11.protocol import ConnectionProtocol

__all__ = ["IdleConnections"]


class IdleConnections:
    __slots__ = ("_by_owner", "_order")

    def __init__(self) -> None:
        self._by_owner: dict[int | None, list[ConnectionProtocol]] = {}
        """Each owner's idle connections, the most recently used last (an owner with none has no entry:
        owners are client connections, and come and go)."""
        self._order: dict[ConnectionProtocol, None] = {}
        """Every idle connection, the least recently used first."""

    def __len__(self) -> int:
        return len(self._order)

    def add(self, conn: ConnectionProtocol) -> None:
        """`conn` has just finished an exchange and waits for its owner's next one."""
        stack = self._by_owner.get(conn.owner)
        if stack is None:
            self._by_owner[conn.owner] = [conn]
        else:
            stack.append(conn)
        self._order[conn] = None

    def take(self, owner: int | None, now: float) -> ConnectionProtocol | None:
        """`owner`'s most recently used idle connection that is still fit, out of the set; the unfit ones
        found on the way are closed."""
        stack = self._by_owner.get(owner)
        while stack:
            conn = stack[-1]
            self.remove(conn)
            if not conn.is_closed() and not conn.has_expired(now):
                return conn
            conn.abort()
        return None

    def remove(self, conn: ConnectionProtocol) -> None:
        """Take `conn` out, if it is idle."""
        if conn not in self._order:
            return
        del self._order[conn]
        stack = self._by_owner[conn.owner]
        if stack[-1] is conn:
            stack.pop()
        else:
            stack.remove(conn)
        if not stack:
            del self._by_owner[conn.owner]

    def close_oldest(self) -> None:
        """Close the least recently used idle connection (to make room for another owner's)."""
        conn = next(iter(self._order))
        self.remove(conn)
        conn.abort()

    def close_expired(self, now: float) -> float | None:
        """Close the connections idle past their keep-alive, oldest first; return when the next one
        expires (None: no idle connection is left)."""
        order = self._order
        while order:
            oldest = next(iter(order))
            if not oldest.has_expired(now):
                return oldest.expires_at
            self.remove(oldest)
            oldest.abort()
        return None

    def clear(self) -> None:
        self._by_owner.clear()
        self._order.clear()
