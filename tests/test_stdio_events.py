"""The events a stdio child's failures become (`stdio_child_exited`, `stdio_question_refused`), published
through a strict `EventRecorder`: every field is checked against its type as it is built.

The gateway runs in-process over the recording child (`tests.stdio_recording_child`) or a scripted
broken one (`tests.stdio_children`); waits are bounded polls of the event bus.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy.events.bus import EventBus
from proxy.events.recorder import EventRecorder
from proxy.upstream.stdio.backend import REFUSAL_EVENTS_PER_S, ChildBackend
from proxy.upstream.stdio.child import ChildSpec, child_environment
from proxy.upstream.stdio.gateway import Gateway
from proxy.upstream.stdio.supervisor import Handshake, Timing
from tests.test_stdio_gateway import WAIT, Client, recording_spec, until

REPO = Path(__file__).resolve().parent.parent
SLOW = Timing(start_timeout=WAIT, stop_grace=5.0, backoff_base=600.0, backoff_max=600.0)
"""A child that ends stays down (the next start is far away): one exit, one event."""


def recorder() -> EventRecorder:
    events = EventRecorder(EventBus())
    events.strict = True
    return events


def of_kind(events: EventRecorder, kind: str) -> list[dict[str, Any]]:
    return [e for e in events.bus.recent() if e["type"] == kind]


@asynccontextmanager
async def gateway_on(spec: ChildSpec, events: EventRecorder, timing: Timing = SLOW) -> AsyncIterator[Gateway]:
    gateway = Gateway(spec, timing, max_body=1 << 20, idle_timeout=3600.0, observer=events)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


async def test_a_child_that_exits_before_initialize_is_an_exit_in_phase_starting() -> None:
    events = recorder()
    argv = (sys.executable, "-m", "tests.stdio_children", "exit_now")
    spec = ChildSpec(name="kid", argv=argv, env=child_environment({"PYTHONPATH": str(REPO)}), cwd=str(REPO))
    async with gateway_on(spec, events):
        await until(lambda: bool(of_kind(events, "stdio_child_exited")), "the exit event")
    [exited] = of_kind(events, "stdio_child_exited")
    assert {
        k: exited[k] for k in ("upstream", "generation", "phase", "reason", "uptime_ms", "cut_off", "restarts")
    } == {
        "upstream": "kid",
        "generation": 1,
        "phase": "starting",
        "reason": "the child exited with code 3 before answering initialize",
        "uptime_ms": None,
        "cut_off": 0,
        "restarts": 0,
    }
    assert isinstance(exited["pid"], int)


async def test_a_child_that_dies_under_a_call_is_an_exit_in_phase_running_with_the_call_cut_off(tmp_path: Path) -> None:
    events = recorder()
    spec, _ = recording_spec(tmp_path)
    async with gateway_on(spec, events) as gateway:
        await gateway.supervisor.ready(WAIT)
        pid = gateway.supervisor.snapshot()["pid"]
        client = Client(gateway)
        try:
            session = await client.initialize()
            hanging = asyncio.ensure_future(client.call(session, 1, "hang"))
            await until(lambda: len(gateway.board.callers) == 1, "the hanging call in the child's hands")
            with pytest.raises(aiohttp.ClientError):  # cut off: the connection closes with no answer
                await client.call(session, 2, "exit", code=4)
            with pytest.raises(aiohttp.ClientError):
                await hanging
            await until(lambda: bool(of_kind(events, "stdio_child_exited")), "the exit event")
        finally:
            await client.close()
    [exited] = of_kind(events, "stdio_child_exited")
    assert exited["phase"] == "running"
    assert exited["reason"] == "the child exited with code 4"
    assert exited["pid"] == pid
    assert exited["cut_off"] == 2
    assert exited["generation"] == 1
    assert isinstance(exited["uptime_ms"], float) and exited["uptime_ms"] >= 0


async def test_the_proxy_stopping_its_child_is_no_failure_event(tmp_path: Path) -> None:
    events = recorder()
    spec, _ = recording_spec(tmp_path)
    async with gateway_on(spec, events) as gateway:
        await gateway.supervisor.ready(WAIT)
    assert of_kind(events, "stdio_child_exited") == []


async def test_a_question_with_two_clients_waiting_is_refused_with_its_event(tmp_path: Path) -> None:
    events = recorder()
    spec, _ = recording_spec(tmp_path)
    async with gateway_on(spec, events) as gateway:
        await gateway.supervisor.ready(WAIT)
        client = Client(gateway)
        try:
            first, second = await client.initialize(), await client.initialize()
            hanging = asyncio.ensure_future(client.call(first, 1, "hang"))
            await until(lambda: len(gateway.board.callers) == 1, "the first client's call in the child's hands")
            asked = asyncio.ensure_future(client.call(second, 2, "ask", method="sampling/createMessage"))
            await until(lambda: bool(of_kind(events, "stdio_question_refused")), "the refusal event")
            answer = await asyncio.wait_for(asked, WAIT)
            hanging.cancel()
        finally:
            await client.close()
    [refused] = of_kind(events, "stdio_question_refused")
    assert {k: refused[k] for k in ("upstream", "method", "why", "clients_waiting")} == {
        "upstream": "kid",
        "method": "sampling/createMessage",
        "why": "several_clients",
        "clients_waiting": 2,
    }
    assert answer.status == 200
    assert "several clients" in answer.body.decode()


def test_a_child_asking_in_a_loop_cannot_flood_the_event_stream() -> None:
    """`REFUSAL_EVENTS_PER_S` refusal events a second per child; the rest are only counted (logged)."""
    events = recorder()
    spec = ChildSpec(name="kid", argv=("true",), env={})
    now = [1000.0]
    backend = ChildBackend(
        spec, SLOW, Handshake(capabilities={}, client_info={}), observer=events, clock=lambda: now[0]
    )
    for n in range(500):
        replies = backend.board.route(1, {"jsonrpc": "2.0", "id": n, "method": "sampling/createMessage"})
        assert replies[0]["error"]["code"] == -32603
    assert len(of_kind(events, "stdio_question_refused")) == REFUSAL_EVENTS_PER_S
    now[0] += 1.0  # the next second: its own allowance
    backend.board.route(1, {"jsonrpc": "2.0", "id": "late", "method": "sampling/createMessage"})
    assert len(of_kind(events, "stdio_question_refused")) == REFUSAL_EVENTS_PER_S + 1
