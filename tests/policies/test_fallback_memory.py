"""What a cached answer costs in memory: at most twice its own bytes.

Measured with tracemalloc, which counts every allocation Python makes (exact and the same on every
machine, unlike RSS): the bytes still allocated after N distinct calls went through the cache stage
and everything but the cache was let go, divided by N.
"""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import orjson
from multidict import CIMultiDict

from proxy.policies.base import Call, Reply
from proxy.policies.fallback import CACHE_HEADER, CacheStage
from tests.fakes import FakeClock, make_call, tool_call, upstream_config

ENTRIES = 2000
CACHED = upstream_config(
    rules=[{"match": {"tool": "echo"}, "idempotent": True, "cache": {"mode": "ttl", "ttl": "1h", "max_entries": 10 * ENTRIES}}]
)


def _result(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": (text * 100)[:390]}], "isError": False}  # about 450 bytes as JSON


async def _upstream(call: Call) -> Reply:
    """As the transport answers: a body, and the message parsed from it (so the parsed result is new each time)."""
    body = orjson.dumps({"jsonrpc": "2.0", "id": call.message.id, "result": _result(call.message.params["arguments"]["text"])})
    return Reply(200, CIMultiDict({"Content-Type": "application/json"}), body=body, message=orjson.loads(body))


def _call(n: int) -> Call:
    return make_call(tool_call("echo", n, text=f"entry-{n:06d}"), CACHED)


async def test_a_cached_answer_costs_at_most_twice_its_bytes() -> None:
    stage = CacheStage(FakeClock())
    await stage(_call(0), _upstream)  # the store exists; first-use allocations are done
    gc.collect()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(1, ENTRIES + 1):
            await stage(_call(n), _upstream)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        if started:
            tracemalloc.stop()
    kept = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    answer = len(orjson.dumps(_result(f"entry-{ENTRIES:06d}")))
    assert stage.stats()["entries"] == ENTRIES + 1
    assert kept / ENTRIES <= 2 * answer, f"{kept / ENTRIES:.0f} B per entry for a {answer} B answer"


async def test_a_hit_answers_what_was_stored() -> None:
    stage = CacheStage(FakeClock())
    await stage(_call(7), _upstream)
    hit = await stage(make_call(tool_call("echo", 8, text="entry-000007"), CACHED), _upstream)
    assert hit.extra == {CACHE_HEADER: "hit"}
    assert hit.message["id"] == 8 and orjson.loads(hit.body or b"") == hit.message
    result = dict(hit.message["result"])
    assert result.pop("_meta") == {"io.github.mcp-resilience-proxy/cache": {"status": "hit", "age_ms": 0}}
    assert result == _result("entry-000007")
