"""`HttpUpstream` over the proxy's HTTP client: when a connection is reused, and which error a failure is."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from proxy.app import running_proxy
from proxy.config.model import LimitsConfig, UpstreamConfig
from proxy.errors import (
    AnswerTooLarge,
    NeverSent,
    ProxyError,
    ProxyOverloaded,
    StreamBroken,
    StreamEndedEarly,
    StreamSilent,
    UnsendableRequest,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.policies.failures import Failure, classify_error, verdict_of
from proxy.mcp.jsonrpc import Message, parse_message
from proxy.policies.fallback import _storable
from proxy.upstream.http11.client import (
    BadResponse,
    ConnectFailed,
    ConnectionBroken,
    InvalidHeader,
    LocalExhaustion,
    PoolExhausted,
    ResponseTooLarge,
)
from proxy.upstream.transport import (
    MAX_PARSED_CONTAINERS,
    PROBE_MAX_RESPONSE_BYTES,
    AnswerTo,
    HttpUpstream,
    upstream_errors,
)
from tests.conftest import proxy_config
from tests.fakes import first, make_call
from tests.fault_upstream import FaultUpstream
from tests.test_forwarding import JSON_HEADERS, call_tool, post, upstream_counts
from tests.test_http_client import SSE_HEAD, RawServer, Script, read_request, sse_chunk, until

LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
FINAL = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}'


@contextlib.asynccontextmanager
async def upstream_for(server: RawServer) -> AsyncIterator[HttpUpstream]:
    transport = HttpUpstream(UpstreamConfig.model_validate({"name": "up", "url": server.url}), LimitsConfig())
    await transport.start()
    try:
        yield transport
    finally:
        await transport.close()


async def test_a_buffered_sse_read_gives_its_connection_back_once_the_stream_ends() -> None:
    """SDK servers answer reads as SSE and close the stream right after the final event: the proxy
    must not reset that connection, but drain the stream's end and reuse it."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            await read_request(reader)
            writer.write(SSE_HEAD + sse_chunk(FINAL))
            await writer.drain()
            writer.write(b"0\r\n\r\n")

    async with RawServer(script) as server:
        async with upstream_for(server) as transport:
            for _ in range(3):
                reply = await transport.send(first(make_call(LIST)))
                assert (reply.stream, reply.message) == (None, json.loads(FINAL))
                await until(lambda: transport.pool.idle == 1)
    assert server.connections == 1


async def test_a_read_whose_stream_the_server_ends_cleanly_unanswered_is_not_a_broken_connection() -> None:
    """A server that ends a session (a client's DELETE) ends that session's open streams cleanly, with
    no response: the server's choice, not a transport failure that could open the breaker or pull
    /readyz. A stream cut mid-way (no terminating chunk) still is one."""
    progress = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"working"}}'

    async def ended(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + sse_chunk(progress) + b"0\r\n\r\n")
        await writer.drain()

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + sse_chunk(progress))
        await writer.drain()
        writer.close()

    async with RawServer(ended) as server, upstream_for(server) as transport:
        with pytest.raises(StreamEndedEarly) as caught:
            await transport.send(first(make_call(LIST)))
    verdict = classify_error(caught.value)
    assert (verdict.kind, verdict.server_failure, verdict.transport_failure) == (Failure.STREAM_ENDED, False, False)
    async with RawServer(cut) as server, upstream_for(server) as transport:
        with pytest.raises(UpstreamUnavailable) as caught:
            await transport.send(first(make_call(LIST)))
    assert not isinstance(caught.value, StreamEndedEarly) and classify_error(caught.value).transport_failure


async def test_a_standalone_request_whose_server_asks_the_client_something_fails_and_frees_its_connection() -> None:
    ask = b'{"jsonrpc":"2.0","id":"s1","method":"roots/list"}'

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + sse_chunk(ask))
        await reader.read()  # waits for an answer that a probe cannot give

    async with RawServer(script) as server:
        async with upstream_for(server) as transport:
            with pytest.raises(UpstreamProtocolError, match="asked the client a question"):
                await transport.request({"Content-Type": "application/json"}, LIST, 1, timeout=5.0)
            assert transport.pool.size == 0


async def test_a_pool_retired_by_a_reload_answers_never_sent() -> None:
    async with RawServer(lambda reader, writer: read_request(reader)) as server:
        transport = HttpUpstream(UpstreamConfig.model_validate({"name": "up", "url": server.url}), LimitsConfig())
        await transport.start()
        await transport.close()
        with pytest.raises(NeverSent, match="pool is closed"):
            await transport.send(first(make_call(LIST)))


async def test_a_try_that_times_out_waiting_for_a_pooled_connection_is_the_proxys_overload(upstream: FaultUpstream) -> None:
    """One connection, held by a slow `lookup`: a `create_ticket` whose per-try time runs out while it
    waits for that connection never reached the upstream, and the upstream did nothing wrong: it is
    the proxy's own overload (503 proxy_overloaded), counted against nothing and not retried."""
    upstream.fault("tools/call", "lookup", hang=True)
    config = proxy_config(
        upstream.url,
        upstream={
            "pool": {"max_connections": 1, "max_per_client": 2},
            "retry": {"max_attempts": 2, "backoff": {"base": "1ms", "max": "2ms"}},
            "breaker": {"failure_threshold": 1},
            "health": {"active": {"enabled": False}, "passive": {"consecutive_failures": 1}},
            "rules": [
                {"match": {"tool": "lookup"}, "timeouts": {"per_try": "30s", "total": "60s"}},
                {"match": {"tool": "create_ticket"}, "timeouts": {"per_try": "100ms", "total": "1s"}},
            ],
        },
    )
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        holder = asyncio.create_task(post(url, call_tool("lookup", 1)))
        await asyncio.wait_for(upstream.arrived.wait(), 5)
        status, headers, body = await post(url, call_tool("create_ticket", 2))
        holder.cancel()
        error = json.loads(body)
        assert status == 503 and headers["X-Mcp-Proxy-Error"] == "proxy_overloaded"
        assert (error["id"], error["error"]["code"], error["error"]["data"]["reason"]) == (2, -32058, "proxy_overloaded")
        assert error["error"]["message"] == "no free upstream connection within 0.1s; the request was not sent"
        assert upstream.attempts["tools/call:create_ticket"] == 0
        assert not [e for e in proxy.bus.recent() if e["type"] == "retry"]
        state = proxy.runtime.current.states["up"]
        assert [b.state for b in state.breaker.breakers] == ["closed"] and state.health.state != "unhealthy"


def test_a_host_name_that_is_not_a_dns_name_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="host name is not a valid DNS name"):
        UpstreamConfig.model_validate({"name": "up", "url": f"http://{'a' * 64}.example/mcp"})


async def test_the_upstreams_status_line_reaches_the_client_with_its_own_reason_phrase() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 418 Short And Stout\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nno")
        await writer.drain()

    async with RawServer(script) as server, running_proxy(proxy_config(server.url)) as proxy:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/mcp", json=call_tool("create_ticket"), headers=JSON_HEADERS) as response:
                assert (response.status, response.reason, await response.read()) == (418, "Short And Stout", b"no")


# -- issue 10: a JSON answer must be the request's own ------------------------------------------------


def json_answer(body: bytes, status: str = "200 OK") -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status.encode(), len(body), body
    )


def serving(*answers: bytes) -> Script:
    """Answer the requests of each connection with `answers` in turn (a list shared by all connections)."""
    queue = list(answers)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while queue:
            await read_request(reader)
            writer.write(queue.pop(0))
            await writer.drain()
        await reader.read()

    return script


async def test_a_json_answer_with_another_requests_id_is_a_bad_response_and_its_connection_is_closed() -> None:
    stray = json_answer(b'{"jsonrpc":"2.0","id":99,"result":{"tools":[{"name":"secret"}]}}')
    async with RawServer(serving(stray, json_answer(FINAL))) as server, upstream_for(server) as transport:
        with pytest.raises(UpstreamProtocolError, match="another request's id") as caught:
            await transport.send(first(make_call(LIST)))
        verdict = classify_error(caught.value)
        assert (caught.value.reason, verdict.kind, verdict.transport_failure) == (
            "upstream_bad_response", Failure.BAD_RESPONSE, True
        )
        assert transport.pool.size == 0
        reply = await transport.send(first(make_call(LIST)))
        assert reply.message == json.loads(FINAL)
    assert server.connections == 2


async def test_a_standalone_request_checks_the_answers_id_too() -> None:
    stray = json_answer(b'{"jsonrpc":"2.0","id":2,"result":{}}')
    async with RawServer(serving(stray)) as server, upstream_for(server) as transport:
        with pytest.raises(UpstreamProtocolError, match="another request's id"):
            await transport.request({"Content-Type": "application/json"}, LIST, 1, timeout=5.0)
        assert transport.pool.size == 0


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        (b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}', "200 OK"),
        (b'{"jsonrpc":"2.0","error":{"code":-32600,"message":"Invalid Request"}}', "200 OK"),
        (b'{"jsonrpc":"2.0","id":"server-error","error":{"code":-32600,"message":"Missing session"}}', "400 Bad Request"),
        (b'{"error":"invalid_token","error_description":"expired"}', "401 Unauthorized"),
        (b'{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}', "200 OK"),
    ],
)
async def test_answers_that_are_no_other_requests_are_delivered_and_the_connection_kept(answer: bytes, status: str) -> None:
    """An unattributed error (id null or none), the HTTP layer's refusal whatever id the server wrote,
    non-JSON-RPC JSON: none of them belongs to another client. (A non-2xx answer's connection is not
    reused for another reason: the server may not have read the body, `proxy.upstream.http11.connection`.)"""
    async with RawServer(serving(json_answer(answer, status), json_answer(FINAL))) as server, upstream_for(server) as transport:
        reply = await transport.send(first(make_call(LIST)))
        assert reply.body == answer
        if status.startswith("2"):
            await until(lambda: transport.pool.idle == 1)
        await transport.send(first(make_call(LIST)))
    assert server.connections == (1 if status.startswith("2") else 2)


BATCH = parse_message(
    b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":"b","method":"ping"},'
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}]'
)


@pytest.mark.parametrize(
    ("message", "answer", "stray"),
    [
        (BATCH, [{"jsonrpc": "2.0", "id": 1, "result": {}}, {"jsonrpc": "2.0", "id": "b", "result": {}}], False),
        (BATCH, [{"jsonrpc": "2.0", "id": 1, "result": {}}, {"jsonrpc": "2.0", "id": 3, "result": {}}], True),
        (BATCH, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "no batches"}}, False),
        (parse_message(LIST), [{"jsonrpc": "2.0", "id": 1, "result": {}}], True),
        (parse_message(LIST), {"jsonrpc": "2.0", "id": "2", "result": {}}, True),  # "1" would be 1 (the SDKs correlate so)
        (parse_message(LIST), {"jsonrpc": "2.0", "id": True, "result": {}}, True),
        (parse_message(LIST), {"jsonrpc": "2.0", "id": None, "result": {}}, True),
        (parse_message(LIST), {"jsonrpc": "2.0", "id": 7, "error": {"code": -32603, "message": "x"}}, True),
        (parse_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}'), {"jsonrpc": "2.0", "id": 1, "result": {}}, True),
        (parse_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}'), {"ok": True}, False),
    ],
)
def test_which_answers_are_strays(message: Message, answer: Any, stray: bool) -> None:
    assert AnswerTo.of(message).stray(answer, 200) is stray


@pytest.mark.parametrize(
    ("answer", "stray"),
    [
        ({"jsonrpc": "2.0", "id": 1.0, "result": {}}, False),  # Python's json echoes 1e0 or 1.0 so
        ({"jsonrpc": "2.0", "id": 2, "result": {}}, True),
        ({"jsonrpc": "2.0", "id": 1.5, "result": {}}, True),
        ([{"jsonrpc": "2.0", "id": 1.0, "result": {}}, {"jsonrpc": "2.0", "id": "b", "result": {}}], False),
    ],
)
def test_a_number_id_answers_when_equal_as_a_double(answer: Any, stray: bool) -> None:
    message = parse_message(b'{"jsonrpc":"2.0","id":1e0,"method":"ping"}') if isinstance(answer, dict) else BATCH
    assert AnswerTo.of(message).stray(answer, 200) is stray
    big = parse_message(b'{"jsonrpc":"2.0","id":9007199254740993,"method":"ping"}')
    assert not AnswerTo.of(big).stray({"jsonrpc": "2.0", "id": 9007199254740992, "result": {}}, 200)  # JSON.parse's
    assert AnswerTo.of(big).stray({"jsonrpc": "2.0", "id": 9007199254740994, "result": {}}, 200)


ECHOED_IDS = [  # (the id as the client writes it, as the server echoes it, a JavaScript server)
    (b"1.0", b"1.0", False),
    (b"1e0", b"1.0", False),
    (b"-0.0", b"-0.0", False),
    (b"1e2", b"100.0", False),
    (b"9007199254740993", b"9007199254740992", True),  # JSON.parse rounds it to the nearest double
]


@pytest.mark.parametrize("answer", ["json", "streamed SSE", "buffered SSE"])
@pytest.mark.parametrize(("written", "echoed", "javascript"), ECHOED_IDS, ids=[w.decode() for w, _, _ in ECHOED_IDS])
async def test_an_id_the_server_echoes_in_another_number_form_is_the_answer_to_its_request(
    upstream: FaultUpstream, answer: str, written: bytes, echoed: bytes, javascript: bool
) -> None:
    """The server echoes the id as it read it: ``1.0`` for ``1e0``, a JavaScript server the double nearest
    2^53+1. That is the request's answer, delivered as the server wrote it, and nothing counts against the
    upstream (adversarial review: these were strays, 502 upstream_bad_response, and five opened the breaker)."""
    upstream.javascript_ids = javascript
    streamed = answer == "streamed SSE"
    method, params = ("tools/call", b',"params":{"name":"lookup","arguments":{}}') if streamed else ("tools/list", b"")
    if answer != "json":
        upstream.fault(method, sse=True)
    raw = b'{"jsonrpc":"2.0","id":' + written + b',"method":"' + method.encode() + b'"' + params + b"}"
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        status, headers, body = await post(proxy.url + "/mcp", data=raw)
        assert (status, headers.get("X-Mcp-Proxy-Error")) == (200, None)
        final = body.rsplit(b"data: ", 1)[-1] if answer != "json" else body
        assert final.startswith(b'{"jsonrpc": "2.0", "id": ' + echoed + b', "result": {')
        assert b'"error"' not in body
        assert sum(upstream.attempts.values()) == 1
        assert upstream_counts(proxy) == ("closed", 0, "healthy", 0)


async def test_five_calls_whose_ids_come_back_in_another_number_form_leave_the_upstream_ready(
    upstream: FaultUpstream,
) -> None:
    """One client's ids written ``1.0`` must not open the breaker or fail /readyz for everyone (five
    consecutive failures do both by default)."""
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        for _ in range(5):
            status, _, body = await post(proxy.url + "/mcp", data=b'{"jsonrpc":"2.0","id":1.0,"method":"tools/list"}')
            assert (status, json.loads(body)["id"]) == (200, 1.0)
        assert upstream_counts(proxy) == ("closed", 0, "healthy", 0)
        async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + "/readyz") as response:
            assert response.status == 200
    assert upstream.attempts["tools/list"] == 5


async def test_the_url_credentials_are_not_lent_when_the_caller_says_the_client_had_its_own() -> None:
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(json_answer(FINAL))

    async with RawServer(script) as server:
        config = UpstreamConfig.model_validate({"name": "up", "url": f"http://bot:pw@127.0.0.1:{server.port}/mcp"})
        transport = HttpUpstream(config, LimitsConfig())
        await transport.start()
        try:
            await transport.exchange("POST", {}, LIST, 5.0, None, lend_credentials=False)
            await transport.exchange("POST", {}, LIST, 5.0, None)
        finally:
            await transport.close()
    assert [b"Authorization: Basic" in request for request in seen] == [False, True]


async def test_a_large_request_to_an_upstream_that_never_reads_ends_by_its_timeout_and_closes_the_connection() -> None:
    """The request is written as the upstream takes it (flow control), so a 4 MiB body to an upstream that
    never reads waits, bounded, inside the try's time; the timeout then closes the connection."""
    accepted = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await asyncio.Event().wait()

    async with RawServer(never_reads) as server, upstream_for(server) as transport:
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":"' + b"x" * (4 << 20) + b'"}}}'
        with pytest.raises(UpstreamTimeout):
            await transport.exchange("POST", {}, body, 0.2, None, answer_to=AnswerTo(frozenset((1,))))
        assert accepted.is_set() and transport.pool.size == 0


# -- issue 10, second review: what is parsed, and how much a probe reads --------------------------------------


def with_containers(count: int) -> bytes:
    """A JSON-RPC answer to id 1 holding exactly `count` objects and arrays (`count` >= 4)."""
    return b'{"jsonrpc":"2.0","id":1,"result":{"tools":[],"x":[' + b"{}," * (count - 5) + b"{}]}}"


async def test_an_answer_with_more_containers_than_the_bound_is_delivered_opaque_and_never_cached() -> None:
    """Parsing 60 MB of ``{},{},...`` takes gigabytes and seconds; above MAX_PARSED_CONTAINERS the answer is
    passed on as the bytes it is, judged by its HTTP status alone, and nothing can store it."""
    at, over = with_containers(MAX_PARSED_CONTAINERS), with_containers(MAX_PARSED_CONTAINERS + 1)
    assert at.count(b"{") + at.count(b"[") == MAX_PARSED_CONTAINERS
    async with RawServer(serving(json_answer(at), json_answer(over))) as server, upstream_for(server) as transport:
        parsed = await transport.send(first(make_call(LIST)))
        assert isinstance(parsed.message, dict) and parsed.message["id"] == 1
        opaque = await transport.send(first(make_call(LIST)))
        assert (opaque.status, opaque.body, opaque.message, opaque.stream) == (200, over, None, None)
        assert verdict_of(opaque, had_session=False).ok
        assert _storable(opaque, verdict_of(opaque, had_session=False)) is None
        assert server.connections == 1


async def test_a_buffered_sse_read_with_an_event_over_the_container_bound_is_handed_on_unparsed() -> None:
    event = b"data: " + with_containers(MAX_PARSED_CONTAINERS + 1) + b"\n\n"
    stream = SSE_HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)
    async with RawServer(serving(stream)) as server, upstream_for(server) as transport:
        reply = await transport.send(first(make_call(LIST)))
        assert reply.stream is not None and reply.message is None
        received = b"".join([chunk async for chunk in reply.stream])
        assert received == event


@pytest.mark.parametrize("form", ["json", "sse", "chunked"])
async def test_a_probe_reads_at_most_its_own_small_bound(form: str) -> None:
    """A probe parses what it reads with no client waiting and no timeout able to interrupt the parse:
    a ping, server/discover or initialize answer is small, and one over PROBE_MAX_RESPONSE_BYTES fails."""
    body = b'{"jsonrpc":"2.0","id":1,"result":{"pad":"' + b"x" * PROBE_MAX_RESPONSE_BYTES + b'"}}'
    if form == "json":
        answer = json_answer(body)
    else:
        data = b"data: " + body + b"\n\n" if form == "sse" else body
        head = SSE_HEAD if form == "sse" else SSE_HEAD.replace(b"text/event-stream", b"application/json")
        answer = head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    async with RawServer(serving(answer, answer)) as server, upstream_for(server) as transport:
        with pytest.raises(UpstreamProtocolError, match="health probe's answer.* exceeds"):
            await transport.request({"Content-Type": "application/json"}, LIST, 1, timeout=5.0)
        reply = await transport.send(first(make_call(LIST)))  # a client's call may have as much as limits allow
        assert reply.status == 200 and len(reply.body) > PROBE_MAX_RESPONSE_BYTES


@pytest.mark.parametrize(
    ("raised", "streaming", "expected", "message"),
    [
        (PoolExhausted("no free connection"), False, ProxyOverloaded,
         "the proxy is out of resources: no free connection; the request was not sent"),
        (LocalExhaustion("EMFILE"), False, ProxyOverloaded,
         "the proxy is out of resources: EMFILE; the request was not sent"),
        (ConnectFailed("refused"), False, NeverSent, "cannot connect to upstream: refused"),
        (TimeoutError(), False, UpstreamTimeout, "upstream did not answer within 2.5s"),
        (ResponseTooLarge("big"), False, AnswerTooLarge, "too large"),
        (BadResponse("not HTTP"), False, UpstreamProtocolError, "upstream answer is not valid HTTP: not HTTP"),
        (InvalidHeader("a line break"), False, UnsendableRequest, "request not sent: a line break"),
        (ConnectionBroken("reset"), False, UpstreamUnavailable, "upstream connection failed: ConnectionBroken: reset"),
        (ConnectionResetError(), False, UpstreamUnavailable, "upstream connection failed: ConnectionResetError"),
        (TimeoutError(), True, StreamSilent, "upstream stream silent for more than 2.5s"),
        (ConnectionBroken("reset"), True, StreamBroken, "upstream stream broke: ConnectionBroken: reset"),
        (BadResponse("bad chunk"), True, StreamBroken, "upstream stream broke: BadResponse: bad chunk"),
        (OSError("EPIPE"), True, StreamBroken, "upstream stream broke: OSError: EPIPE"),
    ],
)
def test_the_boundary_raises_the_proxys_error_from_the_clients(
    raised: BaseException, streaming: bool, expected: type[ProxyError], message: str
) -> None:
    """One place maps the HTTP client's exceptions (and asyncio's timeout, and the OS's): the most specific
    of ours, raised from the original, so a traceback still shows what the socket said."""
    with pytest.raises(expected) as caught:
        with upstream_errors("up", 2.5, streaming=streaming, too_large=lambda: AnswerTooLarge("too large", upstream="up")):
            raise raised
    assert type(caught.value) is expected
    assert (caught.value.message, caught.value.upstream) == (message, "up")
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize("raised", [UpstreamTimeout("ours"), asyncio.CancelledError(), KeyError("a bug")])
def test_the_boundary_lets_the_proxys_own_errors_cancellation_and_bugs_through_and_abandons_the_answer(
    raised: BaseException,
) -> None:
    closed: list[bool] = []

    class Answer:
        def close(self) -> None:
            closed.append(True)

    with pytest.raises(type(raised)) as caught:
        with upstream_errors("up", None) as boundary:
            boundary.response = Answer()  # type: ignore[assignment]
            raise raised
    assert caught.value is raised and closed == [True]


PROGRESS = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}'
LOG = b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"working"}}'


def event_of(data: bytes) -> bytes:
    """The SSE event `sse_chunk` frames (what the client reads of it)."""
    return b"event: message\ndata: " + data + b"\n\n"


async def test_a_stream_silent_past_its_idle_limit_breaks_and_one_with_a_longer_limit_lives_on() -> None:
    """One timer keeps every stream's silence limit (`stream_idle`): a stream whose limit is shorter than
    one already waiting still breaks at its own, with its connection closed."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + sse_chunk(PROGRESS))
        await reader.read()  # then silence

    async with RawServer(script) as server, upstream_for(server) as transport:
        headers = {"Content-Type": "application/json"}
        long_wait = await transport.exchange("POST", headers, LIST, None, 3600.0)
        short_wait = await transport.exchange("POST", headers, LIST, None, 0.05)
        assert long_wait.stream is not None and short_wait.stream is not None
        long_chunks = aiter(long_wait.stream)
        assert await anext(long_chunks) == event_of(PROGRESS)
        waiting = asyncio.ensure_future(anext(long_chunks))  # waits, with an hour to go
        chunks = aiter(short_wait.stream)
        assert await anext(chunks) == event_of(PROGRESS)
        with pytest.raises(StreamSilent, match="silent for more than 0.05s") as caught:
            await anext(chunks)
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert not waiting.done()
        assert transport.pool.size == 1  # the silent one's connection is closed; the other still waits
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await long_wait.stream.close()


async def test_time_spent_not_reading_is_not_silence() -> None:
    """Only the wait for the upstream counts: a reader busy elsewhere (a slow client) for longer than the
    limit finds the next chunk waiting, not a broken stream."""
    sent = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + sse_chunk(PROGRESS))
        await writer.drain()
        writer.write(sse_chunk(FINAL) + b"0\r\n\r\n")
        await writer.drain()
        sent.set()
        await reader.read()

    async with RawServer(script) as server, upstream_for(server) as transport:
        reply = await transport.exchange("POST", {"Content-Type": "application/json"}, LIST, None, 0.05)
        assert reply.stream is not None
        chunks = [chunk async for chunk in _slowly(reply.stream, sent)]
    assert b"".join(chunks) == event_of(PROGRESS) + event_of(FINAL)


async def _slowly(stream: AsyncIterator[bytes], sent: asyncio.Event) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk
        await sent.wait()
        await asyncio.sleep(0.2)  # four times the limit, not reading


async def test_a_buffered_reads_final_response_cut_after_its_cr_keeps_the_lf_that_follows() -> None:
    """The streaming path's rule for a final response whose last CRLF is cut after the CR holds for a read
    being buffered: the LF that comes next is part of the answer (the client gets the server's bytes,
    not a bare CR), and what follows it is not."""
    event = b"event: message\r\ndata: " + FINAL + b"\r\n\r"
    gate = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
        await gate.wait()
        writer.write(b"5\r\n\ndata\r\n0\r\n\r\n")  # the LF, then something the answer does not carry

    async with RawServer(script) as server, upstream_for(server) as transport:
        sending = asyncio.ensure_future(transport.send(first(make_call(LIST))))
        # until the read has the event and waits for more (or, wrongly, has answered without the LF)
        await until(lambda: sending.done() or any(c._waiter is not None and c.conn.received >= len(event) for c in transport.pool._open))
        gate.set()
        reply = await sending
        assert reply.body == event + b"\n"
        assert reply.message == json.loads(FINAL)
        await until(lambda: transport.pool.idle == 1)  # the stream's end was drained: the connection is kept


async def test_a_buffered_reads_final_response_that_ends_the_stream_with_a_bare_cr_is_complete() -> None:
    event = b"data: " + FINAL + b"\r\r"

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))

    async with RawServer(script) as server, upstream_for(server) as transport:
        reply = await transport.send(first(make_call(LIST)))
    assert (reply.body, reply.message) == (event, json.loads(FINAL))


async def test_a_buffered_read_silent_past_stream_idle_is_an_excused_timeout() -> None:
    """Silence is no evidence against the upstream (the failure table): the read can be retried as a
    timeout, and counts against neither the breaker nor passive health."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + sse_chunk(LOG))  # a log line (a progress notification hands the read on)
        await reader.read()  # then silence

    async with RawServer(script) as server, upstream_for(server) as transport:
        config = UpstreamConfig.model_validate({"name": "up", "url": server.url, "timeouts": {"stream_idle": "0.05s"}})
        call = make_call(LIST, upstream=config)
        with pytest.raises(UpstreamTimeout) as caught:
            await transport.send(first(call))
    verdict = classify_error(caught.value)
    assert (verdict.kind, verdict.retry_key, verdict.server_failure, verdict.transport_failure) == (Failure.TIMEOUT, "timeout", False, False)
