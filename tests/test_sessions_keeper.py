"""The session table and the keeper without a network (`proxy.sessions.table`, `proxy.sessions.keeper`): a fake
clock and a scripted transport, so the bounds (size, idle time, rebuilds a minute, recorded sizes) and every
branch of a rebuild are held exactly: what is sent, with which headers, in which order, and what becomes of
the session when the upstream answers otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from proxy.config.model import SessionsConfig
from proxy.errors import UpstreamUnavailable
from proxy.mcp.jsonrpc import parse_message
from proxy.policies.base import Reply
from proxy.sessions import keeper as keeper_module
from proxy.sessions.keeper import MAX_REBUILDS_PER_MINUTE, RebuildFailed, UpstreamSessions
from proxy.sessions.keeper import MAX_LEVEL
from proxy.sessions.table import MAX_URI, MAX_RECORDED_BODY, LegacySession, SessionTable

PROTOCOL = "2025-06-18"
CAPABILITIES = {"tools": {}}
INITIALIZE = orjson.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": PROTOCOL, "clientInfo": {"name": "c"}}}
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reply(status: int = 200, message: Any = None, **headers: str) -> Reply:
    body = orjson.dumps(message) if message is not None else b""
    return Reply(status, CIMultiDict(headers), body=body, message=message)


def initialized_reply(session_id: str | None = "new", protocol: str = PROTOCOL, capabilities: Any = None) -> Reply:
    result = {"protocolVersion": protocol, "capabilities": CAPABILITIES if capabilities is None else capabilities}
    headers = {"Mcp-Session-Id": session_id} if session_id is not None else {}
    return reply(200, {"jsonrpc": "2.0", "id": 1, "result": result}, **headers)


Answer = Callable[[str, dict[str, str], bytes | None], Any]


class Transport:
    """A scripted upstream: `answer(http_method, headers, body)` gives each reply (or raises); every request
    is kept in `sent` as (http method, JSON-RPC method or None, headers)."""

    name = "up"

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer = answer or self.healthy
        self.sent: list[tuple[str, str | None, dict[str, str]]] = []
        self.arrived = asyncio.Event()

    @staticmethod
    def healthy(http: str, headers: dict[str, str], body: bytes | None) -> Any:
        method = orjson.loads(body).get("method") if body else None
        if method == "initialize":
            return initialized_reply()
        if http == "POST" and method is not None and method.startswith("notifications/"):
            return reply(202)
        if http == "DELETE":
            return reply(200)
        return reply(200, {"jsonrpc": "2.0", "id": orjson.loads(body)["id"] if body else None, "result": {}})

    async def _send(self, http: str, headers: Mapping[str, str], body: bytes | None) -> Reply:
        seen = dict(headers)
        self.sent.append((http, orjson.loads(body).get("method") if body else None, seen))
        self.arrived.set()
        answered = self.answer(http, seen, body)
        if asyncio.iscoroutine(answered):
            answered = await answered
        if isinstance(answered, Exception):
            raise answered
        assert isinstance(answered, Reply)
        return answered

    async def request(
        self, headers: Mapping[str, str], body: bytes, request_id: str | int | None, timeout: float, *, probe: bool = True
    ) -> Reply:
        assert probe is False  # a rebuild is the client's work: on the main pool
        return await self._send("POST", headers, body)

    async def exchange(
        self, method: str, headers: Mapping[str, str], body: bytes | None, timeout: float | None,
        stream_idle: float | None, *, answer_to: Any = None,
    ) -> Reply:  # fmt: skip
        return await self._send(method, headers, body)

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()


def config(**fields: Any) -> SessionsConfig:
    return SessionsConfig.model_validate(fields)


def keeper(clock: Clock | None = None, counts: list[int] | None = None, **fields: Any) -> UpstreamSessions:
    on_count = (lambda _upstream, count: counts.append(count)) if counts is not None else None
    return UpstreamSessions("up", config(**fields), clock or Clock(), on_count)


def open_session(sessions: UpstreamSessions, upstream_id: str, transport: Transport | None = None) -> tuple[LegacySession, Reply]:
    answer = initialized_reply(upstream_id)
    sessions.opened(INITIALIZE, answer, transport or Transport(), CIMultiDict({"Authorization": "Bearer opener"}))
    session = sessions.table.get(answer.headers["Mcp-Session-Id"])
    assert session is not None
    return session, answer


def record(sessions: UpstreamSessions, session: LegacySession, message: dict[str, Any], answer: Reply | None = None) -> None:
    body = orjson.dumps(message)
    sessions.record(session, message["method"], parse_message(body), body, answer or reply(200, {"jsonrpc": "2.0", "id": message["id"], "result": {}}))


CLIENT_HEADERS = CIMultiDict(
    {"Authorization": "Bearer client", "Mcp-Session-Id": "old", "MCP-Protocol-Version": PROTOCOL, "Last-Event-ID": "e-9",
     "Content-Type": "application/json", "Accept": "application/json, text/event-stream", "X-Custom": "kept"}
)  # fmt: skip


# -- the table ------------------------------------------------------------------------------------


def test_a_session_keeps_the_upstreams_id_and_a_colliding_one_gets_the_proxys_own() -> None:
    table = SessionTable(config())
    first, forgotten = table.open("s1", INITIALIZE, PROTOCOL, CAPABILITIES)
    assert first is not None
    assert (first.client_id, first.upstream_id, first.remapped, forgotten) == ("s1", "s1", False, [])
    # No outage noted since "s1" last worked: the server hands several clients one session, the proxy
    # keeps its one record (the second client uses "s1" as the server told it).
    assert table.open("s1", INITIALIZE, PROTOCOL, CAPABILITIES) == (None, [])
    table.note_outage()  # a session lost, a stream broken: the server may have restarted
    second, _ = table.open("s1", INITIALIZE, PROTOCOL, CAPABILITIES)
    assert second is not None
    assert second.client_id != "s1" and second.upstream_id == "s1" and second.remapped
    assert len(second.client_id) >= 32  # unguessable, as a server's own ids are
    assert table.get("s1") is first and table.get(second.client_id) is second
    # The upstream gave "s1" again: the first client's own "s1" session is gone with the server's memory
    # of it. It now routes to no session at all (its next request meets the loss and is rebuilt), never
    # into the second client's.
    assert first.upstream_id.startswith("lost-") and first.remapped
    assert table.remapped() == [first, second]


def test_past_max_sessions_the_least_recently_used_go_first() -> None:
    clock = Clock()
    table = SessionTable(config(max_sessions=3), clock)
    for name in ("a", "b", "c"):
        table.open(name, INITIALIZE, PROTOCOL, CAPABILITIES)
    assert table.get("a") is not None  # a is used: b is now the least recently used
    _, forgotten = table.open("d", INITIALIZE, PROTOCOL, CAPABILITIES)
    assert [session.client_id for session in forgotten] == ["b"]
    assert len(table) == 3 and table.get("b") is None


def test_idle_sessions_are_forgotten_when_room_is_made_a_bounded_number_at_a_time() -> None:
    clock = Clock()
    table = SessionTable(config(idle_timeout=60), clock)
    for n in range(20):
        table.open(f"idle{n}", INITIALIZE, PROTOCOL, CAPABILITIES)
    clock.now += 61
    table.open("fresh", INITIALIZE, PROTOCOL, CAPABILITIES)  # sweeps 16 idle ones
    assert len(table) == 20 - 16 + 1
    _, forgotten = table.open("fresher", INITIALIZE, PROTOCOL, CAPABILITIES)
    assert [session.client_id for session in forgotten] == [f"idle{n}" for n in range(16, 20)]
    assert len(table) == 2  # fresh and fresher: not idle


async def test_a_session_being_rebuilt_is_not_forgotten_as_idle() -> None:
    clock = Clock()
    table = SessionTable(config(idle_timeout=60), clock)
    busy, _ = table.open("busy", INITIALIZE, PROTOCOL, CAPABILITIES)
    busy.rebuilding = asyncio.get_running_loop().create_future()
    clock.now += 61
    _, forgotten = table.open("new", INITIALIZE, PROTOCOL, CAPABILITIES)
    assert forgotten == [] and table.get("busy") is busy


# -- recording -------------------------------------------------------------------------------------


async def test_only_a_successful_initialize_with_a_session_and_a_version_opens_one() -> None:
    counts: list[int] = []
    sessions = keeper(counts=counts)
    transport = Transport()
    headers: CIMultiDict[str] = CIMultiDict()
    no_version = reply(200, {"jsonrpc": "2.0", "id": 1, "result": {}}, **{"Mcp-Session-Id": "x"})
    for answer in (
        initialized_reply(None),
        reply(400, {"jsonrpc": "2.0", "id": 1, "error": {"code": -32600, "message": "no"}}, **{"Mcp-Session-Id": "x"}),
        reply(200, {"jsonrpc": "2.0", "id": 1, "error": {"code": -32602, "message": "no"}}, **{"Mcp-Session-Id": "x"}),
        no_version,
    ):
        sessions.opened(INITIALIZE, answer, transport, headers)
    assert len(sessions.table) == 0 and counts == []
    big = INITIALIZE[:-1] + b',"pad":"' + b"x" * MAX_RECORDED_BODY + b'"}'
    sessions.opened(big, initialized_reply("big"), transport, headers)  # too large to replay: not kept
    assert len(sessions.table) == 0
    sessions.opened(INITIALIZE, initialized_reply("kept"), transport, headers)
    assert counts == [1] and sessions.table.get("kept") is not None


async def test_with_recovery_off_nothing_is_kept() -> None:
    sessions = keeper(recovery=False)
    sessions.opened(INITIALIZE, initialized_reply("s1"), Transport(), CIMultiDict())
    assert len(sessions.table) == 0


async def test_a_colliding_id_is_replaced_in_the_answer_the_client_gets() -> None:
    sessions = keeper()
    open_session(sessions, "s1")
    sessions.table.note_outage()  # the server restarted (and numbers its sessions from 1 again)
    second, answer = open_session(sessions, "s1")
    assert answer.headers["Mcp-Session-Id"] == second.client_id != "s1"
    assert answer.headers.getall("Mcp-Session-Id") == [second.client_id]


async def test_a_forgotten_session_only_the_proxy_could_route_is_ended_upstream_and_no_other() -> None:
    counts: list[int] = []
    sessions = keeper(counts=counts, max_sessions=2)
    transport = Transport()
    plain, _ = open_session(sessions, "plain", transport)
    moved, _ = open_session(sessions, "moved", transport)
    moved.upstream_id = "moved-2"  # rebuilt: only the proxy routes "moved" to it
    open_session(sessions, "third", transport)  # forgets plain: the upstream knows it by its client's id
    open_session(sessions, "fourth", transport)  # forgets moved
    await transport.until(lambda: len(transport.sent) == 1)
    assert [(http, headers["Mcp-Session-Id"]) for http, _, headers in transport.sent] == [("DELETE", "moved-2")]
    assert counts == [1, 2, 2, 2]


def test_what_a_session_set_is_recorded_and_only_when_it_succeeded() -> None:
    sessions = keeper()
    session, _ = open_session(sessions, "s1")
    record(sessions, session, {"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "debug"}})
    refused = reply(200, {"jsonrpc": "2.0", "id": 3, "error": {"code": -32602, "message": "bad level"}})
    record(sessions, session, {"jsonrpc": "2.0", "id": 3, "method": "logging/setLevel", "params": {"level": "x"}}, refused)
    record(sessions, session, {"jsonrpc": "2.0", "id": 4, "method": "logging/setLevel", "params": {"level": "y"}}, reply(500))
    assert session.log_level == "debug"  # only the level: a rebuild sends it in a request of the proxy's own
    for n, uri in enumerate(("a://1", "a://2", "a://3")):
        record(sessions, session, {"jsonrpc": "2.0", "id": 10 + n, "method": "resources/subscribe", "params": {"uri": uri}})
    record(sessions, session, {"jsonrpc": "2.0", "id": 20, "method": "resources/unsubscribe", "params": {"uri": "a://2"}})
    record(sessions, session, {"jsonrpc": "2.0", "id": 21, "method": "resources/subscribe", "params": {"uri": 5}})
    record(sessions, session, {"jsonrpc": "2.0", "id": 22, "method": "tools/call", "params": {"name": "t"}})
    assert list(session.subscriptions) == ["a://1", "a://3"]
    assert session.restorable


def test_state_over_its_bounds_makes_the_session_not_restorable(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = keeper()
    session, _ = open_session(sessions, "s1")
    monkeypatch.setattr(keeper_module, "MAX_SUBSCRIPTIONS", 2)
    for n in range(2):
        record(sessions, session, {"jsonrpc": "2.0", "id": n, "method": "resources/subscribe", "params": {"uri": f"a://{n}"}})
    record(sessions, session, {"jsonrpc": "2.0", "id": 5, "method": "resources/subscribe", "params": {"uri": "a://0"}})
    assert session.restorable  # the same URI again takes no room
    record(sessions, session, {"jsonrpc": "2.0", "id": 6, "method": "resources/subscribe", "params": {"uri": "a://9"}})
    assert not session.restorable and sessions.may_rebuild(session) == "not_restorable"

    other, _ = open_session(sessions, "s2")
    level = {"jsonrpc": "2.0", "id": 7, "method": "logging/setLevel", "params": {"level": "x" * (MAX_LEVEL + 1)}}
    record(sessions, other, level)
    assert not other.restorable and other.log_level is None

    third, _ = open_session(sessions, "s3")
    padded = {"jsonrpc": "2.0", "id": 8, "method": "resources/subscribe", "params": {"uri": "a://1", "pad": "x" * 60_000}}
    record(sessions, third, padded)  # a client's padding costs nothing: only the URI is kept
    assert third.restorable and list(third.subscriptions) == ["a://1"] and third.size < 1024
    record(sessions, third, {"jsonrpc": "2.0", "id": 9, "method": "resources/subscribe", "params": {"uri": "u" * (MAX_URI + 1)}})
    assert not third.restorable


# -- may a rebuild be tried -----------------------------------------------------------------------


async def test_at_most_three_rebuilds_a_minute_per_session() -> None:
    clock = Clock()
    sessions = keeper(clock)
    transport = Transport()
    session, _ = open_session(sessions, "s1", transport)
    for _ in range(MAX_REBUILDS_PER_MINUTE):
        assert sessions.may_rebuild(session) is None
        await sessions.rebuild(session, session.generation, CLIENT_HEADERS, transport)
        clock.now += 10
    assert sessions.may_rebuild(session) == "too_frequent"
    clock.now += 31  # the first rebuild is now over a minute old
    assert sessions.may_rebuild(session) is None
    assert session.generation == 3


def test_a_rebuild_is_not_tried_with_recovery_off_or_for_a_session_lost_for_good() -> None:
    sessions = keeper()
    session, _ = open_session(sessions, "s1")
    session.lost = "version_changed"
    assert sessions.may_rebuild(session) == "version_changed"
    sessions.reconfigure(config(recovery=False))
    assert sessions.may_rebuild(session) == "off"


# -- rebuilding ------------------------------------------------------------------------------------


async def test_a_rebuild_sends_the_clients_initialize_then_its_state_on_the_new_session() -> None:
    sessions = keeper()
    transport = Transport()
    session, _ = open_session(sessions, "old", transport)
    record(sessions, session, {"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "debug"}})
    for n, uri in enumerate(("a://1", "a://2")):
        record(sessions, session, {"jsonrpc": "2.0", "id": 3 + n, "method": "resources/subscribe", "params": {"uri": uri}})

    restored = await sessions.rebuild(session, 0, CLIENT_HEADERS, transport)
    assert restored == ["initialized", "log_level", "subscriptions:2"]
    assert (session.upstream_id, session.generation, session.client_id) == ("new", 1, "old")
    assert [(http, method) for http, method, _ in transport.sent] == [
        ("POST", "initialize"), ("POST", "notifications/initialized"), ("POST", "logging/setLevel"),
        ("POST", "resources/subscribe"), ("POST", "resources/subscribe"),
    ]  # fmt: skip
    first, *rest = (headers for _, _, headers in transport.sent)
    assert "Mcp-Session-Id" not in first and "MCP-Protocol-Version" not in first and "Last-Event-ID" not in first
    assert first["Authorization"] == "Bearer client" and first["X-Custom"] == "kept"
    assert first["Accept"] == "application/json, text/event-stream" and first["Content-Type"] == "application/json"
    for headers in rest:
        assert headers["Mcp-Session-Id"] == "new" and headers["MCP-Protocol-Version"] == PROTOCOL
        assert "Last-Event-ID" not in headers and headers["Authorization"] == "Bearer client"
    assert CLIENT_HEADERS["Mcp-Session-Id"] == "old"  # the caller's headers are its own


async def test_a_state_the_new_session_refuses_is_left_out_of_what_was_restored() -> None:
    def answer(http: str, headers: dict[str, str], body: bytes | None) -> Any:
        if body and orjson.loads(body).get("method") == "logging/setLevel":
            return reply(200, {"jsonrpc": "2.0", "id": 2, "error": {"code": -32602, "message": "no"}})
        return Transport.healthy(http, headers, body)

    sessions = keeper()
    transport = Transport(answer)
    session, _ = open_session(sessions, "old", transport)
    record(sessions, session, {"jsonrpc": "2.0", "id": 2, "method": "logging/setLevel", "params": {"level": "debug"}})
    assert await sessions.rebuild(session, 0, CLIENT_HEADERS, transport) == ["initialized"]
    assert session.generation == 1


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (initialized_reply("new", protocol="2025-03-26"), "version_changed"),
        (initialized_reply("new", capabilities={"tools": {}, "prompts": {}}), "capabilities_changed"),
    ],
)
async def test_a_new_session_that_differs_is_ended_and_the_session_lost_for_good(answer: Reply, reason: str) -> None:
    sessions = keeper()
    transport = Transport(lambda http, headers, body: answer if http == "POST" else reply(200))
    session, _ = open_session(sessions, "old", transport)
    with pytest.raises(RebuildFailed) as failed:
        await sessions.rebuild(session, 0, CLIENT_HEADERS, transport)
    assert (failed.value.reason, failed.value.permanent) == (reason, True)
    assert session.lost == reason and session.generation == 0 and session.upstream_id == "old"
    await transport.until(lambda: any(http == "DELETE" for http, _, _ in transport.sent))
    assert [(http, headers.get("Mcp-Session-Id")) for http, _, headers in transport.sent] == [("POST", None), ("DELETE", "new")]
    assert sessions.may_rebuild(session) == reason


@pytest.mark.parametrize(
    ("answer", "reason", "permanent"),
    [
        (initialized_reply(None), "no_session_id", True),
        (reply(400, {"jsonrpc": "2.0", "id": 1, "error": {"code": -32600, "message": "no"}}), "initialize_refused", True),
        (reply(503, {"jsonrpc": "2.0", "id": 1, "error": {"code": -32603, "message": "starting"}}), "upstream_failed", False),
        (reply(429), "upstream_failed", False),
        (UpstreamUnavailable("connection refused", upstream="up"), "upstream_failed", False),
    ],
)
async def test_a_rebuild_that_fails_says_whether_it_ever_can_succeed(answer: Any, reason: str, permanent: bool) -> None:
    sessions = keeper()
    transport = Transport(lambda http, headers, body: answer)
    session, _ = open_session(sessions, "old", transport)
    with pytest.raises(RebuildFailed) as failed:
        await sessions.rebuild(session, 0, CLIENT_HEADERS, transport)
    assert (failed.value.reason, failed.value.permanent) == (reason, permanent)
    assert session.lost == (reason if permanent else None)
    assert session.generation == 0 and session.rebuilding is None
    if isinstance(answer, UpstreamUnavailable):
        assert failed.value.error is answer


async def test_a_rebuild_that_takes_longer_than_the_recovery_timeout_fails_as_passing() -> None:
    hang = asyncio.Event()

    async def never(http: str, headers: dict[str, str], body: bytes | None) -> Reply:
        await hang.wait()
        raise AssertionError("unreachable")

    sessions = keeper(recovery_timeout=0.05)
    transport = Transport(never)  # type: ignore[arg-type]
    session, _ = open_session(sessions, "old", transport)
    with pytest.raises(RebuildFailed) as failed:
        await sessions.rebuild(session, 0, CLIENT_HEADERS, transport)
    assert (failed.value.reason, failed.value.permanent, session.lost) == ("upstream_failed", False, None)


async def test_requests_meeting_one_loss_share_one_rebuild_and_a_later_one_finds_it_done() -> None:
    gate = asyncio.Event()

    async def held(http: str, headers: dict[str, str], body: bytes | None) -> Any:
        if body and orjson.loads(body).get("method") == "initialize":
            await gate.wait()
        return Transport.healthy(http, headers, body)

    sessions = keeper()
    transport = Transport(held)  # type: ignore[arg-type]
    session, _ = open_session(sessions, "old", transport)
    waiting = [asyncio.create_task(sessions.rebuild(session, 0, CLIENT_HEADERS, transport)) for _ in range(5)]
    await transport.until(lambda: len(transport.sent) == 1)
    assert session.rebuilding is not None
    waiting[0].cancel()  # one waiter gone: the rebuild goes on for the others
    gate.set()
    results = await asyncio.gather(*waiting[1:])
    assert results == [["initialized"]] * 4
    assert [method for _, method, _ in transport.sent] == ["initialize", "notifications/initialized"]
    assert session.generation == 1 and len(session.rebuilds) == 1
    # A request that met the loss at generation 0 but asks after the rebuild: nothing to do, replay.
    assert await sessions.rebuild(session, 0, CLIENT_HEADERS, transport) is None
    assert len(transport.sent) == 2


async def test_ending_the_remapped_sessions_deletes_each_and_forgets_it() -> None:
    counts: list[int] = []
    sessions = keeper(counts=counts)
    transport = Transport()
    plain, _ = open_session(sessions, "plain", transport)
    moved, _ = open_session(sessions, "moved", transport)
    sessions.table.route(moved, "moved-2")
    moved.headers = CIMultiDict({"Authorization": "Bearer x"})
    assert await sessions.end_remapped(transport) == 1
    assert [(http, headers["Mcp-Session-Id"], headers["Authorization"]) for http, _, headers in transport.sent] == [
        ("DELETE", "moved-2", "Bearer x")  # with its own client's credentials
    ]
    assert sessions.table.get("moved") is None and sessions.table.get("plain") is plain
    assert counts[-1] == 1


async def test_forgetting_a_session_counts_it() -> None:
    counts: list[int] = []
    sessions = keeper(counts=counts)
    open_session(sessions, "s1")
    assert sessions.forget("s1") is not None and sessions.forget("s1") is None
    assert counts == [1, 0]
