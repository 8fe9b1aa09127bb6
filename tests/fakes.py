"""Fakes for unit tests: calls and replies without a network, a clock that never sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from multidict import CIMultiDict

from proxy.mcp.annotations import ToolAnnotations
from proxy.config.model import UpstreamConfig
from proxy.config.resolve import PolicyResolver

from proxy.server.classify import CallRoute, ClientRequest, classify
from proxy.mcp.headers import upstream_headers
from proxy.mcp.jsonrpc import parse_message
from proxy.policies.base import Attempt, Call, Reply


def upstream_config(**fields: Any) -> UpstreamConfig:
    """An upstream config named "up" with `fields` (raw YAML-shaped values) validated like a file's."""
    return UpstreamConfig.model_validate({"name": "up", "url": "http://127.0.0.1:1/mcp", **fields})


def make_call(
    body: bytes = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
    upstream: UpstreamConfig | None = None,
    annotations: ToolAnnotations | None = None,
    owner: int | None = None,
    **headers: str,
) -> Call:
    """Classify `body` as the handler would, against `upstream`'s policies (defaults when None), as if it
    came on client connection `owner`."""
    incoming = CIMultiDict(headers)
    resolver = PolicyResolver(upstream or upstream_config())
    forwarded = upstream_headers(incoming.items())
    request = ClientRequest(parse_message(body), body, incoming, forwarded, "127.0.0.1", owner, 0.0)
    return classify(request, CallRoute("up", resolver, annotations))


def first(call: Call, deadline: float | None = None) -> Attempt:
    """`call`'s first attempt, as the pipeline makes it without a retry stage (what a stage inside the
    attempts takes)."""
    return Attempt(call, 1, deadline)


def tool_call(tool: str, request_id: int = 1, **arguments: Any) -> bytes:
    """The body of a tools/call request."""
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    )


def reply_ok(request_id: int = 1) -> Reply:
    return Reply(200, CIMultiDict({"Content-Type": "application/json"}), body=b"{}", message={"jsonrpc": "2.0", "id": request_id, "result": {}})


class FakeClock:
    """Monotonic time that moves only when told to, or when a policy sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def reply_status(status: int, body: bytes = b"", **headers: str) -> Reply:
    """A buffered HTTP answer with `status` (e.g. 503, or 429 with Retry-After)."""
    return Reply(status, CIMultiDict(headers), body=body)


def reply_error(code: int, request_id: int = 1, status: int = 200, message: str = "scripted") -> Reply:
    """A JSON-RPC error answer."""
    error = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return Reply(status, CIMultiDict({"Content-Type": "application/json"}), body=orjson.dumps(error), message=error)


def reply_json(message: Any, status: int = 200) -> Reply:
    """An answer whose body is `message` as JSON, whatever it is (a web framework's error page, say)."""
    return Reply(status, CIMultiDict({"Content-Type": "application/json"}), body=orjson.dumps(message), message=message)


def reply_result(result: dict[str, Any], request_id: int = 1, status: int = 200) -> Reply:
    """A successful JSON-RPC answer carrying `result`."""
    message = {"jsonrpc": "2.0", "id": request_id, "result": result}
    return Reply(status, CIMultiDict({"Content-Type": "application/json"}), body=orjson.dumps(message), message=message)


Outcome = Reply | BaseException


class FakeUpstream:
    """A terminal handler that plays back scripted outcomes (the last one repeats) and counts attempts.

    It is the transport (an `AttemptHandler`: it marks each `Attempt` written, as the transport does once
    the request reaches a socket) or, for a stage outside the attempts, the rest of the pipeline (a
    `CallHandler`). `calls` holds the call of each, `tries` each `Attempt` it was given. An outcome is a
    `Reply` to return or an exception to raise; `gate`, when set, is awaited before answering, so a
    test can hold calls in flight.
    """

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes: list[Outcome] = list(outcomes) or [reply_ok()]
        self.calls: list[Call] = []
        self.tries: list[Attempt] = []
        self.gate: asyncio.Event | None = None

    @property
    def attempts(self) -> int:
        return len(self.calls)

    async def __call__(self, asked: Call | Attempt) -> Reply:
        if isinstance(asked, Attempt):
            self.tries.append(asked)
            asked.written = True
            self.calls.append(asked.call)
        else:
            self.calls.append(asked)
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.outcomes[min(len(self.calls), len(self.outcomes)) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def echo(upstream: FakeUpstream) -> Callable[[Call | Attempt], Awaitable[Reply]]:
    """`upstream` answering with each call's own id, as a real server does (its headers kept)."""

    async def handler(asked: Call | Attempt) -> Reply:
        reply = await upstream(asked)
        if not isinstance(reply.message, dict):
            return reply
        call = asked.call if isinstance(asked, Attempt) else asked
        message = {**reply.message, "id": call.message.id}
        return Reply(reply.status, reply.headers, body=orjson.dumps(message), message=message)

    return handler


async def settle() -> None:
    """Let tasks started by the code under test run their next steps (a few loop turns, no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)
