"""Install the real servers of the harm suite into ``.ci/cache`` (git-ignored); idempotent.

``python -m tests.e2e.install`` (``.ci/run`` runs it):

* npm ``@modelcontextprotocol/server-everything`` at the pinned version into
  ``.ci/cache/server-everything`` (skipped when that version is already there);
* a venv ``.ci/cache/fastmcp-venv`` with PyPI ``fastmcp`` at the pinned version (skipped when that
  version is already there). FastMCP gets its own venv so its dependency tree can never move a
  package under the proxy's own tests.

Both come from the package registries through their ordinary clients (npm, pip) and nothing else.
"""

from __future__ import annotations

import subprocess
import sys
import venv

from tests.conformance.runner import npm_install
from tests.e2e.upstreams import (
    FASTMCP_PYTHON,
    FASTMCP_VENV,
    FASTMCP_VERSION,
    SERVER_EVERYTHING_DIR,
    SERVER_EVERYTHING_NAME,
    SERVER_EVERYTHING_PREFIX,
    SERVER_EVERYTHING_VERSION,
    fastmcp_installed,
    installed_npm_version,
)


def install_server_everything() -> None:
    """npm-install the pinned server-everything unless that exact version is installed."""
    if installed_npm_version(SERVER_EVERYTHING_DIR) == SERVER_EVERYTHING_VERSION:
        print(f"{SERVER_EVERYTHING_NAME}@{SERVER_EVERYTHING_VERSION}: already installed", file=sys.stderr)
        return
    npm_install(SERVER_EVERYTHING_PREFIX, f"{SERVER_EVERYTHING_NAME}@{SERVER_EVERYTHING_VERSION}")


def install_fastmcp() -> None:
    """Create the FastMCP venv if needed and pip-install the pinned FastMCP unless it is there."""
    if fastmcp_installed():
        print(f"fastmcp=={FASTMCP_VERSION}: already installed", file=sys.stderr)
        return
    if not FASTMCP_PYTHON.is_file():
        print(f"+ venv {FASTMCP_VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(FASTMCP_VENV)
    cmd = [
        str(FASTMCP_PYTHON),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        f"fastmcp=={FASTMCP_VERSION}",
    ]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, timeout=900)


def main() -> int:
    """Install both servers; a failure is an exception (non-zero exit), so CI stops there."""
    install_server_everything()
    install_fastmcp()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
