"""A 2026-07-28 ``subscriptions/listen`` through the proxy outlives its server's restart.

The official SDK client (``mcp`` 2.3, ``Client.listen``) listens through the proxy (a subprocess, as a user
runs it) to the SDK server of ``tests/servers/everything.py``; the server is killed (SIGKILL: every
connection reset) and started again on the same port. Without the proxy's resumption the client's
subscription would end in ``SubscriptionLost``; through it, the same subscription goes on: it first hears
the refetch notices the proxy sends for what its filter covers (what changed while nobody listened is
never replayed), then a notification the restarted server sends, and the proxy counts one resumption.
"""

from __future__ import annotations

import asyncio
from typing import Final

import pytest
from mcp import Client
from mcp.client.subscriptions import ResourceUpdated, ServerEvent, Subscription, ToolsListChanged
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.admin import UPSTREAM, admin_get
from tests.e2e.conftest import StackFactory
from tests.e2e.upstreams import SDK, SDK_MODE

pytestmark = pytest.mark.asyncio(loop_scope="package")

WATCHED: Final = "test://watched-resource"
"""The resource ``test_watched_resource_update`` announces as updated."""
WAIT_S: Final = 30.0
"""Bound on each wait for an event (the server restarts within seconds; the proxy re-issues within 2 s of it)."""


async def next_event(events: Subscription) -> ServerEvent:
    async with asyncio.timeout(WAIT_S):
        return await anext(events)


async def resumed_listens(admin_url: str) -> float:
    """``mcp_proxy_streams_resumed_total`` of the upstream's listen streams."""
    response = await admin_get(admin_url, "/metrics")
    assert response.status_code == 200, response.text
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "mcp_proxy_streams_resumed_total" and sample.labels == {"upstream": UPSTREAM, "stream": "listen"}:
                return sample.value
    return 0.0


async def test_an_sdk_clients_listen_outlives_the_servers_restart(stack_for: StackFactory) -> None:
    stack = await stack_for(SDK, own_server=True)
    async with Client(stack.url, mode=SDK_MODE["modern"]) as client:
        async with client.listen(tools_list_changed=True, resource_subscriptions=[WATCHED]) as subscription:
            events = aiter(subscription)
            await client.call_tool("test_watched_resource_update", {})
            assert await next_event(events) == ResourceUpdated(uri=WATCHED)

            await stack.upstream.restart()
            # The proxy re-issued the listen to the new server: the client hears, once each, what to refetch.
            notices = [await next_event(events), await next_event(events)]
            assert notices == [ToolsListChanged(), ResourceUpdated(uri=WATCHED)]

            # The same subscription hears what the restarted server announces (the client routes a listen
            # event by the subscription id in it: the re-issue kept the listen's JSON-RPC id).
            await client.call_tool("test_watched_resource_update", {})
            assert await next_event(events) == ResourceUpdated(uri=WATCHED)
    assert await resumed_listens(stack.admin_url) == 1.0
    assert stack.upstream.starts == 2
