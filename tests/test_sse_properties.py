"""Properties of the SSE parser over arbitrary streams and arbitrary chunkings (Hypothesis).

The parser sees an upstream's bytes as TCP happened to cut them, so nothing it hands out may depend on
the cut: fed in any pieces, a stream gives exactly the events of a plain, whole-stream reading of the
SSE specification (`reference`), with the `max_event` bound applied the same way (an event's size is
the bytes of its lines). And an endless line costs at most `max_event` plus one chunk, however long.
Where events end in the raw bytes (what the relay passes on: whole events only) agrees with the parser,
however the stream is cut.
"""

from __future__ import annotations

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from proxy.mcp.sse import SSEEvent, SSEParser, SSEWatcher, blank_line_ends, last_blank_line_end

_ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r"])
_TEXT = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=40).map(
        str.encode
    ),
    st.binary(max_size=20).map(lambda raw: raw.replace(b"\r", b"").replace(b"\n", b"")),  # not UTF-8, maybe
)
_LINE = st.one_of(
    st.builds(lambda value: b"data: " + value, _TEXT),
    st.builds(lambda value: b"data:" + value, _TEXT),
    st.just(b"data"),
    st.builds(lambda value: b"event: " + value, _TEXT),
    st.builds(lambda value: b"id: " + value, _TEXT),
    st.just(b"id: \x00"),
    st.builds(lambda value: b":" + value, _TEXT),
    st.builds(lambda value: b"retry: " + value, _TEXT),
    _TEXT,
    st.just(b""),  # a blank line: dispatch
)
STREAMS = st.lists(st.tuples(_LINE, _ENDINGS), max_size=30).map(
    lambda lines: b"".join(line + ending for line, ending in lines)
) | st.binary(max_size=300)
MAX_EVENT = st.none() | st.integers(min_value=0, max_value=120)


def reference(stream: bytes, max_event: int | None) -> tuple[list[SSEEvent], str | None]:
    """The events of `stream` read whole, straight from the specification, and the last event id."""
    lines = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    lines.pop()  # the last line has no end yet: never processed
    events: list[SSEEvent] = []
    data: list[str] = []
    event, event_id, last_id, size, oversized = "", None, None, 0, False
    for raw in lines:
        if not raw:
            if event_id is not None:
                last_id = event_id
            if oversized:
                events.append(SSEEvent("", event or "message", event_id, oversized=True))
            elif data:
                events.append(SSEEvent("\n".join(data), event or "message", event_id))
            data, event, event_id, size, oversized = [], "", None, 0, False
            continue
        size += len(raw)
        if max_event is not None and size > max_event:
            data, oversized = [], True
            continue
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\x00" not in value:
            event_id = value
    return events, last_id


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    """`stream` in pieces at `points` (empty pieces included, as a reader may hand them over)."""
    bounds = sorted(point % (len(stream) + 1) for point in points)
    edges = [0, *bounds, len(stream)]
    return [stream[start:end] for start, end in zip(edges, edges[1:], strict=False)]


def parse(chunks: list[bytes], max_event: int | None) -> tuple[list[SSEEvent], str | None]:
    parser = SSEParser(max_event)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events, parser.last_event_id


@given(STREAMS, st.lists(st.integers(min_value=0), max_size=12), MAX_EVENT)
def test_any_chunking_gives_the_events_of_the_whole_stream_read_by_the_spec(
    stream: bytes, points: list[int], max_event: int | None
) -> None:
    expected = reference(stream, max_event)
    assert parse([stream], max_event) == expected
    assert parse(cut(stream, points), max_event) == expected


@given(STREAMS, st.integers(min_value=1, max_value=16), st.integers(min_value=0, max_value=120))
def test_no_kept_event_exceeds_max_event_and_what_is_held_stays_bounded(stream: bytes, piece: int, max_event: int) -> None:
    parser = SSEParser(max_event)
    for start in range(0, len(stream), piece):
        for event in parser.feed(stream[start : start + piece]):
            assert len(event.data) <= max_event
            assert event.data == "" or not event.oversized
        held = len(parser._partial) + sum(map(len, parser._data))
        assert held <= max_event + piece


def test_a_30_mib_line_without_newline_in_64_kib_pieces_holds_at_most_max_event_plus_a_piece() -> None:
    """The quadratic parser re-joined and re-scanned everything so far on each feed (42 s, other clients
    stalled). Asserted without a clock: past `max_event` nothing of the line is kept (no join ever
    happens), and the most memory allocated at any moment stays under max_event + a few pieces."""
    max_event, piece = 1 << 20, b"x" * (64 * 1024)
    parser = SSEParser(max_event)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        assert parser.feed(b"data: ") == []
        for _ in range(30 * 16):  # 30 MiB
            assert parser.feed(piece) == []
            assert len(parser._partial) <= max_event + len(piece)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak <= max_event + 4 * len(piece)
    assert not parser._partial and parser._dropping_line
    assert parser.feed(b"\n\ndata: next\n\n") == [SSEEvent("", oversized=True), SSEEvent("next")]
    assert parser.feed(b"data: after\n\n") == [SSEEvent("after")]


@given(STREAMS, st.lists(st.integers(min_value=0), max_size=12), MAX_EVENT)
def test_passing_on_up_to_the_last_event_end_gives_a_client_exactly_the_events_so_far(
    stream: bytes, points: list[int], max_event: int | None
) -> None:
    """The relay's framing (`proxy.server.pump.pump`) at every cut: what it has passed on, read by
    a client from the start, holds exactly the events the watcher completed, and nothing of the one under
    way; what it holds back never contains an event's end."""
    watcher = SSEWatcher(max_event=max_event)
    parser = SSEParser(max_event)
    sent, held = b"", b""
    completed: list[SSEEvent] = []
    for piece in cut(stream, points):
        completed += parser.feed(piece)
        watcher.feed(piece)
        assert watcher.blank_lines == len(blank_line_ends(piece, watcher.fed_at_line_start, _skip(sent + held, piece)))
        if watcher.between_events:
            sent, held = sent + held + piece, b""
        elif watcher.blank_lines:
            end = watcher.last_end(piece)
            sent, held = sent + held + piece[:end], piece[end:]
        else:
            held += piece
        assert SSEParser(max_event).feed(sent) == completed
        client = SSEParser(max_event)
        client.feed(sent)
        assert client.feed(held) == []


def _skip(before: bytes, piece: bytes) -> int:
    return 1 if before.endswith(b"\r") and piece.startswith(b"\n") else 0


@given(STREAMS, st.booleans())
def test_the_last_blank_line_found_from_the_end_is_the_last_one_found_from_the_start(stream: bytes, at_start: bool) -> None:
    ends = blank_line_ends(stream, at_start)
    assert last_blank_line_end(stream, at_start) == (ends[-1] if ends else -1)
    if stream.startswith(b"\n"):
        ends = blank_line_ends(stream, True, 1)
        assert last_blank_line_end(stream, True, 1) == (ends[-1] if ends else -1)
