"""The pipeline's order is fixed in one place; stages compose outermost first; a call becomes its attempts
at the retry position; nothing changes a `Call` once it is made."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from proxy.errors import UpstreamTimeout
from proxy.pipeline import PIPELINE_ORDER, build_pipeline
from proxy.policies.base import Attempt, AttemptHandler, Call, CallHandler, Reply
from proxy.policies.retry import RetryStage
from tests.fakes import FakeClock, FakeUpstream, make_call, reply_ok, upstream_config

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"


def test_order_is_the_documented_one() -> None:
    assert PIPELINE_ORDER == ("fallback", "rate_limit", "session", "retry", "breaker", "passive_health", "timeout")


async def test_stages_run_outermost_first_and_the_retry_position_turns_the_call_into_attempts() -> None:
    seen: list[tuple[str, str]] = []

    class CallRecorder:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, call: Call, next: CallHandler) -> Reply:
            seen.append((self.name, type(call).__name__))
            return await next(call)

    class Retry:
        async def __call__(self, call: Call, next: AttemptHandler) -> Reply:
            seen.append(("retry", type(call).__name__))
            return await next(Attempt(call, 1, None))

    class AttemptRecorder:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, attempt: Attempt, next: AttemptHandler) -> Reply:
            seen.append((self.name, type(attempt).__name__))
            return await next(attempt)

    async def terminal(attempt: Attempt) -> Reply:
        seen.append(("upstream", type(attempt).__name__))
        return reply_ok()

    made = {"fallback": CallRecorder, "rate_limit": CallRecorder, "session": CallRecorder, "breaker": AttemptRecorder,
            "passive_health": AttemptRecorder, "timeout": AttemptRecorder}  # fmt: skip
    stages = {name: made[name](name) if name in made else Retry() for name in reversed(PIPELINE_ORDER)}
    handler = build_pipeline(terminal, stages)  # type: ignore[arg-type]
    await handler(make_call())
    assert seen == [
        ("fallback", "Call"), ("rate_limit", "Call"), ("session", "Call"), ("retry", "Call"),
        ("breaker", "Attempt"), ("passive_health", "Attempt"), ("timeout", "Attempt"), ("upstream", "Attempt"),
    ]  # fmt: skip


async def test_without_a_retry_stage_each_call_is_its_own_first_attempt() -> None:
    """The pipeline makes the one `Attempt` itself: number 1, no deadline (only per_try bounds it), and
    the answer carries no attempt, which the events read as the call's first."""
    upstream = FakeUpstream(reply_ok())
    handler = build_pipeline(upstream, {})
    call = make_call()
    reply = await handler(call)
    (attempt,) = upstream.tries
    assert (attempt.call, attempt.number, attempt.deadline) == (call, 1, None)
    assert reply.attempt is None
    await handler(call)
    assert upstream.tries[1] is not attempt  # a fresh one per call: its transport report starts clean
    with pytest.raises(ValueError, match="unknown pipeline stage"):
        build_pipeline(upstream, {"cache": None})  # type: ignore[typeddict-unknown-key]


async def test_the_retry_stage_makes_one_attempt_per_try_and_marks_the_outcome_with_the_last() -> None:
    upstream = FakeUpstream(UpstreamTimeout("slow"), reply_ok())
    handler = build_pipeline(upstream, {"retry": RetryStage(FakeClock(), rng=lambda: 0.0)})
    call = make_call(upstream=upstream_config(timeouts={"total": "5s"}))
    reply = await handler(call)
    first, second = upstream.tries
    assert (first.number, second.number) == (1, 2) and first.call is second.call is call
    assert first.deadline == second.deadline == 1005.0  # the call's, set once by the retry stage
    assert reply.attempt is second

    failing = FakeUpstream(UpstreamTimeout("slow"))
    handler = build_pipeline(failing, {"retry": RetryStage(FakeClock(), rng=lambda: 0.0)})
    with pytest.raises(UpstreamTimeout) as caught:
        await handler(call)
    assert caught.value.attempt is failing.tries[-1] and len(failing.tries) == 3


_CALL_FIELDS = frozenset(f.name for f in dataclasses.fields(Call))
_FIXED_ATTEMPT_FIELDS = frozenset({"call", "number", "deadline"})


def _assignments(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, target) of every assignment to a Call's field through a name ending in ``call``, and to an
    Attempt's fixed fields through one ending in ``attempt``; and of every ``setattr`` on either."""
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith("setattr") and node.args:
            holder = ast.unparse(node.args[0]).lower()
            if holder.endswith(("call", "attempt")):
                found.append((node.lineno, ast.unparse(node)))
        while any(isinstance(target, ast.Tuple | ast.List | ast.Starred) for target in targets):
            targets = [inner for target in targets for inner in _unpacked(target)]
        for part in targets:
            if isinstance(part, ast.Attribute):
                holder = ast.unparse(part.value).lower()
                if (holder.endswith("call") and part.attr in _CALL_FIELDS) or (
                    holder.endswith("attempt") and part.attr in _FIXED_ATTEMPT_FIELDS
                ):
                    found.append((node.lineno, ast.unparse(part)))
    return found


def _unpacked(target: ast.expr) -> list[ast.expr]:
    if isinstance(target, ast.Tuple | ast.List):
        return list(target.elts)
    if isinstance(target, ast.Starred):
        return [target.value]
    return [target]


def test_nothing_assigns_to_a_call_or_to_an_attempts_fixed_fields() -> None:
    """`Call` is immutable by convention (a frozen dataclass made it ~1.9 µs slower to build, per call):
    this holds the convention. An Attempt changes only in what the transport reports."""
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {target}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, target in _assignments(ast.parse(path.read_text()))
    ]
    assert offenders == []


def test_the_assignment_scan_sees_what_it_must() -> None:
    source = (
        "call.owner = 1\nself._call.started = 2.0\nattempt.number += 1\nsetattr(call, 'x', 1)\n"
        "a, (b, attempt.call) = 1, (2, 3)\nattempt.written = True\ncounts[call.method] = 1\n"
    )
    assert sorted(line for line, _ in _assignments(ast.parse(source))) == [1, 2, 3, 4, 5]
