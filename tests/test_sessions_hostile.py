"""What a hostile client (or a hostile sessions file) could do with kept sessions, and why it cannot.

Each test is one finding of the adversarial review of issue 13, with the mechanism that now stops it:
padding that cost memory, a DELETE racing a rebuild, a client-chosen header read as a session loss, a
failed rebuild leaving sessions behind, a listened-to session forgotten as idle, a stranger's credentials
rebuilding someone's session, an evicted id landing in another client's session, a sessions file that
is a directory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from proxy.policies.failures import session_lost_answer
from proxy.sessions import carry
from proxy.sessions import table as table_module
from proxy.sessions.keeper import RebuildFailed
from tests.test_sessions_keeper import (
    CLIENT_HEADERS,
    INITIALIZE,
    Clock,
    Transport,
    config,
    initialized_reply,
    keeper,
    open_session,
    record,
    reply,
)
from proxy.sessions.table import SessionTable

OPENER = CIMultiDict({"Authorization": "Bearer opener"})


def test_padding_in_a_subscribe_costs_nothing_and_the_table_has_a_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = keeper()
    session, _ = open_session(sessions, "s1")
    before = sessions.table.bytes
    for n in range(3):
        record(sessions, session, {"jsonrpc": "2.0", "id": n, "method": "resources/subscribe", "params": {"uri": f"a://{n}", "pad": "x" * 65_000}})
    assert sessions.table.bytes - before == sum(len(f"a://{n}") for n in range(3))
    one = len(INITIALIZE) + 2 * table_module.MAX_SESSION_ID + 64  # what a new session's record costs
    monkeypatch.setattr(table_module, "MAX_TABLE_BYTES", sessions.table.bytes + one + 10)
    second, _ = open_session(sessions, "s2")  # fits
    third, _ = open_session(sessions, "s3")  # does not: the least recently used goes
    assert sessions.table.get("s1") is None and sessions.table.get("s2") is second and sessions.table.get("s3") is third
    assert sessions.table.bytes <= table_module.MAX_TABLE_BYTES


async def test_a_session_its_client_deletes_while_it_is_rebuilt_is_not_rebuilt_and_its_new_upstream_session_ends() -> None:
    gate = asyncio.Event()

    async def answer(http: str, headers: dict[str, str], body: bytes | None) -> Any:
        method = orjson.loads(body).get("method") if body else None
        if method == "initialize":
            await gate.wait()
            return initialized_reply("rebuilt")
        return Transport.healthy(http, headers, body)

    transport = Transport(answer)
    sessions = keeper()
    session, _ = open_session(sessions, "s1", transport)
    rebuilding = asyncio.ensure_future(sessions.rebuild(session, 0, OPENER, transport))
    await transport.until(lambda: any(method == "initialize" for _, method, _ in transport.sent))
    sessions.forget("s1")  # the client's DELETE
    gate.set()
    with pytest.raises(RebuildFailed) as failed:
        await rebuilding
    assert (failed.value.reason, failed.value.permanent) == ("ended", True)
    await transport.until(lambda: any(http == "DELETE" for http, _, _ in transport.sent))
    assert [h["Mcp-Session-Id"] for http, _, h in transport.sent if http == "DELETE"] == ["rebuilt"]
    assert sessions.table.routed_elsewhere("rebuilt") is False and len(sessions.table) == 0


@pytest.mark.parametrize(
    ("status", "message", "lost"),
    [
        (404, {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Session not found"}}, True),
        (400, {"jsonrpc": "2.0", "error": {"code": -32000, "message": "Bad Request: No valid session ID provided"}}, True),
        (400, {"jsonrpc": "2.0", "error": {"code": -32000, "message": "Bad Request: Unsupported protocol version: x-session"}}, False),
        (400, {"jsonrpc": "2.0", "error": {"code": -32000, "message": "Bad Request: Unsupported protocol version: No valid session ID provided"}}, False),
        (400, {"jsonrpc": "2.0", "error": {"code": -32000, "message": "Bad Request: Server not initialized"}}, False),
    ],
)
def test_a_400_is_a_lost_session_only_on_its_whole_known_message(status: int, message: dict[str, Any], lost: bool) -> None:
    """The TypeScript SDK echoes the client's MCP-Protocol-Version in a 400: no word a client chose makes a loss."""
    assert session_lost_answer(status, message) is lost


async def test_a_rebuild_that_fails_after_its_initialize_ends_the_new_session_and_counts() -> None:
    def answer(http: str, headers: dict[str, str], body: bytes | None) -> Any:
        method = orjson.loads(body).get("method") if body else None
        if method == "notifications/initialized":
            return reply(503)
        return Transport.healthy(http, headers, body)

    transport = Transport(answer)
    sessions = keeper()
    session, _ = open_session(sessions, "s1", transport)
    for _ in range(3):
        with pytest.raises(RebuildFailed):
            await sessions.rebuild(session, 0, OPENER, transport)
    await transport.until(lambda: sum(http == "DELETE" for http, _, _ in transport.sent) == 3)
    assert sessions.may_rebuild(session, OPENER) == "too_frequent"  # a rebuild that made a session counts


def test_a_session_listened_to_is_never_forgotten_as_idle() -> None:
    clock = Clock()
    sessions = keeper(clock, idle_timeout="1s")
    listened, _ = open_session(sessions, "s1")
    listened.streams = 1
    quiet, _ = open_session(sessions, "s2")
    clock.now += 5
    open_session(sessions, "s3")
    assert sessions.table.get("s1") is listened and sessions.table.get("s2") is None and quiet.ended


def test_a_request_with_other_credentials_than_the_sessions_own_never_rebuilds_it() -> None:
    sessions = keeper()
    session, _ = open_session(sessions, "s1")  # made with "Bearer opener"
    assert sessions.may_rebuild(session, OPENER) is None
    assert sessions.may_rebuild(session, CLIENT_HEADERS) == "not_owner"
    anyone = SessionTable(config())
    open_one, _ = anyone.open("s9", b"{}", "2025-06-18", {})
    assert open_one.owner == ""  # made without credentials: anyone's who has the id, as upstream


def test_an_id_a_restarted_server_gave_to_another_client_is_routed_nowhere_after_its_old_owner_goes() -> None:
    table = SessionTable(config())
    old, _ = table.open("s1", b"{}", "2025-06-18", {})
    table.route(old, "s2")  # rebuilt: the old client "s1" now goes to "s2"
    new, _ = table.open("s1", b"{}", "2025-06-18", {})  # the server gives "s1" again, to a new client
    assert new.client_id != "s1" and new.upstream_id == "s1"
    table.forget("s1")  # the old client's record goes (evicted, expired, deleted)
    assert table.routed_elsewhere("s1")  # a request naming "s1" must not land in the new client's session


def test_a_sessions_file_that_is_a_directory_is_ignored_and_the_proxy_starts(tmp_path: Path) -> None:
    directory = tmp_path / "sessions.json"
    directory.mkdir()
    assert carry.load(str(directory), {"up": keeper()}) == 0
    link = tmp_path / "link.json"
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    link.symlink_to(target)
    assert carry.load(str(link), {"up": keeper()}) == 0 and target.exists()


def test_a_session_whose_delete_is_on_its_way_is_not_rebuilt_and_stays_if_the_delete_fails() -> None:
    """New-user review: a DELETE racing the GET stream's reopening brought the session back to life."""
    sessions = keeper()
    session, _ = open_session(sessions, "s1")
    session.deleting = True  # the handler marks it before the DELETE goes upstream
    assert sessions.may_rebuild(session, OPENER) == "ended"
    session.deleting = False  # the upstream refused the DELETE: the session lives on, and may be rebuilt
    assert sessions.may_rebuild(session, OPENER) is None


async def test_a_rebuild_wakes_the_session_s_waiters_and_arms_a_new_signal() -> None:
    transport = Transport()
    sessions = keeper()
    session, _ = open_session(sessions, "s1", transport)
    waiting = session.rebuilt
    assert await sessions.rebuild(session, 0, OPENER, transport) == ["initialized"]
    assert waiting.is_set() and session.rebuilt is not waiting and not session.rebuilt.is_set()


async def test_past_the_minutes_limit_a_session_is_rebuilt_again_once_its_last_rebuild_is_spaced_enough() -> None:
    """Broken-server review: a server restarting four times in a minute broke every session for the rest of
    that minute. Past the limit, one rebuild per REBUILD_SPACING."""
    from proxy.sessions.keeper import REBUILD_SPACING

    clock = Clock()
    transport = Transport()
    sessions = keeper(clock)
    session, _ = open_session(sessions, "s1", transport)
    for n in range(3):
        assert await sessions.rebuild(session, n, OPENER, transport) is not None
        clock.now += 1
    assert sessions.may_rebuild(session, OPENER) == "too_frequent"
    clock.now += REBUILD_SPACING
    assert sessions.may_rebuild(session, OPENER) is None


def test_a_session_with_an_overlong_id_passes_through_unrecorded() -> None:
    from proxy.sessions.table import MAX_SESSION_ID

    sessions = keeper()
    answer = initialized_reply("x" * (MAX_SESSION_ID + 1))
    sessions.opened(b'{"jsonrpc":"2.0","id":1,"method":"initialize"}', answer, Transport(), OPENER)
    assert len(sessions.table) == 0 and answer.headers["Mcp-Session-Id"] == "x" * (MAX_SESSION_ID + 1)
