"""The retry policy's view of tool annotations: what an upstream declared, believed only when trusted.

MCP tool annotations (`readOnlyHint`, `idempotentHint`, `destructiveHint`, `openWorldHint`) are hints
from the server. The upstream's `proxy.mcp.tool_catalog.ToolCatalog` holds what it declared, learned from
every listing whatever the trust (events and bookkeeping use it); this view believes them for retries
only for upstreams the config marks `trust_annotations: true`. A tool is safe to retry when it is
declared read-only or idempotent.
"""

from __future__ import annotations

from typing import Any

from proxy.mcp.tool_catalog import ToolCatalog

__all__ = ["ToolAnnotations"]


class ToolAnnotations:
    """One upstream's catalog, seen by the retry policy with the trust its config gives it."""

    __slots__ = ("catalog", "trusted")

    def __init__(self, catalog: ToolCatalog | None = None, trusted: bool = True) -> None:
        self.catalog = catalog if catalog is not None else ToolCatalog()
        self.trusted = trusted

    def learn(self, message: Any, cursor: object = None) -> int:
        """Record the tools of a `tools/list` response message (trusted or not) to a request with `cursor`
        (its `params.cursor`, None when it had none: see `ToolCatalog.learn`); return how many were read."""
        return self.catalog.learn(message, cursor)

    def safe_to_retry(self, tool: str) -> bool:
        """True when the upstream is trusted and its latest listing of this tool declared it read-only or idempotent."""
        if not self.trusted:
            return False
        hints = self.catalog.hints(tool)
        return hints is not None and hints.safe_to_retry

    def __len__(self) -> int:
        return len(self.catalog)
