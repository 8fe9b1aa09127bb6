"""The per-try timeout: which timeouts say the upstream is down, and which only say a request was big."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from multidict import CIMultiDict

from proxy.errors import UpstreamTimeout, UpstreamUnavailable
from proxy.events.bus import EventBus
from proxy.events.recorder import EventRecorder
from proxy.policies.failures import Failure, classify_error
from proxy.pipeline import build_pipeline
from proxy.policies.breaker import BreakerStage
from proxy.policies.base import Attempt, Reply
from proxy.policies import timeout as timeout_module
from proxy.policies.retry import RetryStage
from proxy.policies.timeout import TimeoutStage
from tests.fakes import FakeClock, FakeUpstream, first, make_call, reply_ok, tool_call, upstream_config

LIST = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
READ = b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"big://file"}}'


class Events:
    """The stage's reports, as (kind, fields)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def policy_event(self, kind: str, about: object, **fields: Any) -> None:
        self.seen.append((kind, fields))


def hanging() -> FakeUpstream:
    upstream = FakeUpstream(reply_ok())
    upstream.gate = asyncio.Event()  # never set: every attempt runs out of time, on any machine
    return upstream


CONFIG = upstream_config(breaker={"failure_threshold": 1}, timeouts={"per_try": "10ms"}, retry={"max_attempts": 1})


@pytest.mark.parametrize("body", [tool_call("slow", seconds=300), READ], ids=["tools/call", "resources/read"])
async def test_a_timeout_of_a_call_the_client_paces_never_opens_the_upstream_breaker(body: bytes) -> None:
    """One client asking a tool for minutes of work, many times, must not cut everybody off."""
    breaker = BreakerStage("up", FakeClock())
    pipeline = build_pipeline(hanging(), {"breaker": breaker, "timeout": TimeoutStage(FakeClock())})
    for _ in range(10):
        with pytest.raises(UpstreamTimeout) as timed_out:
            await pipeline(make_call(body, CONFIG))
        verdict = classify_error(timed_out.value)
        assert (verdict.kind, verdict.excused, verdict.server_failure) == (Failure.TIMEOUT, True, False)
    assert [b.state for b in breaker.breakers] == ["closed"]


async def test_a_timeout_of_the_protocols_own_methods_counts() -> None:
    breaker = BreakerStage("up", FakeClock())
    pipeline = build_pipeline(hanging(), {"breaker": breaker, "timeout": TimeoutStage(FakeClock())})
    with pytest.raises(UpstreamTimeout) as timed_out:
        await pipeline(make_call(LIST, CONFIG))
    assert classify_error(timed_out.value).server_failure
    assert [b.state for b in breaker.breakers] == ["open"]


async def test_an_app_breaker_can_count_a_tools_timeouts() -> None:
    config = upstream_config(
        timeouts={"per_try": "10ms"}, app_breaker={"errors": ["timeout"], "failure_threshold": 2, "min_clients": 1}
    )
    breaker = BreakerStage("up", FakeClock())
    pipeline = build_pipeline(hanging(), {"breaker": breaker, "timeout": TimeoutStage(FakeClock())})
    for _ in range(2):
        with pytest.raises(UpstreamTimeout):
            await pipeline(make_call(tool_call("slow"), config))
    assert {b.name: b.state for b in breaker.breakers} == {"up": "closed", "up/slow": "open"}


async def test_a_timeout_after_waiting_for_a_pooled_connection_is_excused() -> None:
    """The attempt spent part of per_try queued behind other calls (the proxy's load): its timeout, once
    written, is no evidence against the upstream; one that never queued is."""
    breaker = BreakerStage("up", FakeClock())
    gate = asyncio.Event()

    async def queued_then_slow(attempt: Attempt) -> Reply:
        attempt.waited = attempt.written = True  # as the transport sets them: queued, then sent
        await gate.wait()
        return reply_ok()

    pipeline = build_pipeline(queued_then_slow, {"breaker": breaker, "timeout": TimeoutStage(FakeClock())})
    for _ in range(3):
        with pytest.raises(UpstreamTimeout) as timed_out:
            await pipeline(make_call(LIST, CONFIG))
        assert classify_error(timed_out.value).excused
    assert [b.state for b in breaker.breakers] == ["closed"]


async def test_a_timed_out_write_is_observed_but_executed_once_and_never_delivered() -> None:
    """A non-idempotent attempt that timed out after it was written runs on in the background, as a read
    does: the client hears the timeout at once, the call is not retried, and the write's real length is
    recorded when it ends upstream."""
    bus = EventBus()
    recorder = EventRecorder(bus)
    upstream = hanging()
    config = upstream_config(timeouts={"per_try": "10ms"}, retry={"max_attempts": 3})
    stages = {"retry": RetryStage(FakeClock(), recorder), "timeout": TimeoutStage(FakeClock(), recorder, observe=3600.0)}
    call = make_call(tool_call("create_ticket"), config)
    assert not call.idempotent
    with pytest.raises(UpstreamTimeout):
        await build_pipeline(upstream, stages)(call)
    assert upstream.attempts == 1
    assert [(e["type"], e["observing"], e["idempotent"]) for e in bus.recent()] == [("timeout", True, False)]
    watchers = list(timeout_module._observing)
    assert len(watchers) == 1
    assert upstream.gate is not None
    upstream.gate.set()  # the write finishes upstream, long after the client heard the timeout
    await asyncio.gather(*watchers)
    timed_out, observed = bus.recent()
    assert (observed["type"], observed["call_id"], observed["attempt"], observed["idempotent"]) == ("timeout_observed", call.call_id, 1, False)
    assert observed["limit_ms"] == timed_out["limit_ms"] == 10.0
    assert observed["observed_ms"] >= 10.0 and "waited_ms" not in observed  # it answered, after its limit
    assert upstream.attempts == 1


async def test_without_observation_a_timed_out_write_is_cancelled_at_once() -> None:
    bus = EventBus()
    recorder = EventRecorder(bus)
    upstream = hanging()
    config = upstream_config(timeouts={"per_try": "10ms"}, retry={"max_attempts": 3})
    stages = {"retry": RetryStage(FakeClock(), recorder), "timeout": TimeoutStage(FakeClock(), recorder, observe=0.0)}
    with pytest.raises(UpstreamTimeout):
        await build_pipeline(upstream, stages)(make_call(tool_call("create_ticket"), config))
    assert upstream.attempts == 1 and not timeout_module._observing
    assert [(e["type"], e["observing"]) for e in bus.recent()] == [("timeout", False)]


async def test_an_attempt_handler_returning_a_plain_awaitable_is_raced_too() -> None:
    """The stages and the transport return coroutines, which the attempt's task runs as they are; any
    other awaitable is wrapped into one."""
    answered: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def handler(attempt: Attempt) -> asyncio.Future[Reply]:
        attempt.written = True
        answered.get_loop().call_soon(answered.set_result, reply_ok())
        return answered

    stage = TimeoutStage(FakeClock(), observe=3600.0)
    reply = await stage(first(make_call(LIST, CONFIG)), handler)
    assert reply.status == 200 and not timeout_module._observing

    never: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def hangs(attempt: Attempt) -> asyncio.Future[Reply]:
        attempt.written = True
        return never

    with pytest.raises(UpstreamTimeout):
        await stage(first(make_call(LIST, CONFIG)), hangs)
    (watcher,) = timeout_module._observing
    never.set_result(reply_ok())
    await watcher


async def test_an_observed_attempts_error_reaches_its_caller_and_nothing_is_left_unretrieved() -> None:
    reported: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context))
    stage = TimeoutStage(FakeClock(), observe=3600.0)
    with pytest.raises(UpstreamUnavailable, match="reset"):
        await stage(first(make_call(LIST, CONFIG)), FakeUpstream(UpstreamUnavailable("reset")))
    while timeout_module._attempts:  # the attempt's task lets go of its owner a turn later
        await asyncio.sleep(0)
    gc.collect()
    assert reported == [] and not timeout_module._observing


@pytest.mark.parametrize("outcome", [reply_ok(), UpstreamUnavailable("reset")], ids=["answer", "error"])
async def test_an_attempt_that_ends_in_the_turn_its_time_runs_out_keeps_its_outcome(outcome: Reply | Exception) -> None:
    """The limit and the end in the same turn of the loop: the outcome stands, as it came (no timeout)."""
    events = Events()
    stage = TimeoutStage(FakeClock(), events, observe=3600.0)

    async def ends_as_time_runs_out(attempt: Attempt) -> Reply:
        attempt.written = True
        (race,) = list(stage._deadlines._waiting)  # this attempt's limit, the stage's only one
        race.expire()  # type: ignore[attr-defined]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    if isinstance(outcome, Exception):
        with pytest.raises(UpstreamUnavailable):
            await stage(first(make_call(LIST, CONFIG)), ends_as_time_runs_out)
    else:
        assert (await stage(first(make_call(LIST, CONFIG)), ends_as_time_runs_out)) is outcome
    assert events.seen == [] and not timeout_module._observing


async def test_watched_attempts_are_bounded_per_upstream_and_per_client() -> None:
    """A watched attempt keeps its upstream connection after its client had the timeout and may call again:
    one client may have one watched at a time, an upstream its quarter of the pool (here 2); beyond, a
    timed-out attempt is cancelled at once. A loopback address is no identity: only the upstream's bound holds."""
    events = Events()
    stage = TimeoutStage(FakeClock(), events, observe=3600.0, max_observed=2)
    pending: list[asyncio.Future[Reply]] = []

    def hangs(attempt: Attempt) -> asyncio.Future[Reply]:
        attempt.written = True
        pending.append(asyncio.get_running_loop().create_future())
        return pending[-1]

    async def times_out(**headers: str) -> bool:
        before = len(events.seen)
        with pytest.raises(UpstreamTimeout):
            await stage(first(make_call(LIST, CONFIG, **headers)), hangs)
        ((kind, fields),) = events.seen[before:]
        return bool(kind == "timeout" and fields["observing"])

    a, b, c = ({"Authorization": f"Bearer {who}"} for who in "abc")
    assert [await times_out(**a), await times_out(**a), await times_out(**b), await times_out(**c), await times_out()] == [
        True, False, True, False, False,
    ]  # fmt: skip
    async def answer_all() -> None:
        """The watched attempts answer; their watchers end and let go of their keys (a turn after them)."""
        for future in pending:
            if not future.done():
                future.set_result(reply_ok())
        await asyncio.gather(*list(timeout_module._observing))
        while timeout_module._watched:
            await asyncio.sleep(0)

    assert len(timeout_module._observing) == 2
    await answer_all()
    assert [await times_out(), await times_out(), await times_out()] == [True, True, False]  # loopback: the upstream's 2
    await answer_all()


async def test_a_watched_streamed_answer_is_read_to_its_end_before_it_is_closed() -> None:
    """A streamed write (progress events, then its result) that timed out at its head is read through and
    thrown away: closed at once, the upstream would be cut off mid-answer, the write left half done."""
    events = Events()
    stage = TimeoutStage(FakeClock(), events, observe=3600.0)
    head = asyncio.get_running_loop().create_future()
    rest = asyncio.Event()
    read: list[bytes] = []

    class Stream:
        closed_after: list[bytes] | None = None

        async def __aiter__(self) -> Any:
            for chunk in (b"event: progress\n\n", b"event: result\n\n"):
                await rest.wait()
                read.append(chunk)
                yield chunk

        async def close(self) -> None:
            Stream.closed_after = list(read)

    def streams(attempt: Attempt) -> asyncio.Future[Reply]:
        attempt.written = True
        return head

    with pytest.raises(UpstreamTimeout):
        await stage(first(make_call(tool_call("create_ticket"), CONFIG)), streams)
    (watcher,) = timeout_module._observing
    head.set_result(Reply(200, CIMultiDict(), stream=Stream()))  # the head, late: the body still to come
    while len(events.seen) < 2:
        await asyncio.sleep(0)
    assert [kind for kind, _ in events.seen] == ["timeout", "timeout_observed"] and Stream.closed_after is None
    rest.set()
    await watcher
    assert Stream.closed_after == [b"event: progress\n\n", b"event: result\n\n"]
