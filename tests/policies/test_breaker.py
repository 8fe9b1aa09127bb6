"""Circuit breakers: the upstream breaker counts only server failures; the application breaker only what
it is told to; both fail fast while open, spread half-open trials over distinct clients, close on success.

States are driven with a fake clock: nothing here waits for real time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from proxy.errors import CircuitOpen, UpstreamTimeout, UpstreamUnavailable
from proxy.policies.base import Call
from proxy.policies.breaker import MAX_TOOL_BREAKERS, BreakerStage
from tests.fakes import (
    FakeClock,
    first,
    FakeUpstream,
    make_call,
    reply_error,
    reply_ok,
    reply_result,
    reply_status,
    tool_call,
    upstream_config,
)

LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def policy_event(self, kind: str, call: Call | None, **fields: Any) -> None:
        self.seen.append((kind, fields))

    def transitions(self) -> list[tuple[str, str]]:
        return [(f["breaker"], f["new"]) for kind, f in self.seen if kind == "breaker_state"]


def breaker_config(**fields: Any) -> Any:
    return upstream_config(breaker={"failure_threshold": 3, "reset_timeout": "10s", **fields})


async def fail(stage: BreakerStage, call: Call, upstream: FakeUpstream, times: int) -> None:
    for _ in range(times):
        with pytest.raises(UpstreamTimeout):
            await stage(first(call), upstream)


async def test_opens_at_threshold_and_fails_fast_with_retry_after() -> None:
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    upstream = FakeUpstream(UpstreamTimeout("slow"))
    call = make_call(LIST, breaker_config())
    await fail(stage, call, upstream, 3)
    assert events.transitions() == [("up", "open")]
    clock.advance(4)
    with pytest.raises(CircuitOpen) as caught:
        await stage(first(call), upstream)
    assert upstream.attempts == 3
    assert caught.value.retry_after == pytest.approx(6.0)
    assert caught.value.error_data() == {
        "reason": "circuit_open",
        "upstream": "up",
        "retryAfter": 6.0,
        "cause": "3 consecutive failures",
        "lastFailure": "timeout: slow",
    }
    assert caught.value.message == (
        "the circuit breaker of upstream up is open; it opened after 3 consecutive failures; last failure: timeout: slow"
    )


async def test_a_success_resets_the_consecutive_count() -> None:
    stage = BreakerStage("up", FakeClock())
    call = make_call(LIST, breaker_config())
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 2)
    await stage(first(call), FakeUpstream(reply_ok()))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 2)
    assert stage.breakers[0].state == "closed"


def client(name: str, body: bytes = LIST, config: Any = None) -> Call:
    """A call from the client `name` (set directly: who a client is, is `proxy.server.classify`'s business)."""
    return as_client(name, make_call(body, config if config is not None else breaker_config(half_open_max_calls=2)))


def as_client(name: str, call: Call) -> Call:
    return dataclasses.replace(call, client=f"test:{name}")


async def test_half_open_admits_k_trials_from_distinct_clients_and_the_first_success_closes() -> None:
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    await fail(stage, client("a"), FakeUpstream(UpstreamTimeout("slow")), 3)
    clock.advance(10)
    upstream = FakeUpstream(reply_ok())
    upstream.gate = asyncio.Event()
    trials = [asyncio.ensure_future(stage(first(client(name)), upstream)) for name in ("a", "b")]
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen, match="trial calls are taken"):
        await stage(first(client("c")), upstream)
    assert upstream.attempts == 2
    upstream.gate.set()
    await asyncio.gather(*trials)
    assert events.transitions() == [("up", "open"), ("up", "half-open"), ("up", "closed")]
    await stage(first(client("c")), upstream)
    assert upstream.attempts == 3


async def test_one_client_cannot_take_two_trials() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    await fail(stage, client("a"), FakeUpstream(UpstreamTimeout("slow")), 3)
    clock.advance(10)
    upstream = FakeUpstream(reply_ok())
    upstream.gate = asyncio.Event()
    trial = asyncio.ensure_future(stage(first(client("a")), upstream))
    await asyncio.sleep(0)
    with pytest.raises(CircuitOpen, match="this client already has its trial call"):
        await stage(first(client("a")), upstream)
    upstream.gate.set()
    await trial
    assert stage.breakers[0].state == "closed" and upstream.attempts == 1


async def test_a_client_whose_trial_failed_waits_for_the_others_that_asked() -> None:
    """A bad client's failed trial does not decide for a client that is waiting too: that client's own
    trial does. With nobody else waiting it opens at once, as a plain breaker would; when the waiting
    client never comes back, the period's end opens it."""
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    slow = FakeUpstream(UpstreamTimeout("slow"))
    await fail(stage, client("bad"), slow, 3)
    with pytest.raises(CircuitOpen, match="is open"):
        await stage(first(client("good")), FakeUpstream())  # good is waiting now
    clock.advance(10)
    await fail(stage, client("bad"), slow, 1)  # 1 of 2 trial slots failed; good has not tried
    assert stage.breakers[0].state == "half-open"
    with pytest.raises(CircuitOpen, match="already has its trial"):
        await stage(first(client("bad")), FakeUpstream())
    await stage(first(client("good")), FakeUpstream(reply_ok()))
    assert events.transitions()[-1] == ("up", "closed")

    await fail(stage, client("bad"), slow, 3)  # nobody else asks while it is open
    clock.advance(10)
    await fail(stage, client("bad"), slow, 1)
    assert events.transitions()[-3:] == [("up", "open"), ("up", "half-open"), ("up", "open")]

    with pytest.raises(CircuitOpen, match="is open"):
        await stage(first(client("good")), FakeUpstream())  # good waits, then never comes back
    clock.advance(10)
    await fail(stage, client("bad"), slow, 1)
    assert stage.breakers[0].state == "half-open"
    clock.advance(10)  # the period ends with a failed trial and no success
    with pytest.raises(CircuitOpen, match="is open"):
        await stage(first(client("bad")), FakeUpstream())
    assert events.transitions()[-3:] == [("up", "open"), ("up", "half-open"), ("up", "open")]


APPLICATION_ANSWERS = [
    reply_status(400),
    reply_status(404),
    reply_error(-32602),
    reply_error(-32601, status=404),
    reply_error(-32603),
    reply_error(-32603, status=500),
    reply_error(-32000, status=400, message="Bad Request: Server not initialized"),
    reply_error(-32002),
    reply_result({"isError": True, "content": []}),
]
APPLICATION_IDS = ["400", "404", "-32602", "-32601", "-32603", "500 -32603", "400 -32000", "-32002", "isError"]


@pytest.mark.parametrize("outcome", [*APPLICATION_ANSWERS, reply_status(429)], ids=[*APPLICATION_IDS, "429"])
async def test_what_the_server_answered_never_counts_against_it(outcome: Any) -> None:
    stage = BreakerStage("up", FakeClock())
    call = make_call(LIST, breaker_config(failure_threshold=1))
    for _ in range(5):
        await stage(first(call), FakeUpstream(outcome))
    assert stage.breakers[0].state == "closed" and stage.breakers[0].failures == 0


@pytest.mark.parametrize("outcome", APPLICATION_ANSWERS, ids=APPLICATION_IDS)
async def test_an_answer_proves_the_server_up_resets_the_count_and_closes_a_half_open_breaker(outcome: Any) -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, breaker_config())
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 2)
    await stage(first(call), FakeUpstream(outcome))
    assert stage.breakers[0].failures == 0
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 3)
    clock.advance(10)
    await stage(first(call), FakeUpstream(outcome))  # the bad client's trial: the server answered it
    assert stage.breakers[0].state == "closed"


@pytest.mark.parametrize(
    "outcome",
    [reply_status(502), reply_status(503), reply_status(504), reply_status(500), reply_error(-32603, status=503),
     UpstreamUnavailable("reset"), UpstreamTimeout("slow")],
    ids=["502", "503", "504", "bare 500", "503 -32603", "reset", "timeout"],
)  # fmt: skip
async def test_server_failures_count(outcome: Any) -> None:
    stage = BreakerStage("up", FakeClock())
    call = make_call(LIST, breaker_config(failure_threshold=1))
    try:
        await stage(first(call), FakeUpstream(outcome))
    except (UpstreamUnavailable, UpstreamTimeout):
        pass
    assert stage.breakers[0].state == "open"


async def test_cancelled_calls_count_as_nothing_and_free_their_trial_slot() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, breaker_config(failure_threshold=1))
    hanging = FakeUpstream(reply_ok())
    hanging.gate = asyncio.Event()
    task = asyncio.ensure_future(stage(first(call), hanging))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stage.breakers[0].state == "closed" and stage.breakers[0].failures == 0
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)
    clock.advance(10)
    task = asyncio.ensure_future(stage(first(call), hanging))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stage.breakers[0].state == "half-open"
    await stage(first(call), FakeUpstream(reply_ok()))  # the cancelled trial gave its slot back
    assert stage.breakers[0].state == "closed"


async def test_per_tool_breaker_isolates_one_bad_tool() -> None:
    stage = BreakerStage("up", FakeClock())
    config = upstream_config(breaker={"scope": "tool", "failure_threshold": 2})
    bad, good = make_call(tool_call("bad"), config), make_call(tool_call("good"), config)
    await fail(stage, bad, FakeUpstream(UpstreamTimeout("slow")), 2)
    with pytest.raises(CircuitOpen, match="the circuit breaker of tool bad of upstream up is open"):
        await stage(first(bad), FakeUpstream())
    assert (await stage(first(good), FakeUpstream(reply_ok()))).status == 200


async def test_failure_rate_mode_needs_min_calls() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, upstream_config(breaker={"failure_rate": 0.5, "min_calls": 4, "window": "10s"}))
    ok, bad = FakeUpstream(reply_ok()), FakeUpstream(UpstreamTimeout("slow"))
    await fail(stage, call, bad, 3)  # 3/3 failed, but fewer than min_calls
    assert stage.breakers[0].state == "closed"
    await stage(first(call), ok)  # 3/4 = 75% >= 50%, but a success never trips it
    await fail(stage, call, bad, 1)  # 4/5 = 80%
    assert stage.breakers[0].state == "open"


async def test_failure_rate_window_forgets_old_calls() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, upstream_config(breaker={"failure_rate": 0.5, "min_calls": 2, "window": "10s"}))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)
    clock.advance(11)
    await stage(first(call), FakeUpstream(reply_ok()))
    await stage(first(call), FakeUpstream(reply_ok()))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)  # 1 of the last 3 in the window
    assert stage.breakers[0].state == "closed"


async def test_disabled_breaker_passes_everything() -> None:
    stage = BreakerStage("up", FakeClock())
    call = make_call(LIST, upstream_config(breaker={"enabled": False}))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 10)
    assert stage.breakers == []


async def test_only_the_trials_decide_a_half_open_breaker() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    call = make_call(LIST, breaker_config(failure_threshold=1))
    straggler = FakeUpstream(reply_ok())
    straggler.gate = asyncio.Event()
    early = asyncio.ensure_future(stage(first(call), straggler))  # admitted while closed, answers late
    await asyncio.sleep(0)
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 1)
    clock.advance(10)
    trial_upstream = FakeUpstream(reply_ok())
    trial_upstream.gate = asyncio.Event()
    trial = asyncio.ensure_future(stage(first(call), trial_upstream))
    await asyncio.sleep(0)
    straggler.gate.set()
    await early
    assert stage.breakers[0].state == "half-open"  # the straggler's success proves nothing
    trial_upstream.gate.set()
    await trial
    assert stage.breakers[0].state == "closed"


async def test_a_trial_from_an_earlier_half_open_period_does_not_count() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    config = breaker_config(failure_threshold=1, half_open_max_calls=2)
    await fail(stage, client("a", config=config), FakeUpstream(UpstreamTimeout("slow")), 1)
    clock.advance(10)
    slow = FakeUpstream(reply_ok())
    slow.gate = asyncio.Event()
    first_period_trial = asyncio.ensure_future(stage(first(client("a", config=config)), slow))
    await asyncio.sleep(0)
    await fail(stage, client("b", config=config), FakeUpstream(UpstreamTimeout("slow")), 1)
    clock.advance(10)  # the period ends with a failed trial and no success: open again
    with pytest.raises(CircuitOpen):
        await stage(first(client("c", config=config)), FakeUpstream())
    clock.advance(10)
    waiting = FakeUpstream(reply_ok())
    waiting.gate = asyncio.Event()
    second_period_trial = asyncio.ensure_future(stage(first(client("d", config=config)), waiting))
    await asyncio.sleep(0)
    slow.gate.set()
    await first_period_trial
    breaker = stage.breakers[0]
    assert breaker.state == "half-open"  # the first period's late success proves nothing now
    waiting.gate.set()
    await second_period_trial
    assert breaker.state == "closed"


# --- the application breaker: opt-in, per tool, on the answers it names ---------------------------------


def app_config(**fields: Any) -> Any:
    return upstream_config(app_breaker={"min_calls": 4, "window": "10s", "reset_timeout": "10s", **fields})


def tool_from(name: str, tool: str = "search", config: Any = None) -> Call:
    return as_client(name, make_call(tool_call(tool), config if config is not None else app_config()))


IS_ERROR = reply_result({"isError": True, "content": []})


async def test_no_application_breaker_unless_configured() -> None:
    stage = BreakerStage("up", FakeClock())
    call = make_call(tool_call("search"), upstream_config())
    for _ in range(50):
        await stage(first(call), FakeUpstream(IS_ERROR))
    assert [b.name for b in stage.breakers] == ["up"] and stage.breakers[0].state == "closed"


async def test_application_breaker_opens_on_the_failure_rate_of_one_tool_only() -> None:
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    for name in ("a", "b", "a"):
        await stage(first(tool_from(name)), FakeUpstream(IS_ERROR))  # 3 of 3: under min_calls
    await stage(first(tool_from("a")), FakeUpstream(reply_ok()))  # 3 of 4 = 75%, a success never trips it
    await stage(first(tool_from("b")), FakeUpstream(IS_ERROR))  # 4 of 5 >= 50%, from two clients
    assert events.transitions() == [("up/search", "open")]
    with pytest.raises(CircuitOpen) as caught:
        await stage(first(tool_from("b")), FakeUpstream())
    assert caught.value.error_data()["cause"] == "4 of 5 calls failed within 10s"
    assert caught.value.error_data()["lastFailure"] == "tool_error, HTTP 200"
    assert (await stage(first(tool_from("a", "other")), FakeUpstream(reply_ok()))).status == 200  # other tools pass
    upstream_breaker = next(b for b in stage.breakers if b.name == "up")
    assert upstream_breaker.state == "closed" and upstream_breaker.failures == 0


@pytest.mark.parametrize(
    ("errors", "outcome", "counts"),
    [
        (["is_error"], IS_ERROR, True),
        (["is_error"], reply_error(-32603), False),
        ([-32603], reply_error(-32603), True),
        ([-32603], reply_error(-32602), False),
        ([-32603], reply_error(-32603, status=503), False),  # a gateway failure is the upstream breaker's
        (["timeout"], UpstreamTimeout("slow"), True),
        (["is_error"], UpstreamTimeout("slow"), False),
    ],
)
async def test_application_breaker_counts_only_what_it_names(errors: list[Any], outcome: Any, counts: bool) -> None:
    stage = BreakerStage("up", FakeClock())
    config = app_config(errors=errors, min_calls=1, min_clients=1)
    try:
        await stage(first(tool_from("a", config=config)), FakeUpstream(outcome))
    except UpstreamTimeout:
        pass
    app = next(b for b in stage.breakers if b.name == "up/search")
    assert app.state == ("open" if counts else "closed")


@pytest.mark.parametrize("mode", [{}, {"failure_threshold": 3}], ids=["rate", "consecutive"])
async def test_one_clients_failures_alone_never_open_the_application_breaker(mode: dict[str, Any]) -> None:
    """min_clients (default 2): one client's bad arguments, however many, are that client's problem."""
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    for _ in range(50):
        await stage(first(tool_from("bad", config=app_config(**mode))), FakeUpstream(IS_ERROR))
    assert events.transitions() == []
    await stage(first(tool_from("other", config=app_config(**mode))), FakeUpstream(IS_ERROR))  # a second client: it is the tool
    assert events.transitions() == [("up/search", "open")]


async def test_a_bad_client_cannot_keep_the_application_breaker_open() -> None:
    """The issue's case: one client calls a tool once a second with a call that always fails. At each
    half-open its call takes one trial slot and fails; the next good client's success closes it."""
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    for name in ("bad", "other", "bad", "other"):
        await stage(first(tool_from(name)), FakeUpstream(IS_ERROR))
    assert events.transitions() == [("up/search", "open")]
    with pytest.raises(CircuitOpen):
        await stage(first(tool_from("good")), FakeUpstream(reply_ok()))  # the good client is refused while open
    clock.advance(10)
    await stage(first(tool_from("bad")), FakeUpstream(IS_ERROR))  # its trial fails: 1 of 3 slots
    with pytest.raises(CircuitOpen, match="already has its trial"):
        await stage(first(tool_from("bad")), FakeUpstream(IS_ERROR))
    await stage(first(tool_from("good")), FakeUpstream(reply_ok()))
    assert events.transitions()[-1] == ("up/search", "closed")


async def test_an_upstream_breaker_refusal_gives_the_application_trial_slot_back() -> None:
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    config = upstream_config(
        breaker={"failure_threshold": 1, "reset_timeout": "10s"},
        app_breaker={"min_calls": 1, "reset_timeout": "5s", "half_open_max_calls": 1},
    )
    await stage(first(tool_from("a", config=config)), FakeUpstream(IS_ERROR))  # app breaker opens
    with pytest.raises(UpstreamTimeout):
        await stage(first(tool_from("a", "other", config)), FakeUpstream(UpstreamTimeout("slow")))  # upstream opens
    clock.advance(5)  # the app breaker is due for a trial, the upstream one is still open
    with pytest.raises(CircuitOpen, match="the circuit breaker of upstream up is open"):
        await stage(first(tool_from("a", config=config)), FakeUpstream(reply_ok()))
    clock.advance(5)
    await stage(first(tool_from("a", config=config)), FakeUpstream(reply_ok()))  # the app trial slot was given back
    assert {b.name: b.state for b in stage.breakers} == {"up/search": "closed", "up/other": "closed", "up": "closed"}


async def test_a_flood_of_invented_tool_names_never_evicts_an_open_breaker() -> None:
    """Per-tool breakers are bounded (tool names come from clients); the closed ones go first, so calls
    never reach a failing tool again because a client invented 1000 names."""
    stage = BreakerStage("up", FakeClock())
    config = upstream_config(breaker={"scope": "tool", "failure_threshold": 1})
    await fail(stage, make_call(tool_call("bad"), config), FakeUpstream(UpstreamTimeout("slow")), 1)
    for n in range(MAX_TOOL_BREAKERS + 10):
        await stage(first(make_call(tool_call(f"invented-{n}"), config)), FakeUpstream(reply_ok()))
    assert len(stage.breakers) == MAX_TOOL_BREAKERS
    with pytest.raises(CircuitOpen, match="tool bad of upstream up is open"):
        await stage(first(make_call(tool_call("bad"), config)), FakeUpstream(reply_ok()))


async def test_a_client_whose_trials_count_nothing_cannot_hold_the_only_slot() -> None:
    """The second review's case: a client whose calls time out on a slow tool (a timeout the client
    paces counts nothing) re-asks the moment each answer arrives. Its trial frees the slot, but while a
    good client waits, it does not get the slot back: the good client's trial decides."""
    clock, events = FakeClock(), Events()
    stage = BreakerStage("up", clock, events)
    config = breaker_config()
    await fail(stage, client("bad", config=config), FakeUpstream(UpstreamTimeout("slow")), 3)
    with pytest.raises(CircuitOpen):
        await stage(first(client("good", config=config)), FakeUpstream(reply_ok()))  # good waits
    clock.advance(10)
    paced = UpstreamTimeout("a big job", excused=True)
    with pytest.raises(UpstreamTimeout):
        await stage(first(client("bad", tool_call("slow"), config)), FakeUpstream(paced))  # bad's trial: nothing learned
    with pytest.raises(CircuitOpen, match="had its trial call; others are waiting"):
        await stage(first(client("bad", tool_call("slow"), config)), FakeUpstream(paced))
    await stage(first(client("good", config=config)), FakeUpstream(reply_ok()))
    assert events.transitions()[-1] == ("up", "closed")


async def test_a_period_that_learns_nothing_starts_a_fresh_one() -> None:
    """A waiting client that never comes back must not keep the others out: after reset_timeout with
    no failed trial, the period starts afresh and the one client calling gets its trial again."""
    clock = FakeClock()
    stage = BreakerStage("up", clock)
    config = breaker_config()
    await fail(stage, client("a", config=config), FakeUpstream(UpstreamTimeout("slow")), 3)
    with pytest.raises(CircuitOpen):
        await stage(first(client("gone", config=config)), FakeUpstream())  # asks once, never again
    clock.advance(10)
    paced = UpstreamTimeout("a big job", excused=True)
    with pytest.raises(UpstreamTimeout):
        await stage(first(client("a", config=config)), FakeUpstream(paced))
    with pytest.raises(CircuitOpen, match="others are waiting"):
        await stage(first(client("a", config=config)), FakeUpstream(reply_ok()))
    clock.advance(10)
    await stage(first(client("a", config=config)), FakeUpstream(reply_ok()))
    assert stage.breakers[0].state == "closed"


async def test_a_breaker_state_event_names_the_kind_of_the_failure_that_opened_it() -> None:
    """`last_failure_kind` is the last counted failure's kind (the `error.kind` vocabulary) when the breaker
    opens, null on every other transition; half-open trials that fail reopen it with their own kind."""
    from proxy.events.bus import EventBus
    from proxy.events.recorder import EventRecorder

    clock, bus = FakeClock(), EventBus()
    recorder = EventRecorder(bus)
    recorder.strict = True
    stage = BreakerStage("up", clock, recorder)
    call = make_call(LIST, breaker_config(half_open_max_calls=1))
    await fail(stage, call, FakeUpstream(UpstreamTimeout("slow")), 2)
    await stage(first(call), FakeUpstream(reply_status(503)))  # the third failure, and the last: a 503
    clock.advance(10)
    with pytest.raises(UpstreamUnavailable):
        await stage(first(call), FakeUpstream(UpstreamUnavailable("refused")))  # the trial fails: open again
    clock.advance(10)
    await stage(first(call), FakeUpstream(reply_ok()))  # a trial that closes it
    seen = [(e["old"], e["new"], e["last_failure_kind"], e["last_failure"]) for e in bus.recent() if e["type"] == "breaker_state"]
    assert seen == [
        ("closed", "open", "http_5xx", "http_5xx, HTTP 503"),
        ("open", "half-open", None, None),
        ("half-open", "open", "connection_lost", "connection_lost: refused"),
        ("open", "half-open", None, None),
        ("half-open", "closed", None, None),
    ]
