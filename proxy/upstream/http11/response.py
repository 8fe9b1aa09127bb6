"""One upstream answer: its status and headers, and its body still to be read (or abandoned).

One `Response` at a time owns its connection. Its body is read whole (`read`) or chunk by chunk
(`next_chunk`); the connection goes back to the pool only once the body is complete and the state machine
allows reuse. `close()` abandons a response half-read: its connection is closed, never reused; so does a
read that is cancelled or times out. `discard_rest()` keeps the connection by draining the rest, bounded.

Every response must end in one of these: a body read to its end, `release()` after ``read(hold=True)``,
`discard_rest()`, or `close()`/`aclose()` (``async with response:`` does the last on the way out, and is a
no-op after any of the others). There is no finalizer to fall back on: a response dropped without one
keeps its connection, and its slot in the pool, until the pool is closed. Relying on garbage collection
would hide such a bug where it costs most (a slot held until some later collection, under load) and
would run pool code from whatever frame the collector interrupts.
"""

from __future__ import annotations

from multidict import CIMultiDict

from proxy.upstream.http11.errors import ResponseTooLarge
from proxy.upstream.http11.protocol import ConnectionProtocol

__all__ = ["MAX_REASON", "Response"]

MAX_REASON = 256
"""Longest reason phrase passed on to the client (it is a courtesy text, never needed)."""


class Response:
    """The status and headers of one upstream answer, and its body still to be read (or abandoned)."""

    __slots__ = ("_conn", "_done", "_protocol", "content_length", "content_type", "header_items", "reason", "status")

    def __init__(self, protocol: ConnectionProtocol) -> None:
        self._protocol = protocol
        self._conn = conn = protocol.conn
        self._done = False
        self.status = conn.status
        reason = conn.reason.decode("latin-1")
        self.reason = reason if len(reason) <= MAX_REASON and reason.isprintable() else ""
        """The reason phrase as the server sent it ("" when it had none, or one unfit to repeat)."""
        self.content_type = ""
        """The media type alone, lower case (``application/json``), or "" without a Content-Type."""
        self.content_length: int | None = None
        items: list[tuple[str, str]] = []
        for raw_name, raw_value in conn.headers:
            name = raw_name.decode("utf-8", "surrogateescape")
            value = raw_value.decode("utf-8", "surrogateescape")
            items.append((name, value))
            key = name.lower()
            if key == "content-type" and not self.content_type:  # the first one decides, as in aiohttp
                self.content_type = value.split(";", 1)[0].strip().lower()
            elif key == "content-length" and value.rstrip(" \t").isdigit():  # llhttp keeps whitespace after a value
                self.content_length = int(value)
        self.header_items = items
        """The headers as sent, in order, repeats kept."""

    @property
    def headers(self) -> CIMultiDict[str]:
        return CIMultiDict(self.header_items)

    async def read(self, limit: int | None = None, *, hold: bool = False) -> bytes:
        """The whole body, then the connection is released. Over `limit` bytes: `ResponseTooLarge`.

        `hold`: the connection stays this response's until `release()` (or `close()`), so the caller can
        judge the body (is it the answer to *this* request?) before the connection serves anyone else."""
        if self._done:
            raise RuntimeError("this response's body was already read or abandoned")
        conn, protocol = self._conn, self._protocol
        if limit is not None and conn.received > limit:
            self.close()
            raise ResponseTooLarge(f"upstream answer exceeds {limit} bytes")
        conn.limit = limit
        body: bytes | bytearray = b""  # one buffer, whatever the number of pieces (each is a read's worth)
        try:
            while True:
                piece = conn.take()
                if protocol.read_paused:
                    protocol.resume_reading()
                if not body:
                    body = piece
                elif piece:
                    if isinstance(body, bytes):
                        body = bytearray(body)
                    body += piece
                if conn.complete:
                    break
                self._check()
                await protocol.wait()
        except BaseException:
            self.close()
            raise
        if not hold:
            self._release()
        return bytes(body) if isinstance(body, bytearray) else body

    def release(self) -> None:
        """Give back the connection of a body read whole with `hold` (to the pool, if it may be reused)."""
        self._release()

    async def next_chunk(self) -> bytes:
        """The body that has arrived since the last call, as one piece (waiting for some if none has);
        ``b""`` once it is complete (the connection released). One piece for everything buffered, however
        many HTTP chunks it came in: what the caller does per piece (a timeout, a parse, a write to its
        client) then costs per network read, and a million 2-byte chunks are not a million iterations."""
        conn, protocol = self._conn, self._protocol
        while True:
            if self._done:
                return b""
            chunk = conn.take()
            if protocol.read_paused:
                protocol.resume_reading()
            if chunk:
                return chunk
            if conn.complete:
                self._release()
                return b""
            self._check()
            try:
                await protocol.wait()
            except BaseException:
                self.close()
                raise

    def discard_rest(self, max_bytes: int = 64 * 1024, within: float = 1.0) -> None:
        """Done with this body, but the connection is worth keeping: the rest (an SSE stream's end, say)
        is dropped as it arrives and the connection goes back to the pool; it is closed instead if more
        than `max_bytes` arrive or the end does not come `within` seconds. Never waits."""
        if not self._done:
            self._done = True
            self._protocol.discard_rest(max_bytes, within)

    def close(self) -> None:
        """Abandon the rest of the body: the connection is closed, never returned half-read."""
        if not self._done:
            self._done = True
            self._protocol.abort()

    async def aclose(self) -> None:
        """`close`, for ``async with`` and for callers that await their cleanup (httpx's shape)."""
        self.close()

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _check(self) -> None:
        error = self._conn.error
        if error is not None:
            self._done = True
            self._protocol.abort()
            raise error

    def _release(self) -> None:
        if not self._done:
            self._done = True
            self._protocol.finish()
