"""The one failure classifier: what an attempt's outcome means, for retry, breaker, cache and events.

Every stage asks this module, never the raw reply, so they cannot disagree::

    kind              from                                    breaker  retry_on key     never sent
    ok                2xx answer (SSE: its headers)           success  -
    connect_error     NeverSent (refused, DNS, connect t/o)   failure  connect_error    yes
    connection_lost   UpstreamUnavailable after sending       failure  connect_error    no
    timeout           UpstreamTimeout                         failure  timeout          no
    http_5xx          HTTP 500-599                            failure  http_5xx         no
    http_429          HTTP 429 (+ Retry-After)                -        http_429         no
    session_expired   HTTP 404 on a request with a session    -        session_expired  no
    server_error      JSON-RPC -32603, -32000…-32019          failure  server_error     no
    bad_response      UpstreamProtocolError                   failure  -                no
    stream_broken     StreamBroken                            failure  -                no
    client_error      other 4xx; JSON-RPC -32700, -32600…-32602, -32020…-32022, other codes
                                                              -        -                no
    tool_error        tools/call result with isError: true    -        -                no
    cancelled         the client went away                    -        -                no

429 feeds backoff, not the breaker (the upstream is alive and asking for less); a client's mistake
and a cancelled call count as nothing; a tool that reports an error did run, so it is a tool
failure to count per tool, not a transport failure.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from proxy.errors import NeverSent, ProxyError, StreamBroken, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from proxy.jsonrpc import response_error
from proxy.policies.base import Call, Handler, Reply

__all__ = ["Failure", "Verdict", "classify_error", "classify_reply", "judged", "parse_retry_after", "verdict_of"]


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
    CLIENT_ERROR = "client_error"
    TOOL_ERROR = "tool_error"
    CANCELLED = "cancelled"


SERVER_SIDE: frozenset[Failure] = frozenset(
    {
        Failure.CONNECT_ERROR,
        Failure.CONNECTION_LOST,
        Failure.TIMEOUT,
        Failure.HTTP_5XX,
        Failure.SERVER_ERROR,
        Failure.BAD_RESPONSE,
        Failure.STREAM_BROKEN,
    }
)
_RETRY_KEY = {
    Failure.CONNECT_ERROR: "connect_error",
    Failure.CONNECTION_LOST: "connect_error",
    Failure.TIMEOUT: "timeout",
    Failure.HTTP_5XX: "http_5xx",
    Failure.HTTP_429: "http_429",
    Failure.SESSION_EXPIRED: "session_expired",
    Failure.SERVER_ERROR: "server_error",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt's outcome means."""

    kind: Failure
    never_sent: bool = False
    retry_after: float | None = None
    http_status: int | None = None
    jsonrpc_code: int | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.kind is Failure.OK

    @property
    def server_failure(self) -> bool:
        """Counts against the upstream's health (breaker, passive health)."""
        return self.kind in SERVER_SIDE

    def as_error(self) -> dict[str, Any]:
        """The `error` member of a failure event."""
        return {
            "kind": self.kind.value,
            "http_status": self.http_status,
            "jsonrpc_code": self.jsonrpc_code,
            "message": self.message,
        }

    @property
    def retry_key(self) -> str | None:
        """The `retry.retry_on` entry that covers this outcome, if any."""
        return _RETRY_KEY.get(self.kind)


MAX_RETRY_AFTER = 86_400.0
"""An upstream's Retry-After is capped at a day: anything longer is not a plan, and must not overflow."""

OK = Verdict(Failure.OK)
CANCELLED = Verdict(Failure.CANCELLED)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return min(max(0.0, when.timestamp() - (time.time() if now is None else now)), MAX_RETRY_AFTER)


def _jsonrpc_kind(code: int) -> Failure:
    if code == -32603 or -32019 <= code <= -32000:
        return Failure.SERVER_ERROR
    return Failure.CLIENT_ERROR


def classify_error(error: ProxyError) -> Verdict:
    """The verdict for an attempt that raised."""
    if isinstance(error, NeverSent):
        return Verdict(Failure.CONNECT_ERROR, never_sent=True, message=error.message)
    if isinstance(error, UpstreamTimeout):
        return Verdict(Failure.TIMEOUT, message=error.message)
    if isinstance(error, StreamBroken):
        return Verdict(Failure.STREAM_BROKEN, message=error.message)
    if isinstance(error, UpstreamProtocolError):
        return Verdict(Failure.BAD_RESPONSE, message=error.message)
    if isinstance(error, UpstreamUnavailable):
        return Verdict(Failure.CONNECTION_LOST, message=error.message)
    return Verdict(Failure.CLIENT_ERROR, message=error.message)  # proxy verdicts: not the upstream's fault


def _is_tool_error(message: Any) -> bool:
    result = message.get("result") if isinstance(message, dict) else None
    return isinstance(result, dict) and result.get("isError") is True


def classify_reply(reply: Reply, had_session: bool, now: float | None = None) -> Verdict:
    """The verdict for an attempt that came back with an HTTP answer."""
    status = reply.status
    if status == 429:
        retry_after = parse_retry_after(reply.headers.get("Retry-After"), now)
        return Verdict(Failure.HTTP_429, retry_after=retry_after, http_status=429, message="upstream rate limited")
    if status >= 500:
        return Verdict(Failure.HTTP_5XX, http_status=status, message=f"upstream answered HTTP {status}")
    if status == 404 and had_session:
        return Verdict(Failure.SESSION_EXPIRED, http_status=404, message="upstream session expired")
    if status >= 400:
        error = response_error(reply.message)
        return Verdict(
            Failure.CLIENT_ERROR if error is None else _jsonrpc_kind(error[0]),
            http_status=status,
            jsonrpc_code=None if error is None else error[0],
            message=f"upstream answered HTTP {status}" if error is None else error[1],
        )
    error = response_error(reply.message)
    if error is not None:
        return Verdict(_jsonrpc_kind(error[0]), http_status=status, jsonrpc_code=error[0], message=error[1])
    if _is_tool_error(reply.message):
        return Verdict(Failure.TOOL_ERROR, http_status=status, message="tool reported isError")
    return OK


def verdict_of(reply: Reply, had_session: bool, now: float | None = None) -> Verdict:
    """`classify_reply`, computed once per reply: every stage that asks gets the same verdict."""
    verdict = reply.verdict
    if verdict is None:
        verdict = reply.verdict = classify_reply(reply, had_session, now)
    return verdict  # type: ignore[no-any-return]


async def judged(call: Call, next: Handler, record: Callable[[Verdict], None]) -> Reply:
    """Run one attempt through `next` and hand its verdict to `record`, whatever happens.

    The stages that count attempts (breaker, passive health) share this: a cancelled attempt is
    recorded as `CANCELLED` (it counts as nothing), an error by its kind, an answer by its verdict.
    """
    verdict = CANCELLED
    try:
        reply = await next(call)
        verdict = verdict_of(reply, call.session_id is not None)
        return reply
    except ProxyError as exc:
        verdict = classify_error(exc)
        raise
    finally:
        record(verdict)
