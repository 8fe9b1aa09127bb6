"""The cache's keys: one compact ``bytes`` per entry, equal exactly when method, protocol, scope and params are.

A key is built from parts a client chooses (the method, the MCP-Protocol-Version header, the params), so
no choice of them may make two different calls share a key, and a header holding bytes that are not
UTF-8 (decoded with surrogates) must not break the cache.
"""

from __future__ import annotations

import itertools

import pytest

from proxy.policies.base import Call
from proxy.policies.fallback import CACHE_HEADER, CacheStage, _keys, _method_of
from tests.fakes import FakeClock, FakeUpstream, make_call, reply_result, upstream_config

CACHED = upstream_config(cache={"mode": "ttl", "ttl": "1h"})


def _call(method: str, protocol: str, authorization: str | None = None, params: str = '{"uri":"a"}') -> Call:
    body = f'{{"jsonrpc":"2.0","id":1,"method":{method!r},"params":{params}}}'.replace("'", '"').encode()
    headers = {"MCP-Protocol-Version": protocol}
    if authorization is not None:
        headers["Authorization"] = authorization
    return make_call(body, CACHED, **headers)


def test_different_parts_never_make_the_same_key() -> None:
    """Parts whose concatenations could run together ("1:" inside a name, digits, the shared marker)."""
    methods = ["a", "a1:b", "1:a", "a-", "-"]
    protocols = ["", "1:b", "b", "2025-06-18", "-"]
    keys: dict[bytes, tuple[str, str, str]] = {}
    for method, protocol in itertools.product(methods, protocols):
        call = _call(method, protocol, authorization="Bearer x")
        private, shared = _keys(call)
        for key, scope in ((private, call.credential_scope), (shared, None)):
            assert keys.setdefault(key, (method, protocol, str(scope))) == (method, protocol, str(scope))
            assert _method_of(key) == method
    assert len(keys) == 2 * len(methods) * len(protocols)


def test_params_and_scope_tell_keys_apart() -> None:
    a, b = _call("resources/read", "x", params='{"uri":"a"}'), _call("resources/read", "x", params='{"uri":"b"}')
    assert _keys(a)[1] != _keys(b)[1]
    alice, bob = _call("resources/read", "x", "Bearer alice"), _call("resources/read", "x", "Bearer bob")
    assert _keys(alice)[0] != _keys(bob)[0] and _keys(alice)[1] == _keys(bob)[1]


@pytest.mark.parametrize("protocol", ["\udcff\udcfe", "2025-06-18\udc80"])
async def test_a_protocol_header_that_is_not_utf8_is_cached_like_any(protocol: str) -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result({"contents": []}))
    first = await stage(_call("resources/read", protocol), upstream)
    second = await stage(_call("resources/read", protocol), upstream)
    assert (first.extra, second.extra, upstream.attempts) == ({}, {CACHE_HEADER: "hit"}, 1)
    assert _method_of(_keys(_call("resources/read", protocol))[0]) == "resources/read"
