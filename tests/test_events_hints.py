"""The tool annotations a server declared, carried by the events about a call: what it says, beside what
the proxy believes (`idempotent`), trusted or not."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from proxy.app import running_proxy
from proxy.events.build import build, checked_record, make_event
from proxy.events.bus import EventBus
from proxy.events.recorder import EventRecorder
from proxy.events.schema import event_schema
from proxy.mcp.annotations import ToolAnnotations
from proxy.mcp.tool_catalog import ToolCatalog
from tests.conftest import proxy_config
from tests.fakes import make_call, tool_call
from tests.fault_upstream import FaultUpstream
from tests.test_events import QUIET, events_of, post
from tests.test_forwarding import call_tool

HINTS = ("read_only_hint", "idempotent_hint", "destructive_hint")
LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
SCHEMA = jsonschema.Draft202012Validator(event_schema())


def listed(trusted: bool) -> ToolAnnotations:
    """An upstream's catalog view that learned one listing: a read-only tool, a tool declaring both hints
    (one of them false), and a tool with no annotations."""
    annotations = ToolAnnotations(ToolCatalog(), trusted=trusted)
    tools = [
        {"name": "lookup", "annotations": {"readOnlyHint": True}},
        {"name": "put", "annotations": {"readOnlyHint": False, "idempotentHint": True, "destructiveHint": True}},
        {"name": "plain"},
    ]
    assert annotations.learn({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}) == 3
    return annotations


def records(body: bytes, annotations: ToolAnnotations) -> list[dict[str, Any]]:
    """One call event of `body`'s call, as every path makes it (typed, checked, untyped): all alike."""
    call = make_call(body, annotations=annotations)
    fields = {"failure": "http_5xx", "delay_ms": 1.0, "error": {"kind": "http_5xx", "http_status": 503, "jsonrpc_code": None, "message": "x"}}
    made = [build("retry", call, dict(fields)).as_record(), checked_record("retry", call, dict(fields)), make_event("retry", call, **fields)]
    for record in made:
        SCHEMA.validate({**record, "id": 1, "ts": 1.0})
    assert list(made[0].items()) == list(made[1].items()) == list(made[2].items())
    return made


def test_an_untrusted_read_only_tool_says_so_while_the_proxy_does_not_believe_it() -> None:
    record = records(tool_call("lookup"), listed(trusted=False))[0]
    assert (record["idempotent"], record["read_only_hint"]) == (False, True)
    assert "idempotent_hint" not in record  # not declared: absent, not null
    keys = list(record)
    assert keys.index("idempotent") < keys.index("read_only_hint") < keys.index("params_hash")


def test_a_trusted_read_only_tool_is_believed_and_says_so() -> None:
    record = records(tool_call("lookup"), listed(trusted=True))[0]
    assert (record["idempotent"], record["read_only_hint"], "idempotent_hint" in record) == (True, True, False)


@pytest.mark.parametrize("trusted", [False, True])
def test_declared_false_is_carried_as_false(trusted: bool) -> None:
    record = records(tool_call("put"), listed(trusted))[0]
    assert {name: record[name] for name in HINTS} == {"read_only_hint": False, "idempotent_hint": True, "destructive_hint": True}
    assert record["idempotent"] is trusted


@pytest.mark.parametrize(
    ("body", "why"),
    [(tool_call("plain"), "listed without annotations"), (tool_call("junk"), "not listed"), (LIST, "not a tools/call")],
)
def test_without_a_declared_hint_the_event_carries_neither_field(body: bytes, why: str) -> None:
    for record in records(body, listed(trusted=True)):
        assert not set(HINTS) & set(record), why


def test_without_a_catalog_no_hints() -> None:
    call = make_call(tool_call("lookup"))
    assert call.hints is None
    assert not set(HINTS) & set(checked_record("rate_limited", call, {"retry_after": 1.0}))


def test_the_hints_are_those_of_when_the_call_was_classified() -> None:
    """Looked up once, when the call is made: a listing that comes while the call is in flight changes
    the next call's events, not this one's."""
    annotations = listed(trusted=False)
    call = make_call(tool_call("plain"), annotations=annotations)
    annotations.learn({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "plain", "annotations": {"readOnlyHint": True}}]}})
    recorder = EventRecorder(EventBus())
    recorder.policy_event("rate_limited", call, retry_after=1.0)
    recorder.policy_event("rate_limited", make_call(tool_call("plain"), annotations=annotations), retry_after=1.0)
    before, after = recorder.bus.recent()
    assert ("read_only_hint" in before, after.get("read_only_hint")) == (False, True)


async def test_over_http_the_events_of_a_listed_tool_carry_its_hints(upstream: FaultUpstream) -> None:
    """The wiring: an untrusted upstream (the default) lists `lookup` read-only and `create_ticket` not
    idempotent; each call's failure event then says what was declared, and `idempotent` what the proxy
    believed. A call before the listing carries neither."""
    upstream.fault("tools/call", "lookup", status=500)
    upstream.fault("tools/call", "create_ticket", status=500)
    config = proxy_config(upstream.url, upstream={"retry": {"max_attempts": 1}}, events=QUIET)
    async with running_proxy(config) as proxy:
        url = proxy.url + "/mcp"
        await post(url, call_tool("lookup"))
        assert await post(url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}) == 200
        await post(url, call_tool("lookup"))
        await post(url, call_tool("create_ticket"))
        failed = [e for e in await events_of(proxy.admin_url) if e["type"] == "call_failed"]
    hints = [(e["tool"], e["idempotent"], e.get("read_only_hint"), e.get("idempotent_hint")) for e in failed]
    assert hints == [("lookup", False, None, None), ("lookup", False, True, None), ("create_ticket", False, None, False)]
    assert "read_only_hint" not in failed[0] and "idempotent_hint" not in failed[1]
