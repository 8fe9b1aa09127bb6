"""A stdio MCP server as an upstream: a supervised child process speaking JSON-RPC over its stdin and stdout."""
