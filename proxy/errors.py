"""The proxy's own failures, and the stable JSON-RPC errors clients get for them.

Foreign exceptions (the HTTP client's, asyncio's, the OS's) are translated into this tree at one boundary
(`proxy.upstream.transport.upstream_errors`), each raised ``from`` the original, so policies and the handler
never catch a library's error type::

    ProxyError                      reason                  code    HTTP
    ├── UpstreamError
    │   ├── UpstreamUnavailable     upstream_unavailable    -32050  502  never reached / connection failed
    │   │   ├── NeverSent                                                provably not sent: safe to retry
    │   │   └── StreamEndedEarly                                         a read's stream ended cleanly, unanswered
    │   ├── UpstreamTimeout         upstream_timeout        -32051  504  an attempt or the deadline ran out
    │   ├── UpstreamProtocolError   upstream_bad_response   -32055  502  an answer that is not HTTP
    │   │   └── AnswerTooLarge                                           over limits.max_response_bytes
    │   └── StreamBroken            upstream_stream_broken  -32056  (in the stream) SSE broke before its response
    │       └── StreamSilent                                             silent past stream_idle
    ├── CircuitOpen                 circuit_open            -32052  503  data: cause, lastFailure
    ├── RateLimited                 rate_limited            -32053  429
    ├── RetryBudgetExhausted        retry_budget_exhausted  -32054  503
    ├── ProxyOverloaded             proxy_overloaded        -32058  503  no free upstream connection in time
    │   └── ClientOverloaded        client_overloaded       -32059  429  this client's concurrency cap
    └── UnsendableRequest           unsendable_request      -32600  400  a header that cannot be sent

-32057 (`upstream_http_error`) is retired: an upstream's own answer, whatever its status and body,
now reaches the client unchanged. A retired code is never reused.

The codes sit in JSON-RPC's implementation-defined server range, away from -32000…-32019 (which
upstream servers use) and -32020…-32022 (defined by MCP 2026-07-28), so a client can tell a proxy
verdict from an upstream's answer. They are part of the public contract: never renumber them.

The HTTP status mirrors the verdict, as Envoy's would (502/503/504/429), and the body is always the
JSON-RPC error: the official SDK clients (mcp 2.3, measured) raise the body's error with its `code`
and `data` for any status when the body is a JSON-RPC error, and keep the session alive.
"""

from __future__ import annotations

import math

from typing import Any, ClassVar

__all__ = [
    "CircuitOpen",
    "NeverSent",
    "ProxyError",
    "AnswerTooLarge",
    "ClientOverloaded",
    "ProxyOverloaded",
    "RateLimited",
    "RetryBudgetExhausted",
    "StreamBroken",
    "StreamEndedEarly",
    "StreamSilent",
    "UnsendableRequest",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class ProxyError(Exception):
    """A call the proxy answers itself, with `code`, `reason` and optional `retry_after` seconds."""

    code: ClassVar[int] = -32050
    reason: ClassVar[str] = "upstream_unavailable"
    http_status: ClassVar[int] = 502
    attempt: object = None
    """The `proxy.policies.base.Attempt` that ended in this error, marked by the retry stage (typed
    loosely: errors sit below policies); `proxy.policies.base.last_attempt` reads it."""

    def __init__(self, message: str, *, upstream: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.upstream = upstream
        self.retry_after = retry_after

    def status(self) -> int:
        """The HTTP status to answer with."""
        return self.http_status

    def error_data(self) -> dict[str, Any]:
        """The `data` member of the JSON-RPC error: machine-readable, no secrets, no stack."""
        data: dict[str, Any] = {"reason": self.reason}
        if self.upstream is not None:
            data["upstream"] = self.upstream
        if self.retry_after is not None:
            # Rounded up to the millisecond: a client must never be told to come back before it may (a
            # refusal after a bounded wait can be a fraction of a millisecond early, and rounding it to
            # the nearest gave ``retryAfter: 0``).
            ms = math.ceil(round(self.retry_after * 1000, 6))  # float dust never adds a millisecond
            data["retryAfter"] = max(ms, 1) / 1000 if self.retry_after > 0 else 0.0
        return data


class UpstreamError(ProxyError):
    """The upstream could not give a usable answer."""


class UpstreamUnavailable(UpstreamError):
    """Connecting to or talking to the upstream failed; the request may have been sent."""

    code = -32050
    reason = "upstream_unavailable"


class NeverSent(UpstreamUnavailable):
    """The request provably never reached the upstream (connect refused, DNS, pool wait): any call may retry."""


class UpstreamTimeout(UpstreamError):
    """An attempt or the call's deadline ran out; the upstream may still be executing the request.

    `excused`: the timeout is no evidence against the upstream: the call's own arguments decide how long
    it takes (a tool, a resource read), or part of the attempt's time went on queueing for a pooled
    connection (the proxy's load, not the server's)."""

    code = -32051
    reason = "upstream_timeout"
    http_status = 504

    def __init__(
        self, message: str, *, upstream: str | None = None, retry_after: float | None = None, excused: bool = False
    ) -> None:
        super().__init__(message, upstream=upstream, retry_after=retry_after)
        self.excused = excused


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with something that is not a usable MCP answer (e.g. an oversized body)."""

    code = -32055
    reason = "upstream_bad_response"


class AnswerTooLarge(UpstreamProtocolError):
    """The answer is larger than `limits.max_response_bytes`: our limit, not the server failing (a client
    can ask for a huge resource), so it never counts against the upstream."""


class StreamEndedEarly(UpstreamUnavailable):
    """The upstream ended a buffered read's SSE stream cleanly, without the response and without event ids
    to resume from (it ended the session, or chose to): an answer of sorts, not a broken connection."""


class StreamBroken(UpstreamError):
    """A streamed (SSE) answer ended or went silent before the final JSON-RPC response."""

    code = -32056
    reason = "upstream_stream_broken"


class StreamSilent(StreamBroken):
    """A streamed answer stayed silent past `timeouts.stream_idle`: a long tool run without progress looks
    the same as a hung server, so it is no evidence against the upstream on its own."""


class CircuitOpen(ProxyError):
    """The breaker is open: the call was not sent. `cause` says why it opened, `last_failure` what the
    last counted failure was, so the client and the operator see the upstream's problem, not just ours."""

    code = -32052
    reason = "circuit_open"
    http_status = 503

    def __init__(
        self,
        message: str,
        *,
        upstream: str | None = None,
        retry_after: float | None = None,
        cause: str | None = None,
        last_failure: str | None = None,
    ) -> None:
        super().__init__(message, upstream=upstream, retry_after=retry_after)
        self.cause = cause
        self.last_failure = last_failure

    def error_data(self) -> dict[str, Any]:
        data = super().error_data()
        if self.cause is not None:
            data["cause"] = self.cause
        if self.last_failure is not None:
            data["lastFailure"] = self.last_failure
        return data


class RateLimited(ProxyError):
    """The client's bucket is empty and the bounded wait ran out, or the upstream said 429."""

    code = -32053
    reason = "rate_limited"
    http_status = 429


class RetryBudgetExhausted(ProxyError):
    """Retrying would exceed the retry budget; the last attempt's failure is what the client hears."""

    code = -32054
    reason = "retry_budget_exhausted"
    http_status = 503


class ProxyOverloaded(ProxyError):
    """The proxy ran out of its own resources (every pooled connection busy past `timeouts.connect`):
    the request was not sent, and it says nothing about the upstream, so nothing counts it."""

    code = -32058
    reason = "proxy_overloaded"
    http_status = 503


class ClientOverloaded(ProxyOverloaded):
    """This client already has `pool.max_per_client` calls or streams open to the upstream: the cap that
    keeps one client's stuck calls or long-lived streams from starving the others."""

    code = -32059
    reason = "client_overloaded"
    http_status = 429


class UnsendableRequest(ProxyError):
    """The request cannot be written upstream as it is (a header value with a line break): the client's
    request, refused before anything was sent."""

    code = -32600
    reason = "unsendable_request"
    http_status = 400
