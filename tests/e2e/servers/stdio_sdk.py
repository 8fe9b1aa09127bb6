"""The SDK 2.3 everything server (``tests/servers/everything.py``) over stdio, as a child of the proxy.

Run from the repo root (so ``tests`` imports) with the project's interpreter::

    python -m tests.e2e.servers.stdio_sdk

The SDK logs each session at INFO on stderr; stdout carries JSON-RPC only.
"""

from __future__ import annotations

from tests.servers.everything import build_server


def main() -> None:
    build_server().run("stdio")


if __name__ == "__main__":
    main()
