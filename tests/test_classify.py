"""Classification: era, method, tool, idempotency and client identity, decided once."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given, strategies as st
from multidict import CIMultiDict

from proxy.server.classify import CallRoute, ClientRequest, classify, client_identity, credential_scope
from proxy.mcp.annotations import ToolAnnotations
from proxy.mcp.headers import upstream_headers
from proxy.mcp.tool_catalog import ToolCatalog, ToolHints
from proxy.mcp.jsonrpc import parse_message
from proxy.mcp.eras import Era
from proxy.policies.base import Call
from proxy.config.resolve import PolicyResolver
from tests.fakes import upstream_config

CALL = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"lookup","arguments":{}}}'


def make_call(
    body: bytes = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', identity_header: str | None = None, **headers: str
) -> Call:
    """Classify `body` as the handler does: the client's headers, and the filtered set it forwards."""
    raw = CIMultiDict(headers)
    resolver = PolicyResolver(upstream_config())
    request = ClientRequest(parse_message(body), body, raw, upstream_headers(raw.items()), "127.0.0.1", None, 0.0)
    return classify(request, CallRoute("up", resolver, identity_header=identity_header))


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
    assert with_auth.credential_scope == ""  # no cache in this call's policy: nothing needs the scope
    scope = credential_scope(upstream_headers(CIMultiDict(Authorization="Bearer s3cret").items()))
    assert scope and "s3cret" not in scope
    assert make_call(CALL).client == "addr:127.0.0.1"
    assert make_call(CALL).credential_scope == ""


def test_the_scope_is_computed_for_a_cached_call_only() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    raw = CIMultiDict(Authorization="Bearer a")
    forwarded = upstream_headers(raw.items())
    cached = PolicyResolver(upstream_config(rules=[{"match": {"method": "tools/list"}, "cache": {"mode": "ttl"}}]))
    call = classify(ClientRequest(parse_message(body), body, raw, forwarded, "127.0.0.1", None, 0.0), CallRoute("up", cached))
    assert call.credential_scope == credential_scope(forwarded) != ""
    assert make_call(CALL, **{"Mcp-Session-Id": "abc"}).session_id == "abc"


def test_a_configured_identity_header_is_hashed_too() -> None:
    call = make_call(CALL, "X-Client-Id", **{"X-Client-Id": "alice@example.com"})
    assert call.client.startswith("id:") and "alice" not in call.client


def test_identity_scope_and_session_come_from_what_is_forwarded() -> None:
    """A header named in Connection never reaches the upstream: it names no one and keys nothing."""
    stripped = make_call(
        CALL, "X-Client-Id", Authorization="Bearer s3cret", **{"X-Client-Id": "alice", "Mcp-Session-Id": "s1"},
        Connection="Authorization, X-Client-Id, Mcp-Session-Id",
    )
    assert (stripped.client, stripped.credential_scope, stripped.session_id) == ("addr:127.0.0.1", "", None)


@pytest.mark.parametrize(
    "header",
    ["Authorization", "Cookie", "X-Api-Key", "X-Client-Id", "Mcp-Session-Id", "X-Tenant", "User-Agent",
     "Accept-Language", "X-Forwarded-For", "Forwarded"],
)
def test_every_forwarded_header_counts_in_the_scope_unless_it_is_known_not_to_identify(header: str) -> None:
    assert credential_scope({header: "a"}) != credential_scope({header: "b"})
    assert credential_scope({header: "a"}) != ""


@pytest.mark.parametrize(
    "header",
    ["Accept", "Content-Type", "MCP-Protocol-Version", "Mcp-Method", "Mcp-Name", "Mcp-Param-Region", "Last-Event-ID",
     "traceparent", "tracestate", "b3", "X-B3-TraceId", "X-Request-Id", "X-Correlation-Id", "X-Amzn-Trace-Id",
     "X-Cloud-Trace-Context", "baggage", "sentry-trace", "x-datadog-trace-id", "x-datadog-parent-id", "uber-trace-id",
     "uberctx-user", "x-ot-span-context", "grpc-trace-bin", "newrelic", "elastic-apm-traceparent"],
)
def test_per_request_headers_without_identity_do_not_count(header: str) -> None:
    assert credential_scope({header: "a", "Authorization": "x"}) == credential_scope({header: "b", "Authorization": "x"})


def test_the_scope_is_unambiguous_and_case_insensitive() -> None:
    assert credential_scope({"X-A": "b", "X-C": "d"}) == credential_scope({"x-c": "d", "x-a": "b"})
    assert credential_scope({"X-A": "b:1"}) != credential_scope({"X-A": "b", "1": ""})
    both: CIMultiDict[str] = CIMultiDict([("Cookie", "a=1"), ("Cookie", "b=2")])
    assert credential_scope(both) != credential_scope({"Cookie": "a=1"})


def test_client_identity_prefers_the_configured_header_then_credentials_then_the_peer() -> None:
    configured, scope = client_identity({"X-Client-Id": "alice", "Authorization": "x"}, "10.0.0.1", "X-Client-Id")
    assert configured.startswith("id:") and scope == credential_scope({"X-Client-Id": "alice", "Authorization": "x"})
    not_configured, _ = client_identity({"X-Client-Id": "alice"}, "10.0.0.1", None)
    assert not_configured == "addr:10.0.0.1"  # a client-chosen header names no one unless configured
    api_key, _ = client_identity({"X-Api-Key": "k"}, "10.0.0.1", None)
    assert api_key.startswith("auth:")
    # an unknown header splits cache scopes (deny-by-default) but makes no new client: no rate-limit escape
    assert client_identity({"X-Random": "1"}, "10.0.0.1", None)[0] == "addr:10.0.0.1"


_NAMES = st.sampled_from(["Authorization", "Cookie", "X-Api-Key", "X-Tenant", "Mcp-Session-Id", "traceparent", "Accept"])
_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=12)


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=6), st.randoms(use_true_random=False))
def test_the_scope_ignores_header_order_and_name_case(pairs: list[tuple[str, str]], rng: Random) -> None:
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    same: CIMultiDict[str] = CIMultiDict([(name.upper(), value) for name, value in shuffled])
    assert credential_scope(CIMultiDict(pairs)) == credential_scope(same)


@given(st.dictionaries(_NAMES, _VALUES, max_size=6), _VALUES, _VALUES)
def test_two_values_of_a_credential_never_share_a_scope(headers: dict[str, str], one: str, other: str) -> None:
    if one != other:
        assert credential_scope({**headers, "X-Api-Key": one}) != credential_scope({**headers, "X-Api-Key": other})


def test_the_strongest_credential_alone_names_the_client() -> None:
    """A client with an Authorization stays itself whatever junk Cookie or X-Api-Key it adds (the
    upstream ignores them; a new identity per request would escape its rate limit and pool share)."""
    me = client_identity({"Authorization": "Bearer a"}, "10.0.0.1", None)[0]
    assert client_identity({"Authorization": "Bearer a", "Cookie": "junk=1"}, "10.0.0.1", None)[0] == me
    assert client_identity({"authorization": "Bearer a", "X-Api-Key": "junk"}, "10.0.0.1", None)[0] == me
    assert client_identity({"Authorization": "Bearer b"}, "10.0.0.1", None)[0] != me
    keyed = client_identity({"X-Api-Key": "k", "Cookie": "junk=2"}, "10.0.0.1", None)[0]
    assert keyed == client_identity({"X-Api-Key": "k"}, "10.0.0.1", None)[0] != me


class CountingCatalog(ToolCatalog):
    """A catalog that counts how often classification asks it about a tool."""

    __slots__ = ("asked",)

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def hints(self, tool: str) -> ToolHints | None:
        self.asked += 1
        return super().hints(tool)


@pytest.mark.parametrize("trusted", [False, True])
def test_a_tools_call_asks_the_catalog_once_and_other_methods_never(trusted: bool) -> None:
    """The declared hints are looked up once per tools/call, for its idempotency and its events alike."""
    catalog = CountingCatalog()
    listing = {"tools": [{"name": "lookup", "annotations": {"readOnlyHint": True}}, {"name": "put"}]}
    catalog.learn({"jsonrpc": "2.0", "id": 1, "result": listing})
    route = CallRoute("up", PolicyResolver(upstream_config()), ToolAnnotations(catalog, trusted=trusted))

    def classified(body: bytes) -> Call:
        return classify(ClientRequest(parse_message(body), body, CIMultiDict(), CIMultiDict(), "127.0.0.1", None, 0.0), route)

    lookup, put = classified(CALL), classified(CALL.replace(b"lookup", b"put"))
    assert catalog.asked == 2
    assert (lookup.hints, lookup.idempotent) == (ToolHints(read_only=True), trusted)
    assert (put.hints, put.idempotent) == (ToolHints(), False)  # listed, nothing declared
    for body in (b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}', b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"x"}}'):
        assert classified(body).hints is None
    assert catalog.asked == 2
