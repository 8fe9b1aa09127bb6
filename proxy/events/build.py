"""How an emission becomes an event record (schema v1): the envelope, the bounds, params and signature.

Every failure-relevant moment becomes one JSON object with the same envelope::

    v, id, ts, type, upstream, method, tool, call_id, attempt, latency_ms, policy,
    error {kind, http_status, jsonrpc_code, message}, signature, ...per-type fields

`id` grows by one per event (the `/events` resume cursor); `ts` is Unix time in seconds; `policy`
names the rule whose policy applied (``default`` or ``rules[2] (tool=search)``); `call_id` ties the
events of one client call together; `signature` is a stable hash of upstream, method, tool, error
kind and the error message with numbers and ids normalized, so the same failure groups together.
No secrets and no raw params: a call's params appear as `params_hash` unless `events.include_params`
is on, and then with credential-like keys redacted.

Names come from clients, sizes from clients and upstreams; they cannot blow up evidence:

- **size**: every string field (the error message, `last_failure`, `cause`, names) is cut at
  `MAX_FIELD_CHARS` with a ``…[N more characters]`` marker, lists at `MAX_LIST_ITEMS`, and `params`
  (with `include_params`) are replaced by ``{"_omitted": ...}`` beyond `MAX_PARAMS_BYTES`: no event
  exceeds `MAX_EVENT_BYTES`. The signature is taken over the cut message.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Final

import orjson

from proxy.ops.logs import redact
from proxy.policies.base import Call

__all__ = [
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "MAX_FIELD_CHARS",
    "MAX_LIST_ITEMS",
    "MAX_PARAMS_BYTES",
    "SCHEMA_VERSION",
    "make_event",
    "signature",
]

SCHEMA_VERSION: Final = 1
EVENT_TYPES: Final = (
    "call_failed",
    "call_ok",
    "retry",
    "retry_exhausted",
    "retry_budget_exhausted",
    "timeout",
    "timeout_observed",
    "breaker_state",
    "circuit_open",
    "rate_limited",
    "fallback_served",
    "health_changed",
    "session_lost",
    "config_reloaded",
    "config_rejected",
    "proposal_applied",
    "proposal_kept",
    "proposal_rolled_back",
)

MAX_FIELD_CHARS: Final = 1000
"""Longest string kept in an event field (error messages, `last_failure`, names); the rest is cut with a marker."""
MAX_LIST_ITEMS: Final = 10
"""Most items kept of a list field (a rejected config's errors); a last item says how many were left out."""
MAX_PARAMS_BYTES: Final = 4096
"""Largest `params` (serialized) an event carries with `include_params`; bigger ones are omitted (the hash stays)."""
MAX_EVENT_BYTES: Final = 64 * 1024
"""What the bounds above hold any event to, serialized, even when every character kept is one JSON
escapes in six bytes (checked by the tests, not at run time: it follows from the bounds above)."""

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


def _params(call: Call, include: bool) -> dict[str, Any]:
    if not include:
        return {"params_hash": hashlib.blake2b(call.message.canonical_arguments(), digest_size=8).hexdigest()}
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


def make_event(
    type: str,
    call: Call | None = None,
    *,
    error: dict[str, Any] | None = None,
    latency_ms: float | None = None,
    include_params: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """An event dict (without `id` and `ts`, which the bus assigns). `fields` are the per-type fields.

    Bounded whatever its inputs (`MAX_EVENT_BYTES`): strings are cut, lists shortened, params omitted."""
    upstream = fields.pop("upstream", None) if call is None else call.upstream
    event: dict[str, Any] = {
        "v": SCHEMA_VERSION,
        "type": type,
        "upstream": upstream if upstream is None else _cut(str(upstream)),
        "method": None if call is None else _cut(call.method),
        "tool": None if call is None or call.tool is None else _cut(call.tool),
        "call_id": None if call is None else call.call_id,
        "attempt": None if call is None else call.attempt,
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
    if call is not None:
        fields["idempotent"] = call.idempotent
        fields.update(_params(call, include_params))
    for name, value in fields.items():
        event[name if name not in _ENVELOPE else f"x_{name}"] = _bounded(value)
    return event
