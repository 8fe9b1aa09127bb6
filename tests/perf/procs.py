"""Child processes for the benchmark: started pinned, watched through log files, always stopped.

Every child writes stdout and stderr to files (never a pipe nobody drains), gets SIGTERM if this
process dies (``PR_SET_PDEATHSIG``), and is stopped by `Processes.close()`: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Child", "Processes", "cpu_seconds", "machine_busy_seconds"]

_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (
        int(fields[11]) + int(fields[12])
    ) / _CLOCK_TICKS  # utime, stime (fields 14, 15 of stat)


def machine_busy_seconds() -> float:
    """CPU time all processes on all CPUs have used since boot (everything but idle and iowait)."""
    fields = [
        int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]
    ]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / _CLOCK_TICKS


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_for_line(
        self, which: str, accept: Callable[[str], str | None], timeout: float = 20.0
    ) -> str:
        """Poll the child's stdout or stderr file until `accept(line)` returns a value; return it."""
        path = self.stdout if which == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in path.read_text(errors="replace").splitlines():
                found = accept(line)
                if found is not None:
                    return found
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before it was ready:\n{self.tail()}"
                )
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready after {timeout:g}s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        text = self.stdout.read_text(errors="replace") + self.stderr.read_text(
            errors="replace"
        )
        return "\n".join(text.splitlines()[-lines:])


class Processes:
    """The benchmark's children; `close()` stops every one of them, whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self.taskset = shutil.which("taskset")

    def pinned(self, argv: Sequence[str], cpus: str | None) -> list[str]:
        if cpus is None or self.taskset is None:
            return list(argv)
        return [self.taskset, "-c", cpus, *argv]

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cpus: str | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Child:
        stdout = self.workdir / f"{name}.out"
        stderr = self.workdir / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                self.pinned(argv, cpus),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=cwd,
                start_new_session=True,  # a terminal's Ctrl-C reaches us only; we stop the children
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - the benchmark starts no threads
            )
        child = Child(name, process, stdout, stderr)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace: float = 5.0) -> None:
        process = child.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(grace)
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)
