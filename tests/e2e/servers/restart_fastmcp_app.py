"""The harm suite's FastMCP app plus the two tools the restart tests drive (``test_restart*.py``).

Run with the FastMCP venv's interpreter, like ``fastmcp_app.py``::

    .ci/cache/fastmcp-venv/bin/python tests/e2e/servers/restart_fastmcp_app.py --host 127.0.0.1 --port 8000

* ``add`` (a, b): the suite's good call, as in ``fastmcp_app.py``.
* ``announce`` (text): an info log record (logger ``announce``) sent to the calling session outside
  the request, so on the legacy wire it rides the session's GET stream: what a test needs to see a
  notification the server sends after a restart arrive on a GET stream opened before it.
* ``record`` (key): NOT idempotent; appends ``{"key": key, "pid": pid}`` as a line to the file named
  by ``$MCP_TEST_EXECUTIONS_FILE``, so a test counts executions across a restart (the same contract
  as ``record`` in ``tests/servers/everything.py``; this app runs in another venv and cannot import it).

FastMCP 4.1.6 registers no ``resources/subscribe`` handler (its initialize answer says
``resources.subscribe: false``), so nothing here can be subscribed to.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Sequence

from fastmcp import Context, FastMCP
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import ToolAnnotations

EXECUTIONS_ENV = "MCP_TEST_EXECUTIONS_FILE"
"""Same name as ``tests.servers.everything.EXECUTIONS_ENV``."""

NOT_IDEMPOTENT = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)

app = FastMCP("e2e-fastmcp-restart")


@app.tool
def add(a: int, b: int) -> int:
    """Add two integers (the suite's "good client" call)."""
    return a + b


@app.tool(annotations=NOT_IDEMPOTENT)
async def announce(text: str, ctx: Context) -> str:
    """Send `text` as an info log record to the calling session, outside this request (its GET stream)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await ctx.session.send_log_message(level="info", data=text, logger="announce")
    return f"announced {text}"


@app.tool(annotations=NOT_IDEMPOTENT)
def record(key: str) -> str:
    """Record one execution under `key` (a line in ``$MCP_TEST_EXECUTIONS_FILE``)."""
    path = os.environ.get(EXECUTIONS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as executions:
            executions.write(json.dumps({"key": key, "pid": os.getpid()}) + "\n")
    return f"recorded {key}"


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: bind `--host`/`--port`, Streamable HTTP at /mcp, quiet logs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app.run(transport="http", host=args.host, port=args.port, path="/mcp", show_banner=False, log_level="warning")


if __name__ == "__main__":
    main()
