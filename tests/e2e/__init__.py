"""The real-server harm suite (issue 9 item 7).

The proxy, run exactly as a user runs it with default settings (``mcp-resilience-proxy serve
--upstream URL``), in front of three MCP servers nobody here wrote (see :mod:`tests.e2e.upstreams`):
bad clients must get each server's own answer, unchanged, and cost the good clients nothing; and the
official conformance suite must score the same through the proxy as direct.
"""
