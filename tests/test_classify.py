"""Classification: era, method, tool, idempotency and client identity, decided once."""

from __future__ import annotations

from proxy.policies.base import Era
from tests.fakes import make_call

CALL = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"lookup","arguments":{}}}'


def test_legacy_and_modern_eras() -> None:
    assert make_call(CALL).era is Era.LEGACY
    assert make_call(CALL, **{"MCP-Protocol-Version": "2025-11-25"}).era is Era.LEGACY
    assert make_call(CALL, **{"MCP-Protocol-Version": "2026-07-28"}).era is Era.MODERN
    meta_only = b'{"jsonrpc":"2.0","id":2,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}'
    assert make_call(meta_only).era is Era.MODERN


def test_tool_and_idempotency_come_from_the_body_not_the_headers() -> None:
    call = make_call(CALL, **{"Mcp-Name": "something_else"})
    assert (call.method, call.tool, call.idempotent) == ("tools/call", "lookup", False)
    assert make_call().idempotent is True


def test_client_identity_never_holds_the_secret() -> None:
    with_auth = make_call(CALL, Authorization="Bearer s3cret")
    assert with_auth.client.startswith("auth:") and "s3cret" not in with_auth.client
    assert with_auth.auth_scope == with_auth.client.removeprefix("auth:")
    assert make_call(CALL).client == "addr:127.0.0.1"
    assert make_call(CALL, **{"Mcp-Session-Id": "abc"}).session_id == "abc"


def test_a_configured_identity_header_is_hashed_too() -> None:
    from proxy.classify import classify
    from proxy.jsonrpc import parse_message
    from proxy.policies.resolve import PolicyResolver
    from tests.fakes import upstream_config
    from multidict import CIMultiDict

    headers = CIMultiDict({"X-Client-Id": "alice@example.com"})
    call = classify("up", parse_message(CALL), CALL, headers, CIMultiDict(), "127.0.0.1", "X-Client-Id", PolicyResolver(upstream_config()))
    assert call.client.startswith("id:") and "alice" not in call.client
