"""The HTTP/1.1 client connection's state machine (`proxy.upstream.http11.connection` over the table in
`proxy.upstream.http11.state`), driven by bytes alone.

No socket, no loop, no clock: each test starts an exchange, feeds the upstream's bytes and asserts the
events, the state and what the pool would ask (`is_idle`, `is_closed`, `has_expired`).
"""

from __future__ import annotations

import itertools

import pytest

from proxy.upstream.http11.connection import MAX_INTERIM_RESPONSES, MAX_RESPONSE_HEADERS, ClientConnection
from proxy.upstream.http11.state import (
    CLOSED_NOW,
    DRAINED,
    ENDED,
    HEAD_ARRIVED,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
)
from proxy.upstream.http11.errors import BadResponse, ConnectionBroken, ResponseTooLarge

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def exchange(keepalive: float = 30.0) -> ClientConnection:
    """A connection with a request just written."""
    conn = ClientConnection(keepalive)
    conn.start()
    return conn


# -- the table ------------------------------------------------------------------------------------------


def test_every_step_the_table_lists_is_taken_and_every_other_raises() -> None:
    for state, event in itertools.product(State, Event):
        conn = ClientConnection(30.0)
        conn.state = state
        target = TRANSITIONS[state].get(event)
        if target is None:
            with pytest.raises(IllegalTransition, match=f"{event} is not allowed in state {state}"):
                conn._step(event)  # noqa: SLF001 - the one place state changes
            assert conn.state is state
        else:
            conn._step(event)  # noqa: SLF001
            assert conn.state is target


def test_only_done_is_reused_and_closed_is_final() -> None:
    assert [state for state in State if Event.REUSE in TRANSITIONS[state]] == [State.DONE]
    assert TRANSITIONS[State.CLOSED] == {}
    assert all(TRANSITIONS[state][Event.CLOSE] is State.CLOSED for state in State if state is not State.CLOSED)


def test_a_second_request_on_a_busy_connection_is_the_callers_bug() -> None:
    conn = exchange()
    with pytest.raises(IllegalTransition):
        conn.start()
    conn.feed(OK[:20])
    with pytest.raises(IllegalTransition):
        conn.start()


# -- one exchange, step by step -------------------------------------------------------------------------


def test_a_keep_alive_exchange_goes_round_to_idle() -> None:
    conn = ClientConnection(5.0)
    assert conn.is_idle() and not conn.is_closed()
    conn.start()
    assert conn.state is State.AWAIT_HEAD
    assert conn.feed(OK[:-2]) == HEAD_ARRIVED
    assert (conn.state, conn.status, conn.reason) == (State.BODY, 200, b"OK")
    assert conn.headers == [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")]
    assert conn.feed(b"{") == 0 and conn.buffered == 1
    assert conn.feed(b"}") == ENDED
    assert (conn.state, conn.complete, conn.keep_alive, conn.take()) == (State.DONE, True, True, b"{}")
    assert conn.finish(request_left=False, now=100.0) is True
    assert conn.is_idle() and conn.idle_since == 100.0
    assert not conn.has_expired(104.9) and conn.has_expired(105.0)
    conn.start()
    assert (conn.status, conn.headers, conn.complete, conn.received) == (0, [], False, 0)
    assert conn.feed(OK) == HEAD_ARRIVED | ENDED


def test_a_head_and_its_whole_body_in_one_read() -> None:
    conn = exchange()
    assert conn.feed(OK) == HEAD_ARRIVED | ENDED
    assert conn.take() == b"{}" and conn.take() == b""


@pytest.mark.parametrize(
    ("answer", "request_left", "reused"),
    [
        (OK, False, True),
        (OK, True, False),  # the answer came before the whole request had left
        (OK.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n", 1), False, False),
        (OK.replace(b"HTTP/1.1", b"HTTP/1.0"), False, False),
    ],
    ids=["keep-alive", "request-left", "connection-close", "http-1.0"],
)
def test_finish_reuses_only_a_kept_alive_answer_to_a_request_that_has_left(
    answer: bytes, request_left: bool, reused: bool
) -> None:
    conn = exchange()
    conn.feed(answer)
    assert conn.finish(request_left, now=0.0) is reused
    assert conn.state is (State.IDLE if reused else State.DONE)  # not reused: the caller closes it


@pytest.mark.parametrize(
    ("status", "with_body", "reused"),
    [
        (b"200 OK", True, True),
        (b"202 Accepted", True, True),
        (b"204 No Content", True, True),
        (b"413 Payload Too Large", True, False),  # answered, maybe, before reading the body
        (b"404 Not Found", True, False),
        (b"503 Service Unavailable", True, False),
        (b"304 Not Modified", True, False),
        (b"404 Not Found", False, True),  # no body to leave unread
    ],
)
def test_finish_reuses_a_connection_whose_request_had_a_body_only_after_a_2xx(
    status: bytes, with_body: bool, reused: bool
) -> None:
    """A 2xx answer to an MCP request says the server read the body; any other may come from the head
    alone, the body still unread in the server's socket: the next request would follow it."""
    conn = ClientConnection(5.0)
    conn.start(with_body=with_body)
    conn.feed(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
    assert conn.finish(request_left=False, now=0.0) is reused


def test_finish_before_the_response_is_complete_never_reuses() -> None:
    conn = exchange()
    conn.feed(OK[:-1])
    assert conn.finish(request_left=False, now=0.0) is False
    assert conn.state is State.BODY


# -- what the upstream's bytes can do -------------------------------------------------------------------


def test_a_byte_arriving_while_idle_closes_the_connection() -> None:
    conn = ClientConnection(30.0)
    assert conn.feed(b"H") == CLOSED_NOW
    assert conn.is_closed() and isinstance(conn.error, BadResponse)
    assert "no request waiting" in str(conn.error)
    assert conn.feed(b"more") == 0  # closed: nothing more is read


def test_a_second_response_after_a_complete_one_closes_but_keeps_the_first() -> None:
    conn = exchange()
    assert conn.feed(OK + b"HTTP/1.1 200 OK\r\n") == HEAD_ARRIVED | ENDED | CLOSED_NOW
    assert conn.is_closed() and conn.complete and conn.error is None
    assert conn.take() == b"{}"
    assert conn.finish(request_left=False, now=0.0) is False


def test_a_body_without_length_ends_with_a_clean_close_only() -> None:
    clean = exchange()
    assert clean.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nab") == HEAD_ARRIVED
    assert clean.feed(b"") == ENDED | CLOSED_NOW
    assert clean.complete and clean.error is None and clean.take() == b"ab"

    reset = exchange()
    reset.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nab")
    assert reset.close(ConnectionBroken("reset")) is True
    assert not reset.complete and str(reset.error) == "reset"
    assert reset.take() == b"ab"  # what arrived before the failure is still there to be read


def test_a_close_before_the_length_is_reached_is_broken() -> None:
    conn = exchange()
    conn.feed(OK[:-1])
    assert conn.feed(b"") == CLOSED_NOW
    assert not conn.complete and isinstance(conn.error, ConnectionBroken)


def test_a_close_before_any_answer_is_broken() -> None:
    conn = exchange()
    assert conn.feed(b"") == CLOSED_NOW
    assert isinstance(conn.error, ConnectionBroken) and conn.status == 0


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_end_at_their_head_and_stay_reusable(status: int) -> None:
    conn = exchange()
    assert conn.feed(b"HTTP/1.1 %d Nothing\r\n\r\n" % status) == HEAD_ARRIVED | ENDED
    assert conn.finish(request_left=False, now=0.0) is True


def test_interim_heads_stay_in_await_head_and_are_capped() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    conn = exchange()
    assert conn.feed(early * MAX_INTERIM_RESPONSES) == 0
    assert conn.state is State.AWAIT_HEAD
    assert conn.feed(OK) == HEAD_ARRIVED | ENDED
    assert conn.headers == [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")]

    conn = exchange()
    assert conn.feed(early * (MAX_INTERIM_RESPONSES + 1)) == CLOSED_NOW
    assert "more than 10 interim" in str(conn.error)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"HTTP/1.1 600 Weird\r\nContent-Length: 0\r\n\r\n", "not an HTTP status code"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n", "switched protocols"),
        (b"garbage\r\n\r\n", "Expected HTTP/"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "Invalid character in chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "Duplicate Content-Length"),
    ],
)
def test_answers_that_are_not_http_close_with_a_bad_response(answer: bytes, message: str) -> None:
    conn = exchange()
    assert conn.feed(answer) & CLOSED_NOW
    assert isinstance(conn.error, BadResponse) and message in str(conn.error)


def test_the_body_limit_is_a_response_too_large() -> None:
    conn = exchange()
    conn.limit = 1
    assert conn.feed(OK) == HEAD_ARRIVED | CLOSED_NOW
    assert isinstance(conn.error, ResponseTooLarge)


def test_a_body_of_many_chunks_is_taken_as_one_piece() -> None:
    conn = exchange()
    chunks = b"".join(b"1\r\n%c\r\n" % byte for byte in b"abcdef") + b"0\r\n\r\n"
    assert conn.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks) == HEAD_ARRIVED | ENDED
    assert conn.take() == b"abcdef"


# -- giving up on a body --------------------------------------------------------------------------------


def test_a_discarded_body_is_dropped_and_its_end_reported() -> None:
    conn = exchange()
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
    conn.discard(max_bytes=4)
    assert (conn.state, conn.buffered, conn.take()) == (State.DRAIN, 0, b"")
    assert conn.feed(b"cd") == 0 and conn.take() == b""
    assert conn.feed(b"ef") == DRAINED | ENDED
    assert conn.finish(request_left=False, now=0.0) is True


def test_a_discarded_body_over_its_budget_closes() -> None:
    conn = exchange()
    conn.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
    conn.discard(max_bytes=3)
    assert conn.feed(b"cdef") == CLOSED_NOW
    assert "drains" in str(conn.error)


def test_discarding_a_complete_or_closed_response_changes_nothing() -> None:
    done = exchange()
    done.feed(OK)
    done.discard(max_bytes=0)
    assert done.state is State.DONE and done.take() == b""
    closed = exchange()
    closed.close(ConnectionBroken("gone"))
    closed.discard(max_bytes=0)
    assert closed.state is State.CLOSED


def test_closing_twice_is_no_step() -> None:
    conn = exchange()
    assert conn.close(ConnectionBroken("first")) is True
    assert conn.close(ConnectionBroken("second")) is False
    assert str(conn.error) == "first"


# -- found by the differential test (tests/test_http11_differential.py) --------------------------------------


def test_a_head_requests_answer_ends_at_its_head_and_its_connection_is_not_reused() -> None:
    conn = ClientConnection(30.0)
    conn.start(bodiless=True)
    assert conn.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n") == HEAD_ARRIVED | ENDED
    assert (conn.state, conn.complete, conn.take()) == (State.DONE, True, b"")
    assert conn.finish(request_left=False, now=0.0) is False  # llhttp still expects ten bytes: closed after
    assert conn.feed(b"0123456789") == CLOSED_NOW and conn.error is None


def test_trailers_are_counted_but_are_not_the_heads_headers() -> None:
    conn = exchange()
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert conn.feed(head + b"1;ext=1\r\na\r\n0\r\nX-Trailer: t\r\n\r\n") == HEAD_ARRIVED | ENDED
    assert conn.headers == [(b"Transfer-Encoding", b"chunked")]
    assert conn.trailers == [(b"X-Trailer", b"t")]

    over = exchange()
    trailers = b"T: 1\r\n" * (MAX_RESPONSE_HEADERS - 1)  # one line in the head, 99 trailers: 100 in all
    assert over.feed(head + b"0\r\n" + trailers + b"\r\n") == HEAD_ARRIVED | ENDED
    too_many = exchange()
    assert too_many.feed(head + b"0\r\n" + trailers + b"T: 1\r\n\r\n") == HEAD_ARRIVED | CLOSED_NOW
    assert "more than 100 header lines" in str(too_many.error)


def test_whitespace_after_a_value_is_kept_as_it_came() -> None:
    """llhttp drops the whitespace before a value, not after it. It is not part of the value (RFC 9110
    §5.5) but it is optional whitespace a field line may carry, so passing it on is harmless, and stripping
    every value would cost every call; the response reads the one value it needs without it."""
    conn = exchange()
    conn.feed(b"HTTP/1.1 200 OK\r\nX-A: \t a b \t\r\nX-B:\r\nContent-Length: 2 \r\n\r\n{}")
    assert conn.headers == [(b"X-A", b"a b \t"), (b"X-B", b""), (b"Content-Length", b"2 ")]
