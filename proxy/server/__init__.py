"""The MCP listener: connection limits, the request handler, classification and the relay back to the client."""
