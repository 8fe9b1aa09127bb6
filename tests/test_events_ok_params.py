"""A `call_ok` summary names the params of its successful idempotent calls (`ok_params`), bounded."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson

from proxy.events.build import make_event
from proxy.events.bus import EventBus
from proxy.events.envelope import MAX_EVENT_BYTES, MAX_OK_PARAMS
from proxy.events.recorder import EventRecorder
from proxy.events.schema import event_schema
from proxy.policies.base import Call
from tests.fakes import make_call, tool_call

SCHEMA = jsonschema.Draft202012Validator(event_schema())


def read(uri: str, request_id: int = 1) -> Call:
    """A resources/read: idempotent by its method."""
    return make_call(orjson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "resources/read", "params": {"uri": uri}}))


def flushed(events: EventRecorder) -> dict[tuple[str, str | None], dict[str, Any]]:
    before = len(events.bus.recent())
    events.flush_summaries()
    published = events.bus.recent()[before:]
    for summary in published:
        SCHEMA.validate(summary)
        assert len(orjson.dumps(summary)) <= MAX_EVENT_BYTES
    return {(s["method"], s["tool"]): s for s in published}


def hash_of(call: Call) -> str:
    """The params hash the call's own events carry."""
    event = make_event("call_failed", call, error={"kind": "timeout", "message": "late"})
    return str(event["params_hash"])


def test_the_distinct_params_of_idempotent_successes_in_first_success_order() -> None:
    events = EventRecorder(EventBus())
    a, b, c = read("file:///a"), read("file:///b", 7), read("file:///c")
    for call, outcome in ((b, "ok"), (a, "ok"), (b, "ok"), (c, "upstream_timeout"), (a, "ok")):
        events.call_finished(call, outcome, 3.0)
    summary = flushed(events)[("resources/read", None)]
    assert summary["ok_params"] == [hash_of(b), hash_of(a)]  # c never succeeded; the request id is no param
    assert summary["ok_params_overflow"] == 0
    assert (summary["ok"], summary["calls"]) == (4, 5)


def test_a_summary_without_an_idempotent_success_names_no_params() -> None:
    events = EventRecorder(EventBus())
    write = make_call(tool_call("write", 1, text="x"))
    assert write.idempotent is False
    events.call_finished(write, "ok", 3.0)
    events.call_finished(read("file:///a"), "upstream_timeout", 3.0)
    summaries = flushed(events)
    assert "ok_params" not in summaries[("tools/call", "write")]
    assert "ok_params_overflow" not in summaries[("tools/call", "write")]
    assert "ok_params" not in summaries[("resources/read", None)]


def test_params_past_the_bound_are_counted_and_the_next_window_starts_empty() -> None:
    events = EventRecorder(EventBus())
    calls = [read(f"file:///{n}") for n in range(MAX_OK_PARAMS + 5)]
    for call in calls:
        events.call_finished(call, "ok", 1.0)
    events.call_finished(calls[0], "ok", 1.0)  # already named: no overflow
    events.call_finished(calls[-1], "ok", 1.0)  # past the bound: counted again, as a success
    summary = flushed(events)[("resources/read", None)]
    assert summary["ok_params"] == [hash_of(call) for call in calls[:MAX_OK_PARAMS]]
    assert summary["ok_params_overflow"] == 6
    events.call_finished(calls[-1], "ok", 1.0)
    again = flushed(events)[("resources/read", None)]
    assert (again["ok_params"], again["ok_params_overflow"]) == ([hash_of(calls[-1])], 0)
