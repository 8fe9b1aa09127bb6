"""A fast stdio MCP server for the ``--stdio`` benchmark: newline-delimited JSON-RPC on stdin/stdout.

It answers ``initialize`` (the asked protocol version when it knows it, else 2025-11-25), ``ping``,
``tools/list`` and ``tools/call`` of one tool, ``echo``, whose result is its ``text`` argument, at once;
notifications and a client's answers are read and dropped; any other request gets -32601. All answers to
the lines of one read go out in one write, so a pipelining client is never held up by the child's syscalls.

Why not the SDK server: the benchmark measures what the proxy adds, so the child must cost as little as
possible per call (orjson, uvloop when installed, no per-message task). The benchmark reports the child's
own CPU per call beside the proxy's, which shows whether it ever was the bottleneck.

It imports nothing of the project's: the proxy starts children with a minimal environment (no
``PYTHONPATH``), so it runs as a script, ``python tests/perf/stdio_child.py``. stdin and stdout must be
pipes (or a terminal); it exits 0 at EOF on stdin.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Final

import orjson

VERSIONS: Final = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
DEFAULT_VERSION: Final = "2025-11-25"
ECHO_TOOL: Final = {
    "name": "echo",
    "description": "Returns its text argument.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    "annotations": {"readOnlyHint": True, "idempotentHint": True},
}


def answer(message: Any) -> bytes | None:
    """The line (with its newline) that answers one message, or None for a notification or a response."""
    if not isinstance(message, dict) or "id" not in message or "method" not in message:
        return None
    method, params = message["method"], message.get("params") or {}
    result: dict[str, Any]
    if method == "tools/call":
        text = params.get("arguments", {}).get("text", "") if isinstance(params, dict) else ""
        result = {"content": [{"type": "text", "text": text}]}
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": [ECHO_TOOL]}
    elif method == "initialize":
        asked = params.get("protocolVersion") if isinstance(params, dict) else None
        result = {
            "protocolVersion": asked if asked in VERSIONS else DEFAULT_VERSION,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "perf-stdio-child", "version": "1"},
        }
    else:
        error = {"code": -32601, "message": f"Method not found: {method}"}
        return orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "error": error}) + b"\n"
    return orjson.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + b"\n"


class _Server(asyncio.Protocol):
    """Reads stdin; writes the answers to each chunk's complete lines in one write to stdout."""

    def __init__(self, out: asyncio.WriteTransport, done: asyncio.Future[None]) -> None:
        self._out = out
        self._done = done
        self._pending = b""

    def data_received(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        answers = []
        for line in lines:
            if not line.strip():
                continue
            try:
                found = answer(orjson.loads(line))
            except orjson.JSONDecodeError:
                found = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}\n'
            if found is not None:
                answers.append(found)
        if answers:
            self._out.write(b"".join(answers))

    def eof_received(self) -> bool:
        if not self._done.done():
            self._done.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_result(None)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    out, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout.buffer)
    await loop.connect_read_pipe(lambda: _Server(out, done), sys.stdin.buffer)
    await done
    out.close()


def main() -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve())
    else:
        uvloop.run(serve())


if __name__ == "__main__":
    main()
