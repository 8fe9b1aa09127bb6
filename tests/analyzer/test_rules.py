"""Each recorded situation yields exactly the expected proposal (id, title, change, estimated effect), and
healthy traffic yields none."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from proxy.analyzer import Analysis, Change, Match, Proposal, analyze, rules_upstream
from proxy.analyzer.engine import unsafe_retries
from proxy.analyzer.yamledit import edit_text
from proxy.config.model import load_config
from tests.analyzer import scenarios as sc
from tests.analyzer.builders import T0, Stream

ENV: dict[str, str] = {}


def run(events: list[dict[str, Any]], config: str = sc.CONFIG) -> list[Proposal]:
    return analyze(events, config, env=ENV)[1]


def diff_lines(proposal: Proposal) -> list[str]:
    """The lines the diff removes and adds."""
    assert proposal.diff is not None
    return [line for line in proposal.diff.splitlines()[2:] if line[:1] in "+-"]


def test_healthy_traffic_yields_no_proposal() -> None:
    analysis, proposals = analyze(sc.healthy(), sc.CONFIG, env=ENV)
    assert proposals == []
    assert analysis.targets  # it did look at the traffic


def test_timeouts_finishing_shortly_after_the_limit_raise_per_try_in_a_new_rule() -> None:
    [p] = run(sc.slow_search())
    assert (p.id, p.rule, p.title) == ("183f50df40", "timeouts", "Raise per_try for api search from 2s to 4s")
    assert p.changes == (Change("api", Match(tool="search"), "timeouts.per_try", "4s", "2s"),)
    assert p.effect.text == (
        "with per_try 4s, 90% of the 40 timed-out attempts would have completed "
        "(36 of 40; the others took longer or were not observed)"
    )
    assert p.effect.numbers == {"timed_out": 40, "would_complete": 36, "percent": 90, "new_per_try_s": 4.0, "refused_by_breaker": 0}
    assert p.evidence["observed_p95_ms"] == 2765.0  # 2100 + 20 x 33.25
    assert (p.evidence["timeouts"], p.evidence["observed"], p.evidence["unobserved"]) == (40, 36, 4)
    assert p.evidence["example_ids"] == [2, 4, 6, 3, 5]
    assert (p.evidence["window_start"], p.evidence["window_end"]) == (T0 + 1, T0 + 100)
    completes, material = p.statistics
    assert (completes.k, completes.n, round(completes.bound(), 3), completes.threshold) == (36, 40, 0.795, 0.5)
    assert (material.k, material.n, round(material.bound(), 3), material.threshold) == (40, 240, 0.131, 0.01)
    assert p.confidence == "high"  # both still hold at one-sided 99.5%
    assert p.confidence_reason == (
        "timed-out attempts that would complete: 36/40 (90.0%), 95% lower bound 79.5% >= 50%; calls hurt (timed out, "
        "or refused by the breaker the timeouts opened): 40/240 (16.7%), 95% lower bound 13.1% >= 1% (holds at one-sided 99.5%)"
    )
    assert diff_lines(p) == ["+      - match: {tool: search}", "+        timeouts:", "+          per_try: 4s"]


def test_timeouts_under_a_glob_rule_carve_out_an_exact_rule_that_copies_it() -> None:
    [p] = run(sc.slow_reports())
    assert p.title == "Raise per_try for api report_pdf from 20s to 45s"
    carved = Match(tool="report_pdf")  # the glob rule report_* also governs other tools: they stay as they are
    assert p.changes == (
        Change("api", carved, "timeouts.per_try", "45s", "20s"),
        Change("api", carved, "timeouts.total", "90s", "10s"),
    )
    assert p.changes[0].match is not None and p.changes[0].match.inherit_from == Match(tool="report_*")
    assert p.effect.numbers == {"timed_out": 25, "would_complete": 25, "percent": 100, "new_per_try_s": 45.0, "refused_by_breaker": 0}
    assert p.confidence == "high"
    # the new rule copies what report_* gave report_pdf (its `idempotent: true`), then changes the limits
    assert diff_lines(p) == [
        "+      - match: {tool: report_pdf}", "+        timeouts:", "+          per_try: 45s", "+          total: 90s",
        "+        idempotent: true",
    ]


def test_timeouts_unobserved_or_far_past_the_limit_are_left_alone() -> None:
    events = [e for e in sc.slow_search() if e["type"] != "timeout_observed"]
    assert run(events) == []  # nobody saw them finish: raising the limit would be a guess
    stuck = sc.slow_search()
    for e in stuck:
        if e["type"] == "timeout_observed" and e["observed_ms"] is not None:
            e["observed_ms"] += 10_000  # 12s+ against a 2s limit: slow is not "shortly past"
    assert run(stuck) == []


def test_retries_that_never_succeed_lower_max_attempts() -> None:
    [p] = run(sc.retries_never_help())
    assert (p.id, p.title) == ("e79601ea88", "Lower max_attempts for api flaky from 3 to 2")
    assert p.changes == (Change("api", Match(tool="flaky"), "retry.max_attempts", 2, 3),)
    assert p.effect.text == (
        "the 25 exhausted calls made 50 retries, none successful; with max_attempts 2, "
        "25 of those attempts would not have been sent, with the same answers to clients"
    )
    assert p.effect.numbers == {"exhausted": 25, "retries_made": 50, "attempts_saved": 25, "lost_recoveries": 0}
    helps, material = p.statistics  # 0 of 25: at most 9.8% would recover (95%), under the 15% ceiling
    assert (helps.k, helps.n, round(helps.bound(), 3), helps.side) == (0, 25, 0.098, "upper")
    assert (material.k, material.n) == (25, 125)
    assert diff_lines(p) == ["+      - match: {tool: flaky}", "+        retry:", "+          max_attempts: 2"]


def test_successes_on_the_last_attempt_raise_max_attempts_within_the_budget() -> None:
    [p] = run(sc.late_recovery())
    assert (p.id, p.title) == ("089569e82f", "Raise max_attempts for api slow_start from 3 to 5")
    assert p.changes == (Change("api", Match(tool="slow_start"), "retry.max_attempts", 5, 3),)
    assert p.effect.numbers == {"exhausted": 12, "would_succeed": 11, "last_attempt_success": 0.714}
    assert "about 11 of the 12 exhausted calls would have succeeded with max_attempts 5" in p.effect.text
    assert "retry budget (ratio 0.2 of requests over 10s, plus 5/s), which refused none" in p.rationale


def test_more_attempts_are_not_proposed_when_the_retry_budget_ran_out() -> None:
    events = sc.late_recovery()
    stream = Stream(first_id=1000)
    events.append(stream.retry_budget_exhausted(50.0, "server_error", tool="slow_start"))
    assert run(events) == []


def test_more_retries_for_a_non_idempotent_tool_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """The events say idempotent=false: no proposal may make the proxy retry it more, whatever the numbers."""
    with caplog.at_level(logging.WARNING, logger="proxy.analyzer.engine"):
        assert run(sc.late_recovery(idempotent=False)) == []
    assert "would retry calls not known to be idempotent: api slow_start" in caplog.text


def test_more_retries_under_a_glob_rule_never_reach_another_tool_it_matches() -> None:
    events = sc.late_recovery(tool="fetch_page")
    [p] = run(events)  # fetch_page (idempotent) gets the proposal, on an exact rule carved out of fetch_*
    assert p.changes == (Change("api", Match(tool="fetch_page"), "retry.max_attempts", 5, 3),)
    other = Stream(first_id=1000)
    events.append(other.call_failed(30.0, "http_5xx", tool="fetch_mail", idempotent=False))
    [q] = run(events)  # fetch_mail (not idempotent) also matches fetch_*, and is left as it was
    assert q.changes == p.changes


def test_the_idempotency_guard_compares_effective_retry_policies() -> None:
    analysis = Analysis.from_events(sc.late_recovery(idempotent=False), window_s=None)
    before = load_config(sc.CONFIG, ENV)
    more = load_config(sc.CONFIG + "      - match: {tool: slow_start}\n        retry: {max_attempts: 5}\n", ENV)
    fewer = load_config(sc.CONFIG + "      - match: {tool: slow_start}\n        retry: {max_attempts: 2}\n", ENV)
    wider = load_config(sc.CONFIG + "      - match: {tool: slow_start}\n        retry: {retry_on: [session_expired]}\n", ENV)
    assert unsafe_retries(analysis, before, more) == ["api slow_start"]
    assert unsafe_retries(analysis, before, fewer) == []
    assert unsafe_retries(analysis, before, wider) == ["api slow_start"]


def test_upstream_429s_propose_a_rate_limit_at_the_accepted_rate() -> None:
    [p] = run(sc.throttled())
    assert (p.id, p.title) == ("95b7143180", "Rate-limit calls to api at 12/s")
    assert p.changes == (
        Change("api", None, "rate_limit.rate", 12, None),
        Change("api", None, "rate_limit.key", "upstream", None),
    )
    assert p.effect.numbers == {"http_429": 30, "accepted_per_s": 12.0, "rate": 12, "per_s": 1.0}
    assert (p.evidence["windows"], p.evidence["window_seconds"]) == (3, 30.0)  # the quiet 4th window is left out
    # inserted before `rules`, and the comment that introduces the rules stays with them
    assert diff_lines(p) == ["+    rate_limit:", "+      rate: 12", "+      key: upstream"]
    assert "+      key: upstream\n \n     # Overrides per tool.\n     rules:" in (p.diff or "")


def test_a_proposed_rate_brings_its_own_burst_when_the_files_would_undo_it() -> None:
    """Lowering the rate under a burst of 200 would still let 200 calls reach a throttling upstream at
    once, against the proposal's own 'at most 12/s': the burst comes down to the new rate with it."""
    config = sc.CONFIG.replace(
        "    # Overrides per tool.", "    rate_limit: {rate: 100, burst: 200, key: client}\n\n    # Overrides per tool."
    )
    [p] = run(sc.throttled(), config)
    assert p.changes == (
        Change("api", None, "rate_limit.rate", 12, 100.0),
        Change("api", None, "rate_limit.burst", 12, 200),
        Change("api", None, "rate_limit.key", "upstream", "client"),
    )
    limit = load_config(edit_text(config, p.changes), ENV).upstreams[0].rate_limit
    assert limit is not None and (limit.rate, limit.bucket_size, limit.key) == (12.0, 12, "upstream")


def test_a_breaker_whose_trials_keep_failing_gets_a_longer_reset_timeout() -> None:
    [p] = run(sc.flapping_breaker())
    assert (p.id, p.title) == ("9b7dcc84ec", "Breaker api flaps: reset_timeout 30s -> 1m")
    assert p.changes == (Change("api", None, "breaker.reset_timeout", "1m", "30s"),)
    assert p.effect.numbers == {"opens": 3, "failed_trials": 2, "refused": 4}
    assert diff_lines(p) == ["-      reset_timeout: 30s       # then half-open", "+      reset_timeout: 1m        # then half-open"]


def test_a_breaker_that_reopens_after_closing_gets_a_higher_threshold() -> None:
    [p] = run(sc.flapping_breaker(failed_trials=False))
    assert p.title == "Breaker api flaps: failure_threshold 5 -> 10"
    assert p.changes == (Change("api", None, "breaker.failure_threshold", 10, 5),)
    assert p.effect.text == "with failure_threshold 10 a burst must be 10 consecutive failures long to open it (today 5)"


def test_failures_from_one_tool_propose_a_per_tool_breaker() -> None:
    [p] = run(sc.one_bad_tool())
    assert (p.id, p.title) == ("74eb21f772", "Give scrape its own breaker on api")
    assert p.changes == (Change("api", Match(tool="scrape"), "breaker.scope", "tool", "upstream"),)
    assert p.effect.numbers == {"share": 1.0, "refused": 5, "other_calls": 200}
    assert diff_lines(p) == ["+      - match: {tool: scrape}", "+        breaker:", "+          scope: tool"]


def test_failed_idempotent_calls_without_cache_propose_cached_fallback() -> None:
    [p] = run(sc.outage_without_cache())
    assert (p.id, p.title) == ("c7a0b17d18", "Enable cached fallback for api lookup")
    assert p.changes == (Change("api", Match(tool="lookup"), "cache.mode", "fallback", None),)
    assert p.effect.numbers == {"failed": 25, "distinct_params": 5}


def test_non_idempotent_failures_never_get_a_cache() -> None:
    events = sc.outage_without_cache()
    for event in events:
        if "idempotent" in event:
            event["idempotent"] = False
    assert run(events) == []


@pytest.mark.parametrize("kind", ["rate_limited", "overloaded", "unsendable_request", "cancelled"])
def test_failures_of_the_clients_own_making_never_propose_a_cache(kind: str) -> None:
    """25 idempotent calls refused by the proxy's own rate limit (or the per-client cap, or the pool, or
    unsendable, or given up by the client) say nothing about the upstream: a stored answer standing in
    for them would only undo the limit. Only upstream failures are evidence for a fallback."""
    s = Stream()
    s.call_ok(10.0, tool="lookup", ok=100)
    for i in range(25):
        s.call_failed(20.0 + i, kind, tool="lookup", params=f"p{i % 5}")
    assert run(s.events) == []
    for i in range(25):  # the same window with 25 upstream failures besides: those alone are counted
        s.call_failed(50.0 + i, "http_5xx", tool="lookup", params=f"p{i % 5}")
    [p] = run(s.events)
    assert (p.rule, p.effect.numbers) == ("cache_fallback", {"failed": 25, "distinct_params": 5})


def test_client_refusals_after_stale_answers_ran_out_do_not_extend_max_stale() -> None:
    events = sc.stale_ran_out()
    for event in events:
        if event["type"] == "call_failed":
            event["error"]["kind"] = "rate_limited"
    assert run(events, sc.CACHED_CONFIG) == []


def test_stale_answers_running_out_mid_outage_extend_max_stale() -> None:
    [p] = run(sc.stale_ran_out(), sc.CACHED_CONFIG)
    assert (p.id, p.title) == ("63a72d4caf", "Extend max_stale for api lookup from 1m to 2m")
    assert p.changes == (Change("api", Match(tool="lookup"), "cache.max_stale", "2m", "1m"),)
    assert p.effect.text == "12 of the 25 calls that failed after stale answers ran out came within the extra 1m and could have been answered stale"
    assert diff_lines(p) == ["-          max_stale: 1m          # short on purpose", "+          max_stale: 2m          # short on purpose"]


def test_flapping_health_raises_the_active_thresholds() -> None:
    [p] = run(sc.flapping_health())
    assert (p.id, p.title) == ("5d53502948", "Health of api flaps: raise its active thresholds")
    assert p.changes == (
        Change("api", None, "health.active.unhealthy_threshold", 6, 3),
        Change("api", None, "health.active.healthy_threshold", 4, 2),
    )
    assert p.effect.numbers == {"transitions": 4, "shortest_state_s": 15.0}


def test_a_change_to_a_value_from_the_environment_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    config = sc.CONFIG.replace("reset_timeout: 30s", "reset_timeout: ${RESET:-30s}")
    with caplog.at_level(logging.WARNING, logger="proxy.analyzer.engine"):
        assert run(sc.flapping_breaker(), config) == []
    assert "upstreams[api].breaker.reset_timeout is set from the environment (${RESET:-30s}); left untouched" in caplog.text


def test_a_change_whose_result_does_not_validate_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """failure_rate mode cannot take a failure_threshold; the file would be invalid, so no proposal."""
    config = sc.CONFIG.replace("failure_threshold: 5", "failure_threshold: 5\n      failure_rate: null")
    load_config(config, ENV)
    def bad_rule(analysis: Analysis, cfg: Any, addressed: Any) -> list[Proposal]:
        [p] = rules_upstream.breaker_flaps(analysis, cfg)
        return [Proposal(**{**{f: getattr(p, f) for f in p.__dataclass_fields__}, "changes": (Change("api", None, "breaker.failure_rate", 0.5),)})]

    with caplog.at_level(logging.WARNING, logger="proxy.analyzer.engine"):
        assert analyze(sc.flapping_breaker(), config, env=ENV, rules=[bad_rule])[1] == []
    assert "the edited file does not validate: upstreams[0].breaker: set failure_threshold or failure_rate, not both" in caplog.text


ALL: list[tuple[Callable[[], list[dict[str, Any]]], str]] = [
    (sc.slow_search, sc.CONFIG), (sc.slow_reports, sc.CONFIG), (sc.retries_never_help, sc.CONFIG),
    (sc.late_recovery, sc.CONFIG), (sc.throttled, sc.CONFIG), (sc.flapping_breaker, sc.CONFIG),
    (sc.one_bad_tool, sc.CONFIG), (sc.outage_without_cache, sc.CONFIG), (sc.stale_ran_out, sc.CACHED_CONFIG),
    (sc.flapping_health, sc.CONFIG),
]  # fmt: skip


@pytest.mark.parametrize(("scenario", "config"), ALL, ids=[s.__name__ for s, _ in ALL])
def test_every_diff_applies_cleanly_with_git_apply_and_validates(scenario: Any, config: str, tmp_path: Path) -> None:
    [p] = run(scenario(), config)
    (tmp_path / "proxy.yaml").write_text(config)
    (tmp_path / "change.diff").write_text(p.diff or "")
    subprocess.run(["git", "apply", "change.diff"], cwd=tmp_path, check=True, capture_output=True)
    edited = (tmp_path / "proxy.yaml").read_text()
    load_config(edited, ENV)
    original_comments = [line.split("#", 1)[1] for line in config.splitlines() if "#" in line and "${" not in line]
    assert [line.split("#", 1)[1] for line in edited.splitlines() if "#" in line and "${" not in line] == original_comments
    assert "url: ${API_URL:-http://127.0.0.1:3000/mcp}" in edited


def test_ids_are_stable_and_depend_on_the_change() -> None:
    first, second = run(sc.slow_search()), run(sc.slow_search())
    assert first[0].id == second[0].id
    assert first[0].to_dict() == second[0].to_dict()
    assert len({p.id for scenario, config in ALL for p in run(scenario(), config)}) == len(ALL)


def test_proposal_to_dict_is_json_ready() -> None:
    import orjson

    [p] = run(sc.throttled())
    data = orjson.loads(orjson.dumps(p.to_dict()))
    assert data["id"] == p.id
    assert data["addresses"] == {"failures": 30, "openings": 0}  # the 429s: a proxy-side limit removes them
    assert data["changes"][0] == {"upstream": "api", "match": None, "setting": "rate_limit.rate", "value": 12, "old": None}
    assert data["confidence"] == {
        "level": "medium",
        "reason": "attempts answered 429 while the upstream limited: 30/390 (7.7%), 95% lower bound 5.8% >= 5% (holds at one-sided 97.5%)",
        "statistics": [{
            "what": "attempts answered 429 while the upstream limited", "k": 30, "n": 390, "proportion": 0.0769,
            "side": "lower", "bound": 0.0575, "threshold": 0.05, "confidence": 0.95, "method": "wilson",
            "holds": True, "level": "medium",
        }],
    }  # fmt: skip
