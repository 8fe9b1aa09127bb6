"""The upstream HTTP/1.1 client: a keep-alive pool over a sans-I/O connection state machine, llhttp parsing.

Why not aiohttp's `ClientSession`: a sidecar pays its client on every call. Measured with
``python -m tests.perf`` on the project's 2-core VM, `ClientSession` cost about 85-100 µs of CPU per
request: more than the aiohttp server side and the whole policy pipeline together, so no proxy built
on it could match a naive forwarder built on it. The proxy needs a small part of a general client: one
origin per pool, no cookies, redirects, proxies, auth flows or decompression, one request at a time
per connection. This package is that part; parsing, the part that must be exactly right, is llhttp's
(the parser of Node.js and of aiohttp itself), through httptools.

It also knows what a general client hides: whether the request could have reached the upstream.
Failures before a connection exists (connect refused, DNS, connect timeout, waiting for a free pool
slot) raise `ConnectFailed`: nothing was sent. Anything after raises `ConnectionBroken` or
`BadResponse`, and `proxy.upstream.transport` turns those into the proxy's own errors.

The layers, each testable on its own (httpcore's shape: h11's state machine under an I/O adapter):

- `errors`: what each failure says about the request (sent or not);
- `request`: the origin (`Origin`) and the request head, its header names checked as tokens;
- `state`: the connection's states, events and every legal step, in one table;
- `connection`: `ClientConnection`, the state machine: bytes in, events out, every bound and every
  reuse rule, no I/O;
- `protocol`: `ConnectionProtocol`, the asyncio adapter: writes and reads with flow control, futures;
- `response`: `Response`, one answer's head and its body to read, drain or abandon;
- `idle`: a pool's idle connections, by owner (reuse) and by age (expiry, making room);
- `pool`: `ConnectionPool`, connection affinity, limits and queueing; it asks connections only
  `is_closed`/`has_expired`;
- `client`: the names the rest of the proxy imports (nothing else needs to know the split).
"""
