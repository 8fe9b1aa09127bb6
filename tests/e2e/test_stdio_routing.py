"""Many clients over one stdio child: each gets its own answers, progress and questions, nobody else's.

A stdio server has one client (its parent) and one id space. Behind the proxy, many clients share it
(``isolation: shared``), each free to use the same JSON-RPC ids and progress tokens as the next; the
proxy renames them on the way in and routes the child's messages back (``proxy.upstream.stdio.routing``).

* Raw HTTP, where exact bytes matter: every client uses id 1 (and progress token 1), concurrently, in
  both eras; each gets exactly its own answer under id 1, and exactly its own progress under token 1.
* The official client: eight at once, their own ids colliding as the SDK numbers them.
* The child's questions (sampling, elicitation): with one client's call in flight, put to that client
  and its answer given back to the child; with two clients' calls in flight, refused (whose it is cannot
  be told), and neither client hears of it; a 2026-07-28 client cannot be asked at all (no session).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from mcp import Client
from mcp.types import TextContent

from tests.e2e.restart_support import within
from tests.e2e.stdio_support import NPM_STDIO, SDK_STDIO, Asked, StdioProxies, full_client, post_all
from tests.e2e.wire import modern_request
from tests.sdk_helpers import legacy_handshake, legacy_headers

pytestmark = pytest.mark.asyncio(loop_scope="package")

CLIENTS = 8


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def proxies(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StdioProxies]:
    shared = StdioProxies(tmp_path_factory.mktemp("stdio-routing"))
    try:
        yield shared
    finally:
        await shared.close()


def texts(result: dict[str, Any]) -> list[str]:
    return [item["text"] for item in result["content"]]


def text_of(content: Any) -> str:
    assert isinstance(content, TextContent), content
    return content.text


async def test_colliding_ids_and_progress_tokens_raw_legacy(proxies: StdioProxies) -> None:
    """Eight legacy sessions each call with id 1 and progress token 1, at once; client `i` asks for `i + 2`
    steps, so its progress (total, count) and its answer can only be its own."""
    proxy = await proxies.get(NPM_STDIO)
    async with httpx2.AsyncClient(timeout=30) as http:
        sessions = [await legacy_handshake(http, proxy.url) for _ in range(CLIENTS)]

        async def one(i: int) -> tuple[int, list[dict[str, Any]]]:
            params = {
                "name": "trigger-long-running-operation",
                "arguments": {"duration": 0.4, "steps": i + 2},
                "_meta": {"progressToken": 1},
            }
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
            return await post_all(http, proxy.url, body, legacy_headers(sessions[i]))

        answers = await within(asyncio.gather(*(one(i) for i in range(CLIENTS))), "eight concurrent calls")
    for i, (status, messages) in enumerate(answers):
        steps = i + 2
        assert status == 200, (i, messages)
        progress = [
            {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progress": n, "total": steps, "progressToken": 1},
            }
            for n in range(1, steps + 1)
        ]
        assert messages[:-1] == progress, f"client {i}: {messages}"
        final = messages[-1]
        assert (final["jsonrpc"], final["id"]) == ("2.0", 1), final
        assert texts(final["result"]) == [f"Long running operation completed. Duration: 0.4 seconds, Steps: {steps}."]


async def test_colliding_ids_both_eras_raw(proxies: StdioProxies) -> None:
    """Eight legacy sessions and eight 2026-07-28 requests, every one id 1, at once: each answer is the
    caller's own echo, under id 1, and nothing else."""
    proxy = await proxies.get(NPM_STDIO)
    async with httpx2.AsyncClient(timeout=30) as http:
        sessions = [await legacy_handshake(http, proxy.url) for _ in range(CLIENTS)]

        async def legacy(i: int) -> tuple[int, list[dict[str, Any]]]:
            params = {"name": "echo", "arguments": {"message": f"legacy-{i}"}}
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
            return await post_all(http, proxy.url, body, legacy_headers(sessions[i]))

        async def modern(i: int) -> tuple[int, list[dict[str, Any]]]:
            body, headers = modern_request(
                "tools/call", {"name": "echo", "arguments": {"message": f"modern-{i}"}}, 1, "echo"
            )
            return await post_all(http, proxy.url, body, headers)

        calls = [legacy(i) for i in range(CLIENTS)] + [modern(i) for i in range(CLIENTS)]
        answers = await within(asyncio.gather(*calls), "sixteen concurrent echoes")
    expected = [f"Echo: legacy-{i}" for i in range(CLIENTS)] + [f"Echo: modern-{i}" for i in range(CLIENTS)]
    for want, (status, messages) in zip(expected, answers, strict=True):
        assert status == 200 and len(messages) == 1, (want, status, messages)
        assert (messages[0]["id"], texts(messages[0]["result"])) == (1, [want]), messages


async def test_eight_sdk_clients_own_answers_and_progress(proxies: StdioProxies) -> None:
    """Eight official clients call ``slow`` at once (their request ids, hence progress tokens, collide):
    each gets its own four progress steps and its own answer."""
    proxy = await proxies.get(SDK_STDIO)

    async def one(i: int) -> tuple[list[tuple[float, float | None, str | None]], str]:
        seen: list[tuple[float, float | None, str | None]] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total, message))

        seconds = round(0.2 + 0.05 * i, 2)
        async with Client(proxy.url, mode="legacy") as client:
            result = await client.call_tool("slow", {"seconds": seconds}, progress_callback=on_progress)
        assert not result.is_error, result
        return seen, text_of(result.content[0])

    results = await within(asyncio.gather(*(one(i) for i in range(CLIENTS))), "eight SDK clients")
    for i, (seen, text) in enumerate(results):
        assert text == f"slept {round(0.2 + 0.05 * i, 2)}"
        assert seen == [(float(n), 4.0, f"step {n}") for n in range(1, 5)], f"client {i}: {seen}"


async def test_child_questions_reach_the_one_caller_npm(proxies: StdioProxies) -> None:
    proxy = await proxies.get(NPM_STDIO)
    asked = Asked(reply="forty-two")
    async with full_client(proxy.url, "legacy", asked) as client:
        sampled = await client.call_tool("trigger-sampling-request", {"prompt": "the answer?", "maxTokens": 7})
        elicited = await client.call_tool("trigger-elicitation-request", {})
    assert [method for method, _ in asked.questions] == ["sampling/createMessage", "elicitation/create"]
    sampling = asked.questions[0][1]
    assert [text_of(m.content) for m in sampling.messages] == ["Resource trigger-sampling-request context: the answer?"]
    assert (sampling.max_tokens, sampling.system_prompt) == (7, "You are a helpful test server.")
    assert not sampled.is_error and '"text": "forty-two"' in text_of(sampled.content[0]), sampled
    assert not elicited.is_error, elicited
    assert text_of(elicited.content[0]) == "✅ User provided the requested information!"


async def test_child_questions_reach_the_one_caller_sdk(proxies: StdioProxies) -> None:
    proxy = await proxies.get(SDK_STDIO)
    asked = Asked(reply="forty-two")
    async with full_client(proxy.url, "legacy", asked) as client:
        sampled = await client.call_tool("test_sampling", {"prompt": "the answer?"})
        confirmed = await client.call_tool("confirm_action", {"action": "deploy"})
    assert [text_of(c) for c in sampled.content] == ["LLM response: forty-two"]
    assert [text_of(c) for c in confirmed.content] == ["deploy: confirmed"]
    assert [method for method, _ in asked.questions] == ["sampling/createMessage", "elicitation/create"]
    sampling = asked.questions[0][1]
    assert [text_of(m.content) for m in sampling.messages] == ["the answer?"]
    assert sampling.max_tokens == 100


SEVERAL = (
    "mcp proxy: requests of several clients are in flight, so whose this is cannot be told (isolation: per_session)"
)
CANNOT_ASK = "mcp proxy: the client cannot be asked (no session, or it does not accept a stream)"


async def test_question_refused_with_two_clients_in_flight(proxies: StdioProxies) -> None:
    """A holds a call open in the child (``held``); B's call makes the child ask for sampling: the proxy
    cannot tell whose question it is, so it answers the child with an error, and neither client is asked."""
    proxy = await proxies.get(SDK_STDIO)
    asked_a, asked_b = Asked(), Asked()
    holding = asyncio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if progress == 1:
            holding.set()

    async with full_client(proxy.url, "legacy", asked_a) as a, full_client(proxy.url, "legacy", asked_b) as b:
        held = asyncio.ensure_future(a.call_tool("held", {"key": "two-clients"}, progress_callback=on_progress))
        try:
            await within(holding.wait(), "A's held call in the child (its first progress)")
            sampled = await b.call_tool("test_sampling", {"prompt": "whose?"})
            released = await b.call_tool("release", {"key": "two-clients"})
            assert [text_of(c) for c in released.content] == ["released two-clients"]
            result = await within(held, "A's held call answered once released")
        finally:
            held.cancel()
    assert [text_of(c) for c in sampled.content] == [f"Sampling not supported or error: {SEVERAL}"]
    assert [text_of(c) for c in result.content] == ["released two-clients"]
    assert asked_a.questions == [] and asked_b.questions == []


async def test_modern_client_is_never_asked(proxies: StdioProxies) -> None:
    """A 2026-07-28 client has no session to be asked on: the child's question is refused, the client is
    not asked, and the tool reports the refusal."""
    proxy = await proxies.get(SDK_STDIO)
    asked = Asked()
    async with full_client(proxy.url, "2026-07-28", asked) as client:
        sampled = await client.call_tool("test_sampling", {"prompt": "anyone?"})
    assert [text_of(c) for c in sampled.content] == [f"Sampling not supported or error: {CANNOT_ASK}"]
    assert asked.questions == []
