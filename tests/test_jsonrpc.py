"""JSON-RPC parsing and classification: every malformed shape maps to the right code and id."""

from __future__ import annotations

import pytest

from proxy.jsonrpc import Kind, MessageError, error_body, is_read_method, parse_message


def test_request_notification_response_batch() -> None:
    assert parse_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}').kind is Kind.REQUEST
    assert parse_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').kind is Kind.NOTIFICATION
    assert parse_message(b'{"jsonrpc":"2.0","id":"s1","result":{}}').kind is Kind.RESPONSE
    batch = parse_message(b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"x"}]')
    assert batch.kind is Kind.BATCH


@pytest.mark.parametrize(
    ("raw", "code", "request_id"),
    [
        (b"{not json", -32700, None),
        (b"", -32700, None),
        (b"[]", -32600, None),
        (b'"a string"', -32600, None),
        (b'{"id":4,"method":"ping"}', -32600, 4),
        (b'{"jsonrpc":"1.0","id":"x","method":"ping"}', -32600, "x"),
        (b'{"jsonrpc":"2.0","id":5,"method":7}', -32600, 5),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600, None),
        (b'{"jsonrpc":"2.0","id":6,"method":"ping","params":3}', -32600, 6),
        (b'{"jsonrpc":"2.0","id":7}', -32600, 7),
    ],
)
def test_bad_messages(raw: bytes, code: int, request_id: object) -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(raw)
    assert (caught.value.code, caught.value.request_id) == (code, request_id)


@pytest.mark.parametrize(
    ("method", "read"),
    [
        ("initialize", True), ("server/discover", True), ("ping", True), ("tools/list", True),
        ("resources/templates/list", True), ("resources/read", True), ("prompts/get", True),
        ("completion/complete", True), ("tools/call", False), ("subscriptions/listen", False),
        ("resources/subscribe", False), ("logging/setLevel", False),
    ],
)
def test_read_methods(method: str, read: bool) -> None:
    assert is_read_method(method) is read


def test_error_body_shape() -> None:
    assert error_body(3, -32051, "slow", {"reason": "upstream_timeout"}) == (
        b'{"jsonrpc":"2.0","id":3,"error":{"code":-32051,"message":"slow","data":{"reason":"upstream_timeout"}}}'
    )
