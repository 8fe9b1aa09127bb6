"""The client connection's states, the events that move them, and every legal step: one table (h11's rule).

Rule: every change of `ClientConnection.state` is a row of `TRANSITIONS`, looked up as
``TRANSITIONS[state][event]``; an event the table does not list for the current state raises
`IllegalTransition`. That is always the caller's bug: whatever the upstream sends, its bytes lead to a
response or to CLOSED, never to an illegal step. The table is the whole of what may happen to a connection;
`connection.py` says when each event happens.

::

    IDLE --SEND--> AWAIT_HEAD --HEAD--> BODY --END--> DONE --REUSE--> IDLE
                                         |             ^
                                         +--DISCARD--> DRAIN --END--+
    (any state but CLOSED) --CLOSE--> CLOSED
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "AWAIT_HEAD",
    "BODY",
    "CLOSE",
    "CLOSED",
    "CLOSED_NOW",
    "DISCARD",
    "DONE",
    "DRAIN",
    "DRAINED",
    "END",
    "ENDED",
    "HEAD",
    "HEAD_ARRIVED",
    "IDLE",
    "REUSE",
    "SEND",
    "TRANSITIONS",
    "Event",
    "IllegalTransition",
    "State",
]


class State(enum.StrEnum):
    """Where the connection is in its exchange. One exchange at a time; CLOSED is final."""

    IDLE = "idle"
    """Kept alive between exchanges. A byte arriving now answers nobody: the connection closes."""
    AWAIT_HEAD = "await_head"
    """A request is out (or going out). Interim 1xx heads come and go; the final head moves on."""
    BODY = "body"
    """The final head arrived; body bytes are buffered for the reader (`take`)."""
    DRAIN = "drain"
    """The reader gave up on the body (`discard`): the rest is dropped as it comes, within a budget."""
    DONE = "done"
    """The whole response arrived (its body may still be buffered); `finish` decides what comes next."""
    CLOSED = "closed"
    """Never used again: a bad or over-bound answer, the peer's close, the caller's abort, no keep-alive."""


class Event(enum.StrEnum):
    """What moves the state: the caller's actions (SEND, DISCARD, REUSE, CLOSE) or the upstream's bytes."""

    SEND = "send"
    HEAD = "head"
    END = "end"
    DISCARD = "discard"
    REUSE = "reuse"
    CLOSE = "close"


IDLE, AWAIT_HEAD, BODY, DRAIN, DONE, CLOSED = State  # module-level names: enum attribute access is slow
SEND, HEAD, END, DISCARD, REUSE, CLOSE = Event

TRANSITIONS: Final[dict[State, dict[Event, State]]] = {
    IDLE: {SEND: AWAIT_HEAD, CLOSE: CLOSED},
    AWAIT_HEAD: {HEAD: BODY, CLOSE: CLOSED},
    BODY: {END: DONE, DISCARD: DRAIN, CLOSE: CLOSED},
    DRAIN: {END: DONE, CLOSE: CLOSED},
    DONE: {REUSE: IDLE, CLOSE: CLOSED},
    CLOSED: {},
}
"""Every legal step, and nothing else. REUSE only from DONE: a response not yet whole, or a connection that
closed, is never reused. CLOSED has no way out (and closing twice is not a step: `close` returns False)."""

# What `feed` returns: bits of what happened during that call, for the I/O side to act on once per read.
HEAD_ARRIVED: Final = 1
"""The final head is in (`status`, `reason`, `headers`): the request's waiter can have its response."""
ENDED: Final = 2
"""The response is complete (`complete`): a reader waiting for more can take the rest."""
DRAINED: Final = 4
"""A `discard`ed body ended within its budget: the connection may be `finish`ed (and reused)."""
CLOSED_NOW: Final = 8
"""The connection closed during this call (`error` says why, unless the response was already complete)."""


class IllegalTransition(RuntimeError):
    """The caller asked for a step `TRANSITIONS` does not allow in the current state (a bug, never the upstream's)."""
