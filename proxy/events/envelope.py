"""What every event shares (schema v1): the envelope, the error, the bus's stamp, and the bounds.

An event is a frozen dataclass (`proxy.events.types` has one per kind) and leaves the proxy as the
JSON object `Event.as_record` makes: the envelope's fields in a fixed order, then the kind's own, then
(for events about a call) `idempotent`, the tool's declared `read_only_hint`, `idempotent_hint` and `destructive_hint`
(each only when declared) and `params_hash` or `params` (when serving, the recorder
writes that record without making the instance: `proxy.events.build.checked_record`). The bus adds
`id` and `ts` (`Stamp`).

The JSON Schema (`proxy.events.schema`) is generated from these classes: field types become JSON
types, and the docstrings under the fields become its descriptions, so write them for consumers.

A field whose default is `ABSENT` is left out of the record when not given (``waited_ms`` only when a
timed-out attempt never finished), unlike None, which is written as null: the record says exactly
what the emitter said.

**Growing v1.** Consumers ignore fields they do not know, so v1 grows by adding fields, never by
removing, renaming or retyping one, nor by changing what a field means (that would be a v2). A field
added after v1's first release has the default `ABSENT`: the schema then does not require it, so
recordings made before it still validate, and readers must treat it as optional, even where today's
proxy always writes it (a breaker's `last_failure_kind`, a summary's `ok_timeline`).

This module imports nothing of ours: consumers (the analyzer, the schema) read events without the proxy.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Literal

__all__ = [
    "ABSENT",
    "LATENCY_BUCKETS_MS",
    "MAX_EVENT_BYTES",
    "MAX_FIELD_CHARS",
    "MAX_LIST_ITEMS",
    "MAX_OK_PARAMS",
    "MAX_PARAMS_BYTES",
    "OVERFLOW",
    "SCHEMA_VERSION",
    "SIGNATURE_PATTERN",
    "TIMELINE_SLOTS",
    "Absent",
    "CallEvent",
    "ErrorDetail",
    "Event",
    "Stamp",
    "keywords",
]

SCHEMA_VERSION: Final = 1

MAX_FIELD_CHARS: Final = 1000
"""Longest string kept in an event field (error messages, `last_failure`, names); the rest is cut with a marker."""
MAX_LIST_ITEMS: Final = 10
"""Most items kept of a list field (a rejected config's errors); a last item says how many were left out."""
MAX_PARAMS_BYTES: Final = 4096
"""Largest `params` (serialized) an event carries with `include_params`; bigger ones are omitted (the hash stays)."""
MAX_EVENT_BYTES: Final = 64 * 1024
"""What the bounds above hold any event to, serialized, even when every character kept is one JSON
escapes in six bytes (checked by the tests, not at run time: it follows from the bounds above)."""
LATENCY_BUCKETS_MS: Final = (
    1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500,
    10000, 15000, 20000, 30000, 60000, 120000,
)  # fmt: skip
"""Upper bounds of the call_ok latency histogram (ms); the last bucket is everything above."""
TIMELINE_SLOTS: Final = 60
"""Most slots of a call_ok summary's `ok_timeline`: a window longer than this many seconds has longer slots."""
MAX_OK_PARAMS: Final = 256
"""Most distinct params hashes a call_ok summary names in `ok_params` (16 hex digits each: about 5 KiB at
most); the successes of further params are only counted (`ok_params_overflow`). The one list field not
cut at `MAX_LIST_ITEMS`: its items are fixed-size hashes the proxy makes, never foreign text."""
OVERFLOW: Final = "_other"
"""The name summaries of unlisted (or too many) names fold into; the same as metrics' overflow label."""

SIGNATURE_PATTERN: Final = "^[0-9a-f]{12}$"


class Absent(enum.Enum):
    """The type of `ABSENT`: a field not in the record at all (None is written, as null)."""

    ABSENT = "absent"


ABSENT: Final = Absent.ABSENT


def keywords(**schema: Any) -> dict[str, Any]:
    """Field metadata: JSON Schema keywords the field's type cannot say (a pattern, a minimum)."""
    return {"json": schema}


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorDetail:
    """What went wrong, in one shape for every failure (`proxy.policies.failures.Verdict.as_error`)."""

    kind: str
    """The failure kind (``http_5xx``, ``timeout``, ``connect_error``, ...), or the proxy's reason for a refusal."""
    http_status: int | None
    """The upstream's HTTP status, when an answer came."""
    jsonrpc_code: int | None
    """The JSON-RPC error code of the answer (the upstream's, or the proxy's own)."""
    message: str
    """What the upstream or the proxy said (at most `MAX_FIELD_CHARS` characters)."""

    def as_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "http_status": self.http_status, "jsonrpc_code": self.jsonrpc_code, "message": self.message}


@dataclass(frozen=True, slots=True, kw_only=True)
class Stamp:
    """What the bus adds to every event it publishes (`proxy.events.bus.EventBus.publish`)."""

    id: int = field(metadata=keywords(minimum=1))
    """Grows by one per event: the `/events` resume cursor (`Last-Event-ID`, ``?since=``)."""
    ts: float
    """When the event was published, Unix time in seconds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One failure-relevant moment (schema v1; docs/events.md). Every string field is at most
    `MAX_FIELD_CHARS` characters and then ends with a '…[N more characters]' marker; list fields keep
    `MAX_LIST_ITEMS` items, then one '…[N more]' item (but call_ok's `ok_params`: `MAX_OK_PARAMS` hashes). Consumers ignore fields they do not know."""

    WITH_PARAMS: ClassVar[bool] = False
    """Whether the call's params (with `events.include_params`) are evidence for this kind."""

    v: Literal[1] = SCHEMA_VERSION
    """The schema version."""
    type: str
    """The kind of event, which says what other fields it has."""
    upstream: str | None = None
    """The upstream the event is about (null: the proxy's own, such as a config reload)."""
    method: str | None = None
    """The JSON-RPC method of the call (in call_ok: of the summary)."""
    tool: str | None = None
    """The tool of a tools/call. In call_ok, `OVERFLOW` sums the tools the upstream did not list (and, as
    the method too, keys past the per-window bound); method `OVERFLOW` sums methods MCP does not define."""
    call_id: int | None = None
    """A number unique in the process: ties together the events of one client call."""
    attempt: int | None = None
    """The attempt the event is about (1 is the first)."""
    latency_ms: float | None = None
    """How long the call took until this moment (ms)."""
    policy: str | None = None
    """The rule whose policy applied: ``default`` or ``rules[2] (tool=search)``."""
    error: ErrorDetail | None = None
    """The failure, for events about one."""
    signature: str | None = field(default=None, metadata=keywords(pattern=SIGNATURE_PATTERN))
    """A stable hash of upstream, method, tool, error kind and the error message with numbers and ids
    normalized: the same failure groups together."""

    def as_record(self) -> dict[str, Any]:
        """The JSON object the bus publishes (without `id` and `ts`, which it adds): the wire format."""
        names, values, optional = _reader(type(self))
        record = dict(zip(names, values(self), strict=True))
        for name in optional:
            if record[name] is ABSENT:
                del record[name]
        if self.error is not None:
            record["error"] = self.error.as_record()
        return record


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEvent(Event):
    """An event about one client call: the envelope names the call, and its params are evidence."""

    WITH_PARAMS: ClassVar[bool] = True

    upstream: str
    method: str
    call_id: int
    attempt: int
    policy: str
    idempotent: bool
    """Whether the proxy believes the call may be sent twice (the policy, its method, or the tool's
    annotations of an upstream trusted for them, say so)."""
    read_only_hint: bool | Absent = ABSENT
    """A tools/call's ``readOnlyHint`` as the upstream declared it in its latest listing of the tool
    (whether or not `trust_annotations` lets the proxy believe it: independent of `idempotent`); only
    when it declared one."""
    idempotent_hint: bool | Absent = ABSENT
    """A tools/call's ``idempotentHint`` as the upstream declared it, like `read_only_hint`; only when it
    declared one."""
    destructive_hint: bool | Absent = ABSENT
    """A tools/call's ``destructiveHint`` as the upstream declared it, like `read_only_hint`; only when it
    declared one. The analyzer never proposes retrying a tool declared destructive."""
    params_hash: str | Absent = ABSENT
    """A hash of the call's params (without `_meta`): calls with the same params share it. Present
    unless `params` is."""
    params: dict[str, Any] | list[Any] | None | Absent = ABSENT
    """With `events.include_params`: the call's params, redacted; over `MAX_PARAMS_BYTES` bytes they are
    ``{"_omitted": why}`` instead."""


_READERS: dict[type[Event], tuple[tuple[str, ...], operator.attrgetter[tuple[Any, ...]], tuple[str, ...]]] = {}


def _reader(cls: type[Event]) -> tuple[tuple[str, ...], operator.attrgetter[tuple[Any, ...]], tuple[str, ...]]:
    """(the record's keys in order, a reader of their values, the keys that may be `ABSENT`) for `cls`.

    The order is v1's: the envelope, the kind's own fields, then the call's `idempotent`, hints and params."""
    reader = _READERS.get(cls)
    if reader is None:
        every = dataclasses.fields(cls)
        envelope = [f.name for f in dataclasses.fields(Event)]
        call = [f.name for f in dataclasses.fields(CallEvent) if f.name not in envelope] if issubclass(cls, CallEvent) else []
        names = (*envelope, *(f.name for f in every if f.name not in envelope and f.name not in call), *call)
        optional = tuple(f.name for f in every if f.default is ABSENT)
        reader = _READERS[cls] = (names, operator.attrgetter(*names), optional)
    return reader
