"""The forwarding core, in process, against the fault-injecting upstream over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from yarl import URL

from proxy.app import ProxyServer, running_proxy
from tests.conftest import proxy_config
from tests.fault_upstream import FaultUpstream

LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


def call_tool(name: str, request_id: int | str = 9) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": {}}}


async def post(url: str | URL, payload: Any = None, *, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        body = data if data is not None else json.dumps(payload).encode()
        async with session.post(url, data=body, headers={**JSON_HEADERS, **(headers or {})}) as response:
            return response.status, dict(response.headers), await response.read()


def mcp_url(proxy: ProxyServer) -> str:
    return proxy.url + "/mcp"


async def test_json_request_is_forwarded_byte_for_byte(proxy: ProxyServer, upstream: FaultUpstream) -> None:
    raw = b'{"jsonrpc":"2.0",  "id":1,"method":"tools/list" }'
    status, headers, body = await post(mcp_url(proxy), data=raw)
    assert status == 200
    assert json.loads(body)["result"]["tools"][0]["name"] == "lookup"
    assert upstream.received[-1].body == raw
    assert upstream.attempts["tools/list"] == 1


async def test_mcp_headers_reach_the_upstream(proxy: ProxyServer, upstream: FaultUpstream) -> None:
    sent = {
        "Authorization": "Bearer s3cret", "Mcp-Session-Id": "sess-1", "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call", "Mcp-Name": "lookup", "Mcp-Param-Region": "eu", "Mcp-Param-Brand-New": "1",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Connection": "keep-alive, X-Hop", "X-Hop": "1",
    }
    await post(mcp_url(proxy), call_tool("lookup"), headers=sent)
    got = upstream.received[-1].headers
    for name in sent:
        if name in ("Connection", "X-Hop"):
            assert name not in got
        else:
            assert got[name] == sent[name]
    assert got["Host"] == upstream.url.split("/")[2]


async def test_notification_gets_the_upstream_202(proxy: ProxyServer, upstream: FaultUpstream) -> None:
    status, _, body = await post(mcp_url(proxy), {"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert (status, body) == (202, b"")
    assert upstream.attempts["notifications/initialized"] == 1


async def test_sse_answer_streams_through_unchanged(proxy: ProxyServer, upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "slow", sse=True)
    status, headers, body = await post(mcp_url(proxy), call_tool("slow", 5))
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert headers["X-Accel-Buffering"] == "no"
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert [e.get("params", {}).get("progress") for e in events[:3]] == [1, 2, 3]
    assert events[3]["id"] == 5 and events[3]["result"]["content"][0]["text"] == "slow ok #1"
    assert len(events) == 4


async def test_stream_broken_midway_ends_with_a_jsonrpc_error(proxy: ProxyServer, upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "slow", sse=True, sse_break_after=2)
    status, _, body = await post(mcp_url(proxy), call_tool("slow", 6))
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200
    assert len(events) == 3
    assert events[2]["id"] == 6
    assert events[2]["error"]["code"] == -32056
    assert events[2]["error"]["data"] == {"reason": "upstream_stream_broken", "upstream": "up"}


async def test_silent_stream_is_broken_after_stream_idle(upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "slow", sse=True, sse_hang_after=1)
    config = proxy_config(upstream.url, upstream={"timeouts": {"stream_idle": "200ms"}})
    async with running_proxy(config) as proxy:
        status, _, body = await post(mcp_url(proxy), call_tool("slow", 11))
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200
    assert [e.get("method") for e in events] == ["notifications/progress", None]
    assert events[1]["id"] == 11 and events[1]["error"]["code"] == -32056
    assert "silent for more than 0.2s" in events[1]["error"]["message"]
    await asyncio.wait_for(upstream.gone.wait(), 5)


def upstream_counts(proxy: ProxyServer) -> tuple[str, int, str, int]:
    """(breaker state, its consecutive failures, health state, failed real calls) of upstream `up`."""
    state = proxy.runtime.current.states["up"]
    (breaker,) = state.breaker.breakers
    return breaker.state, breaker.failures, state.health.state, state.health.counts["calls_failed"]


@pytest.mark.parametrize(("break_after", "counted"), [(2, True), (None, False)], ids=["cut", "silent"])
async def test_a_streamed_answer_that_breaks_counts_one_that_goes_silent_does_not(
    upstream: FaultUpstream, break_after: int | None, counted: bool
) -> None:
    """The breaker judged the attempt at its headers (a success); a connection cut before the response
    is counted then, as the transport failure it is. A stream silent past stream_idle is not: a long
    tool run without progress looks the same, and the client chose the tool."""
    fault = {"sse_break_after": 2} if break_after else {"sse_hang_after": 1}
    upstream.fault("tools/call", "slow", sse=True, **fault)
    config = proxy_config(
        upstream.url,
        upstream={"timeouts": {"stream_idle": "200ms"}, "breaker": {"failure_threshold": 2},
                  "health": {"active": {"enabled": False}, "passive": {"consecutive_failures": 2}}},
    )  # fmt: skip
    async with running_proxy(config) as proxy:
        for n in range(2):
            status, _, body = await post(mcp_url(proxy), call_tool("slow", n))
            assert status == 200 and b'"code":-32056' in body
        expected = ("open", 2, "unhealthy", 2) if counted else ("closed", 0, "unknown", 0)
        assert upstream_counts(proxy) == expected


async def test_a_streamed_answer_the_server_ends_without_the_response_is_said_and_not_counted(
    proxy: ProxyServer, upstream: FaultUpstream
) -> None:
    upstream.fault("tools/call", "slow", sse=True, sse_end_after=1)
    for n in range(6):
        status, _, body = await post(mcp_url(proxy), call_tool("slow", n))
        events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
        assert status == 200 and [e.get("method") for e in events] == ["notifications/progress", None]
        assert events[1]["id"] == n and events[1]["error"]["code"] == -32050
        assert events[1]["error"]["message"] == "upstream ended the stream before the response"
    assert upstream_counts(proxy) == ("closed", 0, "healthy", 0)


async def test_an_event_too_big_to_read_still_passes_whole_and_nothing_is_added(upstream: FaultUpstream) -> None:
    """The parser keeps at most limits.max_response_bytes of one event; a bigger one is passed on as it
    is, the proxy stops watching that stream and never appends an error to an answer it could not read."""
    upstream.fault("tools/call", "slow", sse=True)
    async with running_proxy(proxy_config(upstream.url, limits={"max_response_bytes": 60})) as proxy:
        status, _, body = await post(mcp_url(proxy), call_tool("slow", 3))
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200 and len(events) == 4  # three progress notifications and the result, nothing more
    assert events[3]["id"] == 3 and "result" in events[3]


async def test_upstream_unreachable_is_a_jsonrpc_error_with_the_id(unused_tcp_port: int) -> None:
    config = proxy_config(f"http://127.0.0.1:{unused_tcp_port}/mcp")
    async with running_proxy(config) as proxy:
        status, headers, body = await post(mcp_url(proxy), call_tool("lookup", "abc"))
        error = json.loads(body)
        assert status == 502
        assert error["id"] == "abc"
        assert error["error"]["code"] == -32050
        assert error["error"]["data"] == {"reason": "upstream_unavailable", "upstream": "up"}
        assert headers["X-Mcp-Proxy-Error"] == "upstream_unavailable"


async def test_upstream_timeout_answers_within_per_try(upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "lookup", hang=True)
    # Without timeout observation (on, the timed-out attempt would run on upstream for `observe_timeouts`).
    config = proxy_config(upstream.url, upstream={"timeouts": {"per_try": "200ms"}}, events={"observe_timeouts": "0s"})
    async with running_proxy(config) as proxy:
        status, _, body = await post(mcp_url(proxy), call_tool("lookup", 4))
        error = json.loads(body)
        assert status == 504
        assert (error["id"], error["error"]["code"], error["error"]["data"]["reason"]) == (4, -32051, "upstream_timeout")
        await asyncio.wait_for(upstream.gone.wait(), 5)
        assert upstream.cancelled == 1


@pytest.mark.parametrize("drop", ["before_headers", "after_headers"])
async def test_dropped_connection_is_a_jsonrpc_error(proxy: ProxyServer, upstream: FaultUpstream, drop: str) -> None:
    upstream.fault("tools/call", "lookup", drop=drop)
    status, _, body = await post(mcp_url(proxy), call_tool("lookup", 8))
    text = body.decode()
    payload = json.loads(text if drop == "before_headers" else text.split("data: ", 1)[1])
    assert status == {"before_headers": 502, "after_headers": 200}[drop]
    assert payload["id"] == 8
    assert payload["error"]["data"]["reason"] == {"before_headers": "upstream_unavailable", "after_headers": "upstream_stream_broken"}[drop]


async def test_client_disconnect_cancels_the_upstream_request(proxy: ProxyServer, upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "lookup", hang=True)
    async with aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.post(mcp_url(proxy), json=call_tool("lookup"), headers=JSON_HEADERS))
        await asyncio.wait_for(upstream.arrived.wait(), 5)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    await asyncio.wait_for(upstream.gone.wait(), 5)
    assert upstream.cancelled == 1


@pytest.mark.parametrize("status", [400, 404, 409, 500, 501, 502, 503, 504])
async def test_the_upstreams_own_answer_reaches_the_client_unchanged(
    proxy: ProxyServer, upstream: FaultUpstream, status: int
) -> None:
    """JSON-RPC errors and bare HTTP errors alike: the status, the body and the content type the server
    sent, never a proxy-made substitute (`create_ticket` is not idempotent, so nothing is retried)."""
    upstream.fault("tools/call", "lookup", jsonrpc_error=-32602)
    upstream.fault("tools/call", "create_ticket", status=status)
    _, _, body = await post(mcp_url(proxy), call_tool("lookup"))
    assert json.loads(body)["error"] == {"code": -32602, "message": "injected"}
    answer, headers, body = await post(mcp_url(proxy), call_tool("create_ticket", 12))
    assert (answer, body) == (status, b"upstream says no")
    assert headers["Content-Type"].startswith("text/plain") and "X-Mcp-Proxy-Error" not in headers
    assert upstream.attempts["tools/call:create_ticket"] == 1


async def test_get_and_delete_are_relayed(proxy: ProxyServer, upstream: FaultUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(mcp_url(proxy)) as response:
            assert response.status == 405
        async with session.delete(mcp_url(proxy)) as response:
            assert response.status == 405


BAD_INPUTS = [
    # (label, method, path, headers, body, status, jsonrpc code, reason)
    ("malformed JSON", "POST", "/mcp", {}, b'{"jsonrpc":"2.0","id":1,', 400, -32700, "bad_json"),
    ("not JSON-RPC", "POST", "/mcp", {}, b'{"hello":"world"}', 400, -32600, "not_jsonrpc"),
    ("wrong jsonrpc version", "POST", "/mcp", {}, b'{"jsonrpc":"1.0","id":3,"method":"ping"}', 400, -32600, "not_jsonrpc"),
    ("empty batch", "POST", "/mcp", {}, b"[]", 400, -32600, "not_jsonrpc"),
    ("oversized body", "POST", "/mcp", {}, b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * 5_000_000 + b'"}}', 413, -32600, "too_large"),
    ("wrong content type", "POST", "/mcp", {"Content-Type": "text/plain"}, b'{"jsonrpc":"2.0","id":1,"method":"ping"}', 415, -32600, "unsupported_media_type"),
    ("foreign Host", "POST", "/mcp", {"Host": "evil.example"}, b'{"jsonrpc":"2.0","id":1,"method":"ping"}', 403, -32600, "forbidden_host"),
    ("foreign Origin", "POST", "/mcp", {"Origin": "http://evil.example"}, b'{"jsonrpc":"2.0","id":1,"method":"ping"}', 403, -32600, "forbidden_origin"),
    ("unknown path", "POST", "/other", {}, b'{"jsonrpc":"2.0","id":1,"method":"ping"}', 404, -32600, "no_endpoint"),
    ("unsupported method", "PUT", "/mcp", {}, b"{}", 405, -32600, "method_not_allowed"),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code", "reason"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
async def test_bad_input_gets_a_clear_error_and_the_proxy_keeps_serving(
    proxy: ProxyServer, upstream: FaultUpstream, method: str, path: str, headers: dict[str, str], body: bytes,
    status: int, code: int, reason: str | None,
) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, proxy.url + path, data=body, headers={**JSON_HEADERS, **headers}) as response:
            assert response.status == status
            assert response.content_type == "application/json"
            error = json.loads(await response.read())
    assert error["jsonrpc"] == "2.0"
    assert error["error"]["code"] == code
    assert error["error"].get("data", {}).get("reason") == reason
    assert response.headers["X-Mcp-Proxy-Error"] == reason  # the proxy's own refusal, and it says so
    if code == -32600 and b'"id":3' in body:
        assert error["id"] == 3
    assert upstream.attempts.total() == 0
    good_status, _, good = await post(mcp_url(proxy), LIST)
    assert good_status == 200 and json.loads(good)["id"] == 1
    assert upstream.attempts.total() == 1


async def test_metrics_count_requests_by_outcome(proxy: ProxyServer, upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "lookup", jsonrpc_error=-32603)
    await post(mcp_url(proxy), LIST)
    await post(mcp_url(proxy), call_tool("lookup"))
    await post(mcp_url(proxy), data=b"{bad")
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.admin_url + "/metrics") as response:
            text = await response.text()
    assert 'mcp_proxy_requests_total{method="tools/list",outcome="ok",tool="",upstream="up"} 1.0' in text
    assert 'mcp_proxy_requests_total{method="tools/call",outcome="jsonrpc_error",tool="lookup",upstream="up"} 1.0' in text
    assert 'mcp_proxy_rejected_requests_total{reason="bad_json"} 1.0' in text
    assert 'mcp_proxy_in_flight_requests{upstream="up"} 0.0' in text


async def test_health_and_readiness(proxy: ProxyServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.admin_url + "/healthz") as response:
            assert (response.status, await response.json()) == (200, {"status": "ok"})
        async with session.get(proxy.admin_url + "/readyz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ready"


async def test_a_read_whose_server_asks_the_client_is_handed_on_at_once(upstream: FaultUpstream) -> None:
    """A read's SSE answer is buffered until its response, unless the server asks the client first: then
    the question must reach the client while the server still holds the response back (here until the
    test, having read the question, opens the gate). Buffered, nothing would come until the gate opened."""
    answer = asyncio.Event()
    upstream.fault("resources/read", sse=True, asks_client=True, gate=answer)
    config = proxy_config(upstream.url, upstream={"timeouts": {"per_try": "1h", "total": "1h"}})
    async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
        read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "x://y"}}
        try:
            async with asyncio.timeout(30):  # only bounds a failure: a buffering proxy would wait an hour
                response = await session.post(mcp_url(proxy), json=read, headers=JSON_HEADERS)
                first = await response.content.readuntil(b"\n\n")
        finally:
            answer.set()
        async with response:
            assert response.headers["Content-Type"] == "text/event-stream"
            rest = await response.read()
    events = [json.loads(line[6:]) for line in (first + rest).decode().splitlines() if line.startswith("data: ")]
    assert events == [{"jsonrpc": "2.0", "id": "server-1", "method": "roots/list"}, {"jsonrpc": "2.0", "id": 1, "result": {}}]
    assert upstream.attempts["resources/read"] == 1


async def test_a_handed_on_read_still_delivers_its_result(upstream: FaultUpstream) -> None:
    upstream.fault("resources/read", sse=True, asks_client=True, delay=0.2)
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        read = {"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": "x://y"}}
        status, _, body = await post(mcp_url(proxy), read)
    events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
    assert status == 200
    assert [e.get("method") for e in events] == ["roots/list", None]
    assert events[1] == {"jsonrpc": "2.0", "id": 7, "result": {}}


async def test_options_preflights_reach_the_upstream(proxy: ProxyServer, upstream: FaultUpstream) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.options(mcp_url(proxy), headers={"Origin": "http://localhost:3000"}) as response:
            assert response.status == 405  # the fault upstream's own answer, not the proxy's
            assert response.content_type != "application/json"


async def test_a_stalled_body_gets_408_the_connection_closes_and_the_proxy_keeps_serving(upstream: FaultUpstream) -> None:
    """The rest of a stalled body may still come: the 408 says ``Connection: close`` and the proxy closes,
    so those bytes can never be read as the next request."""
    async with running_proxy(proxy_config(upstream.url, limits={"body_timeout": "200ms"})) as proxy:
        host, port = proxy.listen_address
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 20)  # up to the proxy's close (after LINGER)
        writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b"\r\nConnection: close\r\n" in head + b"\r\n" and b"\r\nX-Mcp-Proxy-Error: body_timeout\r\n" in head
        assert json.loads(body)["error"]["data"] == {"reason": "body_timeout"}
        status, _, body = await post(mcp_url(proxy), LIST)
        assert status == 200 and json.loads(body)["id"] == 1


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", b"431 Request Header Fields Too Large", "headers_too_large"),
        (b"POST /mcp HTTP/1.1\r\nHost: localhost\r\n" + b"X-Many: 1\r\n" * 200 + b"\r\n", b"431 Request Header Fields Too Large", "headers_too_large"),
        (b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400 Bad Request", "bad_http_request"),
        (b"GARBAGE\r\n\r\n", b"400 Bad Request", "bad_http_request"),
    ],
    ids=["huge header", "more headers than aiohttp takes", "broken chunk size", "not http"],
)
async def test_requests_aiohttp_cannot_parse_still_get_jsonrpc_errors(
    proxy: ProxyServer, raw: bytes, status: bytes, reason: str
) -> None:
    """aiohttp's parser refuses these itself (a line over 8190 bytes, more headers than it was told to take):
    the proxy's connection handler renders its refusal as a JSON-RPC error (pinned against aiohttp upgrades)."""
    _, port = proxy.listen_address
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" " + status) and b"Content-Type: application/json" in head
    assert b"\r\nX-Mcp-Proxy-Error: " + reason.encode() + b"\r\n" in head + b"\r\n"
    error = json.loads(body)
    assert (error["id"], error["error"]["code"], error["error"]["data"]) == (None, -32600, {"reason": reason})
    assert b"aaaa" not in answer
    status_code, _, good = await post(mcp_url(proxy), LIST)
    assert status_code == 200 and json.loads(good)["id"] == 1


async def test_a_crash_in_the_proxy_is_a_jsonrpc_500_not_a_traceback_page(
    proxy: ProxyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("proxy.server.handler.classify", broken)
    status, headers, body = await post(mcp_url(proxy), LIST, headers={"Accept": "text/html"})
    assert status == 500 and headers["Content-Type"] == "application/json"
    assert headers["X-Mcp-Proxy-Error"] == "internal_error"
    assert json.loads(body)["error"] == {"code": -32603, "message": "500 Internal Server Error", "data": {"reason": "internal_error"}}
    assert b"a bug" not in body and b"Traceback" not in body


@pytest.mark.parametrize(
    ("answer", "limits", "message"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", {}, "upstream answer is not valid HTTP: Expected HTTP/, RTSP/ or ICE/"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 300\r\n\r\n" + b" " * 300,
            {"max_response_bytes": 200},
            "upstream answer of 300 bytes exceeds limits.max_response_bytes",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"12c\r\n" + b" " * 300 + b"\r\n0\r\n\r\n",
            {"max_response_bytes": 200},
            "upstream answer exceeds limits.max_response_bytes",
        ),
    ],
)
async def test_an_answer_that_is_not_http_or_too_large_is_a_bad_response(
    answer: bytes, limits: dict[str, int], message: str
) -> None:
    """Exactly one attempt (a bad answer is not retried), a -32055 with the id, and the proxy goes on serving."""
    attempts = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_proxy(proxy_config(f"http://127.0.0.1:{port}/mcp", limits=limits)) as proxy:
            for request_id in (1, 2):
                status, _, body = await post(mcp_url(proxy), call_tool("lookup", request_id))
                error = json.loads(body)
                assert status == 502
                assert error["id"] == request_id
                assert error["error"]["code"] == -32055
                assert error["error"]["message"] == message
                assert error["error"]["data"]["reason"] == "upstream_bad_response"
            assert attempts == 2
    finally:
        server.close()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("append", ("6.6.6.6, 127.0.0.1", "https", "for=6.6.6.6, for=127.0.0.1;proto=http")),
        ("overwrite", ("127.0.0.1", "http", "for=127.0.0.1;proto=http")),
        ("pass", ("6.6.6.6", "https", "for=6.6.6.6")),
    ],
)
async def test_what_the_upstream_hears_of_the_clients_address(
    upstream: FaultUpstream, mode: str, expected: tuple[str, str, str]
) -> None:
    """A client claiming another address (which uvicorn believes from 127.0.0.1, where a sidecar is) does
    not hide its own: by default the proxy appends the TCP peer, as Envoy does."""
    claimed = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6"}
    async with running_proxy(proxy_config(upstream.url, security={"forwarded_headers": mode})) as proxy:
        await post(mcp_url(proxy), call_tool("lookup"), headers=claimed)
        await post(mcp_url(proxy), {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=claimed)
    for received in upstream.received:
        got = received.headers
        assert (got["X-Forwarded-For"], got["X-Forwarded-Proto"], got["Forwarded"]) == expected


@pytest.mark.parametrize(
    "head",
    [
        b"POST http://localhost/mcp HTTP/1.1\r\nHost: evil.example\r\n",
        b"POST http://evil.example/mcp HTTP/1.1\r\nHost: localhost\r\n",
        b"POST /mcp HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\nOrigin: http://evil.example\r\n",
    ],
    ids=["absolute form, foreign Host", "foreign absolute form, our Host", "two Origin headers"],
)
async def test_neither_the_request_line_nor_a_second_origin_slips_past_the_allow_lists(
    proxy: ProxyServer, upstream: FaultUpstream, head: bytes
) -> None:
    _, port = proxy.listen_address
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(LIST).encode()
    writer.write(head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 403")
    assert upstream.received == []


def test_a_refused_host_with_user_information_is_logged_without_it() -> None:
    from structlog.testing import capture_logs

    from proxy.mcp.headers import HostPolicy

    policy = HostPolicy(("localhost",), ("localhost",))
    with capture_logs() as logs:
        policy.refused_host("user:SEC51abc@evil.example")
    assert logs and "SEC51abc" not in json.dumps(logs) and "evil.example" in json.dumps(logs)


# --- the query string ----------------------------------------------------------------------------------


async def test_the_query_string_reaches_the_upstream_unchanged_after_the_urls_own(upstream: FaultUpstream) -> None:
    """A client's ``?token=…`` (some servers authenticate by it) reaches the upstream as sent, on POST, GET
    and DELETE alike, after the query the configured upstream URL carries; it never lands in a log line
    or an event (the call below fails, so it makes both)."""
    from structlog.testing import capture_logs

    upstream.fault("tools/call", "lookup", status=503)
    query = "token=SEC1qs%2Fx&foo=bar&e=%E2%82%AC&q=a=b?c"
    events: list[dict[str, Any]] = []
    async with running_proxy(proxy_config(upstream.url + "?key=abc", logging={"access_log": True})) as proxy:
        proxy.bus.listeners.append(events.append)
        url = URL(f"{mcp_url(proxy)}?{query}", encoded=True)  # sent as written
        with capture_logs() as logs:
            assert (await post(url, LIST))[0] == 200
            assert (await post(url, call_tool("lookup")))[0] == 503
            assert (await post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}))[0] == 202
            async with aiohttp.ClientSession() as session:
                for method in ("GET", "DELETE"):
                    async with session.request(method, url, headers=JSON_HEADERS) as response:
                        assert response.status == 405  # the upstream's own answer
        assert (await post(mcp_url(proxy), LIST))[0] == 200  # no query: the URL's alone
    assert upstream.targets == [
        ("POST", f"/mcp?key=abc&{query}"),
        ("POST", f"/mcp?key=abc&{query}"),
        ("POST", f"/mcp?key=abc&{query}"),
        ("GET", f"/mcp?key=abc&{query}"),
        ("DELETE", f"/mcp?key=abc&{query}"),
        ("POST", "/mcp?key=abc"),
    ]
    assert any(event["type"] == "call_failed" for event in events) and logs
    assert "SEC1qs" not in json.dumps(events) + json.dumps(logs, default=str)


async def test_a_client_cannot_override_a_parameter_of_the_upstream_urls_query(upstream: FaultUpstream) -> None:
    """Starlette reads the last of repeated parameters: ``?tenant=operator&key=opsecret`` in the config
    followed by a client's ``tenant=attacker&key=x`` made the server act for the attacker's tenant. A
    client's parameter the URL sets (its name compared decoded, ``+`` as a space) is dropped; the rest of
    its query passes as sent (hostile-client review item 4)."""
    async with running_proxy(proxy_config(upstream.url + "?tenant=operator&key=opsecret")) as proxy:
        for query in ("tenant=attacker&key=x&other=1", "%74enant=attacker&other=1&k%65y", "other=1&tenant"):
            assert (await post(URL(f"{mcp_url(proxy)}?{query}", encoded=True), LIST))[0] == 200
        assert (await post(URL(f"{mcp_url(proxy)}?ten+ant=1&tenant_=2&Key=3&tenant", encoded=True), LIST))[0] == 200
    assert upstream.targets == [("POST", "/mcp?tenant=operator&key=opsecret&other=1")] * 3 + [
        ("POST", "/mcp?tenant=operator&key=opsecret&ten+ant=1&tenant_=2&Key=3")
    ]


async def test_the_query_string_without_one_in_the_upstream_url(upstream: FaultUpstream) -> None:
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        assert (await post(f"{mcp_url(proxy)}?token=x&foo=bar", LIST))[0] == 200
        assert (await post(f"{mcp_url(proxy)}?", LIST))[0] == 200
    assert upstream.targets == [("POST", "/mcp?token=x&foo=bar"), ("POST", "/mcp")]


async def test_two_query_strings_are_two_cache_entries(upstream: FaultUpstream) -> None:
    """A query may name who is asking (``?token=``) or what (``?tenant=``): a stored answer never serves
    a call with another query, even under ``scope: shared``."""
    read = {"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {"uri": "demo://facts"}}
    for scope in ("private", "shared"):
        config = proxy_config(upstream.url, upstream={"cache": {"mode": "ttl", "ttl": "1m", "scope": scope}})
        async with running_proxy(config) as proxy:
            caches = []
            for query in ("token=a", "token=b", "token=a", ""):
                status, headers, _ = await post(f"{mcp_url(proxy)}?{query}", read)
                caches.append((status, headers.get("X-Mcp-Proxy-Cache")))
        assert caches == [(200, None), (200, None), (200, "hit"), (200, None)], scope


# --- the upstream's Server and Date ---------------------------------------------------------------------


class CannedUpstream:
    """A raw upstream on 127.0.0.1 that answers every request with `answer` (bytes exactly as given):
    aiohttp would add a Server header of its own, which is what the test must tell apart."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.url = ""
        self._server: asyncio.Server | None = None
        self._serving: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def __aenter__(self) -> CannedUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/mcp"
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._serving.values():
            writer.close()
        await asyncio.gather(*self._serving)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving[task] = writer
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0
                )
                await reader.readexactly(length)
                writer.write(self.answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def canned(content_type: bytes, body: bytes, server: bytes | None) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\n"
    if server is not None:
        head += b"Server: " + server + b"\r\n"
    if content_type == b"text/event-stream":
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.mark.parametrize("server", [b"upstream-server/1.0", None], ids=["its own", "none"])
@pytest.mark.parametrize("kind", ["json", "sse", "read", "relayed"])
async def test_the_upstreams_server_and_date_reach_the_client_unchanged(kind: str, server: bytes | None) -> None:
    """The client hears the upstream's own Server and Date headers (or no Server, if it sent none), never
    aiohttp's in their place, whether the answer was buffered, streamed, read whole, or relayed."""
    answer = b'{"jsonrpc":"2.0","id":9,"result":{}}'
    content_type = b"text/event-stream" if kind in ("sse", "read") else b"application/json"
    body = b"event: message\ndata: " + answer + b"\n\n" if content_type == b"text/event-stream" else answer
    message = {"json": call_tool("lookup"), "sse": call_tool("lookup"), "read": LIST, "relayed": {"jsonrpc": "2.0", "method": "x"}}
    async with CannedUpstream(canned(content_type, body, server)) as upstream:
        async with running_proxy(proxy_config(upstream.url)) as proxy:
            async with aiohttp.ClientSession() as session:
                async with session.post(mcp_url(proxy), json={**message[kind], "id": 9}, headers=JSON_HEADERS) as response:
                    assert response.status == 200
                    got = response.headers
                    await response.read()
    assert got.getall("Date") == ["Mon, 01 Jan 2001 00:00:00 GMT"]
    assert got.getall("Server", []) == ([] if server is None else [server.decode()])


async def test_the_proxys_own_answers_still_say_who_made_them(proxy: ProxyServer) -> None:
    status, headers, _ = await post(mcp_url(proxy), data=b"{not json")
    assert status == 400 and headers["Server"].startswith("Python/") and "Date" in headers
