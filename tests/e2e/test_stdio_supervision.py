"""A stdio child killed (SIGKILL) under the proxy: calls in flight, the restart, the clients after it.

The proxy supervises its child: a child that dies is started again after a backoff and initialized
again, and the clients' sessions (the proxy's own) outlive it. A call the dead child was running has
its answer cut off, exactly as a crashed HTTP server's would be; the proxy then does what it does for
any upstream: a call that may be retried (here a tool a rule declares idempotent) is tried again on the
new child, and anything else gets the proxy's error, never a silent second execution.

The SDK 2.3 everything server is the child, behind ``serve --config`` with one rule (``slow`` is
idempotent), a short restart backoff, and active health probes off: a probe's ``ping`` would otherwise
count as a request in flight in ``/status``, which is how a test knows its call is in the child before
it kills it. The pid comes from ``/status`` (``upstreams.default.stdio.pid``), as an operator reads it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import (
    PromptListChangedNotification,
    ResourceListChangedNotification,
    TextContent,
    ToolListChangedNotification,
)

from tests.e2e.admin import retries
from tests.e2e.restart_support import within
from tests.e2e.stdio_support import SDK_STDIO, StdioProxy, start_stdio_proxy, wait_gone
from tests.sdk_helpers import HttpLog, recorded_transport

pytestmark = pytest.mark.asyncio(loop_scope="package")


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def proxy(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StdioProxy]:
    upstream = {
        "child": {"restart_backoff": {"base": "100ms", "max": "1s"}},
        "health": {"active": {"enabled": False}},
        "rules": [{"match": {"tool": "slow"}, "idempotent": True}],
    }
    started = await start_stdio_proxy(SDK_STDIO.argv(), tmp_path_factory.mktemp("stdio-supervision"), upstream=upstream)
    try:
        await started.wait_up()
        yield started
    finally:
        await started.stop()


def text_of(content: Any) -> str:
    assert isinstance(content, TextContent), content
    return content.text


async def kill_child(proxy: StdioProxy, *, in_flight: int | None = None) -> dict[str, Any]:
    """SIGKILL the child (once `in_flight` calls are in it, when given); its ``/status`` entry from before."""
    if in_flight is not None:
        before = await proxy.wait_child(lambda c: c["in_flight"] == in_flight, f"{in_flight} call(s) in the child")
    else:
        before = await proxy.wait_up()
    os.kill(before["pid"], signal.SIGKILL)
    return before


async def wait_restarted(proxy: StdioProxy, before: dict[str, Any]) -> dict[str, Any]:
    """The child's entry once it is up again after `before`: one more restart, a new pid."""
    after = await proxy.wait_child(
        lambda c: (
            c["state"] == "up" and c["restarts"] == before["restarts"] + 1 and c["pid"] not in (None, before["pid"])
        ),
        "the child restarted once",
    )
    await wait_gone([before["pid"]], "the killed child reaped")
    return after


async def test_non_idempotent_call_in_flight_gets_an_error(proxy: StdioProxy) -> None:
    """``held`` (not declared idempotent; annotations are not trusted by default) is running in the child
    when it is killed: the client gets the proxy's upstream_unavailable error, once, and the next call
    is answered by the new child."""
    async with Client(proxy.url, mode="legacy") as client:
        call = asyncio.ensure_future(client.call_tool("held", {"key": "never-released"}))
        try:
            before = await kill_child(proxy, in_flight=1)
            with pytest.raises(MCPError) as raised:
                await within(call, "the cut-off call answered")
        finally:
            call.cancel()
        after = await wait_restarted(proxy, before)
        error = raised.value.error
        assert (error.code, error.data) == (-32050, {"reason": "upstream_unavailable", "upstream": "default"}), error
        assert error.message == "upstream connection failed: ConnectionBroken: upstream closed the connection"
        assert (after["last_exit"], after["last_error"]) == ({"signal": "SIGKILL"}, "the child was killed by SIGKILL")
        result = await client.call_tool("lookup", {"key": "beta"})
        assert [text_of(c) for c in result.content] == ["2"]
        counts = await client.call_tool("call_counts", {})
        assert counts.structured_content == {"lookup": 1}, "the new child ran held again"


async def test_streaming_call_in_flight_gets_a_broken_stream_error(proxy: StdioProxy) -> None:
    """``held`` with a progress token: its answer is already a stream (its first progress reached the
    client) when the child is killed, so nothing can be retried: the stream ends with the proxy's error."""
    holding = asyncio.Event()
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)
        holding.set()

    async with Client(proxy.url, mode="legacy") as client:
        call = asyncio.ensure_future(client.call_tool("held", {"key": "streaming"}, progress_callback=on_progress))
        try:
            await within(holding.wait(), "held's first progress at the client")
            before = await kill_child(proxy, in_flight=1)
            with pytest.raises(MCPError) as raised:
                await within(call, "the cut-off stream answered")
        finally:
            call.cancel()
        await wait_restarted(proxy, before)
        error = raised.value.error
        assert (error.code, error.data) == (-32056, {"reason": "upstream_stream_broken", "upstream": "default"}), error
        assert error.message == "upstream stream broke: ConnectionBroken: upstream closed the connection"
        assert seen == [1.0]


async def test_idempotent_call_in_flight_is_retried_on_the_new_child(proxy: StdioProxy) -> None:
    """``slow`` (a rule declares it idempotent) is running in the child when it is killed: the proxy
    retries it on the restarted child and the client gets the answer, not an error."""
    retried_before = await retries(proxy.admin_url)
    async with Client(proxy.url, mode="legacy") as client:
        call = asyncio.ensure_future(client.call_tool("slow", {"seconds": 0.4}))
        try:
            before = await kill_child(proxy, in_flight=1)
            result = await within(call, "the retried call answered")
        finally:
            call.cancel()
        after = await wait_restarted(proxy, before)
        assert not result.is_error, result
        assert [text_of(c) for c in result.content] == ["slept 0.4"]
        counts = await client.call_tool("call_counts", {})
        assert counts.structured_content == {"slow": 1}, "slow ran once on the new child"
    retried = await retries(proxy.admin_url)
    delta = {kind: n - retried_before.get(kind, 0.0) for kind, n in retried.items() if n != retried_before.get(kind)}
    assert delta == {"connection_lost": 1.0}, (retried_before, retried)
    assert after["generation"] == before["generation"] + 1


async def test_sessions_survive_a_restart(proxy: StdioProxy) -> None:
    """A legacy SDK client (and a 2026-07-28 one) goes on with the same client object across a restart:
    no new initialize, the same session; its GET stream hears that every list may have changed."""
    notifications: list[Any] = []
    changed = asyncio.Event()

    async def on_message(message: Any) -> None:
        notifications.append(message)
        changed.set()

    log = HttpLog()
    async with (
        Client(recorded_transport(proxy.url, log), mode="legacy", message_handler=on_message) as legacy,
        Client(proxy.url, mode="2026-07-28") as modern,
    ):
        assert [text_of(c) for c in (await legacy.call_tool("lookup", {"key": "alpha"})).content] == ["1"]
        assert [text_of(c) for c in (await modern.call_tool("lookup", {"key": "alpha"})).content] == ["1"]
        await within(log.get_stream_open.wait(), "the legacy client's GET stream open")
        before = await kill_child(proxy)
        await wait_restarted(proxy, before)
        kinds = {ToolListChangedNotification, PromptListChangedNotification, ResourceListChangedNotification}

        async def all_changed() -> None:
            while not kinds <= {type(n) for n in notifications}:
                changed.clear()
                await changed.wait()

        await within(all_changed(), "tools, prompts and resources list_changed on the GET stream")
        assert [text_of(c) for c in (await legacy.call_tool("lookup", {"key": "gamma"})).content] == ["3"]
        assert [text_of(c) for c in (await modern.call_tool("lookup", {"key": "gamma"})).content] == ["3"]
    posts = log.by_method("POST")
    assert len(log.session_ids()) == 1, log.session_ids()
    assert [e.status for e in log.exchanges if e.status >= 400] == [], log.exchanges
    initializes = [e for e in posts if e.session_id is None]
    assert len(initializes) == 1, "the client initialized again"
