"""How an emission becomes an event (schema v1): checked against its type, with envelope, bounds, params and signature.

An emission site names a kind, what it is about and its fields (``observer.policy_event("retry",
attempt, failure=..., delay_ms=..., error=...)``). `build` makes the kind's frozen dataclass
(`proxy.events.types`) from them, the envelope taken from the call: upstream, method, tool,
call_id, attempt, policy, and the call's `idempotent`, declared hints (`Call.hints`) and params;
`error` and `latency_ms` are the envelope's too, as is `upstream` for events without a call (and
`method`, for a kind without a call that narrows it: a stdio child's refused question names its own
method there). An event is about an `Attempt` (its
`number` is the envelope's `attempt`), a `Call` (attempt 1: a call before its first try, or outside
the tries), or nothing (attempt null). `checked_record` makes that event's
record (`Event.as_record`) directly, after the same check: what the recorder publishes when serving,
where nobody reads the instance and making it would double an event's cost (a cache hit's event is
on the success path). Under `EventRecorder.strict` (tests) every record is the built event's own, and
the tests hold the two equal for every kind.

An emission that does not fit its kind (an unknown kind, a field the kind does not have, one it needs
missing, an `error` of another shape, a call where none belongs or none where one does) raises
`MalformedEvent`: a bug at the emission site. The recorder re-raises it under `strict` and, when
serving, logs it and publishes what `make_event` makes of the same emission instead (the record v1
always made, untyped): an emission's bug never fails a call, nor loses the evidence.

`id` grows by one per event (the `/events` resume cursor); `ts` is Unix time in seconds; `policy`
names the rule whose policy applied (``default`` or ``rules[2] (tool=search)``); `call_id` ties the
events of one client call together; `signature` is a stable hash of upstream, method, tool, error
kind and the error message with numbers and ids normalized, so the same failure groups together.
No secrets and no raw params: a call's params appear as `params_hash` unless `events.include_params`
is on, and then with credential-like keys redacted (`proxy.redact.redact`).

Names come from clients, sizes from clients and upstreams; they cannot blow up evidence: every
string field (the error message, `last_failure`, `cause`, names) is cut at `MAX_FIELD_CHARS` with a
``…[N more characters]`` marker, lists at `MAX_LIST_ITEMS`, and `params` (with `include_params`) are
replaced by ``{"_omitted": ...}`` beyond `MAX_PARAMS_BYTES`: no event exceeds `MAX_EVENT_BYTES`. The
signature is taken over the cut message.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
from typing import Any, Final, NamedTuple

import orjson

from proxy.events.envelope import MAX_FIELD_CHARS, MAX_LIST_ITEMS, MAX_PARAMS_BYTES, SCHEMA_VERSION, CallEvent, ErrorDetail, Event
from proxy.events.types import KINDS
from proxy.mcp.tool_catalog import ToolHints
from proxy.policies.base import Attempt, Call
from proxy.redact import redact

__all__ = ["MalformedEvent", "Subject", "build", "checked_record", "make_event", "params_hash", "signature"]

_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{8}-[0-9a-fA-F-]{27,}\b|\b[0-9a-fA-F]{16,}\b|\d+(\.\d+)?")
_ENVELOPE: Final = frozenset(
    {"v", "id", "ts", "type", "upstream", "method", "tool", "call_id", "attempt", "latency_ms", "policy", "error", "signature"}
)


@functools.lru_cache(maxsize=4096)
def signature(upstream: str | None, method: str | None, tool: str | None, kind: str, message: str) -> str:
    """A stable 12-hex-digit name for a kind of failure: numbers, hex ids and UUIDs are normalized away."""
    normalized = _NUMBERS.sub("#", message.strip().lower())
    raw = "\x1f".join((upstream or "", method or "", tool or "", kind, normalized))
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _cut(text: str) -> str:
    """`text` no longer than `MAX_FIELD_CHARS`, with a marker saying how much was cut."""
    if len(text) <= MAX_FIELD_CHARS:
        return text
    return f"{text[:MAX_FIELD_CHARS]}…[{len(text) - MAX_FIELD_CHARS} more characters]"


def _bounded(value: Any) -> Any:
    """A per-type field bounded: strings cut, lists of strings shortened (one level: the proxy's own
    fields are flat; its lists of numbers, the latency histogram, have a fixed length)."""
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, list | tuple) and any(isinstance(v, str) for v in value):
        items = [_cut(v) if isinstance(v, str) else v for v in value[:MAX_LIST_ITEMS]]
        if len(value) > MAX_LIST_ITEMS:
            items.append(f"…[{len(value) - MAX_LIST_ITEMS} more]")
        return items
    return value


def params_hash(call: Call) -> str:
    """The hash events name a call's params by (`params_hash`, a summary's `ok_params`): 16 hex digits of
    the BLAKE2b of its canonical arguments, so calls with the same params share it whatever their key order."""
    return hashlib.blake2b(call.message.canonical_arguments(), digest_size=8).hexdigest()


def _params(call: Call, include: bool) -> dict[str, Any]:
    if not include:
        return {"params_hash": params_hash(call)}
    arguments = call.message.arguments
    try:
        size = len(orjson.dumps(arguments))
    except (orjson.JSONEncodeError, RecursionError):  # too deep, an integer beyond 64 bits
        return {"params": {"_omitted": "params orjson cannot write (too deep, or a number too big)"}}
    if size > MAX_PARAMS_BYTES:
        return {"params": {"_omitted": f"params of {size} bytes (over {MAX_PARAMS_BYTES})"}}
    try:
        return {"params": redact(arguments)}
    except RecursionError:
        return {"params": {"_omitted": "params too deep to redact"}}


Subject = Call | Attempt | None
"""What an event is about: a try, a call (its first try), or nothing (a breaker's state, a reload)."""


def _split(about: Subject) -> tuple[Call | None, int | None]:
    """(the call an event is about, its envelope's `attempt`)."""
    if about is None:
        return None, None
    if isinstance(about, Attempt):
        return about.call, about.number
    return about, 1


def make_event(
    type: str,
    about: Subject = None,
    *,
    error: dict[str, Any] | None = None,
    latency_ms: float | None = None,
    include_params: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """An event record made without its type (without `id` and `ts`, which the bus assigns): `fields`
    are the per-type fields, whatever they are; one named like an envelope field becomes ``x_<name>``, but
    `upstream` and `method` of an event about no call, which fill the envelope's.

    What the recorder publishes when an emission is malformed, and what tests and tools use to make
    partial or synthetic records; the proxy's own events are `build`'s, and equal this for the same
    emission. Bounded whatever its inputs (`MAX_EVENT_BYTES`): strings are cut, lists shortened, params omitted."""
    call, attempt = _split(about)
    upstream = fields.pop("upstream", None) if call is None else call.upstream
    method = fields.pop("method", None) if call is None else None
    event = _envelope(type, call, attempt, error, latency_ms, upstream, method)
    if call is not None:
        fields["idempotent"] = call.idempotent
        if call.hints is not None:
            _add_hints(fields, call.hints)
        fields.update(_params(call, include_params))
    for name, value in fields.items():
        event[name if name not in _ENVELOPE else f"x_{name}"] = _bounded(value)
    return event


def _envelope(
    type: str, call: Call | None, attempt: int | None, error: Any, latency_ms: float | None, upstream: Any, method: Any = None
) -> dict[str, Any]:
    """The envelope of an event (`proxy.events.envelope.Event`) as a record: from the call, if any, and
    the number of the try it is about (`_split`); without one, the `upstream` and `method` given."""
    if call is not None:
        method = call.method
    event: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "type": type,
        "upstream": upstream if upstream is None else _cut(str(upstream)),
        "method": method if method is None else _cut(str(method)),
        "tool": None if call is None or call.tool is None else _cut(call.tool),
        "call_id": None if call is None else call.call_id,
        "attempt": attempt,
        "latency_ms": None if latency_ms is None else round(latency_ms, 3),
        "policy": None if call is None else call.policy.rule,
        "error": error,
        "signature": None,
    }
    if error is not None:
        error = {key: _cut(value) if isinstance(value, str) else value for key, value in error.items()}
        event["error"] = error
        event["signature"] = signature(
            event["upstream"], event["method"], event["tool"], str(error.get("kind", "")), str(error.get("message", ""))
        )
    return event


class MalformedEvent(TypeError):
    """An emission that does not fit its kind's type: a bug at the emission site (see the module's docstring)."""


class _Spec(NamedTuple):
    """What `build` checks an emission of one kind against, worked out once per kind."""

    cls: type[Event]
    allowed: frozenset[str]
    """The names an emission may pass: the kind's own fields, `error`, `latency_ms`, and without a call
    `upstream` (and `method` when the kind narrows it, `_NARROWABLE`)."""
    required: frozenset[str]
    """The names it must pass: the kind's fields without a default, and the envelope's it narrows to never
    None (the `error` of a retry, the `upstream` of a breaker's event) that an emission gives."""
    given: frozenset[str]
    """Of `allowed`, those that fill the envelope rather than follow it."""
    about_call: bool


_EMISSION_ENVELOPE: Final = frozenset({"error", "latency_ms", "upstream"})
"""Envelope fields an emission passes (the rest come from the call)."""
_NARROWABLE: Final = frozenset({"method"})
"""Envelope fields a kind about no call may declare again, as its own (a stdio child's refused question:
the method it asked): its emission then passes them, and they fill the envelope's."""


def _spec(cls: type[Event]) -> _Spec:
    about_call = issubclass(cls, CallEvent)
    base = {f.name for f in dataclasses.fields(CallEvent if about_call else Event)}
    if about_call:
        given = _EMISSION_ENVELOPE - {"upstream"}
    else:
        inherited = {f.name: f for f in dataclasses.fields(Event)}
        narrowed = {f.name for f in dataclasses.fields(cls) if f.name in _NARROWABLE and f is not inherited[f.name]}
        given = _EMISSION_ENVELOPE | narrowed
    own = [f for f in dataclasses.fields(cls) if f.name not in base or f.name in given]
    return _Spec(
        cls=cls,
        allowed=frozenset(f.name for f in own) | given,
        required=frozenset(f.name for f in own if f.default is dataclasses.MISSING),
        given=frozenset(given),
        about_call=about_call,
    )


_SPECS: Final = {kind: _spec(cls) for kind, cls in KINDS.items()}


def build(kind: str, about: Subject, fields: dict[str, Any], include_params: bool = False) -> Event:
    """The typed event of one emission: `kind`, what it is about (a try, a call, or None) and the fields its site
    passed (`error`, `latency_ms` and, without a call, `upstream` among them). Bounded like every record;
    `include_params` puts the call's params in (redacted) for kinds whose evidence they are.

    Raises `MalformedEvent` when the emission does not fit the kind's class."""
    values = checked_record(kind, about, fields, include_params)
    error = values["error"]
    if error is not None:
        values["error"] = ErrorDetail(**error)
    return KINDS[kind](**values)


def checked_record(kind: str, about: Subject, fields: dict[str, Any], include_params: bool = False) -> dict[str, Any]:
    """The record of `build`'s event (what `build(...).as_record()` gives) without building the event:
    what the recorder publishes when serving.

    The emission is checked against its kind's class as building it would check it (the names it may
    and must pass, whether it is about a call, the shape of `error`; the dataclass checks no more:
    values' types are the schema's, held by the tests), so the instance, which nothing on the serving
    path reads, is not made: a frozen dataclass of 16 fields costs about as much again as its record
    (measured on a cache hit's event, on the success path). Raises `MalformedEvent`."""
    call, attempt = _split(about)
    spec = _SPECS.get(kind)
    if spec is None:
        raise MalformedEvent(f"unknown event kind {kind!r}")
    names = fields.keys()
    if names - spec.allowed or spec.required - names or spec.about_call != (call is not None):
        raise MalformedEvent(_problem(kind, spec, call, fields))
    error = fields.get("error")
    if error is not None and (not isinstance(error, dict) or error.keys() != _ERROR_KEYS):
        given = sorted(error) if isinstance(error, dict) else type(error).__name__
        raise MalformedEvent(f"{kind}: error must have exactly {', '.join(_ERROR_KEYS)} (got {given})")
    upstream = call.upstream if call is not None else fields.get("upstream")
    record = _envelope(kind, call, attempt, error, fields.get("latency_ms"), upstream, fields.get("method"))
    for name, value in fields.items():
        if name not in spec.given:
            record[name] = _bounded(value)
    if call is not None:
        record["idempotent"] = call.idempotent
        if call.hints is not None:
            _add_hints(record, call.hints)
        record.update(_params(call, include_params and spec.cls.WITH_PARAMS))
    return record


def _add_hints(record: dict[str, Any], hints: ToolHints) -> None:
    """The tool's declared hints (`CallEvent.read_only_hint`, `idempotent_hint`, `destructive_hint`): each only when declared."""
    if hints.read_only is not None:
        record["read_only_hint"] = hints.read_only
    if hints.idempotent is not None:
        record["idempotent_hint"] = hints.idempotent
    if hints.destructive is not None:
        record["destructive_hint"] = hints.destructive


_ERROR_KEYS: Final = {f.name: None for f in dataclasses.fields(ErrorDetail)}.keys()
"""The keys of an `error`, in order."""


def _problem(kind: str, spec: _Spec, call: Call | None, fields: dict[str, Any]) -> str:
    """Why an emission does not fit its kind, in words."""
    if spec.about_call != (call is not None):
        return f"{kind} is {'about a call: the call is missing' if spec.about_call else 'about no call: a call was given'}"
    unknown, missing = fields.keys() - spec.allowed, spec.required - fields.keys()
    both = "; " if unknown and missing else ""
    return f"{kind}: {_listed('unknown', unknown)}{both}{_listed('missing', missing)}"


def _listed(what: str, names: set[str] | frozenset[str]) -> str:
    return f"{what} field(s) {', '.join(sorted(names))}" if names else ""
