"""What a legacy client receives outside its requests survives a restart of the server behind the proxy.

The server is killed and started again on the same port; its sessions, and every GET stream it
served, are gone. Through the proxy:

* the GET stream a client opened before the restart stays open (the same HTTP response), and a
  notification the server sends after the restart arrives on it exactly once; a GET stream opened
  straight to the server ends when the server dies, which is what the proxy hides;
* a ``resources/subscribe`` made before the restart still delivers ``notifications/resources/updated``
  after it: the proxy subscribed the new upstream session again (and set its log level again),
  for raw HTTP and the official SDK client.

Each test waits for the proxy's ``stream_resumed`` event (the upstream GET stream is open again)
before making the server send: a server drops what it sends to a session with no GET stream open,
so sending earlier would test the race, not the proxy. "Exactly once" is read at a sentinel: a
second notification sent after the one under test, on the same ordered stream; when it has
arrived, any duplicate of the first would have arrived before it.
"""

from __future__ import annotations

import contextlib
import re
import uuid
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import pytest
from mcp.shared.exceptions import MCPDeprecationWarning

from tests.e2e.conftest import StackFactory
from tests.e2e.restart_support import (
    Notifications,
    ProxyEvents,
    RawSession,
    SseReader,
    announced,
    brief,
    count,
    of_type,
    resource_updated,
    result_of,
    session_refused,
    tool_text,
    within,
)
from tests.e2e.upstreams import FASTMCP_RESTART, NPM_EVERYTHING, SDK, ServerSpec
from tests.e2e.wire import WireLog, sdk_client

pytestmark = pytest.mark.asyncio(loop_scope="package")

STREAM_SERVERS = [pytest.param(spec, id=spec.name) for spec in (NPM_EVERYTHING, FASTMCP_RESTART, SDK)]

Matcher = Callable[[dict[str, Any]], bool]
Trigger = Callable[[RawSession, str], Awaitable[Matcher]]
"""``(session, label) -> matcher``: make the server send one notification naming `label` on the
session's GET stream; the matcher recognises exactly that notification."""


async def announce(session: RawSession, label: str) -> Matcher:
    """SDK server, FastMCP: the ``announce`` tool's log record, matched as exact JSON."""
    text = f"{label}-{uuid.uuid4().hex}"
    assert tool_text(await session.tool("announce", {"text": text}), f"announce {label}") == f"announced {text}"
    expected = announced(text)
    return lambda message: message == expected


async def subscribe_log(session: RawSession, label: str) -> Matcher:
    """server-everything: its subscribe handler logs each subscription on the session's GET stream.

    The record names the URI and the upstream's session id; after the restart that is the session
    the proxy opened, whose id the client never sees, so it is matched by pattern (a UUID).
    """
    uri = f"test://{label}-{uuid.uuid4().hex}"
    assert result_of(await session.call("resources/subscribe", {"uri": uri}), f"subscribe {label}") == {}
    pattern = re.compile(rf"Received Subscribe Resource request for URI: {re.escape(uri)} from session [0-9a-f-]{{36}}")

    def matches(message: dict[str, Any]) -> bool:
        params = message.get("params")
        return (
            set(message) == {"jsonrpc", "method", "params"}
            and message["method"] == "notifications/message"
            and isinstance(params, dict)
            and set(params) == {"level", "data"}
            and params["level"] == "info"
            and bool(pattern.fullmatch(str(params["data"])))
        )

    return matches


TRIGGERS: dict[str, Trigger] = {SDK.name: announce, FASTMCP_RESTART.name: announce, NPM_EVERYTHING.name: subscribe_log}


async def wait_stream_resumed(events: ProxyEvents, mark: int, what: str) -> None:
    """The proxy reopened the upstream GET stream after `mark` (so the server has a stream to send on)."""
    await events.wait_for(mark, lambda e: bool(of_type(e, "stream_resumed", stream="get")), f"{what}: stream_resumed")


async def deliver_once(get: SseReader, session: RawSession, trigger: Trigger, label: str, what: str) -> Matcher:
    """Trigger a notification, wait for it, then for a sentinel after it: it arrived exactly once."""
    matches = await trigger(session, label)
    await get.wait_for(lambda messages: any(map(matches, messages)), f"{what}: the {label} notification")
    sentinel = await trigger(session, f"{label}-sentinel")
    await get.wait_for(lambda messages: any(map(sentinel, messages)), f"{what}: the {label} sentinel")
    assert sum(map(matches, get.messages)) == 1, f"{what}: the {label} notification, not once: {get.messages}"
    return matches


@pytest.mark.parametrize("spec", STREAM_SERVERS)
async def test_get_stream_stays_open(spec: ServerSpec, stack_for: StackFactory) -> None:
    stack = await stack_for(spec, own_server=True)
    events = ProxyEvents(stack.admin_url)
    trigger = TRIGGERS[spec.name]
    what = f"{spec}: a GET stream across a server restart"
    async with contextlib.AsyncExitStack() as scope:
        http = await scope.enter_async_context(httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300)))
        proxied = await RawSession.open(http, stack.url)
        direct = await RawSession.open(http, stack.direct_url)
        proxied_get = await proxied.open_get()
        scope.push_async_callback(proxied_get.close)
        direct_get = await direct.open_get()
        scope.push_async_callback(direct_get.close)
        before = await deliver_once(proxied_get, proxied, trigger, "before", what)
        await deliver_once(direct_get, direct, trigger, "before", f"{what} (direct)")

        mark = await events.mark()
        await stack.upstream.restart()
        ended = await direct_get.wait_ended(f"{what}: the direct GET stream")
        assert ended.startswith("broke") or ended == "ended", ended  # the server died under it
        await wait_stream_resumed(events, mark, what)
        await deliver_once(proxied_get, proxied, trigger, "after", what)

        assert not proxied_get.ended.is_set(), f"{what}: the proxied GET stream {proxied_get.end}"
        assert sum(map(before, proxied_get.messages)) == 1, f"{what}: a notification of before the restart again"
        session_refused(await direct.tool(spec.good_call.tool, spec.good_call.arguments), f"{what}: the direct client")
        resumed = of_type(await events.since(mark), "stream_resumed", stream="get")
        reopened = [(e.get("generation"), e.get("from_event_id")) for e in resumed]
        assert reopened == [(1, False)], f"{what}: stream_resumed events {brief(resumed)}"  # a new server: from now on


SUBSCRIBE_SERVERS = [pytest.param(spec, id=spec.name) for spec in (NPM_EVERYTHING, FASTMCP_RESTART, SDK)]
WATCHED = "test://watched-resource"
SENTINEL = "test://static-text"
"""A second subscribed URI, touched after the one under test (the sentinel)."""


async def skip_unless_subscribable(http: httpx2.AsyncClient, spec: ServerSpec, url: str) -> None:
    """Skip, saying why, when the server does not offer ``resources/subscribe`` (FastMCP 4.1.6 does not)."""
    probe = await RawSession.open(http, url, "capability-probe")
    resources = probe.initialize_result.get("capabilities", {}).get("resources") or {}
    if not resources.get("subscribe"):
        pytest.skip(f"{spec} does not serve resources/subscribe (initialize: capabilities.resources = {resources})")


@pytest.mark.parametrize("client", ["raw", "sdk"])
@pytest.mark.parametrize("spec", SUBSCRIBE_SERVERS)
async def test_subscription_survives_restart(spec: ServerSpec, client: str, stack_for: StackFactory) -> None:
    stack = await stack_for(spec, own_server=True)
    events = ProxyEvents(stack.admin_url)
    what = f"{spec}/{client}: a subscription across a server restart"
    async with contextlib.AsyncExitStack() as scope:
        http = await scope.enter_async_context(httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300)))
        await skip_unless_subscribable(http, spec, stack.direct_url)
        watcher = await (raw_watcher if client == "raw" else sdk_watcher)(scope, http, stack.url, what)
        if spec is NPM_EVERYTHING:
            await npm_subscription(watcher, events, stack.upstream.restart, what)
        else:
            await sdk_subscription(watcher, events, stack.upstream.restart, what)


class Watcher:
    """A client that subscribes, calls tools, and sees what arrives outside its requests."""

    def __init__(
        self,
        call: Callable[[str, dict[str, Any] | None], Awaitable[dict[str, Any]]],
        received: Callable[[], list[dict[str, Any]]],
        wait_for: Callable[[Callable[[list[dict[str, Any]]], bool], str], Awaitable[None]],
        session_id: str,
    ) -> None:
        self.call = call
        self.received = received
        self.wait_for = wait_for
        self.session_id = session_id

    async def tool(self, name: str, arguments: dict[str, Any]) -> str:
        result = await self.call("tools/call", {"name": name, "arguments": arguments})
        assert not result.get("isError"), f"{name}: {result}"
        texts = [item.get("text") for item in result.get("content", [])]
        assert len(texts) == 1 and isinstance(texts[0], str), f"{name}: {result}"
        return texts[0]

    async def updated(self, uri: str, times: int, what: str) -> None:
        """Wait until ``resources/updated`` for `uri` has arrived `times` times in all."""
        expected = resource_updated(uri)
        await self.wait_for(lambda messages: count(messages, expected) >= times, f"{what}: update #{times} of {uri}")


async def raw_watcher(scope: contextlib.AsyncExitStack, http: httpx2.AsyncClient, url: str, what: str) -> Watcher:
    session = await RawSession.open(http, url)
    get = await session.open_get()
    scope.push_async_callback(get.close)

    async def call(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        return result_of(await session.call(method, params), f"{what}: {method} {params}")

    async def wait_for(done: Callable[[list[dict[str, Any]]], bool], label: str) -> None:
        await get.wait_for(done, label)

    return Watcher(call, lambda: get.messages, wait_for, session.session_id)


async def sdk_watcher(scope: contextlib.AsyncExitStack, http: httpx2.AsyncClient, url: str, what: str) -> Watcher:
    """The official SDK client (legacy mode); the notifications its message handler got."""
    log, received = WireLog(), Notifications()
    client = await scope.enter_async_context(sdk_client(url, "legacy", log, message_handler=received.handler))
    await within(log.get_stream_open.wait(), f"{what}: the SDK client's GET stream")
    (session_id,) = log.session_ids()

    async def call(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        assert params is not None
        with warnings.catch_warnings():  # both are legacy-era features, deprecated as of 2026-07-28
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            if method == "resources/subscribe":
                await client.subscribe_resource(params["uri"])
                return {}
            if method == "logging/setLevel":
                await client.set_logging_level(params["level"])  # pyright: ignore[reportDeprecated]
                return {}
        assert method == "tools/call", method
        result = await client.call_tool(params["name"], params["arguments"])
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    async def wait_for(done: Callable[[list[dict[str, Any]]], bool], label: str) -> None:
        await received.wait_for(done, label)

    return Watcher(call, lambda: received.messages, wait_for, session_id)


async def sdk_subscription(
    watcher: Watcher, events: ProxyEvents, restart: Callable[[], Awaitable[None]], what: str
) -> None:
    """The SDK server: exactly one update per ``touch_resource``, and the session state it restored."""
    assert await watcher.call("resources/subscribe", {"uri": WATCHED}) == {}
    assert await watcher.call("resources/subscribe", {"uri": SENTINEL}) == {}
    assert await watcher.call("logging/setLevel", {"level": "warning"}) == {}
    assert await watcher.tool("touch_resource", {"uri": WATCHED}) == "notified 1 session(s)"
    await watcher.updated(WATCHED, 1, f"{what}: before it")

    mark = await events.mark()
    await restart()
    await wait_stream_resumed(events, mark, what)
    # The upstream session the proxy opened has the client's subscriptions and log level, once.
    state = await watcher.call("tools/call", {"name": "session_state", "arguments": {}})
    expected_state = {"log_level": "warning", "subscriptions": sorted([WATCHED, SENTINEL])}
    assert state.get("structuredContent") == expected_state, f"{what}: the new upstream session's state {state}"
    assert await watcher.tool("touch_resource", {"uri": WATCHED}) == "notified 1 session(s)"
    await watcher.updated(WATCHED, 2, f"{what}: after it")
    assert await watcher.tool("touch_resource", {"uri": SENTINEL}) == "notified 1 session(s)"
    await watcher.updated(SENTINEL, 1, f"{what}: the sentinel")
    assert count(watcher.received(), resource_updated(WATCHED)) == 2, f"{what}: {watcher.received()}"
    recovered = of_type(await events.since(mark), "session_recovered")
    restored = [(e.get("generation"), e.get("restored")) for e in recovered]
    assert restored == [(1, ["initialized", "log_level", "subscriptions:2"])], f"{what}: {brief(recovered)}"


async def npm_subscription(
    watcher: Watcher, events: ProxyEvents, restart: Callable[[], Awaitable[None]], what: str
) -> None:
    """server-everything: its ``toggle-subscriber-updates`` tool starts updates (one at once, then one
    every 5 s) for the calling session's subscriptions, and stops them when called again.

    Its on/off state lives in the server process, per session: after the restart the session the
    proxy opened starts with updates off, so the client toggles again, and the answer says
    "Started" (a replay that ran twice would answer "Stopped"). Updates are periodic, so only their
    arrival is asserted, not their number.
    """
    uri = f"test://subscribed-{uuid.uuid4().hex}"
    assert await watcher.call("resources/subscribe", {"uri": uri}) == {}
    assert (await watcher.tool("toggle-subscriber-updates", {})).startswith("Started"), what
    await watcher.updated(uri, 1, f"{what}: before it")
    assert (await watcher.tool("toggle-subscriber-updates", {})).startswith("Stopped"), what
    updates_before = count(watcher.received(), resource_updated(uri))

    mark = await events.mark()
    await restart()
    await wait_stream_resumed(events, mark, what)
    started = await watcher.tool("toggle-subscriber-updates", {})
    assert started.startswith("Started simulated resource updated notifications for session "), f"{what}: {started}"
    assert watcher.session_id not in started, f"{what}: the upstream session is the client's old one: {started}"
    await watcher.updated(uri, updates_before + 1, f"{what}: after it")
    assert (await watcher.tool("toggle-subscriber-updates", {})).startswith("Stopped"), what
    recovered = of_type(await events.since(mark), "session_recovered")
    restored = [(e.get("generation"), e.get("restored")) for e in recovered]
    assert restored == [(1, ["initialized", "subscriptions:1"])], f"{what}: {brief(recovered)}"
