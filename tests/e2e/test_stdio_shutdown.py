"""SIGTERM to the proxy: its stdio child, and whatever the child started, are gone; the proxy exits 0.

Read from ``/proc``, as an operator would check for leftovers: the child's pid from ``/status``, its
descendants from the parent ids in ``/proc/*/stat``.

* ``grandchild`` (``tests/stdio_children.py``): the child starts a sleeping grandchild in its process
  group before it serves; both go.
* ``ignore_term``: a child that ignores stdin's end and SIGTERM is SIGKILLed after ``child.stop_grace``
  twice, and the proxy still exits 0.
* npm server-everything (node) through the quick start, ``serve --stdio --``: node does not exit when
  its stdin ends, so it gets SIGTERM after the default ``stop_grace`` (2 s).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.e2e.restart_support import within
from tests.e2e.stdio_support import (
    CHILDREN_ARGV,
    NPM_STDIO,
    StdioProxy,
    descendants,
    process_gone,
    require,
    start_stdio_proxy,
    wait_gone,
)

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def terminate(proxy: StdioProxy) -> tuple[int, list[int], list[tuple[int, int, str]]]:
    """SIGTERM the proxy once its child is up; its exit code, the pids (child first, then descendants)
    that were running under it, and its ``stdio_child_stopped`` log lines as (pid, returncode, ended_by)."""
    child = await proxy.wait_up()
    pids = [child["pid"], *descendants(child["pid"])]
    proxy.process.process.send_signal(signal.SIGTERM)
    code = await within(proxy.process.process.wait(), "the proxy exited after SIGTERM")
    await within(proxy.process.collector, "the proxy's log read to its end")  # type: ignore[attr-defined]
    stopped = [(e["pid"], e["returncode"], e["ended_by"]) for e in proxy.log_events("stdio_child_stopped")]
    return code, pids, stopped


async def test_sigterm_stops_child_and_grandchild(tmp_path: Path) -> None:
    proxy = await start_stdio_proxy([*CHILDREN_ARGV, "grandchild"], tmp_path, upstream={})
    try:
        child = await proxy.wait_up()
        await proxy.wait_child(lambda c: len(descendants(c["pid"])) >= 1, "the grandchild started", timeout=10)
        code, pids, stopped = await terminate(proxy)
    finally:
        await proxy.stop()
    assert code == 0
    assert pids[0] == child["pid"] and len(pids) >= 2, pids
    assert stopped == [(child["pid"], 0, "stdin")], "the child exits when its stdin ends"
    await wait_gone(pids, "the child and its grandchild after the proxy's SIGTERM")


async def test_sigterm_with_a_child_ignoring_term(tmp_path: Path) -> None:
    upstream = {"child": {"stop_grace": "200ms"}}
    proxy = await start_stdio_proxy([*CHILDREN_ARGV, "ignore_term"], tmp_path, upstream=upstream)
    try:
        code, pids, stopped = await terminate(proxy)
    finally:
        await proxy.stop()
    assert code == 0
    assert stopped == [(pids[0], -signal.SIGKILL, "sigkill")]
    assert all(process_gone(pid) for pid in pids), [pid for pid in pids if not process_gone(pid)]


async def test_sigterm_quick_start_npm(tmp_path: Path) -> None:
    require(NPM_STDIO.missing())
    proxy = await start_stdio_proxy(NPM_STDIO.argv(), tmp_path)
    try:
        code, pids, stopped = await terminate(proxy)
    finally:
        await proxy.stop()
    assert code == 0
    # node keeps running once its stdin ends (server-everything's timers): SIGTERM after stop_grace ends it.
    assert stopped == [(pids[0], -signal.SIGTERM, "sigterm")]
    await wait_gone(pids, "node and anything it started")
