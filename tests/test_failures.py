"""The one failure classifier: each outcome maps to exactly one kind, breaker weight and retry key."""

from __future__ import annotations

import pytest

from proxy.errors import (
    AnswerTooLarge,
    CircuitOpen,
    ClientOverloaded,
    NeverSent,
    ProxyOverloaded,
    StreamBroken,
    StreamEndedEarly,
    UnsendableRequest,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.policies.failures import Failure, classify_error, classify_reply, parse_retry_after
from tests.fakes import reply_error, reply_json, reply_ok, reply_result, reply_status


@pytest.mark.parametrize(
    ("reply", "session", "kind", "server", "transport", "key"),
    [
        (reply_ok(), False, Failure.OK, False, False, None),
        # Gateway statuses: the server behind is not there, whatever the body says.
        (reply_status(502), False, Failure.HTTP_5XX, True, False, "http_5xx"),
        (reply_status(503), False, Failure.HTTP_5XX, True, False, "http_5xx"),
        (reply_status(504), False, Failure.HTTP_5XX, True, False, "http_5xx"),
        (reply_error(-32603, status=503), False, Failure.HTTP_5XX, True, False, "http_5xx"),
        # A 500 counts only without a JSON-RPC answer in it: with one, the server answered.
        (reply_status(500), False, Failure.HTTP_5XX, True, False, "http_5xx"),
        (reply_error(-32603, status=500), False, Failure.SERVER_ERROR, False, False, "server_error"),
        (reply_result({}, status=500), False, Failure.CLIENT_ERROR, False, False, None),  # odd, but an answer
        (reply_json({"error": "Internal Server Error"}, status=500), False, Failure.HTTP_5XX, True, False, "http_5xx"),
        (reply_status(429), False, Failure.HTTP_429, False, False, "http_429"),
        (reply_status(404), True, Failure.SESSION_EXPIRED, False, False, "session_expired"),
        (reply_status(404), False, Failure.CLIENT_ERROR, False, False, None),
        (reply_status(400), False, Failure.CLIENT_ERROR, False, False, None),
        # Every JSON-RPC error in a well-formed answer is the application answering.
        (reply_error(-32603), False, Failure.SERVER_ERROR, False, False, "server_error"),
        (reply_error(-32000), False, Failure.SERVER_ERROR, False, False, "server_error"),
        (reply_error(-32001), False, Failure.SERVER_ERROR, False, False, "server_error"),
        (reply_error(-32002), False, Failure.CLIENT_ERROR, False, False, None),  # resource not found
        (reply_error(-32099), False, Failure.SERVER_ERROR, False, False, "server_error"),
        (reply_error(-32020, status=400), False, Failure.CLIENT_ERROR, False, False, None),
        (reply_error(-32602), False, Failure.CLIENT_ERROR, False, False, None),
        (reply_error(-32100), False, Failure.CLIENT_ERROR, False, False, None),
        # server-everything: a sessionless POST, and a stale session after it restarted.
        (reply_error(-32000, status=400, message="Bad Request: Server not initialized"), False,
         Failure.SERVER_ERROR, False, False, "server_error"),
        (reply_error(-32000, status=400, message="Bad Request: No valid session ID provided"), True,
         Failure.SESSION_EXPIRED, False, False, "session_expired"),
        (reply_result({"content": [], "isError": True}), False, Failure.TOOL_ERROR, False, False, None),
    ],
)
def test_replies(reply: object, session: bool, kind: Failure, server: bool, transport: bool, key: str | None) -> None:
    verdict = classify_reply(reply, session)  # type: ignore[arg-type]
    assert (verdict.kind, verdict.server_failure, verdict.transport_failure, verdict.retry_key) == (
        kind, server, transport, key,
    )  # fmt: skip
    assert verdict.application_answer == (kind in {Failure.SERVER_ERROR, Failure.CLIENT_ERROR, Failure.TOOL_ERROR,
                                                   Failure.SESSION_EXPIRED})  # fmt: skip


@pytest.mark.parametrize(
    ("error", "kind", "never_sent", "server", "transport"),
    [
        (NeverSent("refused"), Failure.CONNECT_ERROR, True, True, True),
        (UpstreamUnavailable("reset"), Failure.CONNECTION_LOST, False, True, True),
        (UpstreamTimeout("slow"), Failure.TIMEOUT, False, True, False),
        (UpstreamTimeout("a big job", excused=True), Failure.TIMEOUT, False, False, False),
        (StreamEndedEarly("ended"), Failure.STREAM_ENDED, False, False, False),
        (StreamBroken("cut"), Failure.STREAM_BROKEN, False, True, True),
        (UpstreamProtocolError("not http"), Failure.BAD_RESPONSE, False, True, True),
        (AnswerTooLarge("huge"), Failure.ANSWER_TOO_LARGE, False, False, False),
        (ProxyOverloaded("pool busy"), Failure.OVERLOADED, True, False, False),
        (ClientOverloaded("cap"), Failure.OVERLOADED, True, False, False),
        (UnsendableRequest("bad header"), Failure.CLIENT_ERROR, False, False, False),
        (CircuitOpen("open"), Failure.CLIENT_ERROR, False, False, False),
    ],
)
def test_errors(error: Exception, kind: Failure, never_sent: bool, server: bool, transport: bool) -> None:
    verdict = classify_error(error)  # type: ignore[arg-type]
    assert (verdict.kind, verdict.never_sent, verdict.server_failure, verdict.transport_failure) == (
        kind, never_sent, server, transport,
    )  # fmt: skip


def test_describe_never_carries_the_servers_words() -> None:
    """An open breaker tells every client its last failure: a server's message (maybe another client's
    data) must not be in it; the proxy's own error texts are."""
    secret = "no such account 4711 for alice"
    assert classify_reply(reply_error(-32000, status=503, message=secret), False).describe() == "http_5xx, HTTP 503, JSON-RPC -32000"
    assert classify_reply(reply_error(-32603, message=secret), False).describe() == "server_error, HTTP 200, JSON-RPC -32603"
    assert classify_error(NeverSent("cannot connect to upstream: refused")).describe() == (
        "connect_error: cannot connect to upstream: refused"
    )


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=40.0) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("²") is None  # a digit to str.isdigit, not to float()
    assert parse_retry_after("9" * 400) == 86_400.0  # capped, never inf
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=0.0) == 86_400.0
    assert classify_reply(reply_status(429, **{"Retry-After": "3"}), False).retry_after == 3.0
