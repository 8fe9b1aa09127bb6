"""The cache never leaks across clients (issue 10, items 1-3).

A follower of a single flight gets only what a cache hit would give it; a private entry is keyed by
every credential-bearing header the upstream actually received; answers that say they are personal
(`Set-Cookie`, `Cache-Control: private/no-store`) are neither stored nor shared; keys are exact.

Calls are classified as the handler does: `forward_headers` is the filtered set (`upstream_headers`),
so a header named in `Connection` is not forwarded and does not count.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from proxy.server.classify import CallRoute, ClientRequest, classify
from proxy.config.model import UpstreamConfig
from proxy.errors import UpstreamUnavailable
from proxy.mcp.headers import upstream_headers
from proxy.mcp.jsonrpc import parse_message
from proxy.policies.base import Call, Reply
from proxy.policies.fallback import CACHE_HEADER, CacheStage
from proxy.config.resolve import PolicyResolver
from tests.fakes import echo, settle, FakeClock, FakeUpstream, reply_result, reply_status, upstream_config

TOOLS = {"tools": [{"name": "search"}]}


def classified(
    body: bytes, cfg: UpstreamConfig, headers: dict[str, str] | None = None, identity_header: str | None = None
) -> Call:
    """`body` with `headers` classified as the handler does it: identity from what is forwarded."""
    raw = CIMultiDict(headers or {})
    request = ClientRequest(parse_message(body), body, raw, upstream_headers(raw.items()), "127.0.0.1", None, 0.0)
    return classify(request, CallRoute("up", PolicyResolver(cfg), identity_header=identity_header))


def tools_list(request_id: int | str = 1, headers: dict[str, str] | None = None, **cache: Any) -> Call:
    body = orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/list"})
    return classified(body, upstream_config(cache=cache), headers)


def answer(result: dict[str, Any], **headers: str) -> Reply:
    """A JSON-RPC success carrying `result`, with extra response headers."""
    reply = reply_result(result)
    reply.headers.extend(headers)
    return reply




async def leader_and_follower(stage: CacheStage, leader: Call, follower: Call, upstream: FakeUpstream) -> tuple[Reply, Reply]:
    """Run `leader`, then `follower` while the leader's upstream call is held; both answers."""
    upstream.gate = asyncio.Event()
    first = asyncio.create_task(stage(leader, echo(upstream)))
    await settle()
    second = asyncio.create_task(stage(follower, echo(upstream)))
    await settle()
    upstream.gate.set()
    return await first, await second


def body_of(reply: Reply) -> Any:
    assert reply.body is not None
    return orjson.loads(reply.body)


# --- 1. single flight: a follower gets what a hit would give it, never across credentials -------------


async def test_a_follower_gets_a_new_json_answer_with_its_own_id_and_only_content_type() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(answer(TOOLS, **{"X-User": "alice", "Mcp-Session-Id": "s-1", "X-RateLimit-Remaining": "41"}))
    lead, follow = await leader_and_follower(stage, tools_list(1), tools_list(2), upstream)
    assert upstream.attempts == 1
    assert lead.headers["X-User"] == "alice"  # the leader's own answer is untouched
    assert dict(follow.headers) == {"Content-Type": "application/json"}
    assert (follow.status, body_of(follow), follow.message) == (200, follow.message, {"jsonrpc": "2.0", "id": 2, "result": TOOLS})


async def test_a_follower_never_receives_the_leaders_set_cookie() -> None:
    """An answer that sets a cookie is someone's own: the follower makes its own upstream call."""
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(answer(TOOLS, **{"Set-Cookie": "sid=leader-secret"}), answer(TOOLS, **{"Set-Cookie": "sid=follower"}))
    lead, follow = await leader_and_follower(stage, tools_list(1), tools_list(2), upstream)
    assert upstream.attempts == 2
    assert lead.headers.getall("Set-Cookie") == ["sid=leader-secret"]
    assert follow.headers.getall("Set-Cookie") == ["sid=follower"]
    assert body_of(follow)["id"] == 2


@pytest.mark.parametrize(
    "leaders",
    [
        answer({"content": [], "isError": True}),
        answer(TOOLS, **{"Cache-Control": "no-store"}),
        answer(TOOLS, **{"Cache-Control": "max-age=0, Private"}),
        reply_status(503, b"upstream says no", **{"X-User": "alice"}),
    ],
    ids=["isError", "no-store", "private", "http_503"],
)
async def test_a_follower_of_an_answer_that_cannot_be_stored_makes_its_own_call(leaders: Reply) -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(leaders, reply_result({"tools": []}))
    _, follow = await leader_and_follower(stage, tools_list(1), tools_list(2), upstream)
    assert upstream.attempts == 2
    assert follow.message == {"jsonrpc": "2.0", "id": 2, "result": {"tools": []}}
    assert "X-User" not in follow.headers


async def test_under_scope_shared_a_flight_never_spans_two_credentials() -> None:
    """`shared` lets stored answers cross users; a call in flight was made with one user's credentials."""
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result({"tools": [{"name": "alices_private_tool"}]}), reply_result({"tools": []}))
    alice = tools_list(1, {"Authorization": "Bearer alice"}, scope="shared")
    bob = tools_list(2, {"Authorization": "Bearer bob"}, scope="shared")
    _, bobs = await leader_and_follower(stage, alice, bob, upstream)
    assert upstream.attempts == 2
    assert bobs.message == {"jsonrpc": "2.0", "id": 2, "result": {"tools": []}}


@pytest.mark.parametrize(
    "header", ["X-Api-Key", "Cookie", "Mcp-Session-Id", "X-Tenant", "Forwarded"]
)
async def test_a_flight_never_spans_two_values_of_a_credential_bearing_header(header: str) -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result({"tools": [{"name": "a"}]}), reply_result({"tools": [{"name": "b"}]}))
    _, follow = await leader_and_follower(
        stage, tools_list(1, {header: "a"}, scope="shared"), tools_list(2, {header: "b"}, scope="shared"), upstream
    )
    assert upstream.attempts == 2 and follow.message["result"] == {"tools": [{"name": "b"}]}


# --- 2. private entries: per the whole set of forwarded credential-bearing headers ----------------------


@pytest.mark.parametrize("header", ["X-Api-Key", "Cookie", "X-Client-Id", "Mcp-Session-Id", "X-Tenant"])
async def test_private_entries_are_separate_per_credential_bearing_header(header: str) -> None:
    clock = FakeClock()
    stage = CacheStage(clock)
    upstream = FakeUpstream(reply_result(TOOLS), reply_result({"tools": []}), UpstreamUnavailable("down"))
    cfg = upstream_config(cache={"mode": "ttl"})
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})

    def as_(who: str) -> Call:
        return classified(body, cfg, {header: who}, identity_header="X-Client-Id")

    await stage(as_("alice"), upstream)
    bob = await stage(as_("bob"), upstream)
    assert bob.extra == {} and bob.message["result"] == {"tools": []} and upstream.attempts == 2
    assert (await stage(as_("alice"), upstream)).extra == {CACHE_HEADER: "hit"}
    with pytest.raises(UpstreamUnavailable):  # without the header: neither's answer
        await stage(classified(body, cfg, {}, identity_header="X-Client-Id"), upstream)


async def test_headers_that_vary_per_request_and_carry_no_identity_do_not_split_entries() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result(TOOLS))
    base = {"Authorization": "Bearer alice", "Accept": "application/json, text/event-stream"}
    first = {**base, "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "Mcp-Method": "tools/list"}
    second = {**base, "traceparent": "00-" + "3" * 32 + "-" + "4" * 16 + "-01", "tracestate": "x=1", "Last-Event-ID": "9"}
    await stage(tools_list(1, first, mode="ttl"), upstream)
    assert (await stage(tools_list(2, second, mode="ttl"), upstream)).extra == {CACHE_HEADER: "hit"}
    assert upstream.attempts == 1


async def test_an_authorization_stripped_by_connection_does_not_key_the_entry() -> None:
    """`Connection: Authorization` removes the header before the upstream sees it: the call is anonymous."""
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result(TOOLS))
    stripped = tools_list(1, {"Authorization": "Bearer alice", "Connection": "Authorization"}, mode="ttl")
    assert "Authorization" not in stripped.headers
    assert stripped.client == "addr:127.0.0.1"
    assert stripped.credential_scope == tools_list(1, mode="ttl").credential_scope
    await stage(stripped, upstream)
    assert (await stage(tools_list(2, mode="ttl"), upstream)).extra == {CACHE_HEADER: "hit"}  # the same upstream request
    alice = await stage(tools_list(3, {"Authorization": "Bearer alice"}, mode="ttl"), upstream)
    assert alice.extra == {} and upstream.attempts == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Set-Cookie": "sid=alice"},
        {"Cache-Control": "no-store"},
        {"Cache-Control": "private"},
        {"Cache-Control": 'private="Set-Cookie", max-age=60'},
        {"Cache-Control": "max-age=60, NO-STORE"},
    ],
    ids=["set-cookie", "no-store", "private", "private-field", "no-store-upper"],
)
async def test_answers_marked_personal_are_never_stored(headers: dict[str, str]) -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(answer(TOOLS, **headers), UpstreamUnavailable("down"))
    await stage(tools_list(1, mode="ttl"), upstream)
    with pytest.raises(UpstreamUnavailable):
        await stage(tools_list(2, mode="ttl"), upstream)
    assert upstream.attempts == 2


async def test_other_cache_control_directives_do_not_prevent_storing() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(answer(TOOLS, **{"Cache-Control": "public, max-age=60, x-private-note=1"}))
    await stage(tools_list(1, mode="ttl"), upstream)
    assert (await stage(tools_list(2, mode="ttl"), upstream)).extra == {CACHE_HEADER: "hit"}


# --- 3. exact keys -----------------------------------------------------------------------------------


async def test_arguments_beyond_2_to_the_64_are_keyed_exactly() -> None:
    """…123 and …124 are different accounts; as floats they would be the same key (helper H2 fixes the canonical form)."""
    stage = CacheStage(FakeClock())
    cfg = upstream_config(cache={"mode": "ttl"}, rules=[{"match": {"tool": "balance"}, "idempotent": True}])
    upstream = FakeUpstream(reply_result({"content": [{"type": "text", "text": "123's"}]}), reply_result({"content": [{"type": "text", "text": "124's"}]}))

    def balance(request_id: int, account: int) -> bytes:  # written by hand: orjson.dumps refuses ints over 64 bits
        return b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"balance","arguments":{"account":%d}}}' % (
            request_id, account
        )

    big = 2**64 * 1000
    first = await stage(classified(balance(1, big + 123), cfg), upstream)
    second = await stage(classified(balance(2, big + 124), cfg), upstream)
    assert first.message["result"]["content"][0]["text"] == "123's"
    assert second.extra == {} and second.message["result"]["content"][0]["text"] == "124's"
    assert upstream.attempts == 2
