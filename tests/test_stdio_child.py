"""One stdio child (`proxy.upstream.stdio.child`): real processes over real pipes (`tests.stdio_children`).

Each test asserts what the operating system says afterwards (the process group, read from /proc, has no
live member), which step of the stop ended the child, and exactly what reached the callback and the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from structlog.testing import capture_logs

from proxy.upstream.stdio.child import (
    INHERITED_ENV,
    Child,
    ChildNotRunning,
    ChildSpec,
    EndedBy,
    StderrMode,
    child_environment,
    exit_text,
    spawn,
)
from proxy.upstream.stdio.output import STDERR_LINES_PER_WINDOW, ClippedLines as _ClippedLines, Window as _Window
from tests import stdio_children

REPO = Path(__file__).resolve().parent.parent
WAIT = 20.0
"""Bound on waiting for a condition (a slow machine takes longer; nothing correct takes this long)."""
POLITE = 10.0
"""A stop's grace when the child is expected to go politely: long, so only a wrong outcome can be slow."""
RUDE = 0.3
"""A stop's grace when the child refuses each step anyway: short, and its length decides nothing."""

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")


def child_spec(mode: str, *args: str, stderr: StderrMode = "log", extra: dict[str, str] | None = None) -> ChildSpec:
    env = child_environment({"PYTHONPATH": str(REPO), "PYTHONCOERCECLOCALE": "0", **(extra or {})})
    argv = (sys.executable, "-m", "tests.stdio_children", mode, *args)
    return ChildSpec(name="kid", argv=argv, env=env, cwd=str(REPO), stderr=stderr)


def live_members(pgid: int) -> list[int]:
    """The pids in process group `pgid` that are not zombies, read from /proc (independently of the code)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rfind(b")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != b"Z":
            pids.append(int(entry))
    return sorted(pids)


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def request(request_id: int, method: str, **params: Any) -> bytes:
    return line({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


INIT = request(1, "initialize", protocolVersion="2025-11-25", capabilities={}, clientInfo={"name": "t", "version": "1"})


def answers(messages: list[Any]) -> dict[Any, Any]:
    return {m["id"]: m for m in messages if isinstance(m, dict) and "id" in m}


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children a test started: killed (SIGKILL to the group) if the test left one running."""
    started: list[Child] = []
    yield started
    for child in started:
        if live_members(child.pid):
            os.killpg(child.pid, 9)


async def start(children: list[Child], spec: ChildSpec, **kwargs: Any) -> tuple[Child, list[Any]]:
    got: list[Any] = []
    child = await spawn(spec, got.append, **kwargs)
    children.append(child)
    return child, got


# --- environment ---------------------------------------------------------------------------------------


def test_the_child_environment_is_the_safe_set_plus_what_the_config_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key in INHERITED_ENV:
        monkeypatch.setenv(key, f"v-{key}")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "proxy-secret")
    monkeypatch.setenv("GITHUB_TOKEN", "proxy-token")
    monkeypatch.setenv("BASH_FUNC_x%%", "() { evil; }")
    monkeypatch.setenv("TERM", "() { evil; }")
    env = child_environment({"API_KEY": "the-child's-own", "PATH": "/opt/bin"})
    expected = {key: f"v-{key}" for key in INHERITED_ENV if key != "TERM"}
    expected |= {"LC_ALL": "C.UTF-8", "API_KEY": "the-child's-own", "PATH": "/opt/bin"}
    assert env == expected


async def test_the_child_gets_exactly_its_spec_environment(children: list[Child]) -> None:
    spec = child_spec("echo", extra={"CHILD_SETTING": "x"})
    child, got = await start(children, spec)
    await child.write(INIT)
    await child.write(request(2, "tools/call", name="env", arguments={}))
    await until(lambda: 2 in answers(got), "the env answer")
    seen = json.loads(answers(got)[2]["result"]["content"][0]["text"])
    assert seen == dict(spec.env)
    assert seen["CHILD_SETTING"] == "x"
    assert await child.stop(POLITE) == 0


# --- messages ------------------------------------------------------------------------------------------


async def test_messages_arrive_whole_and_in_order_and_stdin_close_ends_it(children: list[Child]) -> None:
    child, got = await start(children, child_spec("echo"))
    assert live_members(child.pid) == [child.pid]
    await child.write(INIT)
    await child.write(request(2, "tools/call", name="burst", arguments={"count": 300}))
    await child.write(request(3, "ping"))
    await until(lambda: 3 in answers(got), "the ping answer")
    assert got[0]["id"] == 1 and got[0]["result"]["protocolVersion"] == "2025-11-25"
    assert [m["params"]["data"] for m in got[1:301]] == list(range(300))
    assert [m["id"] for m in got[301:]] == [2, 3]
    assert child.garbage_lines == 0
    assert await child.stop(POLITE) == 0
    assert child.ended_by == "stdin"
    assert child.returncode == 0 and child.exited.is_set() and child.ended.is_set()
    assert child.failure is None
    assert live_members(child.pid) == []


async def test_concurrent_writes_each_arrive_whole(children: list[Child]) -> None:
    child, got = await start(children, child_spec("echo"))
    await child.write(INIT)
    text = "y" * 200_000  # several pipe buffers: writers wait in drain together
    await asyncio.gather(
        *(child.write(request(10 + n, "tools/call", name="echo", arguments={"text": f"{n}{text}"})) for n in range(20))
    )
    await until(lambda: len(answers(got)) == 21, "20 echo answers")
    for n in range(20):
        assert answers(got)[10 + n]["result"]["content"][0]["text"] == f"{n}{text}"
    await child.stop(POLITE)


async def test_garbage_lines_are_skipped_counted_and_logged_once_per_window(children: list[Child]) -> None:
    with capture_logs() as logs:
        child, got = await start(children, child_spec("garbage"), clock=lambda: 0.0)
        await child.write(INIT)
        await child.write(request(2, "ping"))
        await until(lambda: 2 in answers(got), "the ping answer")
        assert await child.stop(POLITE) == 0
    assert [m["id"] for m in got] == [1, 2]
    assert child.garbage_lines == len(stdio_children.GARBAGE) == 5
    warnings = [entry for entry in logs if entry["event"] == "stdio_child_garbage"]
    assert warnings == [
        {"event": "stdio_child_garbage", "log_level": "warning", "upstream": "kid", "pid": child.pid,
         "sample": "this is not json", "count": 1}
    ]  # fmt: skip


async def test_a_garbage_warning_is_redacted_and_carries_the_running_count(children: list[Child]) -> None:
    ticks = iter(range(0, 10_000, 11))  # each look at the clock is a new window
    with capture_logs() as logs:
        child, got = await start(children, child_spec("garbage"), clock=lambda: float(next(ticks)))
        await child.write(INIT)
        await until(lambda: 1 in answers(got), "the initialize answer")
        await child.stop(POLITE)
    warnings = [(entry["sample"], entry["count"]) for entry in logs if entry["event"] == "stdio_child_garbage"]
    assert warnings == [
        ("this is not json", 1),
        ("Authorization: [redacted]", 2),
        ("42", 3),
        ('"a string"', 4),
        ("{truncated", 5),
    ]


async def test_a_line_over_the_bound_breaks_the_child_which_is_stopped(children: list[Child]) -> None:
    ended: list[str] = []
    child, got = await start(children, child_spec("long_line"), on_end=lambda: ended.append("end"), grace=RUDE)
    assert await asyncio.wait_for(child.wait(), WAIT) == -15  # blocked writing the rest: SIGTERM ends it
    await child.stop(RUDE)
    assert got == []
    assert ended == ["end"]
    assert child.failure is not None
    assert child.failure.startswith("the child broke the stdio framing: the child wrote more than 8388608 bytes")
    assert child.end_reason == child.failure
    assert child.ended_by == "sigterm"
    assert live_members(child.pid) == []


# --- ending ------------------------------------------------------------------------------------------


async def test_a_child_that_exits_is_gone_and_writes_are_refused_unsent(children: list[Child]) -> None:
    ended: list[str] = []
    child, _ = await start(children, child_spec("exit_now"), on_end=lambda: ended.append("end"))
    assert await asyncio.wait_for(child.wait(), WAIT) == 3
    await until(child.ended.is_set, "the child ended")
    with pytest.raises(ChildNotRunning) as refused:
        await child.write(INIT)
    assert refused.value.reason == "upstream_unavailable" and refused.value.code == -32050
    assert refused.value.message == "upstream kid: the child exited with code 3"
    assert await child.stop(POLITE) == 3
    assert child.ended_by == "exit"
    assert ended == ["end"]
    assert live_members(child.pid) == []


async def test_a_child_ignoring_eof_is_ended_by_sigterm(children: list[Child]) -> None:
    child, got = await start(children, child_spec("ignore_eof"))
    await child.write(INIT)
    await until(lambda: 1 in answers(got), "the initialize answer")
    assert await child.stop(RUDE) == -15
    assert child.ended_by == "sigterm"
    assert live_members(child.pid) == []


async def test_a_child_ignoring_sigterm_needs_sigkill(children: list[Child]) -> None:
    child, got = await start(children, child_spec("ignore_term"))
    await child.write(INIT)
    await until(lambda: 1 in answers(got), "the initialize answer")  # its SIGTERM handler is in place
    began = time.monotonic()
    assert await child.stop(RUDE) == -9
    assert time.monotonic() - began >= 2 * RUDE  # it was given each grace
    assert child.ended_by == "sigkill"
    assert exit_text(-9) == "was killed by SIGKILL"
    assert live_members(child.pid) == []


async def test_stop_leaves_no_grandchild_behind(children: list[Child]) -> None:
    child, got = await start(children, child_spec("grandchild"))
    await child.write(INIT)
    await until(lambda: 1 in answers(got), "the initialize answer")
    await until(lambda: len(live_members(child.pid)) == 2, "the grandchild")
    grandchild = next(pid for pid in live_members(child.pid) if pid != child.pid)
    with capture_logs() as logs:
        assert await child.stop(POLITE) == 0
    assert child.ended_by == "stdin"  # the leader went politely; its grandchild holds our stdout open
    assert live_members(child.pid) == []
    assert (
        not Path(f"/proc/{grandchild}").exists()
        or Path(f"/proc/{grandchild}/stat").read_bytes().split(b") ")[1][:1] == b"Z"
    )
    assert [entry["event"] for entry in logs if entry["event"].startswith("stdio_child_leftovers")] == [
        "stdio_child_leftovers"
    ]


async def test_leftovers_are_ended_even_when_the_leader_exited_on_its_own(children: list[Child]) -> None:
    child, got = await start(children, child_spec("grandchild"))
    await child.write(INIT)
    await until(lambda: 1 in answers(got), "the initialize answer")
    await until(lambda: len(live_members(child.pid)) == 2, "the grandchild")
    await child.write(request(2, "tools/call", name="exit", arguments={"code": 7}))
    assert await asyncio.wait_for(child.wait(), WAIT) == 7  # known at once, though the grandchild holds stdout
    assert await child.stop(POLITE) == 7
    assert child.ended_by == "exit"
    assert live_members(child.pid) == []


async def test_stop_is_idempotent_and_safe_concurrently(children: list[Child]) -> None:
    child, got = await start(children, child_spec("ignore_term"))
    await child.write(INIT)
    await until(lambda: 1 in answers(got), "the initialize answer")
    with capture_logs() as logs:
        codes = await asyncio.gather(child.stop(RUDE), child.stop(RUDE), child.stop(RUDE))
        again = await child.stop(RUDE)
    assert list(codes) == [-9, -9, -9] and again == -9
    assert [entry["event"] for entry in logs].count("stdio_child_stopped") == 1
    assert live_members(child.pid) == []


async def test_a_cancelled_stop_is_finished_by_the_next(children: list[Child]) -> None:
    child, got = await start(children, child_spec("ignore_term"))
    await child.write(INIT)
    await until(lambda: 1 in answers(got), "the initialize answer")
    first = asyncio.create_task(child.stop(POLITE))
    await until(lambda: child.ended_by == "stdin", "the stop's first step")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert child.returncode is None
    assert await child.stop(RUDE) == -9
    assert child.ended_by == "sigkill"
    assert live_members(child.pid) == []


async def test_a_program_that_cannot_start_is_refused_unsent() -> None:
    spec = ChildSpec(name="kid", argv=("/nonexistent/server",), env={}, cwd=None, stderr="log")
    with pytest.raises(ChildNotRunning) as refused:
        await spawn(spec, lambda message: None)
    assert refused.value.message == "upstream kid: could not start '/nonexistent/server': No such file or directory"
    with pytest.raises(ValueError, match="upstream kid: the command is empty"):
        ChildSpec(name="kid", argv=(), env={}, cwd=None, stderr="log")


# --- stderr --------------------------------------------------------------------------------------------


async def test_stderr_lines_are_logged_clipped_redacted_and_rate_limited(children: list[Child]) -> None:
    with capture_logs() as logs:
        child, got = await start(children, child_spec("stderr_flood"), clock=lambda: 0.0)
        await until(lambda: any(e["event"] == "stdio_child_stderr_suppressed" for e in logs), "the flood's end")
        await child.write(INIT)
        await until(lambda: 1 in answers(got), "the initialize answer")
        await child.stop(POLITE)
    lines = [entry for entry in logs if entry["event"] == "stdio_child_stderr"]
    assert len(lines) == STDERR_LINES_PER_WINDOW == 50
    assert lines[0] == {"event": "stdio_child_stderr", "log_level": "info", "upstream": "kid", "pid": child.pid,
                        "line": "token=[redacted] oops"}  # fmt: skip
    assert lines[1]["line"] == "x" * 4096 + "…[cut]"
    assert [entry["line"] for entry in lines[2:]] == [f"flood line {n}" for n in range(48)]
    suppressed = [entry for entry in logs if entry["event"] == "stdio_child_stderr_suppressed"]
    assert suppressed == [{"event": "stdio_child_stderr_suppressed", "log_level": "warning", "upstream": "kid",
                           "pid": child.pid, "count": stdio_children.FLOOD - 50}]  # fmt: skip


async def test_stderr_discarded_is_never_read(children: list[Child]) -> None:
    with capture_logs() as logs:
        child, got = await start(children, child_spec("stderr_flood", stderr="discard"))
        await child.write(INIT)
        await until(lambda: 1 in answers(got), "the initialize answer")
        await child.stop(POLITE)
    assert [entry for entry in logs if entry["event"].startswith("stdio_child_stderr")] == []


def test_stderr_lines_are_cut_at_the_bound_however_they_arrive() -> None:
    lines = _ClippedLines(8)
    assert lines.feed(b"abc\r\n\nlonger-than-eight") == [(b"abc", False), (b"longer-t", True)]
    assert lines.feed(b"still the long line\nnext") == []
    assert lines.feed(b" one\n0123456789\n") == [(b"next one", False), (b"01234567", True)]
    assert lines.feed(b"tail") == [] and lines.flush() == [(b"tail", False)]


def test_the_window_allows_its_limit_and_reports_what_it_refused() -> None:
    now = [0.0]
    window = _Window(2, 1.0, lambda: now[0])
    assert [window.allow() for _ in range(5)] == [True, True, False, False, False]
    assert window.roll() == 0  # the window is not over
    now[0] = 1.0
    assert window.roll() == 3
    assert window.allow() and window.suppressed == 0


def test_under_uvloop_the_exit_is_known_at_once_and_stop_leaves_nothing(children: list[Child]) -> None:
    """The proxy runs on uvloop (`proxy.cli`): its subprocess transport must report the exit while a
    grandchild holds the pipes, and the stop sequence must escalate the same way."""

    async def scenario() -> tuple[int, int, EndedBy | None, int, EndedBy | None]:
        child, got = await start(children, child_spec("grandchild"))
        await child.write(INIT)
        await until(lambda: 1 in answers(got), "the initialize answer")
        await until(lambda: len(live_members(child.pid)) == 2, "the grandchild")
        await child.write(request(2, "tools/call", name="exit", arguments={"code": 7}))
        exited = await asyncio.wait_for(child.wait(), WAIT)
        stopped = await child.stop(POLITE)
        stubborn, got = await start(children, child_spec("ignore_term"))
        await stubborn.write(INIT)
        await until(lambda: 1 in answers(got), "the initialize answer")
        return exited, stopped, child.ended_by, await stubborn.stop(RUDE), stubborn.ended_by

    assert uvloop.run(scenario()) == (7, 7, "exit", -9, "sigkill")
    assert [live_members(child.pid) for child in children] == [[], []]


def shell_spec(script: str) -> ChildSpec:
    """`sh -c SCRIPT` then the echo child, as a wrapper script in a user's config would run it."""
    env = child_environment({"PYTHONPATH": str(REPO)})
    argv = ("sh", "-c", f"{script} && exec {sys.executable} -m tests.stdio_children echo")
    return ChildSpec(name="kid", argv=argv, env=env, cwd=str(REPO), stderr="log")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_child_gets_real_pipes_it_can_reopen_by_path(children: list[Child], loop: str) -> None:
    """A wrapper writing to /dev/stderr works as under any MCP client: uvloop's socketpairs would make that
    open fail (ENXIO) and the child exit before it answered anything."""

    async def scenario() -> tuple[Any, list[str]]:
        with capture_logs() as logs:
            child, got = await start(children, shell_spec("echo started >/dev/stderr"))
            await child.write(INIT)
            await until(lambda: 1 in answers(got), "the initialize answer")
            await until(lambda: any(e.get("line") == "started" for e in logs), "the stderr line")
            await child.stop(POLITE)
        return answers(got)[1]["result"]["protocolVersion"], [e["line"] for e in logs if "line" in e]

    run = uvloop.run if loop == "uvloop" else asyncio.run
    version, lines = run(scenario())
    assert version == "2025-11-25"
    assert lines == ["started"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_child_that_closes_its_stdout_is_seen_to_end(children: list[Child], loop: str) -> None:
    """`exec 1>&-` while it keeps running: the proxy's end of the pipe reads EOF (no spare copy holds it)."""

    async def scenario() -> EndedBy | None:
        env = child_environment({})
        child = await spawn(ChildSpec(name="kid", argv=("sh", "-c", "exec 1>&-; sleep 30"), env=env), lambda _: None)
        children.append(child)
        await asyncio.wait_for(child.ended.wait(), WAIT)  # seen: EOF on the proxy's end, the child still running
        await child.stop(RUDE)
        return child.ended_by

    run = uvloop.run if loop == "uvloop" else asyncio.run
    assert run(scenario()) == "sigterm"  # it did not exit on its own: the proxy ended it because stdout closed


def test_the_childs_configured_secrets_never_reach_the_log_whatever_surrounds_them(children: list[Child]) -> None:
    """A token from the upstream's `env`, printed bare (no ``NAME=`` the generic redaction would know): masked."""
    secret = "sk-live-abcdef0123456789"

    async def scenario() -> list[str]:
        env = child_environment({"API_TOKEN": secret})
        argv = ("sh", "-c", 'echo "starting; token is $API_TOKEN" >&2; echo "using $API_TOKEN here" >&2; sleep 30')
        spec = ChildSpec(name="kid", argv=argv, env=env, secrets=(secret, "1"))
        with capture_logs() as logs:
            child = await spawn(spec, lambda _: None)
            children.append(child)
            await until(lambda: len([e for e in logs if "line" in e]) == 2, "both stderr lines")
            await child.stop(RUDE)
        return [e["line"] for e in logs if "line" in e]

    assert asyncio.run(scenario()) == ["starting; token is [redacted]", "using [redacted] here"]
