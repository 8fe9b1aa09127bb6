"""MCP itself, pure: JSON-RPC, SSE, headers, eras, the tool catalog. No I/O; imports nothing of ours but errors and redact."""
