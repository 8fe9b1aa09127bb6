"""The stdio transport's framing (`proxy.mcp.stdio`): a child's lines, however the pipe cut them, and
the line written for a message (Hypothesis for the cuts)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.mcp.stdio import LineReader, LineTooLong, frame

_MESSAGE = st.dictionaries(
    st.sampled_from(["jsonrpc", "id", "method", "result", "params"]),
    st.one_of(st.integers(min_value=-(2**53), max_value=2**53), st.text(max_size=30), st.none()),
    max_size=4,
).map(orjson.dumps)


@given(
    lines=st.lists(_MESSAGE, max_size=12),
    endings=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=12, max_size=12),
    empties=st.lists(st.booleans(), min_size=12, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10),
)
def test_lines_come_out_whole_and_in_order_however_the_pipe_cut_them(
    lines: list[bytes], endings: list[bytes], empties: list[bool], cuts: list[int]
) -> None:
    stream = b"".join((b"\n" if empty else b"") + line + ending for line, ending, empty in zip(lines, endings, empties, strict=False))
    reader = LineReader(max_line=4096)
    got: list[bytes] = []
    start = 0
    for cut in sorted(set(cut for cut in cuts if cut <= len(stream))) + [len(stream)]:
        got += reader.feed(stream[start:cut])
        start = cut
    assert got == lines  # empty lines skipped, a CR before the LF dropped
    assert reader.pending == 0


def test_a_line_over_the_bound_is_refused_at_once_and_costs_no_more_than_the_bound() -> None:
    reader = LineReader(max_line=10)
    assert reader.feed(b"0123456789\n") == [b"0123456789"]  # exactly the bound: fine
    reader.feed(b"01234")
    with pytest.raises(LineTooLong) as refused:
        reader.feed(b"567890")  # 11 bytes under way and no end yet
    assert refused.value.reason == "upstream_bad_response" and reader.pending == 0
    with pytest.raises(LineTooLong):
        LineReader(max_line=10).feed(b"01234567890\n")  # a whole line over it


def test_a_message_is_written_as_one_line_of_compact_json() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    assert frame(body) == body + b"\n"  # as the client sent it
    pretty = b'{\n  "jsonrpc": "2.0",\n  "id": 1,\n  "method": "ping"\n}'
    assert frame(pretty) == body + b"\n"
    assert frame(pretty, {"jsonrpc": "2.0", "id": 1, "method": "ping"}) == body + b"\n"
