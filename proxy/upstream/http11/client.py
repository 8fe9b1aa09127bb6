"""The upstream HTTP/1.1 client: a keep-alive pool of asyncio protocols, with llhttp (httptools) parsing.

Why not aiohttp's `ClientSession`: a sidecar pays its client on every call. Measured with
``python -m tests.perf`` on the project's 2-core VM, `ClientSession` cost about 85-100 µs of CPU per
request: more than the aiohttp server side and the whole policy pipeline together, so no proxy built
on it could match a naive forwarder built on it. The proxy needs a small part of a general client: one
origin per pool, no cookies, redirects, proxies, auth flows or decompression, one request at a time
per connection. This module is that part; parsing, the part that must be exactly right, is llhttp's
(the parser of Node.js and of aiohttp itself), through httptools.

It also knows what a general client hides: whether the request could have reached the upstream.
Failures before a connection exists (connect refused, DNS, connect timeout, waiting for a free pool
slot) raise `ConnectFailed`: nothing was sent. Anything after raises `ConnectionBroken` or
`BadResponse`, and `transport.py` turns those into the proxy's own errors.

One `Response` at a time owns its connection. Its body is read whole (`read`) or chunk by chunk
(`next_chunk`); the connection goes back to the pool only once the body is complete and the server
allowed keep-alive. `close()` abandons a response half-read: its connection is closed, never reused.

Connection affinity. A connection is opened for one downstream client connection (its `owner`, a number
the handler gives each client connection) and carries that owner's requests only, for its whole life;
requests of no owner (None) share connections of no owner. This is what happens without a proxy: each
client connection has its own connection to the server. It matters because HTTP/1.1 has no request ids:
whatever arrives after a request is written is taken as its answer, so a broken server's duplicate or late
answer on a kept-alive connection is read as the answer to the *next* request on it. Shared connections
would hand that answer to whichever client came next, and no check on the answer can tell: SDK clients all
number their JSON-RPC requests from 0 or 1, and bodies that are not parseable JSON, SSE streams (passed on
before their ids are seen) and error answers cannot be checked at all. With affinity a server's stray
bytes can only reach the client connection whose exchange they garbled, as without the proxy (Envoy's
`connection_pool_per_downstream_connection`). The pool's limit still holds: an owner without an idle
connection of its own opens one, closing the least recently used idle connection of another owner when
the pool is full, so no request waits while connections sit idle (`ConnectionPool`).

A pooled connection must never carry one exchange's bytes into the next, even within one owner. Hence:

- an idle connection that receives anything (a late duplicate, an unsolicited answer) is dead, closed;
- a connection whose exchange was abandoned (a timeout, a cancellation, a body left half-read) is closed;
- a connection whose answer completed before the whole request had left (its tail still queued here, or
  still in the transport's buffer) is closed. This was the way a stray answer reached another client: an
  upstream that answers early and keeps the connection reads the rest of that body as the next request,
  and a body that ends in a request of its own gets it answered ahead of the next client's.

Bounds on what an upstream can make the proxy hold (every one closes the connection when exceeded):

- `MAX_HEAD_BYTES` for the status line and headers, each header line counted with its ``:`` and CRLF
  (an empty header is 4 bytes on the wire, not 0), and `MAX_RESPONSE_HEADERS` header lines: `BadResponse`;
- `MAX_UNPARSED_BYTES` arriving with no complete head and no body byte in between: httptools keeps a
  header (or trailer) line to itself until its end, so an endless one would grow without this: `BadResponse`;
- the body: the caller's `limit` (`ResponseTooLarge`); unread body is paused at `_PAUSE_AT` bytes. It is
  held as one buffer, not as the pieces it came in, and handed on as one piece per read, whatever the
  chunking: a body of 2-byte chunks costs its bytes (not ~40 per chunk), and a million chunks are one
  piece per network read for the caller (its timeout, parse and write to its client), not a million;
- `MAX_INTERIM_RESPONSES` 1xx heads before the answer, and a final status in 200-599: `BadResponse`;
- writes: the request is handed to the socket `WRITE_PIECE` bytes at a time, and only while the
  transport's buffer is under its high-water mark (`pause_writing`/`resume_writing`), as slices of the
  caller's bytes, never copies: an upstream that never reads costs at most high-water + one piece of
  buffer per connection, not the whole body. The caller's timeout covers the write; a request whose
  write is cancelled or times out closes its connection.
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
from proxy.upstream.http11.pool import ConnectionPool
from proxy.upstream.http11.protocol import (
    MAX_HEAD_BYTES,
    MAX_INTERIM_RESPONSES,
    MAX_RESPONSE_HEADERS,
    MAX_UNPARSED_BYTES,
    WRITE_PIECE,
)
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
