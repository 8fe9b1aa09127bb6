"""Starting a child process with real pipes, and knowing when it exits, whatever the event loop.

Why not the event loop's `subprocess_exec`: uvloop (the proxy's loop) gives a child socketpairs for
``PIPE`` and lets it inherit spare copies of its own standard descriptors (measured, uvloop 0.23: fds
15-17 of the child point at its stdin, stdout and stderr). A child then cannot reopen ``/dev/stderr``
(``sh -c 'echo >/dev/stderr'`` fails with ENXIO, as it never does under an MCP client), and one that
closes its stdout is never seen to (its spare copy keeps the pipe open). So the proxy makes the pipes
(`os.pipe`, its own ends close-on-exec), starts the child with the standard library's `subprocess.Popen`
(``close_fds``: the child holds exactly its three descriptors), hands its ends of the pipes to the loop
as streams, and learns of the exit from a pidfd the loop watches (Linux 5.3+; elsewhere a thread waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Final, Literal

__all__ = ["READ_CHUNK", "Spawned", "start_process"]

READ_CHUNK: Final = 64 * 1024
"""Bytes asked of a pipe per read, and the stream reader's limit (it stops reading the pipe at twice this)."""


class Spawned:
    """A started child: its pid, its stdin as a `StreamWriter`, its stdout (and stderr) as `StreamReader`s."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader | None,
        transports: list[asyncio.BaseTransport],
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self._transports = transports
        self._unwatch: Callable[[], None] = lambda: None

    def get_returncode(self) -> int | None:
        """The exit status once the process exited and was reaped (negative: the signal), else None."""
        return self._popen.returncode

    def close(self) -> None:
        """Close the proxy's ends of the pipes and stop watching the exit (the process is not signalled)."""
        self._unwatch()
        for transport in self._transports:
            transport.close()


async def start_process(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None,
    stderr: Literal["log", "inherit", "discard"],
    on_exit: Callable[[], None],
) -> Spawned:
    """Start `argv` in a process group of its own; `on_exit` is called (in the loop) once it has exited and
    been reaped. Raises `OSError` when it cannot be started (not found, not executable, bad `cwd`)."""
    loop = asyncio.get_running_loop()
    pipes = _Pipes(stderr == "log")
    child_stderr: int | None = (
        pipes.child_stderr if stderr == "log" else subprocess.DEVNULL if stderr == "discard" else None
    )
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=pipes.child_stdin,
            stdout=pipes.child_stdout,
            stderr=child_stderr,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    except BaseException:
        pipes.close()
        raise
    pipes.close_childs_ends()
    spawned = await pipes.connect(loop, popen)
    spawned._unwatch = _watch_exit(loop, popen, on_exit)
    return spawned


class _Pipes:
    """The three pipes of one child, until their ends are handed over (`close` frees what was not)."""

    def __init__(self, with_stderr: bool) -> None:
        self._fds: list[int] = []
        self.child_stdin, self._stdin = self._pipe()
        self._stdout, self.child_stdout = self._pipe()
        self._stderr: int | None = None
        self.child_stderr: int | None = None
        if with_stderr:
            self._stderr, self.child_stderr = self._pipe()

    def _pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self._fds += [read, write]
        return read, write

    def close_childs_ends(self) -> None:
        """The child has its copies now: the proxy keeps only its own ends (or the child's EOF never comes)."""
        for fd in (self.child_stdin, self.child_stdout, self.child_stderr):
            if fd is not None:
                self._close(fd)

    async def connect(self, loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes]) -> Spawned:
        """The proxy's ends as streams of the loop."""
        transports: list[asyncio.BaseTransport] = []
        try:
            writer_transport, writer_protocol = await loop.connect_write_pipe(
                lambda: _WriteProtocol(loop), os.fdopen(self._take(self._stdin), "wb", buffering=0)
            )
            transports.append(writer_transport)
            stdin = asyncio.StreamWriter(writer_transport, writer_protocol, None, loop)
            stdout = await self._reader(loop, self._stdout, transports)
            stderr = await self._reader(loop, self._stderr, transports) if self._stderr is not None else None
        except BaseException:
            for transport in transports:
                transport.close()
            self.close()
            raise
        return Spawned(popen, stdin, stdout, stderr, transports)

    async def _reader(
        self, loop: asyncio.AbstractEventLoop, fd: int, transports: list[asyncio.BaseTransport]
    ) -> asyncio.StreamReader:
        reader = asyncio.StreamReader(limit=READ_CHUNK, loop=loop)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(self._take(fd), "rb", buffering=0)
        )
        transports.append(transport)
        return reader

    def _take(self, fd: int) -> int:
        self._fds.remove(fd)  # its file object owns it now
        return fd

    def _close(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            os.close(fd)

    def close(self) -> None:
        for fd in list(self._fds):
            self._close(fd)


class _WriteProtocol(asyncio.streams.FlowControlMixin, asyncio.BaseProtocol):
    """The write side of the child's stdin: `drain` waits while the pipe is full."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)


def _watch_exit(
    loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes], on_exit: Callable[[], None]
) -> Callable[[], None]:
    """Call `on_exit` in the loop once `popen` exited (reaped by `poll`); the function that stops watching.

    A pidfd becomes readable when its process exits, so the loop watches it like a socket; where there is
    none (not Linux, an old kernel), a thread of the default executor waits instead."""
    return _ExitWatch(loop, popen, on_exit).stop


class _ExitWatch:
    __slots__ = ("_done", "_loop", "_on_exit", "_pidfd", "_popen")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes], on_exit: Callable[[], None]
    ) -> None:
        self._loop, self._popen, self._on_exit = loop, popen, on_exit
        self._done = False
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            loop.run_in_executor(None, popen.wait).add_done_callback(lambda _: self._exited())
            return
        loop.add_reader(self._pidfd, self._exited)

    def _exited(self) -> None:
        if not self._done and self._popen.poll() is not None:
            self._done = True
            self.stop()
            self._on_exit()

    def stop(self) -> None:
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(pidfd)
            os.close(pidfd)
