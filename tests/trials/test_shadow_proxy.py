"""Shadow trials in a real proxy started from a config file: ``POST /trials`` (as ``analyze --shadow`` sends
it), traffic through the fault upstream, the verdict, the promoted file, and the hot reload of it.

The upstream answers reads in 300 ms; the file allows 200 ms, the candidate 2 s. The proxy watches the
timed-out reads (``events.observe_timeouts``) and records when they answered, so the trial's replay
finds every one of them rescued: an observation past 2 s would take a machine 1.7 s slower than the delay.
The trial's clock is frozen at its start until the test has its traffic in (a trial counts what happens
in its span, and how much a loaded machine fits in one second is not what this test is about); then it
is moved past the end, and the test waits for the proxy's own trial task to give the verdict.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from proxy.analyzer import Change, Match, Proposal, edit_text
from proxy.analyzer.proposal import Effect
from proxy.analyzer.yamledit import unified_diff
from proxy.app import ProxyServer, running_proxy
from proxy.cli.shadow import start_trial
from proxy.config.model import load_config
from proxy.trials.shadow import MAX_TRIAL_BODY_BYTES
from tests.conftest import REPO, proxy_config
from tests.fault_upstream import FaultUpstream

READ = {"jsonrpc": "2.0", "method": "resources/read", "params": {"uri": "demo://facts"}}
READS = 25


def file_config(upstream_url: str) -> dict[str, Any]:
    return {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "reload": {"watch": False, "interval": "100ms"},
        "events": {"observe_timeouts": "5s", "log": False, "summary_interval": "1h"},
        "analyzer": {"enabled": True, "interval": "1h", "shadow": {"duration": "1s", "min_calls": 20, "tolerance": 0.2}},
        "upstreams": [{
            "name": "docs", "url": upstream_url, "health": {"active": {"enabled": False}},
            "timeouts": {"per_try": "200ms", "total": "5s"}, "retry": {"max_attempts": 1}, "breaker": {"enabled": False},
        }],
    }  # fmt: skip


def per_try_proposal(text: str, value: str = "2s") -> Proposal:
    made = Proposal(
        rule="timeouts", target="docs resources/read", title="Raise per_try for docs resources/read", rationale="r",
        evidence={}, effect=Effect("e", {"timed_out": READS, "would_complete": READS, "percent": 100}),
        confidence="high", confidence_reason="", changes=(Change("docs", Match(method="resources/read"), "timeouts.per_try", value, "200ms"),),
    )  # fmt: skip
    return made.with_diff(unified_diff(text, edit_text(text, made.changes)))


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def burst(session: aiohttp.ClientSession, url: str, count: int) -> list[int]:
    async def one(n: int) -> int:
        async with session.post(url, json={**READ, "id": n}) as response:
            await response.read()
            return response.status

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def of_type(proxy: ProxyServer, kind: str) -> list[dict[str, Any]]:
    return [e for e in proxy.bus.recent() if e["type"] == kind]


async def test_a_trial_posted_by_the_cli_is_measured_promoted_written_and_reloaded(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("resources/read", delay=0.3)
    path = tmp_path / "proxy.yaml"
    original = yaml.safe_dump(file_config(upstream.url))
    path.write_text(original)
    async with running_proxy(load_config(original, {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        trials = proxy.trial_manager()
        assert trials is not None
        frozen = [trials.clock()]
        trials.clock = lambda: frozen[0]
        out: list[str] = []
        proposal = per_try_proposal(original)
        assert await start_trial(proxy.admin_url, path, proposal, None, out.append, out.append) == 0
        assert out[0].startswith("trial ") and f"of proposal {proposal.id} started for 1s" in out[0]
        assert f"curl {proxy.admin_url}/trials" in out[1]
        (started,) = of_type(proxy, "trial_started")
        assert (started["proposal"], started["duration_s"]) == (proposal.id, 1.0)

        assert await burst(session, proxy.url + "/mcp", READS) == [504] * READS  # the live 200 ms still enforces
        await eventually(lambda: len(of_type(proxy, "timeout_observed")) == READS)
        assert path.read_text() == original
        frozen[0] += 1.0
        await eventually(lambda: not trials.busy)

        async with session.get(proxy.admin_url + "/trials") as response:
            document = await response.json()
        (trial,) = document["finished"]
        assert document["running"] is None and trial["id"] == started["trial"]
        (finished,) = of_type(proxy, "trial_finished")
        assert (trial["verdict"], finished["verdict"]) == ("promoted", "promoted"), finished["reason"]
        assert (finished["measured"]["calls"], finished["measured"]["errors_before"], finished["measured"]["errors_after"]) == (READS, READS, 0)
        assert path.read_text() == edit_text(original, proposal.changes)
        assert Path(trial["backup"]).read_text() == original

        async def reloads() -> int:
            async with session.get(proxy.admin_url + "/status") as response:
                return int((await response.json())["config"]["reloads_applied"])

        async with asyncio.timeout(15):
            while await reloads() != 1:
                await asyncio.sleep(0.02)
        assert await burst(session, proxy.url + "/mcp", 5) == [200] * 5  # 300 ms reads under the promoted 2 s
        async with session.get(proxy.admin_url + "/proposals") as response:
            assert (await response.json())["trial"]["verdict"] == "promoted"


async def test_the_admin_api_refuses_what_cannot_run_and_aborts_on_delete(upstream: FaultUpstream, tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    original = yaml.safe_dump(file_config(upstream.url))
    path.write_text(original)
    proposal = per_try_proposal(original)
    body = {
        "proposal": proposal.to_dict(), "candidate": edit_text(original, proposal.changes),
        "base_hash": hashlib.sha256(original.encode()).hexdigest(), "duration": "10m",
    }  # fmt: skip
    async with running_proxy(load_config(original, {}), config_path=path) as proxy, aiohttp.ClientSession() as session:
        trials_url = proxy.admin_url + "/trials"

        async def post(payload: Any) -> tuple[int, dict[str, Any]]:
            data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
            async with session.post(trials_url, data=data) as response:
                return response.status, await response.json()

        assert (await post(b"[1, 2"))[0] == 400
        assert (await post(b"x" * (MAX_TRIAL_BODY_BYTES + 1)))[0] == 413
        assert (await post({**body, "duration": "soon"}))[0] == 422
        status, too_long = await post({**body, "duration": "25h"})
        assert status == 422 and "at most 86400s" in too_long["error"]
        status, stale = await post({**body, "base_hash": "0" * 64})
        assert status == 409 and "changed since the proposal was made" in stale["error"]

        status, accepted = await post(body)
        assert status == 201 and accepted["trial"]["duration_s"] == 600.0
        trial_id = accepted["trial"]["id"]
        status, busy = await post(body)
        assert status == 409 and f"trial {trial_id} " in busy["error"]

        async with session.delete(f"{trials_url}/nosuchtrial") as response:
            assert response.status == 404
        async with session.delete(f"{trials_url}/{trial_id}") as response:
            assert response.status == 200 and (await response.json())["verdict"] == "aborted"
        async with session.get(trials_url) as response:
            document = await response.json()
        assert document["running"] is None and [t["verdict"] for t in document["finished"]] == ["aborted"]
        assert path.read_text() == original and [e["verdict"] for e in of_type(proxy, "trial_finished")] == ["aborted"]


async def test_trials_need_a_proxy_started_from_a_file(upstream: FaultUpstream) -> None:
    async with running_proxy(proxy_config(upstream.url)) as proxy, aiohttp.ClientSession() as session:
        async with session.post(proxy.admin_url + "/trials", json={}) as response:
            assert response.status == 409 and "serve --config FILE" in (await response.json())["error"]


async def test_a_trial_still_running_when_the_proxy_stops_is_aborted_and_writes_nothing(upstream: FaultUpstream, tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    original = yaml.safe_dump(file_config(upstream.url))
    path.write_text(original)
    async with running_proxy(load_config(original, {}), config_path=path) as proxy:
        trials = proxy.trial_manager()
        assert trials is not None
        trials.trial(per_try_proposal(original))
    assert path.read_text() == original and [e["reason"] for e in of_type(proxy, "trial_finished")] == ["the proxy stopped"]


def test_shadow_needs_apply_and_follow(tmp_path: Path) -> None:
    events, config = tmp_path / "events.jsonl", tmp_path / "proxy.yaml"
    events.write_text("")
    config.write_text("upstreams: []\n")

    def analyze(*args: str) -> tuple[int, str]:
        argv = [sys.executable, "-m", "proxy", "analyze", "--events", str(events), "--config", str(config), *args]
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        return result.returncode, result.stderr

    code, err = analyze("--apply", "abc", "--shadow")
    assert code == 1 and "--shadow needs --follow ADMIN_URL" in err
    code, err = analyze("--shadow", "5m")
    assert code == 1 and "--shadow goes with --apply ID" in err
