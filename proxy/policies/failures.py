"""The one failure classifier: what an attempt's outcome means, for retry, breaker, health, cache and events.

Every stage asks this module, never the raw reply, so they cannot disagree. The rule that decides
everything: **an upstream failed as a server only when it did not answer as an application.**

    kind               from                                         breaker  health  retry_on key
    ok                 a 2xx answer that is not a JSON-RPC error    success  success -
    connect_error      NeverSent: refused, DNS, connect timeout     failure  failure connect_error (any call)
    connection_lost    the connection broke after sending           failure  failure connect_error
    bad_response       an answer that is not HTTP, or one carrying  failure  failure -
                       another request's id (a stray)
    stream_broken      an SSE answer broke before its response      failure  failure -
    timeout            `per_try` ran out after sending, on one of   failure  -       timeout
                       the protocol's own methods (initialize,
                       ping, server/discover, */list, ...)
    timeout, client-   the same on tools/call, resources/read,      -        -       timeout
      paced            prompts/get, completion/complete: the
                       client's arguments set how long they take
    http_5xx           HTTP 502/503/504; another 5xx without a      failure  -       http_5xx
                       JSON-RPC body
    http_429           HTTP 429 (+ Retry-After)                     -        -       http_429
    stream_ended       a read's SSE stream ended cleanly without    -        -       -
                       its response (the server ended the session)
    session_expired    404 on a session request, or the server's    -        -       session_expired
                       400 "no valid session" answer
    server_error       JSON-RPC -32603 or -32000…-32099 (not        -        -       server_error (opt-in)
                       -32002, -32020…-32022), any status but 502-504
    client_error       any other JSON-RPC error; a 4xx without one  -        -       -
    tool_error         a tools/call result with isError: true       -        -       -
    answer_too_large   an answer over limits.max_response_bytes     -        -       -
    overloaded         the proxy's own resources ran out (no free   -        -       -
                       pooled connection in time, a client's cap)
    cancelled          the client went away                         -        -       -

Why the line is drawn there (Envoy's split of locally originated errors and gateway failures; Linkerd's
failure accrual on responses): only the *absence* of an answer (nothing connected, the connection broke,
nothing came in time, bytes that are not HTTP) and the statuses a gateway uses for "the server behind me
is not there" (502/503/504) say the server is down. Everything the server *answered* is the application
speaking, and it is usually about the request: real servers answer a client's mistake with -32603
(the Python SDK for an unknown prompt), -32002 (resource not found, SEP-2164), 400 -32000
(server-everything for a request without a session) or -32602. Counting those upstream-wide let two
bad calls from one client open the breaker for every client and pull /readyz. Where we differ from
Envoy: its default `consecutive_5xx` counts every 5xx, but an MCP server answering a 500 with a
JSON-RPC body has answered (the SDKs send -32603 that way), so only a 5xx *without* one counts; and a
JSON-RPC error inside a 200 is invisible to an HTTP proxy, visible and deliberately ignored here.
Application errors can still be counted, per tool and only when configured (`app_breaker`).

A timeout is counted upstream-wide only where the server alone decides how long the call takes: one
client asking a tool for five minutes of work, five times at once, must not open the breaker for
everybody (measured: it did, and the same client then took every half-open trial). Such timeouts count
per tool, in an `app_breaker` with `errors: [timeout]`; a hung server still times out on the protocol's
own calls and fails its active probes.

The health column is narrower than the breaker's: readiness (a pod leaving its Service) follows the
transport alone. A timeout or a 503 may be one slow or overloaded tool, which a breaker should shed;
only a server that cannot be reached or does not speak HTTP makes the pod useless, and active probes
(which have their own timeout) find a hung one. Running out of the proxy's own resources is the
proxy's condition, never the upstream's: it counts nowhere and is not retried.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from proxy.failure_kinds import SERVER_SIDE, TRANSPORT, Failure
from proxy.errors import (
    AnswerTooLarge,
    NeverSent,
    ProxyError,
    ProxyOverloaded,
    StreamBroken,
    StreamEndedEarly,
    StreamSilent,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.mcp.jsonrpc import response_error
from proxy.policies.base import Attempt, AttemptHandler, Reply

__all__ = [
    "SERVER_SIDE",
    "SESSION_LOST_TEXTS",
    "TRANSPORT",
    "Failure",
    "Verdict",
    "classify_error",
    "classify_reply",
    "judged",
    "parse_retry_after",
    "session_lost_answer",
    "verdict_of",
]


GATEWAY_STATUSES = frozenset({502, 503, 504})
"""What a gateway answers when the server behind it is not there: a failure whatever the body says."""
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
    excused: bool = False
    """A timeout that is no evidence against the upstream: a call whose arguments decide its length
    (`proxy.mcp.jsonrpc.CLIENT_PACED_METHODS`), an attempt that spent part of its time queued for a pooled
    connection, or a stream silent past `stream_idle` (a long run without progress looks the same)."""

    @property
    def ok(self) -> bool:
        return self.kind is Failure.OK

    @property
    def server_failure(self) -> bool:
        """The upstream failed as a server: counts against its breaker."""
        return self.kind in SERVER_SIDE and not self.excused

    @property
    def upstream_failed(self) -> bool:
        """The upstream failed to serve this answer: a server failure, or its own backpressure (429). What a
        cached answer may stand in for, and what a client hearing it is reported as a failure."""
        return self.server_failure or self.kind is Failure.HTTP_429

    @property
    def transport_failure(self) -> bool:
        """The upstream could not be reached or does not speak HTTP: counts against its health."""
        return self.kind in TRANSPORT and not self.excused

    @property
    def application_answer(self) -> bool:
        """The upstream answered a request with an error of its own (JSON-RPC error, 4xx, isError)."""
        return self.kind in _APPLICATION

    def as_error(self) -> dict[str, Any]:
        """The `error` member of a failure event."""
        return {
            "kind": self.kind.value,
            "http_status": self.http_status,
            "jsonrpc_code": self.jsonrpc_code,
            "message": self.message,
        }

    def describe(self) -> str:
        """One line for people, in the proxy's own words only (an open breaker's error names its last
        failure to every client, so a server's message, which may carry another client's data, stays out)."""
        if self.kind in SERVER_SIDE and self.http_status is None:
            return f"{self.kind.value}: {self.message[:200]}" if self.message else self.kind.value
        parts = [self.kind.value]
        if self.http_status is not None:
            parts.append(f"HTTP {self.http_status}")
        if self.jsonrpc_code is not None:
            parts.append(f"JSON-RPC {self.jsonrpc_code}")
        return ", ".join(parts)

    @property
    def retry_key(self) -> str | None:
        """The `retry.retry_on` entry that covers this outcome, if any."""
        return _RETRY_KEY.get(self.kind)


_APPLICATION = frozenset({Failure.SERVER_ERROR, Failure.CLIENT_ERROR, Failure.TOOL_ERROR, Failure.SESSION_EXPIRED})

MAX_RETRY_AFTER = 86_400.0
"""An upstream's Retry-After is capped at a day: anything longer is not a plan, and must not overflow."""

OK = Verdict(Failure.OK)
CANCELLED = Verdict(Failure.CANCELLED)
STREAMING = Verdict(Failure.STREAMING)


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


REQUEST_CODES = frozenset({-32002, -32020, -32021, -32022})
"""Codes MCP gives a meaning about the request inside the server range: resource not found (SEP-2164),
and the 2026-07-28 header/body mismatch and unsupported-version answers."""


def _jsonrpc_kind(code: int) -> Failure:
    """JSON-RPC's internal error and its implementation-defined server range (but the codes MCP defines
    about the request): the server says it failed this request, which a retry might fix when configured;
    every other code says the request was wrong. Neither counts against the upstream."""
    if code == -32603 or (-32099 <= code <= -32000 and code not in REQUEST_CODES):
        return Failure.SERVER_ERROR
    return Failure.CLIENT_ERROR


def classify_error(error: ProxyError) -> Verdict:
    """The verdict for an attempt that raised."""
    if isinstance(error, ProxyOverloaded):
        return Verdict(Failure.OVERLOADED, never_sent=True, message=error.message)
    if isinstance(error, NeverSent):
        return Verdict(Failure.CONNECT_ERROR, never_sent=True, message=error.message)
    if isinstance(error, UpstreamTimeout):
        return Verdict(Failure.TIMEOUT, message=error.message, excused=error.excused)
    if isinstance(error, StreamBroken):
        return Verdict(Failure.STREAM_BROKEN, message=error.message, excused=isinstance(error, StreamSilent))
    if isinstance(error, StreamEndedEarly):
        return Verdict(Failure.STREAM_ENDED, message=error.message)
    if isinstance(error, AnswerTooLarge):
        return Verdict(Failure.ANSWER_TOO_LARGE, message=error.message)
    if isinstance(error, UpstreamProtocolError):
        return Verdict(Failure.BAD_RESPONSE, message=error.message)
    if isinstance(error, UpstreamUnavailable):
        return Verdict(Failure.CONNECTION_LOST, message=error.message)
    return Verdict(Failure.CLIENT_ERROR, message=error.message)  # proxy verdicts: not the upstream's fault


def _is_answer(message: Any) -> bool:
    """A JSON-RPC response (a result, or an error object): the server answered, whatever the HTTP status
    says. Any JSON with an `error` key is not one (`{"error": "Internal Server Error"}` is a web page's)."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or "id" not in message:
        return False
    return "result" in message or isinstance(message.get("error"), dict)


def _is_tool_error(message: Any) -> bool:
    result = message.get("result") if isinstance(message, dict) else None
    return isinstance(result, dict) and result.get("isError") is True


SESSION_LOST_TEXTS: Final = frozenset({"bad request: no valid session id provided", "session not found"})
"""What a 400 that means a lost session says, in full (compared without case): server-everything's
"Bad Request: No valid session ID provided" (the TypeScript SDK's examples), and "Session not found".
A 400 is matched on its whole message, never on a word in it: the TypeScript SDK's "Unsupported protocol
version: <the client's header>" echoes what a client sent, and a client must not make the proxy believe
its session was lost."""


def _session_lost(status: int, code: int | None, text: str) -> bool:
    """An ended or unknown session: 404 per the spec (the SDK servers: -32600 "Session not found", the
    TypeScript SDK's transport -32001); server-everything answers 400 with -32000 "Bad Request: No valid
    session ID provided" instead (and no ``id``). Any other 400 ("Server not initialized", "Missing
    session ID", an unsupported version) is a client's mistake, never a loss."""
    if status == 404:
        return True
    return status == 400 and code in (-32000, -32001) and text.strip().lower() in SESSION_LOST_TEXTS


def session_lost_answer(status: int, message: Any) -> bool:
    """Whether an answer to a request that carried a session id says the upstream lost that session."""
    if status < 400:
        return False
    error = response_error(message)
    code, text = error if error is not None else (None, "")
    return _session_lost(status, code, text)


def classify_reply(reply: Reply, had_session: bool, now: float | None = None) -> Verdict:
    """The verdict for an attempt that came back with an HTTP answer."""
    status = reply.status
    if status == 429:
        retry_after = parse_retry_after(reply.headers.get("Retry-After"), now)
        return Verdict(Failure.HTTP_429, retry_after=retry_after, http_status=429, message="upstream rate limited")
    error = response_error(reply.message)
    code, text = error if error is not None else (None, "")
    if status in GATEWAY_STATUSES or (status >= 500 and not _is_answer(reply.message)):
        retry_after = parse_retry_after(reply.headers.get("Retry-After"), now)
        return Verdict(
            Failure.HTTP_5XX, retry_after=retry_after, http_status=status, jsonrpc_code=code,
            message=text or f"upstream answered HTTP {status}",
        )  # fmt: skip
    if had_session and status >= 400 and _session_lost(status, code, text):
        return Verdict(
            Failure.SESSION_EXPIRED, http_status=status, jsonrpc_code=code, message=text or "upstream session expired"
        )
    if error is not None:
        assert code is not None
        return Verdict(_jsonrpc_kind(code), http_status=status, jsonrpc_code=code, message=text)
    if status >= 400:
        return Verdict(Failure.CLIENT_ERROR, http_status=status, message=f"upstream answered HTTP {status}")
    if _is_tool_error(reply.message):
        return Verdict(Failure.TOOL_ERROR, http_status=status, message="tool reported isError")
    return OK


def verdict_of(reply: Reply, had_session: bool, now: float | None = None) -> Verdict:
    """`classify_reply`, computed once per reply: every stage that asks gets the same verdict."""
    verdict = reply.verdict
    if verdict is None:
        verdict = reply.verdict = classify_reply(reply, had_session, now)
    return verdict  # type: ignore[no-any-return]


async def judged(attempt: Attempt, next: AttemptHandler, record: Callable[[Verdict], None]) -> Reply:
    """Run one attempt through `next` and hand its verdict to `record`, whatever happens.

    The stages that count attempts (breaker, passive health) share this: a cancelled attempt is
    recorded as `CANCELLED` (it counts as nothing), an error by its kind, an answer by its verdict, and
    a streamed answer that started well as `STREAMING`: how it ends is its verdict, which the handler
    reports once the stream is over (`proxy.server.pump.settled`).
    """
    verdict = CANCELLED
    try:
        reply = await next(attempt)
        verdict = verdict_of(reply, attempt.call.session_id is not None)
        if verdict.ok and reply.stream is not None:
            verdict = STREAMING
        return reply
    except ProxyError as exc:
        verdict = classify_error(exc)
        raise
    finally:
        record(verdict)
