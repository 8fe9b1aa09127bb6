"""Work a client gave up on is cancelled in the stdio child, under the id the child knows it by.

The child here is ``servers/stdio_recorder.py``: it writes down every message the proxy writes to it,
and what it answers, so a test reads exactly what crossed the pipe. Its ``sleep*`` tools answer after
``seconds`` unless cancelled first.

* A per-try timeout (a rule gives ``sleep`` 300 ms): the client gets the proxy's upstream_timeout, and
  the child reads ``notifications/cancelled`` naming the call by the proxy's id for it.
* Retried attempts (``sleep_retried`` is declared idempotent): every attempt is a call of its own in the
  child, and each is cancelled when it times out.
* A client's own ``notifications/cancelled`` reaches the child renamed to the child's id for the call.

``events.observe_timeouts`` is 0 for these: with it on (the default, 10 s), the proxy keeps a timed-out
attempt's connection open to record when the answer would have come, so the child hears nothing until
then; :func:`test_per_try_timeout_with_default_settings_cancels_in_the_child` shows that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest
import pytest_asyncio
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.e2e.restart_support import within
from tests.e2e.stdio_support import RECORD_ENV, RECORDER_ARGV, Recording, StdioProxy, post_all, start_stdio_proxy
from tests.sdk_helpers import legacy_handshake, legacy_headers

pytestmark = pytest.mark.asyncio(loop_scope="package")

GAVE_UP = "the client gave up on the request"
"""The reason the gateway gives the child when the proxy's side of a call went away."""
RULES = [
    {"match": {"tool": "sleep"}, "timeouts": {"per_try": "300ms"}},
    {
        "match": {"tool": "sleep_retried"},
        "timeouts": {"per_try": "300ms"},
        "idempotent": True,
        "retry": {"max_attempts": 3, "backoff": {"base": "10ms", "max": "50ms"}},
    },
]


async def start_recorder(tmp: Path, *, observe: bool) -> tuple[StdioProxy, Recording]:
    recording = Recording(tmp / "recorded.jsonl")
    top = {"events": {"observe_timeouts": "1s" if observe else 0}}
    upstream = {"env": {RECORD_ENV: str(recording.path)}, "rules": RULES, "health": {"active": {"enabled": False}}}
    proxy = await start_stdio_proxy(RECORDER_ARGV, tmp, upstream=upstream, top=top)
    await proxy.wait_up()
    return proxy, recording


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def recorder(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[StdioProxy, Recording]]:
    proxy, recording = await start_recorder(tmp_path_factory.mktemp("stdio-cancel"), observe=False)
    try:
        yield proxy, recording
    finally:
        await proxy.stop()


def cancelled(request_id: object, reason: str = GAVE_UP) -> dict[str, object]:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": request_id, "reason": reason},
    }


async def test_per_try_timeout_cancels_the_call_in_the_child(recorder: tuple[StdioProxy, Recording]) -> None:
    proxy, recording = recorder
    async with Client(proxy.url, mode="legacy") as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("sleep", {"seconds": 30, "tag": "per-try"})
    error = raised.value.error
    assert (error.code, error.message) == (-32051, "upstream did not answer within 0.3s"), error
    assert error.data == {"reason": "upstream_timeout", "upstream": "default"}
    [child_id] = recording.call_ids("per-try")
    await recording.wait_for(lambda: bool(recording.cancellations(child_id)), "the child told of the timeout")
    assert recording.cancellations(child_id) == [cancelled(child_id)]
    assert recording.answers(child_id) == []


async def test_each_retried_attempt_is_cancelled(recorder: tuple[StdioProxy, Recording]) -> None:
    proxy, recording = recorder
    async with Client(proxy.url, mode="2026-07-28") as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("sleep_retried", {"seconds": 30, "tag": "retried"})
    assert raised.value.error.code == -32051, raised.value.error
    child_ids = recording.call_ids("retried")
    assert len(child_ids) == 3 and len(set(child_ids)) == 3, child_ids
    await recording.wait_for(
        lambda: all(recording.cancellations(i) for i in child_ids), "every attempt cancelled in the child"
    )
    assert [recording.cancellations(i) for i in child_ids] == [[cancelled(i)] for i in child_ids]


async def test_client_cancellation_reaches_the_child_renamed(
    recorder: tuple[StdioProxy, Recording],
) -> None:
    """A legacy client cancels its request 7: the child reads the cancellation of its own id for it,
    with the client's reason."""
    proxy, recording = recorder
    async with httpx2.AsyncClient(timeout=30) as http:
        session = await legacy_handshake(http, proxy.url)
        params = {"name": "sleep_long", "arguments": {"seconds": 30, "tag": "client-cancel"}}
        body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
        call = asyncio.ensure_future(post_all(http, proxy.url, body, legacy_headers(session)))
        try:
            await recording.wait_for(lambda: bool(recording.call_ids("client-cancel")), "the call in the child")
            [child_id] = recording.call_ids("client-cancel")
            notice = {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": 7, "reason": "stop"},
            }
            status, messages = await post_all(http, proxy.url, notice, legacy_headers(session))
            assert (status, messages) == (202, [])
            await recording.wait_for(lambda: bool(recording.cancellations(child_id)), "the cancellation in the child")
            assert recording.cancellations(child_id) == [cancelled(child_id, "stop")]
            assert recording.answers(child_id) == []
        finally:
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)


async def test_a_watched_timeout_is_cancelled_in_the_child_when_its_watch_ends(tmp_path: Path) -> None:
    """`events.observe_timeouts` on (here 1 s, 10 s by default): the proxy keeps watching the timed-out
    request for the analyzer's evidence, so the child is told to cancel when the watch ends unanswered
    (docs/stdio.md, "Timeouts and cancellation"), never answered to anyone meanwhile."""
    proxy, recording = await start_recorder(tmp_path, observe=True)
    try:
        async with Client(proxy.url, mode="legacy") as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("sleep", {"seconds": 30, "tag": "observed"})
        assert raised.value.error.code == -32051, raised.value.error
        [child_id] = recording.call_ids("observed")
        await recording.wait_for(
            lambda: bool(recording.cancellations(child_id) or recording.answers(child_id)),
            "the cancellation or the child's answer",
        )
        assert recording.answers(child_id) == []
        assert recording.cancellations(child_id) == [cancelled(child_id)]
    finally:
        await within(proxy.stop(), "the proxy stopped")
