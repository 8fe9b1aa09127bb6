"""A legacy stdio child served to MCP 2026-07-28 (modern, stateless) clients: the gateway's rules, no I/O.

The proxy initializes a stdio child once, in the legacy era (2025-11-25), and then serves modern HTTP
clients on top of it. A modern client must not be able to tell that apart from a server built with the
official Python SDK 2.3 answering it directly, so every rule here copies what that server does (measured
on loopback; ``/work/i14/modern-findings.md`` has the captures, `tests/test_stdio_modern.py` diffs our
answers against the SDK's):

- `check`: the SDK's validation, in its order. An Accept without both JSON and SSE is 406 (the SDK's
  default, streaming mode); an id-less body is acknowledged (202) and dropped, as the SDK does (a modern
  client cancels by closing its stream, never by a posted notification); a posted response or a malformed
  envelope is -32600; a routing header given twice, or ``MCP-Protocol-Version``/``Mcp-Method``/``Mcp-Name``
  disagreeing with the body, is -32020; a ``params._meta`` without the protocol version and client
  capabilities is -32602 (checked before the headers); a version not served is -32022 naming the supported
  ones; a method the modern era removed (``initialize``, ``ping``, ``logging/setLevel``,
  ``resources/(un)subscribe``) is -32601, 404 (the SDK's method gate, reached before any handler); a
  ``subscriptions/listen`` filter of the wrong shape is -32602.
  ``Mcp-Param-*`` headers are not checked: the SDK checks them against the tool's input schema, which
  only the child's ``tools/list`` knows.
- `to_child`: the request without the per-request envelope (``io.modelcontextprotocol/*`` in
  ``params._meta``): the SDK, serving the legacy era, refuses a request carrying it (-32600).
- `discover`: ``server/discover`` answered from the child's ``initialize`` result.
- `from_child`: a child's answer as a modern result: ``resultType``, the cache hints of cacheable
  methods, the ``serverInfo`` stamp, and nothing the 2026-07-28 schema removed (tasks). Errors pass
  unchanged; `status_of` gives the HTTP status the SDK gives each error code.
- ``subscriptions/listen`` is the gateway's own (`MODERN_METHODS_LOCAL`): a child that speaks 2025-11-25
  sends its change notifications to its one session, and the gateway fans them out to listeners
  (`listen_filter`, `acknowledgement`, `wants`, `listen_event`, `listen_end`).

HTTP statuses are those of a JSON answer. The SDK commits to an SSE response (200) as soon as a request's
handler sends a notification (progress), and then an error travels in the stream with that 200.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from proxy.mcp.eras import MODERN_VERSION

__all__ = [
    "ACKNOWLEDGED",
    "CACHEABLE_METHODS",
    "CLIENT_CAPABILITIES",
    "CLIENT_INFO",
    "ERROR_STATUS",
    "HEADER_MISMATCH",
    "LEGACY_ONLY_METHODS",
    "LISTEN_METHODS",
    "MODERN_METHODS_FORWARDED",
    "MODERN_METHODS_LOCAL",
    "NOT_ALLOWED",
    "PROTOCOL_VERSION",
    "SERVER_INFO",
    "SUBSCRIPTION_ID",
    "SUPPORTED_VERSIONS",
    "UNSUPPORTED_PROTOCOL_VERSION",
    "ListenFilter",
    "Refusal",
    "acknowledgement",
    "check",
    "discover",
    "from_child",
    "listen_end",
    "listen_event",
    "listen_filter",
    "refuse_http_method",
    "status_of",
    "to_child",
    "wants",
]

SUPPORTED_VERSIONS: Final = (MODERN_VERSION,)
"""What ``server/discover`` and a -32022 name as served: the modern versions this gateway speaks."""

PROTOCOL_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"
CLIENT_INFO: Final = "io.modelcontextprotocol/clientInfo"
SERVER_INFO: Final = "io.modelcontextprotocol/serverInfo"
SUBSCRIPTION_ID: Final = "io.modelcontextprotocol/subscriptionId"
_RESERVED_PREFIX: Final = "io.modelcontextprotocol/"
"""The per-request envelope's keys (and the log level's): the modern era's, never a legacy child's."""

ACKNOWLEDGED: Final = "notifications/subscriptions/acknowledged"

HEADER_MISMATCH: Final = -32020
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022
_PARSE_ERROR: Final = -32700
_INVALID_REQUEST: Final = -32600
_METHOD_NOT_FOUND: Final = -32601
_INVALID_PARAMS: Final = -32602
_MISSING_CAPABILITY: Final = -32021

ERROR_STATUS: Final[Mapping[int, int]] = {
    _PARSE_ERROR: 400,
    _INVALID_REQUEST: 400,
    _INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    _MISSING_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    _METHOD_NOT_FOUND: 404,
}
"""The SDK's status for a JSON-RPC error code, whoever raised it (its own checks or a handler); any other
code, -32603 included, is answered 200."""

MODERN_METHODS_LOCAL: Final = frozenset({"server/discover", "subscriptions/listen"})
"""Methods the gateway answers itself: a legacy child knows neither."""
MODERN_METHODS_FORWARDED: Final = frozenset(
    {
        "completion/complete",
        "prompts/get",
        "prompts/list",
        "resources/list",
        "resources/read",
        "resources/templates/list",
        "tools/call",
        "tools/list",
    }
)
"""The 2026-07-28 spec methods a legacy child answers as they are (through `to_child` and `from_child`).
A method outside the spec is forwarded too: the child may serve it, and answers -32601 if it does not."""
LEGACY_ONLY_METHODS: Final = frozenset(
    {"initialize", "ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"}
)
"""Spec methods 2026-07-28 removed: the SDK's method gate answers them -32601 (404) with the method as
``data``; only the gateway may send them to the child (its own initialize and subscriptions)."""
CACHEABLE_METHODS: Final = frozenset(
    {"prompts/list", "resources/list", "resources/read", "resources/templates/list", "server/discover", "tools/list"}
)
"""Methods whose modern results carry ``ttlMs``/``cacheScope`` (required there). A legacy child gives
none: the SDK's defaults, 0 (stale at once) and ``private``, are what it would have said."""
LISTEN_METHODS: Final = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
"""The list notifications a listen carries, and the filter flag that opts in to each;
``notifications/resources/updated`` is the fourth kind, by URI (``resourceSubscriptions``)."""
_RESOURCE_UPDATED: Final = "notifications/resources/updated"
_REMOVED_CAPABILITIES: Final = ("tasks",)
"""Server capabilities 2026-07-28 removed (tasks became an extension)."""

_ROUTING_HEADERS: Final = ("mcp-protocol-version", "mcp-method", "mcp-name")
_NAME_PARAMS: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
"""Methods whose ``Mcp-Name`` header mirrors a body parameter, and that parameter."""
_BASE64_SENTINEL: Final = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")
_LAX_TRUE: Final = frozenset({"1", "on", "t", "true", "y", "yes"})
_LAX_FALSE: Final = frozenset({"0", "off", "f", "false", "n", "no"})
_INVALID_BODY: Final = "Body must be a single JSON-RPC request or notification object"


class Refusal(NamedTuple):
    """The gateway's own answer to a modern POST, as the SDK server gives it: the HTTP `status`, the whole
    JSON-RPC error response (`answer`; None: an empty body, as for 202 and 406) and extra `headers`."""

    status: int
    answer: dict[str, Any] | None
    headers: tuple[tuple[str, str], ...] = ()


NOT_ALLOWED: Final = Refusal(405, None, (("Allow", "POST"),))
"""GET and DELETE (and any other method but POST) on the modern wire: there is no session to stream or end."""
_ACCEPTED: Final = Refusal(202, None)
_NOT_ACCEPTABLE: Final = Refusal(406, None)


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _refusal(request_id: Any, code: int, message: str, data: Any = None) -> Refusal:
    return Refusal(ERROR_STATUS.get(code, 200), _error(request_id, code, message, data))


def refuse_http_method(http_method: str) -> Refusal | None:
    """`NOT_ALLOWED` for any HTTP method but POST (405 with ``Allow: POST``, empty body), else None."""
    return None if http_method.upper() == "POST" else NOT_ALLOWED


def _folded(headers: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """`headers` keyed by lower-case name, and the first routing header given more than once (a
    multidict's `items` shows every copy; a first-copy and a last-copy reader would disagree)."""
    folded: dict[str, str] = {}
    duplicated: str | None = None
    for name, value in headers.items():
        key = name.lower()
        if key in folded and key in _ROUTING_HEADERS and duplicated is None:
            duplicated = key
        folded.setdefault(key, value)
    return folded, duplicated


def _accepts(accept: str) -> tuple[bool, bool]:
    """(JSON, SSE) acceptable, wildcards included, as the SDK reads ``Accept``."""
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    wildcard = "*/*" in types
    return (
        wildcard or bool(types & {"application/json", "application/*"}),
        wildcard or bool(types & {"text/event-stream", "text/*"}),
    )


def _header_value(value: str | None) -> str | None:
    """A routing header's value with the ``=?base64?…?=`` sentinel decoded (None: absent or malformed)."""
    if value is None:
        return None
    match = _BASE64_SENTINEL.fullmatch(value)
    if match is None:
        return value
    payload = match.group("payload")
    try:
        decoded = base64.b64decode(payload, validate=True)
        if base64.b64encode(decoded).decode("ascii") != payload:
            return None
        return decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _is_request_id(value: Any) -> bool:
    """A JSON-RPC id the SDK takes: a string or an integer (not a boolean, not a float)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def check(headers: Mapping[str, str], message: dict[str, Any]) -> Refusal | None:
    """The SDK server's answer to a modern POST it would not dispatch (the module docstring lists the
    rules, in the SDK's order), or None: dispatch it (`MODERN_METHODS_LOCAL` here, the rest to the child).
    `headers` as the client sent them (any case); `message` one parsed body (a batch is -32600 before this).
    A notification gets `Refusal(202, None)`: the SDK acknowledges it and drops it."""
    folded, duplicated = _folded(headers)
    has_json, has_sse = _accepts(folded.get("accept", ""))
    if not (has_json and has_sse):
        return _NOT_ACCEPTABLE
    if "id" not in message:
        if message.get("jsonrpc") != "2.0" or not isinstance(message.get("method"), str):
            return _refusal(None, _INVALID_REQUEST, _INVALID_BODY)
        if not isinstance(message.get("params", {}), dict | None):
            return _refusal(None, _INVALID_REQUEST, _INVALID_BODY)
        requested = folded.get("mcp-protocol-version", "")
        if requested not in SUPPORTED_VERSIONS:
            return _unsupported(None, requested)
        return _ACCEPTED
    request_id = message.get("id")
    method = message.get("method")
    params = message.get("params")
    if (
        message.get("jsonrpc") != "2.0"
        or not _is_request_id(request_id)
        or not isinstance(method, str)
        or not (params is None or isinstance(params, dict))
    ):
        return _refusal(None, _INVALID_REQUEST, _INVALID_BODY)  # a posted response lands here too
    if duplicated is not None:
        return _refusal(request_id, HEADER_MISMATCH, f"{duplicated} header appears more than once")
    refused = _envelope(folded, request_id, method, params)
    if refused is not None:
        return refused
    if method in LEGACY_ONLY_METHODS:
        return _refusal(request_id, _METHOD_NOT_FOUND, "Method not found", method)
    if method == "subscriptions/listen" and _filter(params) is None:
        return _refusal(request_id, _INVALID_PARAMS, "Invalid request parameters", "")
    return None


def _envelope(folded: dict[str, str], request_id: Any, method: str, params: Any) -> Refusal | None:
    """The SDK's ladder over the per-request envelope: `_meta` keys, then headers, then the version."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return _refusal(
            request_id,
            _INVALID_PARAMS,
            f"params._meta must be an object carrying the required {PROTOCOL_VERSION!r} and "
            f"{CLIENT_CAPABILITIES!r} envelope keys",
        )
    missing = [key for key in (PROTOCOL_VERSION, CLIENT_CAPABILITIES) if key not in meta]
    if missing:
        return _refusal(
            request_id, _INVALID_PARAMS, f"params._meta is missing the required envelope key(s): {', '.join(missing)}"
        )
    version = meta[PROTOCOL_VERSION]
    header = folded.get("mcp-protocol-version")
    if header is None or header != version:
        return _refusal(
            request_id,
            HEADER_MISMATCH,
            "mcp-protocol-version header does not match the request envelope's protocol version",
        )
    if folded.get("mcp-method") != method:
        return _refusal(request_id, HEADER_MISMATCH, "mcp-method header does not match the request body's method")
    name_key = _NAME_PARAMS.get(method)
    if name_key is not None:
        body_value = params.get(name_key)
        if body_value is not None and _header_value(folded.get("mcp-name")) != body_value:
            return _refusal(
                request_id,
                HEADER_MISMATCH,
                f"mcp-name header does not match the request body's {name_key!r} parameter",
            )
    if not isinstance(version, str):
        return _refusal(request_id, _INVALID_PARAMS, "the protocol-version envelope value must be a string")
    if version not in SUPPORTED_VERSIONS:
        return _unsupported(request_id, version)
    return None


def _unsupported(request_id: Any, requested: str) -> Refusal:
    data = {"supported": list(SUPPORTED_VERSIONS), "requested": requested}
    return _refusal(request_id, UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version", data)


def to_child(message: dict[str, Any]) -> dict[str, Any]:
    """`message` as the legacy child must see it: ``params._meta`` without its ``io.modelcontextprotocol/*``
    keys (the SDK refuses a legacy request carrying the envelope, -32600), and without ``_meta`` when
    nothing is left (``progressToken`` and other keys stay). The id is unchanged; `message` is not touched."""
    params = message.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("_meta"), dict):
        return message
    meta = {key: value for key, value in params["_meta"].items() if not key.startswith(_RESERVED_PREFIX)}
    rest = {key: value for key, value in params.items() if key != "_meta"}
    if meta:
        rest["_meta"] = meta
    return {**message, "params": rest}


def _server_info(initialize_result: Mapping[str, Any]) -> dict[str, Any] | None:
    info = initialize_result.get("serverInfo")
    return dict(info) if isinstance(info, Mapping) else None


def _capabilities(legacy: Any) -> dict[str, Any]:
    """The child's capabilities as 2026-07-28 has them: the removed ones (`_REMOVED_CAPABILITIES`) left out.
    ``listChanged`` and ``resources.subscribe`` pass as the child declared them: in the modern era they say
    what a listen will deliver, and only what the child sends can be delivered."""
    if not isinstance(legacy, Mapping):
        return {}
    return {key: value for key, value in legacy.items() if key not in _REMOVED_CAPABILITIES}


def discover(initialize_result: Mapping[str, Any], request_id: Any) -> dict[str, Any]:
    """The whole ``server/discover`` response (id `request_id`), built from the child's legacy
    ``initialize`` result: its capabilities (`_capabilities`), instructions and ``serverInfo`` (stamped in
    ``_meta``, where the modern era keeps it), with the SDK's ``resultType`` and cache defaults."""
    result: dict[str, Any] = {
        "supportedVersions": list(SUPPORTED_VERSIONS),
        "capabilities": _capabilities(initialize_result.get("capabilities")),
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
    }
    instructions = initialize_result.get("instructions")
    if isinstance(instructions, str):
        result["instructions"] = instructions
    server_info = _server_info(initialize_result)
    if server_info is not None:
        result["_meta"] = {SERVER_INFO: server_info}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def from_child(method: str, response: dict[str, Any], server_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The child's answer to `method` as a modern client expects it, as the SDK server shapes a result:
    ``resultType: "complete"`` when absent; ``ttlMs: 0``/``cacheScope: "private"`` on `CACHEABLE_METHODS`
    when absent; ``_meta["io.modelcontextprotocol/serverInfo"]`` set to `server_info` (the child's, from its
    ``initialize`` result) unless the result has one; and a tool's ``execution`` (tasks, removed in
    2026-07-28) left out of ``tools/list``. An error, or a result that is not an object, passes unchanged:
    the child's own answer. `response` is not touched."""
    result = response.get("result")
    if not isinstance(result, dict):
        return response
    shaped = dict(result)
    if method == "tools/list" and isinstance(shaped.get("tools"), list):
        shaped["tools"] = [_modern_tool(tool) for tool in shaped["tools"]]
    shaped.setdefault("resultType", "complete")
    if method in CACHEABLE_METHODS:
        shaped.setdefault("ttlMs", 0)
        shaped.setdefault("cacheScope", "private")
    if server_info is not None:
        meta = shaped.get("_meta")
        if meta is None:
            shaped["_meta"] = {SERVER_INFO: dict(server_info)}
        elif isinstance(meta, dict) and meta.get(SERVER_INFO) is None:
            shaped["_meta"] = {**meta, SERVER_INFO: dict(server_info)}
    return {**response, "result": shaped}


def _modern_tool(tool: Any) -> Any:
    if isinstance(tool, dict) and "execution" in tool:
        return {key: value for key, value in tool.items() if key != "execution"}
    return tool


def status_of(response: dict[str, Any]) -> int:
    """The HTTP status the SDK gives a JSON answer: by its error's code (`ERROR_STATUS`: -32601 is 404, the
    request's own mistakes 400), else 200 (a result, -32603, a server's own codes)."""
    error = response.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and not isinstance(code, bool):
        return ERROR_STATUS.get(code, 200)
    return 200


@dataclass(frozen=True, slots=True)
class ListenFilter:
    """What one ``subscriptions/listen`` honours: the three list kinds and the resource URIs (in the
    order asked, for the acknowledgement; `uri_set` for matching). Unknown filter keys (an extension's)
    are not honoured, as the SDK's listen handler honours none."""

    tools: bool = False
    prompts: bool = False
    resources: bool = False
    uris: tuple[str, ...] = ()

    @property
    def uri_set(self) -> frozenset[str]:
        return frozenset(self.uris)

    def flags(self) -> dict[str, bool]:
        """The three list flags by their wire names."""
        return {
            "toolsListChanged": self.tools,
            "promptsListChanged": self.prompts,
            "resourcesListChanged": self.resources,
        }

    def honoured(self) -> dict[str, Any]:
        """The filter as the acknowledgement states it: only what is honoured (no false flags, no empty list)."""
        honoured: dict[str, Any] = {flag: True for flag, on in self.flags().items() if on}
        if self.uris:
            honoured["resourceSubscriptions"] = list(self.uris)
        return honoured


def _lax_bool(value: Any) -> bool | None:
    """A filter flag read as the SDK's model reads it (pydantic's lax bool: ``"yes"``, ``1``, ``"off"``…),
    None when absent; ValueError for a value the SDK refuses (-32602)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in _LAX_TRUE:
            return True
        if lowered in _LAX_FALSE:
            return False
    raise ValueError("not a boolean")


def _filter(params: Any) -> ListenFilter | None:
    """The listen filter of `params` (``params.notifications``), or None where the SDK answers -32602."""
    wanted = params.get("notifications") if isinstance(params, dict) else None
    if not isinstance(wanted, dict):
        return None
    try:
        tools, prompts, resources = (
            _lax_bool(wanted.get(flag)) for flag in ("toolsListChanged", "promptsListChanged", "resourcesListChanged")
        )
    except ValueError:
        return None
    uris = wanted.get("resourceSubscriptions")
    if uris is not None and not (isinstance(uris, list) and all(isinstance(uri, str) for uri in uris)):
        return None
    return ListenFilter(bool(tools), bool(prompts), bool(resources), tuple(uris or ()))


def listen_filter(message: dict[str, Any]) -> ListenFilter:
    """The filter a ``subscriptions/listen`` request asks for (every requested kind is honoured, as by the
    SDK: whether one ever fires depends on what the child sends). Raises ValueError for a filter `check`
    refuses."""
    found = _filter(message.get("params"))
    if found is None:
        raise ValueError("subscriptions/listen without a valid params.notifications filter")
    return found


def acknowledgement(message: dict[str, Any]) -> dict[str, Any]:
    """The first event of a listen's SSE answer: ``notifications/subscriptions/acknowledged`` with the
    honoured filter, stamped with the listen's id as its subscription id."""
    return {
        "jsonrpc": "2.0",
        "method": ACKNOWLEDGED,
        "params": {"_meta": {SUBSCRIPTION_ID: message.get("id")}, "notifications": listen_filter(message).honoured()},
    }


def wants(listen: ListenFilter, notification: dict[str, Any]) -> bool:
    """Whether a listener with filter `listen` receives the child's `notification`: a list change of a kind
    it asked for, or ``notifications/resources/updated`` for a URI it subscribed (exact string match).
    Nothing else rides a listen stream (progress and log records belong to their request's stream)."""
    method = notification.get("method")
    flag = LISTEN_METHODS.get(method) if isinstance(method, str) else None
    if flag is not None:
        return listen.flags()[flag]
    if method == _RESOURCE_UPDATED:
        params = notification.get("params")
        uri = params.get("uri") if isinstance(params, dict) else None
        return isinstance(uri, str) and uri in listen.uri_set
    return False


def listen_event(listen_id: Any, notification: dict[str, Any]) -> dict[str, Any]:
    """The child's `notification` (one `wants` let through) as the listener gets it: rebuilt as the SDK
    builds it, ``params`` holding only the subscription id (and the ``uri`` of a resource update)."""
    params: dict[str, Any] = {"_meta": {SUBSCRIPTION_ID: listen_id}}
    child_params = notification.get("params")
    if notification.get("method") == _RESOURCE_UPDATED and isinstance(child_params, dict):
        params["uri"] = child_params.get("uri")
    return {"jsonrpc": "2.0", "method": notification.get("method"), "params": params}


def listen_end(listen_id: Any, server_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The last event of a listen the gateway ends on purpose (shutdown, drain): the request's own
    response, so the client knows the end was deliberate (an abrupt close carries none, and a client
    listens again). The SDK's shape: an otherwise empty result stamped with the subscription id."""
    meta: dict[str, Any] = {SUBSCRIPTION_ID: listen_id}
    if server_info is not None:
        meta[SERVER_INFO] = dict(server_info)
    return {"jsonrpc": "2.0", "id": listen_id, "result": {"_meta": meta, "resultType": "complete"}}
