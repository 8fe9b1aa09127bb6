"""Legacy session recovery through a real proxy (in-process) in front of a server that restarts
(`tests.session_upstream`): the client keeps its session id and never initializes again, the request that
met the loss runs exactly once upstream, on a session rebuilt with the client's own state; what cannot be
recovered is said to the client, never papered over. Each test counts what reached the upstream, per
session and per tool, and compares the proxy's session events field by field."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from proxy.app import ProxyServer, running_proxy
from tests.conftest import proxy_config
from tests.session_upstream import LegacyClient, SessionUpstream, brief, metric, session_events

Servers = Callable[..., Awaitable[SessionUpstream]]


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    made: list[SessionUpstream] = []

    async def make(**knobs: Any) -> SessionUpstream:
        server = SessionUpstream(**knobs)
        await server.start()
        made.append(server)
        return server

    yield make
    for server in made:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def proxied(server: SessionUpstream, **upstream: Any) -> Any:
    return running_proxy(proxy_config(server.url, upstream=upstream, events={"summary_interval": "1h"}))


def client(http: aiohttp.ClientSession, proxy: ProxyServer, name: str = "a") -> LegacyClient:
    return LegacyClient(http, proxy.url + "/mcp", name)


def kept(proxy: ProxyServer) -> int:
    """How many sessions the proxy keeps for the upstream."""
    return len(proxy.runtime.current.states["up"].sessions.table)


def noticed(proxy: ProxyServer) -> None:
    """The proxy noticed the restart (a stream broke, a session was lost): what it has no other way to
    learn of a server that restarted silently, between two requests, and numbers its sessions from 1 again."""
    proxy.runtime.current.states["up"].sessions.table.note_outage()


async def restart(server: SessionUpstream, hard: bool) -> None:
    if hard:
        await server.restart_hard()
    else:
        server.restart()


# -- a call after a restart -------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["sdk", "everything"])
@pytest.mark.parametrize("answer", ["json", "sse"])
@pytest.mark.parametrize("hard", [False, True], ids=["forgets", "restarts"])
async def test_a_call_after_a_restart_runs_once_on_a_rebuilt_session_and_the_client_never_sees_the_loss(
    servers: Servers, http: aiohttp.ClientSession, loss: str, answer: str, hard: bool
) -> None:
    server = await servers(loss=loss, answer=answer)
    async with proxied(server) as proxy:
        a = client(http, proxy)
        first_id = await a.initialize()
        assert first_id == server.opened[0]  # the client keeps the upstream's own id
        assert (await a.call("add", n=1)).text == f"add #1 on {first_id} for a"
        original = server.sessions[first_id]
        await restart(server, hard)

        replayed = await a.call("add", n=2)
        assert replayed.status == 200
        rebuilt_id = server.opened[1]
        assert replayed.text == f"add #1 on {rebuilt_id} for a"
        assert a.session_id == first_id != rebuilt_id
        # Exactly one run of each call, each on its own session; one initialize by the client, one by the proxy.
        assert server.runs == {(first_id, "add"): 1, (rebuilt_id, "add"): 1}
        assert server.initialize_requests == 2
        # The request that met the loss reached the server once, on the dead session.
        lost = [seen for seen in server.seen if not seen.known and seen.session is not None]
        assert [(seen.session, seen.method, seen.tool) for seen in lost] == [(first_id, "tools/call", "add")]
        # The rebuild: the client's own initialize (no session id), then initialized, then the replay.
        on_rebuilt = server.seen[-3:]
        assert [(seen.session, seen.method) for seen in on_rebuilt] == [
            (None, "initialize"), (rebuilt_id, "notifications/initialized"), (rebuilt_id, "tools/call"),
        ]  # fmt: skip
        assert on_rebuilt[1].headers["MCP-Protocol-Version"] == "2025-06-18"
        session = server.sessions[rebuilt_id]
        assert session.initialize["params"] == original.initialize["params"]
        assert session.initialized and session.notifications == ["notifications/initialized"]

        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/call", "recovering", None),
            ("session_recovered", "tools/call", 1, ["initialized"]),
        ]
        recovered = session_events(proxy.bus)[1]
        assert recovered["upstream"] == "up" and recovered["tool"] == "add" and recovered["recovery_ms"] >= 0

        # The client's id keeps working, on the rebuilt session, with nothing more to rebuild.
        assert (await a.call("add", n=3)).text == f"add #2 on {rebuilt_id} for a"
        assert server.initialize_requests == 2 and len(session_events(proxy.bus)) == 2


async def test_a_read_after_a_restart_is_replayed_too(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        listed = await a.request("tools/list")
        assert listed.status == 200 and listed.result["tools"][0]["name"] == "add"
        assert [brief(event)[:2] for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/list"), ("session_recovered", "tools/list"),
        ]  # fmt: skip


async def test_a_second_restart_rebuilds_again_with_the_next_generation(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        for round in (1, 2):
            server.restart()
            assert (await a.call("add")).text == f"add #1 on {server.opened[round]} for a"
        generations = [event["generation"] for event in session_events(proxy.bus) if event["type"] == "session_recovered"]
        assert generations == [1, 2]
        assert server.tool_runs["add"] == 2


# -- what the client set is restored ---------------------------------------------------------------


@pytest.mark.parametrize("answer", ["json", "sse"])
async def test_the_log_level_and_the_subscriptions_are_restored_but_not_an_unsubscribed_one(
    servers: Servers, http: aiohttp.ClientSession, answer: str
) -> None:
    server = await servers(answer=answer)
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        assert (await a.request("logging/setLevel", {"level": "debug"})).status == 200
        assert (await a.request("logging/setLevel", {"level": "warning"})).status == 200  # the last one counts
        for uri in ("file:///one", "file:///two", "file:///three"):
            assert (await a.request("resources/subscribe", {"uri": uri})).status == 200
        assert (await a.request("resources/unsubscribe", {"uri": "file:///two"})).status == 200
        server.restart()

        assert (await a.call("add")).status == 200
        rebuilt = server.sessions[server.opened[1]]
        assert rebuilt.log_level == "warning"
        assert rebuilt.subscriptions == {"file:///one", "file:///three"}
        sent = [(seen.method, seen.session) for seen in server.seen if seen.session == rebuilt.id or seen.method == "initialize"]
        assert sent[-6:] == [
            ("initialize", None),
            ("notifications/initialized", rebuilt.id),
            ("logging/setLevel", rebuilt.id),
            ("resources/subscribe", rebuilt.id),
            ("resources/subscribe", rebuilt.id),
            ("tools/call", rebuilt.id),
        ]
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/call", "recovering", None),
            ("session_recovered", "tools/call", 1, ["initialized", "log_level", "subscriptions:2"]),
        ]
        assert server.tool_runs["add"] == 1


@pytest.mark.parametrize(
    "answer",
    [
        "json",
        "sse",
    ],
)
async def test_a_refused_set_level_does_not_replace_the_level_restored(
    servers: Servers, http: aiohttp.ClientSession, answer: str
) -> None:
    server = await servers(answer=answer)
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        assert (await a.request("logging/setLevel", {"level": "debug"})).status == 200
        refused = await a.request("logging/setLevel", {"level": "loudest"})
        assert refused.message["error"]["code"] == -32602
        server.restart()
        assert (await a.call("add")).status == 200
        assert server.sessions[server.opened[1]].log_level == "debug"
        assert session_events(proxy.bus)[-1]["restored"] == ["initialized", "log_level"]


# -- many requests meet one loss -------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["sdk", "everything"])
async def test_ten_concurrent_requests_meeting_one_loss_share_one_rebuild_and_each_runs_once(
    servers: Servers, http: aiohttp.ClientSession, loss: str
) -> None:
    server = await servers(loss=loss)
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        server.hold_losses = 10  # every one of them meets the loss before any is answered

        answers = await asyncio.gather(*(a.call("add", n=n) for n in range(10)))
        assert [answer.status for answer in answers] == [200] * 10
        rebuilt_id = server.opened[1]
        assert server.initialize_requests == 2 and len(server.opened) == 2
        assert sorted(run.arguments["n"] for run in server.executed) == list(range(10))
        assert {run.session for run in server.executed} == {rebuilt_id}
        assert server.runs == {(rebuilt_id, "add"): 10}
        assert sum(1 for seen in server.seen if seen.method == "tools/call" and not seen.known) == 10
        events = [brief(event) for event in session_events(proxy.bus)]
        assert events.count(("session_lost", "tools/call", "recovering", None)) == 10
        assert events.count(("session_recovered", "tools/call", 1, ["initialized"])) == 10
        assert len(events) == 20


# -- what cannot be recovered is said ---------------------------------------------------------------


@pytest.mark.parametrize("change", ["version_changed", "capabilities_changed"])
async def test_a_server_that_answers_differently_after_its_restart_is_a_session_loss_for_the_client(
    servers: Servers, http: aiohttp.ClientSession, change: str
) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        assert (await a.call("add")).status == 200
        server.restart()
        if change == "version_changed":
            server.protocol = "2025-03-26"
        else:
            server.capabilities["prompts"] = {}

        lost = await a.call("add")
        assert lost.status == 404
        assert lost.headers["X-Mcp-Proxy-Error"] == "session_lost"
        error = lost.message["error"]
        assert lost.message["id"] == 2 + 1  # initialize was 1, the first call 2
        assert error["code"] == -32600
        assert error["data"] == {"reason": "session_lost", "upstream": "up", "cause": change}
        assert server.tool_runs["add"] == 1  # never run on the session that is not the client's
        new_id = server.opened[1]
        await server.until(lambda: server.deleted == [new_id])  # the proxy ended the session it could not use
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/call", "recovering", None),
            ("session_lost", "tools/call", "failed", change),
        ]

        # From then on the proxy answers the same at once: nothing reaches the upstream.
        reached = len(server.seen)
        again = await a.call("add")
        assert again.status == 404 and again.message["error"]["data"]["cause"] == change
        assert again.message["id"] == 4
        assert await a.notify("notifications/roots/list_changed") == 404
        async with http.get(a.url, headers={"Mcp-Session-Id": a.session_id or "", "Accept": "text/event-stream"}) as stream:
            assert stream.status == 404
            assert json.loads(await stream.read())["error"]["data"]["reason"] == "session_lost"
        assert len(server.seen) == reached
        assert server.initialize_requests == 2


async def test_an_upstream_still_starting_fails_the_call_with_a_proxy_error_and_the_next_call_recovers(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        first_id = await a.initialize()
        server.restart()
        server.fail_initialize = 1

        failed = await a.call("add", n=1)
        assert 500 <= failed.status < 600 and failed.status != 404
        assert failed.message["id"] == 2 and failed.message["error"]["code"] != -32600
        assert "X-Mcp-Proxy-Error" in failed.headers
        assert server.tool_runs["add"] == 0
        assert kept(proxy) == 1  # the session is kept: the next call tries again

        recovered = await a.call("add", n=2)
        assert recovered.status == 200 and recovered.text == f"add #1 on {server.opened[1]} for a"
        assert a.session_id == first_id
        assert server.initialize_requests == 3  # the client's, the refused one, the rebuild
        assert [run.arguments for run in server.executed] == [{"n": 2}]
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/call", "recovering", None),
            ("session_lost", "tools/call", "failed", "upstream_failed"),
            ("session_lost", "tools/call", "recovering", None),
            ("session_recovered", "tools/call", 1, ["initialized"]),
        ]


async def test_a_session_lost_more_than_three_times_a_minute_is_passed_to_its_client(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        for round in (1, 2, 3):
            server.restart()
            assert (await a.call("add")).text == f"add #1 on {server.opened[round]} for a"
        server.restart()

        passed = await a.call("add")
        assert passed.status == 404
        assert passed.message == {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}
        assert "X-Mcp-Proxy-Error" not in passed.headers
        assert server.tool_runs["add"] == 3 and server.initialize_requests == 4
        assert brief(session_events(proxy.bus)[-1]) == ("session_lost", "tools/call", "failed", "too_frequent")


@pytest.mark.parametrize("loss", ["sdk", "everything"])
async def test_with_recovery_off_the_upstream_loss_reaches_the_client_unchanged(
    servers: Servers, http: aiohttp.ClientSession, loss: str
) -> None:
    server = await servers(loss=loss)
    async with proxied(server, sessions={"recovery": False}) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        passed = await a.call("add")
        if loss == "sdk":
            assert passed.status == 404 and passed.message["error"]["message"] == "Session not found"
        else:
            assert passed.status == 400
            assert passed.message == {
                "jsonrpc": "2.0", "error": {"code": -32000, "message": "Bad Request: No valid session ID provided"},
            }  # fmt: skip
        assert "X-Mcp-Proxy-Error" not in passed.headers
        assert server.initialize_requests == 1 and server.tool_runs["add"] == 0
        assert [brief(event) for event in session_events(proxy.bus)] == [("session_lost", "tools/call", "off", None)]
        assert kept(proxy) == 0


async def test_a_session_the_proxy_never_saw_passes_through_unchanged(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        # Made at the upstream directly (as before the proxy started): it works through the proxy as it is.
        direct = LegacyClient(http, server.url, "direct")
        direct_id = await direct.initialize()
        direct.url = proxy.url + "/mcp"
        assert (await direct.call("add")).text == f"add #1 on {direct_id} for direct"

        stranger = client(http, proxy)
        stranger.session_id = "made-up"
        passed = await stranger.call("add")
        assert passed.status == 404 and passed.message["error"]["message"] == "Session not found"
        assert "X-Mcp-Proxy-Error" not in passed.headers
        assert [(seen.session, seen.known) for seen in server.seen[-1:]] == [("made-up", False)]
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/call", "unknown_session", None)
        ]
        assert server.initialize_requests == 1 and kept(proxy) == 0


# -- two clients, one id ----------------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["json", "sse"])
async def test_a_new_client_given_an_id_an_old_client_still_uses_gets_another_and_each_runs_on_its_own_session(
    servers: Servers, http: aiohttp.ClientSession, answer: str
) -> None:
    server = await servers(ids="sequential", answer=answer)
    async with proxied(server) as proxy:
        old = client(http, proxy, "old")
        assert await old.initialize() == "s1"
        server.restart()
        noticed(proxy)
        new = client(http, proxy, "new")
        await new.initialize()
        assert server.opened == ["s1", "s1"]
        assert new.session_id != "s1"  # the proxy's own id: "s1" is the old client's here

        assert (await new.call("add")).text == "add #1 on s1 for new"
        assert (await new.call("add")).text == "add #2 on s1 for new"
        assert [(run.session, run.client) for run in server.executed] == [("s1", "new"), ("s1", "new")]
        assert kept(proxy) == 2


async def test_an_old_client_whose_id_the_restarted_server_gave_to_a_new_client_never_runs_in_its_session(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers(ids="sequential")
    async with proxied(server) as proxy:
        old = client(http, proxy, "old")
        await old.initialize()
        server.restart()
        noticed(proxy)
        new = client(http, proxy, "new")
        await new.initialize()  # the server's "s1" again, now the new client's
        answer = await old.call("add", who="old")
        assert answer.status == 200
        # (who called, whose session it ran in)
        assert [(run.arguments["who"], run.client) for run in server.executed] == [("old", "old")]


async def test_a_rebuild_given_the_id_another_client_still_routes_to_never_mixes_the_two(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers(ids="sequential")
    async with proxied(server) as proxy:
        first, second = client(http, proxy, "first"), client(http, proxy, "second")
        assert (await first.initialize(), await second.initialize()) == ("s1", "s2")
        server.restart()
        assert (await second.call("add", who="second")).text == "add #1 on s1 for second"  # rebuilt as the new "s1"
        await first.call("add", who="first")
        assert [(run.arguments["who"], run.client) for run in server.executed] == [
            ("second", "second"), ("first", "first"),
        ]  # fmt: skip


# -- what is not a request ------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["sdk", "everything"])
async def test_a_notification_after_a_restart_is_sent_again_on_the_rebuilt_session(
    servers: Servers, http: aiohttp.ClientSession, loss: str
) -> None:
    server = await servers(loss=loss)
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        assert await a.notify("notifications/roots/list_changed") == 202
        rebuilt = server.sessions[server.opened[1]]
        assert rebuilt.notifications == ["notifications/initialized", "notifications/roots/list_changed"]
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "notifications/roots/list_changed", "recovering", None),
            ("session_recovered", "notifications/roots/list_changed", 1, ["initialized"]),
        ]


async def test_a_clients_answer_to_a_request_of_the_lost_session_is_dropped(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        first_id = await a.initialize()
        server.restart()
        answer = await a.post({"jsonrpc": "2.0", "id": "server-7", "result": {"roots": []}})
        assert answer.status == 202 and answer.body == b""
        sent = [seen for seen in server.seen if seen.session is not None and seen.method is None and seen.http == "POST"]
        assert [(seen.session, seen.request_id, seen.known) for seen in sent] == [(first_id, "server-7", False)]
        assert server.initialize_requests == 1  # nothing rebuilt for an answer nobody waits for
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "POST", "failed", "answers_a_lost_request")
        ]
        # The next request rebuilds the session as usual.
        assert (await a.call("add")).status == 200 and server.initialize_requests == 2


# -- ending and forgetting ---------------------------------------------------------------------------


async def test_delete_ends_the_session_on_both_sides(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        admin = proxy.admin_url
        a = client(http, proxy)
        first_id = await a.initialize()
        assert await metric(http, admin, "mcp_proxy_sessions", upstream="up") == 1.0
        assert await a.delete() == 200
        assert server.deleted == [first_id]
        assert await metric(http, admin, "mcp_proxy_sessions", upstream="up") == 0.0
        # The id is nobody's now: it passes through as any unknown one.
        passed = await a.call("add")
        assert passed.status == 404 and "X-Mcp-Proxy-Error" not in passed.headers
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/call", "unknown_session", None)
        ]
        assert server.initialize_requests == 1


async def test_delete_of_a_rebuilt_session_ends_the_upstreams_current_one(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        assert (await a.call("add")).status == 200
        assert await a.delete() == 200
        assert server.deleted == [server.opened[1]]
        assert kept(proxy) == 0


async def test_delete_after_a_restart_forgets_the_session_without_rebuilding_it(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        assert await a.delete() == 404  # the server's answer: the session is gone either way
        assert kept(proxy) == 0 and server.initialize_requests == 1


async def test_past_max_sessions_the_least_recently_used_is_forgotten_and_still_works_as_a_plain_session(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server, sessions={"max_sessions": 3}) as proxy:
        a, b, c, d = (client(http, proxy, name) for name in "abcd")
        for each in (a, b, c):
            await each.initialize()
        assert (await a.call("add")).status == 200  # a is used again: b is the least recently used
        await d.initialize()
        assert kept(proxy) == 3
        assert await metric(http, proxy.admin_url, "mcp_proxy_sessions", upstream="up") == 3.0
        # Forgotten, b's session still works through the proxy: the upstream knows it.
        assert (await b.call("add")).text == f"add #1 on {b.session_id} for b"

        server.restart()
        for each in (a, c, d):
            assert (await each.call("add")).status == 200
        lost = await b.call("add")
        assert lost.status == 404 and "X-Mcp-Proxy-Error" not in lost.headers
        outcomes = [(event["type"], event.get("recovery")) for event in session_events(proxy.bus)]
        assert outcomes.count(("session_recovered", None)) == 3
        assert outcomes[-1] == ("session_lost", "forgotten")  # kept once, forgotten to make room: the bound at work


async def test_a_forgotten_rebuilt_session_is_ended_upstream(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server, sessions={"max_sessions": 1}) as proxy:
        a, b = client(http, proxy, "a"), client(http, proxy, "b")
        await a.initialize()
        server.restart()
        assert (await a.call("add")).status == 200
        rebuilt_id = server.opened[1]
        await b.initialize()  # a is forgotten; only the proxy could route it, so it ends it upstream
        await server.until(lambda: server.deleted == [rebuilt_id])
        assert [seen.session for seen in server.seen if seen.http == "DELETE"] == [rebuilt_id]
        # a's id now reaches the upstream as it is, a session it no longer has.
        assert (await a.call("add")).status == 404
        assert server.tool_runs["add"] == 1


async def test_a_draining_proxy_ends_the_sessions_only_it_could_route(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a, b = client(http, proxy, "a"), client(http, proxy, "b")
        await a.initialize()
        server.restart()
        await b.initialize()
        assert (await a.call("add")).status == 200
    a_rebuilt = server.opened[2]
    assert server.deleted == [a_rebuilt]  # b's the upstream knows by its client's own id: it stays
    assert [seen.session for seen in server.seen if seen.http == "DELETE"] == [a_rebuilt]


# -- metrics -----------------------------------------------------------------------------------------


async def test_the_session_metrics_count_what_became_of_each_loss(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        admin = proxy.admin_url
        a, b = client(http, proxy, "a"), client(http, proxy, "b")
        await a.initialize()
        await b.initialize()
        assert await metric(http, admin, "mcp_proxy_sessions", upstream="up") == 2.0
        server.restart()
        assert (await a.call("add")).status == 200
        assert await metric(http, admin, "mcp_proxy_session_recoveries_total", upstream="up", outcome="recovered") == 1.0
        server.protocol = "2024-11-05"
        assert (await b.call("add")).status == 404
        assert await metric(http, admin, "mcp_proxy_session_recoveries_total", upstream="up", outcome="failed") == 1.0
        assert await metric(http, admin, "mcp_proxy_session_recoveries_total", upstream="up", outcome="recovered") == 1.0
        stranger = client(http, proxy, "stranger")
        stranger.session_id = "made-up"
        assert (await stranger.call("add")).status == 404
        assert await metric(http, admin, "mcp_proxy_session_recoveries_total", upstream="up", outcome="unknown_session") == 1.0


async def test_a_recovery_made_by_a_notification_is_counted(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        assert await a.notify("notifications/roots/list_changed") == 202
        assert await metric(http, proxy.admin_url, "mcp_proxy_session_recoveries_total", upstream="up", outcome="recovered") == 1.0


@pytest.mark.parametrize("what", ["notification", "GET"])
async def test_an_unknown_sessions_loss_on_a_message_that_is_no_request_passes_through_and_is_reported(
    servers: Servers, http: aiohttp.ClientSession, what: str
) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        stranger = client(http, proxy)
        stranger.session_id = "made-up"
        if what == "notification":
            status = await stranger.notify("notifications/roots/list_changed")
        else:
            async with http.get(stranger.url, headers={"Mcp-Session-Id": "made-up", "Accept": "text/event-stream"}) as got:
                status = got.status
        assert status == 404
        assert [seen.session for seen in server.seen] == ["made-up"]
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "notifications/roots/list_changed" if what == "notification" else what, "unknown_session", None)
        ]


async def test_a_server_that_loses_the_rebuilt_session_before_the_replay_is_heard_as_it_answered(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()

        def restart_again(seen: Any) -> None:  # once the rebuild has sent initialized, before the replay
            if seen.method == "notifications/initialized" and server.restarts == 1:
                server.restart()

        server.on_request = restart_again
        passed = await a.call("add")
        assert passed.status == 404 and passed.message["error"]["message"] == "Session not found"
        assert server.tool_runs["add"] == 0
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/call", "recovering", None),
            ("session_recovered", "tools/call", 1, ["initialized"]),
            ("session_lost", "tools/call", "failed", "lost_again"),
        ]


async def test_the_rebuild_speaks_as_the_client_with_its_credentials_and_without_its_session_headers(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        headers = {"Authorization": "Bearer a-token", "Last-Event-ID": "x-1", "X-Trace": "t1"}
        answer = await a.post({"jsonrpc": "2.0", "id": 50, "method": "tools/call", "params": {"name": "add"}}, headers)
        assert answer.status == 200
        initialize, initialized, replay = server.seen[-3:]
        assert initialize.method == "initialize" and initialized.method == "notifications/initialized"
        for seen in (initialize, initialized, replay):
            assert seen.headers["Authorization"] == "Bearer a-token"
        assert "Mcp-Session-Id" not in initialize.headers and "MCP-Protocol-Version" not in initialize.headers
        assert "Last-Event-ID" not in initialize.headers and "Last-Event-ID" not in initialized.headers
        assert initialized.headers["Mcp-Session-Id"] == server.opened[1]


async def test_a_batch_that_meets_a_loss_is_not_replayed_and_its_client_hears_the_loss(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        batch = [{"jsonrpc": "2.0", "id": 70 + n, "method": "tools/call", "params": {"name": "add"}} for n in range(2)]
        old_protocol = {"MCP-Protocol-Version": "2025-03-26"}
        done = await a.post(batch, old_protocol)
        assert done.status == 200 and len(done.message) == 2
        server.restart()
        lost = await a.post(batch, old_protocol)
        assert lost.status == 404
        assert server.tool_runs["add"] == 2 and server.initialize_requests == 1
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "POST", "failed", "not_replayable")
        ]


async def test_a_forgotten_rebuilt_session_is_ended_with_its_own_clients_credentials(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server, sessions={"max_sessions": 1}) as proxy:
        a, b = client(http, proxy, "a"), client(http, proxy, "b")
        await a.initialize()
        server.restart()
        assert (await a.post({"jsonrpc": "2.0", "id": 5, "method": "ping"}, {"Authorization": "Bearer a"})).status == 200
        params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b", "version": "1"}}
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
        assert (await b.post(initialize, {"Authorization": "Bearer b"})).status == 200
        await server.until(lambda: len(server.deleted) == 1)
        (ending,) = [seen for seen in server.seen if seen.http == "DELETE"]
        assert ending.headers.get("Authorization") == "Bearer a"


async def test_a_delete_of_a_session_lost_for_good_forgets_it(servers: Servers, http: aiohttp.ClientSession) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        server.protocol = "2025-03-26"
        assert (await a.call("add")).status == 404
        await a.delete()
        assert kept(proxy) == 0


async def test_a_reload_keeps_the_sessions_and_can_turn_recovery_off(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a, b = client(http, proxy, "a"), client(http, proxy, "b")
        await a.initialize()
        await b.initialize()
        await proxy.apply(proxy_config(server.url, upstream={"timeouts": {"per_try": "20s"}}, events={"summary_interval": "1h"}))
        server.restart()
        assert (await a.call("add")).text == f"add #1 on {server.opened[2]} for a"
        await proxy.apply(proxy_config(server.url, upstream={"sessions": {"recovery": False}}, events={"summary_interval": "1h"}))
        lost = await b.call("add")
        assert lost.status == 404 and "X-Mcp-Proxy-Error" not in lost.headers
        assert server.initialize_requests == 3
        assert [brief(event)[:3] for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/call", "recovering"),
            ("session_recovered", "tools/call", 1),
            ("session_lost", "tools/call", "off"),
        ]


async def test_calls_while_the_server_is_still_starting_do_not_spend_the_rebuild_budget(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        server.fail_initialize = 3
        for _ in range(3):
            assert (await a.call("add")).status in (502, 503)
        recovered = await a.call("add")
        assert recovered.status == 200, recovered.body
        assert server.tool_runs["add"] == 1
        assert session_events(proxy.bus)[-1]["type"] == "session_recovered"


async def test_losses_at_a_restart_neither_open_the_breaker_nor_mark_the_upstream_unhealthy(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    upstream = {"breaker": {"failure_threshold": 2, "reset_timeout": "1h"}}
    async with proxied(server, **upstream) as proxy:
        clients = [client(http, proxy, name) for name in "abcd"]
        for each in clients:
            await each.initialize()
        server.restart()
        for each in clients:
            assert (await each.call("add")).status == 200
        kinds = {event["type"] for event in proxy.bus.recent()}
        assert "breaker_state" not in kinds and "circuit_open" not in kinds
        assert proxy.runtime.current.states["up"].health.serving
        assert server.tool_runs["add"] == 4


async def test_a_rebuild_slower_than_the_calls_deadline_ends_the_call_in_time_and_goes_on_for_the_next(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server, timeouts={"per_try": "1s", "total": "1s"}) as proxy:
        a = client(http, proxy)
        await a.initialize()
        server.restart()
        server.initialize_gate = asyncio.Event()
        failed = await a.call("add")
        assert failed.status == 504 and failed.headers["X-Mcp-Proxy-Error"] == "upstream_timeout"
        assert failed.message["id"] == 2
        assert [brief(event) for event in session_events(proxy.bus)] == [
            ("session_lost", "tools/call", "recovering", None),
            ("session_lost", "tools/call", "failed", "deadline"),
        ]
        server.initialize_gate.set()  # the rebuild was not the call's to cancel: it goes on
        await server.until(lambda: len(server.opened) == 2 and server.sessions[server.opened[1]].initialized)
        assert (await a.call("add")).text == f"add #1 on {server.opened[1]} for a"
        assert server.initialize_requests == 2 and server.tool_runs["add"] == 1


# -- the proxy's own restart ---------------------------------------------------------------------------


async def test_a_sessions_file_carries_every_session_over_the_proxys_restart(
    servers: Servers, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    server = await servers()
    path = tmp_path / "sessions.json"
    settings = proxy_config(server.url, sessions_file=str(path), events={"summary_interval": "1h"})
    async with running_proxy(settings) as first:
        a, b = client(http, first, "a"), client(http, first, "b")
        await a.initialize()
        assert (await a.request("logging/setLevel", {"level": "error"}, {"Authorization": "Bearer secret-a"})).status == 200
        assert (await a.request("resources/subscribe", {"uri": "file:///one"})).status == 200
        server.restart()
        assert (await a.call("add")).status == 200
        a_rebuilt = server.opened[1]
        await b.initialize()  # after the restart: the upstream knows b's session by b's own id
    assert server.deleted == []  # nothing ended: the next proxy routes them
    saved = path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600 and b"secret-a" not in saved

    async with running_proxy(settings) as second:
        assert not path.exists()  # read once
        assert kept(second) == 2
        a.url = b.url = second.url + "/mcp"
        assert (await a.call("add")).text == f"add #2 on {a_rebuilt} for a"
        assert (await b.call("add")).text == f"add #1 on {b.session_id} for b"
        assert server.initialize_requests == 3
        server.restart()
        assert (await a.call("add")).status == 200
        assert [brief(event) for event in session_events(second.bus)] == [
            ("session_lost", "tools/call", "recovering", None),
            ("session_recovered", "tools/call", 2, ["initialized", "log_level", "subscriptions:1"]),
        ]
        assert server.sessions[server.opened[-1]].log_level == "error"


async def test_an_unreadable_sessions_file_is_ignored_and_removed(servers: Servers, http: aiohttp.ClientSession, tmp_path: Any) -> None:
    server = await servers()
    path = tmp_path / "sessions.json"
    path.write_bytes(b'{"format": 1, "upstreams": {"up": [{"client_id": 5}, "x"]}}')
    async with running_proxy(proxy_config(server.url, sessions_file=str(path))) as proxy:
        assert kept(proxy) == 0 and not path.exists()
        a = client(http, proxy)
        await a.initialize()
        assert (await a.call("add")).status == 200


async def test_a_replayed_call_spends_one_rate_limit_token_and_the_rebuild_none(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    server = await servers()
    async with proxied(server, rate_limit={"rate": 1, "per": "1h", "burst": 3}) as proxy:
        a = client(http, proxy)
        await a.initialize()  # initialize and initialized: two tokens
        server.restart()
        assert (await a.call("add")).status == 200  # the third: the rebuild and the replay take none
        assert (await a.call("add")).status == 429
        assert server.tool_runs["add"] == 1 and server.initialize_requests == 2


async def test_a_server_that_hands_every_client_one_session_works_through_the_proxy_as_directly(
    servers: Servers, http: aiohttp.ClientSession
) -> None:
    """Broken-server review: the second client's initialize, answered with the same id, used to send the
    first client's session nowhere (taken for a restart's renumbering): every call of it then failed."""
    server = await servers(ids="fixed")
    async with proxied(server) as proxy:
        a, b = client(http, proxy, "a"), client(http, proxy, "b")
        assert await a.initialize() == await b.initialize() == "the-session"
        for _ in range(3):
            assert (await a.call("add")).status == 200
            assert (await b.call("add")).status == 200
        assert kept(proxy) == 1  # one session upstream, one record
        assert [run.session for run in server.executed] == ["the-session"] * 6  # every call ran, as directly
