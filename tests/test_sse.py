"""The incremental SSE parser gives the same events however the bytes are split."""

from __future__ import annotations

import tracemalloc

import pytest

from proxy.mcp.sse import SSEEvent, SSEParser

STREAM = (
    b": keep-alive comment\r\n"
    b"event: message\r\nid: 7\r\ndata: {\"a\":1}\r\n\r\n"
    b"data: line one\ndata: line two\n\n"
    b"id: 8\n\n"
    b"data:no-space\rdata: x\r\r"
)
EXPECTED = [
    SSEEvent('{"a":1}', "message", "7"),
    SSEEvent("line one\nline two", "message", None),
    SSEEvent("no-space\nx", "message", None),
]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, len(STREAM)])
def test_same_events_for_any_chunking(size: int) -> None:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for start in range(0, len(STREAM), size):
        events.extend(parser.feed(STREAM[start : start + size]))
    assert events == EXPECTED
    assert parser.last_event_id == "8"


def test_unfinished_event_is_not_dispatched() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: partial\n") == []
    assert parser.feed(b"\n") == [SSEEvent("partial")]


MIXED = (
    b"event: message\r\ndata: {\"a\":1}\r\n\r\n"
    b": a comment\rdata: line one\rdata: line two\r\r"
    b"id: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n"
    b"data: \xe2\x82\xac multi-byte\r\n\r\n"
)


def events_of(chunks: list[bytes]) -> list[tuple[str, str, str | None]]:
    parser = SSEParser()
    return [(e.data, e.event, e.id) for chunk in chunks for e in parser.feed(chunk)]


def test_every_way_of_cutting_the_stream_in_three_gives_the_same_events() -> None:
    """Chunk boundaries fall anywhere on the wire: inside a CRLF, a multi-byte character, a field name."""
    whole = events_of([MIXED])
    assert [data for data, _, _ in whole] == ['{"a":1}', "line one\nline two", '{"jsonrpc":"2.0","id":3,"result":{}}',
                                              "\u20ac multi-byte"]  # fmt: skip
    n = len(MIXED)
    for i in range(n + 1):
        for j in range(i, n + 1):
            assert events_of([MIXED[:i], MIXED[i:j], MIXED[j:]]) == whole, (i, j)


def test_a_long_line_in_many_small_chunks_is_parsed_in_linear_time() -> None:
    """A 16 MiB event fed in 1 KiB pieces: 16384 feeds, each of which must look at its own bytes only
    (the quadratic parser copied and re-split everything so far on each feed). Asserted by the work
    done, not by time: the pieces are appended in place to one buffer, copied out exactly once."""
    parser = SSEParser()
    parser.feed(b"data: ")
    piece = b"x" * 1024
    for _ in range(16 * 1024):
        assert parser.feed(piece) == []
    assert isinstance(parser._partial, bytearray) and len(parser._partial) == 16 * 1024 * 1024 + 6
    (event,) = parser.feed(b"\n\n")
    assert len(event.data) == 16 * 1024 * 1024 and not parser._partial


@pytest.mark.parametrize("piece", [7, 1024, 10_000])
def test_an_event_over_max_event_is_not_kept_and_the_next_one_parses(piece: int) -> None:
    """Memory stays bounded by max_event whatever the server sends; the stream stays in step after it."""
    big = b"data: " + b"x" * 5000 + b"\ndata: more\n\n"
    after = b'id: 9\ndata: {"after":true}\n\n'
    wire = b"data: small\n\n" + big + after
    parser = SSEParser(max_event=1000)
    events: list[SSEEvent] = []
    for start in range(0, len(wire), piece):
        events.extend(parser.feed(wire[start : start + piece]))
        assert len(parser._partial) + sum(map(len, parser._data)) <= 1000 + piece
    assert events == [SSEEvent("small"), SSEEvent("", oversized=True), SSEEvent('{"after":true}', id="9")]
    assert parser.last_event_id == "9"


def test_an_unfinished_line_fed_in_tiny_pieces_costs_memory_in_proportion_to_its_bytes() -> None:
    """The unfinished line is kept as one growing buffer, not as its pieces (a 2-byte piece kept as an
    object of its own costs ~20 times its bytes)."""
    count = 100_000
    parser = SSEParser()
    tracemalloc.start()
    try:
        assert parser.feed(b"data: ") == []
        for _ in range(count):
            parser.feed(bytes((97, 98)))  # a new object each time, as pieces off the network are
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parser.feed(b"\n\n") == [SSEEvent("ab" * count)]
    assert peak < 2 * 2 * count, peak
