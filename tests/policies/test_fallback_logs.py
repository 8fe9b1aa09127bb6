"""A cache hit is not an info log line when the level is warning, and a line below the level costs nothing.

The proxy runs in process in front of the fault-injecting upstream; its log lines (structlog's and the
events written as lines) go to the captured stderr. The cost of a filtered line is checked by what it
does, never by timing: no processor runs, and the logger is not rebuilt for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs

from proxy.app import running_proxy
from proxy.ops.logs import admits, configure_logging
from tests.conftest import proxy_config
from tests.fault_upstream import FaultUpstream
from tests.test_forwarding import JSON_HEADERS

CACHED = {"cache": {"mode": "ttl", "ttl": "1h"}}


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Each test sets its own level; the suite's logging comes back after it."""
    saved = structlog.get_config()
    yield
    configure_logging("info", "json")
    structlog.configure(**saved)


async def _miss_then_hit(level: str, capsys: pytest.CaptureFixture[str], upstream: FaultUpstream) -> tuple[str, list[Any]]:
    """Two identical tools/list calls through a proxy logging at `level`: a miss, then a hit. Returns the
    stderr written during the hit and the events the proxy published."""
    configure_logging(level, "json")
    config = proxy_config(upstream.url, upstream=CACHED, logging={"level": level})
    async with running_proxy(config) as proxy, aiohttp.ClientSession() as session:
        url = proxy.url + "/mcp"
        for request_id in (1, 2):
            if request_id == 2:
                capsys.readouterr()  # only what the hit writes
            async with session.post(url, json={"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}, headers=JSON_HEADERS) as response:
                assert response.status == 200
                hit = response.headers.get("X-Mcp-Proxy-Cache")
        written = capsys.readouterr().err
        events = [event for event in proxy.bus.recent(0) if event["type"] == "fallback_served"]
    assert hit == "hit" and upstream.attempts["tools/list"] == 1
    return written, events


async def test_a_cache_hit_writes_no_line_at_warning(
    upstream: FaultUpstream, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    written, events = await _miss_then_hit("warning", capsys, upstream)
    assert written == ""
    assert [event["status"] for event in events] == ["hit"]  # still an event, for /events and the analyzer


async def test_a_cache_hit_is_an_event_line_at_info(
    upstream: FaultUpstream, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    written, events = await _miss_then_hit("info", capsys, upstream)
    assert [line for line in written.splitlines() if '"fallback_served"' in line] != []
    assert [event["status"] for event in events] == ["hit"]


def test_admits_reads_the_level_order() -> None:
    assert admits("info", "info") and admits("debug", "info") and admits("warning", "error")
    assert not admits("warning", "info") and not admits("error", "warning")


def test_a_line_below_the_level_runs_no_processor_and_builds_no_logger(restored_logging: None) -> None:
    configure_logging("warning", "json")
    log = structlog.get_logger("test")
    built = log.bind()  # loggers are built once, on first use
    assert log.bind() is built
    with capture_logs() as lines:
        assert log.info("filtered", field=1) is None
        log.warning("kept", field=2)
    assert [line["event"] for line in lines] == ["kept"]


def test_a_new_level_reaches_loggers_built_before_it(restored_logging: None) -> None:
    """A reload may change logging.level: loggers cached on first use follow it."""
    configure_logging("info", "json")
    log = structlog.get_logger("test")
    with capture_logs() as before:
        log.info("shown")
    configure_logging("warning", "json")
    with capture_logs() as after:
        log.info("hidden")
        log.error("shown")
    configure_logging("debug", "json")
    with capture_logs() as debug:
        log.debug("shown")
    assert [line["event"] for line in before + after + debug] == ["shown", "shown", "shown"]
