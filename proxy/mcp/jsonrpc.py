"""JSON-RPC 2.0 as MCP uses it: parse, classify, build. Pure functions, no I/O.

A body is parsed once, with orjson, and the original bytes are what the upstream receives: the proxy
never re-serializes a client's message. Batches (JSON arrays) were removed from MCP in 2025-06-18 but
older clients still send them; they are forwarded as they are and never retried or cached.

Everything a client sends enters here, so the bounds on its shape are enforced here, once, before any
name becomes a metric label, an event field, a log line or a cache key:

- `MAX_JSON_DEPTH` (128): a body nested deeper is -32600 (orjson alone reads 1,024 levels and writes
  only 254; serde_json, in Rust MCP servers, refuses beyond 128 too). Deeper than 1,024 is -32700.
- `MAX_METHOD_CHARS` (128): a longer `method` is -32600.
- `MAX_NAME_CHARS` (256): a longer `params.name` of `tools/call` or `prompts/get`, or one with a control
  character, is -32602 Invalid params (what a server answers for an unknown tool). Only the length and
  control characters are checked, not the spec's suggested character set, which real servers exceed.
- `MAX_BATCH_ITEMS` (100): a longer batch is -32600, before any per-item work. An accepted batch's
  `Message.items` holds each item already checked, so nothing downstream parses an item again.

A `params.name` that is not a string is forwarded: the proxy never uses it (the call's tool is None) and
the server's own -32602 says more than ours would. Error messages give a length, never the text.

`Message.canonical_arguments` is exact: orjson reads integers beyond 64 bits and numbers with more
digits than a double holds lossily, so arguments that hold such numbers are keyed by the numbers as
written (see `_exact_arguments`); all others take orjson's sorted dump unchanged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

import orjson

__all__ = [
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "CLIENT_PACED_METHODS",
    "LONG_LIVED_METHODS",
    "MAX_BATCH_ITEMS",
    "MAX_JSON_DEPTH",
    "MAX_METHOD_CHARS",
    "MAX_NAME_CHARS",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "Kind",
    "Message",
    "MessageError",
    "READ_METHODS",
    "error_body",
    "is_read_method",
    "list_changed_kind",
    "parse_message",
    "MAX_PARSED_CONTAINERS",
    "too_many_containers",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

READ_METHODS: frozenset[str] = frozenset(
    {
        "initialize",
        "server/discover",
        "ping",
        "resources/read",
        "resources/templates/list",
        "prompts/get",
        "completion/complete",
    }
)
"""Methods that only read: safe to send twice. `*/list` is matched by suffix in `is_read_method`."""

CLIENT_PACED_METHODS: frozenset[str] = frozenset(
    {"tools/call", "resources/read", "prompts/get", "completion/complete", "sampling/createMessage"}
)
"""Methods whose work, and so whose time, the client's arguments decide (a tool asked to do much, a large
resource): their timeouts say something about the request, not about whether the server is up."""

LONG_LIVED_METHODS: frozenset[str] = frozenset({"subscriptions/listen"})
"""Requests whose SSE answer is a subscription that may stay silent for long: no idle timeout applies."""

MAX_JSON_DEPTH: Final = 128
"""Deepest nesting of arrays and objects a body may have (the message object, or a batch's array, is level
1). As serde_json's default, so a Rust MCP server refuses no less; every stage of the proxy (orjson's writer
stops at 254, Python's recursion at about 1,000) handles this depth. Deeper: -32600."""

MAX_METHOD_CHARS: Final = 128
"""Longest `method`, in characters. MCP's longest is 36 (`notifications/resources/list_changed`); a method
becomes a metric label and an event field, so a 1 MiB one must not. Longer: -32600."""

MAX_NAME_CHARS: Final = 256
"""Longest tool or prompt name (`params.name` of `tools/call`, `prompts/get`), in characters: twice what
the MCP spec (2025-11-25) says names SHOULD stay within. Longer, or with a control character: -32602."""

MAX_BATCH_ITEMS: Final = 100
"""Most items in a batch. Only pre-2025-06-18 clients batch, and then a handful of messages at a time; each
request in a batch costs the handler a rate-limit admission, so 100 bounds that work per body (geth, where
batching is the norm, allows 1,000). Longer: -32600, before any item is looked at."""

_NAMED_METHODS: Final = frozenset({"tools/call", "prompts/get"})
"""Methods whose `params.name` becomes a metric label, an event field and a policy key."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_FRACTION = re.compile(rb"\.[0-9]+(?:e[-+][0-9]+)?[,\]}]")
_EXPONENT = re.compile(rb"e[-+][0-9]+[,\]}]")


def _may_hold_a_float(dump: bytes) -> bool:
    """Whether orjson's compact `dump` may hold a float: orjson writes every float (and every integer it
    read as one) with a fraction or a signed exponent, then a `,`, `]` or `}`. A string rarely matches
    (number-like text in it ends with `"`), and then only costs the exact path's time. Both patterns
    start with a literal, which the regex engine finds without trying every position."""
    return _FRACTION.search(dump) is not None or _EXPONENT.search(dump) is not None


class Kind(Enum):
    """What a POSTed message is, which decides what the upstream owes us back."""

    REQUEST = "request"  # has `method` and `id`: a JSON-RPC response is owed
    NOTIFICATION = "notification"  # `method`, no `id`: 202 Accepted
    RESPONSE = "response"  # a client's answer to a server->client request: 202 Accepted
    BATCH = "batch"  # a JSON array (pre-2025-06-18 clients)


class _Source:
    """The JSON text a message was parsed from, parsed again exactly on first need (and then only once,
    however many items of a batch ask): numbers stay as written, as `orjson.Fragment`s."""

    __slots__ = ("raw", "_exact", "_parsed")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._exact: Any = None
        self._parsed = False

    def exact(self) -> Any:
        if not self._parsed:
            self._exact = json.loads(self.raw, parse_float=orjson.Fragment, parse_int=_exact_int)
            self._parsed = True
        return self._exact


class _Item:
    """One item of a batch's `_Source`."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _Source, index: int) -> None:
        self.batch = batch
        self.index = index

    def exact(self) -> Any:
        return self.batch.exact()[self.index]


def _exact_int(text: str) -> Any:
    # Within 18 digits an int is exact in orjson too, and "-0" is 0 to both: the same bytes on both paths.
    return int(text) if len(text) <= 18 else orjson.Fragment(text)


@dataclass(frozen=True, slots=True)
class Message:
    """One parsed POST body. `body` is the parsed JSON, kept so later stages never parse twice.

    For a batch, `items` holds one checked `Message` per item, in order (its `body` is the item itself);
    for any other kind it is empty.
    """

    kind: Kind
    body: Any
    id: str | int | None = None
    method: str | None = None
    items: tuple[Message, ...] = ()
    source: _Source | _Item | None = field(default=None, repr=False, compare=False)
    """The text `body` was parsed from, what exact keys are read from (None when built by hand)."""

    @property
    def params(self) -> dict[str, Any]:
        """The request's params object (empty when absent or not an object)."""
        params = self.body.get("params") if isinstance(self.body, dict) else None
        return params if isinstance(params, dict) else {}

    @property
    def arguments(self) -> Any:
        """What the request asks with: its params as sent (object, array or None), less `_meta`, which
        carries per-call metadata (progress tokens, versions) and never changes the answer."""
        return _arguments(self.body)

    def canonical_arguments(self) -> bytes:
        """`arguments` as canonical JSON (sorted keys, compact): cache keys and hashes. Never raises.

        Exact: arguments that differ (as a server parsing numbers exactly sees them) give different bytes;
        equal arguments give equal bytes whatever their key order or `_meta`. Numbers with a fraction or
        an exponent are compared as written (`1.0` and `1.00` are two keys: a cache miss, never a wrong
        answer); integers by value. Without floats (the common case) this is orjson's sorted dump.
        """
        arguments = self.arguments
        try:
            fast = orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # built by hand: too deep for orjson, an int beyond 64 bits, …
            return _exact_arguments(self) or _canonical_any(arguments)
        if not _may_hold_a_float(fast):
            return fast
        return _exact_arguments(self) or fast  # without a source, the floats are the values themselves


def _arguments(body: Any) -> Any:
    params = body.get("params") if isinstance(body, dict) else None
    if isinstance(params, dict) and "_meta" in params:
        return {name: value for name, value in params.items() if name != "_meta"}
    return params


def _exact_arguments(message: Message) -> bytes | None:
    """`message`'s arguments canonicalised from its source text, numbers exactly as written; None when
    it has no source (built by hand) or the source cannot be read again (cannot happen for a body that
    `parse_message` accepted, but a cache key is no reason to fail a request)."""
    if message.source is None:
        return None
    try:
        return orjson.dumps(_arguments(message.source.exact()), option=orjson.OPT_SORT_KEYS)
    except (ValueError, TypeError, IndexError, KeyError, RecursionError):
        return None


class _Text(str):
    """Output already written, on `_canonical_any`'s stack among the values still to write."""


def _canonical_any(value: Any) -> bytes:
    """Sorted-key JSON-like text of any Python value at any depth, without recursion: the last resort for
    values orjson cannot write. Integers beyond 64 bits are written in hex (Python refuses to write
    decimal integers over 4,300 digits), unwritable strings with escapes, anything else as its repr."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item)
        elif item is None or isinstance(item, bool):
            out.append({None: "null", True: "true", False: "false"}[item])
        elif isinstance(item, int):
            out.append(str(item) if -(2**63) <= item < 2**64 else hex(item))
        elif isinstance(item, float):
            out.append(repr(item))
        elif isinstance(item, str):
            out.append(json.dumps(item))
        elif isinstance(item, dict):
            pairs = sorted(((str(key), item[key]) for key in item), key=lambda pair: pair[0])
            stack.append(_Text("}"))
            for position, (key, child) in enumerate(reversed(pairs)):
                stack.append(child)
                stack.append(_Text(("," if position < len(pairs) - 1 else "") + json.dumps(key) + ":"))
            stack.append(_Text("{"))
        elif isinstance(item, list | tuple):
            stack.append(_Text("]"))
            for position, child in enumerate(reversed(item)):
                stack.append(child)
                if position < len(item) - 1:
                    stack.append(_Text(","))
            stack.append(_Text("["))
        else:
            try:
                out.append(f"<{type(item).__qualname__} {item!r}>")
            except Exception:  # noqa: BLE001  (a repr that fails still needs a key)
                out.append(f"<{type(item).__qualname__}>")
    return "".join(out).encode("utf-8", "backslashreplace")


class MessageError(Exception):
    """A body that is not JSON (-32700), not JSON-RPC (-32600), or names a tool or prompt no server has
    (-32602); `request_id` is echoed when it could be read. `message` never quotes the body."""

    def __init__(self, code: int, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _readable_id(item: Any) -> str | int | None:
    raw_id = item.get("id") if isinstance(item, dict) else None
    return raw_id if _valid_id(raw_id) else None


def _check_one(item: Any, source: _Source | _Item) -> Message:
    if not isinstance(item, dict):
        raise MessageError(INVALID_REQUEST, "Invalid Request: a JSON-RPC message must be an object")
    raw_id = item.get("id")
    request_id = raw_id if _valid_id(raw_id) else None
    if item.get("jsonrpc") != "2.0":
        raise MessageError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', request_id)
    if "method" in item:
        method = item["method"]
        if not isinstance(method, str) or not method:
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "method" must be a non-empty string', request_id)
        if len(method) > MAX_METHOD_CHARS:
            too_long = f'Invalid Request: "method" is {len(method)} characters, more than {MAX_METHOD_CHARS}'
            raise MessageError(INVALID_REQUEST, too_long, request_id)
        params = item.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "params" must be an object', request_id)
        if method in _NAMED_METHODS and isinstance(params, dict):
            _check_name(params.get("name"), request_id)
        if "id" not in item:
            return Message(Kind.NOTIFICATION, item, None, method, (), source)
        if not _valid_id(raw_id):
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
        return Message(Kind.REQUEST, item, raw_id, method, (), source)
    if ("result" in item) != ("error" in item) and "id" in item:
        return Message(Kind.RESPONSE, item, request_id, None, (), source)
    raise MessageError(INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response", request_id)


def _check_name(name: Any, request_id: str | int | None) -> None:
    """Refuse a tool or prompt name no server has. A name that is not a string is left to the server to
    refuse: the proxy never uses it (the call's `tool` is then None), and the server's own error says
    more than ours would."""
    if not isinstance(name, str):
        return
    if len(name) > MAX_NAME_CHARS:
        too_long = f'Invalid params: "name" is {len(name)} characters, more than {MAX_NAME_CHARS}'
        raise MessageError(INVALID_PARAMS, too_long, request_id)
    if _CONTROL.search(name) is not None:
        raise MessageError(INVALID_PARAMS, 'Invalid params: "name" contains a control character', request_id)


_DEPTH_PROBE: Final = 254 - MAX_JSON_DEPTH
"""orjson writes at most 254 levels: a body wrapped in this many arrays is written iff it is at most
`MAX_JSON_DEPTH` deep (tests pin both edges, so an orjson that moves its limit fails them loudly)."""

_COUNT_UP_TO: Final = 64 * 1024
"""Bodies up to this size have their brackets counted before any probe; bigger ones are probed at once
(counting runs at about 1 ms per MB, orjson writes a string-heavy body ten times faster)."""


def _too_deep(raw: bytes, body: Any) -> bool:
    """Whether `body` nests deeper than `MAX_JSON_DEPTH`, at C speed, without walking it in Python.

    A body cannot nest deeper than it has brackets, so a small body is settled by its length or two
    counts. The rest are written once by orjson inside `_DEPTH_PROBE` arrays: at most a few tenths of
    what their parse cost."""
    if len(raw) <= 2 * MAX_JSON_DEPTH:
        return False
    if len(raw) <= _COUNT_UP_TO and raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    probe = body
    for _ in range(_DEPTH_PROBE):
        probe = [probe]
    try:
        orjson.dumps(probe)
    except orjson.JSONEncodeError:
        return True
    return False


def parse_message(raw: bytes) -> Message:
    """Parse a POST body into a `Message`, or raise `MessageError` with the JSON-RPC code to answer.

    Raises nothing else, whatever `raw` holds. The bounds are in the module docstring.
    """
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MessageError(PARSE_ERROR, f"Parse error: {exc.msg}") from None
    if isinstance(body, list) and len(body) > MAX_BATCH_ITEMS:
        raise MessageError(INVALID_REQUEST, f"Invalid Request: batch of {len(body)} items exceeds {MAX_BATCH_ITEMS}")
    if _too_deep(raw, body):
        too_deep = f"Invalid Request: nested deeper than {MAX_JSON_DEPTH} levels"
        raise MessageError(INVALID_REQUEST, too_deep, _readable_id(body))
    source = _Source(raw)
    if isinstance(body, list):
        if not body:
            raise MessageError(INVALID_REQUEST, "Invalid Request: empty batch")
        items = tuple(_check_one(item, _Item(source, index)) for index, item in enumerate(body))
        return Message(Kind.BATCH, body, items=items, source=source)
    return _check_one(body, source)


def is_read_method(method: str) -> bool:
    """True for methods that only read (safe to retry): `initialize`, `*/list`, `resources/read`, …"""
    return method in READ_METHODS or method.endswith("/list")


def error_body(request_id: str | int | None, code: int, message: str, data: dict[str, Any] | None = None) -> bytes:
    """A serialized JSON-RPC error response."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return orjson.dumps({"jsonrpc": "2.0", "id": request_id, "error": error})


def response_error(message: Any) -> tuple[int, str] | None:
    """(code, message) when a parsed JSON-RPC response object carries an error, else None."""
    if isinstance(message, dict):
        error = message.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            return (code if isinstance(code, int) else INTERNAL_ERROR, str(error.get("message", "")))
    return None


MAX_PARSED_CONTAINERS = 262_144
"""Objects and arrays (counted as ``{`` and ``[`` bytes, strings included: C speed, before any parse) above
which an answer, or an SSE event of a buffered read, is not parsed. Parsing builds a Python object per
container, ~30 times the bytes of ``{},``: 60 MB of them took ~1.9 GB and stalled every client for seconds,
with no way to interrupt the parse. A tools/list of 10,000 tools has ~100,000. Over it, a JSON answer is
delivered as the opaque bytes it is (`Reply.message` None): judged by its HTTP status alone, never cached,
its id not checked (connection affinity keeps it to its own client anyway); an SSE event of a buffered read
hands the stream on to the client unparsed (committed, as a stream is); an event of a streamed answer is passed
on unread (`proxy.mcp.sse.SSEWatcher` reports it `unparsed`), and watching goes on with the next event."""


def too_many_containers(raw: bytes | str) -> bool:
    """More than `MAX_PARSED_CONTAINERS` ``{`` and ``[`` in `raw`: not to be parsed. Two C-speed counts, and
    none for text too short to hold that many."""
    if len(raw) <= MAX_PARSED_CONTAINERS:
        return False
    if isinstance(raw, str):
        return raw.count("{") + raw.count("[") > MAX_PARSED_CONTAINERS
    return raw.count(b"{") + raw.count(b"[") > MAX_PARSED_CONTAINERS


def list_changed_kind(method: str) -> str | None:
    """``tools`` for ``notifications/tools/list_changed`` (``prompts``, ``resources``...); None for any other
    method: what a cached list a notification passing by makes stale."""
    if method.startswith("notifications/") and method.endswith("/list_changed"):
        return method[len("notifications/") : -len("/list_changed")] or None
    return None
