"""A fault-injecting MCP upstream over real HTTP on 127.0.0.1, for tests and benchmarks.

It speaks just enough MCP (both eras look alike from here: POST JSON-RPC in, JSON or SSE out) to
answer `tools/list`, `tools/call` and any read method, and it can be told, per method or per tool,
to misbehave: delay, fail N times then succeed, answer any status (429 with Retry-After), drop the
connection before or after the headers, break an SSE stream midway, hang, hold its answer until the
test opens a gate, answer a JSON-RPC error or an `isError` tool result. Every request it receives is counted and recorded (method, tool, headers).

For the live scenarios (`tests/scenarios/`) a fault can also be decided per request rather than per
count, always deterministically:

* ``failing_tries``: a function of the JSON-RPC id giving how many first tries of *that* request
  misbehave (the proxy resends a retried request with the same id), so "every fourth call fails its
  first two tries" is exact whatever the timing;
* ``rate`` / ``burst``: a token bucket (``burst`` tokens, refilled at ``rate`` per second, full at
  start); a request finding it empty is answered 429 with ``Retry-After`` (the seconds until the next
  token, rounded up) and counted in ``limited``, the others pass the bucket and get the rest of the fault;
* ``jitter`` with ``seed``: an extra delay drawn uniformly from [0, jitter] by a seeded generator.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Fault", "FaultUpstream", "Received"]


@dataclass
class Fault:
    """What to do with matching requests. `times` = how many requests misbehave (None: all of them)."""

    times: int | None = None
    delay: float = 0.0
    status: int | None = None
    retry_after: str | None = None
    drop: str | None = None  # "before_headers" | "after_headers"
    hang: bool = False
    jsonrpc_error: int | None = None
    tool_error: bool = False
    sse: bool = False  # answer as SSE with progress notifications first
    sse_break_after: int | None = None  # with sse: events sent before the connection drops
    sse_hang_after: int | None = None  # with sse: events sent before the stream goes silent for good
    sse_end_after: int | None = None  # with sse: events sent before the stream ends cleanly, unanswered
    asks_client: bool = False  # with sse: first send the client a request (roots/list), then wait for good
    gate: asyncio.Event | None = None  # held until the test sets it: before answering, or with asks_client before the response
    failing_tries: Callable[[Any], int] | None = None  # JSON-RPC id -> how many first tries of that request misbehave
    rate: float | None = None  # token bucket: tokens per second (None: no bucket)
    burst: int = 1  # with rate: the bucket's size (full at start)
    jitter: float = 0.0  # extra delay, uniform in [0, jitter] seconds, from a generator seeded with `seed`
    seed: int = 0
    seen: int = 0
    limited: int = 0
    """With rate: requests the bucket refused (answered 429)."""
    passed: int = 0
    """With rate: requests the bucket let through."""
    tries: Counter[str] = field(default_factory=Counter)
    """With failing_tries: requests seen per JSON-RPC id (as JSON)."""
    _tokens: float | None = None
    _refilled: float = 0.0
    _rng: random.Random | None = None

    def active(self) -> bool:
        return self.times is None or self.seen < self.times

    def applies_to(self, request_id: Any) -> bool:
        """Whether this request misbehaves: by count (`times`), or by its own try number (`failing_tries`)."""
        if self.failing_tries is None:
            return self.active()
        key = json.dumps(request_id)
        self.tries[key] += 1
        return self.tries[key] <= self.failing_tries(request_id)

    def take_token(self) -> float | None:
        """With a bucket: None when a token was taken, else the seconds until the next one."""
        assert self.rate is not None
        now = time.monotonic()
        if self._tokens is None:
            self._tokens, self._refilled = float(self.burst), now
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.passed += 1
            return None
        self.limited += 1
        return (1.0 - self._tokens) / self.rate

    def extra_delay(self) -> float:
        if not self.jitter:
            return 0.0
        if self._rng is None:
            self._rng = random.Random(self.seed)
        return self._rng.uniform(0.0, self.jitter)


@dataclass(frozen=True)
class Received:
    method: str
    tool: str | None
    headers: dict[str, str]
    body: bytes


TOOLS: list[dict[str, Any]] = [
    {"name": "lookup", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
    {"name": "create_ticket", "inputSchema": {"type": "object"}, "annotations": {"idempotentHint": False}},
]


@dataclass
class FaultUpstream:
    """The server. Use `fault(method=..., tool=...)` to script misbehaviour; `attempts[key]` counts requests."""

    faults: dict[str, Fault] = field(default_factory=dict)
    attempts: Counter[str] = field(default_factory=Counter)
    received: list[Received] = field(default_factory=list)
    targets: list[tuple[str, str]] = field(default_factory=list)
    """(HTTP method, request target as it arrived) of every request, whatever its method."""
    url: str = ""
    cancelled: int = 0
    """Requests whose handler was cancelled because the proxy closed the connection."""
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever a request arrives; tests clear it and wait on it instead of sleeping."""
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a hanging request's connection went away."""
    javascript_ids: bool = False
    """Echo a number id as a JavaScript server does (``JSON.parse``, ``JSON.stringify``): read as a double,
    written as an integer when integral (9007199254740993 comes back 9007199254740992, ``1.0`` as ``1``).
    Otherwise ids are echoed as Python's `json` reads them (``1.0`` stays ``1.0``, ``-0.0`` too)."""
    _runner: web.AppRunner | None = None

    @staticmethod
    def key(method: str, tool: str | None = None) -> str:
        return f"{method}:{tool}" if tool else method

    def fault(self, method: str, tool: str | None = None, **kwargs: Any) -> Fault:
        fault = self.faults[self.key(method, tool)] = Fault(**kwargs)
        return fault

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/mcp", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound}/mcp"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.targets.append((request.method, request.raw_path))
        if request.method != "POST":
            return web.Response(status=405)
        raw = await request.read()
        body = json.loads(raw)
        if isinstance(body, list):  # a pre-2025-06-18 batch: every entry counted, requests answered
            for item in body:
                self.attempts[self.key(item.get("method", ""))] += 1
            answers = [self._message(item, None, None) for item in body if "id" in item]
            return web.json_response(answers) if answers else web.Response(status=202)
        method = body.get("method", "")
        tool = body.get("params", {}).get("name") if method == "tools/call" else None
        self.received.append(Received(method, tool, dict(request.headers), raw))
        key = self.key(method, tool)
        self.attempts[key] += 1
        self.arrived.set()
        if "id" not in body or "method" not in body:  # a notification, or the client's answer to the server
            return web.Response(status=202)
        fault = self.faults.get(key) or self.faults.get(method)
        if fault is not None and fault.rate is not None:
            wait = fault.take_token()
            if wait is not None:
                headers = {"Retry-After": fault.retry_after or str(max(1, math.ceil(wait)))}
                return web.Response(status=429, text="upstream says slow down", headers=headers)
        if fault is not None and fault.jitter:
            await asyncio.sleep(fault.extra_delay())
        if fault is None or not fault.applies_to(body["id"]):
            return await self._answer(request, body, tool, None)
        fault.seen += 1
        return await self._answer(request, body, tool, fault)

    async def _answer(
        self, request: web.Request, body: dict[str, Any], tool: str | None, fault: Fault | None
    ) -> web.StreamResponse:
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.gate is not None and not fault.asks_client:
                await fault.gate.wait()
            if fault.hang:
                await self._hang()
            if fault.drop == "before_headers":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if fault.status is not None:
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
                return web.Response(status=fault.status, text="upstream says no", headers=headers)
        message = self._message(body, tool, fault)
        if fault is not None and (fault.sse or fault.drop == "after_headers"):
            return await self._sse(request, body, message, fault)
        return web.json_response(message)

    async def _hang(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self.gone.set()
            raise

    def _message(self, body: dict[str, Any], tool: str | None, fault: Fault | None) -> dict[str, Any]:
        request_id = body["id"]
        if self.javascript_ids and isinstance(request_id, int | float) and not isinstance(request_id, bool):
            double = float(request_id)
            request_id = int(double) if double.is_integer() else double
        if fault is not None and fault.jsonrpc_error is not None:
            return {"jsonrpc": "2.0", "id": request_id, "error": {"code": fault.jsonrpc_error, "message": "injected"}}
        method = body["method"]
        if method == "tools/list":
            result: dict[str, Any] = {"tools": TOOLS}
        elif method == "tools/call":
            text = f"{tool} ok #{self.attempts[self.key(method, tool)]}"
            result = {"content": [{"type": "text", "text": text}], "isError": bool(fault and fault.tool_error)}
        else:
            result = {}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    async def _sse(
        self, request: web.Request, body: dict[str, Any], message: dict[str, Any], fault: Fault
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events = [
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": n}}
            for n in (1, 2, 3)
        ] + [message]
        if fault.asks_client:
            ask = {"jsonrpc": "2.0", "id": "server-1", "method": "roots/list"}
            await response.write(f"event: message\ndata: {json.dumps(ask)}\n\n".encode())
            if fault.delay or fault.gate is not None:  # answer later, as a server does once the client replied
                await asyncio.sleep(fault.delay)
                if fault.gate is not None:
                    await fault.gate.wait()
                await response.write(f"event: message\ndata: {json.dumps(message)}\n\n".encode())
                await response.write_eof()
                return response
            await self._hang()
        limit = 0 if fault.drop == "after_headers" else fault.sse_break_after
        for index, event in enumerate(events):
            if fault.sse_hang_after is not None and index >= fault.sse_hang_after:
                await self._hang()
            if fault.sse_end_after is not None and index >= fault.sse_end_after:
                break  # a clean end (the terminating chunk), the response never sent
            if limit is not None and index >= limit:
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(f"event: message\ndata: {json.dumps(event)}\n\n".encode())
        await response.write_eof()
        return response
