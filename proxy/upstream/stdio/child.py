"""One stdio child process: its pipes, its output read line by line, and a stop that leaves nothing behind.

A stdio MCP server is a program the proxy starts (`spawn`) and talks to over pipes: JSON-RPC lines into its
stdin, JSON-RPC lines out of its stdout (framed by `proxy.mcp.stdio`), logs on its stderr. This module owns
the process and nothing of MCP; `proxy.upstream.stdio.supervisor` keeps one initialized child running.

- **Its own process group** (``start_new_session``): servers are often launchers (``npx``, ``uvx``,
  ``sh -c``) whose real server is a grandchild. Signals go to the whole group (`proxy.upstream.stdio.group`), and `stop`
  ends the group's leftovers even when the leader already exited, so no server outlives its child.
- **The stop sequence** is the one the MCP specification gives for stdio: close its stdin, wait; SIGTERM,
  wait; SIGKILL. `Child.ended_by` says which step ended it (tests and logs read it).
- **Exit is known when the process exits**, not when its pipes close: `asyncio.create_subprocess_exec`'s
  `Process.wait` (Python 3.11) returns only once every pipe is closed, and a grandchild holding the
  child's stdout open (or our own stdin pipe, open until we close it) would hide the exit for ever. So
  `spawn` builds the same `Process` from `loop.subprocess_exec` with a protocol that also reports
  ``process_exited`` at once.
- **Bounded memory whatever the child writes**: stdout is read in chunks under `MAX_LINE` (a longer line
  is `LineTooLong`: the child is broken and stopped); stderr and stdout garbage become bounded log lines
  (`proxy.upstream.stdio.output`); stderr lines are cut at 64 KiB, logged clipped to
  4 KiB, redacted and rate-limited; a stdout line that is not a JSON object or array is counted
  (`Child.garbage_lines`) and logged rate-limited, so a flood costs a counter increment per line.
- **The environment is chosen, not inherited** (`child_environment`): the proxy's own secrets (its
  upstream tokens, cloud credentials) must not reach every server it runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

import structlog

from proxy.config.stdio import INHERITED_ENV, child_environment
from proxy.errors import NeverSent, UpstreamUnavailable
from proxy.mcp.stdio import MAX_LINE, LineReader, LineTooLong, NotJSON, loads
from proxy.tasks import Owner, cancel_and_wait
from proxy.upstream.stdio.group import group_alive, killpg
from proxy.upstream.stdio.output import ChildLog
from proxy.upstream.stdio.process import READ_CHUNK, Spawned, start_process
from proxy.tasks import spawn as spawn_task

__all__ = [
    "Child",
    "ChildGone",
    "ChildNotReading",
    "ChildNotRunning",
    "ChildSpec",
    "EndedBy",
    "StderrMode",
    "INHERITED_ENV",
    "child_environment",
    "exit_text",
    "spawn",
]

_GROUP_POLL: Final = 0.02
"""Seconds between looks at a process group whose leader is gone (its members are not our children: no
exit notification comes for them)."""
_KILL_WAIT: Final = 10.0
"""How long a SIGKILLed child may take to go before each ``stdio_child_unkillable`` error (a process in
uninterruptible sleep ends only when its I/O does)."""

log = structlog.get_logger("proxy.upstream.stdio")

StderrMode: TypeAlias = Literal["log", "inherit", "discard"]
"""Where a child's stderr goes: our log (`stdio_child_stderr` lines), our own stderr, or nowhere."""
EndedBy: TypeAlias = Literal["exit", "stdin", "sigterm", "sigkill"]
"""What ended a child: it exited on its own, or the step of `Child.stop` after which it exited."""

STDIN_BACKLOG: Final = 16 * 1024 * 1024
"""Bytes written to a child's stdin that it has not read yet, at most: past it a request is refused
(`ChildNotReading`) instead of queued."""


class ChildGone(UpstreamUnavailable):
    """Writing to the child failed (its stdin closed, it exited): the line may or may not have reached it."""


class ChildNotRunning(ChildGone, NeverSent):
    """The child had already ended, was stopping, or could not be started: nothing was written to it."""


class ChildNotReading(ChildNotRunning):
    """The child's stdin holds `STDIN_BACKLOG` bytes it has not read: nothing more is queued for it (a child
    that stopped reading would otherwise make the proxy hold every request sent to it)."""


@dataclass(frozen=True)
class ChildSpec:
    """What to run for one upstream: `argv` in `cwd` with exactly `env` (see `child_environment`)."""

    name: str
    """The upstream's name, for logs and errors."""
    argv: tuple[str, ...]
    env: Mapping[str, str]
    """The complete environment the child gets (nothing else of the proxy's is inherited)."""
    cwd: str | None = None
    stderr: StderrMode = "log"
    secrets: tuple[str, ...] = ()
    """Values the child's output must never carry into the proxy's log (the upstream's configured `env`
    values: its tokens), masked wherever they appear, whatever surrounds them."""

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError(f"upstream {self.name}: the command is empty")


def exit_text(returncode: int) -> str:
    """How a process ended, for messages: ``exited with code 3`` or ``was killed by SIGKILL``."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


class Child:
    """A running stdio child: write lines to it (`write`), its messages go to `on_message`, `stop` ends it.

    `ended` is set once the child can serve no more: it exited, its stdout closed, or it broke (`failure`).
    The child then stops itself in the background (the stop sequence with `grace`, its group's leftovers
    included); messages it wrote before it ended are still delivered, in order, until `stop` returns.
    """

    def __init__(
        self,
        spec: ChildSpec,
        process: Spawned,
        on_message: Callable[[Any], None],
        on_end: Callable[[], None] | None,
        grace: float,
        clock: Callable[[], float],
    ) -> None:
        self.spec = spec
        self.pid: int = process.pid
        self.started = time.monotonic()
        self.exited = asyncio.Event()
        """Set when the process exited (its `returncode` known)."""
        self.ended = asyncio.Event()
        """Set when the child can serve no more (exited, stdout closed, or broken)."""
        self.failure: str | None = None
        """Why the proxy gave up on the child (its output broke the framing), if it did."""
        self.ended_by: EndedBy | None = None
        self._returncode: int | None = None
        self._process = process
        self._on_message = on_message
        self._on_end = on_end
        self._grace = grace
        self._clock = clock
        self._stopping = False
        self._stopped = False
        self._stdout_closed = False
        self._stop_lock = asyncio.Lock()
        self._readers: Owner = set()
        self._closers: Owner = set()
        self._log = ChildLog(spec.name, self.pid, clock, spec.secrets)
        spawn_task(self._read_stdout(), name=f"stdio-stdout:{spec.name}:{self.pid}", owner=self._readers)
        if process.stderr is not None:
            spawn_task(
                self._log.read_stderr(process.stderr, READ_CHUNK),
                name=f"stdio-stderr:{spec.name}:{self.pid}",
                owner=self._readers,
            )

    @property
    def garbage_lines(self) -> int:
        """Stdout lines that were not a JSON object or array, skipped."""
        return self._log.garbage_lines

    @property
    def returncode(self) -> int | None:
        """The exit status once the process exited (negative: the signal that killed it), else None."""
        return self._returncode

    @property
    def end_reason(self) -> str:
        """Why the child ended, in words (`failure` first), or why it is still considered running."""
        if self.failure is not None:
            return self.failure
        if self._returncode is not None:
            return f"the child {exit_text(self._returncode)}"
        if self._stopping:
            return "the proxy is stopping the child"
        if self.ended.is_set():
            return "the child closed its stdout"
        return "the child is running"

    async def wait(self) -> int:
        """The exit status, once the process exited (it is not stopped for that)."""
        await self.exited.wait()
        assert self._returncode is not None
        return self._returncode

    async def write(self, line: bytes) -> None:
        """Write `line` (a framed message) and wait until the pipe took it.

        Raises `ChildNotRunning` if the child ended or is stopping (nothing written), `ChildGone` if the pipe
        broke during the write. Concurrent writes are safe: each line is handed to the pipe whole.
        """
        stdin = self._process.stdin
        if stdin is None or self.ended.is_set() or self._stopping or stdin.is_closing():
            raise ChildNotRunning(f"upstream {self.spec.name}: {self.end_reason}", upstream=self.spec.name)
        if stdin.transport.get_write_buffer_size() + len(line) > STDIN_BACKLOG:
            raise ChildNotReading(
                f"upstream {self.spec.name}: the child is not reading its stdin ({STDIN_BACKLOG} bytes wait for it)",
                upstream=self.spec.name,
            )
        try:
            stdin.write(line)
            await stdin.drain()
        except ConnectionError as exc:
            raise ChildGone(
                f"upstream {self.spec.name}: the child's stdin broke during a write ({exc!r})", upstream=self.spec.name
            ) from exc
        if stdin.is_closing():
            raise ChildGone(
                f"upstream {self.spec.name}: the child's stdin closed during a write", upstream=self.spec.name
            )

    async def stop(self, grace: float) -> int:
        """End the child and its process group; its exit status. Idempotent, and safe to call concurrently.

        Close its stdin and wait up to `grace` seconds (first, if its stdout closed, wait `grace` for it to
        exit on its own); SIGTERM the group, wait up to `grace`; SIGKILL the
        group and wait for the exit. Then the group's leftovers (a grandchild the leader left behind, even
        if the leader exited long ago) get SIGTERM, `grace`, SIGKILL; the readers finish the output already
        written (at most `grace`), and everything is closed. A stop cancelled part-way is resumed by the next.
        """
        async with self._stop_lock:
            if not self._stopped:
                await self._stop(grace)
                self._stopped = True
        assert self._returncode is not None
        return self._returncode

    async def _stop(self, grace: float) -> None:
        self._stopping = True
        self._end()
        if self._stdout_closed and self._returncode is None:
            await self._exit_within(grace)  # a child that closed its stdout is usually exiting: let it say so
        if self._returncode is not None and self.ended_by is None:
            self.ended_by = "exit"
        steps: tuple[tuple[EndedBy, Callable[[], None], float], ...] = (
            ("stdin", self._close_stdin, grace),
            ("sigterm", lambda: self._signal(signal.SIGTERM), grace),
            ("sigkill", lambda: self._signal(signal.SIGKILL), _KILL_WAIT),
        )
        for name, act, wait in steps:
            if self._returncode is not None:
                break
            act()
            self.ended_by = name
            await self._exit_within(wait)
        while self._returncode is None:
            log.error("stdio_child_unkillable", upstream=self.spec.name, pid=self.pid, waited=_KILL_WAIT)
            await self._exit_within(_KILL_WAIT)
        self._close_stdin()
        await self._sweep_group(grace)
        readers = list(self._readers)
        if readers:
            await asyncio.wait(readers, timeout=grace)
        await cancel_and_wait(self._readers)
        self._process.close()
        log.info(
            "stdio_child_stopped",
            upstream=self.spec.name,
            pid=self.pid,
            returncode=self._returncode,
            ended_by=self.ended_by,
            failure=self.failure,
        )

    def _close_stdin(self) -> None:
        stdin = self._process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.close()

    async def _exit_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self.exited.wait()
        except TimeoutError:
            return False
        return True

    def _signal(self, sig: signal.Signals) -> None:
        killpg(self.pid, sig)

    async def _sweep_group(self, grace: float) -> None:
        """End what is left of the child's process group once its leader is gone: SIGTERM, `grace`, SIGKILL."""
        if not group_alive(self.pid):
            return
        log.info("stdio_child_leftovers", upstream=self.spec.name, pgid=self.pid)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, _KILL_WAIT)):
            killpg(self.pid, sig)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while group_alive(self.pid):
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(_GROUP_POLL)
            else:
                return
        log.error("stdio_child_leftovers_unkillable", upstream=self.spec.name, pgid=self.pid)

    def _exited_now(self) -> None:
        self._returncode = self._process.get_returncode()
        self.exited.set()
        self._end()

    def _end(self, failure: str | None = None) -> None:
        """The child can serve no more: set `ended` once, tell `on_end`, and stop it unless a stop is under way."""
        if failure is not None and self.failure is None:
            self.failure = failure
        if self.ended.is_set():
            return
        self.ended.set()
        if not self._stopping:
            spawn_task(self.stop(self._grace), name=f"stdio-stop:{self.spec.name}:{self.pid}", owner=self._closers)
        if self._on_end is not None:
            try:
                self._on_end()
            except Exception:
                log.exception("stdio_child_callback_failed", upstream=self.spec.name, callback="on_end")

    async def _read_stdout(self) -> None:
        stream = self._process.stdout
        assert stream is not None
        reader = LineReader(MAX_LINE)
        while chunk := await stream.read(READ_CHUNK):
            try:
                lines = reader.feed(chunk)
            except LineTooLong as exc:
                log.error("stdio_child_line_too_long", upstream=self.spec.name, pid=self.pid, error=exc.message)
                self._end(f"the child broke the stdio framing: {exc.message}")
                return
            for line in lines:
                self._deliver(line)
        self._stdout_closed = True
        self._end()

    def _deliver(self, line: bytes) -> None:
        try:
            message = loads(line)
        except NotJSON:
            message = None
        if not isinstance(message, (dict, list)):
            self._log.garbage(line)
            return
        try:
            self._on_message(message)
        except Exception:
            log.exception("stdio_child_callback_failed", upstream=self.spec.name, callback="on_message")


async def spawn(
    spec: ChildSpec,
    on_message: Callable[[Any], None],
    *,
    on_end: Callable[[], None] | None = None,
    grace: float = 2.0,
    clock: Callable[[], float] = time.monotonic,
) -> Child:
    """Start `spec`'s program in its own process group, its messages (JSON objects and arrays) to `on_message`.

    `on_end` is called once, when the child can serve no more (`Child.ended`); the child then stops itself
    with `grace` (`Child.stop`). `clock` paces the rate limits of its logs. Raises `ChildNotRunning` when
    the program cannot be started (not found, not executable, bad `cwd`).
    """
    exited: list[Callable[[], None]] = []

    def on_exit() -> None:
        for callback in exited:
            callback()

    try:
        process = await start_process(spec.argv, env=spec.env, cwd=spec.cwd, stderr=spec.stderr, on_exit=on_exit)
    except OSError as exc:
        raise ChildNotRunning(
            f"upstream {spec.name}: could not start {spec.argv[0]!r}: {exc.strerror or exc}", upstream=spec.name
        ) from exc
    child = Child(spec, process, on_message, on_end, grace, clock)
    exited.append(child._exited_now)
    if process.get_returncode() is not None and not child.exited.is_set():
        child._exited_now()
    log.info("stdio_child_started", upstream=spec.name, pid=child.pid, program=os.path.basename(spec.argv[0]))
    return child
