"""What an upstream says it has: its tools (from `tools/list` answers) and what it declares about them.

Tool and method names reach the proxy from clients, who may invent any number of them. Everything the
proxy keeps per name (per-tool breakers, metric labels, event summaries, the event buffer) must not let
invented names push out the state of names that exist. `ToolCatalog` is the one place that says which
do: the tools the upstream listed, with the hints it declared (`readOnlyHint`, `idempotentHint`,
`destructiveHint`, `openWorldHint`), learned from every `tools/list` answer that passes through the
proxy, whether the upstream is trusted for its annotations or not (trust decides only what the retry
policy believes: `proxy.annotations.ToolAnnotations` is that view). Methods are judged by the MCP
specification instead (`MCP_METHODS`).

A listing replaces the catalog. A paginated listing (pages with `nextCursor`) is accumulated page by
page and replaces the catalog with its last page (the one without `nextCursor`): the proxy sees only
answers, and a page without a cursor ends a listing whichever page it is. A listing keeps at most
`MAX_TOOLS` tools and ignores names longer than `MAX_TOOL_NAME_CHARS` (no client can call them through
the proxy). Until the first listing is seen the catalog is not `known` and vouches for no name; users
of it then fall back to their own bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from proxy.jsonrpc import MAX_NAME_CHARS

__all__ = ["MAX_TOOLS", "MAX_TOOL_NAME_CHARS", "MCP_METHODS", "ToolCatalog", "ToolHints", "listed"]

MAX_TOOLS: Final = 10_000
"""Tools kept from one listing; a server listing more has the rest treated like names it does not have."""

MAX_TOOL_NAME_CHARS: Final = MAX_NAME_CHARS
"""Longest listed tool name kept: the longest a client may call (`proxy.jsonrpc.MAX_NAME_CHARS`)."""

MCP_METHODS: Final = frozenset(
    {
        "initialize",
        "ping",
        "server/discover",
        "tools/list",
        "tools/call",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "prompts/list",
        "prompts/get",
        "completion/complete",
        "logging/setLevel",
        "subscriptions/listen",
        "tasks/get",
        "tasks/list",
        "tasks/result",
        "tasks/cancel",
    }
)
"""Client requests the MCP specification defines (2024-11-05 to 2025-11-25): methods that exist whatever
the server. Other methods are forwarded as ever, but count as invented names for bookkeeping."""


@dataclass(frozen=True, slots=True)
class ToolHints:
    """What the server declared about one tool (None: not declared). Hints, not guarantees."""

    read_only: bool | None = None
    idempotent: bool | None = None
    destructive: bool | None = None
    open_world: bool | None = None

    @property
    def safe_to_retry(self) -> bool:
        """Declared read-only or idempotent."""
        return self.read_only is True or self.idempotent is True


_NO_HINTS: Final = ToolHints()
_HINT_FIELDS: Final = (
    ("readOnlyHint", "read_only"),
    ("idempotentHint", "idempotent"),
    ("destructiveHint", "destructive"),
    ("openWorldHint", "open_world"),
)


def _hints(tool: dict[str, Any]) -> ToolHints:
    declared = tool.get("annotations")
    if not isinstance(declared, dict):
        return _NO_HINTS
    values = {field: value for key, field in _HINT_FIELDS if isinstance(value := declared.get(key), bool)}
    return ToolHints(**values) if values else _NO_HINTS


class ToolCatalog:
    """One upstream's tools as last listed; `version` changes whenever the set of names does."""

    __slots__ = ("_pending", "_tools", "known", "version")

    def __init__(self) -> None:
        self._tools: dict[str, ToolHints] = {}
        self._pending: dict[str, ToolHints] = {}
        """Pages of a paginated listing seen so far (emptied when its last page comes)."""
        self.known = False
        """True once a complete listing was seen: from then on a name not in it is not the upstream's."""
        self.version = 0

    def learn(self, message: Any) -> int:
        """Take in a `tools/list` response message; return how many tools it listed (0: not a listing)."""
        result = message.get("result") if isinstance(message, dict) else None
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            return 0  # an error answer, or not a listing: nothing learned, nothing forgotten
        pending = self._pending
        read = 0
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(name, str) or len(name) > MAX_TOOL_NAME_CHARS:
                continue
            read += 1
            if name in pending or len(pending) < MAX_TOOLS:
                pending[name] = _hints(tool)
        if isinstance(result.get("nextCursor"), str):
            return read  # more pages to come
        self._pending = {}
        if not self.known or pending.keys() != self._tools.keys():
            self.version += 1
        self._tools = pending
        self.known = True
        return read

    def has(self, tool: str) -> bool:
        """True when the last listing had `tool`."""
        return tool in self._tools

    def hints(self, tool: str) -> ToolHints | None:
        """What the server declared about `tool`; None when it did not list it."""
        return self._tools.get(tool)

    def vouches(self, method: str | None, tool: str | None) -> bool | None:
        """Whether (method, tool) names something that exists: True, False, or None when the catalog
        cannot tell yet (a tool before the first listing)."""
        if method is None or method not in MCP_METHODS:
            return False
        if method != "tools/call" or tool is None:
            return True
        if not self.known:
            return None
        return tool in self._tools

    def __len__(self) -> int:
        return len(self._tools)


_NOTHING_LISTED: Final = ToolCatalog()


def listed(catalog: ToolCatalog | None, method: str | None, tool: str | None) -> bool | None:
    """`catalog.vouches(method, tool)`, with no catalog at all meaning no listing seen yet."""
    return (catalog or _NOTHING_LISTED).vouches(method, tool)
