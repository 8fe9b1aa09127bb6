"""The one failure classifier: each outcome maps to exactly one kind, breaker weight and retry key."""

from __future__ import annotations

import pytest

from proxy.errors import CircuitOpen, NeverSent, StreamBroken, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from proxy.failures import Failure, classify_error, classify_reply, parse_retry_after
from tests.fakes import reply_error, reply_ok, reply_result, reply_status


@pytest.mark.parametrize(
    ("reply", "session", "kind", "server", "key"),
    [
        (reply_ok(), False, Failure.OK, False, None),
        (reply_status(503), False, Failure.HTTP_5XX, True, "http_5xx"),
        (reply_status(429), False, Failure.HTTP_429, False, "http_429"),
        (reply_status(404), True, Failure.SESSION_EXPIRED, False, "session_expired"),
        (reply_status(404), False, Failure.CLIENT_ERROR, False, None),
        (reply_error(-32603), False, Failure.SERVER_ERROR, True, "server_error"),
        (reply_error(-32000), False, Failure.SERVER_ERROR, True, "server_error"),
        (reply_error(-32019), False, Failure.SERVER_ERROR, True, "server_error"),
        (reply_error(-32020, status=400), False, Failure.CLIENT_ERROR, False, None),
        (reply_error(-32602), False, Failure.CLIENT_ERROR, False, None),
        (reply_error(-32603, status=500), False, Failure.HTTP_5XX, True, "http_5xx"),
        (reply_result({"content": [], "isError": True}), False, Failure.TOOL_ERROR, False, None),
    ],
)
def test_replies(reply: object, session: bool, kind: Failure, server: bool, key: str | None) -> None:
    verdict = classify_reply(reply, session)  # type: ignore[arg-type]
    assert (verdict.kind, verdict.server_failure, verdict.retry_key) == (kind, server, key)


@pytest.mark.parametrize(
    ("error", "kind", "never_sent"),
    [
        (NeverSent("refused"), Failure.CONNECT_ERROR, True),
        (UpstreamUnavailable("reset"), Failure.CONNECTION_LOST, False),
        (UpstreamTimeout("slow"), Failure.TIMEOUT, False),
        (StreamBroken("cut"), Failure.STREAM_BROKEN, False),
        (UpstreamProtocolError("huge"), Failure.BAD_RESPONSE, False),
        (CircuitOpen("open"), Failure.CLIENT_ERROR, False),
    ],
)
def test_errors(error: Exception, kind: Failure, never_sent: bool) -> None:
    verdict = classify_error(error)  # type: ignore[arg-type]
    assert (verdict.kind, verdict.never_sent) == (kind, never_sent)


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:10 GMT", now=40.0) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("²") is None  # a digit to str.isdigit, not to float()
    assert parse_retry_after("9" * 400) == 86_400.0  # capped, never inf
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now=0.0) == 86_400.0
    assert classify_reply(reply_status(429, **{"Retry-After": "3"}), False).retry_after == 3.0
