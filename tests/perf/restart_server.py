"""The MCP server ``python -m tests.perf --restart`` kills and restarts: the official SDK (``mcp`` 2.3),
both eras on one Streamable HTTP endpoint, ``/mcp``.

The SDK's session manager picks the era per request (as in ``tests/servers/everything.py``): legacy
sessions (``initialize``, ``Mcp-Session-Id``) and 2026-07-28 stateless requests. Two tools:

- ``read`` (``readOnlyHint``, ``idempotentHint``): answers ``read <ref>``; running it twice harms nothing;
- ``write`` (not read-only, not idempotent): appends ``<ref>`` and a newline to the file given with
  ``--executions`` *before* it answers ``wrote <ref>``, then answers. The line is written with one
  ``os.write`` on an ``O_APPEND`` descriptor: once that call returns the kernel holds the line, so a
  SIGKILL a microsecond later cannot lose it, and lines of concurrent calls never interleave. The
  scenario counts each ref's lines across every incarnation of the server: more than one is a call
  executed twice.

Both tools then wait ``--work-ms`` (a tool that does some work): a kill in that time is a call that
ran (a ``write`` already recorded) but whose answer never left, the case the proxy must not retry.

Prints ``LISTENING <port>`` once uvicorn serves (after the app's lifespan started the session manager),
then serves until SIGTERM/SIGINT, or until the scenario SIGKILLs it. ``--port`` is fixed so a restart
comes back where the proxy expects it (uvicorn binds with ``SO_REUSEADDR``, so the killed process's
connections in TIME_WAIT do not hold the port).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from starlette.applications import Starlette

SERVER_NAME = "restart-bench-server"


def build_app(executions: str, work_ms: float, host: str = "127.0.0.1", json_response: bool = False) -> Starlette:
    """The ASGI app: a fresh `MCPServer` with ``read`` and ``write``, executions appended to `executions`."""
    server = MCPServer(name=SERVER_NAME, version="1.0.0", log_level="WARNING")
    record = os.open(executions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    work = max(work_ms, 0.0) / 1000

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False))
    async def read(ref: str) -> str:
        """Read-only: answers ``read <ref>`` after the server's work time."""
        await asyncio.sleep(work)
        return f"read {ref}"

    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        )
    )
    async def write(ref: str) -> str:
        """Not idempotent: records ``ref`` (one line per execution) first, then works, then answers."""
        os.write(record, f"{ref}\n".encode())
        await asyncio.sleep(work)
        return f"wrote {ref}"

    return server.streamable_http_app(streamable_http_path="/mcp", json_response=json_response, host=host)


class _Announcing(uvicorn.Server):
    """uvicorn's server, saying ``LISTENING <port>`` on stdout once it accepts requests."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            sys.stdout.write(f"LISTENING {self.config.port}\n")
            sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.perf.restart_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--executions", required=True, help="file each execution of `write` appends its ref to")
    parser.add_argument("--work-ms", type=float, default=10.0, help="each tool's work time, ms (default 10)")
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON instead of SSE")
    args = parser.parse_args(argv)
    app = build_app(args.executions, args.work_ms, args.host, args.json_response)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="on")
    _Announcing(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
