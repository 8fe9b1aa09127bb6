"""An "everything" MCP server for tests: conformance fixtures plus tools the proxy tests use.

Built with the official Python SDK (``mcp`` 2.3, ``MCPServer``).  One Streamable HTTP
endpoint, ``/mcp``, serves both protocol eras; the SDK's session manager picks the era
per request from the ``MCP-Protocol-Version`` header:

* header absent or one of the handshake versions (2024-11-05 … 2025-11-25): the legacy,
  session-based transport (``initialize`` → ``Mcp-Session-Id``, GET stream, DELETE);
* any other value (2026-07-28, or an unknown one, which is rejected there): the modern
  stateless single-exchange transport (``server/discover``, per-request ``_meta``).

DNS-rebinding protection (``Host``/``Origin`` allow-lists) is left to the SDK, which turns
it on for loopback binds, because the conformance ``dns-rebinding-protection`` scenario
checks it.

What is exposed:

* The fixtures the ``@modelcontextprotocol/conformance`` server scenarios look for
  (``test_*`` tools, ``test://`` resources, ``test_*`` prompts, completion, logging level,
  resource subscriptions, SEP-2322 ``InputRequiredResult`` tools).
* For the proxy's own tests:

  - ``lookup`` (``readOnlyHint``/``idempotentHint``): deterministic key lookup;
  - ``slow`` (``seconds``): sleeps in 4 steps, one progress notification per step;
  - ``held`` (``key``): one progress notification, then waits until ``release`` (``key``) is
    called, then a second one and the answer: a test decides when the server goes on;
  - ``increment`` (not idempotent, not read-only): bumps and returns a counter;
  - ``ask_llm``: a ``sampling/createMessage`` round trip to the client;
  - ``confirm_action``: an ``elicitation/create`` round trip to the client;
  - ``emit_log``: sends a ``notifications/message`` log record;
  - ``call_counts`` (read-only): how often each tool ran on this server instance;
  - ``record`` (``key``; not idempotent): appends one line per execution to the file named by
    ``$MCP_TEST_EXECUTIONS_FILE``, so a test counts executions across a restart of the server;
  - ``touch_resource`` (``uri``): sends ``notifications/resources/updated`` to every legacy
    session that subscribed to ``uri`` (on each session's GET stream);
  - ``announce`` (``text``): sends a log record to the calling session outside the request
    (on its GET stream);
  - ``session_state`` (read-only): the calling legacy session's ``logging/setLevel`` level and
    subscribed URIs, as this server recorded them.

  ``ask_llm``/``confirm_action`` use the SDK's ``Resolve`` markers, so on the legacy wire
  they send a real server→client request mid-call, and on the 2026-07-28 wire they answer
  with ``resultType: "input_required"`` and finish when the client retries with
  ``inputResponses``.

Run it with ``python -m tests.servers.everything --host 127.0.0.1 --port 8931``, or build
the ASGI app in-process with :func:`build_app` (one fresh server per call).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from mcp.server import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import (
    Context,
    MCPServer,
    RequestStateSecurity,
    Resolve,
    Sample,
)
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.server.mcpserver.resolve import Elicit
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    CallToolResult,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    ToolAnnotations,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field
from starlette.applications import Starlette
from starlette.requests import Request

__all__ = [
    "DEFAULT_PATH",
    "EXECUTIONS_ENV",
    "SERVER_NAME",
    "build_app",
    "build_server",
    "main",
]

logger = logging.getLogger(__name__)

SERVER_NAME = "proxy-test-everything-server"
"""``serverInfo.name`` the server announces."""

DEFAULT_PATH = "/mcp"
"""The one endpoint both eras are served on."""

LOOKUP_TABLE: dict[str, str] = {"alpha": "1", "beta": "2", "gamma": "3"}
"""Data behind the read-only ``lookup`` tool."""

SLOW_STEPS = 4
"""Number of progress notifications the ``slow`` tool sends."""

EXECUTIONS_ENV = "MCP_TEST_EXECUTIONS_FILE"
"""The environment variable naming the file ``record`` appends to: one JSON line per execution,
``{"key": ..., "pid": ...}``. A file, not memory, so the count survives a restart of the server."""

ANNOUNCE_LOGGER = "announce"
"""The ``logger`` of the log record ``announce`` sends."""

# A fixed key keeps requestState tokens valid across restarts of the fixture (the SDK
# requires >= 32 bytes); a real deployment would load a secret.
_REQUEST_STATE_KEY = b"proxy-tests-everything-server-request-state-key!"


# --------------------------------------------------------------------------------------
# Small binary fixtures, generated rather than pasted.
# --------------------------------------------------------------------------------------


def _png_1x1() -> bytes:
    """A valid 1x1 opaque red PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # width, height, depth 8, RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte + one RGB pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence(samples: int = 8, rate: int = 8000) -> bytes:
    """A valid mono 16-bit PCM WAV holding ``samples`` samples of silence."""
    data = b"\x00\x00" * samples
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


PNG_BYTES = _png_1x1()
PNG_BASE64 = base64.b64encode(PNG_BYTES).decode("ascii")
WAV_BASE64 = base64.b64encode(_wav_silence()).decode("ascii")


# --------------------------------------------------------------------------------------
# Resumability: an in-memory event store (legacy SSE streams, SEP-1699 polling).
# --------------------------------------------------------------------------------------


class MemoryEventStore(EventStore):
    """A bounded in-memory :class:`EventStore`; event ids are a global counter."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: collections.deque[tuple[str, int, JSONRPCMessage | None]] = collections.deque(
            maxlen=max_events
        )
        self._next_id = 0

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        """Record ``message`` (``None`` for a priming event) on ``stream_id``; return its event id."""
        self._next_id += 1
        self._events.append((stream_id, self._next_id, message))
        return str(self._next_id)

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        """Send every stored message after ``last_event_id`` on the same stream; return that stream."""
        try:
            last = int(last_event_id)
        except ValueError:
            return None
        stream = next((s for s, eid, _ in self._events if eid == last), None)
        if stream is None:
            return None
        for s, eid, message in list(self._events):
            if s == stream and eid > last and message is not None:
                await send_callback(EventMessage(message, str(eid)))
        return stream


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


@dataclass
class _SessionState:
    """What one legacy session set on this server: its log level and its subscriptions."""

    session: ServerSession
    """The session object of the session's latest such request: its standalone channel reaches the
    session's GET stream, which is where ``touch_resource`` sends the updates."""
    log_level: str | None = None
    subscriptions: set[str] = field(default_factory=set)


@dataclass
class _State:
    """Mutable per-server state (one instance per :func:`build_server` call)."""

    counter: int = 0
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    subscriptions: set[str] = field(default_factory=set)
    log_level: str = "debug"
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    """Keyed gates for ``held``/``release``: created by whichever of the two comes first."""
    sessions: dict[str, _SessionState] = field(default_factory=dict)
    """Per legacy session (by its ``Mcp-Session-Id``), what it set; only sessions that set something."""

    def gate(self, key: str) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    def session_state(self, ctx: ServerRequestContext) -> _SessionState | None:
        """The calling legacy session's entry (made on first use, holding its latest session object);
        None for a request outside a legacy session (2026-07-28, in-process)."""
        session_id = _session_id(ctx.request)
        if session_id is None:
            return None
        entry = self.sessions.get(session_id)
        if entry is None:
            entry = self.sessions[session_id] = _SessionState(ctx.session)
        entry.session = ctx.session
        return entry


def _session_id(request: object) -> str | None:
    """The ``Mcp-Session-Id`` a request over HTTP carried, if any."""
    return request.headers.get("mcp-session-id") if isinstance(request, Request) else None


async def _log(ctx: Context, level: Literal["debug", "info", "warning", "error"], message: str) -> None:
    """Send a log notification, silencing the SDK's 2026-07-28 logging deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await ctx.log(level, message)  # pyright: ignore[reportDeprecated]


def _form(message: str, properties: dict[str, Any], required: Sequence[str]) -> ElicitRequest:
    """A form-mode ``elicitation/create`` request for an ``InputRequiredResult``."""
    schema = {"type": "object", "properties": properties, "required": list(required)}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _ask_name(message: str = "What is your name?") -> ElicitRequest:
    return _form(message, {"name": {"type": "string"}}, ["name"])


def _sampling(text: str, max_tokens: int) -> CreateMessageRequest:
    return CreateMessageRequest(
        params=CreateMessageRequestParams(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=text))],
            max_tokens=max_tokens,
        )
    )


def _elicited(answer: object, key: str) -> Any:
    """Field ``key`` of an accepted ``ElicitResult``, else ``None``."""
    if isinstance(answer, ElicitResult) and answer.content:
        return answer.content.get(key)
    return None


# --------------------------------------------------------------------------------------
# Schemas for elicitation (legacy era, server -> client request mid-call)
# --------------------------------------------------------------------------------------


class UserReply(BaseModel):
    """Free-text reply for ``test_elicitation``."""

    response: str = Field(description="The user's response")


class Confirmation(BaseModel):
    """Yes/no answer for ``confirm_action``."""

    confirm: bool = Field(description="Go ahead?")


class DefaultsForm(BaseModel):
    """SEP-1034: every primitive type with a default."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active", description="User status", json_schema_extra={"enum": ["active", "inactive", "pending"]}
    )
    verified: bool = Field(default=True, description="Verification status")


class EnumForm(BaseModel):
    """SEP-1330: the enum schema variants."""

    untitledSingle: str = Field(
        description="Single select, untitled", json_schema_extra={"enum": ["active", "inactive", "pending"]}
    )
    titledSingle: str = Field(
        description="Single select, titled",
        json_schema_extra={
            "oneOf": [
                {"const": "low", "title": "Low Priority"},
                {"const": "medium", "title": "Medium Priority"},
                {"const": "high", "title": "High Priority"},
            ]
        },
    )
    untitledMulti: list[str] = Field(
        description="Multi select, untitled",
        json_schema_extra={"items": {"type": "string", "enum": ["read", "write", "execute"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi select, titled",
        json_schema_extra={
            "items": {
                "anyOf": [
                    {"const": "feature", "title": "New Feature"},
                    {"const": "bug", "title": "Bug Fix"},
                    {"const": "docs", "title": "Documentation"},
                ]
            }
        },
    )
    legacyEnum: str = Field(
        description="Legacy enum with enumNames",
        json_schema_extra={"enum": ["small", "medium", "large"], "enumNames": ["Small Size", "Medium Size", "Large Size"]},
    )


JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}
"""Input schema of ``json_schema_2020_12_tool`` (conformance ``json-schema-2020-12``)."""


# --------------------------------------------------------------------------------------
# Resolvers for the era-independent round-trip tools
# --------------------------------------------------------------------------------------


def _sample_answer(question: str) -> Sample:
    """Resolver: ask the client's LLM ``question``."""
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=question))], max_tokens=100)


def _ask_confirmation(action: str) -> Elicit[Confirmation]:
    """Resolver: ask the user to confirm ``action``."""
    return Elicit(f"Really {action}?", Confirmation)


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


def build_server(
    *,
    cache_ttl_ms: int = 0,
    cache_scope: Literal["public", "private"] = "private",
    log_level: LogLevel = "WARNING",
) -> MCPServer:
    """Build a fresh everything server (tools, resources, prompts, handlers, state).

    ``cache_ttl_ms``/``cache_scope`` set the SEP-2549 caching hints the server puts on
    ``tools/list``, ``prompts/list``, ``resources/list``, ``resources/templates/list`` and
    ``resources/read`` results (seen on the 2026-07-28 wire only). ``log_level`` is handed
    to ``MCPServer``, which calls ``logging.basicConfig`` with it (a no-op if the root
    logger already has handlers); the SDK logs every session at INFO.
    """
    hint = CacheHint(ttl_ms=cache_ttl_ms, scope=cache_scope)
    server: MCPServer = MCPServer(
        name=SERVER_NAME,
        version="1.0.0",
        log_level=log_level,
        request_state_security=RequestStateSecurity(keys=[_REQUEST_STATE_KEY]),
        cache_hints={
            "tools/list": hint,
            "prompts/list": hint,
            "resources/list": hint,
            "resources/templates/list": hint,
            "resources/read": hint,
        },
    )
    state = _State()
    _add_conformance_tools(server, state)
    _add_input_required_tools(server)
    _add_proxy_test_tools(server, state)
    _add_resources(server)
    _add_prompts(server)
    _add_handlers(server, state)
    return server


def _add_conformance_tools(server: MCPServer, state: _State) -> None:
    """Tools named by the conformance server scenarios (``tools-*``, ``elicitation-*``…)."""

    @server.tool()
    def test_simple_text() -> str:
        """Returns a single text block."""
        return "This is a simple text response for testing."

    @server.tool()
    def test_image_content() -> list[ImageContent]:
        """Returns a single PNG image block."""
        return [ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")]

    @server.tool()
    def test_audio_content() -> list[AudioContent]:
        """Returns a single WAV audio block."""
        return [AudioContent(type="audio", data=WAV_BASE64, mime_type="audio/wav")]

    @server.tool()
    def test_embedded_resource() -> list[EmbeddedResource]:
        """Returns an embedded text resource."""
        return [
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
                ),
            )
        ]

    @server.tool()
    def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
        """Returns text, image and embedded resource blocks together."""
        return [
            TextContent(type="text", text="Multiple content types test:"),
            ImageContent(type="image", data=PNG_BASE64, mime_type="image/png"),
            EmbeddedResource(
                type="resource",
                resource=TextResourceContents(
                    uri="test://mixed-content-resource",
                    mime_type="application/json",
                    text=json.dumps({"test": "data", "value": 123}),
                ),
            ),
        ]

    @server.tool()
    async def test_tool_with_logging(ctx: Context) -> str:
        """Sends three info log notifications ~50 ms apart."""
        await _log(ctx, "info", "Tool execution started")
        await asyncio.sleep(0.05)
        await _log(ctx, "info", "Tool processing data")
        await asyncio.sleep(0.05)
        await _log(ctx, "info", "Tool execution completed")
        return "Tool with logging executed successfully"

    @server.tool()
    async def test_tool_with_progress(ctx: Context) -> str:
        """Sends progress 0, 50, 100 of 100, then returns the progress token."""
        for step in (0, 50, 100):
            await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
            if step < 100:
                await asyncio.sleep(0.05)
        meta = ctx.request_context.meta
        return str(meta.get("progress_token") if meta else 0)

    @server.tool()
    async def test_sampling(prompt: str, ctx: Context) -> str:
        """Legacy era: asks the client to sample ``prompt`` and returns the answer."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                result = await ctx.session.create_message(  # pyright: ignore[reportDeprecated]
                    messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
                    max_tokens=100,
                    related_request_id=ctx.request_id,  # rides the call's own stream, not the GET stream
                )
        except Exception as exc:  # noqa: BLE001 - reported to the caller as text
            return f"Sampling not supported or error: {exc}"
        text = result.content.text if result.content.type == "text" else "No response"
        return f"LLM response: {text}"

    @server.tool()
    async def test_elicitation(message: str, ctx: Context) -> str:
        """Legacy era: asks the user ``message`` via form elicitation."""
        try:
            result = await ctx.elicit(message=message, schema=UserReply)
        except Exception as exc:  # noqa: BLE001
            return f"Elicitation not supported or error: {exc}"
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"User response: action={result.action}, content={content}"

    @server.tool()
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        """Elicitation whose schema gives every primitive field a default (SEP-1034)."""
        try:
            result = await ctx.elicit(message="Please provide user information", schema=DefaultsForm)
        except Exception as exc:  # noqa: BLE001
            return f"Elicitation not supported or error: {exc}"
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"Elicitation result: action={result.action}, content={content}"

    @server.tool()
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        """Elicitation using every enum schema variant (SEP-1330)."""
        try:
            result = await ctx.elicit(message="Please select values using different enum schema types", schema=EnumForm)
        except Exception as exc:  # noqa: BLE001
            return f"Elicitation not supported or error: {exc}"
        content = result.data.model_dump_json() if result.action == "accept" else "{}"
        return f"Elicitation completed: action={result.action}, content={content}"

    @server.tool()
    def test_error_handling() -> str:
        """Always fails: the result comes back with ``isError: true``."""
        raise RuntimeError("This tool intentionally returns an error for testing")

    @server.tool()
    def test_x_mcp_header(
        region: Annotated[
            str, Field(description="Mirrored into the Mcp-Param-Region header", json_schema_extra={"x-mcp-header": "Region"})
        ] = "<none>",
    ) -> str:
        """SEP-2243: an argument mirrored into an ``Mcp-Param-Region`` header."""
        return f"region={region}"

    @server.tool()
    async def test_missing_capability(ctx: Context) -> str:
        """Fails with a JSON-RPC error (-32003-style) unless the client declared ``sampling``."""
        caps = ctx.client_capabilities
        if caps is None or caps.sampling is None:
            raise MCPError(
                code=MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="This tool requires the client 'sampling' capability",
                data={"requiredCapabilities": {"sampling": {}}},
            )
        return "Client declared sampling capability; proceeding."

    @server.tool(name="json_schema_2020_12_tool")
    def json_schema_2020_12_tool() -> str:
        """Advertises a JSON Schema 2020-12 input schema (keywords must survive tools/list)."""
        return "json_schema_2020_12_tool"

    # MCPServer has no public input-schema override yet; replace the derived schema.
    server._tool_manager._tools["json_schema_2020_12_tool"].parameters = JSON_SCHEMA_2020_12  # pyright: ignore[reportPrivateUsage]

    @server.tool()
    async def test_reconnection(ctx: Context) -> str:
        """SEP-1699: closes the call's SSE stream mid-call; the client resumes with Last-Event-ID."""
        await _log(ctx, "info", "Before disconnect")
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)
        await _log(ctx, "info", "After reconnect")
        return "Reconnection test completed"

    def dynamic() -> str:
        """Registered and removed again by the *_change triggers."""
        return "dynamic"

    @server.tool()
    async def test_trigger_tool_change(ctx: Context) -> str:
        """Changes the tool list and announces it (SEP-2575 subscriptions/listen)."""
        server.add_tool(dynamic, name="test_dynamic_tool")
        server.remove_tool("test_dynamic_tool")
        await ctx.notify_tools_changed()
        return "tool list changed"

    @server.tool()
    async def test_trigger_prompt_change(ctx: Context) -> str:
        """Changes the prompt list and announces it (SEP-2575 subscriptions/listen)."""
        server.add_prompt(Prompt.from_function(dynamic, name="test_dynamic_prompt", description="dynamic"))
        server.remove_prompt("test_dynamic_prompt")
        await ctx.notify_prompts_changed()
        return "prompt list changed"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    async def test_watched_resource_update(ctx: Context) -> str:
        """Announces an update of ``test://watched-resource`` to subscribers."""
        await ctx.notify_resource_updated("test://watched-resource")
        return f"notified {len(state.subscriptions)} subscription(s)"


def _add_input_required_tools(server: MCPServer) -> None:
    """SEP-2322 fixtures: tools answering ``InputRequiredResult`` (2026-07-28 multi round trip)."""

    @server.tool()
    async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
        """One elicitation, then a greeting."""
        responses = ctx.input_responses or {}
        if "user_name" in responses:
            return f"Hello, {_elicited(responses['user_name'], 'name') or 'stranger'}!"
        return InputRequiredResult(input_requests={"user_name": _ask_name()})

    @server.tool()
    async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
        """One sampling request, then the model's text."""
        responses = ctx.input_responses or {}
        answer = responses.get("capital_question")
        if answer is not None:
            ok = isinstance(answer, CreateMessageResult) and answer.content.type == "text"
            return f"Model said: {answer.content.text if ok else '?'}"  # type: ignore[union-attr]
        return InputRequiredResult(input_requests={"capital_question": _sampling("What is the capital of France?", 100)})

    @server.tool()
    async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
        """One roots/list request, then the root count."""
        responses = ctx.input_responses or {}
        if "client_roots" in responses:
            answer = responses["client_roots"]
            return f"Client exposed {len(answer.roots) if isinstance(answer, ListRootsResult) else 0} root(s)."
        return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})

    @server.tool()
    async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
        """``requestState`` must come back unchanged with the answer."""
        if "confirm" in (ctx.input_responses or {}) and ctx.request_state == "request-state-nonce":
            return "state-ok: confirmation received"
        return InputRequiredResult(
            input_requests={"confirm": _form("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])},
            request_state="request-state-nonce",
        )

    @server.tool()
    async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
        """Elicitation, sampling and roots requested in one result."""
        if {"user_name", "greeting", "client_roots"} <= (ctx.input_responses or {}).keys():
            return "All inputs received."
        return InputRequiredResult(
            input_requests={
                "user_name": _ask_name(),
                "greeting": _sampling("Generate a greeting", 50),
                "client_roots": ListRootsRequest(),
            },
            request_state="multiple-inputs",
        )

    @server.tool()
    async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
        """Three rounds; ``requestState`` carries the round number and earlier answers."""
        round_state: dict[str, Any] = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
        responses = ctx.input_responses or {}
        if round_state.get("round") == 1 and "step1" in responses:
            color = _form("Step 2: What is your favorite color?", {"color": {"type": "string"}}, ["color"])
            return InputRequiredResult(
                input_requests={"step2": color},
                request_state=json.dumps({"round": 2, "name": _elicited(responses["step1"], "name")}),
            )
        if round_state.get("round") == 2 and "step2" in responses:
            return f"{round_state.get('name')} likes {_elicited(responses['step2'], 'color')}."
        # First round, or an answer missing / out of order: (re)start.
        return InputRequiredResult(
            input_requests={"step1": _ask_name("Step 1: What is your name?")}, request_state=json.dumps({"round": 1})
        )

    @server.tool()
    async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
        """The SDK's sealed ``requestState`` makes a tampered echo fail before this runs."""
        if ctx.request_state is None:
            return InputRequiredResult(
                input_requests={"confirm": _form("Please confirm", {"ok": {"type": "boolean"}}, ["ok"])},
                request_state="round-1",
            )
        return f"state-ok: {ctx.request_state}"

    @server.tool()
    async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
        """Only requests kinds of input the client declared capabilities for."""
        caps = ctx.client_capabilities
        requests: dict[str, InputRequest] = {}
        if caps is None or caps.sampling is not None:
            requests["sample"] = _sampling("Say hello", 50)
        if caps is None or caps.elicitation is not None:
            requests["ask"] = _ask_name()
        return InputRequiredResult(input_requests=requests, request_state="capability-gated")


def _add_proxy_test_tools(server: MCPServer, state: _State) -> None:
    """Tools the proxy's own tests rely on (see the module docstring)."""

    def count(name: str) -> None:
        state.calls[name] += 1

    @server.tool(
        title="Lookup",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    def lookup(key: str) -> str:
        """Look ``key`` up in a fixed table (alpha, beta, gamma); read-only and idempotent."""
        count("lookup")
        return LOOKUP_TABLE.get(key, "not found")

    @server.tool(
        title="Slow",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def slow(seconds: float, ctx: Context) -> CallToolResult:
        """Sleep ``seconds`` in 4 equal steps, sending a progress notification after each."""
        count("slow")
        for step in range(1, SLOW_STEPS + 1):
            await asyncio.sleep(max(seconds, 0.0) / SLOW_STEPS)
            await ctx.report_progress(progress=step, total=SLOW_STEPS, message=f"step {step}")
        return CallToolResult(
            content=[TextContent(type="text", text=f"slept {seconds}")],
            structured_content={"slept": seconds, "steps": SLOW_STEPS},
        )

    @server.tool(
        title="Held",
        annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False),
    )
    async def held(key: str, ctx: Context) -> str:
        """Send progress 1 of 2, wait until ``release(key)`` is called, send progress 2, then answer."""
        count("held")
        await ctx.report_progress(progress=1, total=2, message="held")
        await state.gate(key).wait()
        await ctx.report_progress(progress=2, total=2, message="released")
        return f"released {key}"

    @server.tool(
        title="Release",
        annotations=ToolAnnotations(read_only_hint=False, idempotent_hint=True, open_world_hint=False),
    )
    async def release(key: str) -> str:
        """Let the ``held`` call(s) waiting on ``key`` go on (and any that come later)."""
        count("release")
        state.gate(key).set()
        return f"released {key}"

    @server.tool(
        title="Increment",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )
    def increment(by: int = 1) -> int:
        """Add ``by`` to this server's counter and return the new value (NOT idempotent)."""
        count("increment")
        state.counter += by
        return state.counter

    @server.tool(title="Call counts", annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    def call_counts() -> dict[str, int]:
        """How many times each proxy-test tool ran on this server instance."""
        return dict(state.calls)

    @server.tool(
        title="Record",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )
    def record(key: str) -> str:
        """Record one execution under ``key`` (a line in ``$MCP_TEST_EXECUTIONS_FILE``); NOT idempotent."""
        count("record")
        path = os.environ.get(EXECUTIONS_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as executions:
                executions.write(json.dumps({"key": key, "pid": os.getpid()}) + "\n")
        return f"recorded {key}"

    @server.tool(
        title="Touch resource",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )
    async def touch_resource(uri: str) -> str:
        """Tell every legacy session subscribed to ``uri`` that it changed (``notifications/resources/updated``
        on the session's GET stream); answers how many sessions were told."""
        count("touch_resource")
        told = 0
        for entry in list(state.sessions.values()):
            if uri in entry.subscriptions:
                await entry.session.send_resource_updated(uri)
                told += 1
        return f"notified {told} session(s)"

    @server.tool(
        title="Announce",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )
    async def announce(text: str, ctx: Context) -> str:
        """Send ``text`` as an info log record (logger ``announce``) to the calling session, outside
        this request: on the legacy wire it rides the session's GET stream."""
        count("announce")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await ctx.session.send_log_message(level="info", data=text, logger=ANNOUNCE_LOGGER)  # pyright: ignore[reportDeprecated]
        return f"announced {text}"

    @server.tool(title="Session state", annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    def session_state(ctx: Context) -> dict[str, Any]:
        """The calling legacy session's log level (None: never set) and subscribed URIs, as recorded here."""
        count("session_state")
        entry = state.sessions.get(_session_id(ctx.request_context.request) or "")
        if entry is None:
            return {"log_level": None, "subscriptions": []}
        return {"log_level": entry.log_level, "subscriptions": sorted(entry.subscriptions)}

    @server.tool(title="Ask LLM", annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True))
    def ask_llm(question: str, answer: Annotated[CreateMessageResult, Resolve(_sample_answer)]) -> str:
        """Sample the client's LLM with ``question`` and return its text (needs client ``sampling``)."""
        count("ask_llm")
        text = answer.content.text if answer.content.type == "text" else f"<{answer.content.type}>"
        return f"LLM says: {text}"

    @server.tool(title="Confirm action", annotations=ToolAnnotations(read_only_hint=True))
    def confirm_action(action: str, reply: Annotated[Confirmation, Resolve(_ask_confirmation)]) -> str:
        """Ask the user (form elicitation) to confirm ``action`` (needs client ``elicitation``)."""
        count("confirm_action")
        return f"{action}: {'confirmed' if reply.confirm else 'refused'}"

    @server.tool(title="Emit log", annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True))
    async def emit_log(
        message: str, ctx: Context, level: Literal["debug", "info", "warning", "error"] = "info"
    ) -> str:
        """Send ``message`` as a ``notifications/message`` log record, then return."""
        count("emit_log")
        await _log(ctx, level, message)
        return f"logged {level}: {message}"


def _add_resources(server: MCPServer) -> None:
    """Resources named by the ``resources-*`` scenarios."""

    @server.resource("test://static-text", mime_type="text/plain")
    def static_text() -> str:
        """A static text resource."""
        return "This is the content of the static text resource."

    @server.resource("test://static-binary", mime_type="image/png")
    def static_binary() -> bytes:
        """A static binary resource (a PNG)."""
        return PNG_BYTES

    @server.resource("test://template/{id}/data", mime_type="application/json")
    def template_data(id: str) -> str:
        """A templated resource: JSON naming the ``id`` it was read with."""
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @server.resource("test://watched-resource", mime_type="text/plain")
    def watched() -> str:
        """A resource clients can subscribe to."""
        return "Watched resource content"


def _add_prompts(server: MCPServer) -> None:
    """Prompts named by the ``prompts-*`` and ``input-required-result-non-tool-request`` scenarios."""

    @server.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A prompt without arguments."""
        return [UserMessage(role="user", content=TextContent(type="text", text="This is a simple prompt for testing."))]

    @server.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt with two required arguments."""
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return [UserMessage(role="user", content=TextContent(type="text", text=text))]

    @server.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        """A prompt embedding the resource ``resourceUri``."""
        resource = TextResourceContents(
            uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
        )
        return [
            UserMessage(role="user", content=EmbeddedResource(type="resource", resource=resource)),
            UserMessage(role="user", content=TextContent(type="text", text="Please process the embedded resource above.")),
        ]

    @server.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt carrying an image."""
        return [
            UserMessage(role="user", content=ImageContent(type="image", data=PNG_BASE64, mime_type="image/png")),
            UserMessage(role="user", content=TextContent(type="text", text="Please analyze the image above.")),
        ]

    @server.prompt()
    async def test_input_required_result_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
        """``prompts/get`` answering ``InputRequiredResult`` (SEP-2322 on a non-tool request)."""
        responses = ctx.input_responses or {}
        if "user_context" in responses:
            text = _elicited(responses["user_context"], "context") or "?"
            return [UserMessage(role="user", content=TextContent(type="text", text=f"Use the following context: {text}"))]
        question = _form("What context should the prompt use?", {"context": {"type": "string"}}, ["context"])
        return InputRequiredResult(input_requests={"user_context": question})


def _add_handlers(server: MCPServer, state: _State) -> None:
    """Completion, ``logging/setLevel`` and resource (un)subscribe handlers."""

    @server.completion()  # type: ignore[untyped-decorator, no-untyped-call]
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        """Complete ``test_prompt_with_arguments`` arguments from a fixed list; nothing else."""
        if isinstance(ref, PromptReference) and ref.name == "test_prompt_with_arguments":
            values = [v for v in ("paris", "perth", "prague") if v.startswith(argument.value)]
            return Completion(values=values, total=len(values), has_more=False)
        return Completion(values=[], total=0, has_more=False)

    async def set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
        state.log_level = params.level
        if (entry := state.session_state(ctx)) is not None:
            entry.log_level = params.level
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
        state.subscriptions.add(str(params.uri))
        if (entry := state.session_state(ctx)) is not None:
            entry.subscriptions.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
        state.subscriptions.discard(str(params.uri))
        if (entry := state.session_state(ctx)) is not None:
            entry.subscriptions.discard(str(params.uri))
        return EmptyResult()

    # MCPServer has no public hooks for these three yet; register on the low-level server.
    lowlevel = server._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


def build_app(
    host: str = "127.0.0.1",
    *,
    path: str = DEFAULT_PATH,
    json_response: bool = False,
    resumable: bool = True,
    retry_interval_ms: int | None = 100,
    cache_ttl_ms: int = 0,
    cache_scope: Literal["public", "private"] = "private",
    log_level: LogLevel = "WARNING",
) -> Starlette:
    """Build the Starlette ASGI app for a fresh server; serve it with uvicorn.

    ``host`` must be the address the app is bound to: for ``127.0.0.1``/``localhost``/``::1``
    the SDK enables Host/Origin validation (DNS-rebinding protection) for loopback names.
    ``json_response`` makes legacy POSTs (and modern ones) answer ``application/json``
    instead of SSE. ``resumable`` attaches an in-memory event store, so legacy SSE
    streams carry event ids (and a priming event with ``retry: retry_interval_ms``) and
    can be resumed with ``Last-Event-ID``. The app's lifespan runs the session manager,
    so run it under a server that sends ASGI lifespan events (uvicorn does).
    """
    server = build_server(cache_ttl_ms=cache_ttl_ms, cache_scope=cache_scope, log_level=log_level)
    return server.streamable_http_app(
        streamable_http_path=path,
        json_response=json_response,
        event_store=MemoryEventStore() if resumable else None,
        retry_interval=retry_interval_ms if resumable else None,
        host=host,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m tests.servers.everything --host 127.0.0.1 --port N``."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m tests.servers.everything", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8931, help="TCP port (default 8931)")
    parser.add_argument("--path", default=DEFAULT_PATH, help="endpoint path (default /mcp)")
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON instead of SSE")
    parser.add_argument("--no-resume", action="store_true", help="no event store (no SSE event ids / resumption)")
    parser.add_argument("--cache-ttl-ms", type=int, default=0, help="ttlMs on cacheable results (default 0)")
    parser.add_argument("--cache-scope", choices=("public", "private"), default="private")
    parser.add_argument(
        "--log-level",
        default="warning",
        type=str.lower,
        choices=("debug", "info", "warning", "error", "critical"),
        help="uvicorn/logging level (default warning)",
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = build_app(
        args.host,
        path=args.path,
        json_response=args.json_response,
        resumable=not args.no_resume,
        cache_ttl_ms=args.cache_ttl_ms,
        cache_scope=args.cache_scope,
        log_level=args.log_level.upper(),
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
