"""JSON-RPC 2.0 as MCP uses it: parse, classify, build. Pure functions, no I/O.

A body is parsed once, with orjson, and the original bytes are what the upstream receives: the proxy
never re-serializes a client's message. Batches (JSON arrays) were removed from MCP in 2025-06-18 but
older clients still send them; they are forwarded as they are and never retried or cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

__all__ = [
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "CLIENT_PACED_METHODS",
    "LONG_LIVED_METHODS",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "Kind",
    "Message",
    "MessageError",
    "READ_METHODS",
    "error_body",
    "is_read_method",
    "parse_message",
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


class Kind(Enum):
    """What a POSTed message is, which decides what the upstream owes us back."""

    REQUEST = "request"  # has `method` and `id`: a JSON-RPC response is owed
    NOTIFICATION = "notification"  # `method`, no `id`: 202 Accepted
    RESPONSE = "response"  # a client's answer to a server->client request: 202 Accepted
    BATCH = "batch"  # a JSON array (pre-2025-06-18 clients)


@dataclass(frozen=True, slots=True)
class Message:
    """One parsed POST body. `body` is the parsed JSON, kept so later stages never parse twice."""

    kind: Kind
    body: Any
    id: str | int | None = None
    method: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The request's params object (empty when absent or not an object)."""
        params = self.body.get("params") if isinstance(self.body, dict) else None
        return params if isinstance(params, dict) else {}

    @property
    def arguments(self) -> Any:
        """What the request asks with: its params as sent (object, array or None), less `_meta`, which
        carries per-call metadata (progress tokens, versions) and never changes the answer."""
        params = self.body.get("params") if isinstance(self.body, dict) else None
        if isinstance(params, dict) and "_meta" in params:
            return {name: value for name, value in params.items() if name != "_meta"}
        return params

    def canonical_arguments(self) -> bytes:
        """`arguments` as canonical JSON (sorted keys): equal requests give equal bytes (cache keys, hashes)."""
        return orjson.dumps(self.arguments, option=orjson.OPT_SORT_KEYS)


class MessageError(Exception):
    """A body that is not JSON (-32700) or not JSON-RPC (-32600); `id` is echoed when it could be read."""

    def __init__(self, code: int, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _check_one(item: Any) -> Message:
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
        params = item.get("params")
        if params is not None and not isinstance(params, dict | list):
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "params" must be an object', request_id)
        if "id" not in item:
            return Message(Kind.NOTIFICATION, item, None, method)
        if not _valid_id(raw_id):
            raise MessageError(INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
        return Message(Kind.REQUEST, item, raw_id, method)
    if ("result" in item) != ("error" in item) and "id" in item:
        return Message(Kind.RESPONSE, item, request_id, None)
    raise MessageError(INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response", request_id)


def parse_message(raw: bytes) -> Message:
    """Parse a POST body into a `Message`, or raise `MessageError` with the JSON-RPC code to answer."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MessageError(PARSE_ERROR, f"Parse error: {exc.msg}") from None
    if isinstance(body, list):
        if not body:
            raise MessageError(INVALID_REQUEST, "Invalid Request: empty batch")
        for item in body:
            _check_one(item)
        return Message(Kind.BATCH, body)
    return _check_one(body)


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


def final_response(data: str, request_id: str | int | None) -> dict[str, Any] | None:
    """The parsed message when SSE event `data` is the JSON-RPC response to `request_id`, else None."""
    if '"id"' not in data:
        return None
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or "method" in message or message.get("id") != request_id:
        return None
    return message if "result" in message or "error" in message else None
