"""The JSON Schema of failure events v1 (exported as `config/events.schema.json`).

Consumers other than the bundled analyzer (a SIEM, a notebook, another team's tooling) validate
against this file; a test checks that the proxy's own events do, and that every type is described.
The bounds every event keeps (`proxy.events.recorder`: strings cut with a marker, params omitted past a size,
the overflow name of folded summaries) are stated in the descriptions, where a consumer reads them.
"""

from __future__ import annotations

from typing import Any

from proxy.events.recorder import EVENT_TYPES, MAX_FIELD_CHARS, MAX_LIST_ITEMS, MAX_PARAMS_BYTES, OVERFLOW, SCHEMA_VERSION

__all__ = ["event_schema"]

_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
_NULLABLE_INT: dict[str, Any] = {"type": ["integer", "null"]}
_NUMBER: dict[str, Any] = {"type": "number"}

_PER_TYPE: dict[str, dict[str, Any]] = {
    "call_failed": {"reason": {"type": "string"}, "http_status": {"type": "integer"}, "client": {"type": "string"}},
    "call_ok": {
        "window_s": _NUMBER,
        "window_end": _NUMBER,
        "calls": {"type": "integer"},
        "ok": {"type": "integer"},
        "outcomes": {"type": "object", "additionalProperties": {"type": "integer"}},
        "ok_by_attempt": {"type": "object", "additionalProperties": {"type": "integer"}},
        "latency_buckets_ms": {"type": "array", "items": _NUMBER},
        "latency_histogram": {"type": "array", "items": {"type": "integer"}},
        "latency_mean_ms": {"type": ["number", "null"]},
        "latency_max_ms": {"type": ["number", "null"]},
    },
    "retry": {"delay_ms": _NUMBER, "failure": {"type": "string"}},
    "retry_exhausted": {"why": {"type": "string"}},
    "retry_budget_exhausted": {"failure": {"type": "string"}},
    "timeout": {"limit_ms": _NUMBER, "observing": {"type": "boolean"}},
    "timeout_observed": {"limit_ms": _NUMBER, "observed_ms": {"type": ["number", "null"]}},
    "breaker_state": {
        "breaker": {"type": "string"},
        "old": {"type": "string"},
        "new": {"type": "string"},
        "cause": _NULLABLE_STRING,
        "last_failure": _NULLABLE_STRING,
    },
    "circuit_open": {"breaker": {"type": "string"}},
    "rate_limited": {"retry_after": _NUMBER},
    "fallback_served": {"status": {"enum": ["hit", "stale"]}},
    "health_changed": {
        "old": {"enum": ["unknown", "healthy", "unhealthy"]},
        "new": {"enum": ["unknown", "healthy", "unhealthy"]},
        "cause": {"enum": ["active", "passive"]},
    },
    "session_lost": {},
    "config_reloaded": {"trigger": {"type": "string"}, "file_hash": {"type": "string"}},
    "config_rejected": {"trigger": {"type": "string"}, "errors": {"type": "array", "items": {"type": "string"}}},
    "proposal_applied": {"proposal": {"type": "string"}, "error_rate_before": _NUMBER},
    "proposal_kept": {"proposal": {"type": "string"}, "error_rate_before": _NUMBER, "error_rate_after": _NUMBER},
    "proposal_rolled_back": {"proposal": {"type": "string"}, "error_rate_before": _NUMBER, "error_rate_after": _NUMBER},
}


def event_schema() -> dict[str, Any]:
    """The schema: the shared envelope, then per type the fields it must carry."""
    missing = set(EVENT_TYPES) - set(_PER_TYPE)
    if missing:  # a new event type must be described before it ships
        raise RuntimeError(f"event types without a schema: {sorted(missing)}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mcp-resilience-proxy failure event",
        "description": (
            "One failure-relevant moment (schema v1). See README, 'Failure events'. Every string field is at most "
            f"{MAX_FIELD_CHARS} characters and then ends with a '…[N more characters]' marker; list fields keep "
            f"{MAX_LIST_ITEMS} items, then one '…[N more]' item."
        ),
        "type": "object",
        "required": ["v", "id", "ts", "type", "upstream", "method", "tool", "call_id", "attempt", "latency_ms", "policy", "error", "signature"],
        "properties": {
            "v": {"const": SCHEMA_VERSION},
            "id": {"type": "integer", "minimum": 1},
            "ts": _NUMBER,
            "type": {"enum": list(EVENT_TYPES)},
            "upstream": _NULLABLE_STRING,
            "method": _NULLABLE_STRING,
            "tool": {
                "type": ["string", "null"],
                "description": f"In call_ok, '{OVERFLOW}' sums the tools the upstream did not list (and, as the "
                f"method too, keys past the per-window bound); method '{OVERFLOW}' sums methods MCP does not define.",
            },
            "call_id": _NULLABLE_INT,
            "attempt": _NULLABLE_INT,
            "latency_ms": {"type": ["number", "null"]},
            "policy": _NULLABLE_STRING,
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["kind", "message"],
                        "properties": {
                            "kind": {"type": "string"},
                            "http_status": _NULLABLE_INT,
                            "jsonrpc_code": _NULLABLE_INT,
                            "message": {"type": "string"},
                        },
                    },
                ]
            },
            "signature": {"oneOf": [{"type": "null"}, {"type": "string", "pattern": "^[0-9a-f]{12}$"}]},
            "idempotent": {"type": "boolean"},
            "params_hash": {"type": "string"},
            "params": {
                "type": "object",
                "description": f"With include_params: the call's params, redacted; over {MAX_PARAMS_BYTES} bytes "
                "they are {'_omitted': why} instead.",
            },
        },
        "allOf": [
            {
                "if": {"properties": {"type": {"const": kind}}},
                "then": {"required": sorted(fields), "properties": fields},
            }
            for kind, fields in _PER_TYPE.items()
        ],
    }
