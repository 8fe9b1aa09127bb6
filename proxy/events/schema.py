"""The JSON Schema of events v1, generated from the event types (exported as `config/events.schema.json`).

Consumers other than the bundled analyzer (a SIEM, a notebook, another team's tooling) validate
against this file; tests check that the proxy's own events do, and that the exported file is this
function's output. Nothing here is written by hand: the shared envelope (`proxy.events.envelope`:
`Stamp`, `Event`, `CallEvent`) and each kind (`proxy.events.types`) become properties, field types
become JSON types (``str | None`` is ``["string", "null"]``, a `Literal` an enum, `ErrorDetail` an
object under ``$defs``), every field is required but those whose default is `ABSENT`, and the
docstrings (the class's, and the one under each field) become descriptions, with the bounds' names
replaced by their values. Each kind's block lists the fields it adds, and the envelope fields it narrows (a retry's
`error` is never null).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import sys
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from proxy.events.envelope import (
    ABSENT,
    LATENCY_BUCKETS_MS,
    MAX_FIELD_CHARS,
    MAX_LIST_ITEMS,
    MAX_OK_PARAMS,
    MAX_PARAMS_BYTES,
    OVERFLOW,
    TIMELINE_SLOTS,
    Absent,
    CallEvent,
    ErrorDetail,
    Event,
    Stamp,
)
from proxy.events.types import EVENT_TYPES, KINDS

__all__ = ["event_schema"]

_CONSTANTS = {
    "MAX_FIELD_CHARS": str(MAX_FIELD_CHARS),
    "MAX_LIST_ITEMS": str(MAX_LIST_ITEMS),
    "MAX_PARAMS_BYTES": str(MAX_PARAMS_BYTES),
    "MAX_OK_PARAMS": str(MAX_OK_PARAMS),
    "OVERFLOW": f"'{OVERFLOW}'",
    "LATENCY_BUCKETS_MS": ", ".join(map(str, LATENCY_BUCKETS_MS)),
    "TIMELINE_SLOTS": str(TIMELINE_SLOTS),
}
_DEFS: tuple[type, ...] = (ErrorDetail,)
"""The objects inside events, described once under ``$defs`` and referred to by name."""
_PRIMITIVES: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}


def event_schema() -> dict[str, Any]:
    """The schema: the shared envelope (and the bus's stamp), then per kind what it adds or narrows."""
    envelope, stamp = _new_fields(Event), _new_fields(Stamp)
    order = [envelope[0], *stamp, *envelope[1:]]  # v, id, ts, type, upstream, ...
    both = {**_properties(Stamp, stamp), **_properties(Event, envelope)}
    properties = {name: both[name] for name in order}
    properties["type"] = {"enum": list(EVENT_TYPES), **_described(Event, "type")}
    required = {*_required(Stamp, stamp), *_required(Event, envelope)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mcp-resilience-proxy failure event",
        "description": _description(Event.__doc__),
        "type": "object",
        "required": [name for name in order if name in required],
        "properties": {**properties, **_properties(CallEvent, _new_fields(CallEvent))},
        "allOf": [_kind(kind, cls, required) for kind, cls in KINDS.items()],
        "$defs": {cls.__name__: _object(cls) for cls in _DEFS},
    }


def _kind(kind: str, cls: type[Event], required: set[str]) -> dict[str, Any]:
    """`cls`'s block: when ``type`` is `kind`, the fields it adds (described), the envelope's it narrows
    (a retry's `error` is never null), and for an event about a call, the call's it must carry.
    `required` are the fields every event carries already."""
    base = get_type_hints(Event)
    hints = get_type_hints(cls)
    call = _new_fields(CallEvent) if issubclass(cls, CallEvent) else []
    narrowed = [name for name in base if name != "type" and hints[name] != base[name]]
    added = [f.name for f in dataclasses.fields(cls) if f.name not in base and f.name not in call]
    return {
        "if": {"properties": {"type": {"const": kind}}},
        "then": {
            "description": _description(cls.__doc__),
            "required": [name for name in _required(cls, [*call, *added]) if name not in required],
            "properties": {**_properties(cls, narrowed, described=False), **_properties(cls, added)},
        },
    }


def _new_fields(cls: type) -> list[str]:
    """The fields `cls` adds to its bases'."""
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    return [f.name for f in dataclasses.fields(cls) if f.name not in inherited]


def _required(cls: type, names: list[str]) -> list[str]:
    """Of `names`, those every record carries: all but the fields whose default is `ABSENT`."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return [name for name in names if defaults[name] is not ABSENT]


def _properties(cls: type, names: list[str], described: bool = True) -> dict[str, Any]:
    """The schemas of `cls`'s fields `names` (with their descriptions, if `described`)."""
    hints = get_type_hints(cls)
    metadata = {f.name: f.metadata.get("json", {}) for f in dataclasses.fields(cls)}
    return {
        name: {**_json(hints[name], metadata[name]), **(_described(cls, name) if described else {})} for name in names
    }


def _object(cls: type) -> dict[str, Any]:
    names = [f.name for f in dataclasses.fields(cls)]
    return {
        "type": "object",
        "description": _description(cls.__doc__),
        "required": _required(cls, names),
        "properties": _properties(cls, names),
    }


def _json(tp: Any, keywords: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a field's type; `keywords` (a pattern, a minimum) apply to its non-null value."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return {}
    if tp in _PRIMITIVES:
        return {"type": _PRIMITIVES[tp], **(keywords if tp is not type(None) else {})}
    if origin is Literal:
        return {"const": args[0]} if len(args) == 1 else {"enum": list(args)}
    if origin in (Union, types.UnionType):
        members = [_json(arg, keywords) for arg in args if arg is not Absent]
        if len(members) == 1:
            return members[0]
        if all(member.keys() == {"type"} for member in members):
            return {"type": [member["type"] for member in members]}
        return {"oneOf": members}
    if origin is list:
        return {"type": "array", **({"items": _json(args[0], {})} if args and args[0] is not Any else {})}
    if origin is dict:
        return {"type": "object", **({"additionalProperties": _json(args[1], {})} if args[1] is not Any else {})}
    if tp in _DEFS:
        return {"$ref": f"#/$defs/{tp.__name__}"}
    raise TypeError(f"no JSON Schema for the event field type {tp!r}")  # a new kind of type: teach it here


def _described(cls: type, name: str) -> dict[str, str]:
    """{"description": the docstring under `name`'s declaration in `cls` or the nearest base}, or {}."""
    for klass in cls.__mro__:
        doc = _field_docs(klass.__module__).get(klass.__name__, {}).get(name)
        if doc is not None:
            return {"description": _description(doc)}
    return {}


@functools.cache
def _field_docs(module: str) -> dict[str, dict[str, str]]:
    """Per class of `module`, each field's docstring: the string literal that follows its declaration."""
    docs: dict[str, dict[str, str]] = {}
    try:
        source = inspect.getsource(sys.modules[module])
    except OSError:  # installed without sources: the schema, without field descriptions
        return docs
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            docs[node.name] = {
                field.target.id: text.value.value
                for field, text in zip(body, body[1:], strict=False)
                if isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                and isinstance(text, ast.Expr) and isinstance(text.value, ast.Constant) and isinstance(text.value.value, str)
            }  # fmt: skip
    return docs


def _description(doc: str | None) -> str:
    """A docstring as one line for consumers: ``literals`` quoted, the bounds' names as their values."""
    text = " ".join((doc or "").split())
    text = re.sub(r"``([^`]+)``", r"'\1'", text)
    return re.sub(r"`([^`]+)`", lambda m: _CONSTANTS.get(m.group(1), m.group(1)), text)
