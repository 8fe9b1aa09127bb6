"""What a child writes besides its messages, as the proxy's log: its stderr and its stdout garbage.

Both are the child's to fill as it likes, so both are bounded where they enter: a stderr line is cut at
`STDERR_LINE_BOUND` bytes (the rest of it skipped), logged clipped to `STDERR_LOG_CHARS` characters and
redacted (the upstream's configured `env` values masked wherever they appear, then `proxy.redact.redact_text`:
a child printing its token must not put it in the proxy's log), at
most `STDERR_LINES_PER_WINDOW` a `STDERR_WINDOW` (the rest counted in one
``stdio_child_stderr_suppressed`` line); a stdout line that is not a JSON-RPC message costs a counter
increment, and one ``stdio_child_garbage`` warning per `GARBAGE_LOG_WINDOW` shows a redacted sample.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import structlog

from proxy.redact import redact_text

__all__ = [
    "GARBAGE_LOG_WINDOW",
    "STDERR_LINES_PER_WINDOW",
    "STDERR_LINE_BOUND",
    "STDERR_LOG_CHARS",
    "STDERR_WINDOW",
    "ChildLog",
    "ClippedLines",
    "Window",
]

log = structlog.get_logger("proxy.upstream.stdio")

STDERR_LINE_BOUND: Final = 64 * 1024
"""A stderr line is cut at this many bytes (its rest skipped to its end): a log line must not grow unbounded."""
STDERR_LOG_CHARS: Final = 4096
"""A stderr line is logged clipped to this many characters."""
STDERR_LINES_PER_WINDOW: Final = 50
STDERR_WINDOW: Final = 1.0
"""At most `STDERR_LINES_PER_WINDOW` stderr lines are logged per `STDERR_WINDOW` seconds; the rest are counted
and reported in one ``stdio_child_stderr_suppressed`` line when the next window starts (or stderr ends)."""
MIN_SECRET: Final = 6
"""The shortest configured `env` value masked as a secret in a child's output (a shorter one, such as
``1`` or ``true``, would mask ordinary words)."""
GARBAGE_LOG_WINDOW: Final = 10.0
"""At most one ``stdio_child_garbage`` warning per this many seconds; each carries the running count."""
GARBAGE_SAMPLE: Final = 200
"""Characters of a garbage line shown in its warning."""


class Window:
    """Allows at most `limit` events per fixed window of `period` seconds and counts the rest."""

    __slots__ = ("_clock", "_limit", "_period", "_start", "_used", "suppressed")

    def __init__(self, limit: int, period: float, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._limit = limit
        self._period = period
        self._start = clock()
        self._used = 0
        self.suppressed = 0
        """Events refused in the current window."""

    def roll(self) -> int:
        """Starts a new window if the current one is over; the count refused in the window that ended, else 0."""
        now = self._clock()
        if now - self._start < self._period:
            return 0
        self._start = now
        self._used = 0
        count, self.suppressed = self.suppressed, 0
        return count

    def allow(self) -> bool:
        """Whether one more event fits in the current window (if not, it is counted as suppressed)."""
        if self._used < self._limit:
            self._used += 1
            return True
        self.suppressed += 1
        return False


class ClippedLines:
    """Splits a stream into lines holding at most `bound` bytes: a longer line is cut there, its rest skipped."""

    __slots__ = ("_bound", "_partial", "_skipping")

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._partial = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """The lines `data` completed, each with whether it was cut (empty lines left out)."""
        lines: list[tuple[bytes, bool]] = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            piece = data[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False
                continue
            if self._partial:
                self._partial += piece[: self._bound]
                piece = bytes(self._partial)
                self._partial.clear()
            line = piece[: self._bound].rstrip(b"\r")
            if line:
                lines.append((line, len(piece) > self._bound))
        if not self._skipping:
            self._partial += data[start : start + self._bound + 1]
            if len(self._partial) > self._bound:
                lines.append((bytes(self._partial[: self._bound]), True))
                self._partial.clear()
                self._skipping = True
        return lines

    def flush(self) -> list[tuple[bytes, bool]]:
        """The unterminated last line, at the end of the stream."""
        rest = bytes(self._partial).rstrip(b"\r")
        self._partial.clear()
        return [(rest, False)] if rest and not self._skipping else []


class ChildLog:
    """One child's stderr lines and stdout garbage, as bounded, redacted, rate-limited log lines."""

    __slots__ = ("_clock", "_garbage_window", "_secrets", "garbage_lines", "name", "pid")

    def __init__(self, name: str, pid: int, clock: Callable[[], float], secrets: tuple[str, ...] = ()) -> None:
        self.name = name
        self.pid = pid
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)
        self._clock = clock
        self._garbage_window = Window(1, GARBAGE_LOG_WINDOW, clock)
        self.garbage_lines = 0
        """Stdout lines that were not a JSON object or array, skipped."""

    def garbage(self, line: bytes) -> None:
        """One stdout line that is no message: counted, and shown at most once a window."""
        self.garbage_lines += 1
        self._garbage_window.roll()
        if self._garbage_window.allow():
            sample = self._redacted(line[: GARBAGE_SAMPLE * 4].decode("utf-8", "replace"))[:GARBAGE_SAMPLE]
            log.warning(
                "stdio_child_garbage", upstream=self.name, pid=self.pid, sample=sample, count=self.garbage_lines
            )

    async def read_stderr(self, stream: asyncio.StreamReader, chunk_size: int) -> None:
        """Log what `stream` (the child's stderr) carries, until it ends."""
        lines = ClippedLines(STDERR_LINE_BOUND)
        window = Window(STDERR_LINES_PER_WINDOW, STDERR_WINDOW, self._clock)
        while chunk := await stream.read(chunk_size):
            for line, cut in lines.feed(chunk):
                self._stderr_line(window, line, cut)
        for line, cut in lines.flush():
            self._stderr_line(window, line, cut)
        if window.suppressed:
            self._suppressed(window.suppressed)

    def _stderr_line(self, window: Window, line: bytes, cut: bool) -> None:
        ended = window.roll()
        if ended:
            self._suppressed(ended)
        if not window.allow():
            return
        text = line.decode("utf-8", "replace")
        if cut or len(text) > STDERR_LOG_CHARS:
            text = text[:STDERR_LOG_CHARS] + "…[cut]"
        log.info("stdio_child_stderr", upstream=self.name, pid=self.pid, line=self._redacted(text))

    def _redacted(self, text: str) -> str:
        """`text` without the child's configured secrets (masked exactly, longest first), then through the
        one redaction every writer uses (tokens it recognises by their shape or their name)."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return redact_text(text)

    def _suppressed(self, count: int) -> None:
        log.warning("stdio_child_stderr_suppressed", upstream=self.name, pid=self.pid, count=count)
