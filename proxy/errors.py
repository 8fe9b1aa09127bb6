"""The proxy's own failures, and the stable JSON-RPC errors clients get for them.

Foreign exceptions (the HTTP client's, asyncio's) are translated into this tree at the boundary (`transport.py`),
so policies and the handler never catch a library's error type::

    ProxyError                      reason                  code    HTTP
    ├── UpstreamError
    │   ├── UpstreamUnavailable     upstream_unavailable    -32050  502  never reached / connection failed
    │   │   └── NeverSent                                                provably not sent: safe to retry
    │   ├── UpstreamTimeout         upstream_timeout        -32051  504  an attempt or the deadline ran out
    │   ├── UpstreamProtocolError   upstream_bad_response   -32055  502  an answer that is not MCP
    │   ├── UpstreamHttpError       upstream_http_error     -32057  (the upstream's) an HTTP error without a JSON-RPC body
    │   └── StreamBroken            upstream_stream_broken  -32056  (in the stream) SSE ended before its response
    ├── CircuitOpen                 circuit_open            -32052  503
    ├── RateLimited                 rate_limited            -32053  429
    └── RetryBudgetExhausted        retry_budget_exhausted  -32054  503

The codes sit in JSON-RPC's implementation-defined server range, away from -32000…-32019 (which
upstream servers use) and -32020…-32022 (defined by MCP 2026-07-28), so a client can tell a proxy
verdict from an upstream's answer. They are part of the public contract: never renumber them.

The HTTP status mirrors the verdict, as Envoy's would (502/503/504/429), and the body is always the
JSON-RPC error: the official SDK clients (mcp 2.3, measured) raise the body's error with its `code`
and `data` for any status when the body is a JSON-RPC error, and keep the session alive.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "CircuitOpen",
    "NeverSent",
    "ProxyError",
    "RateLimited",
    "UpstreamRateLimited",
    "RetryBudgetExhausted",
    "StreamBroken",
    "UpstreamError",
    "UpstreamHttpError",
    "UpstreamProtocolError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class ProxyError(Exception):
    """A call the proxy answers itself, with `code`, `reason` and optional `retry_after` seconds."""

    code: ClassVar[int] = -32050
    reason: ClassVar[str] = "upstream_unavailable"
    http_status: ClassVar[int] = 502

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
            data["retryAfter"] = round(self.retry_after, 3)
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
    """An attempt or the call's deadline ran out; the upstream may still be executing the request."""

    code = -32051
    reason = "upstream_timeout"
    http_status = 504


class UpstreamProtocolError(UpstreamError):
    """The upstream answered with something that is not a usable MCP answer (e.g. an oversized body)."""

    code = -32055
    reason = "upstream_bad_response"


class UpstreamHttpError(UpstreamError):
    """The upstream answered a request with an HTTP error and no JSON-RPC body (an HTML 502 page, a bare 503).

    SDK clients cannot read such a body (they see a generic -32603), so the proxy says it in JSON-RPC,
    keeping the upstream's status and naming it in `data.httpStatus`.
    """

    code = -32057
    reason = "upstream_http_error"

    def __init__(self, message: str, *, upstream_status: int, upstream: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, upstream=upstream, retry_after=retry_after)
        self.upstream_status = upstream_status

    def status(self) -> int:
        return self.upstream_status

    def error_data(self) -> dict[str, Any]:
        return {**super().error_data(), "httpStatus": self.upstream_status}


class StreamBroken(UpstreamError):
    """A streamed (SSE) answer ended or went silent before the final JSON-RPC response."""

    code = -32056
    reason = "upstream_stream_broken"


class CircuitOpen(ProxyError):
    """The breaker is open: the call was not sent."""

    code = -32052
    reason = "circuit_open"
    http_status = 503


class RateLimited(ProxyError):
    """The client's bucket is empty and the bounded wait ran out, or the upstream said 429."""

    code = -32053
    reason = "rate_limited"
    http_status = 429


class UpstreamRateLimited(RateLimited):
    """The upstream answered a bare 429 that retrying could not absorb: said in JSON-RPC, with its
    Retry-After, which SDK clients would otherwise never see (they turn a bare 429 into -32603)."""


class RetryBudgetExhausted(ProxyError):
    """Retrying would exceed the retry budget; the last attempt's failure is what the client hears."""

    code = -32054
    reason = "retry_budget_exhausted"
    http_status = 503
