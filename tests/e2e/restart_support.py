"""What the restart tests (``test_restart*.py``) read and wait on, each wait bounded by a deadline.

* :class:`ProxyEvents`: the proxy's events, read from its admin port (``GET /events?format=json``,
  the in-memory buffer the analyzer also reads), with a cursor so a test looks only at what
  happened after a moment it marked (the restart).
* :class:`SseReader`: one SSE response (a legacy GET stream) read in the background: every message
  it carried, in order, and whether and how it ended. A test waits for a message, never for time.
* :class:`RawSession`: a legacy session driven with raw HTTP (initialize, requests with its id).
* :class:`Notifications`: the notifications an official SDK client received (its ``message_handler``).
* :func:`executions`: the ``record`` tool's executions of one key, from the server's executions file.

Waiting is polling or an event, under :data:`WAIT_S`: the deadline is a bound against a hang, never
the thing a test measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx2
from mcp.types import CallToolResult

from tests.e2e.wire import Answer, request, send
from tests.sdk_helpers import ACCEPT, LEGACY_VERSION, legacy_headers, read_sse

WAIT_S: Final = 30.0
"""Bound on every wait: the proxy's session recovery (``recovery_timeout`` 10 s by default) plus the
restarted server's start, with room for a loaded machine."""

POLL_S: Final = 0.05
"""How often :class:`ProxyEvents` looks again while waiting (the admin port has no push for JSON)."""

T = TypeVar("T")


async def within(awaitable: Awaitable[T], what: str, timeout: float = WAIT_S) -> T:
    """`awaitable`'s value; an assertion naming `what` if it takes longer than `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise AssertionError(f"{what}: not within {timeout} s") from None


# --------------------------------------------------------------------------------------
# The proxy's events
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyEvents:
    """The events of one proxy, from its admin port."""

    admin_url: str

    async def since(self, mark: int = 0) -> list[dict[str, Any]]:
        """Every buffered event whose id is above `mark`, oldest first."""
        async with httpx2.AsyncClient(timeout=10) as http:
            response = await http.get(f"{self.admin_url}/events", params={"format": "json", "since": str(mark)})
        assert response.status_code == 200, response.text
        events = [e for e in response.json() if e["id"] > mark]
        return sorted(events, key=lambda e: int(e["id"]))

    async def mark(self) -> int:
        """The id of the newest event so far (0: none): pass it to :meth:`since` to see only what follows."""
        return max((int(e["id"]) for e in await self.since(0)), default=0)

    async def wait_for(
        self, mark: int, done: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = WAIT_S
    ) -> list[dict[str, Any]]:
        """The events after `mark` once `done(events)` holds; an assertion naming `what` after `timeout`."""
        seen: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout):
                while not done(seen := await self.since(mark)):
                    await asyncio.sleep(POLL_S)  # the proxy has not emitted it yet; bounded by the timeout
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout} s; events since the mark: {brief(seen)}") from None
        return seen


def of_type(events: list[dict[str, Any]], kind: str, **fields: Any) -> list[dict[str, Any]]:
    """The events of type `kind` whose `fields` have the given values."""
    return [e for e in events if e["type"] == kind and all(e.get(k) == v for k, v in fields.items())]


def brief(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events without the envelope fields that never explain a failure (for assertion messages)."""
    noise = {"v", "ts", "signature", "params_hash", "latency_ms", "policy", "error"}
    return [{k: v for k, v in e.items() if k not in noise and v is not None} for e in events]


# --------------------------------------------------------------------------------------
# SSE streams
# --------------------------------------------------------------------------------------


@dataclass
class SseReader:
    """An open SSE response and the background task reading it.

    `messages` holds each event's data parsed as JSON (non-JSON and empty data, such as a priming
    event, are kept out), `event_ids` the ``id:`` of each of those (None when the server gave none).
    `ended` is set when the response ends or breaks; `end` then says how.
    """

    response: httpx2.Response
    messages: list[dict[str, Any]] = field(default_factory=list)
    event_ids: list[str | None] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end: str | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, http: httpx2.AsyncClient, url: str, headers: dict[str, str]) -> SseReader:
        """GET `url` and start reading; the answer must be a 200 event stream."""
        response = await http.send(http.build_request("GET", url, headers=headers), stream=True)
        if response.status_code != 200 or not response.headers.get("content-type", "").startswith("text/event-stream"):
            body = (await response.aread()).decode(errors="replace")
            await response.aclose()
            raise AssertionError(f"GET {url}: HTTP {response.status_code} {body[:500]!r}")
        reader = cls(response)
        reader._task = asyncio.create_task(reader._read())
        return reader

    async def _read(self) -> None:
        try:
            async for event in read_sse(self.response):
                try:
                    message = json.loads(event.data) if event.data else None
                except ValueError:
                    message = None
                if isinstance(message, dict):
                    self.messages.append(message)
                    self.event_ids.append(event.id)
                    self._wake()
            self.end = "ended"
        except (httpx2.HTTPError, OSError) as exc:
            self.end = f"broke: {type(exc).__name__} {exc}"
        finally:
            self.ended.set()
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = WAIT_S) -> None:
        """Return once `done(messages)` holds; an assertion naming `what` if the stream ends first or `timeout` passes."""
        try:
            async with asyncio.timeout(timeout):
                while not done(self.messages):
                    if self.ended.is_set():
                        raise AssertionError(f"{what}: the stream {self.end} first; it carried {self.messages}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout} s; the stream carried {self.messages}") from None

    async def wait_ended(self, what: str, timeout: float = WAIT_S) -> str:
        """How the stream ended, once it has; an assertion naming `what` after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                await self.ended.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: still open after {timeout} s") from None
        assert self.end is not None
        return self.end

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.response.aclose()


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """A JSON-RPC notification as it appears on the wire."""
    return {"jsonrpc": "2.0", "method": method, "params": params}


def announced(text: str) -> dict[str, Any]:
    """The log record the ``announce`` tool sends (``tests/servers/everything.py``, the FastMCP restart app)."""
    return notification("notifications/message", {"level": "info", "logger": "announce", "data": text})


def resource_updated(uri: str) -> dict[str, Any]:
    return notification("notifications/resources/updated", {"uri": uri})


# --------------------------------------------------------------------------------------
# A legacy session over raw HTTP
# --------------------------------------------------------------------------------------


@dataclass
class RawSession:
    """A legacy session at `url` (through the proxy or straight to the server), driven with raw HTTP."""

    http: httpx2.AsyncClient
    url: str
    session_id: str
    initialize_result: dict[str, Any]
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    @classmethod
    async def open(cls, http: httpx2.AsyncClient, url: str, client_name: str = "restart-e2e") -> RawSession:
        """``initialize`` (no capabilities) and ``notifications/initialized``: the session's id and answer."""
        params = {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": client_name, "version": "1"}}
        answer = await send(http, url, request("initialize", params, 1), {"accept": ACCEPT})
        assert answer.status == 200 and answer.session_id, f"initialize at {url}: {answer.describe()}"
        assert answer.message is not None and "result" in answer.message, answer.describe()
        session = cls(http, url, answer.session_id, answer.message["result"])
        initialized = await send(http, url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session.headers())
        assert initialized.status == 202, f"notifications/initialized at {url}: {initialized.describe()}"
        return session

    def headers(self) -> dict[str, str]:
        return legacy_headers(self.session_id)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Answer:
        """One request in this session; its answer (JSON or the SSE answer)."""
        return await send(self.http, self.url, request(method, params, next(self._ids)), self.headers())

    async def tool(self, name: str, arguments: dict[str, Any]) -> Answer:
        return await self.call("tools/call", {"name": name, "arguments": arguments})

    async def open_get(self) -> SseReader:
        """The session's GET stream (the server's messages outside any request)."""
        return await SseReader.open(self.http, self.url, self.headers())


def result_of(answer: Answer, what: str) -> dict[str, Any]:
    """The JSON-RPC result of a 200 answer; an assertion naming `what` otherwise."""
    assert answer.status == 200 and answer.message is not None and "result" in answer.message, (
        f"{what}: {answer.describe()}"
    )
    result = answer.message["result"]
    assert isinstance(result, dict)
    return result


def tool_text(answer: Answer, what: str) -> str:
    """The one text block of a successful tools/call answer."""
    result = result_of(answer, what)
    assert not result.get("isError"), f"{what}: the tool failed: {result}"
    texts = [item.get("text") for item in result.get("content", [])]
    assert len(texts) == 1 and isinstance(texts[0], str), f"{what}: {result}"
    return texts[0]


def session_refused(answer: Answer, what: str) -> None:
    """The answer of a server that does not know the session: 404, or server-everything's 400 -32000."""
    error = (answer.message or {}).get("error") or {}
    assert answer.status in (400, 404) and "session" in str(error.get("message", "")).lower(), (
        f"{what}: expected the server's unknown-session answer, got {answer.describe()}"
    )


# --------------------------------------------------------------------------------------
# The official SDK client's notifications
# --------------------------------------------------------------------------------------


@dataclass
class Notifications:
    """Every notification an SDK client's ``message_handler`` received, in order, as wire JSON (the
    ``jsonrpc`` member put back), so the same expected messages serve raw HTTP and the SDK client."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def handler(self, message: Any) -> None:
        """The client's ``message_handler``: keeps notifications (exceptions are the transport's and dropped)."""
        if isinstance(message, Exception):
            return
        self.messages.append({"jsonrpc": "2.0", **message.model_dump(by_alias=True, mode="json", exclude_none=True)})
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, done: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = WAIT_S) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not done(self.messages):
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout} s; the client received {self.messages}") from None


def sdk_text(result: CallToolResult, what: str) -> str:
    """The one text block of an SDK ``call_tool`` result that is not an error."""
    assert not result.is_error, f"{what}: {result}"
    texts = [getattr(item, "text", None) for item in result.content]
    assert len(texts) == 1 and isinstance(texts[0], str), f"{what}: {result}"
    return texts[0]


# --------------------------------------------------------------------------------------
# Executions of `record`
# --------------------------------------------------------------------------------------


def executions(path: Path, key: str) -> list[int]:
    """The process id of each execution of ``record(key)`` so far, in order (none: the file may not exist)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = [json.loads(line) for line in lines if line.strip()]
    return [int(e["pid"]) for e in entries if e["key"] == key]


def count(messages: list[dict[str, Any]], expected: dict[str, Any]) -> int:
    """How many of `messages` equal `expected` exactly."""
    return sum(message == expected for message in messages)
