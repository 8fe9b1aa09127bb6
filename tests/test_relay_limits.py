"""Messages relayed outside the pipeline (notifications, client responses, batches, GET, DELETE) never
skip the rate limit, and who is calling is read from the headers the upstream receives."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from proxy.app import running_proxy
from tests.conftest import proxy_config
from tests.fault_upstream import FaultUpstream

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
ONE_TOKEN = {"rate_limit": {"rate": 1, "per": "1h", "burst": 1}}
NOTIFICATION = {"jsonrpc": "2.0", "method": "notifications/initialized"}
RESPONSE = {"jsonrpc": "2.0", "id": "server-1", "result": {}}
NOTIFICATION_OTHER = {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}
CANCELLED = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}


async def send(session: aiohttp.ClientSession, method: str, url: str, payload: Any = None, **headers: str) -> tuple[int, Any]:
    data = json.dumps(payload).encode() if payload is not None else None
    async with session.request(method, url, data=data, headers={**JSON_HEADERS, **headers}) as response:
        body = await response.read()
        return response.status, (json.loads(body) if response.content_type == "application/json" and body else body)


@pytest.mark.parametrize(
    ("method", "payload", "first"),
    [("POST", NOTIFICATION_OTHER, 202), ("GET", None, 405)],
    ids=["notification", "GET"],
)
async def test_a_message_relayed_outside_the_pipeline_spends_a_token(
    upstream: FaultUpstream, method: str, payload: Any, first: int
) -> None:
    """The first passes (the upstream's own answer: 202; 405 from this upstream for GET/DELETE, 500 for a
    response it does not expect); the second finds the bucket empty: 429 with the JSON-RPC error, and
    the upstream never hears it."""
    async with running_proxy(proxy_config(upstream.url, upstream=ONE_TOKEN)) as proxy, aiohttp.ClientSession() as session:
        url = proxy.url + "/mcp"
        assert (await send(session, method, url, payload))[0] == first
        status, error = await send(session, method, url, payload)
    assert status == 429
    assert error["id"] is None and error["error"]["data"]["reason"] == "rate_limited"
    if method == "POST":
        assert upstream.attempts.total() == 1


@pytest.mark.parametrize(
    ("method", "payload", "status"),
    [("POST", RESPONSE, 202), ("POST", CANCELLED, 202), ("POST", NOTIFICATION, 202), ("DELETE", None, 405)],
    ids=["client response", "cancellation", "initialized", "DELETE"],
)
async def test_what_answers_or_ends_the_servers_work_is_counted_but_never_refused(
    upstream: FaultUpstream, method: str, payload: Any, status: int
) -> None:
    """A refused answer to the server's own request (sampling, elicitation) hangs the server's tool call with
    no error anyone can see; a refused cancellation or DELETE leaves work or a session behind. They pass
    with the bucket empty, and still take a token when one is free: the client's next request pays."""
    async with running_proxy(proxy_config(upstream.url, upstream=ONE_TOKEN)) as proxy, aiohttp.ClientSession() as session:
        url = proxy.url + "/mcp"
        assert (await send(session, method, url, payload))[0] == status  # takes the only token
        assert (await send(session, method, url, payload))[0] == status  # none left: passes anyway
        refused, error = await send(session, "POST", url, {"jsonrpc": "2.0", "id": 4, "method": "ping"})
    assert refused == 429 and error["error"]["data"]["reason"] == "rate_limited"


async def test_a_notification_and_a_request_share_the_clients_bucket(upstream: FaultUpstream) -> None:
    async with running_proxy(proxy_config(upstream.url, upstream=ONE_TOKEN)) as proxy, aiohttp.ClientSession() as session:
        url = proxy.url + "/mcp"
        assert (await send(session, "POST", url, NOTIFICATION))[0] == 202
        status, error = await send(session, "POST", url, {"jsonrpc": "2.0", "id": 4, "method": "ping"})
    assert status == 429 and error["id"] == 4 and error["error"]["data"]["reason"] == "rate_limited"


async def test_a_client_header_the_proxy_drops_names_no_one(upstream: FaultUpstream) -> None:
    """`Connection: X-Client-Id` removes the identity header before the upstream: two clients claiming
    two identities that way are both just the peer address, and share its one token."""
    config = proxy_config(upstream.url, upstream={"rate_limit": {**ONE_TOKEN["rate_limit"], "key": "client"}},
                          client_identity={"header": "X-Client-Id"})  # fmt: skip
    async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
        url = proxy.url + "/mcp"
        first = await send(session, "POST", url, NOTIFICATION_OTHER, **{"X-Client-Id": "alice", "Connection": "X-Client-Id"})
        second = await send(session, "POST", url, NOTIFICATION_OTHER, **{"X-Client-Id": "bob", "Connection": "X-Client-Id"})
        named = await send(session, "POST", url, NOTIFICATION_OTHER, **{"X-Client-Id": "carol"})
    assert (first[0], second[0], named[0]) == (202, 429, 202)


async def test_every_entry_of_a_batch_spends_a_token_and_none_is_parsed_again(
    upstream: FaultUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of a request and two notifications costs three tokens, with the body parsed once and no
    entry classified on its own."""
    parsed: list[bytes] = []
    import proxy.server.handler as handler

    real_parse = handler.parse_message
    monkeypatch.setattr(handler, "parse_message", lambda raw, *bounds: parsed.append(raw) or real_parse(raw, *bounds))
    monkeypatch.setattr(handler, "classify", None)  # a batch must not need it
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, NOTIFICATION, NOTIFICATION]
    config = proxy_config(upstream.url, upstream={"rate_limit": {"rate": 4, "per": "1h", "burst": 4}})
    async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
        url = proxy.url + "/mcp"
        old = {"MCP-Protocol-Version": "2025-03-26"}
        assert (await send(session, "POST", url, batch, **old))[0] == 200  # three tokens of four
        status, error = await send(session, "POST", url, batch[:2], **old)  # two more: refused at the second
    assert status == 429 and error["error"]["data"]["reason"] == "rate_limited"
    assert len(parsed) == 2  # each body once
    assert upstream.attempts["ping"] == 1


async def test_a_relayed_message_whose_authorization_was_dropped_never_gets_the_urls(upstream: FaultUpstream) -> None:
    """`Connection: Authorization` removes the client's credential; the URL's user and password must not
    be sent in its place (a client without any Authorization gets them, as configured)."""
    url = upstream.url.replace("http://", "http://proxyuser:proxypass@")
    async with running_proxy(proxy_config(url)) as proxy, aiohttp.ClientSession() as session:
        mcp = proxy.url + "/mcp"
        await send(session, "POST", mcp, NOTIFICATION, Authorization="Bearer mine", Connection="Authorization")
        await send(session, "POST", mcp, NOTIFICATION)
    assert [r.headers.get("Authorization") for r in upstream.received] == [None, "Basic cHJveHl1c2VyOnByb3h5cGFzcw=="]


async def test_a_request_whose_authorization_was_dropped_never_gets_the_urls(upstream: FaultUpstream) -> None:
    url = upstream.url.replace("http://", "http://proxyuser:proxypass@")
    async with running_proxy(proxy_config(url)) as proxy, aiohttp.ClientSession() as session:
        ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "lookup", "arguments": {}}}
        await send(session, "POST", proxy.url + "/mcp", ping, Authorization="Bearer mine", Connection="Authorization")
    assert [r.headers.get("Authorization") for r in upstream.received] == [None]


async def test_a_relayed_batchs_answer_with_another_requests_id_is_a_bad_response() -> None:
    """A batch is relayed outside the pipeline, but its JSON answer is still checked to be its own: an
    answer carrying an id the batch never sent is someone else's, and never reaches this client."""
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response([{"jsonrpc": "2.0", "id": 99, "result": {"someone": "else"}}])

    app = web.Application()
    app.router.add_post("/mcp", answer)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("/mcp"))
        async with running_proxy(proxy_config(url)) as proxy, aiohttp.ClientSession() as session:
            batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}]
            status, error = await send(session, "POST", proxy.url + "/mcp", batch, **{"MCP-Protocol-Version": "2025-03-26"})
    assert status == 502
    assert error["error"]["data"]["reason"] == "upstream_bad_response" and b"someone" not in json.dumps(error).encode()
