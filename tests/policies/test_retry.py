"""Retry: exact attempt counts, idempotency, Retry-After, the deadline and the budget."""

from __future__ import annotations

import pytest

from proxy.errors import CircuitOpen, NeverSent, RateLimited, RetryBudgetExhausted, UpstreamTimeout, UpstreamUnavailable
from proxy.policies.retry import RetryStage, backoff_ceiling
from proxy.config.policies import BackoffConfig
from tests.fakes import FakeClock, FakeUpstream, make_call, reply_error, reply_ok, reply_status, tool_call, upstream_config

LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


def stage(clock: FakeClock, rng: float = 1.0) -> RetryStage:
    return RetryStage(clock, rng=lambda: rng, wall=lambda: 1_000_000.0)


async def test_read_call_failing_twice_then_succeeding_makes_exactly_three_attempts() -> None:
    clock = FakeClock()
    upstream = FakeUpstream(reply_status(503), UpstreamTimeout("slow"), reply_ok())
    reply = await stage(clock)(make_call(LIST), upstream)
    assert reply.status == 200
    assert upstream.attempts == 3
    assert [a.number for a in upstream.tries] == [1, 2, 3]  # one Attempt per try, numbered
    assert len({id(a) for a in upstream.tries}) == 3 and {id(c) for c in upstream.calls} == {id(upstream.calls[0])}
    assert reply.attempt is upstream.tries[-1]  # the answer names the try it came from
    assert clock.sleeps == [0.1, 0.2]  # full jitter with rng=1.0 hits the ceiling: base, 2*base


async def test_non_idempotent_tool_that_timed_out_is_executed_once() -> None:
    upstream = FakeUpstream(UpstreamTimeout("slow"))
    with pytest.raises(UpstreamTimeout):
        await stage(FakeClock())(make_call(tool_call("create_ticket")), upstream)
    assert upstream.attempts == 1


async def test_non_idempotent_tool_is_retried_when_never_sent() -> None:
    upstream = FakeUpstream(NeverSent("refused"), NeverSent("refused"), reply_ok())
    reply = await stage(FakeClock())(make_call(tool_call("create_ticket")), upstream)
    assert reply.status == 200 and upstream.attempts == 3


async def test_connection_lost_after_sending_is_retried_only_when_idempotent() -> None:
    upstream = FakeUpstream(UpstreamUnavailable("reset"), reply_ok())
    with pytest.raises(UpstreamUnavailable):
        await stage(FakeClock())(make_call(tool_call("create_ticket")), upstream)
    assert upstream.attempts == 1
    declared = upstream_config(rules=[{"match": {"tool": "create_ticket"}, "idempotent": True}])
    upstream = FakeUpstream(UpstreamUnavailable("reset"), reply_ok())
    await stage(FakeClock())(make_call(tool_call("create_ticket"), declared), upstream)
    assert upstream.attempts == 2


async def test_max_attempts_and_last_outcome_passes_through() -> None:
    upstream = FakeUpstream(reply_status(502))
    reply = await stage(FakeClock())(make_call(LIST, upstream_config(retry={"max_attempts": 4})), upstream)
    assert reply.status == 502 and upstream.attempts == 4


@pytest.mark.parametrize("code", [-32603, -32001, -32000, -32002, -32602, -32601, -32020])
async def test_jsonrpc_errors_are_not_retried_by_default(code: int) -> None:
    """The server answered: by default its answer goes back as it is, once."""
    upstream = FakeUpstream(reply_error(code), reply_ok())
    reply = await stage(FakeClock())(make_call(LIST), upstream)
    assert upstream.attempts == 1 and reply.message["error"]["code"] == code


@pytest.mark.parametrize(("status", "attempts"), [(502, 3), (503, 3), (504, 3), (500, 3), (501, 3), (400, 1), (404, 1)])
async def test_gateway_statuses_are_retried_a_client_error_status_is_not(status: int, attempts: int) -> None:
    upstream = FakeUpstream(reply_status(status))
    reply = await stage(FakeClock())(make_call(LIST), upstream)
    assert upstream.attempts == attempts and reply.status == status


OPT_IN = upstream_config(retry={"retry_on": ["server_error"], "max_attempts": 5})


@pytest.mark.parametrize(("code", "attempts"), [(-32603, 2), (-32001, 2), (-32602, 1), (-32601, 1), (-32020, 1), (-32002, 1)])
async def test_server_errors_are_retried_when_listed_and_a_repeated_answer_ends_it(code: int, attempts: int) -> None:
    """With `server_error` listed, a -32603 is retried once; the same answer again is deterministic: done."""
    upstream = FakeUpstream(reply_error(code))
    reply = await stage(FakeClock())(make_call(LIST, OPT_IN), upstream)
    assert upstream.attempts == attempts and reply.message["error"]["code"] == code


async def test_a_different_server_error_each_time_is_retried_up_to_max_attempts() -> None:
    upstream = FakeUpstream(*(reply_error(-32603, message=f"try {n}") for n in range(4)), reply_ok())
    reply = await stage(FakeClock())(make_call(LIST, OPT_IN), upstream)
    assert upstream.attempts == 5 and reply.status == 200 and "result" in reply.message


async def test_retry_on_limits_what_is_retried() -> None:
    config = upstream_config(retry={"retry_on": ["timeout"]})
    upstream = FakeUpstream(reply_status(503))
    await stage(FakeClock())(make_call(LIST, config), upstream)
    assert upstream.attempts == 1


async def test_retry_after_is_honoured_up_to_the_cap() -> None:
    clock = FakeClock()
    upstream = FakeUpstream(reply_status(429, **{"Retry-After": "3"}), reply_ok())
    await stage(clock, rng=0.0)(make_call(LIST), upstream)
    assert (upstream.attempts, clock.sleeps) == (2, [3.0])


async def test_retry_after_over_the_cap_is_not_obeyed_blindly() -> None:
    clock = FakeClock()
    upstream = FakeUpstream(reply_status(429, **{"Retry-After": "120"}), reply_ok())
    reply = await stage(clock)(make_call(LIST), upstream)
    assert upstream.attempts == 1 and clock.sleeps == []
    assert (reply.status, reply.headers["Retry-After"]) == (429, "120")  # the client hears it (as rate_limited,
    # retryAfter 120: tests/test_policies_http.py::test_upstream_429_with_long_retry_after_becomes_a_jsonrpc_rate_limit)


async def test_retry_after_as_http_date() -> None:
    clock = FakeClock()
    upstream = FakeUpstream(reply_status(429, **{"Retry-After": "Mon, 12 Jan 1970 13:46:45 GMT"}), reply_ok())
    await RetryStage(clock, rng=lambda: 0.0, wall=lambda: 1_000_000.0)(make_call(LIST), upstream)
    assert clock.sleeps == [5.0]  # 1970-01-12T13:46:45Z is 1,000,005 s after the epoch


async def test_the_deadline_holds_whatever_the_attempts() -> None:
    clock = FakeClock()
    config = upstream_config(timeouts={"total": "1s"}, retry={"max_attempts": 20, "backoff": {"base": "300ms", "max": "300ms"}})
    upstream = FakeUpstream(reply_status(503))
    call = make_call(LIST, config)
    await stage(clock)(call, upstream)
    assert upstream.attempts == 4  # sleeps at 0.3, 0.6, 0.9; a fourth sleep would end at 1.2 > 1.0
    assert sum(clock.sleeps) <= 1.0
    assert {attempt.deadline for attempt in upstream.tries} == {1001.0}


async def test_policy_verdicts_are_never_retried() -> None:
    for error in (CircuitOpen("open"), RateLimited("slow down")):
        upstream = FakeUpstream(error)
        with pytest.raises(type(error)):
            await stage(FakeClock())(make_call(LIST), upstream)
        assert upstream.attempts == 1


async def test_budget_bounds_attempts_when_the_upstream_is_down() -> None:
    clock = FakeClock()
    retry = RetryStage(clock, rng=lambda: 0.0)
    config = upstream_config(retry={"max_attempts": 5, "budget": {"ratio": 0.2, "min_per_second": 1, "window": "10s"}})
    upstream = FakeUpstream(reply_status(503))
    for _ in range(200):
        await retry(make_call(LIST, config), upstream)
    floor = 1 * 10
    assert upstream.attempts <= (1 + 0.2) * 200 + floor
    assert upstream.attempts == 200 + 50  # 0.2 x 200 requests + 10 (floor), all inside one window
    # The floor's 10 retries go to the first calls (4 + 4 + 2); every later call is refused once,
    # except that each fifth request earns one retry: all but the first two calls met a refusal.
    assert retry.budget(config.retry.budget).exhausted == 198


async def test_budget_exhausted_error_names_the_last_failure() -> None:
    clock = FakeClock()
    retry = RetryStage(clock, rng=lambda: 0.0)
    config = upstream_config(retry={"budget": {"ratio": 0, "min_per_second": 0}})
    upstream = FakeUpstream(UpstreamTimeout("upstream did not answer within 1s"))
    with pytest.raises(RetryBudgetExhausted, match="last failure: upstream did not answer within 1s"):
        await retry(make_call(LIST, config), upstream)
    assert upstream.attempts == 1


def test_backoff_ceiling_doubles_up_to_max() -> None:
    backoff = BackoffConfig(base=0.1, max=1.0)
    assert [backoff_ceiling(backoff, n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


async def test_a_budget_refusal_is_an_event_even_when_the_client_gets_the_upstreams_answer() -> None:
    """A 503 passed back as it is (the attempt did not raise) still counts as a budget refusal: the
    metric and the analyzer read it from this event."""
    from proxy.events.bus import EventBus
    from proxy.events.recorder import EventRecorder

    bus = EventBus()
    retry = RetryStage(FakeClock(), EventRecorder(bus), rng=lambda: 0.0)
    config = upstream_config(retry={"budget": {"ratio": 0, "min_per_second": 0}})
    upstream = FakeUpstream(reply_status(503))
    reply = await retry(make_call(LIST, config), upstream)
    assert (reply.status, upstream.attempts) == (503, 1)
    assert [(e["type"], e["failure"]) for e in bus.recent()] == [("retry_budget_exhausted", "http_5xx")]
