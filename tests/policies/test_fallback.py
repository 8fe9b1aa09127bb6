"""The cache/fallback stage: stale answers for failures, fresh hits, scopes, bounds, single flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from proxy.mcp.annotations import ToolAnnotations
from proxy.server.classify import CallRoute, ClientRequest, classify
from proxy.config.model import UpstreamConfig
from proxy.errors import (
    CircuitOpen,
    ProxyOverloaded,
    ProxyError,
    RateLimited,
    RetryBudgetExhausted,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.mcp.headers import upstream_headers
from proxy.mcp.jsonrpc import parse_message
from proxy.pipeline import build_pipeline
from proxy.policies.base import Call, Reply, last_attempt
from proxy.policies.retry import RetryStage
from proxy.mcp.jsonrpc import list_changed_kind
from proxy.policies.fallback import CACHE_HEADER, CACHE_META, CacheStage
from proxy.config.resolve import PolicyResolver
from tests.fakes import echo, settle, FakeClock, FakeUpstream, reply_error, reply_result, reply_status, tool_call, upstream_config

TOOLS = {"tools": [{"name": "search"}]}


def make_call(
    body: bytes = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
    upstream: UpstreamConfig | None = None,
    annotations: ToolAnnotations | None = None,
    peer: str = "127.0.0.1",
    **headers: str,
) -> Call:
    """Classify `body` as the handler does: identity and scope from the headers it forwards."""
    raw = CIMultiDict(headers)
    resolver = PolicyResolver(upstream or upstream_config())
    request = ClientRequest(parse_message(body), body, raw, upstream_headers(raw.items()), peer, None, 0.0)
    return classify(request, CallRoute("up", resolver, annotations))


class FakeStream:
    """A streamed answer body that records being closed."""

    def __init__(self) -> None:
        self.closed = False

    async def _chunks(self) -> AsyncIterator[bytes]:
        yield b"event: message\ndata: {}\n\n"

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def close(self) -> None:
        self.closed = True


def streamed() -> Reply:
    return Reply(200, CIMultiDict({"Content-Type": "text/event-stream"}), stream=FakeStream())


def request(request_id: int | str = 1, method: str = "tools/list", params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return orjson.dumps(message)


def call(
    request_id: int | str = 1,
    method: str = "tools/list",
    params: dict[str, Any] | None = None,
    auth: str | None = None,
    **cache: Any,
) -> Call:
    headers = {"Authorization": auth} if auth else {}
    cfg = upstream_config(cache=cache)
    return make_call(request(request_id, method, params), cfg, None, **headers)


def body_of(reply: Reply) -> Any:
    assert reply.body is not None
    return orjson.loads(reply.body)


def assert_served(reply: Reply, request_id: int | str, status: str, result: dict[str, Any], age_ms: int) -> None:
    """`reply` is a stored `result` answered to `request_id`, marked `status`."""
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.extra == {CACHE_HEADER: status}
    assert body_of(reply) == reply.message
    expected = {**result, "_meta": {**result.get("_meta", {}), CACHE_META: {"status": status, "age_ms": age_ms}}}
    assert reply.message == {"jsonrpc": "2.0", "id": request_id, "result": expected}


async def test_upstream_down_serves_stale_within_max_stale_then_the_error() -> None:
    clock = FakeClock()
    stage = CacheStage(clock)
    down = UpstreamUnavailable("down", upstream="up")
    upstream = FakeUpstream(reply_result(TOOLS), down)
    first = await stage(call(1, ttl=10, max_stale=60), upstream)
    assert first.message["result"] == TOOLS and first.extra == {}
    clock.advance(70)  # 10 s fresh + 60 s stale
    assert_served(await stage(call("b", ttl=10, max_stale=60), upstream), "b", "stale", TOOLS, 70_000)
    clock.advance(0.001)
    with pytest.raises(UpstreamUnavailable) as raised:
        await stage(call(3, ttl=10, max_stale=60), upstream)
    assert raised.value is down
    assert upstream.attempts == 3


@pytest.mark.parametrize(
    "failure",
    [
        UpstreamTimeout("slow"),
        CircuitOpen("open"),
        RateLimited("slow down", retry_after=1),
        RetryBudgetExhausted("budget"),
        reply_status(503),
        reply_status(429, b"", **{"Retry-After": "5"}),
        reply_error(-32603, status=503),
        UpstreamUnavailable("reset"),
        ProxyOverloaded("pool busy"),
    ],
    ids=["timeout", "circuit_open", "rate_limited", "budget", "http_503", "http_429", "503_jsonrpc", "reset", "overloaded"],
)
async def test_every_failure_below_is_answered_with_the_stale_entry(failure: Reply | ProxyError) -> None:
    clock = FakeClock()
    stage = CacheStage(clock)
    upstream = FakeUpstream(reply_result(TOOLS), failure)
    await stage(call(1), upstream)
    clock.advance(5)
    assert_served(await stage(call(2), upstream), 2, "stale", TOOLS, 5000)


async def test_failing_reply_passes_through_unchanged_without_a_usable_entry() -> None:
    stage = CacheStage(FakeClock())
    failing = reply_status(503)
    assert await stage(call(1), FakeUpstream(failing)) is failing


@pytest.mark.parametrize(
    "answer",
    [reply_error(-32602), reply_status(404), reply_error(-32603), reply_error(-32603, status=500), reply_error(-32002)],
    ids=["invalid_params", "http_404", "internal_error", "500_internal_error", "resource_not_found"],
)
async def test_the_servers_own_answers_are_never_hidden_behind_a_stored_one(answer: Reply) -> None:
    """A JSON-RPC error is the server answering this request: the client hears it, not an old result."""
    clock = FakeClock()
    stage = CacheStage(clock)
    upstream = FakeUpstream(reply_result(TOOLS), answer)
    await stage(call(1), upstream)
    assert await stage(call(2), upstream) is answer


async def test_fallback_mode_always_asks_upstream_and_passes_answers_through() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result(TOOLS), reply_result({"tools": []}))
    await stage(call(1), upstream)
    second = await stage(call(2), upstream)
    assert upstream.attempts == 2
    assert second.message["result"] == {"tools": []} and second.extra == {}


async def test_ttl_mode_fresh_hit_skips_upstream_and_expiry_calls_it_again() -> None:
    clock = FakeClock()
    stage = CacheStage(clock)
    upstream = FakeUpstream(reply_result({**TOOLS, "_meta": {"x": 1}}))
    await stage(call(1, mode="ttl", ttl=10), upstream)
    clock.advance(9.5)
    assert_served(await stage(call(2, mode="ttl", ttl=10), upstream), 2, "hit", {**TOOLS, "_meta": {"x": 1}}, 9500)
    assert upstream.attempts == 1
    clock.advance(0.5)
    expired = await stage(call(3, mode="ttl", ttl=10), upstream)
    assert upstream.attempts == 2 and expired.extra == {}


async def test_key_ignores_meta_and_param_order_but_not_param_values() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result({"contents": []}))
    method = "resources/read"
    await stage(call(1, method, {"uri": "a", "x": {"p": 1, "q": 2}}, mode="ttl"), upstream)
    same = call(2, method, {"x": {"q": 2, "p": 1}, "uri": "a", "_meta": {"progressToken": 7}}, mode="ttl")
    assert (await stage(same, upstream)).extra == {CACHE_HEADER: "hit"}
    await stage(call(3, method, {"uri": "b", "x": {"p": 1, "q": 2}}, mode="ttl"), upstream)
    assert upstream.attempts == 2


async def test_private_scope_never_crosses_authorization_contexts() -> None:
    clock = FakeClock()
    stage = CacheStage(clock)
    upstream = FakeUpstream(reply_result(TOOLS), reply_result({"tools": []}), UpstreamUnavailable("down"))
    await stage(call(1, auth="Bearer alice", mode="ttl"), upstream)
    bob = await stage(call(2, auth="Bearer bob", mode="ttl"), upstream)
    assert bob.message["result"] == {"tools": []} and upstream.attempts == 2
    assert (await stage(call(3, auth="Bearer alice", mode="ttl"), upstream)).message["result"]["tools"] == TOOLS["tools"]
    with pytest.raises(UpstreamUnavailable):  # an anonymous caller gets neither tenant's answer
        await stage(call(4, mode="ttl"), upstream)


async def test_shared_scope_shares_between_authorization_contexts() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result(TOOLS))
    await stage(call(1, auth="Bearer alice", mode="ttl", scope="shared"), upstream)
    hit = await stage(call(2, auth="Bearer bob", mode="ttl", scope="shared"), upstream)
    assert hit.extra == {CACHE_HEADER: "hit"} and upstream.attempts == 1


async def test_modern_cache_scope_private_overrides_shared_policy() -> None:
    clock = FakeClock()
    stage = CacheStage(clock)
    mine = {**TOOLS, "cacheScope": "private"}
    upstream = FakeUpstream(reply_result(mine), UpstreamUnavailable("down"))
    await stage(call(1, auth="Bearer alice", mode="ttl", scope="shared"), upstream)
    assert (await stage(call(2, auth="Bearer alice", mode="ttl", scope="shared"), upstream)).extra == {CACHE_HEADER: "hit"}
    with pytest.raises(UpstreamUnavailable):
        await stage(call(3, auth="Bearer bob", mode="ttl", scope="shared"), upstream)
    assert upstream.attempts == 2


async def test_ttl_ms_caps_freshness_and_is_rewritten_to_what_is_left() -> None:
    clock = FakeClock()
    stage = CacheStage(clock)
    upstream = FakeUpstream(reply_result({**TOOLS, "ttlMs": 2000}), UpstreamUnavailable("down"))
    await stage(call(1, mode="ttl", ttl=30), upstream)
    clock.advance(1.5)
    hit = await stage(call(2, mode="ttl", ttl=30), upstream)
    assert hit.message["result"]["ttlMs"] == 500 and upstream.attempts == 1
    clock.advance(0.5)
    stale = await stage(call(3, mode="ttl", ttl=30), upstream)
    assert upstream.attempts == 2
    assert stale.extra == {CACHE_HEADER: "stale"} and stale.message["result"]["ttlMs"] == 0


@pytest.mark.parametrize(
    "answer",
    [
        reply_result({"resultType": "input_required", "inputRequests": {}}),
        reply_result({"content": [], "isError": True}),
        reply_error(-32603),
        reply_error(-32602),
        reply_status(500, b'{"jsonrpc":"2.0","id":1,"result":{}}'),
        streamed(),
    ],
    ids=["input_required", "isError", "server_error", "client_error", "http_500", "stream"],
)
async def test_never_stored(answer: Reply) -> None:
    stage = CacheStage(FakeClock())
    down = UpstreamUnavailable("down")
    body = tool_call("search", 1, q="x")
    cfg = upstream_config(cache={"mode": "ttl"}, rules=[{"match": {"tool": "search"}, "idempotent": True}])
    upstream = FakeUpstream(answer, down)
    assert await stage(make_call(body, cfg), upstream) is answer
    with pytest.raises(UpstreamUnavailable):
        await stage(make_call(body, cfg), upstream)
    assert upstream.attempts == 2


async def test_max_entries_evicts_the_least_recently_used() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result({"contents": []}))

    def read(uri: str, request_id: int = 1) -> Call:
        return call(request_id, "resources/read", {"uri": uri}, mode="ttl", max_entries=2)

    await stage(read("a"), upstream)
    await stage(read("b"), upstream)
    await stage(read("a"), upstream)  # hit: a is now the most recent
    await stage(read("c"), upstream)  # evicts b
    assert upstream.attempts == 3
    assert (await stage(read("a"), upstream)).extra == {CACHE_HEADER: "hit"}
    assert (await stage(read("b"), upstream)).extra == {}
    assert upstream.attempts == 4
    store = stage.store("up", read("a").policy.cache)  # type: ignore[arg-type]
    assert len(store) == 2


async def test_max_bytes_evicts_and_an_oversized_answer_is_not_kept() -> None:
    stage = CacheStage(FakeClock())
    small = reply_result({"contents": [{"text": "x" * 100}]})
    big = reply_result({"contents": [{"text": "x" * 400}]})
    upstream = FakeUpstream(small, small, small, big)

    def read(uri: str) -> Call:
        return call(1, "resources/read", {"uri": uri}, mode="ttl", max_bytes=320)

    for uri in "abc":
        await stage(read(uri), upstream)
    store = stage.store("up", read("a").policy.cache)  # type: ignore[arg-type]
    assert len(store) == 2 and store.bytes == 302  # two 151-byte answers fit in 320, three do not
    assert (await stage(read("a"), upstream)).extra == {}  # a was evicted
    assert upstream.attempts == 4
    await stage(read("big"), upstream)
    assert (await stage(read("big"), upstream)).extra == {} and upstream.attempts == 6
    assert store.bytes == 302




async def test_single_flight_50_concurrent_misses_make_one_upstream_call() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result(TOOLS))
    upstream.gate = asyncio.Event()
    tasks = [asyncio.create_task(stage(call(f"id-{n}"), echo(upstream))) for n in range(50)]
    await settle()
    upstream.gate.set()
    replies = await asyncio.gather(*tasks)
    assert upstream.attempts == 1
    assert [body_of(reply)["id"] for reply in replies] == [f"id-{n}" for n in range(50)]
    assert all(body_of(reply)["result"] == TOOLS for reply in replies)
    assert not stage._flights


async def test_single_flight_leader_failure_reaches_followers_or_their_stale_answer() -> None:
    clock = FakeClock()
    stage = CacheStage(clock)
    down = UpstreamUnavailable("down")
    upstream = FakeUpstream(down)
    upstream.gate = asyncio.Event()
    tasks = [asyncio.create_task(stage(call(n), upstream)) for n in range(3)]
    await settle()
    upstream.gate.set()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes == [down, down, down] and upstream.attempts == 1

    upstream.outcomes = [reply_result(TOOLS), reply_status(502)]
    upstream.calls.clear()
    upstream.gate = None
    await stage(call(0), upstream)
    upstream.gate = asyncio.Event()
    tasks = [asyncio.create_task(stage(call(n), upstream)) for n in range(1, 4)]
    await settle()
    upstream.gate.set()
    for n, reply in enumerate(await asyncio.gather(*tasks), start=1):
        assert_served(reply, n, "stale", TOOLS, 0)
    assert upstream.attempts == 2


async def test_a_followers_events_name_no_attempt_of_the_leaders() -> None:
    """A single flight hands the leader's error to every follower. The leader's events name the attempt
    that failed (the third); a follower made none of its own, so its events name its call (attempt 1)."""
    clock = FakeClock()
    stage = CacheStage(clock)
    down = UpstreamUnavailable("down")
    upstream = FakeUpstream(down)
    upstream.gate = asyncio.Event()
    pipeline = build_pipeline(upstream, {"fallback": stage, "retry": RetryStage(clock, rng=lambda: 0.0)})
    calls = [call(n) for n in range(3)]
    tasks = [asyncio.create_task(pipeline(c)) for c in calls]
    await settle()
    upstream.gate.set()
    assert await asyncio.gather(*tasks, return_exceptions=True) == [down, down, down]
    assert [attempt.number for attempt in upstream.tries] == [1, 2, 3]
    leader, *followers = calls
    assert {id(c) for c in upstream.calls} == {id(leader)}
    assert last_attempt(leader, down) is upstream.tries[-1]
    assert [last_attempt(follower, down) for follower in followers] == [None, None]


async def test_cancelled_leader_does_not_strand_followers() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result(TOOLS))
    upstream.gate = asyncio.Event()
    leader = asyncio.create_task(stage(call(1), echo(upstream)))
    await settle()
    follower = asyncio.create_task(stage(call(2), echo(upstream)))
    await settle()
    leader.cancel()
    await settle()
    upstream.gate.set()
    reply = await follower
    assert body_of(reply) == {"jsonrpc": "2.0", "id": 2, "result": TOOLS}
    assert leader.cancelled() and upstream.attempts == 1


async def test_when_every_caller_leaves_the_upstream_call_is_cancelled() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result(TOOLS))
    upstream.gate = asyncio.Event()
    tasks = [asyncio.create_task(stage(call(n), echo(upstream))) for n in range(2)]
    await settle()
    flight = next(iter(stage._flights.values()))
    for task in tasks:
        task.cancel()
    await settle()
    assert flight.task.cancelled() and not stage._flights
    upstream.gate = None
    assert (await stage(call(3), echo(upstream))).message["id"] == 3 and upstream.attempts == 2


async def test_streamed_answer_is_not_shared_and_a_departed_leaders_stream_is_released() -> None:
    stage = CacheStage(FakeClock())
    body = tool_call("search", 1, q="x")
    cfg = upstream_config(cache={}, rules=[{"match": {"tool": "search"}, "idempotent": True}])
    first, second = streamed(), streamed()
    upstream = FakeUpstream(first, second)
    upstream.gate = asyncio.Event()
    leader = asyncio.create_task(stage(make_call(body, cfg), upstream))
    await settle()
    follower = asyncio.create_task(stage(make_call(tool_call("search", 2, q="x"), cfg), upstream))
    await settle()
    leader.cancel()
    await settle()
    upstream.gate.set()
    assert (await follower) is second  # its own upstream call: a stream has one reader
    await settle()
    assert upstream.attempts == 2
    assert isinstance(first.stream, FakeStream) and first.stream.closed
    assert isinstance(second.stream, FakeStream) and not second.stream.closed


async def test_follower_from_another_tenant_does_not_share_a_private_answer() -> None:
    stage = CacheStage(FakeClock())
    mine = {**TOOLS, "cacheScope": "private"}
    gate = asyncio.Event()
    seen: list[str] = []

    async def per_user(call: Call) -> Reply:  # answers each user with their own tools
        seen.append(call.headers["Authorization"])
        await gate.wait()
        return reply_result(mine if call.headers["Authorization"] == "Bearer alice" else {"tools": []}, call.message.id)  # type: ignore[arg-type]

    alice = asyncio.create_task(stage(call(1, auth="Bearer alice", scope="shared"), per_user))
    await settle()
    bob = asyncio.create_task(stage(call(2, auth="Bearer bob", scope="shared"), per_user))
    await settle()
    gate.set()
    assert body_of(await alice) == {"jsonrpc": "2.0", "id": 1, "result": mine}
    assert body_of(await bob) == {"jsonrpc": "2.0", "id": 2, "result": {"tools": []}}
    assert seen == ["Bearer alice", "Bearer bob"]


async def test_a_leaders_rate_limit_is_not_another_clients() -> None:
    """Two anonymous clients (one credential scope, two peers) share a flight, but not a rate limit."""
    stage = CacheStage(FakeClock())
    limited = RateLimited("slow down")
    upstream = FakeUpstream(limited, reply_result(TOOLS))
    upstream.gate = asyncio.Event()
    cfg = upstream_config(cache={"scope": "shared"})
    alice = asyncio.create_task(stage(make_call(request(1), cfg, peer="10.0.0.1"), echo(upstream)))
    await settle()
    bob = asyncio.create_task(stage(make_call(request(2), cfg, peer="10.0.0.2"), echo(upstream)))
    await settle()
    upstream.gate.set()
    with pytest.raises(RateLimited):
        await alice
    assert body_of(await bob)["result"] == TOOLS and upstream.attempts == 2


async def test_list_changed_invalidates_that_kinds_lists_of_that_upstream() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result({"items": []}))
    for method in ("tools/list", "resources/list", "resources/templates/list"):
        await stage(call(1, method, mode="ttl"), upstream)
    assert stage.invalidate_lists("other", "tools") == 0
    assert stage.invalidate_lists("up", "resources") == 2
    assert (await stage(call(2, "tools/list", mode="ttl"), upstream)).extra == {CACHE_HEADER: "hit"}
    assert (await stage(call(3, "resources/list", mode="ttl"), upstream)).extra == {}
    assert upstream.attempts == 4


async def test_an_answer_in_flight_during_invalidation_is_not_stored() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result(TOOLS))
    upstream.gate = asyncio.Event()
    first = asyncio.create_task(stage(call(1, mode="ttl"), upstream))
    await settle()
    stage.invalidate_lists("up", "tools")
    upstream.gate.set()
    await first
    assert (await stage(call(2, mode="ttl"), upstream)).extra == {} and upstream.attempts == 2


def test_list_changed_kind() -> None:
    assert list_changed_kind("notifications/tools/list_changed") == "tools"
    assert list_changed_kind("notifications/resources/list_changed") == "resources"
    assert list_changed_kind("notifications/progress") is None
    assert list_changed_kind("notifications//list_changed") is None


async def test_non_idempotent_and_uncached_calls_bypass_the_stage() -> None:
    stage = CacheStage(FakeClock())
    down = UpstreamUnavailable("down")
    cfg = upstream_config(cache={"mode": "ttl"})
    upstream = FakeUpstream(reply_result({"content": []}), down)
    body = tool_call("write", 1, path="/x")
    assert not make_call(body, cfg).idempotent
    await stage(make_call(body, cfg), upstream)
    with pytest.raises(UpstreamUnavailable):
        await stage(make_call(body, cfg), upstream)
    upstream = FakeUpstream(reply_result(TOOLS), down)
    await stage(make_call(request(1)), upstream)  # no cache section
    with pytest.raises(UpstreamUnavailable):
        await stage(make_call(request(2)), upstream)
    assert not stage._stores or all(len(store) == 0 for store in stage._stores.values())


async def test_answers_of_one_protocol_version_never_serve_another() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result({"tools": []}), UpstreamTimeout("down"))
    cfg = upstream_config(cache={"mode": "fallback"})
    legacy = make_call(request(1), cfg, None, **{"MCP-Protocol-Version": "2025-11-25"})
    modern = make_call(request(2), cfg, None, **{"MCP-Protocol-Version": "2026-07-28"})
    await stage(legacy, upstream)
    with pytest.raises(UpstreamTimeout):
        await stage(modern, upstream)
    assert (await stage(legacy, upstream)).extra == {CACHE_HEADER: "stale"}


@pytest.mark.parametrize("method", ["initialize", "ping"])
async def test_initialize_and_ping_are_never_answered_from_the_cache(method: str) -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result({}), UpstreamTimeout("down"))
    await stage(call(1, method, mode="fallback"), upstream)
    with pytest.raises(UpstreamTimeout):
        await stage(call(2, method, mode="fallback"), upstream)


async def test_concurrent_calls_of_two_legacy_sessions_never_share_a_flight() -> None:
    stage = CacheStage(FakeClock())
    upstream = FakeUpstream(reply_result({"tools": []}))
    upstream.gate = asyncio.Event()
    cfg = upstream_config(cache={"mode": "fallback"})
    calls = [make_call(request(n), cfg, None, **{"Mcp-Session-Id": f"session-{n % 2}"}) for n in range(4)]
    pending = [asyncio.ensure_future(stage(c, echo(upstream))) for c in calls]
    await asyncio.sleep(0)
    upstream.gate.set()
    replies = await asyncio.gather(*pending)
    assert upstream.attempts == 2  # one flight per session
    assert [body_of(r)["id"] for r in replies] == [0, 1, 2, 3]
    assert all("Mcp-Session-Id" not in r.headers for r in replies)


async def test_an_answer_too_deep_to_write_again_passes_on_unstored() -> None:
    """A valid result nested deeper than orjson writes (254 levels; it reads 1024) reaches the client as the
    server sent it, and is simply not stored: it used to crash the handler (500) with a cache configured."""
    body = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[],"deep":' + b"[" * 300 + b'"leaf"' + b"]" * 300 + b"}}"
    message = orjson.loads(body)  # orjson reads it; it cannot write it back
    deep = message["result"]["deep"]
    upstream = FakeUpstream(Reply(200, CIMultiDict({"Content-Type": "application/json"}), body=body, message=message), reply_result(TOOLS))
    stage = CacheStage(FakeClock())
    first = await stage(call(1, mode="ttl", ttl=10), upstream)
    assert first.status == 200 and first.message["result"]["deep"] == deep
    second = await stage(call(2, mode="ttl", ttl=10), upstream)  # nothing stored: the upstream is asked again
    assert upstream.attempts == 2 and second.message["result"] == TOOLS
