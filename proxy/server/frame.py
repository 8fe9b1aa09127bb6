"""What of a watched SSE stream may go to the client now: whole events only, another request's dropped.

The relay (`proxy.server.pump`) holds back the bytes of an event not yet complete, so that an event the
proxy adds when a stream breaks (the JSON-RPC error, `proxy.server.relay`) never lands inside a half
event. A client's SSE parser dispatches an event only at its blank line anyway, so holding costs no event
any time. An event that outgrows `MAX_HELD_EVENT` passes as it comes (a large result streams rather than
waits whole in memory); if the proxy must add an event after part of one went out, that part is ended
first (`Frame.ended`) as an event MCP clients ignore. No I/O here: `Frame` says what to write, the pump writes it.
"""

from __future__ import annotations

from proxy.mcp.sse import SSEWatcher, last_blank_line_end

__all__ = ["DISCARDED_EVENT", "MAX_HELD_EVENT", "Frame"]

MAX_HELD_EVENT = 1024 * 1024
"""The most of an unfinished event the relay holds back (`proxy.server.pump.pump`): past it the event
passes as it comes, so a large result streams rather than waits whole in memory."""
DISCARDED_EVENT = b"event: mcp-proxy-discarded\n\n"
"""Ends an unfinished event that went out in part before the proxy adds an event of its own (`_cut`)."""


class Frame:
    """What of a watched stream may go to the client now: whole events, a stray's dropped (`before`). The
    bytes of the event under way are `held` until its blank line arrives, up to `MAX_HELD_EVENT`; past
    that the event passes as it comes (`passing`), and `ended` says how to end the part sent if the proxy
    must add an event after it."""

    __slots__ = ("held", "passing")

    def __init__(self) -> None:
        self.held = bytearray()
        self.passing = False

    def whole(self, chunk: bytes, watcher: SSEWatcher, at: int = 0) -> bytes | bytearray:
        """What may go on now, `chunk` just fed to `watcher`, from `at` on (what precedes it was dealt with:
        `before`): every event it completed, the held start of the first of them included; what follows
        the last is held."""
        held = self.held
        if watcher.between_events:  # the usual case: the chunk ends where an event ends
            self.passing = False
            if not held:
                return chunk[at:] if at else chunk
            self.held = bytearray()
            return held + chunk[at:]
        out: bytes | bytearray
        if watcher.blank_lines:
            end = watcher.last_end(chunk)  # never before `at`: that is a blank line's end too
            out, self.held, self.passing = held + chunk[at:end], bytearray(chunk[end:]), False
        elif self.passing:
            return chunk[at:] if at else chunk
        else:
            out = b""
            held += chunk[at:] if at else chunk
        return self._bounded(out)

    def first(self, read: bytes, watcher: SSEWatcher) -> bytes | bytearray:
        """`whole` for the bytes a buffered read took already (the watcher has seen them all)."""
        end = len(read) if watcher.between_events else max(last_blank_line_end(read), 0)
        self.held = bytearray(read[end:])
        return self._bounded(read[:end])

    def rest(self, chunk: bytes, at: int = 0) -> bytes | bytearray:
        """Everything from `at` on: watching has stopped, and the stream passes as it comes from here."""
        if not self.held:
            return chunk[at:] if at else chunk
        out, self.held = self.held + chunk[at:], bytearray()
        return out

    def before(self, chunk: bytes, at: int, start: int, began_before: bool, watcher: SSEWatcher) -> bytes | bytearray:
        """What may go on of `chunk` from `at` when its event at `start` (a stray) is dropped: the events
        before it. An event begun in earlier bytes (`began_before`) is dropped with what is held of it;
        when its start went out already (an event passing), what goes on is the `_cut` that ends it, as
        an event MCP clients ignore. The caller goes on from the dropped event's end."""
        out: bytes | bytearray
        if began_before:
            out = _cut(watcher.fed_at_line_start) if self.passing else b""
        else:
            out = self.held + chunk[at:start] if self.held else chunk[at:start]
        self.held, self.passing = bytearray(), False
        return out

    def ended(self, watcher: SSEWatcher) -> bytes:
        """The stream is over with the event under way unfinished: what ends the part of it already sent."""
        return _cut(watcher.at_line_start) if self.passing else b""

    def _bounded(self, out: bytes | bytearray) -> bytes | bytearray:
        """Past `MAX_HELD_EVENT`, the held start of the event goes too, and the event passes as it comes."""
        if len(self.held) <= MAX_HELD_EVENT:
            return out
        out, self.held, self.passing = out + self.held, bytearray(), True
        return out


def _cut(at_line_start: bool) -> bytes:
    """What ends an unfinished event that went out in part: its line, then the event, typed so that MCP
    clients (which read only ``message`` events) ignore it. A spec-following client drops an unfinished
    event only at the stream's end, and the proxy is about to add an event of its own."""
    return (b"" if at_line_start else b"\n") + DISCARDED_EVENT
