"""The clients of ``python -m tests.perf --restart``: each calls ``read`` or ``write`` back to back until the
run stops, and records every call as it saw it (`tests.perf.restart_report.CallRecord`).

- `legacy_client`: raw HTTP (``httpx2``), one legacy session (``initialize``, ``notifications/initialized``,
  ``tools/list``), its GET stream held open the whole time (`_listen`), and ``tools/call`` with the
  session's id. It initializes again only when an answer says its session is gone (counted: the
  proxy's session recovery should make that never happen).
- `modern_client`: raw HTTP, 2026-07-28 stateless requests (``_meta`` in the body, the mirroring headers).
- `sdk_client`: the official SDK's `mcp.Client`, in either era (``legacy``: the SDK's own session and GET
  stream). Its verdicts are the SDK's: an `MCPError` is a clear JSON-RPC error (the SDK matched it to
  its request; it cannot show the id), anything else it raises is unclear. When the SDK client can no
  longer be used (its session named as gone, or its connection torn down) a new one is made (counted).

Raw calls are judged on the wire: ``ok`` is a result with the expected text and the request's own id; a
clear error is ``jsonrpc: "2.0"``, the request's own id and an ``error`` with an integer ``code`` and a
string ``message``; anything else (an HTTP answer without it, another id, a wrong result, no answer within
the deadline plus a grace, a broken connection) is unclear.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import httpx2
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult

from tests.perf.restart_report import CallRecord
from tests.sdk_helpers import ACCEPT, LEGACY_VERSION, MODERN_VERSION, legacy_headers, modern_meta, read_sse

__all__ = ["TOOLS", "Load", "legacy_client", "modern_client", "sdk_client"]

TOOLS: Final = ("read", "write")
"""What a client calls next, drawn at random (seeded per client, so runs repeat the same sequence): in
strict turns, the call after a ``write`` that failed at a kill would always be a ``read``, and no
``write`` would ever be made while the server is down."""
RETRY_PAUSE: Final = 0.2
"""A client's pause after a failed call, or a failed ``initialize``, before its next one: an agent does not
call again within the same millisecond, and without it a proxy that fails fast (an open breaker) would
have the clients make tens of thousands of calls a second that say nothing more than the first."""


@dataclass
class Load:
    """What the clients share: the records, the count that paces the restarts, the stop signal, and the
    counts of what happened to sessions and streams."""

    url: str
    calls_between: int
    """Successful calls that end a phase (`phase_done`)."""
    wait: float
    """How long a client waits for an answer: the proxy's deadline plus a grace."""
    t0: float = field(default_factory=time.perf_counter)
    records: list[CallRecord] = field(default_factory=list)
    ok_since_ready: int = 0
    phase_done: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    sessions_opened: int = 0
    reinitialized: int = 0
    init_failures: int = 0
    streams_opened: int = 0
    streams_ended: int = 0
    """Legacy GET streams that ended (or could not be opened again) while the run went on."""
    sdk_clients_opened: int = 0
    sdk_clients_replaced: int = 0
    sdk_client_errors: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, record: CallRecord) -> None:
        self.records.append(record)
        if record.outcome == "ok":
            self.ok_since_ready += 1
            if self.ok_since_ready >= self.calls_between:
                self.phase_done.set()

    def new_phase(self) -> None:
        self.ok_since_ready = 0
        self.phase_done.clear()

    async def pause(self) -> None:
        """A client's pause after a failure (`RETRY_PAUSE`), cut short when the run stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), RETRY_PAUSE)


def _expected(tool: str, ref: str) -> str:
    return f"{'read' if tool == 'read' else 'wrote'} {ref}"


# --------------------------------------------------------------------------------------------------
# Raw HTTP
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int | None
    message: dict[str, Any] | None
    session: str | None
    detail: str


async def _post(http: httpx2.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> Answer:
    """POST one JSON-RPC message; the answer's status, the JSON-RPC response (JSON body or the SSE event
    that is no request or notification) and the session id header."""
    request_headers = {"content-type": "application/json", **headers}
    async with http.stream("POST", url, content=json.dumps(body), headers=request_headers) as response:
        session = response.headers.get("mcp-session-id")
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            async for event in read_sse(response):
                if not event.data:
                    continue
                parsed = json.loads(event.data)
                if isinstance(parsed, dict) and "method" not in parsed:
                    return Answer(response.status_code, parsed, session, "")
            return Answer(response.status_code, None, session, "SSE ended without a response")
        raw = await response.aread()
        if response.status_code == 202 or not raw.strip():
            return Answer(response.status_code, None, session, f"HTTP {response.status_code} without a body")
        try:
            parsed = json.loads(raw)
        except ValueError:
            return Answer(response.status_code, None, session, f"HTTP {response.status_code}: {raw[:120]!r}")
        if not isinstance(parsed, dict):
            return Answer(response.status_code, None, session, f"HTTP {response.status_code}: not an object")
        return Answer(response.status_code, parsed, session, "")


def _session_named(status: int | None, message: str) -> bool:
    """The answer says the session is gone: a 404 on a session request, or an error that names the session."""
    return status == 404 or "session" in message.lower()


def _judged(era: str, client: int, tool: str, ref: str, started: float, ended: float, answer: Answer, request_id: int) -> CallRecord:
    """A raw call's record from its answer (see the module docstring for the verdicts)."""
    message = answer.message or {}
    error, result = message.get("error"), message.get("result")
    same_id = message.get("id") == request_id and type(message.get("id")) is int
    outcome, code, reason, detail, named = "unclear", None, None, answer.detail, answer.status == 404
    if isinstance(error, dict):
        raw_code = error.get("code")
        code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
        data = error.get("data")
        reason = str(data.get("reason")) if isinstance(data, dict) and "reason" in data else None
        detail = f"HTTP {answer.status} {str(error.get('message'))[:100]}"
        clear = message.get("jsonrpc") == "2.0" and same_id and code is not None and isinstance(error.get("message"), str)
        outcome = "error" if clear else "unclear"
        if not same_id:
            detail += f" (id {message.get('id')!r}, not {request_id})"
        named = _session_named(answer.status, f"{error.get('message')} {reason}")
    elif isinstance(result, dict):
        content = result.get("content")
        text = content[0].get("text") if isinstance(content, list) and content and isinstance(content[0], dict) else None
        if same_id and not result.get("isError") and text == _expected(tool, ref):
            outcome = "ok"
        else:
            detail = f"HTTP {answer.status} unexpected result {json.dumps(result)[:120]}"
    return CallRecord(
        era, client, tool, ref, started, ended, outcome, answer.status, code, reason, detail,
        session_rejected=era == "legacy" and outcome != "ok" and named,
    )


async def _call(
    load: Load, http: httpx2.AsyncClient, era: str, client: int, tool: str, ref: str, request_id: int,
    headers: dict[str, str],
) -> CallRecord:
    """One raw ``tools/call`` of `tool` with `ref`, judged."""
    params: dict[str, Any] = {"name": tool, "arguments": {"ref": ref}}
    if era == "modern":
        params["_meta"] = modern_meta()
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    started = load.now()
    try:
        async with asyncio.timeout(load.wait):
            answer = await _post(http, load.url, body, headers)
    except TimeoutError:
        return CallRecord(era, client, tool, ref, started, load.now(), "unclear", detail="no answer within the deadline + grace")
    except (httpx2.HTTPError, OSError, ValueError) as exc:
        return CallRecord(era, client, tool, ref, started, load.now(), "unclear", detail=f"{type(exc).__name__}: {exc}"[:200])
    return _judged(era, client, tool, ref, started, load.now(), answer, request_id)


async def _initialize(load: Load, http: httpx2.AsyncClient, client: int) -> str | None:
    """A legacy session: ``initialize``, ``notifications/initialized``, ``tools/list`` (so the proxy learns
    the tools' annotations); tried again until it works or the run stops. Its id, None when stopped."""
    init = {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": f"bench-legacy-{client}", "version": "1"}},
    }
    while not load.stop.is_set():
        try:
            async with asyncio.timeout(load.wait):
                answer = await _post(http, load.url, init, {"accept": ACCEPT})
                session = answer.session
                if answer.status == 200 and session and "result" in (answer.message or {}):
                    headers = legacy_headers(session)
                    await _post(http, load.url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
                    listed = await _post(http, load.url, {"jsonrpc": "2.0", "id": -1, "method": "tools/list"}, headers)
                    if "result" in (listed.message or {}):
                        load.sessions_opened += 1
                        return session
        except (TimeoutError, httpx2.HTTPError, OSError, ValueError):
            pass
        load.init_failures += 1
        await load.pause()
    return None


async def _listen(load: Load, http: httpx2.AsyncClient, session: str) -> None:
    """Hold the session's GET stream open until cancelled; each time it ends (or cannot be opened) while the
    run goes on is counted, and it is opened again after a pause."""
    while not load.stop.is_set():
        try:
            async with http.stream(
                "GET", load.url, headers=legacy_headers(session), timeout=httpx2.Timeout(load.wait, read=None)
            ) as response:
                if response.status_code == 200:
                    load.streams_opened += 1
                    async for _ in response.aiter_bytes():
                        pass
        except (httpx2.HTTPError, OSError):
            pass
        if load.stop.is_set():
            return
        load.streams_ended += 1
        await load.pause()


async def legacy_client(load: Load, client: int) -> None:
    """A raw legacy-era client: one session and its GET stream, ``read`` or ``write`` until the run stops."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(load.wait)) as http:
        session = await _initialize(load, http, client)
        listener = asyncio.create_task(_listen(load, http, session)) if session is not None else None
        choose = random.Random(f"legacy-{client}")
        seq = 0
        try:
            while session is not None and not load.stop.is_set():
                tool = choose.choice(TOOLS)
                record = await _call(load, http, "legacy", client, tool, f"L{client}-{seq}", seq + 1, legacy_headers(session))
                load.add(record)
                seq += 1
                if record.outcome != "ok":
                    await load.pause()
                if record.session_rejected:
                    load.reinitialized += 1
                    if listener is not None:
                        listener.cancel()
                    session = await _initialize(load, http, client)
                    listener = asyncio.create_task(_listen(load, http, session)) if session is not None else None
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        if session is not None:
            with contextlib.suppress(httpx2.HTTPError, OSError):
                await http.delete(load.url, headers=legacy_headers(session))


def _modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {"accept": ACCEPT, "mcp-protocol-version": MODERN_VERSION, "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return headers


async def modern_client(load: Load, client: int) -> None:
    """A raw 2026-07-28 client: stateless requests, ``tools/list`` once, then ``read`` or ``write``."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(load.wait)) as http:
        listing = {"jsonrpc": "2.0", "id": 0, "method": "tools/list", "params": {"_meta": modern_meta()}}
        with contextlib.suppress(httpx2.HTTPError, OSError, ValueError):
            await _post(http, load.url, listing, _modern_headers("tools/list"))
        choose = random.Random(f"modern-{client}")
        seq = 0
        while not load.stop.is_set():
            tool = choose.choice(TOOLS)
            record = await _call(load, http, "modern", client, tool, f"M{client}-{seq}", seq + 1, _modern_headers("tools/call", tool))
            load.add(record)
            seq += 1
            if record.outcome != "ok":
                await load.pause()


# --------------------------------------------------------------------------------------------------
# The official SDK client
# --------------------------------------------------------------------------------------------------


async def _sdk_call(load: Load, sdk: Client, era: str, client: int, tool: str, ref: str) -> CallRecord:
    """One ``tools/call`` through the SDK client, judged by what the SDK returns or raises."""
    started = load.now()
    try:
        async with asyncio.timeout(load.wait):
            result = await sdk.call_tool(tool, {"ref": ref})
    except MCPError as exc:
        data = exc.error.data
        reason = str(data.get("reason")) if isinstance(data, dict) and "reason" in data else None
        return CallRecord(
            era, client, tool, ref, started, load.now(), "error", None, exc.error.code, reason, exc.error.message[:120],
            session_rejected=era.startswith("legacy") and _session_named(None, f"{exc.error.message} {reason}"),
        )
    except TimeoutError:
        return CallRecord(era, client, tool, ref, started, load.now(), "unclear", detail="no answer within the deadline + grace")
    except Exception as exc:  # noqa: BLE001 - whatever else the SDK raises is what its user would see
        return CallRecord(era, client, tool, ref, started, load.now(), "unclear", detail=f"{type(exc).__name__}: {exc}"[:200])
    texts = [getattr(item, "text", None) for item in result.content] if isinstance(result, CallToolResult) else []
    ok = isinstance(result, CallToolResult) and not result.is_error and texts == [_expected(tool, ref)]
    return CallRecord(era, client, tool, ref, started, load.now(), "ok" if ok else "unclear", detail="" if ok else f"result {texts}")


async def _sdk_calls(load: Load, sdk: Client, label: str, client: int, choose: random.Random, numbers: Iterator[int]) -> None:
    """Calls through one SDK client until the run stops or the client is spent (`numbers` go on across the
    client's successors, so no ref is used twice)."""
    prefix = "LS" if label.startswith("legacy") else "MS"
    with contextlib.suppress(Exception):  # the listing only teaches the proxy the tools' annotations
        await sdk.list_tools()
    while not load.stop.is_set():
        tool = choose.choice(TOOLS)
        record = await _sdk_call(load, sdk, label, client, tool, f"{prefix}{client}-{next(numbers)}")
        load.add(record)
        if record.outcome != "ok":
            await load.pause()
        if record.session_rejected or (record.outcome == "unclear" and "Closed" in record.detail):
            load.sdk_clients_replaced += 1
            break


async def sdk_client(load: Load, era: str, client: int) -> None:
    """An `mcp.Client` of `era` (``legacy`` or ``modern``), ``read`` or ``write`` until the run stops; a new
    client (counted) when this one's session is named as gone or the SDK tears it down."""
    label = f"{era}-sdk"
    choose = random.Random(f"{label}-{client}")
    numbers = itertools.count()
    while not load.stop.is_set():
        try:
            async with Client(load.url, mode="legacy" if era == "legacy" else MODERN_VERSION) as sdk:
                load.sdk_clients_opened += 1
                await _sdk_calls(load, sdk, label, client, choose, numbers)
        except Exception as exc:  # noqa: BLE001 - a failed connect, or the SDK's teardown of a spent client
            load.sdk_client_errors.append(f"{label}: {type(exc).__name__}: {exc}"[:200])
            await load.pause()
