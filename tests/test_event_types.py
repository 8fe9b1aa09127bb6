"""Typed events: every kind built from its emission, the record unchanged (wire format v1), malformed
emissions (raised under `strict`, published untyped when serving), the generated schema, and every
emission site in `proxy/` checked against its kind's fields."""

from __future__ import annotations

import ast
import dataclasses
import json
from typing import Any

import jsonschema
import pytest
import structlog

from proxy.events.build import MalformedEvent, build, checked_record, make_event
from proxy.events.envelope import ABSENT, CallEvent, Event
from proxy.events.recorder import EventBus, EventRecorder
from proxy.events.schema import event_schema
from proxy.events.types import EVENT_TYPES, KINDS
from proxy.ops.metrics import ProxyMetrics
from proxy.policies.base import Call
from tests.conftest import REPO
from tests.fakes import make_call, tool_call

ERROR = {"kind": "http_5xx", "http_status": 503, "jsonrpc_code": None, "message": "upstream answered HTTP 503"}

EMISSIONS: dict[str, list[tuple[bool, dict[str, Any]]]] = {
    "call_failed": [(True, {"error": ERROR, "latency_ms": 12.3456, "reason": "http_5xx", "http_status": 503, "client": "addr:127.0.0.1"})],
    "retry": [(True, {"failure": "http_5xx", "delay_ms": 12.5, "error": ERROR})],
    "retry_exhausted": [(True, {"why": "max_attempts", "error": ERROR})],
    "retry_budget_exhausted": [(True, {"failure": "http_5xx", "error": ERROR})],
    "timeout": [(True, {"limit_ms": 100.0, "observing": True})],
    "timeout_observed": [(True, {"limit_ms": 100.0, "observed_ms": 350.5}), (True, {"limit_ms": 100.0, "observed_ms": None, "waited_ms": 1000.0})],
    "breaker_state": [
        (False, {"upstream": "up", "breaker": "up/lookup", "old": "closed", "new": "open", "cause": "5 consecutive failures", "last_failure": "timeout: late", "last_failure_kind": "timeout"}),
        (False, {"upstream": "up", "breaker": "up", "old": "open", "new": "half-open", "cause": None, "last_failure": None, "last_failure_kind": None}),
        (False, {"upstream": "up", "breaker": "up", "old": "closed", "new": "open", "cause": "3 consecutive failures", "last_failure": "http_5xx, HTTP 503"}),  # as v1 first wrote it
    ],
    "circuit_open": [(False, {"upstream": "up", "breaker": "up"})],
    "rate_limited": [(True, {"retry_after": 0.25})],
    "fallback_served": [(True, {"status": "hit"}), (True, {"status": "stale", "age": 40.5})],
    "health_changed": [(False, {"upstream": "up", "old": "unknown", "new": "unhealthy", "cause": "passive", "detail": "connect_error"})],
    "session_lost": [(True, {"recovery": "recovering", "why": None}), (True, {"recovery": "failed", "why": "version_changed"})],
    "session_recovered": [(True, {"generation": 1, "recovery_ms": 3.25, "restored": ["initialized", "subscriptions:2"]})],
    "stream_resumed": [(False, {"upstream": "up", "stream": "get", "from_event_id": True, "generation": 0, "gap_ms": 120.5})],
    "stdio_child_exited": [
        (False, {"upstream": "files", "generation": 3, "pid": 4242, "phase": "running", "reason": "was killed by SIGKILL", "uptime_ms": 1520.5, "cut_off": 2, "restarts": 2}),
        (False, {"upstream": "files", "generation": 1, "pid": None, "phase": "starting", "reason": "the child did not answer initialize within 30s", "uptime_ms": None, "cut_off": 0, "restarts": 0}),
    ],
    "stdio_question_refused": [
        (False, {"upstream": "files", "method": "sampling/createMessage", "why": "several_clients", "clients_waiting": 2}),
        (False, {"upstream": "files", "method": "elicitation/create", "why": "not_askable", "clients_waiting": 1}),
    ],
    "config_reloaded": [(False, {"trigger": "watch", "file_hash": "ab" * 32})],
    "config_rejected": [(False, {"trigger": "api", "errors": ["upstreams[0].retry.max_attempts: must be >= 1 (got 0)"]})],
    "proposal_applied": [(False, {"proposal": "retry-more-up", "title": "retry more", "error_rate_before": 0.25})],
    "proposal_kept": [
        (False, {"proposal": "p", "error_rate_before": 0.25, "error_rate_after": 0.1, "verified": True}),
        (False, {"proposal": "p", "error_rate_before": 0.1, "error_rate_after": 0.3, "verified": False, "note": "the file was edited since"}),
    ],
    "proposal_rolled_back": [(False, {"proposal": "p", "error_rate_before": 0.1, "error_rate_after": 0.3})],
    "trial_started": [(False, {"trial": "0a1b2c3d4e", "proposal": "p", "title": "Raise per_try", "changes": ["up defaults: timeouts.per_try: 2s -> 4s"], "duration_s": 300.0, "estimate": {"timed_out": 25.0, "would_complete": 20.0}})],
    "trial_finished": [(False, {"trial": "0a1b2c3d4e", "proposal": "p", "verdict": "promoted", "reason": "it would have cut 20 of 25 errors", "measured": {"calls": 50.0, "errors_before": 25.0, "errors_after": 5.0}, "estimate": {"timed_out": 25.0}})],
}
"""Each kind as its emission sites report it (`call_ok` is the recorder's own, from its summaries)."""

CASES = [(kind, about_call, fields) for kind, cases in EMISSIONS.items() for about_call, fields in cases]


def the_call() -> Call:
    return make_call(tool_call("lookup", 7, query="q", api_key="s3cret"))


def serving_recorder(include_params: bool = False) -> EventRecorder:
    """A recorder as serving runs it: not strict (the suite's conftest makes recorders strict by default)."""
    recorder = EventRecorder(EventBus(), include_params=include_params)
    recorder.strict = False
    return recorder


def strict_recorder(include_params: bool = False) -> EventRecorder:
    recorder = EventRecorder(EventBus(), include_params=include_params)
    recorder.strict = True
    return recorder


def published(recorder: EventRecorder) -> list[dict[str, Any]]:
    return [{k: v for k, v in event.items() if k not in ("id", "ts")} for event in recorder.bus.recent()]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = event_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_kind_has_a_type_and_an_emission_here() -> None:
    assert tuple(KINDS) == EVENT_TYPES and len(EVENT_TYPES) == 24
    assert set(EMISSIONS) == set(EVENT_TYPES) - {"call_ok"}
    for cls in KINDS.values():
        frozen = cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        kw_only = all(f.kw_only for f in dataclasses.fields(cls))
        assert (frozen, kw_only, "__slots__" in cls.__dict__) == (True, True, True), cls
        assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("), f"{cls.__name__} says when it fires"


@pytest.mark.parametrize("include_params", [False, True])
@pytest.mark.parametrize(("kind", "about_call", "fields"), CASES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(CASES)])
def test_each_emission_is_typed_and_its_record_is_the_untyped_v1_record(
    kind: str, about_call: bool, fields: dict[str, Any], include_params: bool, validator: jsonschema.Draft202012Validator
) -> None:
    """The same keys, values and order as v1's untyped record (`make_event`): the wire format did not change."""
    call = the_call() if about_call else None
    strict, serving = strict_recorder(include_params), serving_recorder(include_params)
    for recorder in (strict, serving):
        if kind == "call_failed":
            rest = {k: v for k, v in fields.items() if k not in ("error", "latency_ms")}
            recorder.call_failed(call, fields["error"], fields["latency_ms"], **rest)  # type: ignore[arg-type]
        else:
            recorder.policy_event(kind, call, **fields)
    (record,), (served,) = published(strict), published(serving)
    event = build(kind, call, dict(fields), include_params)
    assert type(event) is KINDS[kind] and isinstance(event, CallEvent) == about_call
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.upstream = "other"  # type: ignore[misc]
    include = include_params and about_call and kind not in ("session_lost", "session_recovered")
    untyped = make_event(kind, call, include_params=include, **fields)
    checked = checked_record(kind, call, fields, include_params)
    assert list(record.items()) == list(event.as_record().items()) == list(untyped.items())
    assert list(served.items()) == list(checked.items()) == list(record.items()) and serving.malformed == 0
    validator.validate({**record, "id": 1, "ts": 1.5})
    if call is not None:
        assert ("params" in record, "params_hash" in record) == (include, not include)
        assert "s3cret" not in json.dumps(record)


def test_call_ok_summaries_are_typed_and_fit_the_schema(validator: jsonschema.Draft202012Validator) -> None:
    recorder = strict_recorder()
    recorder.call_finished(the_call(), "ok", 3.0)
    recorder.call_finished(make_call(), "upstream_timeout", 2000.0)
    assert recorder.flush_summaries() == 2
    records = recorder.bus.recent()
    for record in records:
        validator.validate(record)
    assert [(r["type"], r["method"], r["tool"], r["ok"], r["latency_mean_ms"]) for r in records] == [
        ("call_ok", "tools/call", "lookup", 1, 3.0),
        ("call_ok", "tools/list", None, 0, None),
    ]


MALFORMED = [
    ("retri", True, {}, "unknown event kind 'retri'"),
    ("retry", True, {"failure": "x", "delay_ms": 1.0, "error": ERROR, "backoff": 2}, "retry: unknown field(s) backoff"),
    ("retry", True, {"failure": "x", "error": ERROR}, "retry: missing field(s) delay_ms"),
    ("retry", True, {"failure": "x", "delay_ms": 1.0}, "retry: missing field(s) error"),
    ("retry", True, {"failure": "x", "delay_ms": 1.0, "error": {"kind": "x", "message": "m"}}, "retry: error must have exactly"),
    ("retry", False, {"failure": "x", "delay_ms": 1.0, "error": ERROR}, "retry is about a call: the call is missing"),
    ("timeout", True, {"limit_ms": 1.0, "observing": True, "upstream": "up"}, "timeout: unknown field(s) upstream"),
    ("circuit_open", True, {"breaker": "up"}, "circuit_open is about no call: a call was given"),
    ("circuit_open", False, {"breaker": "up"}, "circuit_open: missing field(s) upstream"),
    ("circuit_open", False, {"upstream": "up", "breaker": "up", "method": "x"}, "circuit_open: unknown field(s) method"),
    ("stdio_question_refused", False, {"upstream": "up", "why": "nobody_waiting", "clients_waiting": 0}, "stdio_question_refused: missing field(s) method"),
]


@pytest.mark.parametrize(("kind", "about_call", "fields", "problem"), MALFORMED, ids=[m[3][:40] for m in MALFORMED])
def test_a_malformed_emission_raises_under_strict_and_is_published_untyped_when_serving(
    kind: str, about_call: bool, fields: dict[str, Any], problem: str
) -> None:
    call = the_call() if about_call else None
    with pytest.raises(MalformedEvent, match="^" + problem.replace("(", r"\(").replace(")", r"\)")):
        strict_recorder().policy_event(kind, call, **fields)
    serving = serving_recorder()
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            serving.policy_event(kind, call, **fields)
    assert published(serving) == [make_event(kind, call, include_params=False, **fields)] * 3
    assert serving.malformed == 3
    (line,) = [entry for entry in logs if entry["event"] == "event_malformed"]  # once per kind and problem
    assert (line["log_level"], line["kind"]) == ("error", kind) and line["problem"].startswith(problem)


def test_the_exported_schema_is_the_generated_one() -> None:
    exported = json.loads((REPO / "config" / "events.schema.json").read_text())
    assert exported == event_schema(), "run: .venv/bin/mcp-resilience-proxy schema --events > config/events.schema.json"


def test_every_kind_and_every_field_it_adds_is_described(validator: jsonschema.Draft202012Validator) -> None:
    schema = event_schema()
    assert all("description" in prop for prop in schema["properties"].values())
    assert [block["if"]["properties"]["type"]["const"] for block in schema["allOf"]] == list(EVENT_TYPES)
    envelope = set(schema["properties"])
    for block in schema["allOf"]:
        then = block["then"]
        assert then["description"]
        added = {name: prop for name, prop in then["properties"].items() if name not in envelope}
        assert all("description" in prop for prop in added.values()), block["if"]
    first = {"v": 1, "id": 1, "ts": 1.0, "type": "retry", "upstream": "up", "method": "tools/list", "tool": None,
             "call_id": 1, "attempt": 1, "latency_ms": None, "policy": "default", "error": ERROR,
             "signature": "0123456789ab", "idempotent": True, "params_hash": "00", "failure": "x", "delay_ms": 1.0}  # fmt: skip
    validator.validate(first)
    for wrong in ({"signature": "not-hex"}, {"error": None}, {"call_id": None}, {"delay_ms": "soon"}, {"id": 0}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate({**first, **wrong})
    without = {k: v for k, v in first.items() if k != "idempotent"}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(without)


def _emissions(tree: ast.AST) -> list[tuple[int, str, set[str], bool]]:
    """(line, kind, keyword names, has a ``**`` splat) of each ``x.policy_event("kind", ...)`` and ``x.call_failed(...)``."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        names = {k.arg for k in node.keywords if k.arg is not None}
        splat = any(k.arg is None for k in node.keywords)
        if node.func.attr == "policy_event" and node.args and isinstance(node.args[0], ast.Constant):
            found.append((node.lineno, str(node.args[0].value), names, splat))
        elif node.func.attr == "call_failed" and len(node.args) == 3:
            found.append((node.lineno, "call_failed", names | {"error", "latency_ms"}, splat))
    return found


def test_every_emission_site_in_the_proxy_names_a_kind_and_only_its_fields() -> None:
    """Statically: a kind that exists, no field it lacks, every field it needs (unless passed as ``**fields``,
    then the tests above and the scenarios check them). A kind about no call that declares the envelope's
    `method` again (a stdio child's refused question) passes it as its own."""
    seen: set[str] = set()
    envelope = {f.name: f for f in dataclasses.fields(Event)}
    for path in sorted((REPO / "proxy").rglob("*.py")):
        for line, kind, names, splat in _emissions(ast.parse(path.read_text())):
            where = f"{path.relative_to(REPO)}:{line}"
            assert kind in KINDS, f"{where}: unknown event kind {kind!r}"
            fields = {f.name: f for f in dataclasses.fields(KINDS[kind])}
            narrowed = {"method"} if fields["method"] is not envelope["method"] and not issubclass(KINDS[kind], CallEvent) else set()
            own = {n for n in fields if n not in {f.name for f in dataclasses.fields(CallEvent)}} | narrowed
            assert names <= own | {"error", "latency_ms", "upstream"}, f"{where}: {kind} has no field(s) {names - own}"
            required = {n for n in own if fields[n].default is dataclasses.MISSING}
            assert splat or required <= names, f"{where}: {kind} needs {required - names}"
            seen.add(kind)
    assert seen == set(EVENT_TYPES) - {"call_ok"}, set(EVENT_TYPES) - seen


def test_absent_fields_are_left_out_and_none_is_null() -> None:
    call = the_call()
    observed = build("timeout_observed", call, {"limit_ms": 1.0, "observed_ms": 2.0})
    assert observed.waited_ms is ABSENT and "waited_ms" not in observed.as_record()  # type: ignore[attr-defined]
    gave_up = build("timeout_observed", call, {"limit_ms": 1.0, "observed_ms": None, "waited_ms": 3.0}).as_record()
    assert (gave_up["observed_ms"], gave_up["waited_ms"]) == (None, 3.0)
    no_params = make_call(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}')
    assert build("rate_limited", no_params, {"retry_after": 1.0}, include_params=True).as_record()["params"] is None
    assert isinstance(build("config_reloaded", None, {"trigger": "api", "file_hash": "x"}), Event)


def test_the_metrics_observer_ignores_the_stdio_kinds() -> None:
    """The supervisor reports a child's end and a refused question to every observer; the metrics have series
    of their own for children (`mcp_proxy_stdio_child_*`, read from the supervisor), so these move none."""
    metrics = ProxyMetrics()

    def samples() -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for family in metrics.registry.collect() for s in family.samples]

    before = samples()
    for kind in ("stdio_child_exited", "stdio_question_refused"):
        for _, fields in EMISSIONS[kind]:
            metrics.policy_event(kind, None, **fields)
    assert samples() == before
