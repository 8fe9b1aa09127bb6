"""The learning loop end to end: failures -> events -> a proposal -> apply -> hot reload -> fewer errors.

A fault-injecting upstream answers `resources/read` in 420 ms while the policy allows 200 ms; the
proxy (a subprocess, as a user runs it) times the calls out, keeps watching them in the background,
and records when they would have completed. The analyzer, run as the CLI against the live proxy,
must propose a larger `per_try` with that evidence; applying it makes the same calls succeed.

The observed latencies are real (wall clock), so they are the 420 ms delay plus however long the
proxy and the test took around it. The proposed value still follows from the mechanism alone: the
rule proposes only when the observed p95 is at most 3x the limit (600 ms, "slow, not stuck") and
writes p95 x 1.2 rounded up to a readable duration. With p95 in [420, 600] ms that is the smallest of
(... 400ms, 500ms, 750ms, 1s ...) at or above [504, 720] ms: 750ms, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema

from tests.conftest import REPO, ProxyProcess
from tests.fault_upstream import FaultUpstream

READ = {"jsonrpc": "2.0", "method": "resources/read", "params": {"uri": "demo://facts"}}
UPSTREAM_DELAY_S = 0.42
"""Past 500 ms / 1.2, so the only possible proposal is 750ms, which leaves the reads 330 ms of slack."""


async def cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def burst(url: str, count: int) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> int:
            async with session.post(url, json={**READ, "id": n}) as response:
                await response.read()
                return response.status

        return list(await asyncio.gather(*(one(n) for n in range(count))))


async def test_a_timeout_proposal_appears_applies_and_the_errors_drop(
    upstream: FaultUpstream, proxy_process: Callable[[dict[str, Any]], Awaitable[ProxyProcess]], tmp_path: Path
) -> None:
    upstream.fault("resources/read", delay=UPSTREAM_DELAY_S)
    config = {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "reload": {"interval": "100ms"},
        "events": {"observe_timeouts": "5s", "log": False},
        "upstreams": [
            {
                "name": "docs",
                "url": upstream.url,
                "health": {"active": {"enabled": False}},
                "timeouts": {"per_try": "200ms", "total": "1s"},
                "retry": {"max_attempts": 1},
                "breaker": {"enabled": False},
            }
        ],
    }
    proxy = await proxy_process(config)
    config_file = tmp_path / "proxy.yaml"
    url = proxy.url + "/mcp"

    before = await burst(url, 25)
    assert before == [504] * 25

    async with asyncio.timeout(30):  # the observations finish about 400 ms after each call started
        while True:
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.admin_url + "/events", params={"format": "json"}) as response:
                    events = await response.json()
            if sum(e["type"] == "timeout_observed" for e in events) == 25:
                break
            await asyncio.sleep(0.05)

    validator = jsonschema.Draft202012Validator(json.loads((REPO / "config" / "events.schema.json").read_text()))
    for event in events:  # what a real proxy publishes fits the documented schema
        validator.validate(event)

    code, out, err = await cli("analyze", "--follow", proxy.admin_url, "--once", "--config", str(config_file), "--json")
    assert code == 0, err
    proposals = json.loads(out)
    timeouts = [p for p in proposals if p["rule"] == "timeouts"]
    assert len(timeouts) == 1, proposals
    proposal = timeouts[0]
    (change,) = proposal["changes"]
    assert (change["upstream"], change["setting"], change["old"], change["value"]) == ("docs", "timeouts.per_try", "200ms", "750ms")
    assert change["match"] == {"method": "resources/read"}
    assert proposal["effect"]["numbers"]["timed_out"] == 25
    assert "would have completed" in proposal["effect"]["text"]

    code, _, err = await cli("analyze", "--follow", proxy.admin_url, "--once", "--config", str(config_file), "--apply", proposal["id"])
    assert code == 0, err
    assert list(tmp_path.glob("proxy.yaml.bak-*"))

    async with asyncio.timeout(15):
        while True:
            async with aiohttp.ClientSession() as session:
                async with session.get(proxy.admin_url + "/status") as response:
                    status = await response.json()
            if status["config"]["reloads_applied"] == 1:
                break
            await asyncio.sleep(0.05)

    after = await burst(url, 25)  # 420 ms reads under a 750 ms per_try
    assert after == [200] * 25
    failed_before, failed_after = before.count(504) / len(before), after.count(504) / len(after)
    assert (failed_before, failed_after) == (1.0, 0.0)


async def test_follow_mode_takes_in_live_events_over_sse(upstream: FaultUpstream, tmp_path: Path) -> None:
    """Events published after the follower subscribed to /events reach it over the SSE stream.

    The requests are sent only once the follower holds the proxy's one subscription, which it opens
    after reading the buffered events: so they cannot have come with that snapshot, and the report
    counts exactly them (no summary is due for an hour, and active health checks are off).
    """
    from proxy.app import running_proxy
    from tests.conftest import proxy_config

    upstream.fault("tools/list", status=503)
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text(f"upstreams: [{{name: up, url: '{upstream.url}'}}]\n")
    config = proxy_config(upstream.url, events={"summary_interval": "1h"}, upstream={"retry": {"max_attempts": 1}})
    async with running_proxy(config) as proxy:
        follower = asyncio.create_task(
            cli("analyze", "--follow", proxy.admin_url, "--config", str(config_file), "--duration", "3s", "--interval", "1s")
        )
        async with asyncio.timeout(30):  # the follower's interpreter starting up, then its snapshot and subscription
            while proxy.bus.stats()["subscribers"] == 0:
                assert not follower.done(), await follower
                await asyncio.sleep(0.01)
        async with aiohttp.ClientSession() as session:
            for n in range(4):
                async with session.post(proxy.url + "/mcp", json={"jsonrpc": "2.0", "id": n, "method": "tools/list"}) as response:
                    assert response.status == 503
        code, out, err = await follower
    assert code == 0, err
    # All four were published while the follower ran (3 s), so their span, in whole seconds, is at most 3.
    assert re.search(r"\([0-3]s, 4 events\)$", out.splitlines()[0]), out
    assert "  4      http_5xx  up tools/list  upstream answered HTTP 503  1, 2, 3, 4" in out
