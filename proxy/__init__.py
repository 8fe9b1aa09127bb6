"""mcp-resilience-proxy: a resilience sidecar for MCP servers."""

from proxy.config.model import ConfigError, ProxyConfig, load_config, load_config_file

__version__ = "0.1.0"

__all__ = ["ConfigError", "ProxyConfig", "__version__", "load_config", "load_config_file"]
