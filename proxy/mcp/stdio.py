"""The MCP stdio transport's framing, without I/O: one JSON-RPC message per line, each way.

A stdio server (issue 14: a child process as an upstream) reads requests from its stdin and writes
messages to its stdout, each a line of UTF-8 JSON with no newline inside. This module turns the bytes a
child wrote, cut however the pipe delivered them, into its lines (`LineReader`), and a message into the
line to write (`frame`). The process, its pipes and its supervision are the upstream layer's.

What real servers do, measured (npm server-everything 2026.8.31, the SDK 2.3 server, FastMCP 4.1.6):
their stdout carries JSON-RPC only (banners and logs go to stderr); an empty line or a line that is not
JSON-RPC is dropped without an answer; none bounds what it accepts but the TypeScript SDK's, which
closes its transport (and the process exits 0, silently) on a line over 10 MiB. So:

- a line longer than `max_line` is a child's fault (`LineTooLong`): a stream that cannot be resynchronised
  without reading all of it, and a proxy must never hold an unbounded line; the child is restarted;
- a ``\\r`` before the ``\\n`` is tolerated (a child on another platform's conventions), and empty lines
  are skipped, as the servers skip them;
- `frame` writes compact JSON: a message whose bytes hold a newline (a client's pretty-printed body) is
  written again without one, since the line is the message.
"""

from __future__ import annotations

from typing import Any, Final

import json

import orjson

from proxy.errors import ProxyError

__all__ = ["MAX_LINE", "LineReader", "LineTooLong", "NotJSON", "dumps", "frame", "loads"]

MAX_LINE: Final = 8 * 1024 * 1024
"""The longest line read from a child, below the TypeScript SDK's own 10 MiB (a child it runs refuses
more anyway)."""


class LineTooLong(ProxyError):
    """A child wrote a line longer than the reader's bound: its output can no longer be trusted."""

    code = -32055
    reason = "upstream_bad_response"


class LineReader:
    """Feed it what a child's stdout delivered (`feed`), in any pieces; it returns the complete lines."""

    __slots__ = ("_max", "_partial")

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max = max_line
        self._partial = bytearray()
        """The line under way (no newline yet), at most `max_line` bytes."""

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completed, in order, without their line endings, empty ones left out. Raises
        `LineTooLong` as soon as the line under way is longer than the bound (nothing of it is kept)."""
        lines: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            piece = data[start:end]
            if self._partial:
                self._partial += piece
                line = bytes(self._partial)
                self._partial.clear()
            else:
                line = piece
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self._max:
                raise LineTooLong(f"the child wrote a line of {len(line)} bytes, over {self._max}")
            if line:
                lines.append(line)
        rest = len(data) - start
        if len(self._partial) + rest > self._max:
            size = len(self._partial) + rest
            self._partial.clear()
            raise LineTooLong(f"the child wrote more than {self._max} bytes without a line end ({size} so far)")
        self._partial += data[start:]
        return lines

    @property
    def pending(self) -> int:
        """Bytes of the line under way."""
        return len(self._partial)


class NotJSON(ValueError):
    """Bytes that are no JSON the proxy can carry (not JSON at all, nested past the parser's depth, or a
    number beyond a double's range)."""


def loads(data: bytes) -> Any:
    """JSON as the proxy carries it over a pipe: orjson, else the standard library for the valid JSON orjson
    refuses (a lone surrogate escape, which Node's ``JSON.stringify`` writes for a string cut inside an
    emoji; integers past 64 bits, which orjson would turn into floats). A number beyond a double's range
    (``1e999``) is refused (`NotJSON`): it would have to be written back as something else."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise NotJSON(str(exc)[:200]) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is beyond a double's range")
    return value


def dumps(value: Any) -> bytes:
    """Compact JSON of `value`: orjson, else (a lone surrogate, an integer past 64 bits: what `loads`
    let through) the standard library, escaping what UTF-8 cannot hold, so the bytes say what was read."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode()


def frame(body: bytes, message: Any = None) -> bytes:
    """The line that carries a message to a child: its bytes as sent when they hold no newline, else
    `message` (its parsed form, or parsed from `body`) written again as compact JSON."""
    if b"\n" not in body and b"\r" not in body:
        return body + b"\n"
    value = loads(body) if message is None else message
    return dumps(value) + b"\n"
