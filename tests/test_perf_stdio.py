"""The stdio benchmark (`tests.perf.stdio`) measures what it says, with its own child and its own load generator.

First the child's answers and the percentile rule, exactly; then tiny real runs (the child direct over its
pipes, then behind ``python -m proxy serve`` for a modern and a legacy-session client), with the Python
load generator and, when installed, wrk. Nothing here asserts a speed: only that every call was answered
and counted.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.perf.procs import Processes
from tests.perf.stdio import CHILD, VARIANTS, Settings, _percentiles, run_stdio
from tests.perf.stdio_child import answer
from tests.perf.wrk import find_wrk

TINY = Settings(duration=1.0, latency_duration=1.0, warmup=0.5, connections=4)


def test_the_child_answers_each_method_and_ignores_the_rest() -> None:
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}
    assert answer(call) == b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hi"}]}}\n'
    assert answer({"jsonrpc": "2.0", "id": "p", "method": "ping"}) == b'{"jsonrpc":"2.0","id":"p","result":{}}\n'
    init = orjson.loads(
        answer({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}) or b""
    )
    assert init["result"]["protocolVersion"] == "2025-06-18"
    unknown = orjson.loads(
        answer({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "1999"}}) or b""
    )
    assert unknown["result"]["protocolVersion"] == "2025-11-25"
    assert (
        orjson.loads(answer({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}) or b"")["result"]["tools"][0]["name"]
        == "echo"
    )
    assert orjson.loads(answer({"jsonrpc": "2.0", "id": 2, "method": "nope"}) or b"")["error"]["code"] == -32601
    assert answer({"jsonrpc": "2.0", "method": "notifications/initialized"}) is None
    assert answer({"jsonrpc": "2.0", "id": 0, "result": {"roots": []}}) is None  # a client's answer


def test_the_child_as_a_process_answers_every_line_and_exits_at_eof() -> None:
    lines = [b'{"jsonrpc":"2.0","id":%d,"method":"ping"}' % i for i in range(50)]
    done = subprocess.run(
        [sys.executable, str(CHILD)], input=b"\n".join(lines) + b"\n\n{not json\n", capture_output=True, timeout=30
    )
    answers = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0
    assert [a.get("id") for a in answers] == [*range(50), None]
    assert answers[-1]["error"]["code"] == -32700


def test_percentiles_are_nearest_rank_in_microseconds() -> None:
    got = _percentiles([i * 1000 for i in range(1, 101)])
    assert (got["min"], got["p50"], got["p90"], got["p99"], got["max"]) == (1.0, 50.0, 90.0, 99.0, 100.0)
    assert _percentiles([])["p50"] == 0.0


def _assert_counted(report: dict[str, Any]) -> None:
    results = report["results"]
    assert set(results) == {"direct", *VARIANTS}
    for name, row in results.items():
        assert row["errors"] == 0, (name, row)
        assert row["requests"] > 0 and row["requests_1conn"] > 0, name
        assert row["child_cpu_us_per_request"] is not None, name
    for variant in VARIANTS:
        row = results[variant]
        assert row["warmup_requests"] > 0 and row["requests_1conn_one_cpu"] > 0
        assert row["cpu_us_per_request"] is not None and row["cpu_us_per_request"] > 0
        assert set(report["ratios"][variant]) >= {"throughput_vs_direct", "added_p50_us", "added_p99_us"}


def test_a_tiny_run_with_the_python_load_generator(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    try:
        report = run_stdio(TINY, tmp_path, procs, None)
    finally:
        procs.close()
    assert report["settings"]["load_generator"].startswith("asyncio raw-socket")
    _assert_counted(report)


@pytest.mark.skipif(find_wrk() is None, reason="wrk not installed")
def test_a_tiny_run_with_wrk(tmp_path: Path) -> None:
    procs = Processes(tmp_path)
    try:
        report = run_stdio(TINY, tmp_path, procs, find_wrk())
    finally:
        procs.close()
    assert report["settings"]["load_generator"].startswith("wrk")
    _assert_counted(report)
