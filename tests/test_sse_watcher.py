"""The SSE watcher: what an SSE answer says to the proxy, each event's JSON parsed at most once."""

from __future__ import annotations


import orjson
import pytest

from proxy.mcp.jsonrpc import MAX_PARSED_CONTAINERS, list_changed_kind
from proxy.mcp.sse import NO_REQUEST, Seen, SSEEvent, SSEParser, SSEWatcher
from proxy.upstream.transport import AnswerTo


def event(data: bytes, event_id: bytes | None = None) -> bytes:
    return (b"id: " + event_id + b"\n" if event_id is not None else b"") + b"event: message\ndata: " + data + b"\n\n"


PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}'
TOOLS_CHANGED = b'{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}'
ASKS = b'{"jsonrpc":"2.0","id":"s1","method":"roots/list"}'
FINAL = b'{"jsonrpc":"2.0","id":7,"result":{"tools":[]}}'
ERROR = b'{"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"no"}}'


def test_the_final_response_is_seen_with_its_error_and_ends_the_watch() -> None:
    for body, failed in ((FINAL, False), (ERROR, True)):
        watcher = SSEWatcher(7)
        seen = watcher.feed(event(PROGRESS) + event(body) + event(TOOLS_CHANGED))
        assert seen == [Seen(final=orjson.loads(body))]
        assert seen[0].failed is failed
        assert watcher.answered
        assert watcher.feed(event(TOOLS_CHANGED)) == []  # answered: nothing more is watched


def test_a_response_to_another_request_is_a_stray_and_one_without_a_result_is_nothing() -> None:
    watcher = SSEWatcher(7)
    assert watcher.feed(event(b'{"jsonrpc":"2.0","id":8,"result":{}}')) == [Seen(stray=True)]
    assert watcher.feed(event(b'{"jsonrpc":"2.0","id":7}')) == []
    assert watcher.feed(event(b'{"jsonrpc":"2.0","id":"8","result":{}}')) == [Seen(stray=True)]
    assert watcher.feed(event(b'{"jsonrpc":"2.0","id":null,"result":{}}')) == [Seen(stray=True)]
    assert not watcher.answered


@pytest.mark.parametrize(
    ("request_id", "answer_id", "stray"),
    [
        (7, b"7.0", False),
        (7, b"7e0", False),
        (0, b"-0.0", False),
        (9007199254740993, b"9007199254740992", False),  # what JSON.parse makes of it
        (7, b"8", True),
        (7, b"true", True),
        (1, b"true", True),
        (7, b'"8"', True),
        (7, b'"7"', False),  # the SDKs correlate "7" with 7
        ("7", b"7", False),
        ("x", b"7", True),
    ],
)
def test_the_final_response_is_the_one_whose_id_equals_the_requests_as_a_json_rpc_value(
    request_id: str | int, answer_id: bytes, stray: bool
) -> None:
    """Numbers as doubles, as on the JSON path (`proxy.mcp.jsonrpc.same_id`)."""
    answer = b'{"jsonrpc":"2.0","id":' + answer_id + b',"result":{}}'
    expected = Seen(stray=True) if stray else Seen(final=orjson.loads(answer))
    assert SSEWatcher(request_id).feed(event(answer)) == [expected]


@pytest.mark.parametrize(
    ("status", "answer", "reading"),
    [
        (200, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}', "final"),  # unattributable
        (503, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"busy"}}', "final"),
        (200, b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"x"}}', "final"),
        (200, b'{"jsonrpc":"2.0","id":8,"error":{"code":-32603,"message":"x"}}', "stray"),
        (400, b'{"jsonrpc":"2.0","id":"server-error","error":{"code":-32600,"message":"x"}}', "final"),  # HTTP layer's
        (503, b'{"jsonrpc":"2.0","id":8,"error":{"code":-32000,"message":"busy"}}', "final"),
        (400, b'{"jsonrpc":"2.0","id":8,"result":{}}', "stray"),
        (200, b'{"id":8,"result":{}}', "none"),  # not JSON-RPC: nobody's answer
        (200, b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"error"}}', "none"),
    ],
)
def test_which_responses_answer_the_request_follows_the_json_path(status: int, answer: bytes, reading: str) -> None:
    """The same reading as `AnswerTo` gives a JSON answer (`proxy.upstream.transport`): an error with id null
    (or none), or any error on a non-2xx status, is the request's answer, its final response (it was passed
    on but not taken for the answer: a client got the server's error and then the proxy's -32050)."""
    expected = {"final": [Seen(final=orjson.loads(answer))], "stray": [Seen(stray=True)], "none": []}[reading]
    assert SSEWatcher(7, http_status=status).feed(event(answer)) == expected
    if reading != "none":  # and so does the JSON path
        assert AnswerTo(frozenset((7,))).stray(orjson.loads(answer), status) is (reading == "stray")


def test_a_stray_does_not_end_the_watch_and_its_event_is_located() -> None:
    """The relay drops a stray's event and goes on to the request's own response (as an SDK client does)."""
    watcher = SSEWatcher(7)
    stray = event(b'{"jsonrpc":"2.0","id":8,"result":{}}')
    chunk = event(TOOLS_CHANGED) + stray + event(FINAL)
    assert watcher.feed(chunk) == [Seen(list_changed="tools"), Seen(stray=True), Seen(final=orjson.loads(FINAL))]
    assert (watcher.start_of(chunk, 1), watcher.end_of(chunk, 1)) == (len(event(TOOLS_CHANGED)), len(event(TOOLS_CHANGED) + stray))
    assert not watcher.began_before(1)


def test_a_stray_begun_in_an_earlier_chunk_is_said_so() -> None:
    watcher = SSEWatcher(7)
    stray = event(b'{"jsonrpc":"2.0","id":8,"result":{}}')
    assert watcher.feed(stray[:10]) == []
    assert watcher.feed(stray[10:]) == [Seen(stray=True)]
    assert (watcher.began_before(0), watcher.start_of(stray[10:], 0)) == (True, 0)
    assert watcher.feed(stray) == [Seen(stray=True)]
    assert not watcher.began_before(0)


def test_a_stream_that_answers_no_request_has_no_strays() -> None:
    assert SSEWatcher(NO_REQUEST).feed(event(b'{"jsonrpc":"2.0","id":8,"result":{}}')) == []


def test_a_stream_that_answers_no_request_never_sees_a_final_response() -> None:
    """NO_REQUEST (a legacy GET stream) is not the id null: a probe's request id may be None."""
    null_answer = event(b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"bad"}}')
    assert SSEWatcher(NO_REQUEST).feed(null_answer) == []
    assert SSEWatcher(None).feed(null_answer) == [Seen(final=orjson.loads(null_answer[21:-2]))]
    # No "id" in the text: not a response to anything, not even to id None.
    assert SSEWatcher(None).feed(event(b'{"jsonrpc":"2.0","result":{"list_changed":1}}')) == []


def test_a_server_request_asks_the_client_and_a_notification_does_not() -> None:
    watcher = SSEWatcher(7)
    assert watcher.feed(event(ASKS)) == [Seen(asks=True)]
    assert watcher.feed(event(PROGRESS)) == []
    assert not watcher.answered


@pytest.mark.parametrize("kind", ["tools", "prompts", "resources"])
def test_list_changed_notifications_name_their_kind(kind: str) -> None:
    notice = b'{"jsonrpc":"2.0","method":"notifications/%s/list_changed"}' % kind.encode()
    assert SSEWatcher(1).feed(event(notice)) == [Seen(list_changed=kind)]
    assert SSEWatcher(NO_REQUEST).feed(event(notice)) == [Seen(list_changed=kind)]


def test_text_that_only_mentions_list_changed_is_no_notice() -> None:
    watcher = SSEWatcher(NO_REQUEST)
    assert watcher.feed(event(b'{"jsonrpc":"2.0","method":5,"params":{"x":"list_changed"}}')) == []
    assert watcher.feed(event(b'{"jsonrpc":"2.0","method":"notifications/message","params":{"x":"list_changed"}}')) == []
    assert watcher.feed(event(b'["list_changed"]')) == []
    assert watcher.feed(event(b"list_changed, not JSON")) == []
    assert list_changed_kind("notifications//list_changed") is None


def test_an_event_with_more_containers_than_the_bound_is_not_parsed_and_watching_goes_on(parsed: list[str]) -> None:
    """60 MB of ``{},`` would take ~2 GB to parse: such an event is reported unparsed, never parsed."""
    many = b'{"jsonrpc":"2.0","id":7,"result":{"a":[' + b",".join([b"{}"] * MAX_PARSED_CONTAINERS) + b"]}}"
    watcher = SSEWatcher(7)
    assert watcher.feed(event(many)) == [Seen(unparsed=True)]
    assert parsed == []
    assert watcher.feed(event(FINAL)) == [Seen(final=orjson.loads(FINAL))]


def test_an_event_over_max_event_is_oversized() -> None:
    """Its data was not kept (an endless event would grow the proxy), so nothing in it is seen; the next one is."""
    watcher = SSEWatcher(7, max_event=80)
    assert watcher.feed(event(FINAL + b" " * 30) + event(FINAL)) == [Seen(oversized=True), Seen(final=orjson.loads(FINAL))]


def test_each_event_is_parsed_at_most_once_and_only_when_it_can_matter(parsed: list[str]) -> None:
    """Progress and log notifications (no ``"id"``, no ``list_changed``) are never parsed; the rest once; after
    the final response nothing is."""
    stream = event(PROGRESS) * 3 + event(TOOLS_CHANGED) + event(ASKS) + event(b"not json") + event(FINAL)
    watcher = SSEWatcher(7)
    seen = [item for start in range(0, len(stream), 7) for item in watcher.feed(stream[start : start + 7])]
    assert seen == [Seen(list_changed="tools"), Seen(asks=True), Seen(final=orjson.loads(FINAL))]
    assert parsed == [TOOLS_CHANGED.decode(), ASKS.decode(), FINAL.decode()]
    watcher.feed(event(TOOLS_CHANGED) + event(FINAL))
    assert len(parsed) == 3


def test_what_is_seen_does_not_depend_on_how_the_stream_was_cut() -> None:
    stream = event(PROGRESS, b"1") + event(TOOLS_CHANGED, b"2") + event(ASKS) + event(ERROR, b"3")
    whole = SSEWatcher(7)
    expected = whole.feed(stream)
    assert expected == [Seen(list_changed="tools"), Seen(asks=True), Seen(final=orjson.loads(ERROR))]
    for cut in range(1, len(stream)):
        for second in (cut, (cut + len(stream)) // 2):
            watcher = SSEWatcher(7)
            got = watcher.feed(stream[:cut]) + watcher.feed(stream[cut:second]) + watcher.feed(stream[second:])
            assert got == expected, cut
            assert watcher.last_event_id == "3"


def test_where_the_final_responses_event_ends_in_its_chunk() -> None:
    """The relay ends a call's answer right after the final response's event, wherever it is in its chunk."""
    for chunk, end in [
        (event(PROGRESS) + event(FINAL), len(event(PROGRESS) + event(FINAL))),
        (event(FINAL) + b": a comment\n\n", len(event(FINAL))),
        (event(FINAL) + event(PROGRESS), len(event(FINAL))),
        (event(FINAL) + b"data: half an ev", len(event(FINAL))),
        (b"data: " + FINAL + b"\r\n\r\nid: 4\n", len(b"data: " + FINAL + b"\r\n\r\n")),
        (b"data: " + FINAL + b"\r\rdata: x", len(b"data: " + FINAL + b"\r\r")),
    ]:
        watcher = SSEWatcher(7)
        assert watcher.feed(chunk)[-1] == Seen(final=orjson.loads(FINAL))
        assert watcher.end_of(chunk, -1) == end, chunk
    watcher = SSEWatcher(7)
    watcher.feed(event(FINAL)[:10])
    assert watcher.feed(event(FINAL)[10:]) == [Seen(final=orjson.loads(FINAL))]
    assert watcher.end_of(event(FINAL)[10:], 0) == len(event(FINAL)) - 10
    assert watcher.start_of(event(FINAL)[10:], 0) == 0  # it began in an earlier chunk


def test_a_response_under_another_event_type_is_not_the_final_response() -> None:
    """Clients read only ``message`` events as JSON-RPC: a response under ``event: custom`` must not end
    the client's answer (the real one may follow)."""
    watcher = SSEWatcher(1)
    response = b'{"jsonrpc":"2.0","id":1,"result":{}}'
    assert watcher.feed(b"event: custom\ndata: " + response + b"\n\n") == []
    (seen,) = watcher.feed(b"event: message\ndata: " + response + b"\n\n")
    assert seen.final == {"jsonrpc": "2.0", "id": 1, "result": {}}


def test_a_final_response_whose_crlf_is_cut_after_the_cr_ends_at_its_chunks_end_with_the_cr() -> None:
    """The LF of the last CRLF is still to come: the relay sees the event end with a CR at the chunk's end
    and waits for the LF before it ends the client's answer (no bare CR for clients that hold one back)."""
    watcher = SSEWatcher(1)
    chunk = b'data: {"jsonrpc":"2.0","id":1,"result":{}}\r\n\r'
    (seen,) = watcher.feed(chunk)
    assert seen.final is not None and watcher.answered and watcher.end_of(chunk, 0) == len(chunk)


@pytest.mark.parametrize(
    "data",
    [
        b'{"jsonrpc":"2.0","id":7,"result":{"deep":' + b"[" * 2000 + b"]" * 2000 + b"}}",  # past orjson's depth
        b'{"jsonrpc":"2.0","id":7,"result":{"text":"\\ud800"}}',  # a lone surrogate: JSON.parse reads it
        b'[{"jsonrpc":"2.0","id":7,"result":{}}]',  # a batch
    ],
    ids=["too deep", "lone surrogate", "not one object"],
)
def test_an_event_that_may_be_the_response_but_cannot_be_read_is_said_so(data: bytes) -> None:
    watcher = SSEWatcher(7)
    assert watcher.feed(event(data)) == [Seen(unparsed=True)]
    assert not watcher.answered


def test_unreadable_json_without_an_id_is_no_response() -> None:
    assert SSEWatcher(7).feed(event(b'{"jsonrpc":"2.0","method":"x/list_changed", oops}')) == []


def test_progress_is_reported_only_to_a_watcher_that_asks() -> None:
    """A buffered read's watcher hands its stream on at a progress notification; others never parse one."""
    progress = event(b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}')
    mention = event(b'{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"notifications/progress"}}')
    assert SSEWatcher(7).feed(progress) == []
    watcher = SSEWatcher(7)
    watcher.progress = True
    assert watcher.feed(progress + mention) == [Seen(progress=True)]


def test_a_byte_order_mark_at_the_streams_start_is_read_past_at_any_cut() -> None:
    """A client's SSE parser strips a UTF-8 BOM at the stream's start (the spec): the watcher reads past it
    too (it hid the response, and the client got the proxy's -32050 after it), wherever the stream is cut;
    the positions it gives are in the bytes as they came."""
    stream = b"\xef\xbb\xbf" + event(FINAL)
    for cut in range(len(stream) + 1):
        watcher = SSEWatcher(7)
        pieces = [piece for piece in (stream[:cut], stream[cut:]) if piece]
        seen = [(piece, watcher.feed(piece)) for piece in pieces]
        piece, last = seen[-1]
        assert last == [Seen(final=orjson.loads(FINAL))], cut
        assert watcher.end_of(piece, 0) == len(piece)
    parser = SSEParser()
    assert parser.feed(b"\xef\xbb") + parser.feed(b"\xbf" + event(b"x")) == [SSEEvent("x")]
