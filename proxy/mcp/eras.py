"""MCP's two wire generations and the protocol versions that name them (pure: no I/O, no state).

MCP versions are dates, so they compare as strings: every version from `MODERN_VERSION` on is the
modern, stateless era (routing headers, ``server/discover``, no sessions); every earlier one the legacy
era (``initialize``, ``Mcp-Session-Id``, the GET stream). A request names its version in the
``MCP-Protocol-Version`` header or, modern requests only, in ``params._meta``; the proxy reads it once
per call (`protocol_of`) and keeps both the version and its era on the `proxy.policies.base.Call`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Final

from proxy.mcp.jsonrpc import Message

__all__ = ["LEGACY_VERSION", "MODERN_VERSION", "Era", "era_for", "protocol_of"]

MODERN_VERSION: Final = "2026-07-28"
"""The first stateless protocol version; versions are dates, so later ones compare greater."""
LEGACY_VERSION: Final = "2025-11-25"
"""The newest version of the legacy (session) era: what the proxy speaks when it initializes a session itself."""
_META_VERSION: Final = "io.modelcontextprotocol/protocolVersion"


class Era(Enum):
    """Which MCP wire generation a request belongs to; the upstream decides from MCP-Protocol-Version."""

    LEGACY = "legacy"  # 2024-11-05 … 2025-11-25: sessions, initialize, GET stream
    MODERN = "modern"  # 2026-07-28 and later: stateless, routing headers, server/discover


def protocol_of(headers: Mapping[str, str], message: Message | None) -> str:
    """The protocol version a request speaks: MCP-Protocol-Version, else the modern `_meta` one, else ''."""
    version = headers.get("MCP-Protocol-Version")
    if version is None and message is not None:
        meta = message.params.get("_meta")
        if isinstance(meta, dict):
            version = meta.get(_META_VERSION)
    return version if isinstance(version, str) else ""


def era_for(protocol: str) -> Era:
    """The wire era of a protocol version: modern from 2026-07-28 on (versions are dates), else legacy."""
    return Era.MODERN if protocol >= MODERN_VERSION else Era.LEGACY
