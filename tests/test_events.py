"""Failure events: the schema, the bus's bounds, the sinks, and the events real failures produce."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from proxy.app import running_proxy
from proxy.events.sinks import FLUSH_EVERY, JsonlFile
from proxy.events.recorder import EventBus, EventRecorder, make_event, signature
from tests.conftest import REPO, proxy_config
from proxy.policies.base import Attempt
from tests.fakes import make_call, tool_call
from tests.fault_upstream import FaultUpstream
from tests.test_forwarding import JSON_HEADERS, call_tool

QUIET = {"summary_interval": "1h"}
"""Events config for tests that expect an exact list: no periodic call_ok summary can join it."""

SCHEMA = jsonschema.Draft202012Validator(json.loads((REPO / "config" / "events.schema.json").read_text()))

ENVELOPE = ["v", "type", "upstream", "method", "tool", "call_id", "attempt", "latency_ms", "policy", "error", "signature"]


def test_signature_ignores_numbers_and_ids_but_not_the_words() -> None:
    a = signature("up", "tools/call", "lookup", "timeout", "upstream did not answer within 2s (request 12345)")
    b = signature("up", "tools/call", "lookup", "timeout", "Upstream did not answer within 30s (request 777)")
    c = signature("up", "tools/call", "lookup", "timeout", "connection reset")
    d = signature("up", "tools/call", "other", "timeout", "upstream did not answer within 2s (request 12345)")
    assert a == b and len({a, c, d}) == 3 and len(a) == 12


def test_event_envelope_and_no_raw_params_by_default() -> None:
    call = make_call(tool_call("lookup", 3, key="s3cret-value", api_key="k"))
    event = make_event("call_failed", call, error={"kind": "timeout", "message": "late"}, latency_ms=1.23456)
    assert list(event)[: len(ENVELOPE)] == ENVELOPE
    assert (event["v"], event["tool"], event["latency_ms"], event["policy"], event["idempotent"]) == (1, "lookup", 1.235, "default", False)
    assert "params" not in event and len(event["params_hash"]) == 16
    assert "s3cret" not in json.dumps(event)
    opted_in = make_event("call_failed", call, error={"kind": "timeout", "message": "late"}, include_params=True)
    assert opted_in["params"] == {"name": "lookup", "arguments": {"key": "[redacted]", "api_key": "[redacted]"}}


async def test_a_slow_subscriber_loses_its_oldest_events_and_never_blocks() -> None:
    bus = EventBus(capacity=100, subscriber_queue=10)
    slow = bus.subscribe()
    for n in range(25):
        bus.publish({"type": "retry", "n": n})
    assert bus.published == 25 and slow.dropped == 15 and bus.dropped == 15
    assert [(await slow.get())["n"] for _ in range(10)] == list(range(15, 25))
    resumed = bus.subscribe(since=20)
    assert [(await resumed.get())["id"] for _ in range(5)] == [21, 22, 23, 24, 25]


def test_jsonl_file_rotates_and_keeps_backups(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlFile(str(path), max_bytes=200, backups=2)
    for n in range(20):
        sink({"id": n, "type": "retry", "pad": "x" * 40})
    sink.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    ids = [json.loads(line)["id"] for name in ("events.jsonl.2", "events.jsonl.1", "events.jsonl") for line in (tmp_path / name).read_text().splitlines()]
    assert ids == sorted(ids) and ids[-1] == 19


def test_call_ok_summary_counts_outcomes_attempts_and_latency() -> None:
    bus = EventBus()
    recorder = EventRecorder(bus)
    call = make_call(tool_call("lookup"))
    for latency in (3.0, 7.0, 40.0):
        recorder.call_finished(call, "ok", latency)
    second = Attempt(call, 2, None)
    recorder.call_finished(second, "ok", 120.0)
    recorder.call_finished(second, "upstream_timeout", 2000.0)
    assert recorder.flush_summaries() == 1
    (summary,) = bus.recent()
    assert summary["type"] == "call_ok" and summary["tool"] == "lookup"
    assert (summary["calls"], summary["ok"], summary["outcomes"]) == (5, 4, {"ok": 4, "upstream_timeout": 1})
    assert summary["ok_by_attempt"] == {"1": 3, "2": 1}
    buckets, counts = summary["latency_buckets_ms"], summary["latency_histogram"]
    assert {buckets[i]: c for i, c in enumerate(counts[:-1]) if c} == {5: 1, 10: 1, 50: 1, 200: 1}
    assert (summary["latency_mean_ms"], summary["latency_max_ms"]) == (42.5, 120.0)
    assert recorder.flush_summaries() == 0


async def events_of(admin_url: str, since: int = 0) -> list[dict[str, Any]]:
    """The events /events serves, each checked against the exported schema."""
    async with aiohttp.ClientSession() as session:
        async with session.get(admin_url + "/events", params={"format": "json", "since": str(since)}) as response:
            events = list(await response.json())
    for event in events:
        SCHEMA.validate(event)
    return events


async def post(url: str, payload: dict[str, Any], **headers: str) -> int:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=payload, headers={**JSON_HEADERS, **headers}) as response:
            await response.read()
            return response.status


async def test_retries_then_a_final_failure_make_these_events(upstream: FaultUpstream) -> None:
    upstream.fault("tools/list", status=503)
    config = proxy_config(
        upstream.url, upstream={"retry": {"max_attempts": 3, "backoff": {"base": "1ms", "max": "1ms"}}}, events=QUIET
    )
    async with running_proxy(config) as proxy:
        assert await post(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, Authorization="Bearer s3cret") == 503
        events = await events_of(proxy.admin_url)
    kinds = [(e["type"], e["attempt"]) for e in events]
    assert kinds == [("retry", 1), ("retry", 2), ("retry_exhausted", 3), ("call_failed", 3)]
    failed = events[-1]
    assert failed["error"] == {"kind": "http_5xx", "http_status": 503, "jsonrpc_code": None, "message": "upstream answered HTTP 503"}
    assert (failed["reason"], failed["http_status"], failed["method"], failed["upstream"]) == ("http_5xx", 503, "tools/list", "up")
    assert failed["signature"] == events[0]["signature"] == events[2]["signature"]
    assert len({e["call_id"] for e in events}) == 1
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert "s3cret" not in json.dumps(events)


async def test_a_stale_answer_after_retries_names_the_last_attempt_in_its_events(upstream: FaultUpstream) -> None:
    """The parts outside the attempts (the cache, the handler's summary) name the attempt the call's
    outcome came from: here the failing third, whose stored stand-in the client got."""
    retry = {"max_attempts": 3, "backoff": {"base": "1ms", "max": "1ms"}}
    config = proxy_config(upstream.url, upstream={"retry": retry, "cache": {"max_stale": "1h"}}, events=QUIET)
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    async with running_proxy(config) as proxy:
        assert await post(proxy.url + "/mcp", listing) == 200  # stored
        upstream.fault("tools/list", status=503)
        assert await post(proxy.url + "/mcp", listing) == 200  # the stored answer stands in
        proxy.events.flush_summaries()
        events = await events_of(proxy.admin_url)
    kinds = [(e["type"], e["attempt"]) for e in events if e["call_id"] is not None]
    assert kinds == [("retry", 1), ("retry", 2), ("retry_exhausted", 3), ("fallback_served", 3)]
    (summary,) = [e for e in events if e["type"] == "call_ok"]
    assert summary["ok_by_attempt"] == {"1": 1, "3": 1}
    assert upstream.attempts["tools/list"] == 4


async def test_a_timeout_of_an_idempotent_call_is_observed(upstream: FaultUpstream) -> None:
    upstream.fault("resources/read", delay=0.3)
    config = proxy_config(
        upstream.url,
        upstream={"timeouts": {"per_try": "100ms"}, "retry": {"max_attempts": 1}},
        events={**QUIET, "observe_timeouts": "1h"},
    )
    async with running_proxy(config) as proxy:
        read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "demo://x"}}
        started = time.monotonic()  # the attempt starts after this, on the same clock as observed_ms
        assert await post(proxy.url + "/mcp", read) == 504
        async with asyncio.timeout(30):
            while not any(e["type"] == "timeout_observed" for e in await events_of(proxy.admin_url)):
                await asyncio.sleep(0.02)
        elapsed_ms = (time.monotonic() - started) * 1000  # and its answer arrived before this
        events = await events_of(proxy.admin_url)
    by_type = {e["type"]: e for e in events}
    assert [e["type"] for e in events] == ["timeout", "call_failed", "timeout_observed"]
    assert (by_type["timeout"]["limit_ms"], by_type["timeout"]["observing"]) == (100.0, True)
    assert by_type["call_failed"]["error"]["kind"] == "timeout"
    assert 300 <= by_type["timeout_observed"]["observed_ms"] <= elapsed_ms  # the upstream's 0.3 s delay, and then some
    assert upstream.attempts["resources/read"] == 1


async def test_a_timeout_of_a_write_is_observed_and_the_write_runs_once(upstream: FaultUpstream) -> None:
    """A non-idempotent call that timed out: the client gets the timeout error, the call is not retried
    (exactly one execution upstream), and the write's real length is observed all the same."""
    upstream.fault("tools/call", "create_ticket", delay=0.3)
    config = proxy_config(upstream.url, upstream={"timeouts": {"per_try": "100ms"}}, events={**QUIET, "observe_timeouts": "1h"})
    async with running_proxy(config) as proxy:
        assert proxy.runtime.current.config.upstreams[0].retry.max_attempts > 1  # retries are on: none is made
        started = time.monotonic()
        assert await post(proxy.url + "/mcp", call_tool("create_ticket")) == 504
        async with asyncio.timeout(30):
            while not any(e["type"] == "timeout_observed" for e in await events_of(proxy.admin_url)):
                await asyncio.sleep(0.02)
        elapsed_ms = (time.monotonic() - started) * 1000
        events = await events_of(proxy.admin_url)
    assert [(e["type"], e.get("observing"), e["idempotent"]) for e in events] == [
        ("timeout", True, False), ("call_failed", None, False), ("timeout_observed", None, False)
    ]
    failed, observed = events[1], events[2]
    assert (failed["error"]["kind"], failed["reason"], failed["http_status"]) == ("timeout", "upstream_timeout", 504)
    assert observed["attempt"] == 1 and observed["limit_ms"] == 100.0
    assert 300 <= observed["observed_ms"] <= elapsed_ms  # the upstream's 0.3 s, and then some
    assert upstream.attempts[FaultUpstream.key("tools/call", "create_ticket")] == 1


async def test_breaker_events_and_the_sse_stream_resumes(upstream: FaultUpstream) -> None:
    upstream.fault("tools/list", status=500)
    config = proxy_config(
        upstream.url, upstream={"retry": {"max_attempts": 1}, "breaker": {"failure_threshold": 1}}, events=QUIET
    )
    async with running_proxy(config) as proxy:
        for n in range(2):
            await post(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": n, "method": "tools/list"})
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy.admin_url + "/events", headers={"Last-Event-ID": "1"}) as response:
                assert response.headers["Content-Type"] == "text/event-stream"
                seen: list[tuple[str, str]] = []
                async for line in response.content:
                    text = line.decode().strip()
                    if text.startswith(("id:", "event:")):
                        seen.append(tuple(text.split(": ", 1)))  # type: ignore[arg-type]
                    if len(seen) == 6:
                        break
    # id 1 is the breaker opening during the first call; resuming after it:
    assert seen == [("id", "2"), ("event", "call_failed"), ("id", "3"), ("event", "circuit_open"), ("id", "4"), ("event", "call_failed")]


@pytest.mark.parametrize("enabled", [True, False])
async def test_events_can_be_turned_off(upstream: FaultUpstream, enabled: bool) -> None:
    upstream.fault("tools/list", status=500)
    config = proxy_config(upstream.url, upstream={"retry": {"max_attempts": 1}}, events={**QUIET, "enabled": enabled})
    async with running_proxy(config) as proxy:
        await post(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert len(await events_of(proxy.admin_url)) == (1 if enabled else 0)


def test_a_failing_sink_never_fails_the_publisher() -> None:
    bus = EventBus()

    def broken(event: dict[str, Any]) -> None:
        raise OSError("disk full")

    seen: list[int] = []
    bus.listeners.extend([broken, lambda event: seen.append(event["id"])])
    bus.publish({"type": "retry"})
    assert seen == [1] and bus.published == 1


def test_the_exported_event_schema_is_current_and_every_real_event_fits(tmp_path: Path) -> None:
    from proxy.events.schema import event_schema

    schema = event_schema()
    assert json.loads((REPO / "config" / "events.schema.json").read_text()) == schema
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    bus = EventBus()
    recorder = EventRecorder(bus)
    recorder.strict = True
    call = make_call(tool_call("lookup"))
    late = {"kind": "timeout", "http_status": None, "jsonrpc_code": None, "message": "late"}
    recorder.policy_event("retry", call, failure="timeout", delay_ms=12.5, error=late)
    recorder.policy_event("timeout", call, limit_ms=100.0, observing=True)
    recorder.policy_event("breaker_state", None, upstream="up", breaker="up", old="closed", new="open", cause="5 consecutive failures", last_failure="timeout: late", last_failure_kind="timeout")
    recorder.call_failed(call, {"kind": "timeout", "http_status": None, "jsonrpc_code": -32051, "message": "late"}, 3.0, reason="upstream_timeout", http_status=504, client="addr:x")
    recorder.call_finished(call, "ok", 4.0)
    recorder.flush_summaries()
    events = bus.recent()
    assert [e["type"] for e in events] == ["retry", "timeout", "breaker_state", "call_failed", "call_ok"]
    for event in events:
        validator.validate(event)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate({**events[0], "signature": "not-hex"})


async def test_an_upstream_429_is_reported_as_the_upstreams_limit(upstream: FaultUpstream) -> None:
    upstream.fault("tools/call", "create_ticket", status=429, retry_after="120")
    async with running_proxy(proxy_config(upstream.url)) as proxy:
        assert await post(proxy.url + "/mcp", call_tool("create_ticket")) == 429
        (failed,) = [e for e in await events_of(proxy.admin_url) if e["type"] == "call_failed"]
    assert (failed["error"]["kind"], failed["error"]["http_status"], failed["reason"]) == ("http_429", 429, "http_429")


@pytest.mark.parametrize(("enabled", "logged"), [(True, True), (True, False), (False, False)])
async def test_each_retry_and_failure_is_one_log_line_whether_or_not_events_write_it(
    upstream: FaultUpstream, enabled: bool, logged: bool
) -> None:
    """Written as an event line when events are logged, else as a plain structlog line: never both."""
    import structlog

    upstream.fault("tools/list", status=503)
    retry = {"max_attempts": 2, "backoff": {"base": "1ms", "max": "2ms"}}
    config = proxy_config(upstream.url, upstream={"retry": retry, "breaker": {"enabled": False}}, events={"enabled": enabled, "log": logged})
    async with running_proxy(config) as proxy:
        with structlog.testing.capture_logs() as logs:
            await post(proxy.url + "/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    plain = [entry["event"] for entry in logs if entry["event"] in ("retry", "retry_exhausted", "call_failed")]
    assert plain == ([] if logged else ["retry", "retry_exhausted", "call_failed"])
    if not logged:
        retry_line = next(entry for entry in logs if entry["event"] == "retry")
        assert (retry_line["upstream"], retry_line["method"], retry_line["failure"]) == ("up", "tools/list", "http_5xx")
        assert retry_line["error"] == "upstream answered HTTP 503"


def test_params_hash_tells_array_params_apart_and_ignores_meta() -> None:
    def hashed(params: str) -> str:
        body = b'{"jsonrpc":"2.0","id":1,"method":"custom/op","params":' + params.encode() + b"}"
        return str(make_event("call_failed", make_call(body), error={"kind": "timeout", "message": "late"})["params_hash"])

    assert hashed("[1,2]") != hashed("[3]")  # both hashed as {} before
    assert hashed('{"a":1,"_meta":{"progressToken":7}}') == hashed('{"a":1}')


async def lines_within(path: Path, count: int, within: float = 10.0) -> list[dict[str, Any]]:
    """The file's complete lines, polled (another writer is flushing it) until there are `count`, for at
    most `within` s: a deadline on the content, never a sleep standing in for the writer."""
    async with asyncio.timeout(within):
        while True:
            text = path.read_text() if path.exists() else ""
            lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
            if len(lines) >= count:
                return [json.loads(line) for line in lines]
            await asyncio.sleep(0.01)


async def test_one_event_reaches_the_file_without_any_event_after_it(tmp_path: Path) -> None:
    """A quiet proxy's single event must reach a reader of the file (`tail -f`, an analyzer following it)
    without waiting for 63 more: the writer flushes once it goes idle, not only every `FLUSH_EVERY` events."""
    path = tmp_path / "events.jsonl"
    sink = JsonlFile(str(path), max_bytes=1 << 20, backups=1)
    try:
        sink({"id": 1, "type": "breaker_state", "new": "open"})
        assert [e["id"] for e in await lines_within(path, 1)] == [1]
        sink({"id": 2, "type": "breaker_state", "new": "half-open"})
        assert [e["id"] for e in await lines_within(path, 2)] == [1, 2]
    finally:
        sink.close()


async def test_a_burst_is_written_in_batches_and_its_tail_once_the_writer_is_idle(tmp_path: Path) -> None:
    """Under load the file is still written in batches: right after a synchronous burst of 2 x
    `FLUSH_EVERY` + 5 events the file holds exactly the two full batches (the tail sits in the buffer,
    well under its 8 KiB), and the tail follows once the writer goes idle."""
    path = tmp_path / "events.jsonl"
    sink = JsonlFile(str(path), max_bytes=1 << 20, backups=1)
    try:
        burst = 2 * FLUSH_EVERY + 5
        for n in range(burst):
            sink({"id": n, "type": "retry"})
        assert len(path.read_text().splitlines()) == 2 * FLUSH_EVERY
        assert [e["id"] for e in await lines_within(path, burst)] == list(range(burst))
    finally:
        sink.close()


async def test_a_running_proxys_event_file_shows_its_first_event_at_once(upstream: FaultUpstream, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    upstream.fault("tools/call", "lookup", status=503)
    config = proxy_config(
        upstream.url, upstream={"retry": {"max_attempts": 1}}, events={**QUIET, "file": {"path": str(path)}}
    )
    async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/mcp", json=call_tool("lookup", 1), headers=JSON_HEADERS) as response:
            assert response.status == 503
        (written,) = await lines_within(path, 1)
        assert (written["type"], written["error"]["kind"], written["http_status"]) == ("call_failed", "http_5xx", 503)
