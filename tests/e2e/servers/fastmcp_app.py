"""A tiny FastMCP app (one tool, one resource, one prompt) for the harm suite.

Run with the interpreter of the FastMCP venv that ``python -m tests.e2e.install`` makes (FastMCP is
not a dependency of the project, so it is kept out of the project's venv)::

    .ci/cache/fastmcp-venv/bin/python tests/e2e/servers/fastmcp_app.py --host 127.0.0.1 --port 8000

The app is deliberately ordinary: every answer the suite looks at (unknown names, missing sessions)
comes from FastMCP itself, which is the point of putting a server nobody here wrote behind the proxy.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fastmcp import FastMCP

app = FastMCP("e2e-fastmcp")


@app.tool
def add(a: int, b: int) -> int:
    """Add two integers (the suite's "good client" call)."""
    return a + b


@app.resource("note://greeting")
def greeting() -> str:
    """A fixed text resource."""
    return "hello"


@app.prompt
def greet(name: str) -> str:
    """A prompt with one required argument."""
    return f"Say hello to {name}."


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: bind `--host`/`--port`, Streamable HTTP at /mcp, quiet logs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app.run(transport="http", host=args.host, port=args.port, path="/mcp", show_banner=False, log_level="warning")


if __name__ == "__main__":
    main()
