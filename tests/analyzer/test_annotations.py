"""A tool its server declares safe to retry, which the proxy does not retry (annotations not trusted),
fails in ways a retry fixes: `idempotent: true` for exactly that tool, and nothing else gets past the guard."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.analyzer import Analysis, Change, Match, Proposal, analyze
from proxy.analyzer.engine import unsafe_retries
from proxy.config.model import load_config
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import Stream


def run(events: list[dict[str, Any]], config: str = sc.CONFIG) -> list[Proposal]:
    return analyze(events, config, env={})[1]


def test_a_flaky_read_only_tool_is_declared_idempotent_in_a_rule_of_its_own() -> None:
    [p] = run(sc.declared_read_only())
    assert (p.rule, p.title) == ("declared_idempotent", "Retry api get_weather: its server declares it read-only")
    assert p.changes == (Change("api", Match(tool="get_weather"), "idempotent", True, None),)
    assert p.rationale.startswith(
        "api declares get_weather readOnlyHint true (30 call events carried the declaration), but trust_annotations "
        "is off, so the proxy treats it as not idempotent and never retries it. 30 of its 230 calls failed"
    )
    assert p.evidence["declared"] == {"readOnlyHint": {"true": 30}}  # in the names tools/list uses
    # no retry data for this tool or its upstream: the estimate says what it assumed
    assert p.effect.numbers == {"failed": 30, "would_succeed": 29, "retry_success": 0.87, "max_attempts": 3}
    assert "from an assumption: no retry data; failures independent" in p.effect.text
    [material] = p.statistics
    assert (material.k, material.n, material.threshold) == (30, 230, 0.01)
    assert [line for line in (p.diff or "").splitlines() if line[:1] in "+-"][2:] == [
        "+      - match: {tool: get_weather}", "+        idempotent: true",
    ]


def test_the_estimate_uses_retry_data_where_it_exists() -> None:
    events = sc.declared_read_only()
    other = Stream(first_id=1000)
    other.call_ok(100.0, tool="search", ok=50, ok_by_attempt={1: 41, 2: 9})
    for i in range(3):
        other.retry_exhausted(10.0 + i, "http_5xx")
    [p] = run(events + other.events)
    assert p.effect.numbers["retry_success"] == 0.75  # 9 of 12 retried calls of api's other tools recovered
    assert "from the retries of api's other calls (9 of 12 retried calls recovered)" in p.effect.text


def test_an_idempotent_hint_counts_as_the_declaration_too() -> None:
    [p] = run(sc.declared_read_only(idempotent_hint=True))
    assert p.title == "Retry api get_weather: its server declares it idempotent"
    assert "declares get_weather idempotentHint true" in p.rationale


@pytest.mark.parametrize(
    "hints",
    [
        {},  # nothing declared
        {"read_only_hint": True, "idempotent_hint": False},  # declared not idempotent
        {"idempotent_hint": True, "destructive_hint": True},  # declared destructive
        {"read_only_hint": False},
    ],
    ids=["undeclared", "idempotent-false", "destructive", "not-read-only"],
)
def test_never_for_a_tool_not_declared_safe(hints: dict[str, bool]) -> None:
    s = Stream()
    s.call_ok(100.0, tool="get_weather", ok=200, calls=230)
    for i in range(30):
        s.call_failed(1.0 + i, "http_5xx", tool="get_weather", idempotent=False, **hints)
    assert run(s.events) == []


def test_never_when_one_event_contradicts_the_declaration() -> None:
    events = sc.declared_read_only()
    events[-1]["idempotent_hint"] = False
    assert run(events) == []


@pytest.mark.parametrize("kind", ["client_error", "tool_error", "server_error", "rate_limited", "circuit_open"])
def test_failures_a_retry_cannot_fix_never_argue_for_retries(kind: str) -> None:
    """Application answers (the same request gets the same answer), the client's own refusals and the
    breaker's refusals: none is a reason to retry."""
    assert run(sc.declared_read_only(kind=kind)) == []


def test_quiet_when_the_failures_are_not_material() -> None:
    assert run(sc.declared_read_only(failures=2, calls_ok=2000)) == []


def test_quiet_when_annotations_are_trusted_or_the_operator_said_no() -> None:
    trusted = sc.CONFIG.replace("    retry:\n", "    trust_annotations: true\n    retry:\n", 1)
    assert load_config(trusted, {}).upstreams[0].trust_annotations
    assert run(sc.declared_read_only(), trusted) == []
    refused = sc.CONFIG + "      - match: {tool: get_weather}\n        idempotent: false\n"
    assert run(sc.declared_read_only(), refused) == []


def test_the_guard_allows_exactly_the_declared_case() -> None:
    declared = Analysis.from_events(sc.declared_read_only(), window_s=None)
    undeclared = Analysis.from_events(sc.declared_read_only(idempotent_hint=False), window_s=None)
    before = load_config(sc.CONFIG, {})
    rule = "      - match: {tool: get_weather}\n"
    idempotent = load_config(sc.CONFIG + rule + "        idempotent: true\n", {})
    more = load_config(sc.CONFIG + rule + "        idempotent: true\n        retry: {max_attempts: 5}\n", {})
    wider = load_config(sc.CONFIG + rule + "        idempotent: true\n        retry: {retry_on: [session_expired]}\n", {})
    assert unsafe_retries(declared, before, idempotent) == []
    assert unsafe_retries(declared, before, more) == ["api get_weather"]  # declared safe, yet no more attempts
    assert unsafe_retries(declared, before, wider) == ["api get_weather"]
    assert unsafe_retries(undeclared, before, idempotent) == ["api get_weather"]


def test_timeouts_the_timeouts_rule_fixes_are_not_a_retrys_to_fix() -> None:
    """A declared read-only tool that is slow (every call answers at 1.4 s under a 1 s per_try, as seen):
    the fix is the longer timeout; a retry under the same limit would only time out again."""
    s = Stream()
    s.call_ok(100.0, tool="get_weather", ok=200, calls=230, latencies_ms=[300.0] * 200)
    for i in range(30):
        call = s.call_id()
        s.timeout(1.0 + i, 2000.0, tool="get_weather", idempotent=False, call_id=call, read_only_hint=True)
        s.call_failed(1.01 + i, "timeout", tool="get_weather", idempotent=False, call_id=call, read_only_hint=True)
        s.timeout_observed(2.5 + i, 2000.0, 2800.0, tool="get_weather", idempotent=False, call_id=call, read_only_hint=True)
    assert [p.rule for p in run(s.events)] == ["timeouts"]
