"""Server-Sent Events, pure (no I/O): an incremental parser, and the watcher the proxy reads SSE answers with.

`SSEParser`: bytes in, as they arrive; whole events out. `SSEWatcher`: the same bytes in; out, only what
the proxy acts on (`Seen`): the final response to the request, a server->client request, a
``list_changed`` notification, an event too large or too nested to read. Each event's ``data`` is
parsed as JSON at most once, and only when its text can hold one of those (the rest, progress
notifications and the like, is never parsed). The proxy passes each upstream chunk to the client
untouched and *also* feeds it here: nothing is ever re-serialized, and no more than one unfinished
event is held in memory. Line endings follow the SSE specification (CRLF, LF or CR); comments (``:``
lines) are skipped; ``retry`` is ignored.

Memory is bounded by `max_event`: an event larger than that is still passed through by the caller,
but the parser stops keeping it and hands out an `oversized` event with no data in its place (a
server sending one endless line would otherwise grow the proxy without bound). An event's size is the
bytes of all its lines as received (every field and comment line, without line endings), counted the
same way whether a line arrives whole or in pieces: so the events, oversized ones included, do not
depend on how the stream was cut into chunks, and a kept event's `data` is never longer than
`max_event` characters. The line that takes an event over the bound, and every later line of it, is
dropped. What the parser holds is at most `max_event` plus one chunk.

Work is linear in the bytes fed: each chunk is scanned a constant number of times, and an unfinished
line is kept in one buffer that grows in place and is copied out once, when its end arrives (never, if it
outgrows `max_event`). One buffer, not a list of the pieces: memory follows the bytes, not how finely an
upstream cut them (a 2-byte piece kept as an object of its own costs ~40 bytes).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import orjson

from proxy.mcp.jsonrpc import MAX_PARSED_CONTAINERS, list_changed_kind, too_many_containers

__all__ = ["NO_REQUEST", "NoRequest", "SSEEvent", "SSEParser", "SSEWatcher", "Seen"]

_new = tuple.__new__
"""Makes a named tuple from a tuple of all its fields, in C: the generated ``__new__`` of `SSEEvent` and
`Seen` is a Python call, and one of each is made per event."""


class SSEEvent(NamedTuple):
    """One dispatched event. `data` is the data lines joined with newlines, as the spec says.

    `oversized`: the event was larger than the parser's `max_event`; its data was not kept.
    (A named tuple, not a dataclass: one is made per event, and a frozen dataclass costs ~1 µs more.)"""

    data: str
    event: str = "message"
    id: str | None = None
    oversized: bool = False


class _EventReader:
    """The parsing both `SSEParser` and `SSEWatcher` are made of (`_events`): one object per stream."""

    __slots__ = ("_data", "_dropping_line", "_event", "_event_size", "_id", "_max", "_oversized", "_partial",
                 "_pending_cr", "last_event_id")  # fmt: skip

    def __init__(self, max_event: int | None = None) -> None:
        self._max = max_event
        self._partial = bytearray()
        """The unfinished last line so far, copied out only once its end arrives."""
        self._dropping_line = False
        """The unfinished line outgrew `max_event`: its pieces are dropped until its end."""
        self._data: list[bytes] = []
        """The event's data lines as received: decoded once, joined, when the event is dispatched."""
        self._event_size = 0
        """Bytes of the current event's lines so far (line endings excluded), the measure of `max_event`."""
        self._oversized = False
        self._event = ""
        self._id: str | None = None
        self._pending_cr = False
        self.last_event_id: str | None = None
        """The last `id:` seen: what a client would send back as Last-Event-ID."""

    @property
    def between_events(self) -> bool:
        """Nothing of an unfinished line or event is held: the bytes fed so far end where an event ended."""
        # every field line counts in the size; a CR last may be the first half of a CRLF still to come
        return not (self._partial or self._dropping_line or self._event_size or self._pending_cr)

    def _keep_partial(self, piece: bytes) -> None:
        if self._dropping_line or not piece:
            return
        partial = self._partial
        partial += piece
        size = self._event_size + len(partial)
        if self._max is not None and size > self._max:
            self._event_size = size  # over the bound now: every later line of the event is dropped
            self._partial, self._data = bytearray(), []
            self._dropping_line = self._oversized = True

    def _events(self, chunk: bytes) -> list[SSEEvent]:
        """Consume `chunk`; return the events it completed (often none, sometimes several).

        One pass over the lines, fields compared as bytes: only an event's data (once, at dispatch), its
        type and its id are decoded (UTF-8, invalid bytes replaced; a line ending is ASCII, so no
        character spans two lines and decoding line by line or joined gives the same text)."""
        if not chunk:
            return []  # nothing to do, and a CR that ended the last chunk may still pair with the next
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        if b"\r" in chunk:
            self._pending_cr = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if b"\n" not in chunk:
            self._keep_partial(chunk)
            return []
        lines = chunk.split(b"\n")
        rest = lines.pop()
        if self._dropping_line:
            self._dropping_line = False
            del lines[0]  # the end of a line too long to keep: its field is lost, the event marked
        elif self._partial:
            self._partial += lines[0]
            lines[0] = bytes(self._partial)
            self._partial = bytearray()
        events: list[SSEEvent] = []
        limit = self._max
        for raw in lines:
            if not raw:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
                continue
            size = self._event_size = self._event_size + len(raw)
            if limit is not None and size > limit:
                self._data, self._oversized = [], True
                continue
            name, _, value = raw.partition(b":")
            if not name:
                continue  # a comment
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = "message" if value == b"message" else value.decode("utf-8", "replace")
            elif name == b"id" and b"\x00" not in value:
                self._id = value.decode("utf-8", "replace")
        if rest:
            self._keep_partial(rest)
        return events

    def _dispatch(self) -> SSEEvent | None:
        if self._id is not None:
            self.last_event_id = self._id
        data = self._data
        if self._oversized:
            event: SSEEvent | None = _new(SSEEvent, ("", self._event or "message", self._id, True))
        elif data:
            text = (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace")
            event = _new(SSEEvent, (text, self._event or "message", self._id, False))
        else:
            event = None
        self._data, self._event_size, self._oversized, self._event, self._id = [], 0, False, "", None
        return event


class SSEParser(_EventReader):
    """Feed it chunks with `feed()`; it returns the events each chunk completed."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume `chunk`; return the events it completed (often none, sometimes several)."""
        return self._events(chunk)


class Seen(NamedTuple):
    """What one event of a watched stream says to the proxy (`SSEWatcher.feed`); events that say nothing
    it acts on (progress, logs, plain data) give no `Seen` at all.

    - `final`: the parsed JSON-RPC response to the watched request (a ``result`` or an ``error``): the
      call's outcome, and for ``tools/list`` the page the tool catalog learns from;
    - `asks`: a server->client request (``method`` and ``id``: sampling, elicitation, roots): the server
      waits for the client's answer, so a buffered read must hand the stream on at once;
    - `list_changed`: ``tools``, ``prompts``, ``resources``... for ``notifications/<kind>/list_changed``;
    - `unparsed`: more than `proxy.mcp.jsonrpc.MAX_PARSED_CONTAINERS` objects and arrays: not read;
    - `oversized`: over the watcher's `max_event`: its data was not kept (`SSEParser`).
    """

    final: dict[str, Any] | None = None
    asks: bool = False
    list_changed: str | None = None
    unparsed: bool = False
    oversized: bool = False

    @property
    def failed(self) -> bool:
        """The final response is a JSON-RPC error."""
        return self.final is not None and "error" in self.final


_OVERSIZED: Final = Seen(oversized=True)
_UNPARSED: Final = Seen(unparsed=True)
_ASKS: Final = Seen(asks=True)


class NoRequest:
    """The request id of a stream that answers no request (a legacy GET stream, a relayed message)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_REQUEST"


NO_REQUEST: Final = NoRequest()
"""`SSEWatcher`'s request id for a stream that owes no final response: none is ever reported."""


class SSEWatcher(_EventReader):
    """Watches one SSE answer: `feed` it the chunks as they pass; it returns what they said (`Seen`).

    `request_id` is the request the stream answers (`NO_REQUEST`: none); `max_event` bounds the event
    kept in memory (`SSEParser`). Once the final response went by the watcher is done: later chunks are
    not even parsed for events (`answered`). The event ``data`` is parsed with orjson only when it can
    hold what is watched: ``"id"`` (a response, or a request to the client) or ``list_changed``; the
    checks are the same string tests the proxy always made, so what is seen does not change with them.
    """

    __slots__ = ("_request_id", "answered", "answered_at_end")

    def __init__(self, request_id: str | int | None | NoRequest = NO_REQUEST, max_event: int | None = None) -> None:
        super().__init__(max_event)
        self._request_id = request_id
        self.answered = False
        """The final response went by: nothing more is watched."""
        self.answered_at_end = False
        """The final response was the last thing in the chunk that held it (no event, and no part of one,
        after it): the relay may end the client's answer with that chunk (`proxy.server.relay`)."""

    def feed(self, chunk: bytes) -> list[Seen]:
        """Consume `chunk`; return what its complete events said, in order, up to the final response."""
        if self.answered:
            return []
        seen: list[Seen] = []
        events = self._events(chunk)
        for index, event in enumerate(events):
            sighting = self._look(event)
            if sighting is not None:
                seen.append(sighting)
                if sighting.final is not None:
                    self.answered = True
                    self.answered_at_end = index == len(events) - 1 and self.between_events
                    break
        return seen

    def _look(self, event: SSEEvent) -> Seen | None:
        if event.oversized:
            return _OVERSIZED
        if event.event != "message":  # the only events a client reads as JSON-RPC messages
            return None
        data = event.data
        if len(data) > MAX_PARSED_CONTAINERS and too_many_containers(data):
            return _UNPARSED  # parsing would build a Python object per container, uninterruptibly
        has_id = '"id"' in data
        changed = "list_changed" in data
        if not has_id and not changed:
            return None
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(message, dict):
            return None
        kind = None
        if changed:
            method = message.get("method")
            kind = list_changed_kind(method) if isinstance(method, str) else None
        if has_id:
            if "method" in message:
                if "id" in message and '"method"' in data:
                    return Seen(asks=True, list_changed=kind) if kind is not None else _ASKS
            elif (
                self._request_id is not NO_REQUEST
                and message.get("id") == self._request_id
                and ("result" in message or "error" in message)
            ):
                return _new(Seen, (message, False, None, False, False))
        return Seen(list_changed=kind) if kind is not None else None
