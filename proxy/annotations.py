"""Tool annotations learned from `tools/list` answers that pass through the proxy.

MCP tool annotations (`readOnlyHint`, `idempotentHint`, `destructiveHint`, `openWorldHint`) are hints
from the server: the proxy believes them only for upstreams the config marks
`trust_annotations: true`. A tool is safe to retry when it is read-only or idempotent. The map is
bounded (a server with more tools than that keeps the most recently listed ones).
"""

from __future__ import annotations

from typing import Any

from cachetools import LRUCache

__all__ = ["ToolAnnotations"]

MAX_TOOLS = 10_000


class ToolAnnotations:
    """What the upstream said about each tool's side effects, as last listed."""

    __slots__ = ("_safe",)

    def __init__(self) -> None:
        self._safe: LRUCache[str, bool] = LRUCache(maxsize=MAX_TOOLS)

    def learn(self, message: Any) -> int:
        """Record the tools of a `tools/list` response message; return how many were read."""
        result = message.get("result") if isinstance(message, dict) else None
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(tools, list):
            return 0
        learned = 0
        for tool in tools:
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                continue
            hints = tool.get("annotations")
            hints = hints if isinstance(hints, dict) else {}
            self._safe[tool["name"]] = hints.get("readOnlyHint") is True or hints.get("idempotentHint") is True
            learned += 1
        return learned

    def safe_to_retry(self, tool: str) -> bool:
        """True when the last listing said this tool is read-only or idempotent."""
        return self._safe.get(tool, False)

    def __len__(self) -> int:
        return len(self._safe)
