"""The built-in demo MCP server: a small, honest upstream for demos and end-to-end tests.

It is written with the official SDK (``mcp.server.mcpserver.MCPServer``) rather than by hand,
so what the proxy sees is exactly what a real SDK server sends. One ``/mcp`` endpoint serves
both protocol eras: the SDK's session manager routes a request whose ``MCP-Protocol-Version``
header names a modern version (2026-07-28) to its stateless handler and everything else to the
legacy session machinery (initialize, ``Mcp-Session-Id``, GET stream, DELETE).

Tools, chosen to exercise the proxy's policies:

- ``lookup``: read-only and idempotent, so a proxy may retry or cache it.
- ``slow``: read-only, streams four progress notifications before its result.
- ``create_ticket``: not idempotent; retrying it is visible in ``DemoState.tickets_created``.

Faults are injected through the plain attributes of ``DemoState``; flip them at runtime.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from random import Random
from typing import Any, Final

import structlog
import uvicorn

from proxy.tasks import Owner, cancel_and_wait, spawn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, ToolAnnotations
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = [
    "DEMO_PROMPT",
    "DEMO_RESOURCE_URI",
    "FACTS",
    "MCP_PATH",
    "SLOW_STEPS",
    "DemoState",
    "build_demo_app",
    "build_demo_server",
    "running_demo_server",
]

logger = structlog.get_logger(__name__)

MCP_PATH: Final = "/mcp"
SLOW_STEPS: Final = 4
"""Progress notifications ``slow`` sends per call (progress 1..4 of total 4)."""
DEMO_RESOURCE_URI: Final = "demo://facts"
DEMO_PROMPT: Final = "explain_fact"

FACTS: Final[dict[str, str]] = {
    "mcp": "The Model Context Protocol connects AI applications to tools and data.",
    "jsonrpc": "JSON-RPC 2.0 frames every MCP message.",
    "sse": "Server-Sent Events carry streamed responses over one HTTP response.",
    "breaker": "A circuit breaker fails fast while an upstream is known to be unhealthy.",
    "retry": "Only idempotent calls are safe to retry blindly.",
}


@dataclass(slots=True)
class DemoState:
    """Counters and fault-injection knobs shared by one demo server's tools.

    Every knob is a plain attribute read on each request, so a demo (or a test) changes the
    server's behaviour by assigning to it; nothing needs restarting. All defaults are "healthy".
    """

    lookup_failure_rate: float = 0.0
    """Probability in [0, 1] that ``lookup`` fails with a JSON-RPC error instead of answering."""
    lookup_fail_next: int = 0
    """Fail this many upcoming ``lookup`` calls, then answer again: deterministic, for tests."""
    lookup_error_code: int = INTERNAL_ERROR
    """JSON-RPC error code of an injected ``lookup`` failure."""
    extra_latency_s: float = 0.0
    """Added before every tool call does its work (lets timeouts fire without a slow tool)."""
    read_latency_s: float = 0.0
    """Added before the resource answers (a slow read, for the demo's timeout lesson)."""
    http_error_rate: float = 0.0
    """Probability that a POST to ``/mcp`` gets a bare HTTP error before the SDK sees it."""
    http_error_status: int = 503
    """Status of an injected HTTP error (no JSON-RPC body, like a crashed or overloaded server)."""
    rng: Random = field(default_factory=Random)
    """Source of randomness for the rates; seed it to make a run reproducible."""

    tickets_created: int = 0
    """How many times ``create_ticket`` ran to completion."""
    tool_calls: Counter[str] = field(default_factory=Counter)
    """Tool calls received, by tool name, including ones that then failed."""
    injected_failures: int = 0
    """Failures injected so far, of either kind."""

    def snapshot(self) -> dict[str, Any]:
        """Knobs and counters as plain data, for logs and live summaries."""
        return {
            "lookup_failure_rate": self.lookup_failure_rate,
            "lookup_fail_next": self.lookup_fail_next,
            "extra_latency_s": self.extra_latency_s,
            "read_latency_s": self.read_latency_s,
            "http_error_rate": self.http_error_rate,
            "http_error_status": self.http_error_status,
            "tickets_created": self.tickets_created,
            "tool_calls": dict(self.tool_calls),
            "injected_failures": self.injected_failures,
        }

    def _take_lookup_failure(self) -> bool:
        """Decide whether this ``lookup`` fails, consuming one of ``lookup_fail_next``."""
        if self.lookup_fail_next > 0:
            self.lookup_fail_next -= 1
            return True
        return self.lookup_failure_rate > 0 and self.rng.random() < self.lookup_failure_rate


@contextmanager
def _sdk_logging_left_alone() -> Iterator[None]:
    """Stop ``MCPServer()`` from configuring the root logger.

    ``MCPServer.__init__`` calls ``logging.basicConfig`` (with a Rich handler when ``rich`` is
    installed). A library must not install handlers in its host's process, and ``basicConfig``
    is a no-op while the root logger has a handler, so one is lent for the duration.
    """
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    placeholder = logging.NullHandler()
    root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeHandler(placeholder)


def build_demo_server(state: DemoState) -> MCPServer:
    """Build the demo ``MCPServer`` whose tools read and update ``state``."""
    with _sdk_logging_left_alone():
        server: MCPServer = MCPServer(
            "mcp-resilience-proxy-demo",
            version="1.0.0",
            instructions="Demo upstream for mcp-resilience-proxy: lookup, slow, create_ticket.",
            log_level="WARNING",
        )

    async def tool_preamble(name: str) -> None:
        state.tool_calls[name] += 1
        if state.extra_latency_s > 0:
            await asyncio.sleep(state.extra_latency_s)

    @server.tool(
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def lookup(key: str) -> str:
        """Return a short fact about `key` (one of: mcp, jsonrpc, sse, breaker, retry)."""
        await tool_preamble("lookup")
        if state._take_lookup_failure():
            state.injected_failures += 1
            logger.debug("demo.fault_injected", tool="lookup", code=state.lookup_error_code)
            raise MCPError(
                code=state.lookup_error_code,
                message="injected lookup failure",
                data={"injected": True},
            )
        try:
            return FACTS[key]
        except KeyError:
            # A tool-level error (isError result), not a protocol error: the call itself worked.
            raise ToolError(f"unknown key {key!r}; known keys: {', '.join(sorted(FACTS))}") from None

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False))
    async def slow(seconds: float, ctx: Context) -> str:
        """Sleep `seconds` in four steps, reporting progress after each one."""
        await tool_preamble("slow")
        step = max(seconds, 0.0) / SLOW_STEPS
        for i in range(1, SLOW_STEPS + 1):
            await asyncio.sleep(step)
            await ctx.report_progress(i, SLOW_STEPS, f"step {i}")
        return f"slept {seconds}"

    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )
    async def create_ticket(title: str = "demo ticket") -> str:
        """Open a new ticket; every call creates one, so retries are visible."""
        await tool_preamble("create_ticket")
        state.tickets_created += 1
        return f"TICKET-{state.tickets_created}: {title}"

    @server.resource(DEMO_RESOURCE_URI, name="facts", mime_type="application/json")
    async def facts() -> str:
        """Every fact ``lookup`` knows, as one JSON object."""
        if state.read_latency_s > 0:
            await asyncio.sleep(state.read_latency_s)
        return json.dumps(FACTS, sort_keys=True)

    @server.prompt(name=DEMO_PROMPT)
    def explain_fact(key: str) -> str:
        """Ask the model to explain one of the demo facts in plain words."""
        return f"Explain this to a newcomer in two sentences: {FACTS.get(key, key)}"

    return server


class _FaultInjectingApp:
    """ASGI wrapper that answers some POSTs with a bare HTTP error, per ``DemoState``.

    It sits outside the SDK's app so the error carries no JSON-RPC body and no session is
    touched, which is what an overloaded server or a load balancer in front of it looks like.
    """

    __slots__ = ("_app", "_state")

    def __init__(self, app: ASGIApp, state: DemoState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = self._state
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and state.http_error_rate > 0
            and state.rng.random() < state.http_error_rate
        ):
            state.injected_failures += 1
            logger.debug("demo.fault_injected", kind="http", status=state.http_error_status)
            body = b"injected failure\n"
            await send(
                {
                    "type": "http.response.start",
                    "status": state.http_error_status,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self._app(scope, receive, send)


def build_demo_app(state: DemoState, host: str = "127.0.0.1") -> ASGIApp:
    """Build the ASGI app serving the demo server on ``/mcp``, both protocol eras.

    ``host`` is the address the app will be reached on: for loopback hosts the SDK turns on
    its DNS-rebinding protection (``Host``/``Origin`` checks) for that host.
    The returned app's lifespan must run (uvicorn does it) before it serves requests.
    """
    app = build_demo_server(state).streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    return _FaultInjectingApp(app, state)


class _EmbeddedUvicorn(uvicorn.Server):
    """A ``uvicorn.Server`` that lives inside someone else's event loop.

    It leaves signal handling to the host program and announces when it is accepting.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host owns SIGINT/SIGTERM; uvicorn would otherwise swap in its own handlers
        # and re-raise the signal after shutdown.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


class _ShutdownNoiseFilter(logging.Filter):
    """Drop uvicorn's reports of requests it cancelled because we asked it to stop.

    Past ``shutdown_grace_s`` uvicorn cancels in-flight requests (a slow call, a legacy GET
    stream) and logs each as "Exception in ASGI application" with a ``CancelledError``. During
    our own shutdown that is expected, not an error, so the filter is attached only then.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Cancel "):  # "Cancel N running task(s), timeout ..."
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves so port 0 yields a known port before startup."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, socktype, proto, _, address = infos[0]
    sock = socket.socket(family, socktype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{MCP_PATH}"


@asynccontextmanager
async def running_demo_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    state: DemoState | None = None,
    shutdown_grace_s: float = 2.0,
) -> AsyncIterator[str]:
    """Serve the demo server in the running event loop; yield its ``/mcp`` URL.

    ``port=0`` picks a free port; the yielded URL names the bound one. Pass ``state`` to keep a
    handle on the counters and fault knobs. On exit the server stops accepting, waits up to
    ``shutdown_grace_s`` for open connections (a legacy client's GET stream stays open until the
    client leaves), then cancels what remains.

    Raises:
        OSError: The address could not be bound.
        RuntimeError: The server failed during startup.
    """
    state = state if state is not None else DemoState()
    sock = _bind(host, port)
    bound_port: int = sock.getsockname()[1]
    config = uvicorn.Config(
        build_demo_app(state, host),
        http="h11",
        ws="none",
        lifespan="on",
        log_config=None,
        log_level="warning",
        access_log=False,
        # Typed int, but uvicorn only hands it to asyncio.wait_for, which takes any float.
        timeout_graceful_shutdown=shutdown_grace_s,  # type: ignore[arg-type]
    )
    server = _EmbeddedUvicorn(config)

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:
            # uvicorn reports a failed startup with sys.exit(); a SystemExit escaping a task
            # would stop the host's event loop, so it becomes an ordinary error here.
            raise RuntimeError(f"uvicorn exited with status {exc.code}") from exc

    tasks: Owner = set()
    serving = spawn(serve(), name=f"demo-mcp-server:{bound_port}", owner=tasks, awaited=True)
    ready = spawn(server.ready.wait(), name=f"demo-mcp-server-ready:{bound_port}", owner=tasks, awaited=True)
    url = _url(host, bound_port)
    try:
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            error: BaseException | None = None if serving.cancelled() else serving.exception()
            raise RuntimeError(f"demo MCP server failed to start on {url}") from error
        logger.info("demo.server_started", url=url)
        yield url
    finally:
        await cancel_and_wait([ready])
        noise = _ShutdownNoiseFilter()
        uvicorn_logger = logging.getLogger("uvicorn.error")
        uvicorn_logger.addFilter(noise)
        server.should_exit = True
        try:
            await serving
        except Exception:
            # A startup failure was raised above; an error at exit must not mask the body's own.
            logger.debug("demo.server_exit_error", url=url, exc_info=True)
        finally:
            uvicorn_logger.removeFilter(noise)
            sock.close()
        logger.info("demo.server_stopped", url=url)
