"""Properties of the upstream HTTP/1.1 response parsing (`ClientConnection` over llhttp), fed by Hypothesis.

The state machine is driven with bytes alone: no socket, no loop. The upstream's bytes go to `feed` in
arbitrary pieces, then the peer's close (``feed(b"")``). Whatever the bytes, the exchange ends there (no
bytes can leave it waiting for more once the peer has closed: nothing hangs) with either a response within
every bound (head size, header and trailer lines, interim heads, status 200-599, body limit) or one of the
client's own failures, `BadResponse`, `ResponseTooLarge` or `ConnectionBroken` (never another exception).
A valid response parses identically however TCP cut it, and as h11 (python-hyper's sans-I/O parser, a
second opinion written independently of llhttp) parses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.upstream.http11.client import (
    MAX_HEAD_BYTES,
    MAX_INTERIM_RESPONSES,
    MAX_RESPONSE_HEADERS,
    MAX_UNPARSED_BYTES,
    BadResponse,
    ConnectionBroken,
    ResponseTooLarge,
)
from proxy.upstream.http11.connection import ClientConnection
from proxy.upstream.http11.state import ENDED, HEAD_ARRIVED

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


def feed(chunks: list[bytes], then_close: bool = True, bodiless: bool = False) -> Outcome:
    """One exchange: a request started, then `chunks` as the upstream's answer, then (optionally) its close.
    Asserts every bound after every chunk, that nothing but the client's own failures is ever raised, and
    that the close always ends the exchange."""
    conn = ClientConnection(keepalive=30.0)
    conn.start(bodiless)
    conn.limit = BODY_LIMIT
    body = bytearray()
    head = False
    for chunk in filter(None, chunks):  # a socket never reads b"": to `feed` that is the peer's close
        events = conn.feed(chunk)  # raises nothing, whatever the bytes
        head = head or bool(events & HEAD_ARRIVED)
        assert bool(events & ENDED) <= conn.complete
        if conn.is_closed():  # a bound was hit (or the bytes are not HTTP): nothing more is read
            break
        assert len(conn.headers) + len(conn.trailers) <= MAX_RESPONSE_HEADERS
        assert conn._head_bytes <= MAX_HEAD_BYTES
        assert conn._unparsed <= MAX_UNPARSED_BYTES  # what httptools may keep of an unfinished line
        assert conn._interim <= MAX_INTERIM_RESPONSES
        assert conn.received <= BODY_LIMIT and conn.buffered <= BODY_LIMIT
        body += conn.take()
    if then_close:
        conn.feed(b"")
        assert conn.is_closed() and (conn.complete or conn.error is not None)  # nothing left waiting
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


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~", min_size=1, max_size=12)
_VALUE = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
_FRAMING = ("content-length", "transfer-encoding", "connection", "trailer")
_HEADERS = st.lists(st.tuples(_TOKEN, _VALUE).filter(lambda item: item[0].lower() not in _FRAMING), max_size=8)
_EXTENSION = st.tuples(_TOKEN, st.none() | _TOKEN | _VALUE.map(lambda text: '"' + text.replace('"', "").replace("\\", "") + '"'))


def lines(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode() for name, value in headers)


def chunked(draw: st.DrawFn, body: bytes) -> bytes:
    """`body` in chunks of drawn sizes (hex in either case, leading zeros), extensions, and trailers."""
    sizes = draw(st.lists(st.integers(1, 64), max_size=20))
    pieces, rest = [], body
    for size in sizes:
        if not rest:
            break
        pieces.append(rest[:size])
        rest = rest[size:]
    if rest:
        pieces.append(rest)
    out = []
    for piece in [*pieces, b""]:
        size = draw(st.sampled_from(["%x", "%X", "%04x"])) % len(piece)
        extensions = "".join(f";{name}" + ("" if value is None else f"={value}") for name, value in draw(st.lists(_EXTENSION, max_size=2)))
        out.append(f"{size}{extensions}\r\n".encode() + piece + (b"\r\n" if piece else b""))
    return b"".join(out) + lines(draw(_HEADERS.map(lambda headers: headers[:3]))) + b"\r\n"


@st.composite
def valid_responses(draw: st.DrawFn, head_request: bool = False) -> bytes:
    """A well-formed answer: optional 1xx heads, then a final one framed by length, chunks or the close
    (a 204 or 304 has no body, whatever its framing says; so has the answer to a HEAD)."""
    interim = draw(st.lists(st.sampled_from([b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"]), max_size=2))
    status = draw(st.sampled_from([200, 201, 202, 204, 304, 400, 404, 429, 500, 503]))
    reason = draw(st.sampled_from([b"OK", b"", b"Some Reason", b"x"]))
    headers = lines(draw(_HEADERS))
    body = draw(st.binary(max_size=BODY_LIMIT))
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    no_body = head_request or status in (204, 304)
    if framing == "length":
        head, payload = b"Content-Length: %d\r\n" % len(body), body
    elif framing == "chunked":
        head, payload = b"Transfer-Encoding: chunked\r\n", chunked(draw, body)
    else:
        head, payload = b"Connection: close\r\n", body
    if no_body:
        payload = b""
        if status in (204, 304) and framing == "chunked":
            head = b""  # RFC 9112 §6.1: no Transfer-Encoding on a 204 (and none useful on a 304)
    return b"".join([*interim, b"HTTP/1.1 %d %s\r\n%s%s\r\n%s" % (status, reason, headers, head, payload)])


@st.composite
def hostile_responses(draw: st.DrawFn) -> bytes:
    """Bytes near the parser's edges: many or huge headers or trailers, runs of interim heads, any status,
    broken chunking, mangled valid answers, or plain noise."""
    kind = draw(st.sampled_from(["headers", "trailers", "huge", "endless", "interim", "status", "chunks", "mangled", "noise", "body"]))
    if kind == "headers":
        line = draw(st.sampled_from([b"A:\r\n", b"X-A: 1\r\n", b"a: \r\n"]))
        return b"HTTP/1.1 200 OK\r\n" + line * draw(st.integers(90, 400)) + b"Content-Length: 0\r\n\r\n"
    if kind == "trailers":
        count = draw(st.integers(MAX_RESPONSE_HEADERS - 3, MAX_RESPONSE_HEADERS + 3))
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n" + b"T: 1\r\n" * count + b"\r\n"
    if kind == "huge":
        size = draw(st.integers(MAX_HEAD_BYTES - 64, MAX_HEAD_BYTES + 64))
        return b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * size + b"\r\nContent-Length: 0\r\n\r\n"
    if kind == "endless":  # a header or trailer line that never ends
        start = draw(st.sampled_from([b"HTTP/1.1 200 OK\r\nX: ", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: "]))
        return start + b"a" * draw(st.integers(MAX_UNPARSED_BYTES - 64, MAX_UNPARSED_BYTES + 64))
    if kind == "interim":
        count = draw(st.integers(MAX_INTERIM_RESPONSES - 2, MAX_INTERIM_RESPONSES + 2))
        return b"HTTP/1.1 103 Early Hints\r\n\r\n" * count + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    if kind == "status":
        return b"HTTP/1.1 %03d X\r\nContent-Length: 0\r\n\r\n" % draw(st.integers(0, 999))
    if kind == "chunks":
        sizes = draw(st.lists(st.sampled_from([b"1", b"ff", b"-1", b"zz", b"", b" 1", b"1 ", b"1;", b"1;a=", b"10000000000000000"]), min_size=1, max_size=4))
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(size + b"\r\nx\r\n" for size in sizes) + b"0\r\n\r\n"
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


@given(valid_responses(head_request=True), st.lists(st.integers(min_value=0), max_size=10))
def test_the_answer_to_a_head_ends_at_its_head_however_it_is_cut(data: bytes, points: list[int]) -> None:
    whole = feed([data], then_close=False, bodiless=True)
    assert whole.error is None and whole.complete and whole.body == b"" and not whole.keep_alive
    assert feed(cut(data, points), then_close=False, bodiless=True) == whole


def h11_parse(data: bytes) -> tuple[int, bytes, tuple[tuple[bytes, bytes], ...], bytes]:
    """What h11 makes of `data` as the answer to a POST, the peer closing after it."""
    h11 = pytest.importorskip("h11")
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x"), ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    status, reason, headers, body = 0, b"", (), bytearray()
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Response):
            status, reason = event.status_code, event.reason
            headers = tuple(event.headers.raw_items())
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.NEED_DATA:
            return status, reason, headers, bytes(body)


@given(valid_responses())
def test_a_valid_response_parses_as_h11_parses_it(data: bytes) -> None:
    ours = feed([data])
    assert (ours.status, ours.reason, ours.headers, ours.body) == h11_parse(data)
