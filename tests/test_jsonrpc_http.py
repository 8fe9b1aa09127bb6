"""The JSON-RPC bounds and exact keys seen through the proxy, in process, over real HTTP on 127.0.0.1.

What `parse_message` refuses never reaches the upstream and is answered with a short JSON-RPC error
carrying the request's id; numbers orjson reads lossily never merge two requests into one cache entry.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from proxy.app import running_proxy
from proxy.mcp.jsonrpc import MAX_BATCH_ITEMS, MAX_JSON_DEPTH, MAX_NAME_CHARS
from tests.conftest import proxy_config
from tests.fault_upstream import FaultUpstream

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


async def post(url: str, raw: bytes, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=raw, headers={**JSON_HEADERS, **headers}) as response:
            return response.status, dict(response.headers), await response.read()


def read(request_id: int, number: str) -> bytes:
    """A resources/read (cached under `mode: ttl`) whose params hold `number` exactly as written."""
    params = '{"uri":"demo://facts","account":%s}' % number
    return b'{"jsonrpc":"2.0","id":%d,"method":"resources/read","params":%s}' % (request_id, params.encode())


async def test_numbers_orjson_reads_alike_are_two_cache_entries(upstream: FaultUpstream) -> None:
    config = proxy_config(upstream.url, upstream={"cache": {"mode": "ttl", "ttl": "1m"}})
    pairs = [("18446744073709551739", "18446744073709551740"), ("0.1", "0.10000000000000001")]
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        caches = []
        for request_id, (one, other) in enumerate(pairs):
            for number in (one, other, one):
                status, headers, body = await post(url, read(request_id, number))
                assert (status, json.loads(body)["id"]) == (200, request_id)
                caches.append(headers.get("X-Mcp-Proxy-Cache"))
    assert caches == [None, None, "hit"] * len(pairs)  # …123 never gets the answer for …124
    assert upstream.attempts["resources/read"] == 2 * len(pairs)


def nested(depth: int) -> bytes:
    text = b"1"
    for level in range(depth):
        text = b"[%s]" % text if level % 2 else b'{"k":%s}' % text
    return text


async def test_params_nested_too_deep_are_an_invalid_request_not_a_crash(upstream: FaultUpstream) -> None:
    config = proxy_config(upstream.url, upstream={"cache": {"mode": "ttl", "ttl": "1m"}})
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        call = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"lookup","arguments":%s}}'
        answers = []
        for depth in (MAX_JSON_DEPTH + 1, 300, 1000):
            answers.append(await post(url, call % (4, nested(depth - 2))))  # below the message object and params
        ok_status, _, ok_body = await post(url, call % (5, nested(MAX_JSON_DEPTH - 2)))
    for status, _, body in answers:
        error = json.loads(body)
        assert (status, error["id"], error["error"]["code"]) == (400, 4, -32600)
        assert error["error"]["message"] == f"Invalid Request: nested deeper than {MAX_JSON_DEPTH} levels"
    assert (ok_status, json.loads(ok_body)["id"]) == (200, 5)
    assert upstream.attempts["tools/call:lookup"] == 1


async def test_a_tool_name_of_a_mebibyte_is_refused_in_a_short_answer(upstream: FaultUpstream) -> None:
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        name = "n" * (1 << 20)
        raw = json.dumps({"jsonrpc": "2.0", "id": "big", "method": "tools/call", "params": {"name": name}}).encode()
        status, _, body = await post(proxy.url + "/mcp", raw)
        metrics = proxy.metrics.render().decode()
    error: dict[str, Any] = json.loads(body)
    assert 'mcp_proxy_rejected_requests_total{reason="bad_name"} 1.0' in metrics
    assert (status, error["id"], error["error"]["code"]) == (400, "big", -32602)
    assert error["error"]["message"] == f'Invalid params: "name" is 1048576 characters, more than {MAX_NAME_CHARS}'
    assert len(body) < 200
    assert upstream.received == []


async def test_a_batch_of_82000_pings_is_refused_whole(upstream: FaultUpstream) -> None:
    raw = b"[" + b",".join(b'{"jsonrpc":"2.0","id":%d,"method":"ping"}' % n for n in range(82_000)) + b"]"
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        status, _, body = await post(proxy.url + "/mcp", raw, **{"MCP-Protocol-Version": "2025-03-26"})
    error = json.loads(body)
    assert (status, error["id"], error["error"]["code"]) == (400, None, -32600)
    assert error["error"]["message"] == f"Invalid Request: batch of 82000 items exceeds {MAX_BATCH_ITEMS}"
    assert upstream.attempts["ping"] == 0


async def test_a_compressed_body_is_refused_unread_and_never_inflated(upstream: FaultUpstream) -> None:
    """A gzip body of 10 KB inflates to 10 MiB: the listener does not inflate request bodies (aiohttp would,
    past `limits.max_body_bytes`, and forward the inflated bytes under the client's Content-Encoding), and the
    handler refuses any encoded body with 415. A plain body on the same proxy passes as usual."""
    import gzip

    bomb = gzip.compress(b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"' + b" " * (10 << 20) + b'"}}')
    assert len(bomb) < 64 * 1024
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        url = proxy.url + "/mcp"
        status, headers, body = await post(url, bomb, **{"Content-Encoding": "gzip"})
        plain = await post(url, b'{"jsonrpc":"2.0","id":2,"method":"ping"}')
    error = json.loads(body)
    assert (status, error["error"]["code"], error["error"]["data"]["reason"]) == (415, -32600, "unsupported_media_type")
    assert headers["X-Mcp-Proxy-Error"] == "unsupported_media_type"
    assert plain[0] == 200 and [r.method for r in upstream.received] == ["ping"]
