"""Scratch tests for proxy.demo: the demo server and the workload, run against each other.

Nothing here waits on wall-clock sleeps for an effect: each test either runs the workload for
a fixed duration and checks exact counts, or drives one client step by step.
"""

from __future__ import annotations

import socket
from random import Random

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, REQUEST_TIMEOUT

from proxy.demo.server import FACTS, SLOW_STEPS, DemoState, running_demo_server
from proxy.demo.workload import MODES, OPERATIONS, CallStats, WorkloadStats, run_workload

EXPECTED_VERSION = {"legacy": "2025-11-25", "2026-07-28": "2026-07-28", "auto": "2026-07-28"}


class ScriptedRandom(Random):
    """A ``Random`` whose ``random()`` replays a script, then returns ``after``."""

    def __init__(self, script: list[float], after: float = 0.99) -> None:
        super().__init__(0)
        self.script = list(script)
        self.after = after

    def random(self) -> float:
        return self.script.pop(0) if self.script else self.after


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("mode", MODES)
async def test_workload_against_demo_server_all_ok(mode: str) -> None:
    state = DemoState()
    async with running_demo_server("127.0.0.1", 0, state=state) as url:
        stats = await run_workload(url, 2.0, modes=[mode], slow_seconds=0.02)

    rounds = stats.rounds_by_mode[mode]
    assert rounds > 0
    assert stats.failed_calls == 0, stats.render()
    assert stats.clients_lost == 0
    assert stats.recent_errors == type(stats.recent_errors)()
    # Every operation ran exactly once per round and succeeded.
    assert stats.counts() == {op: {"ok": rounds} for op in OPERATIONS}
    assert stats.slow_progress == {SLOW_STEPS: rounds}
    assert state.tickets_created == rounds
    assert state.tool_calls == {"lookup": rounds, "slow": rounds, "create_ticket": rounds}
    assert stats.protocol_versions == {EXPECTED_VERSION[mode]: rounds}
    p50, p99 = stats.ops["slow"].percentiles()
    assert p50 is not None and p99 is not None and 0.02 <= p50 <= p99


async def test_workload_cycles_modes_with_concurrency() -> None:
    state = DemoState()
    async with running_demo_server(state=state) as url:
        stats = await run_workload(url, 1.0, concurrency=3, slow_seconds=0.01)
    assert stats.failed_calls == 0, stats.render()
    assert set(stats.rounds_by_mode) == set(MODES)
    total_rounds = sum(stats.rounds_by_mode.values())
    assert state.tickets_created == stats.ops["create_ticket"].ok == total_rounds
    assert sum(stats.protocol_versions.values()) == total_rounds


@pytest.mark.parametrize("mode", MODES)
async def test_injected_lookup_errors_are_recorded_with_their_code(mode: str) -> None:
    state = DemoState(lookup_failure_rate=1.0)
    async with running_demo_server(state=state) as url:
        stats = await run_workload(url, 0.5, modes=[mode], slow_seconds=0.0)
    rounds = stats.rounds_by_mode[mode]
    assert stats.counts()["lookup"] == {f"error:{INTERNAL_ERROR}": rounds}
    assert stats.failed_calls == rounds
    assert stats.clients_lost == 0
    assert state.injected_failures == rounds


async def test_workload_replaces_a_legacy_client_whose_session_answers_404() -> None:
    # POSTs of a legacy round: initialize, notifications/initialized, tools/list, lookup, ...
    # The scripted rng lets the first three through and answers the fourth (lookup) with 404.
    state = DemoState(http_error_rate=0.5, http_error_status=404, rng=ScriptedRandom([0.9, 0.9, 0.9, 0.0]))
    async with running_demo_server(state=state) as url:
        stats = await run_workload(url, 0.5, modes=["legacy"], slow_seconds=0.0)
    assert stats.clients_lost == 1
    assert stats.ops["lookup"].outcomes[f"error:{INVALID_REQUEST}"] == 1
    assert stats.failed_calls == 1
    # The lost round stopped at lookup; every other round completed.
    rounds = stats.rounds_by_mode["legacy"]
    assert stats.ops["create_ticket"].ok == state.tickets_created == rounds - 1


@pytest.mark.parametrize("mode", MODES)
async def test_workload_survives_an_unreachable_server(mode: str) -> None:
    url = f"http://127.0.0.1:{_free_port()}/mcp"
    stats = await run_workload(url, 0.3, modes=[mode], reconnect_delay_s=0.05)
    rounds = stats.rounds_by_mode[mode]
    # A pinned modern mode adopts the version without any request, so the first call fails instead.
    failing_op = "tools/list" if mode == "2026-07-28" else "connect"
    failed = stats.ops[failing_op]
    assert 1 <= rounds <= 7  # the reconnect delay keeps a dead upstream from being hammered
    assert failed.total == rounds and failed.ok == 0
    assert all(outcome.startswith("exception:") for outcome in failed.outcomes), failed.outcomes
    assert stats.failed_calls == rounds
    assert stats.clients_lost == (rounds if mode == "2026-07-28" else 0)


async def test_sdk_client_error_mapping_for_http_failures() -> None:
    """Pins SDK facts the proxy relies on: how bare HTTP errors reach the client."""
    state = DemoState()
    async with running_demo_server(state=state) as url:
        async with Client(url, mode="legacy") as client:
            # __aenter__ returns before notifications/initialized is POSTed; the first request
            # is queued behind it, so after this call the faults below hit only our requests.
            await client.list_tools()
            state.http_error_rate, state.http_error_status = 1.0, 503
            with pytest.raises(MCPError) as info:
                await client.call_tool("lookup", {"key": "mcp"})
            assert (info.value.code, info.value.message) == (INTERNAL_ERROR, "Server returned an error response")
            state.http_error_status = 404
            with pytest.raises(MCPError) as info:
                await client.list_tools(cache_mode="bypass")
            assert (info.value.code, info.value.message) == (INVALID_REQUEST, "Session terminated")
            # The SDK neither re-initializes nor forgets the session id after a 404: once the
            # server answers again, the same session id is simply reused.
            state.http_error_rate = 0.0
            result = await client.call_tool("lookup", {"key": "mcp"})
            assert result.content[0].text == FACTS["mcp"]  # type: ignore[union-attr]
        assert state.injected_failures == 2

        # A failed handshake escapes `async with Client(...)` as an exception group, not a bare MCPError.
        state.http_error_rate, state.http_error_status = 1.0, 404
        with pytest.raises(ExceptionGroup) as group:
            async with Client(url, mode="legacy"):
                pass
        leaf = group.value
        while isinstance(leaf, BaseExceptionGroup):
            leaf = leaf.exceptions[0]
        assert isinstance(leaf, MCPError) and leaf.code == METHOD_NOT_FOUND


async def test_running_demo_server_binds_port_zero_and_releases_it() -> None:
    async with running_demo_server(port=0) as first, running_demo_server(port=0) as second:
        assert first != second
        port = int(first.rsplit(":", 1)[1].split("/")[0])
        assert port > 0
        async with Client(first, mode="auto") as client:
            assert {t.name for t in (await client.list_tools()).tools} == {"lookup", "slow", "create_ticket"}
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_call_stats_percentiles_are_nearest_rank() -> None:
    stats = CallStats()
    assert stats.percentiles() == (None, None)
    for ms in range(1, 101):
        stats.record("ok", ms / 1000)
    assert stats.percentiles() == (0.05, 0.099)
    assert stats.total == stats.ok == 100


def test_workload_stats_render_lists_only_operations_that_ran() -> None:
    stats = WorkloadStats()
    stats.record("lookup", "ok", 0.01)
    stats.record("lookup", "error:-32603", 0.02, "boom")
    text = stats.render()
    assert "lookup" in text and "error:-32603=1" in text
    assert "tools/list" not in text
    assert list(stats.recent_errors) == ["lookup: error:-32603: boom"]


async def test_run_workload_rejects_unknown_modes() -> None:
    with pytest.raises(ValueError, match="2025-11-25"):
        await run_workload("http://127.0.0.1:1/mcp", 0.1, modes=["2025-11-25"])


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_lookup_fail_next_fails_exactly_that_many_calls(mode: str) -> None:
    state = DemoState(lookup_fail_next=2, lookup_error_code=-32050)
    async with running_demo_server(state=state) as url, Client(url, mode=mode) as client:
        codes = []
        for _ in range(3):
            try:
                result = await client.call_tool("lookup", {"key": "retry"})
                codes.append(0 if not result.is_error else 1)
            except MCPError as exc:
                assert exc.data == {"injected": True}
                codes.append(exc.code)
    assert codes == [-32050, -32050, 0]
    assert state.tool_calls["lookup"] == 3 and state.injected_failures == 2


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_extra_latency_turns_into_a_client_request_timeout(mode: str) -> None:
    state = DemoState(extra_latency_s=5.0)
    async with (
        running_demo_server(state=state, shutdown_grace_s=0.1) as url,
        Client(url, mode=mode, read_timeout_seconds=0.2) as client,
    ):
        with pytest.raises(MCPError) as info:
            await client.call_tool("lookup", {"key": "mcp"})
        assert info.value.code == REQUEST_TIMEOUT
        state.extra_latency_s = 0.0
        result = await client.call_tool("lookup", {"key": "mcp"})
        assert not result.is_error
