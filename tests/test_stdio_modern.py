"""`proxy.upstream.stdio.modern`: a legacy stdio child served to 2026-07-28 clients as the SDK 2.3 server would.

Two halves: exact expected answers for each rule, and a differential run against the real thing: the
everything server (`tests.servers.everything`) over HTTP, answering modern requests itself, next to the
same server as a legacy stdio child behind our functions (`check`, `to_child`, `from_child`, `discover`,
the listen helpers). Where the two legitimately differ, the test says so and pins the difference.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import uvicorn
from multidict import CIMultiDict

from proxy.upstream.stdio.modern import (
    LEGACY_ONLY_METHODS,
    MODERN_METHODS_FORWARDED,
    MODERN_METHODS_LOCAL,
    NOT_ALLOWED,
    ListenFilter,
    Refusal,
    acknowledgement,
    check,
    discover,
    from_child,
    listen_end,
    listen_event,
    listen_filter,
    refuse_http_method,
    status_of,
    to_child,
    wants,
)
from tests.servers.everything import build_server

REPO = Path(__file__).resolve().parent.parent
V = "2026-07-28"
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": V,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "c", "version": "1"},
}
ACCEPT = "application/json, text/event-stream"
INFO = {"name": "child", "version": "1.0.0"}


def request(
    request_id: Any, method: str, params: dict[str, Any] | None = None, *, envelope: bool = True
) -> dict[str, Any]:
    body = dict(params or {})
    if envelope:
        body["_meta"] = {**body.get("_meta", {}), **ENVELOPE}
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": body}


def headers(method: str | None, name: str | None = None, *, version: str | None = V, **extra: str) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json", "Accept": ACCEPT})
    if version is not None:
        out["MCP-Protocol-Version"] = version
    if method is not None:
        out["Mcp-Method"] = method
    if name is not None:
        out["Mcp-Name"] = name
    for key, value in extra.items():
        out[key.replace("_", "-")] = value
    return out


def error(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": body}


# --------------------------------------------------------------------------------------
# check: exact answers
# --------------------------------------------------------------------------------------


def test_a_well_formed_request_passes() -> None:
    assert check(headers("tools/list"), request(1, "tools/list")) is None
    call = request(2, "tools/call", {"name": "echo", "arguments": {}})
    assert check(headers("tools/call", "echo"), call) is None


def test_header_names_are_matched_without_case() -> None:
    plain = {"accept": ACCEPT, "mcp-protocol-version": V, "MCP-METHOD": "tools/list"}
    assert check(plain, request(1, "tools/list")) is None


def test_headers_that_disagree_with_the_body_are_32020() -> None:
    assert check(headers("prompts/list"), request(1, "tools/list")) == Refusal(
        400, error(1, -32020, "mcp-method header does not match the request body's method")
    )
    assert check(headers(None), request(2, "tools/list")) == Refusal(
        400, error(2, -32020, "mcp-method header does not match the request body's method")
    )
    call = request(3, "tools/call", {"name": "echo"})
    for name in ("other", None):
        assert check(headers("tools/call", name), call) == Refusal(
            400, error(3, -32020, "mcp-name header does not match the request body's 'name' parameter")
        )
    read = request(4, "resources/read", {"uri": "test://a"})
    assert check(headers("resources/read", "test://b"), read) == Refusal(
        400, error(4, -32020, "mcp-name header does not match the request body's 'uri' parameter")
    )
    mismatch = "mcp-protocol-version header does not match the request envelope's protocol version"
    assert check(headers("tools/list", version="2027-01-01"), request(5, "tools/list")) == Refusal(
        400, error(5, -32020, mismatch)
    )
    assert check(headers("tools/list", version=None), request(6, "tools/list")) == Refusal(
        400, error(6, -32020, mismatch)
    )


def test_a_base64_name_header_is_decoded_before_comparing() -> None:
    call = request(1, "tools/call", {"name": "héllo"})
    assert check(headers("tools/call", "=?base64?aMOpbGxv?="), call) is None
    assert check(headers("tools/call", "=?base64?not base64?="), call) == Refusal(
        400, error(1, -32020, "mcp-name header does not match the request body's 'name' parameter")
    )


def test_a_routing_header_given_twice_is_32020() -> None:
    twice = headers("tools/list")
    twice.add("Mcp-Method", "tools/list")
    assert check(twice, request(1, "tools/list")) == Refusal(
        400, error(1, -32020, "mcp-method header appears more than once")
    )


def test_a_missing_envelope_is_32602_before_the_headers_are_looked_at() -> None:
    no_meta = (
        "params._meta must be an object carrying the required 'io.modelcontextprotocol/protocolVersion' and "
        "'io.modelcontextprotocol/clientCapabilities' envelope keys"
    )
    assert check(headers(None), request(1, "tools/list", envelope=False)) == Refusal(400, error(1, -32602, no_meta))
    bare = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    assert check(headers("tools/list"), bare) == Refusal(400, error(2, -32602, no_meta))
    partial = request(3, "tools/list")
    del partial["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    assert check(headers("tools/list"), partial) == Refusal(
        400,
        error(
            3,
            -32602,
            "params._meta is missing the required envelope key(s): io.modelcontextprotocol/clientCapabilities",
        ),
    )
    no_info = request(4, "tools/list")
    del no_info["params"]["_meta"]["io.modelcontextprotocol/clientInfo"]
    assert check(headers("tools/list"), no_info) is None  # clientInfo is optional


def test_an_unsupported_version_is_32022_naming_the_supported_ones() -> None:
    message = request(1, "tools/list")
    message["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2027-01-01"
    assert check(headers("tools/list", version="2027-01-01"), message) == Refusal(
        400,
        error(1, -32022, "Unsupported protocol version", {"supported": ["2026-07-28"], "requested": "2027-01-01"}),
    )


def test_methods_the_modern_era_removed_are_404() -> None:
    for method in sorted(LEGACY_ONLY_METHODS):
        assert check(headers(method), request(7, method)) == Refusal(404, error(7, -32601, "Method not found", method))


def test_unknown_methods_are_forwarded_for_the_child_to_answer() -> None:
    assert check(headers("custom/thing"), request(1, "custom/thing")) is None


def test_notifications_are_acknowledged_and_dropped() -> None:
    cancelled = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
    assert check(headers("notifications/cancelled"), cancelled) == Refusal(202, None)
    assert check(headers(None, version="2027-01-01"), cancelled) == Refusal(
        400,
        error(None, -32022, "Unsupported protocol version", {"supported": ["2026-07-28"], "requested": "2027-01-01"}),
    )
    no_version = check(headers(None, version=None), cancelled)  # no version header: "" is not served
    assert no_version is not None and no_version.status == 400


def test_posted_responses_and_bad_envelopes_are_32600_without_an_id() -> None:
    refusal = Refusal(400, error(None, -32600, "Body must be a single JSON-RPC request or notification object"))
    assert check(headers(None), {"jsonrpc": "2.0", "id": 5, "result": {}}) == refusal
    assert check(headers("tools/list"), {**request(1, "tools/list"), "jsonrpc": "1.0"}) == refusal
    assert check(headers("tools/list"), {**request(True, "tools/list")}) == refusal
    assert check(headers("tools/list"), {**request(1.5, "tools/list")}) == refusal
    assert check(headers("x"), {"jsonrpc": "2.0", "method": "x", "params": [1]}) == refusal


def test_accept_must_name_json_and_sse_or_a_wildcard() -> None:
    for accept in ("application/json", "text/event-stream", ""):
        assert check(headers("tools/list", Accept=accept), request(1, "tools/list")) == Refusal(406, None)
    for accept in ("*/*", "application/*, text/*", "application/json;q=1, text/event-stream;q=0.5"):
        assert check(headers("tools/list", Accept=accept), request(1, "tools/list")) is None


def test_get_and_delete_are_405_with_allow_post() -> None:
    assert refuse_http_method("GET") == refuse_http_method("DELETE") == NOT_ALLOWED
    assert NOT_ALLOWED == Refusal(405, None, (("Allow", "POST"),))
    assert refuse_http_method("POST") is None


def test_a_listen_filter_of_the_wrong_shape_is_32602() -> None:
    bad = Refusal(400, error(1, -32602, "Invalid request parameters", ""))
    params: dict[str, Any]
    for params in ({}, {"notifications": []}, {"notifications": {"toolsListChanged": "maybe"}},
                   {"notifications": {"resourceSubscriptions": [1]}}, {"notifications": {"resourceSubscriptions": "a"}}):  # fmt: skip
        assert check(headers("subscriptions/listen"), request(1, "subscriptions/listen", params)) == bad
    good = request(1, "subscriptions/listen", {"notifications": {"toolsListChanged": "yes"}})
    assert check(headers("subscriptions/listen"), good) is None  # the SDK's lax boolean


def test_method_sets_are_disjoint_and_match_the_sdks() -> None:
    from mcp_types import methods

    modern = {method for method, version in methods.CLIENT_REQUESTS if version == V}
    assert MODERN_METHODS_LOCAL | MODERN_METHODS_FORWARDED == modern
    assert not MODERN_METHODS_LOCAL & MODERN_METHODS_FORWARDED
    assert LEGACY_ONLY_METHODS == methods.SPEC_CLIENT_METHODS - modern


# --------------------------------------------------------------------------------------
# to_child, discover, from_child, status_of: exact answers
# --------------------------------------------------------------------------------------


def test_to_child_takes_the_envelope_out_and_keeps_the_rest() -> None:
    message = request(3, "tools/call", {"name": "slow", "arguments": {"s": 1}, "_meta": {"progressToken": "p1"}})
    message["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = "debug"
    before = json.dumps(message)
    assert to_child(message) == {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "slow", "arguments": {"s": 1}, "_meta": {"progressToken": "p1"}},
    }
    assert json.dumps(message) == before
    assert to_child(request(4, "tools/list")) == {"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {}}
    bare = {"jsonrpc": "2.0", "id": 5, "method": "tools/list"}
    assert to_child(bare) == bare


def test_discover_is_built_from_the_initialize_result() -> None:
    initialized = {
        "protocolVersion": "2025-11-25",
        "capabilities": {"tools": {"listChanged": True}, "resources": {"subscribe": True}, "tasks": {"list": {}}},
        "serverInfo": {"name": "child", "version": "2", "title": "Child"},
        "instructions": "be nice",
    }
    assert discover(initialized, "d1") == {
        "jsonrpc": "2.0",
        "id": "d1",
        "result": {
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {"listChanged": True}, "resources": {"subscribe": True}},
            "instructions": "be nice",
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "child", "version": "2", "title": "Child"}},
        },
    }
    assert discover({"capabilities": {}}, 1)["result"] == {
        "supportedVersions": ["2026-07-28"], "capabilities": {}, "resultType": "complete", "ttlMs": 0, "cacheScope": "private",
    }  # fmt: skip


def test_from_child_adds_what_modern_results_carry() -> None:
    listed: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"tools": [{"name": "a", "inputSchema": {}, "execution": {"taskSupport": "optional"}}]},
    }
    assert from_child("tools/list", listed, INFO) == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {
            "tools": [{"name": "a", "inputSchema": {}}],
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": INFO},
        },
    }
    assert listed["result"]["tools"][0]["execution"] == {"taskSupport": "optional"}  # untouched
    called = {"jsonrpc": "2.0", "id": 2, "result": {"content": [], "_meta": {"k": 1}}}
    assert from_child("tools/call", called, INFO)["result"] == {
        "content": [], "resultType": "complete", "_meta": {"k": 1, "io.modelcontextprotocol/serverInfo": INFO},
    }  # fmt: skip
    assert from_child("tools/call", called)["result"] == {"content": [], "_meta": {"k": 1}, "resultType": "complete"}
    ponged = {"jsonrpc": "2.0", "id": 3, "result": {}}
    assert from_child("custom/x", ponged)["result"] == {"resultType": "complete"}


def test_from_child_passes_errors_and_odd_results_unchanged() -> None:
    failed = error(1, 0, "Unknown prompt: nope")
    assert from_child("prompts/get", failed, INFO) is failed
    odd = {"jsonrpc": "2.0", "id": 1, "result": None}
    assert from_child("tools/list", odd, INFO) is odd


def test_status_of_maps_codes_as_the_sdk_does() -> None:
    statuses = {
        c: status_of(error(1, c, "m"))
        for c in (-32700, -32600, -32601, -32602, -32603, -32020, -32021, -32022, -32002, 0)
    }
    assert statuses == {-32700: 400, -32600: 400, -32601: 404, -32602: 400, -32603: 200, -32020: 400, -32021: 400,
                        -32022: 400, -32002: 200, 0: 200}  # fmt: skip
    assert status_of({"jsonrpc": "2.0", "id": 1, "result": {}}) == 200


# --------------------------------------------------------------------------------------
# listen: exact answers
# --------------------------------------------------------------------------------------


def listen(request_id: Any, wanted: dict[str, Any]) -> dict[str, Any]:
    return request(request_id, "subscriptions/listen", {"notifications": wanted})


def test_listen_filter_and_acknowledgement_honour_only_what_was_asked() -> None:
    message = listen(
        "L1",
        {
            "toolsListChanged": True,
            "promptsListChanged": False,
            "resourceSubscriptions": ["u:b", "u:a"],
            "taskIds": ["t"],
        },
    )
    assert listen_filter(message) == ListenFilter(tools=True, uris=("u:b", "u:a"))
    assert acknowledgement(message) == {
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {
            "_meta": {"io.modelcontextprotocol/subscriptionId": "L1"},
            "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["u:b", "u:a"]},
        },
    }
    assert acknowledgement(listen(2, {}))["params"]["notifications"] == {}
    with pytest.raises(ValueError):
        listen_filter(request(3, "subscriptions/listen"))


def test_wants_lets_through_only_the_kinds_and_uris_asked_for() -> None:
    honoured = ListenFilter(tools=True, resources=False, uris=("test://w",))

    def note(method: str, **params: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "method": method, "params": params}

    assert wants(honoured, note("notifications/tools/list_changed"))
    assert not wants(honoured, note("notifications/prompts/list_changed"))
    assert not wants(honoured, note("notifications/resources/list_changed"))
    assert wants(honoured, note("notifications/resources/updated", uri="test://w"))
    assert not wants(honoured, note("notifications/resources/updated", uri="test://other"))
    assert not wants(honoured, note("notifications/resources/updated"))
    assert not wants(honoured, note("notifications/progress", progressToken="p", progress=1))
    assert not wants(honoured, note("notifications/message", level="info", data="x"))
    assert wants(ListenFilter(prompts=True, resources=True), note("notifications/resources/list_changed"))


def test_listen_event_and_end_are_stamped_with_the_subscription_id() -> None:
    updated = {
        "jsonrpc": "2.0",
        "method": "notifications/resources/updated",
        "params": {"uri": "test://w", "_meta": {"x": 1}},
    }
    assert listen_event(7, updated) == {
        "jsonrpc": "2.0",
        "method": "notifications/resources/updated",
        "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": 7}, "uri": "test://w"},
    }
    assert listen_event(7, {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}) == {
        "jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": 7}},
    }  # fmt: skip
    assert listen_end(7, INFO) == {
        "jsonrpc": "2.0",
        "id": 7,
        "result": {
            "_meta": {"io.modelcontextprotocol/subscriptionId": 7, "io.modelcontextprotocol/serverInfo": INFO},
            "resultType": "complete",
        },
    }


# --------------------------------------------------------------------------------------
# Differential: the SDK 2.3 server over HTTP vs the same server as a legacy stdio child behind us
# --------------------------------------------------------------------------------------

DEADLINE = 30.0


@dataclass
class Child:
    """The everything server as a stdio child, initialized once in the legacy era, ids renumbered."""

    process: asyncio.subprocess.Process
    initialized: dict[str, Any] = field(default_factory=dict)
    next_id: int = 100

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        await self.process.stdin.drain()

    async def request(self, message: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The child's answer to `message` (under the client's id again) and the notifications before it."""
        assert self.process.stdout is not None
        self.next_id += 1
        await self.send({**message, "id": self.next_id})
        notes: list[dict[str, Any]] = []
        async with asyncio.timeout(DEADLINE):
            while True:
                line = await self.process.stdout.readline()
                assert line, "child closed stdout"
                got = json.loads(line)
                if got.get("id") == self.next_id and "method" not in got:
                    return {**got, "id": message["id"]}, notes
                notes.append(got)


@dataclass
class Sdk:
    url: str
    http: aiohttp.ClientSession
    listen_handler: Any

    async def post(self, head: Mapping[str, str], body: Any) -> tuple[int, dict[str, Any] | None, Mapping[str, str]]:
        async with self.http.post(self.url, data=json.dumps(body), headers=head) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None), response.headers


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def child() -> AsyncIterator[Child]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from tests.servers.everything import build_server; build_server().run('stdio')",
        cwd=REPO, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    child = Child(process)
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "proxy", "version": "1"}}
    answer, _ = await child.request({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": hello})
    child.initialized = answer["result"]
    await child.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    yield child
    assert process.stdin is not None
    process.stdin.close()
    async with asyncio.timeout(DEADLINE):
        assert await process.wait() == 0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sdk() -> AsyncIterator[Sdk]:
    server = build_server()
    app = server.streamable_http_app(host="127.0.0.1")
    entry = server._lowlevel_server.get_request_handler("subscriptions/listen")
    assert entry is not None
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", lifespan="on"))
    serving = asyncio.ensure_future(running.serve())
    async with asyncio.timeout(DEADLINE):
        while not running.started:
            assert not serving.done(), "everything server exited early"
            await asyncio.sleep(0.01)  # polling for the bound port; bounded by the timeout
    port = running.servers[0].sockets[0].getsockname()[1]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as http:
        yield Sdk(f"http://127.0.0.1:{port}/mcp", http, entry.handler)
    running.should_exit = True
    await asyncio.wait_for(serving, DEADLINE)


def _with_duplicate(head: CIMultiDict[str]) -> CIMultiDict[str]:
    head.add("MCP-Protocol-Version", V)
    return head


def _meta_without(key: str) -> dict[str, Any]:
    message = request(1, "tools/list")
    del message["params"]["_meta"][key]
    return message


def _version(value: Any) -> dict[str, Any]:
    message = request(1, "tools/list")
    message["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = value
    return message


REFUSED: list[tuple[str, CIMultiDict[str], Any]] = [
    ("method mismatch", headers("prompts/list"), request(1, "tools/list")),
    ("method header missing", headers(None), request(1, "tools/list")),
    ("name mismatch", headers("tools/call", "other"), request(1, "tools/call", {"name": "test_simple_text", "arguments": {}})),
    ("name missing", headers("tools/call"), request(1, "tools/call", {"name": "test_simple_text", "arguments": {}})),
    ("uri mismatch", headers("resources/read", "test://x"), request(1, "resources/read", {"uri": "test://static-text"})),
    ("version header differs", headers("tools/list", version="2027-01-01"), request(1, "tools/list")),
    ("version unsupported", headers("tools/list", version="2027-01-01"), _version("2027-01-01")),
    ("version not a string", headers("tools/list", version="5"), _version(5)),
    ("routing header twice", _with_duplicate(headers("tools/list")), request(1, "tools/list")),
    ("no _meta", headers("tools/list"), request(1, "tools/list", envelope=False)),
    ("no params", headers("tools/list"), {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    ("no capabilities", headers("tools/list"), _meta_without("io.modelcontextprotocol/clientCapabilities")),
    ("no version in _meta", headers("tools/list"), _meta_without("io.modelcontextprotocol/protocolVersion")),
    ("ping", headers("ping"), request("p", "ping")),
    ("initialize", headers("initialize"), request(1, "initialize", {"protocolVersion": V, "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}})),
    ("logging/setLevel", headers("logging/setLevel"), request(1, "logging/setLevel", {"level": "info"})),
    ("resources/subscribe", headers("resources/subscribe"), request(1, "resources/subscribe", {"uri": "test://x"})),
    ("resources/unsubscribe", headers("resources/unsubscribe"), request(1, "resources/unsubscribe", {"uri": "test://x"})),
    ("listen without filter", headers("subscriptions/listen"), request(1, "subscriptions/listen")),
    ("listen bad flag", headers("subscriptions/listen"), request(1, "subscriptions/listen", {"notifications": {"toolsListChanged": "maybe"}})),
    ("listen bad uris", headers("subscriptions/listen"), request(1, "subscriptions/listen", {"notifications": {"resourceSubscriptions": [1]}})),
    ("listen json only", headers("subscriptions/listen", Accept="application/json"), request(1, "subscriptions/listen", {"notifications": {}})),
    ("json only", headers("tools/list", Accept="application/json"), request(1, "tools/list")),
    ("notification", headers("notifications/cancelled"), {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}),
    ("notification, version unsupported", headers(None, version="2027-01-01"), {"jsonrpc": "2.0", "method": "notifications/x"}),
    ("posted response", headers(None), {"jsonrpc": "2.0", "id": 5, "result": {}}),
    ("boolean id", headers("tools/list"), request(True, "tools/list")),
]  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
async def test_refusals_are_the_sdks_answers(sdk: Sdk) -> None:
    differ = {}
    for label, head, body in REFUSED:
        refused = check(head, body)
        status, answer, _ = await sdk.post(head, body)
        if refused is None or (refused.status, refused.answer) != (status, answer):
            differ[label] = (refused, (status, answer))
    assert differ == {}


@pytest.mark.asyncio(loop_scope="module")
async def test_get_and_delete_are_the_sdks_answers(sdk: Sdk) -> None:
    for verb in ("GET", "DELETE"):
        async with sdk.http.request(verb, sdk.url, headers=headers(None)) as response:
            assert (response.status, await response.read(), response.headers["Allow"]) == (405, b"", "POST")
        refusal = refuse_http_method(verb)
        assert refusal is not None and (refusal.status, refusal.answer, dict(refusal.headers)) == (
            405,
            None,
            {"Allow": "POST"},
        )


FORWARDED: list[tuple[str, str | None, dict[str, Any]]] = [
    ("tools/list", None, {}),
    ("prompts/list", None, {}),
    ("resources/list", None, {}),
    ("resources/templates/list", None, {}),
    ("resources/read", "test://static-text", {"uri": "test://static-text"}),
    ("resources/read", "test://nope", {"uri": "test://nope"}),
    ("completion/complete", None, {"ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": "p"}}),
    ("tools/call", "test_simple_text", {"name": "test_simple_text", "arguments": {}}),
    ("tools/call", "lookup", {"name": "lookup", "arguments": {"key": "alpha"}}),
    ("tools/call", "nope", {"name": "nope", "arguments": {}}),
    ("tools/call", None, {"arguments": {}}),
    ("prompts/get", "test_simple_prompt", {"name": "test_simple_prompt"}),
    ("custom/unknown", None, {}),
    ("tools/call", "slow", {"name": "slow", "arguments": {"seconds": 0.01}}),
]  # fmt: skip


@pytest.mark.asyncio(loop_scope="module")
async def test_forwarded_answers_are_the_sdks_answers(sdk: Sdk, child: Child) -> None:
    info = child.initialized["serverInfo"]
    differ = {}
    for number, (method, name, params) in enumerate(FORWARDED):
        head, body = headers(method, name), request(number, method, params)
        assert check(head, body) is None, method
        answer, _ = await child.request(to_child(body))
        ours = from_child(method, answer, info)
        status, theirs, _ = await sdk.post(head, body)
        if (status_of(ours), ours) != (status, theirs):
            differ[f"{method} {params}"] = ((status_of(ours), ours), (status, theirs))
    assert differ == {}


@pytest.mark.asyncio(loop_scope="module")
async def test_progress_reaches_the_child_with_its_token(child: Child) -> None:
    body = request(1, "tools/call", {"name": "slow", "arguments": {"seconds": 0.01}, "_meta": {"progressToken": "p1"}})
    answer, notes = await child.request(to_child(body))
    assert answer["result"]["isError"] is False
    assert [(n["method"], n["params"]["progressToken"], n["params"]["progress"]) for n in notes] == [
        ("notifications/progress", "p1", step) for step in (1, 2, 3, 4)
    ]


@pytest.mark.asyncio(loop_scope="module")
async def test_where_a_legacy_child_answers_otherwise(sdk: Sdk, child: Child) -> None:
    """Pinned differences: they are the child's (legacy-era) answers, passed on unchanged."""
    body = request(1, "prompts/get", {"name": "nope"})
    answer, _ = await child.request(to_child(body))
    status, theirs, _ = await sdk.post(headers("prompts/get", "nope"), body)
    # A handler's plain exception: the legacy dispatcher pins code 0 and keeps its text; the modern entry hides it.
    assert (status_of(from_child("prompts/get", answer)), from_child("prompts/get", answer)) == (
        200,
        error(1, 0, "Unknown prompt: nope"),
    )
    assert (status, theirs) == (200, error(1, -32603, "Internal server error"))
    # The envelope left in: the legacy child refuses it (why to_child exists).
    raw, _ = await child.request(request(2, "tools/list"))
    assert raw["error"]["code"] == -32600


@pytest.mark.asyncio(loop_scope="module")
async def test_discover_is_the_sdks_but_for_the_change_flags(sdk: Sdk, child: Child) -> None:
    body = request("d", "server/discover")
    ours = discover(child.initialized, "d")
    status, theirs, _ = await sdk.post(headers("server/discover"), body)
    assert status == 200 and theirs is not None
    # The SDK serving 2026-07-28 says true wherever it serves subscriptions/listen; we pass on what the child
    # declared (false: this child never sends list changes on its session), as only what it sends reaches a listener.
    assert ours["result"]["capabilities"] == {
        "completions": {}, "logging": {}, "prompts": {"listChanged": False},
        "resources": {"listChanged": False, "subscribe": True}, "tools": {"listChanged": False},
    }  # fmt: skip
    assert theirs["result"]["capabilities"] == {
        "completions": {}, "logging": {}, "prompts": {"listChanged": True},
        "resources": {"listChanged": True, "subscribe": True}, "tools": {"listChanged": True},
    }  # fmt: skip
    for side in (ours, theirs):
        del side["result"]["capabilities"]
    assert ours == theirs


@pytest.mark.asyncio(loop_scope="module")
async def test_a_listen_is_acknowledged_fed_and_ended_as_the_sdk_does(sdk: Sdk) -> None:
    wanted = {
        "toolsListChanged": True,
        "promptsListChanged": False,
        "resourceSubscriptions": ["test://watched-resource"],
        "taskIds": ["t"],
    }
    message = listen("L1", wanted)
    honoured = listen_filter(message)
    info = None
    async with sdk.http.post(sdk.url, data=json.dumps(message), headers=headers("subscriptions/listen")) as stream:
        assert (stream.status, stream.headers["Content-Type"]) == (200, "text/event-stream")
        first = await stream.content.readuntil(b"\r\n\r\n")
        assert _data(first) == [acknowledgement(message)]
        for tool in ("test_trigger_tool_change", "test_trigger_prompt_change", "test_watched_resource_update"):
            status, answer, _ = await sdk.post(
                headers("tools/call", tool), request(9, "tools/call", {"name": tool, "arguments": {}})
            )
            assert status == 200 and answer is not None
            info = answer["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]
        sdk.listen_handler.close()
        async with asyncio.timeout(DEADLINE):
            rest = await stream.content.read()
    children: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
        {"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"},
        {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "test://watched-resource"}},
    ]
    ours = [listen_event("L1", note) for note in children if wants(honoured, note)] + [listen_end("L1", info)]
    assert _data(rest) == ours


def _data(stream: bytes) -> list[dict[str, Any]]:
    """The JSON of each SSE ``data:`` line (the SDK writes one per event, CRLF-terminated)."""
    return [json.loads(line[5:]) for line in stream.decode().splitlines() if line.startswith("data:")]
