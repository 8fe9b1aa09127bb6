"""The client's errors, by what they say about the request: was it sent, and could the upstream have acted?

::

    ConnectFailed              nothing was sent (refused, DNS, connect timeout, no free slot in time)
    └── LocalExhaustion        ... because this machine ran out (file descriptors, buffers, local ports)
        └── PoolExhausted      ... because every pooled connection stayed busy until the connect timeout
    ConnectionBroken           the connection failed after the request was written
    BadResponse                the answer is not valid HTTP/1.1, or over a bound; the connection is closed
    ResponseTooLarge           the body exceeds the caller's limit; the connection is closed
    InvalidHeader (ValueError) a header that cannot be written; nothing was sent

`proxy.upstream.transport` maps each to the proxy's own errors.
"""

from __future__ import annotations

__all__ = [
    "BadResponse",
    "ConnectFailed",
    "ConnectionBroken",
    "InvalidHeader",
    "LocalExhaustion",
    "PoolExhausted",
    "ResponseTooLarge",
]


class ConnectFailed(Exception):
    """No connection could be had (refused, DNS, timeout, no free slot in time): nothing was sent."""


class LocalExhaustion(ConnectFailed):
    """The proxy's own resources ran out before anything was sent: not the upstream's doing."""


class PoolExhausted(LocalExhaustion):
    """Every connection stayed busy until the connect timeout: the pool's limit, not the upstream, said no."""


class ConnectionBroken(Exception):
    """The connection failed after the request was written: the upstream may have acted on it."""


class BadResponse(Exception):
    """The upstream's answer is not valid HTTP/1.1 (or its head is too large); the connection is closed."""


class ResponseTooLarge(Exception):
    """The body exceeds the limit the caller gave; the connection is closed."""


class InvalidHeader(ValueError):
    """A header name or value the client cannot write (a line break would split the request); nothing was sent."""


