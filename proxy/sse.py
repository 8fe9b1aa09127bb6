"""An incremental Server-Sent Events parser: bytes in, as they arrive; whole events out.

The proxy forwards each upstream chunk to the client untouched and *also* feeds it here, so it knows
which JSON-RPC messages passed, when the final response of a request went by and whether it was an
error, without ever holding more than one unfinished event in memory. Line endings follow the SSE
specification (CRLF, LF or CR); comments (``:`` lines) are skipped; ``retry`` is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser"]


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. `data` is the data lines joined with newlines, as the spec says."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Feed it chunks with `feed()`; it returns the events each chunk completed."""

    __slots__ = ("_data", "_event", "_id", "_partial", "_pending_cr", "last_event_id")

    def __init__(self) -> None:
        self._partial: list[bytes] = []
        """The pieces of the unfinished last line, joined only once its end arrives: a long line fed in
        many chunks costs linear time, not a copy and a re-scan of everything so far per chunk."""
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._pending_cr = False
        self.last_event_id: str | None = None
        """The last `id:` seen: what a client would send back as Last-Event-ID."""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume `chunk`; return the events it completed (often none, sometimes several)."""
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        if b"\r" in chunk:
            self._pending_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            if chunk:
                self._partial.append(chunk)
            return []
        lines = chunk.split(b"\n")
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
        rest = lines.pop()
        self._partial = [rest] if rest else []
        events: list[SSEEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, raw: bytes) -> SSEEvent | None:
        if not raw:
            return self._dispatch()
        line = raw.decode("utf-8", errors="replace")
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        if self._id is not None:
            self.last_event_id = self._id
        if not self._data:
            self._event, self._id = "", None
            return None
        event = SSEEvent("\n".join(self._data), self._event or "message", self._id)
        self._data, self._event, self._id = [], "", None
        return event
