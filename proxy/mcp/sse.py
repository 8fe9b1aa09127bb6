"""Server-Sent Events, pure (no I/O): an incremental parser, and the watcher the proxy reads SSE answers with.

`SSEParser`: bytes in, as they arrive; whole events out. `SSEWatcher`: the same bytes in; out, only what
the proxy acts on (`Seen`): the final response to the request, another request's response (a stray), a
server->client request, a ``list_changed`` notification, an event too large or too nested to read, and
where in the bytes each of those events ends (so a relay can pass on whole events only). Each event's
``data`` is parsed as JSON at most once, and only when its text can hold one of those (the rest, progress
notifications and the like, is never parsed). The proxy passes the upstream's bytes to the client
untouched and *also* feeds them here: nothing is ever re-serialized, and no more than one unfinished
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

Where events end in the raw bytes (`blank_line_ends`, `last_blank_line_end`, `SSEWatcher.end_of`) is found
by a second reading of the bytes, done only when asked: the parser reads line endings normalised, and the
common case (a chunk that ends where an event ends: `between_events`) needs no offsets at all. The two
readings agree line for line: every CRLF, LF or CR ends one line in both, and a blank line is one where a
line ending follows the previous one directly (tested against each other on arbitrary streams and cuts).
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

import orjson

from proxy.mcp.jsonrpc import MAX_PARSED_CONTAINERS, list_changed_kind, answers, too_many_containers

__all__ = [
    "NO_REQUEST",
    "NoRequest",
    "SSEEvent",
    "SSEParser",
    "SSEWatcher",
    "Seen",
    "blank_line_ends",
    "last_blank_line_end",
]

_LINE_END = re.compile(rb"\r\n|\r|\n")

_BOM: Final = b"\xef\xbb\xbf"
"""A UTF-8 byte order mark: at the very start of a stream a client's SSE parser strips it (the spec)."""

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

    __slots__ = ("_bom", "_data", "_dropping_line", "_event", "_event_size", "_id", "_max", "_oversized", "_partial",
                 "_pending_cr", "bom_stripped", "last_event_id", "messages")  # fmt: skip

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
        self._bom: bytes | None = b""
        """The stream's first bytes while they may still be a byte order mark (None once decided)."""
        self.bom_stripped = 0
        """Bytes of a byte order mark left out of the chunk last fed (read, not passed: the caller's
        bytes are unchanged)."""
        self.last_event_id: str | None = None
        """The last `id:` seen: what a client would send back as Last-Event-ID."""
        self.messages = 0
        """Events with data dispatched so far (a priming event, an id with no data, is none): whether any of
        a stream's content went by (`proxy.server.continuation`: a broken answer may be sent again only before)."""

    @property
    def at_line_start(self) -> bool:
        """The bytes fed so far end with a line ending (a CR that may still pair with an LF included)."""
        return not (self._partial or self._dropping_line)

    @property
    def between_events(self) -> bool:
        """Nothing of an unfinished line or event is held: the bytes fed so far end where an event ended."""
        # every field line counts in the size; a CR last may be the first half of a CRLF still to come
        return not (self._partial or self._dropping_line or self._event_size or self._pending_cr or self._bom)

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

    def _events(self, chunk: bytes) -> list[SSEEvent | None]:
        """Consume `chunk`; return what each of its blank lines dispatched, in order: an event, or None for
        a blank line that ended no event with data (so the list has one entry per blank line: the n-th
        entry's event ends at `blank_line_ends` of the chunk's n-th offset).

        One pass over the lines, fields compared as bytes: only an event's data (once, at dispatch), its
        type and its id are decoded (UTF-8, invalid bytes replaced; a line ending is ASCII, so no
        character spans two lines and decoding line by line or joined gives the same text)."""
        self.bom_stripped = 0
        if not chunk:
            return []  # nothing to do, and a CR that ended the last chunk may still pair with the next
        if self._bom is not None:  # the stream's start: a byte order mark there is no part of its text
            head = self._bom + chunk
            if len(head) < len(_BOM) and _BOM.startswith(head):
                self._bom = head
                return []
            self._bom = None
            if head.startswith(_BOM):
                self.bom_stripped = len(_BOM) - (len(head) - len(chunk))
                chunk = chunk[self.bom_stripped :]
            elif len(head) > len(chunk):
                chunk = head  # the bytes held were no byte order mark after all
            if not chunk:
                return []
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
        events: list[SSEEvent | None] = []
        limit = self._max
        for raw in lines:
            if not raw:
                events.append(self._dispatch())
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
            self.messages += 1
            event: SSEEvent | None = _new(SSEEvent, ("", self._event or "message", self._id, True))
        elif data:
            if len(data) > 1 or data[0]:  # a priming event's empty data line is no content
                self.messages += 1
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
        return [event for event in self._events(chunk) if event is not None]


class Seen(NamedTuple):
    """What one event of a watched stream says to the proxy (`SSEWatcher.feed`); events that say nothing
    it acts on (progress, logs, plain data) give no `Seen` at all.

    - `final`: the parsed JSON-RPC response to the watched request (a ``result`` or an ``error``): the
      call's outcome, and for ``tools/list`` the page the tool catalog learns from. As on the JSON path
      (`proxy.upstream.transport.AnswerTo`, whose rule is mirrored exactly), an *error* with id null, and
      on a status other than 2xx an error with any id, is the server's answer to the request too: the
      server could not attribute it, or the HTTP layer refused the request (a client then got two
      answers, the server's and the proxy's "ended before the response");
    - `asks`: a server->client request (``method`` and ``id``: sampling, elicitation, roots): the server
      waits for the client's answer, so a buffered read must hand the stream on at once;
    - `list_changed`: ``tools``, ``prompts``, ``resources``... for ``notifications/<kind>/list_changed``;
    - `unparsed`: an event that mentions ``"id"`` (it may be the response) but that the proxy cannot read:
      more than `proxy.mcp.jsonrpc.MAX_PARSED_CONTAINERS` objects and arrays (not parsed), JSON orjson
      refuses (nested past 1024 levels, a lone surrogate: a client's parser may still read it), or JSON
      that is not one object (a batch);
    - `oversized`: over the watcher's `max_event`: its data was not kept (`SSEParser`);
    - `progress`: a ``notifications/progress`` (reported only by a watcher asked to, `SSEWatcher.progress`:
      a buffered read hands its stream on at one, so a client that resets its timeout on progress sees it);
    - `stray`: a JSON-RPC response with another id than the request's (compared as JSON-RPC values,
      `proxy.mcp.jsonrpc.same_id`: ``1.0`` is ``1``): another request's answer, which must not reach this
      client (as on the JSON path: `proxy.upstream.transport.AnswerTo`); its event is dropped and the
      request's own response still awaited, as an SDK client ignores a response with an unknown id.
    """

    final: dict[str, Any] | None = None
    asks: bool = False
    list_changed: str | None = None
    unparsed: bool = False
    oversized: bool = False
    stray: bool = False
    progress: bool = False

    @property
    def failed(self) -> bool:
        """The final response is a JSON-RPC error."""
        return self.final is not None and "error" in self.final


_OVERSIZED: Final = Seen(oversized=True)
_UNPARSED: Final = Seen(unparsed=True)
_ASKS: Final = Seen(asks=True)
_STRAY: Final = Seen(stray=True)
_PROGRESS: Final = Seen(progress=True)


class NoRequest:
    """The request id of a stream that answers no request (a legacy GET stream, a relayed message)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_REQUEST"


NO_REQUEST: Final = NoRequest()
"""`SSEWatcher`'s request id for a stream that owes no final response: none is ever reported."""


class SSEWatcher(_EventReader):
    """Watches one SSE answer: `feed` it the chunks as they pass; it returns what they said (`Seen`).

    `request_id` is the request the stream answers (`NO_REQUEST`: none, and nothing is a stray);
    `max_event` bounds the event kept in memory (`SSEParser`); `http_status` is the answer's: on one other
    than 2xx an error with any id is the HTTP layer's refusal of this request, its final response, never a
    stray (as `AnswerTo` reads a JSON answer); so is an error with id null on any status. Once the final response went by the watcher is done: later chunks are
    not even parsed for events (`answered`). A stray does not end the feed: the relay drops its event and
    goes on watching for the request's own response (`began_before` says where a stray's event began). The
    event ``data`` is parsed with orjson only when it can hold what is watched: ``"id"`` (a response, or a
    request to the client) or ``list_changed``; the checks are the same string tests the proxy always
    made, so what is seen does not change with them.

    `end_of`, `start_of` and `last_end` say where, in the chunk last fed, the event of a sighting ends or
    begins and where the last event ended: a relay passes on whole events, and ends a call's answer with
    its final response.
    """

    __slots__ = ("_any_id_error", "_at", "_request_id", "_request_ids", "_skip", "answered", "blank_lines", "fed_at_line_start",
                 "fed_between_events", "progress")  # fmt: skip

    def __init__(
        self, request_id: str | int | None | NoRequest = NO_REQUEST, max_event: int | None = None, http_status: int = 200
    ) -> None:
        super().__init__(max_event)
        self._request_id = request_id
        self._request_ids = () if isinstance(request_id, NoRequest) else (request_id,)
        self._any_id_error = not 200 <= http_status < 300
        self.answered = False
        """The final response went by: nothing more is watched."""
        self.progress = False
        """Report ``notifications/progress`` events (`Seen.progress`): a buffered read's watcher does, until
        it hands the stream on; others never parse them."""
        self.blank_lines = 0
        """Blank lines (event ends) in the chunk last fed: with none, no event ended in it."""
        self.fed_at_line_start = True
        """The bytes before the chunk last fed ended with a line ending (`at_line_start` before that feed)."""
        self.fed_between_events = True
        """No event was under way when the chunk last fed began (`began_before`)."""
        self._skip = 0
        self._at: list[int] = []
        """For each sighting of the last feed, the blank line (its index in the chunk) that ended its event."""

    def feed(self, chunk: bytes) -> list[Seen]:
        """Consume `chunk`; return what its complete events said, in order, up to the final response."""
        if self.answered:
            return []
        self.fed_at_line_start = not (self._partial or self._dropping_line)
        self.fed_between_events = self.fed_at_line_start and not self._event_size
        self._skip = 1 if self._pending_cr and chunk[:1] == b"\n" else 0
        events = self._events(chunk)
        if self.bom_stripped:  # the stream's first bytes: read as if the chunk began past the mark
            self._skip = self.bom_stripped
        self.blank_lines = len(events)
        seen: list[Seen] = []
        for index, event in enumerate(events):
            if event is None:
                continue
            sighting = self._look(event)
            if sighting is not None:
                if not seen:
                    self._at = []  # made only for a feed with sightings: the only one `end_of` is asked about
                seen.append(sighting)
                self._at.append(index)
                if sighting.final is not None:
                    self.answered = True
                    break
        return seen

    def end_of(self, chunk: bytes, sighting: int) -> int:
        """Where, in `chunk` (the one last fed), the event of the `sighting`-th sighting of that feed ends:
        the offset just past its blank line (a CRLF's LF included when it is in the chunk)."""
        return blank_line_ends(chunk, self.fed_at_line_start, self._skip)[self._at[sighting]]

    def start_of(self, chunk: bytes, sighting: int) -> int:
        """Where, in `chunk`, the event of the `sighting`-th sighting of the last feed begins: just past the
        blank line before it, or the chunk's start when it began before the chunk (`began_before`) or at its
        first byte (past the LF of a CRLF whose CR ended the chunk before: that LF ends the event before)."""
        index = self._at[sighting]
        return blank_line_ends(chunk, self.fed_at_line_start, self._skip)[index - 1] if index else self._skip

    def began_before(self, sighting: int) -> bool:
        """Whether the event of the `sighting`-th sighting of the last feed began in bytes fed before that
        chunk (`start_of` is then 0, as for an event that begins at the chunk's first byte)."""
        return self._at[sighting] == 0 and not self.fed_between_events

    def last_end(self, chunk: bytes) -> int:
        """Where, in `chunk`, the last event that ended in it ends (-1: none did)."""
        return last_blank_line_end(chunk, self.fed_at_line_start, self._skip) if self.blank_lines else -1

    def _look(self, event: SSEEvent) -> Seen | None:
        if event.oversized:
            return _OVERSIZED
        if event.event != "message":  # the only events a client reads as JSON-RPC messages
            return None
        data = event.data
        has_id = '"id"' in data
        idless_error = not has_id and '"error"' in data  # an error without an id answers the request too
        progress = self.progress and not has_id and "notifications/progress" in data
        if len(data) > MAX_PARSED_CONTAINERS and too_many_containers(data):
            # parsing would build a Python object per container, uninterruptibly; without an id it is no response
            return _UNPARSED if has_id else None
        changed = "list_changed" in data
        if not has_id and not changed and not idless_error and not progress:
            return None
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _UNPARSED if has_id else None  # it may be the response, in JSON a client's parser reads
        if not isinstance(message, dict):
            return _UNPARSED if has_id else None
        kind = None
        if changed:
            method = message.get("method")
            kind = list_changed_kind(method) if isinstance(method, str) else None
        if has_id or idless_error:
            if "method" in message:
                if "id" in message and '"method"' in data:
                    return Seen(asks=True, list_changed=kind) if kind is not None else _ASKS
            elif not isinstance(self._request_id, NoRequest) and ("result" in message or "error" in message):
                if answers(message, self._request_ids, self._any_id_error):  # the JSON path's rule too
                    return _new(Seen, (message, False, None, False, False, False, False))
                if message.get("jsonrpc") == "2.0":
                    return _STRAY  # another request's answer
        if progress and message.get("method") == "notifications/progress":
            return _PROGRESS
        return Seen(list_changed=kind) if kind is not None else None


def blank_line_ends(data: bytes, line_start: bool = True, skip: int = 0) -> list[int]:
    """The offsets just past each blank line of `data`, in order: where the events it completes end.

    `line_start`: `data` begins a line (the bytes before it ended with a line ending); `skip`: 1 when its
    first byte is the LF of a CRLF whose CR came before it (that LF ends no line of its own). A CRLF is
    one line ending, as are a lone CR and a lone LF (the SSE specification)."""
    ends: list[int] = []
    line = skip if line_start else -1
    for match in _LINE_END.finditer(data, skip):
        start, end = match.span()
        if start == line:
            ends.append(end)
        line = end
    return ends


def last_blank_line_end(data: bytes, line_start: bool = True, skip: int = 0) -> int:
    """`blank_line_ends(data, ...)[-1]`, or -1 without a blank line; found from the end, in C, when `data`
    holds no CR (the usual line ending is LF)."""
    if b"\r" in data:
        ends = blank_line_ends(data, line_start, skip)
        return ends[-1] if ends else -1
    at = data.rfind(b"\n\n", skip)
    if at >= 0:
        return at + 2
    return skip + 1 if line_start and data[skip : skip + 1] == b"\n" else -1
