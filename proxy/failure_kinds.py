"""The failure vocabulary: what went wrong with one upstream attempt, as events and metrics name it.

Its own module at the bottom of the package because two sides read it that must not read each other:
`proxy.policies.failures` judges replies into these kinds (and decides what counts against a breaker),
and the analyzer, which reads only events and config, interprets the same kinds in the events it reads.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["SERVER_SIDE", "TRANSPORT", "Failure"]


class Failure(StrEnum):
    OK = "ok"
    CONNECT_ERROR = "connect_error"
    CONNECTION_LOST = "connection_lost"
    TIMEOUT = "timeout"
    HTTP_5XX = "http_5xx"
    HTTP_429 = "http_429"
    SESSION_EXPIRED = "session_expired"
    SERVER_ERROR = "server_error"
    BAD_RESPONSE = "bad_response"
    STREAM_BROKEN = "stream_broken"
    STREAM_ENDED = "stream_ended"
    CLIENT_ERROR = "client_error"
    TOOL_ERROR = "tool_error"
    ANSWER_TOO_LARGE = "answer_too_large"
    OVERLOADED = "overloaded"
    CANCELLED = "cancelled"
    STREAMING = "streaming"
    """Not an outcome yet: a streamed answer's headers came, its end decides (the handler reports it)."""


TRANSPORT: frozenset[Failure] = frozenset(
    {Failure.CONNECT_ERROR, Failure.CONNECTION_LOST, Failure.BAD_RESPONSE, Failure.STREAM_BROKEN}
)
"""The upstream could not be talked to at all: these alone move passive health (and so readiness)."""
SERVER_SIDE: frozenset[Failure] = TRANSPORT | {Failure.TIMEOUT, Failure.HTTP_5XX}
"""The upstream failed as a server: these alone count against the upstream's breaker."""
