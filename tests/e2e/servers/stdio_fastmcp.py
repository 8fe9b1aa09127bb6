"""The FastMCP 4.1.6 app of the harm suite (``fastmcp_app.py``) over stdio, as a child of the proxy.

Run with the FastMCP venv's interpreter (FastMCP is not in the project's venv)::

    .ci/cache/fastmcp-venv/bin/python tests/e2e/servers/stdio_fastmcp.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fastmcp_app import app  # noqa: E402  (the directory is put on the path just above)


def main() -> None:
    app.run(transport="stdio", show_banner=False)


if __name__ == "__main__":
    main()
