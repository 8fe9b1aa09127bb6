"""The JSON-RPC bounds and exact keys seen through the proxy, in process, over real HTTP on 127.0.0.1.

What `parse_message` refuses never reaches the upstream and is answered with a short JSON-RPC error
carrying the request's id; numbers orjson reads lossily never merge two requests into one cache entry.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import pytest
import uvicorn

from proxy.app import running_proxy
from proxy.mcp.jsonrpc import MAX_BATCH_ITEMS, MAX_JSON_DEPTH, MAX_NAME_CHARS
from tests.conftest import proxy_config
from tests.fault_upstream import FaultUpstream
from tests.sdk_helpers import ACCEPT, MODERN_VERSION, legacy_handshake, legacy_headers, modern_meta
from tests.servers.everything import build_app

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
    # 328,000 values: past the value bound too, which would refuse it first (413, too_many_values).
    async with running_proxy(proxy_config(upstream.url, limits={"max_body_values": 1_000_000})) as proxy:
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


async def test_a_body_of_a_million_empty_arrays_is_refused_unparsed(upstream: FaultUpstream) -> None:
    """4 MiB of ``[],`` is 1.4 million lists: 85 MiB held for as long as the call ran. Now a 413 like any
    body limit, before the parse; a configured bound lets it through."""
    raw = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"lookup","arguments":{"a":['
    raw += b"[]," * 1_390_000 + b"[]]}}}"
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        status, headers, body = await post(proxy.url + "/mcp", raw)
        metrics = proxy.metrics.render().decode()
    error = json.loads(body)
    assert (status, headers["X-Mcp-Proxy-Error"], error["id"]) == (413, "too_many_values", None)
    assert error["error"] == {
        "code": -32600, "data": {"reason": "too_many_values"},
        "message": "Invalid Request: the body holds more than 100000 JSON values (limits.max_body_values)",
    }
    assert 'mcp_proxy_rejected_requests_total{reason="too_many_values"} 1.0' in metrics
    assert upstream.received == []

    def call(values: int) -> bytes:  # the object, "2.0", id, method, params, name, arguments, "a": 8
        items = b",".join([b"0"] * (values - 8))
        return b'{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"lookup","arguments":{"a":[%s]}}}' % items

    async with running_proxy(proxy_config(upstream.url, limits={"max_body_values": 1000})) as proxy:
        assert (await post(proxy.url + "/mcp", call(1001)))[0] == 413
        status, _, body = await post(proxy.url + "/mcp", call(1000))
    assert (status, json.loads(body)["id"]) == (200, 8) and upstream.received[0].body == call(1000)


async def test_a_utf16_body_is_a_parse_error_never_parsed_and_a_utf8_bom_still_passes(upstream: FaultUpstream) -> None:
    """4 MiB of UTF-16 hid 690,000 arrays from limits.max_body_values (the count reads UTF-8) and Python's
    `json` parsed them all (0.75 s, ~50 MiB a body): now -32700 before any parse, as no server reads it."""
    arrays = ",".join(["[]"] * 690_000)
    text = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"lookup","arguments":{"a":"\\"","b":['
    raw = (text + arrays + '],"c":"\\""}}}').encode("utf-16-le")
    bom = b'\xef\xbb\xbf{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        status, headers, body = await post(proxy.url + "/mcp", raw)
        assert upstream.received == []
        passed = await post(proxy.url + "/mcp", bom)
        metrics = proxy.metrics.render().decode()
    assert (status, headers["X-Mcp-Proxy-Error"]) == (400, "bad_json")
    assert json.loads(body) == {
        "jsonrpc": "2.0", "id": None,
        "error": {"code": -32700, "message": "Parse error: JSON must be UTF-8 (the body holds a NUL byte)",
                  "data": {"reason": "bad_json"}},
    }  # fmt: skip
    assert 'mcp_proxy_rejected_requests_total{reason="bad_json"} 1.0' in metrics
    assert (passed[0], json.loads(passed[2])["id"]) == (200, 2)
    assert [r.body for r in upstream.received] == [bom]


# --- valid JSON orjson refuses, against the official Python SDK's server ----------------------------------


@dataclass(frozen=True)
class Heard:
    """What a client heard: the status, the final JSON-RPC message (JSON body or its SSE event), the proxy's mark."""

    status: int
    message: Any
    mark: str | None


async def hear(http: httpx2.AsyncClient, url: str, raw: bytes, headers: dict[str, str]) -> Heard:
    response = await http.post(url, content=raw, headers={"content-type": "application/json", **headers})
    message: Any = None
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for block in response.text.replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip() for line in block.split("\n") if line.startswith("data:"))
            if data:
                message = json.loads(data)  # Python's json: reads what the server wrote, lone surrogates included
    elif response.content:
        message = json.loads(response.content)
    return Heard(response.status_code, message, response.headers.get("x-mcp-proxy-error"))


META = json.dumps(modern_meta()).encode()
EDGES: dict[str, bytes] = {
    "1e999": b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"lookup","arguments":{"key":"alpha","n":1e999}%s}}',
    "lone surrogate": b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"lookup","arguments":{"key":"\\ud800"}%s}}',
    "BOM": b'\xef\xbb\xbf{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"lookup","arguments":{"key":"alpha"}%s}}',
    "id 1.0": b'{"jsonrpc":"2.0","id":1.0,"method":"tools/call","params":{"name":"lookup","arguments":{"key":"alpha"}%s}}',
    "empty method": b'{"jsonrpc":"2.0","id":5,"method":"","params":{"name":"lookup"%s}}',
}


@pytest.fixture
async def sdk_server() -> AsyncIterator[str]:
    """The everything server (official Python SDK, ``mcp`` 2.3) in process, on 127.0.0.1."""
    server = uvicorn.Server(uvicorn.Config(build_app("127.0.0.1"), host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    serving = asyncio.ensure_future(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            assert not serving.done(), "the SDK server exited early"
            await asyncio.sleep(0.01)  # polling for the bound port; bounded by the timeout
    yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/mcp"
    server.should_exit = True
    await asyncio.wait_for(serving, 30)


@pytest.mark.parametrize("edge", list(EDGES))
@pytest.mark.parametrize("era", ["legacy", "modern"])
async def test_valid_json_the_server_reads_reaches_it(sdk_server: str, era: str, edge: str) -> None:
    """Each body, straight to the SDK server and through a default proxy: the client hears the same answer,
    the server's own (whatever it makes of the body: in 2026-07-28 it reads them all; legacy refuses a lone
    surrogate and a BOM itself, and takes ``id: 1.0`` for a notification), never a proxy refusal."""
    async with running_proxy(proxy_config(sdk_server)) as proxy, httpx2.AsyncClient(timeout=30) as http:
        heard = []
        for url in (sdk_server, proxy.url + "/mcp"):
            if era == "modern":
                headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/call"}
                if edge == "empty method":
                    headers["mcp-method"] = ""
                else:
                    headers["mcp-name"] = "lookup"
                raw = EDGES[edge] % (b',"_meta":' + META)
            else:
                headers = legacy_headers(await legacy_handshake(http, url))
                raw = EDGES[edge] % b""
            heard.append(await hear(http, url, raw, headers))
        direct, proxied = heard
    assert proxied.mark is None and (proxied.status, proxied.message) == (direct.status, direct.message)
    if era == "modern":  # what the SDK reads, in the era where it reads them all
        assert direct.status == (404 if edge == "empty method" else 400 if edge == "id 1.0" else 200), direct
