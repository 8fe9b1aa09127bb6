"""mcp-resilience-proxy: a resilience sidecar for MCP servers.

The config API below is imported on first use (PEP 562): importing any module of the package (the
pure `proxy.mcp`, the analyzer, a test helper) must not load pydantic and the config models with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.config.model import ConfigError, ProxyConfig, load_config, load_config_file

__version__ = "0.1.0"

__all__ = ["ConfigError", "ProxyConfig", "__version__", "load_config", "load_config_file"]

_LAZY = frozenset({"ConfigError", "ProxyConfig", "load_config", "load_config_file"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("proxy.config.model"), name)
    raise AttributeError(f"module 'proxy' has no attribute {name!r}")
