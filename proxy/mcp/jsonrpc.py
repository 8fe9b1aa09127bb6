"""JSON-RPC 2.0 as MCP uses it: parse, classify, build. Pure functions, no I/O.

A body is parsed once, with orjson, and the original bytes are what the upstream receives: the proxy
never re-serializes a client's message. Batches (JSON arrays) were removed from MCP in 2025-06-18 but
older clients still send them; they are forwarded as they are and never retried or cached.

orjson refuses some valid JSON that real servers take (measured against the official Python SDK server
2.3, FastMCP and server-everything): a number beyond a double's range (``1e999``), a lone UTF-16
surrogate escape (``"\ud800"``), a UTF-8 byte order mark before the text. On its refusal the body is read
by Python's `json` instead (`_lenient`: same bounds, ``NaN`` and ``Infinity`` still refused, as they
are not JSON, and UTF-8 only: no server tested reads UTF-16 or UTF-32), so what a server would answer
reaches it unchanged. Such a body's cache key takes the exact path (orjson would write the infinity as
``null``). A lone surrogate where the proxy must write the string itself (``method``, a string ``id``, a
tool or prompt name: metric labels, event fields, our own error answers) is refused: no UTF-8 can carry it.

An ``id`` written as an integral number (``1.0``, ``1e0``) is the integer to the proxy, as servers echo it
(server-everything answers ``"id":1``); one with a fraction (``1.5``) is refused (-32600): no server tested
takes it as a request. Other servers echo ``1.0`` as they read it, and a JavaScript server rounds an id past
2^53 to a double: an answer's id is compared with the request's as a JSON-RPC value (`same_id`, numbers as
doubles), so neither is taken for another request's answer. An empty ``method`` is the server's to answer
(-32601 from all three).

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
- ``max_values`` (``limits.max_body_values``, `MAX_BODY_VALUES` by default): a body holding more JSON
  values is refused before it is parsed (`too_many_values`: C-speed counts of its structural characters),
  -32600 with HTTP 413, like a body over ``limits.max_body_bytes``. Parsed, each value is a Python object
  of 8 to 130 bytes (measured): 4 MiB of ``[],`` took 85 MiB for as long as its call ran.

A `params.name` that is not a string is forwarded: the proxy never uses it (the call's tool is None) and
the server's own -32602 says more than ours would. Error messages give a length, never the text.

`Message.canonical_arguments` is exact: orjson reads integers beyond 64 bits and numbers with more
digits than a double holds lossily, so arguments that hold such numbers are keyed by the numbers as
written (see `_exact_arguments`); all others take orjson's sorted dump unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
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
    "same_id",
    "answers",
    "MAX_BODY_VALUES",
    "MAX_PARSED_CONTAINERS",
    "count_values",
    "too_many_containers",
    "too_many_values",
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

MAX_BODY_VALUES: Final = 100_000
"""`parse_message`'s default bound on the JSON values in one body (``limits.max_body_values`` is the one the
listener uses). Real MCP requests hold tens to a few thousand: a tool call with a hundred 768-number
embeddings is 77,000. Parsed, 100,000 values take at most about 12 MiB and their strings' text (the worst
measured: one-member objects holding an empty object, 128 bytes a value), where a 4 MiB body of empty arrays
took 85 MiB."""

_MAX_EXACT_ID: Final = 2**53
"""An integral number id (``1.0``) within this is read as the integer (every double-based server agrees)."""

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

    __slots__ = ("lenient", "raw", "_exact", "_parsed")

    def __init__(self, raw: bytes, lenient: bool = False) -> None:
        self.raw = raw
        self.lenient = lenient
        """Read by Python's `json` (orjson refused it): its cache key always takes the exact path."""
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

    @property
    def lenient(self) -> bool:
        return self.batch.lenient

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
        if self.source is not None and self.source.lenient:  # orjson would write an infinity as null
            return _exact_arguments(self) or _canonical_any(arguments)
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
    (-32602); `request_id` is echoed when it could be read. `message` never quotes the body. `status` and
    `reason` are set where the HTTP status and ``data.reason`` are not the usual 400 and the code's."""

    def __init__(
        self, code: int, message: str, request_id: str | int | None = None, *, status: int = 400, reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.status = status
        self.reason = reason


def _valid_id(value: Any) -> bool:
    return (isinstance(value, str) and _writable(value)) or (isinstance(value, int) and not isinstance(value, bool))


def _id_of(value: Any) -> Any:
    """`value` as the proxy compares and echoes an id: an integral number (``1.0``, ``1e0``) is the integer a
    server echoes for it; anything else is itself (and may be no valid id)."""
    if isinstance(value, float) and value.is_integer() and -_MAX_EXACT_ID <= value <= _MAX_EXACT_ID:
        return int(value)
    return value


def same_id(answer_id: Any, request_id: str | int | None) -> bool:
    """Whether a response's `answer_id` is `request_id` as the MCP SDKs correlate them: how the proxy tells
    a request's own answer from a stray (another request's), on the JSON path
    (`proxy.upstream.transport.AnswerTo`) and in an SSE answer (`proxy.mcp.sse.SSEWatcher`) alike.

    Null is only null. A string holding a decimal integer is that integer (``"7"`` is ``7``): both official
    SDKs correlate so on purpose (Python's ``coerce_request_id``, "matches the TS SDK"), so a server that
    echoes an id as text is answered, not refused. Other strings are equal as text. Numbers are equal as
    IEEE doubles, as every server that parses JSON numbers into doubles (JavaScript's ``JSON.parse``,
    Python's `json` for ``1.0``) sees them: ``1`` is ``1.0`` and ``1e0``, ``0`` is ``-0.0``, and
    9007199254740993 is the 9007199254740992 a JavaScript server echoes for it. A client chooses its id:
    the way a server writes it back must never make its own answer a stray (a bad response counted against
    the upstream). A boolean is never a number (``true`` is not ``1``, though Python says so)."""
    if answer_id is None or request_id is None:
        return answer_id is None and request_id is None
    if isinstance(answer_id, bool):
        return False
    answer, request = _correlated(answer_id), _correlated(request_id)
    if isinstance(answer, str) or isinstance(request, str):
        return bool(answer == request)
    if not isinstance(answer, int | float):
        return False
    return answer == request or _double(answer) == _double(request)


def answers(response: dict[str, Any], request_ids: Collection[str | int | None], any_id_error: bool) -> bool:
    """Whether the JSON-RPC `response` answers one of `request_ids`: the one rule for a JSON answer
    (`proxy.upstream.transport.AnswerTo`) and an SSE answer (`proxy.mcp.sse.SSEWatcher`) alike.

    Its id is one of them (`same_id`, tried first as sent); or it is an error that names no request (id
    null or none), or comes with a non-2xx HTTP status (`any_id_error`: the HTTP layer's refusal, whatever
    id the server wrote), which can only be about the request it came back on."""
    answer_id = response.get("id")
    if "error" in response and (answer_id is None or any_id_error):
        return True
    if type(answer_id) in (int, str) and answer_id in request_ids:  # the usual answer: echoed as sent (a bool is no id)
        return True
    return any(same_id(answer_id, request_id) for request_id in request_ids)


_INTEGER_TEXT: Final = re.compile(r"\s*[+-]?\d+(?:_\d+)*\s*")
"""What Python's ``int(text)`` reads as a decimal integer: the SDK's ``coerce_request_id`` rule."""


def _correlated(request_id: Any) -> Any:
    """`request_id` as the SDKs correlate it: a string that is a decimal integer (at most 64 characters,
    so a hostile id costs nothing) is that integer."""
    if isinstance(request_id, str) and len(request_id) <= 64 and _INTEGER_TEXT.fullmatch(request_id):
        return int(request_id)
    return request_id


def _double(number: int | float) -> float:
    """`number` as the IEEE double a double-based server reads it as (correctly rounded; beyond the
    largest double, an infinity, as ``JSON.parse`` gives)."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _writable(text: str) -> bool:
    """Whether UTF-8 can carry `text`: not when it holds a lone surrogate (``"\ud800"`` in the JSON)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _readable_id(item: Any) -> str | int | None:
    raw_id = _id_of(item.get("id")) if isinstance(item, dict) else None
    return raw_id if _valid_id(raw_id) else None


def _check_one(item: Any, source: _Source | _Item) -> Message:
    if not isinstance(item, dict):
        raise MessageError(INVALID_REQUEST, "Invalid Request: a JSON-RPC message must be an object")
    raw_id = _id_of(item.get("id"))
    request_id = raw_id if _valid_id(raw_id) else None
    if item.get("jsonrpc") != "2.0":
        raise MessageError(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', request_id)
    if "method" in item:
        method = item["method"]
        if not isinstance(method, str):
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "method" must be a string', request_id)
        if not _writable(method):
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "method" holds a lone UTF-16 surrogate', request_id)
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
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer (UTF-8 text)')
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
    if not _writable(name):
        raise MessageError(INVALID_PARAMS, 'Invalid params: "name" holds a lone UTF-16 surrogate', request_id)


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


_STRING: Final = re.compile(rb'"[^"]*"')
"""A JSON string once its escaped quotes are gone (`_unescaped`): what `_values_in` blanks before counting."""


def _unescaped(raw: bytes) -> bytes:
    """`raw` without its escaped backslashes and quotes (C speed), so every ``"`` left opens or closes a string
    (escapes are a backslash and one character; pairs of backslashes go first, left to right)."""
    return raw.replace(b"\\\\", b"").replace(b'\\"', b"")


def _values_in(plain: bytes) -> int:
    """The JSON values in `plain` (`_unescaped` text), exact for valid JSON: each value but the outermost
    follows a ``,`` or opens its container's list, so it is 1 plus the commas plus the non-empty arrays and
    objects, outside strings (each string becomes ``0``, whitespace goes, and ``[]``/``{}`` are empty)."""
    bare = _STRING.sub(b"0", plain).translate(None, b" \t\r\n")
    containers = bare.count(b"[") + bare.count(b"{") - bare.count(b"[]") - bare.count(b"{}")
    return 1 + bare.count(b",") + containers


def count_values(raw: bytes) -> int:
    """How many JSON values `raw` holds (objects, arrays, strings, numbers, literals; object keys are not
    values), exactly for valid JSON, without parsing it. `too_many_values` is the bounded check."""
    return _values_in(_unescaped(raw))


def too_many_values(raw: bytes, limit: int) -> bool:
    """Whether `raw` holds more than `limit` JSON values (`count_values`), at C speed before any parse.

    Cheapest first: a body no longer than `limit` cannot hold more (a value takes a byte at least);
    ``,``, ``[`` and ``{`` counted anywhere can only over-count (they may sit in strings, a container may be
    empty); a body with more than twice `limit` strings holds more than `limit` values (each value has at
    most one key). Only a body over `limit` by the rough count, with at most that many strings, is counted
    exactly: a regex pass over at most ``2 * limit`` strings (about 45 ms for 4 MiB at the default)."""
    if len(raw) <= limit or 1 + raw.count(b",") + raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    plain = _unescaped(raw)
    if plain.count(b'"') > 4 * limit:
        return True
    return _values_in(plain) > limit


_ORJSON_TOO_DEEP: Final = "depth limit"
"""orjson's refusal of a body nested past 1,024 levels (``depth limit exceeded``; a test pins it)."""


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _lenient_int(text: str) -> Any:
    # Beyond Python's 4,300-digit guard an integer is, to a double-based server, an infinity: so here.
    return int(text) if len(text) <= 4300 else float(text)


def _lenient(raw: bytes, refusal: orjson.JSONDecodeError) -> Any:
    """`raw` read by Python's `json`, for valid JSON orjson refuses (see the module docstring); its bounds
    are the caller's (size and value count before, depth after). Not JSON to it either: orjson's -32700.

    UTF-8 only (a byte order mark allowed): given bytes, `json.loads` would also read UTF-16 and UTF-32,
    which the value count (`too_many_values`, run on the bytes as UTF-8) cannot see into, so a 4 MiB UTF-16
    body of 690,000 arrays counted as 8 values and was parsed. No server tested reads them either
    (server-everything and the Python SDK server answer 400); `parse_message` refuses the ones with a NUL
    byte before counting. Decoding is strict: a surrogate encoded in UTF-8 bytes is refused too (orjson
    refuses it; `json` took it). A lone surrogate *escape* (``"\\ud800"``) is ASCII text, and stays valid."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MessageError(PARSE_ERROR, "Parse error: JSON must be UTF-8 (the body is not)") from None
    try:
        return json.loads(text, parse_constant=_not_json, parse_int=_lenient_int)
    except RecursionError:  # nested past what its C scanner takes (about 1,000 levels): far past the bound
        raise MessageError(INVALID_REQUEST, f"Invalid Request: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # JSONDecodeError, NaN/Infinity
        raise MessageError(PARSE_ERROR, f"Parse error: {refusal.msg}") from None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests arrays and objects deeper than `limit` (the outermost is level 1): a walk
    without recursion, over at most as many containers as the value count allowed in."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False


_NUL: Final = b"\x00"


def parse_message(raw: bytes, max_values: int = MAX_BODY_VALUES) -> Message:
    """Parse a POST body into a `Message`, or raise `MessageError` with the JSON-RPC code to answer.

    Raises nothing else, whatever `raw` holds. The bounds are in the module docstring; `max_values` is
    ``limits.max_body_values``.

    A body with a NUL byte is -32700 at once, neither counted nor parsed: no JSON text holds one (a NUL in
    a string is written ``\\u0000``), and UTF-16 or UTF-32 JSON always does (in its ASCII punctuation),
    where the value count, which reads UTF-8, would see almost nothing (`_lenient` reads UTF-8 only).
    """
    if _NUL in raw:  # memchr: next to nothing for the bodies that pass
        raise MessageError(PARSE_ERROR, "Parse error: JSON must be UTF-8 (the body holds a NUL byte)")
    if too_many_values(raw, max_values):
        raise MessageError(
            INVALID_REQUEST, f"Invalid Request: the body holds more than {max_values} JSON values (limits.max_body_values)",
            status=413, reason="too_many_values",
        )  # fmt: skip
    lenient = False
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if _ORJSON_TOO_DEEP in exc.msg:  # past 1,024 levels: far past the bound, not worth a second parse
            raise MessageError(PARSE_ERROR, f"Parse error: {exc.msg}") from None
        body, lenient = _lenient(raw, exc), True
    if isinstance(body, list) and len(body) > MAX_BATCH_ITEMS:
        raise MessageError(INVALID_REQUEST, f"Invalid Request: batch of {len(body)} items exceeds {MAX_BATCH_ITEMS}")
    if _deeper_than(body, MAX_JSON_DEPTH) if lenient else _too_deep(raw, body):
        too_deep = f"Invalid Request: nested deeper than {MAX_JSON_DEPTH} levels"
        raise MessageError(INVALID_REQUEST, too_deep, _readable_id(body))
    source = _Source(raw, lenient)
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
