"""The three real MCP servers the harm suite puts behind the proxy: where each lives, how it starts.

None of them was written here, so what they answer to a client's mistake is theirs, not a fixture's:

* ``npm-everything``: npm ``@modelcontextprotocol/server-everything`` (TypeScript SDK), its
  ``streamableHttp`` transport (``node dist/index.js streamableHttp``, port from ``$PORT``). It
  speaks the legacy era only. It binds every interface by itself, so it is started with
  ``servers/bind_loopback.cjs`` preloaded, which pins the listener to 127.0.0.1.
* ``fastmcp``: PyPI ``fastmcp`` running ``servers/fastmcp_app.py`` (a tool, a resource, a prompt), in
  a venv of its own under ``.ci/cache`` so FastMCP's dependencies never change the project's venv.
  Both eras.
* ``sdk``: ``tests/servers/everything.py`` on the official Python SDK (``mcp`` 2.3). Both eras.
* ``fastmcp-restart``: the same FastMCP, running ``servers/restart_fastmcp_app.py``: the app above
  plus the tools the restart tests drive (``announce``, ``record``); only those tests use it.

Every server is started with ``$MCP_TEST_EXECUTIONS_FILE`` naming a file of its own
(:attr:`UpstreamProcess.executions_path`): the servers that have a ``record`` tool append a line per
execution there, so a test counts executions across a restart.

``python -m tests.e2e.install`` installs the first two (``.ci/run`` calls it); :meth:`ServerSpec.missing`
says why one cannot start here.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import pytest

from tests.conformance.runner import ConformanceError, find_node
from tests.sdk_helpers import LEGACY_VERSION, MODERN_VERSION, ServerProcess, wait_for_port
from tests.servers.everything import EXECUTIONS_ENV

REPO: Final = Path(__file__).resolve().parents[2]
CACHE: Final = REPO / ".ci" / "cache"
SERVERS_DIR: Final = Path(__file__).resolve().parent / "servers"

SERVER_EVERYTHING_NAME: Final = "@modelcontextprotocol/server-everything"
SERVER_EVERYTHING_VERSION: Final = "2026.8.31"
SERVER_EVERYTHING_PREFIX: Final = CACHE / "server-everything"
SERVER_EVERYTHING_DIR: Final = SERVER_EVERYTHING_PREFIX / "node_modules" / SERVER_EVERYTHING_NAME
SERVER_EVERYTHING_ENTRY: Final = SERVER_EVERYTHING_DIR / "dist" / "index.js"

FASTMCP_VERSION: Final = "4.1.6"
FASTMCP_VENV: Final = CACHE / "fastmcp-venv"
FASTMCP_PYTHON: Final = FASTMCP_VENV / "bin" / "python"

Era = Literal["legacy", "modern"]
SDK_MODE: Final[dict[Era, str]] = {"legacy": "legacy", "modern": MODERN_VERSION}
"""The ``mcp.Client`` connect mode that pins each era."""
REQUIREMENTS: Final[dict[Era, str]] = {"legacy": LEGACY_VERSION, "modern": MODERN_VERSION}
"""The conformance requirement set (spec revision) of each era."""


@dataclass(frozen=True)
class GoodCall:
    """The tool call the well-behaved client makes, and the text it must get back."""

    tool: str
    arguments: dict[str, Any]
    text: str


@dataclass(frozen=True)
class Launch:
    """A command line that serves MCP at ``http://127.0.0.1:<port>/mcp``."""

    argv: list[str]
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to the test's environment."""


@dataclass(frozen=True)
class ServerSpec:
    """One real server: its eras, its good call, how to tell it is installed, how to start it."""

    name: str
    eras: tuple[Era, ...]
    good_call: GoodCall
    missing: Callable[[], str | None]
    """Why the server cannot be started here (not installed...), or None."""
    launch: Callable[[int], Launch]

    def __str__(self) -> str:
        return self.name


def installed_npm_version(package_dir: Path) -> str | None:
    """The version in an installed npm package's package.json, or None when it is not installed."""
    try:
        return str(json.loads((package_dir / "package.json").read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError):
        return None


def fastmcp_installed() -> bool:
    """The FastMCP venv exists and holds exactly the pinned FastMCP."""
    return FASTMCP_PYTHON.is_file() and any(
        FASTMCP_VENV.glob(f"lib/python*/site-packages/fastmcp-{FASTMCP_VERSION}.dist-info")
    )


_INSTALL_HINT: Final = "run `python -m tests.e2e.install` (.ci/run does)"


def _npm_everything_missing() -> str | None:
    version = installed_npm_version(SERVER_EVERYTHING_DIR)
    if version != SERVER_EVERYTHING_VERSION:
        return f"{SERVER_EVERYTHING_NAME}@{SERVER_EVERYTHING_VERSION} not installed (found {version}); {_INSTALL_HINT}"
    try:
        find_node()
    except ConformanceError as exc:
        return str(exc)
    return None


def _npm_everything_launch(port: int) -> Launch:
    argv = [
        find_node(),
        "--require",
        str(SERVERS_DIR / "bind_loopback.cjs"),
        str(SERVER_EVERYTHING_ENTRY),
        "streamableHttp",
    ]
    return Launch(argv, {"PORT": str(port)})


def _fastmcp_missing() -> str | None:
    return (
        None if fastmcp_installed() else f"fastmcp=={FASTMCP_VERSION} not installed in {FASTMCP_VENV}; {_INSTALL_HINT}"
    )


def _fastmcp_launch(port: int) -> Launch:
    return Launch(
        [str(FASTMCP_PYTHON), str(SERVERS_DIR / "fastmcp_app.py"), "--host", "127.0.0.1", "--port", str(port)]
    )


def _fastmcp_restart_launch(port: int) -> Launch:
    return Launch(
        [str(FASTMCP_PYTHON), str(SERVERS_DIR / "restart_fastmcp_app.py"), "--host", "127.0.0.1", "--port", str(port)]
    )


def _sdk_launch(port: int) -> Launch:
    return Launch([sys.executable, "-m", "tests.servers.everything", "--host", "127.0.0.1", "--port", str(port)])


NPM_EVERYTHING: Final = ServerSpec(
    name="npm-everything",
    eras=("legacy",),
    good_call=GoodCall("echo", {"message": "hi"}, "Echo: hi"),
    missing=_npm_everything_missing,
    launch=_npm_everything_launch,
)
FASTMCP: Final = ServerSpec(
    name="fastmcp",
    eras=("legacy", "modern"),
    good_call=GoodCall("add", {"a": 2, "b": 3}, "5"),
    missing=_fastmcp_missing,
    launch=_fastmcp_launch,
)
SDK: Final = ServerSpec(
    name="sdk",
    eras=("legacy", "modern"),
    good_call=GoodCall("lookup", {"key": "alpha"}, "1"),
    missing=lambda: None,
    launch=_sdk_launch,
)
FASTMCP_RESTART: Final = ServerSpec(
    name="fastmcp-restart",
    eras=("legacy", "modern"),
    good_call=FASTMCP.good_call,
    missing=_fastmcp_missing,
    launch=_fastmcp_restart_launch,
)
SERVERS: Final = (NPM_EVERYTHING, FASTMCP, SDK)
SERVER_ERAS: Final = [pytest.param(spec, era, id=f"{spec.name}-{era}") for spec in SERVERS for era in spec.eras]
"""Every server in every era it speaks: the parameters of the tests that run per era."""


class UpstreamProcess:
    """One real server on a fixed 127.0.0.1 port; :meth:`restart` brings it back on the same port.

    The port stays the same across a restart because that is what a proxy sees when a server is
    restarted in place: same address, every session and pooled connection gone.
    """

    def __init__(self, spec: ServerSpec, port: int, log_path: Path) -> None:
        self.spec = spec
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.executions_path = log_path.with_name(f"{log_path.stem}-executions.jsonl")
        """Given to every start as ``$MCP_TEST_EXECUTIONS_FILE`` (the ``record`` tools append there)."""
        self._server: ServerProcess | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        """The process id of the running server (a restart changes it)."""
        assert self._server is not None, "not started"
        return self._server.process.pid

    async def start(self) -> None:
        """Start the server and return once its port accepts connections (bounded)."""
        launch = self.spec.launch(self.port)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(launch.argv)}\n".encode())
            log.flush()
            process = await asyncio.create_subprocess_exec(
                *launch.argv,
                cwd=REPO,
                env={**os.environ, EXECUTIONS_ENV: str(self.executions_path), **launch.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._server = ServerProcess(process, self.url)
        self.starts += 1
        try:
            await wait_for_port(self.port, process)
        except (RuntimeError, TimeoutError):
            await self._server.stop()
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.spec.name} did not start on port {self.port}:\n{tail}") from None

    async def kill(self) -> None:
        """SIGKILL and reap: the server crashed (no goodbye to any session or connection)."""
        if self._server is not None and self._server.process.returncode is None:
            self._server.process.kill()
            await self._server.process.wait()

    async def restart(self) -> None:
        """Kill the server and start it again on the same port, as a supervisor would."""
        await self.kill()
        await self.start()

    async def stop(self) -> None:
        """Terminate (then kill, bounded) the server."""
        if self._server is not None:
            await self._server.stop()
