"""What an upstream says it has: its tools (from `tools/list` answers) and what it declares about them.

Tool and method names reach the proxy from clients, who may invent any number of them. Everything the
proxy keeps per name (per-tool breakers, metric labels, event summaries, the event buffer) must not let
invented names push out the state of names that exist. `ToolCatalog` is the one place that says which
do: the tools the upstream listed, with the hints it declared (`readOnlyHint`, `idempotentHint`,
`destructiveHint`, `openWorldHint`), learned from the `tools/list` answers that pass through the
proxy, whether the upstream is trusted for its annotations or not (trust decides only what the retry
policy believes: `proxy.mcp.annotations.ToolAnnotations` is that view). Methods are judged by the MCP
specification instead (`MCP_METHODS`).

A listing counts only when the proxy saw its walk start. Clients choose the cursor of a `tools/list`,
so the proxy reads the requests as well as the answers: the answer to a `tools/list` without a cursor
starts a walk; when it has a `nextCursor` X, the pages so far wait under X (at most `MAX_PENDING_WALKS`
walks and `MAX_PENDING_TOOLS` names wait, the least recently extended dropped first); the answer to a
request with cursor X extends the walk waiting under X, and the page without `nextCursor` completes it.
A page asked for with a cursor no walk waits under (invented, already used, or of a dropped walk)
teaches nothing: otherwise a client asking for the last page alone would have it taken for the whole
listing, and every tool of the earlier pages would count as invented (its failure events pushed out
by a flood of junk names, its summaries folded, its metric label and breaker slot taken). The most a
client can do now is drop other clients' waiting walks (by starting `MAX_PENDING_WALKS` of its own):
their tools then go unlearned until a later walk completes, never demoted.

A completed walk adds its tools to the catalog, each with the hints of its latest listing, and
removes none: the catalog is the union of what complete walks listed, at most `MAX_TOOLS` tools, the
least recently listed going first. So an upstream that filters `tools/list` per user never demotes
one user's tools because another user's listing lacks them. The trade-off: a tool the server removed
stays listed until evicted. Harmless: it only keeps a slot (a breaker, a metric label, a summary) that
costs what any listed tool costs, and a call to it still gets the server's own answer. A walk keeps
at most `MAX_TOOLS` tools and ignores names longer than `MAX_TOOL_NAME_CHARS` (no client can call them
through the proxy). Until a first walk completes the catalog is not `known` and vouches for no name;
users of it then fall back to their own bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from proxy.mcp.jsonrpc import MAX_NAME_CHARS

__all__ = [
    "MAX_PENDING_TOOLS",
    "MAX_PENDING_WALKS",
    "MAX_TOOLS",
    "MAX_TOOL_NAME_CHARS",
    "MCP_METHODS",
    "ToolCatalog",
    "ToolHints",
    "listed",
]

MAX_TOOLS: Final = 10_000
"""Tools the catalog keeps (the least recently listed go first), and tools kept from one walk: a server
listing more in one walk has the rest treated like names it does not have."""

MAX_PENDING_WALKS: Final = 16
"""Paginated walks waiting for their next page; one more drops the least recently extended, whose later
pages are then no listing (`learn` returns 0 for them)."""

MAX_PENDING_TOOLS: Final = 2 * MAX_TOOLS
"""Tools the waiting walks hold between them (two whole walks of the largest listing); past it the least
recently extended walks are dropped, as past `MAX_PENDING_WALKS`."""

MAX_TOOL_NAME_CHARS: Final = MAX_NAME_CHARS
"""Longest listed tool name kept: the longest a client may call (`proxy.mcp.jsonrpc.MAX_NAME_CHARS`)."""

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
    """One upstream's tools as complete walks listed them; `version` changes whenever the set of names does."""

    __slots__ = ("_pending_tools", "_tools", "_walks", "known", "version")

    def __init__(self) -> None:
        self._tools: dict[str, ToolHints] = {}
        """Listed tools, least recently listed first."""
        self._walks: dict[str, dict[str, ToolHints]] = {}
        """Walks waiting for a page, by the cursor that asks for it; least recently extended first."""
        self._pending_tools = 0
        """Tools the waiting walks hold between them."""
        self.known = False
        """True once a walk completed: from then on a name not listed is not the upstream's."""
        self.version = 0

    def learn(self, message: Any, cursor: object = None) -> int:
        """Take in a `tools/list` response `message` to a request with `cursor` (its `params.cursor`;
        None: the request had none). Return how many tools the page listed (0: not a listing, or a page
        of no walk the proxy saw start)."""
        result = message.get("result") if isinstance(message, dict) else None
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            return 0  # an error answer, or not a listing: nothing learned, nothing forgotten
        if cursor is None:
            walk: dict[str, ToolHints] = {}
        elif isinstance(cursor, str) and cursor in self._walks:
            walk = self._walks.pop(cursor)
            self._pending_tools -= len(walk)
        else:
            return 0  # a page of a walk the proxy did not see start: no listing
        read = 0
        for tool in tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            if not isinstance(name, str) or len(name) > MAX_TOOL_NAME_CHARS:
                continue
            read += 1
            if name in walk or len(walk) < MAX_TOOLS:
                walk[name] = _hints(tool)
        following = result.get("nextCursor")
        if isinstance(following, str):
            self._wait(following, walk)
        else:
            self._complete(walk)
        return read

    def _wait(self, cursor: str, walk: dict[str, ToolHints]) -> None:
        """Keep `walk` until the page `cursor` asks for, dropping the least recently extended walks past the bounds."""
        replaced = self._walks.pop(cursor, None)
        if replaced is not None:
            self._pending_tools -= len(replaced)  # another walk handed the same cursor: the latest wins
        walks = self._walks
        walks[cursor] = walk
        self._pending_tools += len(walk)
        while len(walks) > MAX_PENDING_WALKS or self._pending_tools > MAX_PENDING_TOOLS:
            oldest = next(iter(walks))  # never `cursor` itself: one walk alone is within both bounds
            self._pending_tools -= len(walks.pop(oldest))

    def _complete(self, walk: dict[str, ToolHints]) -> None:
        """Add a complete walk's tools, as the most recently listed; evict the least recently listed past `MAX_TOOLS`."""
        tools = self._tools
        changed = not self.known
        for name, hints in walk.items():
            if tools.pop(name, None) is None:
                changed = True
            tools[name] = hints
        while len(tools) > MAX_TOOLS:
            del tools[next(iter(tools))]  # never one of this walk's: it holds at most MAX_TOOLS
            changed = True
        if changed:
            self.version += 1
        self.known = True

    def has(self, tool: str) -> bool:
        """True when a complete walk listed `tool` (and it was not evicted since)."""
        return tool in self._tools

    def hints(self, tool: str) -> ToolHints | None:
        """What the server declared about `tool` when it last listed it; None when it is not listed."""
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
