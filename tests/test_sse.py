"""The incremental SSE parser gives the same events however the bytes are split."""

from __future__ import annotations

import pytest

from proxy.sse import SSEEvent, SSEParser

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
