"""The pipeline's order is fixed in one place; stages compose outermost first."""

from __future__ import annotations

import pytest

from proxy.pipeline import PIPELINE_ORDER, build_pipeline
from proxy.policies.base import Call, Handler, Reply
from tests.fakes import make_call, reply_ok


def test_order_is_the_documented_one() -> None:
    assert PIPELINE_ORDER == ("fallback", "rate_limit", "retry", "breaker", "passive_health", "timeout")


async def test_stages_run_outermost_first_whatever_the_mapping_order() -> None:
    seen: list[str] = []

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        async def __call__(self, call: Call, next: Handler) -> Reply:
            seen.append(self.name)
            return await next(call)

    async def terminal(call: Call) -> Reply:
        seen.append("upstream")
        return reply_ok()

    stages = {name: Recorder(name) for name in reversed(PIPELINE_ORDER)}
    handler = build_pipeline(terminal, stages)
    await handler(make_call())
    assert seen == [*PIPELINE_ORDER, "upstream"]


async def test_missing_stages_are_left_out_and_unknown_ones_refused() -> None:
    async def terminal(call: Call) -> Reply:
        return reply_ok()

    assert build_pipeline(terminal, {}) is terminal
    with pytest.raises(ValueError, match="unknown pipeline stage"):
        build_pipeline(terminal, {"cache": None})
