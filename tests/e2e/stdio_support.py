"""What the stdio end-to-end tests (``test_stdio_*.py``) start, read and wait on.

The proxy runs as a user runs it, in its own process: ``mcp-resilience-proxy serve --stdio -- CMD ARGS``
for the quick start, ``python -m proxy serve --config FILE`` with a ``command:`` upstream when a test
needs settings. Its ports come from its ``proxy_started`` log line (``tests.conftest.launch_proxy``),
the child's process id and restart count from the admin port's ``/status``
(``upstreams.<name>.stdio``), which is what an operator reads.

* :data:`STDIO_SERVERS`: the three real stdio servers (npm server-everything, the SDK 2.3 everything
  server, FastMCP 4.1.6), each with its command line and a call that must work.
* :func:`start_stdio_proxy`: the proxy on one child; :class:`StdioProxy` reads its child's state.
* :func:`post_all`: one raw POST and every message of its answer, where exact bytes matter.
* :class:`Recording`: what ``servers/stdio_recorder.py`` read from the proxy and wrote back.
* :func:`direct_tool_names`: a server's tools reached directly over the SDK's stdio transport.
* :func:`process_gone`, :func:`descendants`: what ``/proc`` says about a process, for the kill and
  shutdown tests.

Every wait is a poll under a deadline (:data:`WAIT_S`): the deadline bounds a hang, it is never what
a test measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.message import SessionMessage
from mcp.types import jsonrpc_message_adapter
from mcp.client.session import ClientRequestContext
from mcp.types import (
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequestParams,
    ElicitResult,
    ListRootsResult,
    Root,
    TextContent,
)

from tests.conftest import PROXY_COMMAND, REPO, ProxyProcess, launch_proxy, start_proxy_process
from tests.e2e.upstreams import (
    FASTMCP_PYTHON,
    SERVER_EVERYTHING_ENTRY,
    _fastmcp_missing,
    _npm_everything_missing,
)
from proxy.upstream.stdio.gateway import CLIENT_CAPABILITIES
from tests.conformance.runner import find_node
from tests.sdk_helpers import ACCEPT, LEGACY_VERSION, read_sse

WAIT_S: Final = 30.0
"""Bound on every wait (a child's start, a restart after its backoff, a probe), with room for a loaded machine."""
POLL_S: Final = 0.05
"""How often a poll of ``/status`` or ``/proc`` looks again (neither pushes anything)."""
UPSTREAM: Final = "default"
"""The upstream's name under ``serve --stdio``; the config-file tests use it too."""
SERVERS_DIR: Final = Path(__file__).resolve().parent / "servers"


# --------------------------------------------------------------------------------------
# The real stdio servers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StdioServer:
    """One real stdio server: how to start it, and what a working call of it answers."""

    name: str
    argv: Callable[[], list[str]]
    missing: Callable[[], str | None]
    tool: str
    arguments: dict[str, Any]
    text: str
    """The one text block the call's result holds."""
    resource: str
    resource_text: str
    """The start of the resource's text."""
    prompt: str
    prompt_arguments: dict[str, str]
    prompt_text: str
    """What the prompt's first message's text contains."""

    def __str__(self) -> str:
        return self.name

    def params(self) -> StdioServerParameters:
        """The same server for the SDK's own stdio client (reached directly, no proxy)."""
        argv = self.argv()
        return StdioServerParameters(command=argv[0], args=argv[1:], cwd=str(REPO))


NPM_STDIO: Final = StdioServer(
    name="npm-everything",
    argv=lambda: [find_node(), str(SERVER_EVERYTHING_ENTRY), "stdio"],
    missing=_npm_everything_missing,
    tool="echo",
    arguments={"message": "hi"},
    text="Echo: hi",
    resource="demo://resource/static/document/architecture.md",
    resource_text="#",
    prompt="args-prompt",
    prompt_arguments={"city": "Paris", "state": "IDF"},
    prompt_text="Paris",
)
SDK_STDIO: Final = StdioServer(
    name="sdk",
    argv=lambda: [sys.executable, "-m", "tests.e2e.servers.stdio_sdk"],
    missing=lambda: None,
    tool="lookup",
    arguments={"key": "alpha"},
    text="1",
    resource="test://static-text",
    resource_text="This is the content of the static text resource.",
    prompt="test_prompt_with_arguments",
    prompt_arguments={"arg1": "one", "arg2": "two"},
    prompt_text="one",
)
FASTMCP_STDIO: Final = StdioServer(
    name="fastmcp",
    argv=lambda: [str(FASTMCP_PYTHON), str(SERVERS_DIR / "stdio_fastmcp.py")],
    missing=_fastmcp_missing,
    tool="add",
    arguments={"a": 2, "b": 3},
    text="5",
    resource="note://greeting",
    resource_text="hello",
    prompt="greet",
    prompt_arguments={"name": "Ada"},
    prompt_text="Say hello to Ada.",
)
STDIO_SERVERS: Final = (NPM_STDIO, SDK_STDIO, FASTMCP_STDIO)

CHILDREN_ARGV: Final = [sys.executable, "-m", "tests.stdio_children"]
"""The scripted children of ``tests/stdio_children.py`` (a mode follows)."""
RECORDER_ARGV: Final = [sys.executable, "-m", "tests.e2e.servers.stdio_recorder"]
RECORD_ENV: Final = "STDIO_RECORDER_FILE"
"""Where ``servers/stdio_recorder.py`` appends every message it reads (one JSON line each)."""


def require(missing: str | None) -> None:
    """Skip (locally) or fail (under CI) when a server is not installed, as ``tests/e2e/conftest.py`` does."""
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"required under CI: {missing}")
    pytest.skip(missing)


# --------------------------------------------------------------------------------------
# Client callbacks: what the proxy declares to a child, a client must be able to answer
# --------------------------------------------------------------------------------------


@dataclass
class Asked:
    """The questions (sampling, elicitation, roots) a client was asked, in order, as (method, params)."""

    questions: list[tuple[str, Any]] = field(default_factory=list)
    reply: str = "from the test client"
    """The text the sampling callback answers with."""

    async def sampling(self, context: ClientRequestContext, params: CreateMessageRequestParams) -> CreateMessageResult:
        self.questions.append(("sampling/createMessage", params))
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text=self.reply), model="test-model"
        )

    async def elicitation(self, context: ClientRequestContext, params: ElicitRequestParams) -> ElicitResult:
        self.questions.append(("elicitation/create", params))
        return ElicitResult(action="accept", content={"confirm": True})

    async def roots(self, context: ClientRequestContext) -> ListRootsResult:
        self.questions.append(("roots/list", None))
        return ListRootsResult(roots=[Root(uri="file:///tmp/e2e-root", name="e2e")])  # type: ignore[arg-type]


def full_client(server: str | StdioServerParameters, mode: str, asked: Asked | None = None, **kwargs: Any) -> Client:
    """An SDK client declaring sampling, elicitation and roots (what the proxy declares to every child):
    servers such as server-everything list some tools only to a client that can be asked."""
    asked = asked or Asked()
    return Client(
        server,
        mode=mode,
        sampling_callback=asked.sampling,
        elicitation_callback=asked.elicitation,
        list_roots_callback=asked.roots,
        **kwargs,
    )


async def direct_tool_names(server: StdioServer, capabilities: Mapping[str, Any] = CLIENT_CAPABILITIES) -> list[str]:
    """The tools `server` lists to a client declaring `capabilities` (by default exactly what the proxy
    declares to its children), reached directly over the SDK's stdio transport: initialize,
    initialized, ping, then ``tools/list`` (a ``roots/list`` the server asks on the way is answered with no roots)."""

    def message(body: dict[str, Any]) -> SessionMessage:
        return SessionMessage(jsonrpc_message_adapter.validate_python({"jsonrpc": "2.0", **body}))

    init = {
        "protocolVersion": LEGACY_VERSION,
        "capabilities": dict(capabilities),
        "clientInfo": {"name": "direct", "version": "1"},
    }
    async with asyncio.timeout(WAIT_S), stdio_client(server.params()) as (read, write):
        await write.send(message({"id": 1, "method": "initialize", "params": init}))
        async for item in read:
            assert isinstance(item, SessionMessage), item
            got = item.message.model_dump(by_alias=True, exclude_none=True)
            if got.get("method") == "roots/list":
                await write.send(message({"id": got["id"], "result": {"roots": []}}))
            elif got.get("id") == 1:  # (npm reads initialized sent earlier before it knows the capabilities)
                assert "result" in got, got
                await write.send(message({"method": "notifications/initialized"}))
                await write.send(message({"id": 2, "method": "ping"}))
            elif got.get("id") == 2:  # initialized is handled: the tools a server adds on it are there
                await write.send(message({"id": 3, "method": "tools/list"}))
            elif got.get("id") == 3:
                return [tool["name"] for tool in got["result"]["tools"]]
    raise AssertionError(f"{server}: the stdio transport ended before tools/list was answered")


# --------------------------------------------------------------------------------------
# The proxy on a stdio child
# --------------------------------------------------------------------------------------


@dataclass
class StdioProxy:
    """A proxy process in front of one stdio child."""

    process: ProxyProcess
    name: str = UPSTREAM

    @property
    def url(self) -> str:
        return f"{self.process.url}/mcp"

    @property
    def admin_url(self) -> str:
        return self.process.admin_url

    async def admin(self, path: str) -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=10) as http:
            return await http.get(f"{self.admin_url}{path}")

    async def child(self) -> dict[str, Any]:
        """``/status`` ``upstreams.<name>.stdio``: state, pid, generation, restarts, last_exit, last_error..."""
        response = await self.admin("/status")
        assert response.status_code == 200, response.text
        entry = response.json()["upstreams"][self.name]["stdio"]
        assert isinstance(entry, dict)
        return entry

    async def wait_child(
        self, done: Callable[[dict[str, Any]], bool], what: str, timeout: float = WAIT_S
    ) -> dict[str, Any]:
        """The child's ``/status`` entry once `done(entry)` holds; an assertion naming `what` after `timeout`."""
        entry: dict[str, Any] = {}
        try:
            async with asyncio.timeout(timeout):
                while not done(entry := await self.child()):
                    await asyncio.sleep(POLL_S)  # the supervisor has not got there yet; bounded above
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout} s; the child's /status: {entry}") from None
        return entry

    async def wait_up(self, what: str = "the child up") -> dict[str, Any]:
        return await self.wait_child(lambda c: c.get("state") == "up" and c.get("pid") is not None, what)

    async def wait_readyz(self, status: int, what: str, timeout: float = WAIT_S) -> None:
        """Return once ``/readyz`` answers `status`; an assertion naming `what` after `timeout`."""
        got = None
        try:
            async with asyncio.timeout(timeout):
                while (got := (await self.admin("/readyz")).status_code) != status:
                    await asyncio.sleep(POLL_S)  # the health state changes on the next probe; bounded above
        except TimeoutError:
            raise AssertionError(f"{what}: /readyz still {got} after {timeout} s, not {status}") from None

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The proxy's log lines (JSON on stderr) whose ``event`` is `event`, so far."""
        return [line for line in self.process.log_lines if line.get("event") == event]

    async def stop(self) -> int:
        return await self.process.stop()


async def start_stdio_proxy(
    argv: list[str],
    tmp_path: Path,
    *,
    upstream: Mapping[str, Any] | None = None,
    top: Mapping[str, Any] | None = None,
) -> StdioProxy:
    """The proxy on the stdio child `argv`, its child up.

    Without `upstream` or `top`: the quick start, ``mcp-resilience-proxy serve --stdio -- ARGV`` (every
    setting default). With them: a config file whose one upstream is ``{name: default, command: argv,
    **upstream}`` (and `top` merged at the top level), run with ``serve --config``."""
    if upstream is None and top is None:
        cli = [str(PROXY_COMMAND), "serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--stdio", "--"]
        process = await launch_proxy([*cli, *argv])
    else:
        config = {
            "listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0},
            "upstreams": [{"name": UPSTREAM, "command": argv, **(upstream or {})}],
            **(top or {}),
        }
        process = await start_proxy_process(config, tmp_path)
    return StdioProxy(process)


class StdioProxies:
    """One quick-start proxy per real server, started on first use and shared by a module's tests
    (each test makes sessions of its own; none of them restarts the child)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._running: dict[str, StdioProxy] = {}
        self._lock = asyncio.Lock()

    async def get(self, server: StdioServer) -> StdioProxy:
        require(server.missing())
        async with self._lock:
            if server.name not in self._running:
                proxy = await start_stdio_proxy(server.argv(), self.tmp)
                self._running[server.name] = proxy
                await proxy.wait_up(f"{server}: the child up behind the proxy")
                await proxy.wait_readyz(200, f"{server}: the proxy ready")
            return self._running[server.name]

    async def close(self) -> None:
        for proxy in self._running.values():
            await proxy.stop()


async def post_all(
    http: httpx2.AsyncClient, url: str, body: dict[str, Any], headers: Mapping[str, str]
) -> tuple[int, list[dict[str, Any]]]:
    """POST one JSON-RPC message; the HTTP status and every message of the answer, in order (a JSON body
    is one message; an SSE answer is each event's data), as the bytes said them."""
    request_headers = {"content-type": "application/json", "accept": ACCEPT, **headers}
    async with http.stream("POST", url, content=json.dumps(body), headers=request_headers) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            messages = [json.loads(event.data) async for event in read_sse(response) if event.data]
        else:
            raw = await response.aread()
            messages = [json.loads(raw)] if raw.strip() else []
        return response.status_code, messages


@dataclass(frozen=True)
class Recording:
    """What ``servers/stdio_recorder.py`` read from the proxy (each message as it came) and wrote back
    (``{"sent": message}``), from its file."""

    path: Path

    def lines(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def call_ids(self, tag: str) -> list[Any]:
        """The ids, as the child got them, of every ``tools/call`` whose arguments carry ``tag``."""
        return [
            line["id"]
            for line in self.lines()
            if line.get("method") == "tools/call" and line["params"].get("arguments", {}).get("tag") == tag
        ]

    def cancellations(self, request_id: Any) -> list[dict[str, Any]]:
        """Every ``notifications/cancelled`` the child read for `request_id`."""
        return [
            line
            for line in self.lines()
            if line.get("method") == "notifications/cancelled" and line["params"].get("requestId") == request_id
        ]

    def answers(self, request_id: Any) -> list[dict[str, Any]]:
        """What the child wrote back for `request_id`."""
        return [line["sent"] for line in self.lines() if "sent" in line and line["sent"].get("id") == request_id]

    async def wait_for(self, done: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        """Return once `done()` holds; an assertion naming `what` (and the file) after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while not done():
                    await asyncio.sleep(POLL_S)  # the child has not read it yet; bounded above
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout} s; the child recorded {self.lines()}") from None


# --------------------------------------------------------------------------------------
# Processes, as /proc sees them
# --------------------------------------------------------------------------------------


def process_gone(pid: int) -> bool:
    """No process `pid`, or only its zombie (dead, not yet reaped by a parent that is itself going)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (children, their children...), from ``/proc/*/stat``'s parent ids."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


async def wait_gone(pids: list[int], what: str, timeout: float = WAIT_S) -> None:
    """Return once every process of `pids` is gone; an assertion naming `what` after `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            while not all(process_gone(pid) for pid in pids):
                await asyncio.sleep(POLL_S)  # the process is still exiting; bounded above
    except TimeoutError:
        alive = [pid for pid in pids if not process_gone(pid)]
        raise AssertionError(f"{what}: still alive after {timeout} s: {alive}") from None
