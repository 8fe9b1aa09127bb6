"""Helpers for the end-to-end tests with the official SDK client (`tests/test_e2e_sdk.py`).

* :func:`start_server` runs an MCP server module as a subprocess on a free port and waits until the
  port accepts connections.
* This module is itself such a server (``python -m tests.sdk_helpers --port N``): the everything
  server plus one tool, ``broadcast``, that sends messages *outside* the calling request. On the
  legacy wire those ride the session's standalone GET stream, which is what the tests need to see
  pass through the proxy; nothing in the everything server does that (its notifications all name
  the request that caused them, so they ride that request's own stream).
* :class:`HttpLog` records every HTTP exchange the SDK client makes (through an ``httpx2`` event
  hook), so a test can see the session id, the DELETE, the GET stream, and the POSTs per call.
* :func:`requests_total` reads ``mcp_proxy_requests_total`` from the proxy's ``/metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
import time
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from prometheus_client.parser import text_string_to_metric_families

from tests.servers.everything import build_server

REPO = Path(__file__).resolve().parent.parent

BROADCAST_URI = "test://watched-resource"
"""The resource ``broadcast`` reports as updated."""

BROADCAST_LOGGER = "broadcast"
"""The ``logger`` field of the log record ``broadcast`` sends."""


# --------------------------------------------------------------------------------------
# Subprocess servers
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_port(port: int, process: asyncio.subprocess.Process, timeout: float = 30) -> None:
    """Return once 127.0.0.1:`port` accepts a connection; fail if `process` exits or `timeout` passes."""
    async with asyncio.timeout(timeout):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"server on port {port} exited early with {process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # the port is not open yet; bounded by the timeout above
                continue
            writer.close()
            await writer.wait_closed()
            return


@dataclass
class ServerProcess:
    """An MCP server subprocess and its endpoint URL."""

    process: asyncio.subprocess.Process
    url: str

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_server(module: str, log_path: Path) -> ServerProcess:
    """Start ``python -m module --host 127.0.0.1 --port N`` (stderr to `log_path`) and wait for the port."""
    port = free_port()
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port),
            cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=log,
        )
    server = ServerProcess(process, f"http://127.0.0.1:{port}/mcp")
    try:
        await wait_for_port(port, process)
    except (RuntimeError, TimeoutError):
        await server.stop()
        raise RuntimeError(f"{module} did not start: {log_path.read_text(errors='replace')[-2000:]}") from None
    return server


# --------------------------------------------------------------------------------------
# The everything server plus `broadcast`
# --------------------------------------------------------------------------------------


def build_broadcast_server() -> MCPServer:
    """The everything server with a ``broadcast`` tool (see the module docstring)."""
    server = build_server()

    @server.tool()
    async def broadcast(text: str, ctx: Context) -> str:
        """Send, outside this request: a log record carrying `text`, resources/updated, tools/list_changed."""
        session = ctx.request_context.session
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await session.send_log_message(level="info", data=text, logger=BROADCAST_LOGGER)  # pyright: ignore[reportDeprecated]
        await session.send_resource_updated(BROADCAST_URI)
        await session.send_tool_list_changed()
        return f"broadcast {text}"

    return server


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m tests.sdk_helpers --host 127.0.0.1 --port N``."""
    import uvicorn

    from tests.servers.everything import MemoryEventStore

    parser = argparse.ArgumentParser(prog="python -m tests.sdk_helpers")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    app = build_broadcast_server().streamable_http_app(
        streamable_http_path="/mcp", event_store=MemoryEventStore(), retry_interval=100, host=args.host
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


# --------------------------------------------------------------------------------------
# What the SDK client does on the wire
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    """One HTTP exchange of the SDK client: the request line, MCP headers, and the answer's status."""

    method: str
    mcp_method: str | None
    mcp_name: str | None
    session_id: str | None
    last_event_id: str | None
    status: int
    response_session_id: str | None
    content_type: str


@dataclass
class HttpLog:
    """Every HTTP exchange an SDK `Client` made, in the order the answers' headers arrived."""

    exchanges: list[Exchange] = field(default_factory=list)
    get_stream_open: anyio.Event = field(default_factory=anyio.Event)

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        exchange = Exchange(
            method=request.method,
            mcp_method=request.headers.get("mcp-method"),
            mcp_name=request.headers.get("mcp-name"),
            session_id=request.headers.get("mcp-session-id"),
            last_event_id=request.headers.get("last-event-id"),
            status=response.status_code,
            response_session_id=response.headers.get("mcp-session-id"),
            content_type=response.headers.get("content-type", ""),
        )
        self.exchanges.append(exchange)
        if exchange.method == "GET" and exchange.status == 200 and exchange.content_type.startswith("text/event-stream"):
            self.get_stream_open.set()

    def session_ids(self) -> set[str]:
        """Every session id the server handed out."""
        return {e.response_session_id for e in self.exchanges if e.response_session_id}

    def by_method(self, http_method: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == http_method]

    def calls(self, tool: str) -> list[Exchange]:
        """The POSTs that carried ``tools/call`` for `tool` (2026-07-28: named in the Mcp-Name header)."""
        return [e for e in self.exchanges if e.method == "POST" and e.mcp_method == "tools/call" and e.mcp_name == tool]


@contextlib.asynccontextmanager
async def recorded_transport(url: str, log: HttpLog) -> AsyncIterator[Any]:
    """A streamable-HTTP transport for `mcp.Client` whose HTTP exchanges land in `log`.

    The client is built like the SDK's default one (30 s, 300 s read for streams), plus the hook.
    """
    timeout = httpx2.Timeout(30, read=300)
    async with (
        httpx2.AsyncClient(timeout=timeout, event_hooks={"response": [log.on_response]}) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


# --------------------------------------------------------------------------------------
# Raw HTTP, for what the SDK client hides
# --------------------------------------------------------------------------------------

LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
ACCEPT = "application/json, text/event-stream"


@dataclass(frozen=True)
class SseEvent:
    """One SSE event as received, and when (``time.perf_counter()``)."""

    data: str
    id: str | None
    at: float


async def read_sse(response: httpx2.Response) -> AsyncIterator[SseEvent]:
    """The events of an SSE `response`, as they arrive (comments and ``retry:`` fields dropped)."""
    data: list[str] = []
    event_id: str | None = None
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SseEvent("\n".join(data), event_id, time.perf_counter())
            data, event_id = [], None
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("id:"):
            event_id = line[3:].strip()


def modern_meta() -> dict[str, Any]:
    """The ``_meta`` keys every 2026-07-28 request carries."""
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "raw-e2e", "version": "1"},
    }


async def legacy_handshake(http: httpx2.AsyncClient, url: str) -> str:
    """``initialize`` + ``notifications/initialized`` with raw HTTP; the new session's id."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "raw-e2e", "version": "1"}},
    }
    response = await http.post(url, json=init, headers={"accept": ACCEPT})
    assert response.status_code == 200, response.text
    session_id = response.headers["mcp-session-id"]
    assert f'"protocolVersion":"{LEGACY_VERSION}"' in response.text.replace(" ", "")
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    response = await http.post(url, json=initialized, headers=legacy_headers(session_id))
    assert response.status_code == 202, response.text
    return session_id


def legacy_headers(session_id: str) -> dict[str, str]:
    return {"accept": ACCEPT, "mcp-session-id": session_id, "mcp-protocol-version": LEGACY_VERSION}


# --------------------------------------------------------------------------------------
# /metrics
# --------------------------------------------------------------------------------------


async def requests_total(admin_url: str) -> dict[tuple[str, str, str, str], float]:
    """``mcp_proxy_requests_total`` by (upstream, method, tool, outcome)."""
    async with httpx2.AsyncClient(timeout=10) as http:
        response = await http.get(f"{admin_url}/metrics")
    response.raise_for_status()
    counts: dict[tuple[str, str, str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "mcp_proxy_requests_total":
                labels = sample.labels
                counts[(labels["upstream"], labels["method"], labels["tool"], labels["outcome"])] = sample.value
    return counts


def counts_delta(
    before: dict[tuple[str, str, str, str], float], after: dict[tuple[str, str, str, str], float]
) -> dict[tuple[str, str, str, str], float]:
    """The label sets whose count changed between two `requests_total` readings, and by how much."""
    return {key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)}


async def settled_delta(
    admin_url: str, before: dict[tuple[str, str, str, str], float], upstream: str, expected: int, timeout: float = 10
) -> dict[tuple[str, str, str, str], float]:
    """`counts_delta` for `upstream` once `expected` requests were recorded there.

    The proxy records a streamed request when its handler finishes, which can be just after the
    client has its answer; so poll (bounded) until the count is reached, then return the labels.
    """
    async with asyncio.timeout(timeout):
        while True:
            delta = counts_delta(before, await requests_total(admin_url))
            mine = {key: value for key, value in delta.items() if key[0] == upstream}
            if sum(mine.values()) >= expected:
                return mine
            await asyncio.sleep(0.02)  # the proxy has not finished recording yet; bounded by the timeout


if __name__ == "__main__":
    raise SystemExit(main())
