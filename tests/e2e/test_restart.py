"""A real server restarts in place (killed, started again on the same port) while the proxy runs.

Every session the server had is gone, and so is every connection the proxy pooled to it. Each test
has a server instance of its own, so the restart touches nothing else.

* Legacy era: the clients left holding the old session (raw HTTP and SDK) get the server's own
  answer for a session it does not know, :data:`~tests.e2e.wire.REPEAT` times in a row, compared
  with clients talking to the server directly that were left in the same state; a client that
  opens a new session through the proxy works; and the proxy's first health probe after the
  restart succeeds (a probe stuck on a session from before the restart would pull ``/readyz``
  a few probes later).
* 2026-07-28 era: nothing is stateful, so the SDK client that was working before the restart just
  keeps working through the proxy, call after call, and a raw request gets what it gets direct.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx2
import pytest
from mcp import Client

from tests.e2e.admin import assert_upstream_fine, wait_for_probe_after
from tests.e2e.conftest import StackFactory
from tests.e2e.upstreams import Era, SDK_MODE, SERVER_ERAS, ServerSpec
from tests.e2e.wire import (
    REPEAT,
    good_call,
    modern_request,
    open_sdk_pair,
    raw_burst,
    request,
    sdk_burst,
)
from tests.sdk_helpers import legacy_handshake, legacy_headers

pytestmark = pytest.mark.asyncio(loop_scope="package")



@pytest.mark.parametrize(("spec", "era"), SERVER_ERAS)
async def test_server_restart(spec: ServerSpec, era: Era, stack_for: StackFactory) -> None:
    stack = await stack_for(spec, own_server=True)
    call = spec.good_call
    what = f"{spec}/{era} after a server restart"
    async with contextlib.AsyncExitStack() as scope:
        http = await scope.enter_async_context(httpx2.AsyncClient(timeout=30))
        if era == "modern":
            good = await scope.enter_async_context(Client(stack.url, mode=SDK_MODE[era]))
            await good_call(good, call, f"{spec}/{era}: the good client before the restart")
            await stack.upstream.restart()
            for i in range(REPEAT):
                await good_call(good, call, f"the good client's call #{i + 1} {what}")

            def build_call(i: int, via_proxy: bool) -> tuple[dict[str, Any], dict[str, str]]:
                return modern_request(
                    "tools/call", {"name": call.tool, "arguments": call.arguments}, 400 + i, call.tool
                )

            await raw_burst(http, stack.url, stack.direct_url, build_call, what)
            await assert_upstream_fine(stack.admin_url, what, retries_allowed=True)
            return

        sessions = {
            True: await legacy_handshake(http, stack.url),
            False: await legacy_handshake(http, stack.direct_url),
        }
        left_over = await open_sdk_pair(scope, stack.url, stack.direct_url, "legacy")
        await good_call(left_over.proxied, call, f"{spec}/{era}: the SDK client before the restart")
        await stack.upstream.restart()
        restarted = time.monotonic()

        # The first request through the proxy after the restart: a left-over session's tools/call.
        await sdk_burst(left_over, lambda c: c.call_tool(call.tool, call.arguments), f"left-over session {what}")

        def build(i: int, via_proxy: bool) -> tuple[dict[str, Any], dict[str, str]]:
            return request("tools/list", None, 500 + i), legacy_headers(sessions[via_proxy])

        await raw_burst(http, stack.url, stack.direct_url, build, f"left-over session {what}")
        fresh = await scope.enter_async_context(Client(stack.url, mode="legacy"))
        for i in range(REPEAT):
            await good_call(fresh, call, f"a new session's call #{i + 1} {what}")
        probe = await wait_for_probe_after(stack.admin_url, restarted)
        assert probe["result"] == "ok", f"{what}: the first health probe after the restart: {probe}"
        await assert_upstream_fine(stack.admin_url, what, retries_allowed=True)
