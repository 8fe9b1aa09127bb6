"""The embedded analyzer: /proposals, and auto-apply inside operator bounds with rollback when worse."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from proxy.analyzer import Change, Match, Proposal
from proxy.analyzer.proposal import Effect
from proxy.analyzer.embedded import error_rate, within_bounds
from proxy.app import ProxyServer, running_proxy
from proxy.config.model import AnalyzerConfig, load_config
from tests.fault_upstream import FaultUpstream

READ = {"jsonrpc": "2.0", "method": "resources/read", "params": {"uri": "demo://facts"}}

UPSTREAM_DELAY_S = 0.42
"""How long the upstream takes to answer a read: longer than the 200 ms per_try, so every read times out."""

PROPOSED_PER_TRY = "750ms"
"""The timeouts rule's answer to reads observed at 420 ms: p95 x 1.2 = 504 ms, rounded up to the next
readable duration (stats._NICE_SECONDS: ... 400ms, 500ms, 750ms, 1s ...). The delay sits just past 500 / 1.2
on purpose: once applied, 750ms leaves the 420 ms reads 330 ms for the proxy's own overhead (a 400 ms
delay would give 500ms and only 100 ms of slack)."""


def proposal(key: str, value: Any) -> Proposal:
    return Proposal(
        rule="timeouts", target="up", title="t", rationale="r", evidence={}, effect=Effect("e"),
        confidence="low", confidence_reason="", changes=(Change("up", Match("resources/read"), key, value, None),),
        advisory=False, diff="",
    )


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [("timeouts.per_try", "500ms", True), ("timeouts.per_try", "5s", False), ("retry.max_attempts", 2, False)],
)
def test_auto_apply_only_inside_declared_bounds(key: str, value: Any, allowed: bool) -> None:
    config = AnalyzerConfig.model_validate({"auto_apply": {"enabled": True, "bounds": {"timeouts.per_try": {"min": "100ms", "max": "2s"}}}})
    assert within_bounds(proposal(key, value), config) is allowed


def summary(ts: float, **outcomes: int) -> dict[str, Any]:
    return {"type": "call_ok", "ts": ts, "calls": sum(outcomes.values()), "ok": outcomes.get("ok", 0), "outcomes": outcomes}


def test_the_error_rate_counts_only_the_upstreams_failures() -> None:
    """Failures of the upstream (a verdict's reason or its own 5xx/429) over themselves plus successes;
    application answers and the client's or the proxy's own outcomes are neither."""
    events = [summary(
        1.0, ok=50, upstream_timeout=4, upstream_unavailable=1, upstream_bad_response=1, upstream_stream_broken=1,
        circuit_open=1, retry_budget_exhausted=1, http_5xx=1, http_429=0, jsonrpc_error=30, http_4xx=5, rate_limited=20,
        client_overloaded=3, proxy_overloaded=2, unsendable_request=1, cancelled=4, session_deleted=2, drained=1,
        unwatched=3, unread_event=1, oversized_event=1, resumable=1,
    )]  # fmt: skip
    assert error_rate(events, 0.0, 2.0) == (10 / 60, 60)
    assert error_rate(events, 1.5, 2.0) == (0.0, 0)  # outside the span


def test_a_burst_of_client_mistakes_makes_a_change_look_neither_worse_nor_better() -> None:
    before = [summary(1.0, ok=90, upstream_timeout=10)]
    worse_clients = [summary(1.0, ok=90, upstream_timeout=10, jsonrpc_error=500, rate_limited=300, session_deleted=50, client_overloaded=40)]
    assert error_rate(before, 0.0, 2.0) == error_rate(worse_clients, 0.0, 2.0) == (0.1, 100)


def test_an_old_summary_without_outcomes_counts_every_call_not_ok() -> None:
    assert error_rate([{"type": "call_ok", "ts": 1.0, "calls": 40, "ok": 4}], 0.0, 2.0) == (0.9, 40)


def file_config(upstream_url: str) -> dict[str, Any]:
    return {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "reload": {"watch": False, "interval": "1h"},
        # No background observation: `observe()` publishes the observations with exact latencies instead.
        "events": {"observe_timeouts": "0s", "log": False, "summary_interval": "1h"},
        "analyzer": {
            "enabled": True,
            "interval": "1h",
            "auto_apply": {"enabled": True, "bounds": {"timeouts.per_try": {"min": "100ms", "max": "2s"}}, "verify_after": "30s", "min_calls": 10},
        },
        "upstreams": [
            {
                "name": "docs", "url": upstream_url, "health": {"active": {"enabled": False}},
                "timeouts": {"per_try": "200ms", "total": "1s"}, "retry": {"max_attempts": 1}, "breaker": {"enabled": False},
                # The lists are the successes of the error rate, nothing here measures their time (and they open
                # the connections the reads then use: see `learn`).
                "rules": [{"match": {"method": "tools/list"}, "timeouts": {"per_try": "30s", "total": "30s"}}],
            }
        ],
    }


async def burst(session: aiohttp.ClientSession, url: str, payload: dict[str, Any], count: int) -> list[int]:
    async def one(n: int) -> int:
        async with session.post(url, json={**payload, "id": n}) as response:
            await response.read()
            return response.status

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def observe(proxy: ProxyServer, observed_ms: float) -> int:
    """Publish, for every timed-out read, the `timeout_observed` event the proxy's watcher would have.

    The watcher measures the latency on the wall clock, so what the analyzer proposes would depend on
    how busy the machine is: 25 reads answered after 400 ms were seen at 405-440 ms, and past 416.7 ms
    (500 / 1.2) the proposal became 750ms instead of 500ms. The test is about auto-apply, not about
    that measurement (tests/test_analyzer_e2e.py runs the real one), so the observations carry the
    upstream's own delay: exactly what a watcher on an idle, infinitely fast machine would record.
    """
    timeouts = [e for e in proxy.bus.recent() if e["type"] == "timeout"]
    for timeout in timeouts:
        envelope = {k: v for k, v in timeout.items() if k not in ("id", "ts", "type", "observing")}
        proxy.bus.publish({**envelope, "type": "timeout_observed", "observed_ms": observed_ms})
    return len(timeouts)


async def learn(proxy: ProxyServer, session: aiohttp.ClientSession) -> float:
    """25 timed-out reads (observed at the upstream's delay) and 25 good lists, summarized.

    The outcomes are exact: the upstream sleeps 420 ms before it answers a read, so no read can beat
    the 200 ms per_try, and with one attempt each, 25 reads are 25 timed-out attempts; the summaries
    make the error rate before the change 25 failed of 50 calls. Returns the wall time after the last
    event, the "now" of the analyzer's first step: the verification compares the spans before and after
    it on event timestamps, and the span before (`verify_after`, 30 s) holds every event published here
    (each call is bounded by its 1 s total timeout).
    """
    # The lists first: their 25 connections to the upstream (opened under the lists' own long per_try) wait
    # in the pool for the same 25 client connections, so no read spends its 200 ms connecting (a 502, "not
    # sent", when 25 connections opened at once took longer on a loaded machine).
    assert await burst(session, proxy.url + "/mcp", {"jsonrpc": "2.0", "method": "tools/list"}, 25) == [200] * 25
    assert await burst(session, proxy.url + "/mcp", READ, 25) == [504] * 25
    assert observe(proxy, UPSTREAM_DELAY_S * 1000) == 25
    proxy.events.flush_summaries()
    return time.time()


async def test_auto_apply_keeps_a_change_that_helps(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("resources/read", delay=UPSTREAM_DELAY_S)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(file_config(upstream.url)))
    async with running_proxy(load_config(path.read_text(), {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        assert proxy.analyzer is not None
        now = await learn(proxy, session)
        proxy.analyzer.step(now)
        applied = [e for e in proxy.bus.recent() if e["type"] == "proposal_applied"]
        assert len(applied) == 1 and applied[0]["error_rate_before"] == 0.5
        assert f"per_try: {PROPOSED_PER_TRY}" in path.read_text()
        async with session.post(proxy.admin_url + "/reload") as response:
            assert response.status == 200
        # The same 420 ms reads under the new 750ms per_try: only 330 ms of proxy overhead could fail one.
        assert await burst(session, proxy.url + "/mcp", READ, 25) == [200] * 25
        proxy.events.flush_summaries()
        proxy.analyzer.step(now + 31)
        async with session.get(proxy.admin_url + "/proposals") as response:
            document = await response.json()
    (kept,) = [e for e in proxy.bus.recent() if e["type"] == "proposal_kept"]
    assert (kept["error_rate_after"], kept["verified"]) == (0.0, True)
    assert f"per_try: {PROPOSED_PER_TRY}" in path.read_text()
    assert document["auto_apply"] is True and document["verifying"] is None


@pytest.mark.parametrize(
    ("calls", "failed", "after"),
    [(40, 36, 0.9), (3, 3, 1.0)],
    ids=["worse", "worse-on-too-few-calls"],
)
async def test_auto_apply_rolls_back_a_change_that_hurts(upstream: FaultUpstream, tmp_path: Path, calls: int, failed: int, after: float) -> None:
    """Worse after the change: rolled back. Also on 3 calls where min_calls is 10: too few to verify, enough
    to doubt, and the operator's own file is the safe side (never kept on a sample that looked worse)."""
    upstream.fault("resources/read", delay=UPSTREAM_DELAY_S)
    path = tmp_path / "proxy.yaml"
    original = yaml.safe_dump(file_config(upstream.url))
    path.write_text(original)
    async with running_proxy(load_config(original, {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        assert proxy.analyzer is not None
        now = await learn(proxy, session)
        proxy.analyzer.step(now)
        assert f"per_try: {PROPOSED_PER_TRY}" in path.read_text()
        outcomes = {"ok": calls - failed, "upstream_timeout": failed} if calls > failed else {"upstream_timeout": failed}
        proxy.bus.publish({"v": 1, "type": "call_ok", "upstream": "docs", "method": "tools/list", "tool": None, "calls": calls, "ok": calls - failed, "outcomes": outcomes})
        proxy.analyzer.step(now + 31)
    (rolled,) = [e for e in proxy.bus.recent() if e["type"] == "proposal_rolled_back"]
    assert (rolled["error_rate_before"], rolled["error_rate_after"]) == (0.5, after)
    assert path.read_text() == original


async def test_proposals_endpoint_says_when_the_analyzer_is_off(upstream: FaultUpstream) -> None:
    from tests.conftest import proxy_config

    async with running_proxy(proxy_config(upstream.url)) as proxy, aiohttp.ClientSession() as session:
        async with session.get(proxy.admin_url + "/proposals") as response:
            assert response.status == 404
            assert "analyzer" in (await response.json())["error"]


async def test_a_rollback_never_overwrites_an_operators_later_edit(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("resources/read", delay=UPSTREAM_DELAY_S)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(file_config(upstream.url)))
    path.chmod(0o600)
    async with running_proxy(load_config(path.read_text(), {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        assert proxy.analyzer is not None
        now = await learn(proxy, session)
        proxy.analyzer.step(now)
        edited = path.read_text() + "# the operator was here\n"
        path.write_text(edited)
        proxy.bus.publish({"v": 1, "type": "call_ok", "upstream": "docs", "method": "tools/list", "tool": None, "calls": 40, "ok": 4, "outcomes": {"ok": 4, "upstream_timeout": 36}})
        proxy.analyzer.step(now + 31)
    (kept,) = [e for e in proxy.bus.recent() if e["type"] == "proposal_kept"]
    assert kept["verified"] is False and "edited since" in kept["note"]
    assert path.read_text() == edited and path.stat().st_mode & 0o777 == 0o600


def test_the_proposals_document_never_shows_credentials_from_the_file(tmp_path: Path) -> None:
    from proxy.analyzer.embedded import EmbeddedAnalyzer
    from proxy.events.recorder import EventBus, EventRecorder

    bus = EventBus(100, 10)
    analyzer = EmbeddedAnalyzer(tmp_path / "proxy.yaml", AnalyzerConfig.model_validate({}), bus, EventRecorder(bus, False, True, False))
    diff = "@@ -1,3 +1,3 @@\n   - name: up\n     url: http://user:Pw0rd4xyz@h/mcp?token=Tk5abcdef\n-    per_try: 2s\n+    per_try: 4s\n"
    analyzer.proposals = [Proposal(
        rule="timeouts", target="up", title="t", rationale="r", evidence={}, effect=Effect("e"), confidence="low",
        confidence_reason="", changes=(Change("up", None, "timeouts.per_try", "4s", "2s"),), diff=diff,
    )]  # fmt: skip
    shown = str(analyzer.document())
    assert "Pw0rd4xyz" not in shown and "Tk5abcdef" not in shown and "+    per_try: 4s" in shown
