"""Properties of the upstream HTTP/1.1 response parsing (`ClientConnection` over llhttp), fed by Hypothesis.

The state machine is driven with bytes alone: no socket, no loop. The upstream's bytes go to `feed` in
arbitrary pieces. Whatever the bytes, it either yields a response within the bounds (head size, header
count, body limit) or closes with `BadResponse`, `ResponseTooLarge` or `ConnectionBroken` (never another
exception, never more held than the bounds); and a valid response parses identically however TCP cut it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.http11.client import (
    MAX_HEAD_BYTES,
    MAX_RESPONSE_HEADERS,
    MAX_UNPARSED_BYTES,
    BadResponse,
    ConnectionBroken,
    ResponseTooLarge,
)
from proxy.upstream.http11.connection import HEAD_ARRIVED, ClientConnection

BODY_LIMIT = 1000
FAILURES = (BadResponse, ResponseTooLarge, ConnectionBroken)


@dataclass(frozen=True)
class Outcome:
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    complete: bool
    keep_alive: bool
    error: str | None


def feed(chunks: list[bytes], then_close: bool = True) -> Outcome:
    """One exchange: a request started, then `chunks` as the upstream's answer, then (optionally) its close.
    Asserts the bounds after every chunk, and that nothing but the client's own failures is ever raised."""
    conn = ClientConnection(keepalive=30.0)
    conn.start()
    conn.limit = BODY_LIMIT
    body = bytearray()
    head = False
    for chunk in filter(None, chunks):  # a socket never reads b"": to `feed` that is the peer's close
        head = bool(conn.feed(chunk) & HEAD_ARRIVED) or head  # raises nothing, whatever the bytes
        if conn.is_closed():  # a bound was hit (or the bytes are not HTTP): nothing more is read
            break
        assert len(conn.headers) <= MAX_RESPONSE_HEADERS
        assert conn._head_bytes <= MAX_HEAD_BYTES
        assert conn._unparsed <= MAX_UNPARSED_BYTES  # what httptools may keep of an unfinished line
        assert conn.received <= BODY_LIMIT and conn.buffered <= BODY_LIMIT
        body += conn.take()
    if then_close:
        conn.feed(b"")
    body += conn.take()
    error = conn.error
    assert error is None or isinstance(error, FAILURES), repr(error)
    if head:
        assert 200 <= conn.status <= 599
    return Outcome(
        conn.status if head else 0,
        conn.reason,
        tuple(conn.headers),
        bytes(body),
        conn.complete,
        conn.keep_alive,
        type(error).__name__ if error is not None else None,
    )


def cut(data: bytes, points: list[int]) -> list[bytes]:
    bounds = sorted(point % (len(data) + 1) for point in points)
    edges = [0, *bounds, len(data)]
    return [data[start:end] for start, end in zip(edges, edges[1:], strict=False)]


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1, max_size=12)
_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
_HEADERS = st.lists(
    st.tuples(_TOKEN, _VALUE).filter(lambda item: item[0].lower() not in ("content-length", "transfer-encoding", "connection")),
    max_size=8,
)


@st.composite
def valid_responses(draw: st.DrawFn) -> bytes:
    """A well-formed answer: optional 1xx heads, then a final one framed by length, chunks or the close."""
    parts = [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"] * draw(st.integers(0, 2))
    status = draw(st.sampled_from([200, 201, 202, 400, 404, 429, 500, 503]))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b"x"]))
    headers = b"".join(f"{name}: {value}\r\n".encode() for name, value in draw(_HEADERS))
    body = draw(st.binary(max_size=BODY_LIMIT))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    if framing == "length":
        head, payload = b"Content-Length: %d\r\n" % len(body), body
    elif framing == "chunked":
        sizes = draw(st.lists(st.integers(1, 64), max_size=20))
        pieces, rest = [], body
        for size in sizes:
            if not rest:
                break
            pieces.append(rest[:size])
            rest = rest[size:]
        if rest:
            pieces.append(rest)
        head = b"Transfer-Encoding: chunked\r\n"
        payload = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"
    else:
        head, payload = b"Connection: close\r\n", body
    parts.append(b"HTTP/1.1 %d %s\r\n%s%s\r\n%s" % (status, reason, headers, head, payload))
    return b"".join(parts)


@st.composite
def hostile_responses(draw: st.DrawFn) -> bytes:
    """Bytes near the parser's edges: many or huge headers, mangled valid answers, or plain noise."""
    kind = draw(st.sampled_from(["headers", "huge", "endless", "mangled", "noise", "body"]))
    if kind == "headers":
        line = draw(st.sampled_from([b"A:\r\n", b"X-A: 1\r\n", b"a: \r\n"]))
        return b"HTTP/1.1 200 OK\r\n" + line * draw(st.integers(90, 400)) + b"Content-Length: 0\r\n\r\n"
    if kind == "huge":
        size = draw(st.integers(MAX_HEAD_BYTES - 64, MAX_HEAD_BYTES + 64))
        return b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * size + b"\r\nContent-Length: 0\r\n\r\n"
    if kind == "endless":  # a header or trailer line that never ends
        start = draw(st.sampled_from([b"HTTP/1.1 200 OK\r\nX: ", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: "]))
        return start + b"a" * draw(st.integers(MAX_UNPARSED_BYTES - 64, MAX_UNPARSED_BYTES + 64))
    if kind == "body":
        size = draw(st.integers(BODY_LIMIT - 2, BODY_LIMIT + 2))
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"b" * size
    if kind == "mangled":
        data = bytearray(draw(valid_responses()))
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        return bytes(data[: draw(st.integers(0, len(data)))])
    return draw(st.binary(max_size=600))


@given(hostile_responses(), st.lists(st.integers(min_value=0), max_size=10))
def test_any_bytes_give_a_bounded_response_or_one_of_the_clients_own_failures(data: bytes, points: list[int]) -> None:
    outcome = feed(cut(data, points))
    assert outcome.error in (None, "BadResponse", "ResponseTooLarge", "ConnectionBroken")
    if outcome.error is None:
        assert outcome.complete and len(outcome.body) <= BODY_LIMIT


@given(valid_responses(), st.lists(st.integers(min_value=0), max_size=10))
def test_a_valid_response_parses_identically_however_it_is_cut(data: bytes, points: list[int]) -> None:
    whole = feed([data])
    assert whole.error is None and whole.complete and whole.status >= 200
    assert feed(cut(data, points)) == whole


@given(valid_responses())
def test_a_valid_response_split_at_every_point_parses_identically(data: bytes) -> None:
    whole = feed([data])
    for at in range(len(data) + 1):
        assert feed([data[:at], data[at:]]) == whole, at


def test_the_header_cap_and_head_bound_hold_exactly() -> None:
    """The edges the strategies aim at, pinned: the cap's own count passes, one more fails."""
    def answer(count: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\n" + b"A:\r\n" * (count - 1) + b"Content-Length: 0\r\n\r\n"

    assert feed([answer(MAX_RESPONSE_HEADERS)]).error is None
    assert feed([answer(MAX_RESPONSE_HEADERS + 1)]).error == "BadResponse"
