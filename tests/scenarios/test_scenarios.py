"""Live fault scenarios: failures -> the proxy's events -> the analyzer's proposal -> apply -> reload -> fewer errors.

Each test is one operator's story, end to end and as a user runs it: the fault-injecting upstream over
real HTTP on 127.0.0.1, the proxy as a subprocess on a config file it hot-reloads, clients driving
traffic, and the analyzer CLI following the proxy's live event stream
(``python -m proxy analyze --follow ADMIN --once --config FILE --json``). The test asserts the proposal
(its rule, changed keys and values, evidence and estimate), applies it (``--apply ID``), waits for the
reload (``/status`` ``config.reloads_applied``), sends the same traffic again and asserts the cut in the
errors clients saw. Where the analyzer must stay silent, it asserts that nothing is proposed.

Traffic is deterministic: faults are decided per request by count, by JSON-RPC id or by a token
bucket (`tests.fault_upstream`), calls go one after another unless the story needs more, and every
wait polls a condition (`harness.Stage.settle`, `wait_breaker_reset`, the reload count). Delays sit
about 2x away from the limits they are compared with, so machine speed decides nothing.

| scenario | fault | expected proposal (keys: values) | client errors before -> after |
|---|---|---|---|
| slow (tool, listing) | `lookup` / `resources/list` answers in 420 ms, per_try 200ms, default breaker (reset 2s; it counts the listing's timeouts, not the tool's) | `timeouts` only, never `cache_fallback`: `timeouts.per_try: 200ms -> 750ms` for that call; every timeout observed and would complete | 10 -> 0 |
| flaky | every 4th read fails its first 2 tries (503), the next its first; max_attempts 2 | `retries_more` only: `retry.max_attempts: 2 -> 3`; 20 exhausted | 20 -> 0 |
| rate-limited | upstream bucket 5/s (burst 10), 429 + Retry-After beyond; 60 reads at 20/s, no retries | `rate_limit` only: 2.5/s <= rate <= 5/s, `key: upstream` | >= 20 upstream 429s -> none (the excess refused by the proxy, `rate_limited` with retryAfter) |
| flapping | 4 bursts of exactly 5 upstream 503s between healthy calls | `breaker_flaps`: `breaker.failure_threshold: 5 -> 10`; 4 opens, 0 failed trials; beside it `cache_fallback` for 3 of the 4 genuine 503s (the first came before its read had ever succeeded; the 20 refusals are the threshold's) | 24 -> 4 |
| outage with a cache | fallback cache (ttl 1s, max_stale 2s), 4 s outage at 20 reads/s | `cache_max_stale` only: `cache.max_stale: 2s -> 4s` | >= 20 -> 0 |
| outage without a cache | 5 params read fine, then every read fails (503) | `cache_fallback` only: `cache.mode: fallback` for `resources/read`; 25 failed, 5 distinct params | 25 -> 0 |
| non-idempotent timeouts | `create_ticket` answers in 420 ms, per_try 200ms, breaker off | `timeouts` only, no `retry.*`: `timeouts.per_try: 200ms -> 750ms` for that tool | 20 -> 0, one upstream execution per call |
| one tool fails (server) | `create_ticket` answers 503, the rest healthy, shared breaker | `breaker_per_tool` only (nothing upstream-wide): `breaker.scope: upstream -> tool` for that tool | healthy calls 16 -> 0 |
| one tool fails (application) | JSON-RPC -32603 from one tool, `isError` from another | nothing (their own answers, DESIGN §3) | 15 (nothing to apply) |
| healthy, noisy | 0-20 ms jitter, 1 lookup in 17 `isError`, 1 read in 23 fails its first try | nothing | 0 |
| untrusted annotations | `lookup` (readOnlyHint in tools/list) fails 1 try in 4, `trust_annotations: false` | `idempotent: true` for that tool, the declaration as evidence | 10 -> 0 |

Several of these failed against the analyzer of their day: they state what the analyzer must decide,
not what it did (docs/testing.md, "The fault scenarios", says which).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.fault_upstream import FaultUpstream
from tests.scenarios.harness import (
    READ,
    Call,
    Stage,
    Tally,
    base_config,
    changes_of,
    lookup,
    only,
    read,
    rules_of,
    ticket,
)

pytestmark = pytest.mark.scenario

StageFactory = Callable[[dict[str, Any]], Awaitable[Stage]]
LIST_TOOLS = Call("tools/list")


def is_tool(name: str) -> Callable[[Call], bool]:
    return lambda call: call.tool == name


# --- 1. slow -------------------------------------------------------------------------------------

LIST_RESOURCES = Call("resources/list")


@pytest.mark.parametrize(
    ("slow", "match", "reasons"),
    [
        (lookup(), {"tool": "lookup"}, {"upstream_timeout": 10}),
        (LIST_RESOURCES, {"method": "resources/list"}, {"upstream_timeout": 1, "circuit_open": 9}),
    ],
    ids=["tool", "listing"],
)
async def test_slow_call_gets_a_longer_timeout_not_a_cache(
    upstream: FaultUpstream, stage: StageFactory, slow: Call, match: dict[str, str], reasons: dict[str, int]
) -> None:
    """A call answers in 420 ms under a 200 ms per-try timeout, with the default breaker on (reset 2s).

    The fix is the timeout (p95 of the observed answers in [420, 600] ms, x1.2, rounded up: 750ms), never
    a stale answer standing in for calls that were only slow, whatever the breaker did meanwhile.

    * ``tool``: a read-only tool (trusted annotations). Its timeouts are excused from the breaker (a
      tool's arguments decide how long it takes), so each call times out on all 3 attempts.
    * ``listing``: ``resources/list``, whose timeouts the breaker counts: the first call times out 3
      times, the second twice, and the 5th consecutive failure opens the breaker, which refuses that
      call's last attempt and the 8 calls after it (milliseconds each, far inside reset_timeout). Those
      refusals are the timeouts' doing.
    """
    config = base_config(upstream.url, trust_annotations=True, timeouts={"per_try": "200ms"}, breaker={"reset_timeout": "2s"})
    proxy = await stage(config)
    warm = await proxy.run([LIST_TOOLS] + [slow] * 5)
    assert warm.errors == 0
    upstream.fault(slow.method, tool=slow.tool, delay=0.42)

    before = await proxy.run([slow] * 10)
    assert (before.errors, before.reasons()) == (10, reasons)
    timeouts = sum(e["type"] == "timeout" for e in await proxy.settle())

    proposals = await proxy.analyze()
    assert rules_of(proposals) == ["timeouts"], proposals
    proposal = only(proposals, "timeouts")
    (change,) = proposal["changes"]
    assert (change["match"], change["setting"], change["old"], change["value"]) == (match, "timeouts.per_try", "200ms", "750ms")
    assert (proposal["evidence"]["timeouts"], proposal["evidence"]["observed"]) == (timeouts, timeouts)
    assert (proposal["effect"]["numbers"]["timed_out"], proposal["effect"]["numbers"]["would_complete"]) == (timeouts, timeouts)

    await proxy.apply(proposal["id"])
    await proxy.wait_breaker_reset()
    after = await proxy.run([slow] * 10)
    assert (before.errors, after.errors) == (10, 0)


# --- 2. flaky ------------------------------------------------------------------------------------


def flaky_tries(request_id: Any) -> int:
    """Every 4th call fails its first two tries, the next one its first: transient, a third try always answers."""
    return {0: 2, 1: 1}.get(int(request_id) % 4, 0)


async def test_flaky_read_gets_one_more_attempt(upstream: FaultUpstream, stage: StageFactory) -> None:
    """Reads fail with 503 now and then, and a retry pays off: one more attempt, and no stale answers.

    With max_attempts 2, of 80 calls 20 succeed on their last attempt and 20 run out of attempts; all of
    them would have answered on a third try. The retry budget (ratio 0.5 set by the user) refuses none.
    """
    config = base_config(upstream.url, retry={"max_attempts": 2, "budget": {"ratio": 0.5}})
    proxy = await stage(config)
    upstream.fault(READ, status=503, failing_tries=flaky_tries)

    before = await proxy.run([read()] * 80)
    assert (before.errors, before.reasons()) == (20, {"http_503": 20})

    proposals = await proxy.analyze()
    assert rules_of(proposals) == ["retries_more"], proposals
    proposal = only(proposals, "retries_more")
    assert changes_of(proposal) == {"retry.max_attempts": (2, 3)}
    assert proposal["changes"][0]["match"] == {"method": READ}
    assert proposal["evidence"]["exhausted"] == 20
    assert proposal["effect"]["numbers"]["exhausted"] == 20
    assert 0 < proposal["effect"]["numbers"]["would_succeed"] <= 20

    await proxy.apply(proposal["id"])
    after = await proxy.run([read()] * 80)
    assert (before.errors, after.errors) == (20, 0)


# --- 3. rate-limited -----------------------------------------------------------------------------

UPSTREAM_RATE = 5.0
UPSTREAM_BURST = 10


async def test_rate_limited_upstream_gets_a_proxy_side_limit_at_its_rate(upstream: FaultUpstream, stage: StageFactory) -> None:
    """The upstream accepts 5 calls/s (a bucket of 10) and answers 429 beyond; clients send 60 reads at 20/s.

    It accepts at most 10 + 5/s over the traffic's span (~3 s nominal; twice that on a slow machine still
    leaves >= 20 refusals). Its sustained rate is 5/s: a proxy-side limit must be at most that (above it,
    sustained load still meets 429s) and near it (at least half). With such a limit (its burst at most
    the rate) the upstream never refuses again: whatever the proxy lets pass within any span fits the
    upstream's bucket of 10 plus 5/s, with seconds to spare for network jitter. The excess is then
    refused at the proxy, with an exact retryAfter, instead of reaching the upstream.
    """
    config = base_config(upstream.url, retry={"max_attempts": 1})
    proxy = await stage(config)
    bucket = upstream.fault(READ, rate=UPSTREAM_RATE, burst=UPSTREAM_BURST)

    before = await proxy.paced([read()] * 60, per_second=20)
    limited_before = bucket.limited
    assert limited_before >= 20
    assert before.reasons() == {"http_429": limited_before}

    proposals = await proxy.analyze()
    assert rules_of(proposals) == ["rate_limit"], proposals
    proposal = only(proposals, "rate_limit")
    changes = changes_of(proposal)
    assert changes["rate_limit.key"][1] == "upstream"
    per_s = {"1s": 1.0, "1m": 60.0}[changes["rate_limit.per"][1]] if "rate_limit.per" in changes else 1.0
    rate = changes["rate_limit.rate"][1] / per_s
    assert UPSTREAM_RATE / 2 <= rate <= UPSTREAM_RATE, proposal
    assert changes.get("rate_limit.burst", (None, None))[1] in (None, *range(1, UPSTREAM_BURST + 1))
    assert proposal["evidence"]["http_429"] == limited_before
    assert proposal["evidence"]["rate_basis"] == "timeline"  # the seconds it was limiting, not whole summary windows

    await proxy.apply(proposal["id"])
    passed = bucket.passed
    after = await proxy.paced([read()] * 60, per_second=20)
    assert (limited_before, bucket.limited - limited_before) == (limited_before, 0)
    assert set(after.reasons()) <= {"rate_limited"}
    assert all(o.retry_after for o in after.outcomes if not o.ok), [o for o in after.outcomes if not o.ok]
    assert after.ok == bucket.passed - passed


# --- 4. flapping ---------------------------------------------------------------------------------


async def flapping_traffic(proxy: Stage, upstream: FaultUpstream, bursts: int = 4, then: int = 4) -> Tally:
    """`bursts` times: the upstream fails exactly 5 requests (503); 2 + `then` reads; breakers' reset; 1 read."""
    tally = Tally()
    for _ in range(bursts):
        upstream.fault(READ, status=503, times=5)
        tally += await proxy.run([read()] * (2 + then))
        await proxy.wait_breaker_reset()
        tally += await proxy.run([read()])
    return tally


async def test_flapping_upstream_gets_a_higher_breaker_threshold(upstream: FaultUpstream, stage: StageFactory) -> None:
    """Short bursts of 5 failures open the default breaker (5 in a row), which then refuses calls the
    upstream would have answered. Each burst: the first call fails 3 tries, the second 2 and the breaker
    opens, refusing its last try and the 4 calls after; after reset_timeout a trial call succeeds.
    4 openings, none from a failed trial: a higher failure_threshold, not a longer reset_timeout. With
    10, each burst costs one call (3 tries) and the next call's third try answers.

    The threshold fix addresses the 20 refusals (the upstream would have answered those calls), so no
    stale answer is proposed for them. The 4 genuine 503s it leaves (one call per burst, 4 of the 28
    reads: material) are an upstream failing for real, where a cached fallback may legitimately stand
    in: it is proposed beside the fix, leaving the 20 refusals to `breaker_flaps`, and counting 3 of those
    4: the first burst's came before the read had ever succeeded, when no cache would have held an answer.
    """
    config = base_config(upstream.url, breaker={"reset_timeout": "1s"})
    proxy = await stage(config)

    before = await flapping_traffic(proxy, upstream)
    assert (before.errors, before.reasons()) == (24, {"http_503": 4, "circuit_open": 20})

    proposals = await proxy.analyze()
    assert rules_of(proposals) == ["breaker_flaps", "cache_fallback"], proposals
    proposal = only(proposals, "breaker_flaps")
    assert changes_of(proposal) == {"breaker.failure_threshold": (5, 10)}
    assert proposal["changes"][0]["match"] is None
    assert (proposal["evidence"]["opens"], proposal["evidence"]["failed_trials"]) == (4, 0)
    assert proposal["addresses"] == {"failures": 20, "openings": 4}
    fallback = only(proposals, "cache_fallback")
    assert (fallback["evidence"]["failed"], fallback["evidence"]["left_to_other_rules"]) == (3, 20)
    assert (fallback["evidence"]["params_basis"], fallback["evidence"]["not_succeeded_before"]) == ("seen_succeeding", 1)
    assert fallback["evidence"]["failure_kinds"] == {"http_5xx": 4, "circuit_open": 20}

    await proxy.apply(proposal["id"])
    after = await flapping_traffic(proxy, upstream)
    assert (before.errors, after.errors) == (24, 4)
    assert after.reasons() == {"http_503": 4}


# --- 5. outage with a cache ----------------------------------------------------------------------


async def outage_with_cache(proxy: Stage, upstream: FaultUpstream) -> Tally:
    """One read stored, then the upstream fails every read while clients read 20/s for 4 s."""
    upstream.faults.pop(READ, None)
    warm = await proxy.run([read()])
    assert warm.errors == 0
    upstream.fault(READ, status=503)
    return await proxy.paced([read()] * 80, per_second=20)


async def test_outage_longer_than_max_stale_doubles_max_stale(upstream: FaultUpstream, stage: StageFactory) -> None:
    """Cached fallback is on (ttl 1s, max_stale 2s) and the outage outlasts it: after 3 s of stored answers,
    the last second of reads fails (>= 20 of 80). Doubling max_stale covers the whole 4 s (5 s of cover,
    a second to spare). After the reload the store is new (its policy changed): the same warm-up read
    fills it, once the breaker the outage opened lets a trial through.
    """
    config = base_config(
        upstream.url, breaker={"reset_timeout": "2s"}, cache={"mode": "fallback", "ttl": "1s", "max_stale": "2s"}
    )
    proxy = await stage(config)

    before = await outage_with_cache(proxy, upstream)
    assert before.errors >= 20
    assert set(before.reasons()) <= {"http_503", "circuit_open"}
    assert sum(o.stale for o in before.outcomes) >= 40

    proposals = await proxy.analyze()
    assert rules_of(proposals) == ["cache_max_stale"], proposals
    proposal = only(proposals, "cache_max_stale")
    assert changes_of(proposal) == {"cache.max_stale": ("2s", "4s")}
    assert proposal["evidence"]["failed_after"] >= 20
    assert 0 < proposal["effect"]["numbers"]["would_be_served"] <= proposal["evidence"]["failed_after"]

    await proxy.apply(proposal["id"])
    upstream.faults.pop(READ, None)
    await proxy.wait_breaker_reset()
    after = await outage_with_cache(proxy, upstream)
    assert after.errors == 0


# --- 6. outage without a cache -------------------------------------------------------------------

URIS = [f"demo://facts/{n}" for n in range(5)]


async def outage_without_cache(proxy: Stage, upstream: FaultUpstream) -> Tally:
    """Each of 5 params read once while the upstream is fine, then 25 reads of them during an outage."""
    upstream.faults.pop(READ, None)
    warm = await proxy.run([read(uri) for uri in URIS])
    assert warm.errors == 0
    upstream.fault(READ, status=503)
    return await proxy.run([read(URIS[n % 5]) for n in range(25)])


async def test_outage_without_cache_proposes_cached_fallback(upstream: FaultUpstream, stage: StageFactory) -> None:
    """Idempotent reads fail through an outage and no stored answer can stand in: cached fallback.

    With it, every read of the outage is answered from the answer its params got before (max_stale 5m).
    """
    config = base_config(upstream.url, breaker={"reset_timeout": "2s"})
    proxy = await stage(config)

    before = await outage_without_cache(proxy, upstream)
    assert before.errors == 25
    assert set(before.reasons()) <= {"http_503", "circuit_open"}

    proposals = await proxy.analyze()
    assert rules_of(proposals) == ["cache_fallback"], proposals
    proposal = only(proposals, "cache_fallback")
    (change,) = proposal["changes"]
    assert (change["match"], change["setting"], change["value"]) == ({"method": READ}, "cache.mode", "fallback")
    assert (proposal["evidence"]["failed"], proposal["evidence"]["distinct_params"]) == (25, 5)
    assert (proposal["evidence"]["params_basis"], proposal["evidence"]["not_succeeded_before"]) == ("seen_succeeding", 0)
    assert proposal["effect"]["numbers"]["failed"] == 25

    await proxy.apply(proposal["id"])
    upstream.faults.pop(READ, None)
    await proxy.wait_breaker_reset()
    after = await outage_without_cache(proxy, upstream)
    assert (before.errors, after.errors) == (25, 0)
    assert all(o.stale for o in after.outcomes)


# --- 7. non-idempotent timeouts ------------------------------------------------------------------


async def test_non_idempotent_timeouts_get_a_longer_timeout_never_retries(upstream: FaultUpstream, stage: StageFactory) -> None:
    """A write (`create_ticket`, not idempotent) always takes 2x its 200 ms per-try timeout.

    Each call reached the upstream (it ran), so the proxy never retries it; the answer arrived ~420 ms
    in. The proposal raises that tool's timeout (to 750ms, as for a read) and adds no retry. After it:
    every call answers, and the upstream ran each exactly once, before and after.
    """
    config = base_config(upstream.url, timeouts={"per_try": "200ms"}, breaker={"enabled": False})
    proxy = await stage(config)
    await proxy.run([LIST_TOOLS])
    upstream.fault("tools/call", tool="create_ticket", delay=0.42)
    key = FaultUpstream.key("tools/call", "create_ticket")

    before = await proxy.run([ticket(f"t{n}") for n in range(20)], concurrency=5)
    assert (before.errors, before.reasons(), upstream.attempts[key]) == (20, {"upstream_timeout": 20}, 20)

    proposals = await proxy.analyze()
    assert rules_of(proposals) == ["timeouts"], proposals
    proposal = only(proposals, "timeouts")
    assert not any(c["setting"].startswith("retry.") or c["setting"] == "idempotent" for c in proposal["changes"])
    (change,) = proposal["changes"]
    assert (change["match"], change["setting"], change["old"], change["value"]) == ({"tool": "create_ticket"}, "timeouts.per_try", "200ms", "750ms")
    assert proposal["evidence"]["timeouts"] == 20
    assert proposal["effect"]["numbers"]["timed_out"] == 20

    await proxy.apply(proposal["id"])
    after = await proxy.run([ticket(f"t{n}") for n in range(20)], concurrency=5)
    assert (before.errors, after.errors) == (20, 0)
    assert upstream.attempts[key] == 40  # exactly one execution per call, in both runs


# --- 8. one tool fails on a healthy upstream -----------------------------------------------------


async def one_tool_failing(proxy: Stage, rounds: int = 4) -> Tally:
    """`rounds` times: breakers' reset; a lookup; 5 create_ticket (answered 503); 2 lookups and 2 reads."""
    tally = Tally()
    for n in range(rounds):
        await proxy.wait_breaker_reset()
        tally += await proxy.run([lookup(f"q{n}")] + [ticket(f"t{n}")] * 5 + [lookup("a"), read(), lookup("b"), read()])
    return tally


async def test_one_tool_failing_as_a_server_gets_its_own_breaker(upstream: FaultUpstream, stage: StageFactory) -> None:
    """Only `create_ticket` fails (503, an upstream failure in DESIGN §3), the other tool and reads are fine.

    Its 5 failures in a row open the shared upstream breaker, which then refuses the 4 healthy calls after
    them, each round. The fix is a breaker of its own (scope tool), and nothing upstream-wide (the
    upstream is healthy: no threshold or reset change). After it, the healthy calls never fail; the
    broken tool still does.
    """
    config = base_config(upstream.url, breaker={"reset_timeout": "1s"})
    proxy = await stage(config)
    await proxy.run([LIST_TOOLS])
    upstream.fault("tools/call", tool="create_ticket", status=503)
    healthy = lambda call: call.tool != "create_ticket"  # noqa: E731

    before = await one_tool_failing(proxy)
    assert (before.errors_of(healthy), before.errors_of(is_tool("create_ticket"))) == (16, 20)

    proposals = await proxy.analyze()
    assert rules_of(proposals) == ["breaker_per_tool"], proposals
    proposal = only(proposals, "breaker_per_tool")
    (change,) = proposal["changes"]
    assert (change["match"], change["setting"], change["old"], change["value"]) == ({"tool": "create_ticket"}, "breaker.scope", "upstream", "tool")
    assert (proposal["evidence"]["tool_failures"], proposal["evidence"]["share"], proposal["evidence"]["other_failures"]) == (20, 1.0, 0)
    assert proposal["effect"]["numbers"]["refused"] == 16

    await proxy.apply(proposal["id"])
    after = await one_tool_failing(proxy)
    assert (after.errors_of(healthy), after.errors_of(is_tool("create_ticket"))) == (0, 20)


async def test_one_tool_answering_errors_is_the_applications_business(upstream: FaultUpstream, stage: StageFactory) -> None:
    """`create_ticket` answers JSON-RPC -32603 and `lookup` isError every time, reads are fine.

    These are the application's own answers (DESIGN §3): they never count upstream-wide, are not retried,
    and a per-tool breaker on them is the user's choice, never a default. Nothing is proposed, the
    breaker never moves, each failing call reached the upstream once.
    """
    proxy = await stage(base_config(upstream.url))
    await proxy.run([LIST_TOOLS])
    upstream.fault("tools/call", tool="create_ticket", jsonrpc_error=-32603)
    upstream.fault("tools/call", tool="lookup", tool_error=True)

    tally = await proxy.run([ticket(f"t{n}") for n in range(15)] + [lookup(f"q{n}") for n in range(15)] + [read()] * 15)
    assert (tally.errors, tally.reasons()) == (15, {"jsonrpc_-32603": 15})
    assert sum(o.tool_error for o in tally.outcomes) == 15
    assert upstream.attempts[FaultUpstream.key("tools/call", "create_ticket")] == 15

    proposals = await proxy.analyze()
    assert proposals == []
    assert not [e for e in await proxy.events() if e["type"] == "breaker_state"]


# --- 9. healthy, noisy ---------------------------------------------------------------------------


async def test_healthy_noisy_upstream_gets_no_proposal(upstream: FaultUpstream, stage: StageFactory) -> None:
    """Small random latency (seeded), the odd isError, the odd 503 that one retry fixes: nothing to propose."""
    proxy = await stage(base_config(upstream.url, trust_annotations=True))
    await proxy.run([LIST_TOOLS])
    upstream.fault(READ, status=503, jitter=0.02, seed=7, failing_tries=lambda request_id: int(int(request_id) % 23 == 0))
    upstream.fault("tools/call", tool="lookup", tool_error=True, jitter=0.02, seed=11,
                   failing_tries=lambda request_id: int(int(request_id) % 17 == 0))  # fmt: skip

    calls = [read() if n % 2 else lookup(f"q{n}") for n in range(120)]
    tally = await proxy.run(calls, concurrency=2)
    read_ids = [o.id for o in tally.outcomes if o.call.method == READ]
    lookup_ids = [o.id for o in tally.outcomes if o.call.tool == "lookup"]
    assert tally.errors == 0
    assert sum(o.tool_error for o in tally.outcomes) == sum(i % 17 == 0 for i in lookup_ids) > 0
    assert upstream.attempts[READ] == len(read_ids) + sum(i % 23 == 0 for i in read_ids)

    proposals = await proxy.analyze()
    assert proposals == []


# --- 10. a read-only tool under untrusted annotations --------------------------------------------


def one_try_in_four(request_id: Any) -> int:
    return int(int(request_id) % 4 == 0)


async def test_read_only_tool_under_untrusted_annotations_is_declared_idempotent(upstream: FaultUpstream, stage: StageFactory) -> None:
    """`lookup` says readOnlyHint in tools/list, but trust_annotations is false, so its 503s are never retried.

    One call in four fails its first try. The events show the declaration, the failures and that a retry
    would fix them: the proposal declares the tool idempotent in the user's own file (a choice the user
    makes for this one tool, not trust in every annotation of the server), with the declaration as its
    evidence. After it, the default retry answers every call.
    """
    proxy = await stage(base_config(upstream.url))
    await proxy.run([LIST_TOOLS])
    upstream.fault("tools/call", tool="lookup", status=503, failing_tries=one_try_in_four)

    before = await proxy.run([lookup(f"q{n}") for n in range(40)])
    assert (before.errors, before.reasons()) == (10, {"http_503": 10})

    proposals = await proxy.analyze()
    assert len(proposals) == 1, proposals
    (proposal,) = proposals
    (change,) = proposal["changes"]
    assert (change["match"], change["setting"], change["value"]) == ({"tool": "lookup"}, "idempotent", True)
    assert "readOnlyHint" in json.dumps(proposal["evidence"])

    await proxy.apply(proposal["id"])
    after = await proxy.run([lookup(f"q{n}") for n in range(40)])
    assert (before.errors, after.errors) == (10, 0)
