"""The upstream HTTP/1.1 client's public names, as the rest of the proxy imports them.

The code lives in the package's modules (`proxy.upstream.http11`: why the client is ours, and the map of
its layers); this module only gathers what callers use, so none of them depends on the split.
"""

from __future__ import annotations

from proxy.upstream.http11.errors import (
    BadResponse,
    ConnectFailed,
    ConnectionBroken,
    InvalidHeader,
    LocalExhaustion,
    PoolExhausted,
    ResponseTooLarge,
)
from proxy.upstream.http11.connection import (
    MAX_HEAD_BYTES,
    MAX_INTERIM_RESPONSES,
    MAX_RESPONSE_HEADERS,
    MAX_UNPARSED_BYTES,
)
from proxy.upstream.http11.pool import ConnectionPool
from proxy.upstream.http11.protocol import WRITE_PIECE
from proxy.upstream.http11.request import Origin
from proxy.upstream.http11.response import MAX_REASON, Response

__all__ = [
    "MAX_HEAD_BYTES",
    "MAX_INTERIM_RESPONSES",
    "MAX_REASON",
    "MAX_RESPONSE_HEADERS",
    "MAX_UNPARSED_BYTES",
    "WRITE_PIECE",
    "BadResponse",
    "ConnectFailed",
    "ConnectionBroken",
    "ConnectionPool",
    "InvalidHeader",
    "LocalExhaustion",
    "Origin",
    "PoolExhausted",
    "Response",
    "ResponseTooLarge",
]
