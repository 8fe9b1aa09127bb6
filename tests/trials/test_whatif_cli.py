"""``analyze --what-if`` end to end: the CLI on a recorded file, and on a recording a real proxy wrote.

The real run is the analyzer's own example (docs/analyzer.md): reads answering in ~420 ms under a 200 ms
per-try timeout, watched in the background until they answer. The proxy writes its events to a file
(`events.file`); the analyzer proposes a longer per_try from that file, and the replay of the same file
under the proposal must find the 25 failures gone, as applying it did in `tests/test_analyzer_e2e.py`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from tests.conftest import REPO, ProxyProcess
from tests.fault_upstream import FaultUpstream
from tests.trials.builders import Recording

CONFIG = """\
# what-if test config
upstreams:
  - name: docs
    url: http://127.0.0.1:1/mcp
    timeouts: {per_try: 200ms, total: 1s}   # too short for the reads
    retry: {max_attempts: 1}
    breaker: {enabled: false}
"""


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "analyze", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def recorded(tmp_path: Path) -> tuple[Path, Path]:
    r = Recording("docs")
    for i in range(40):
        r.ok(1.0 + i, method="resources/read", tool=None, latency_ms=60.0)
    for i in range(25):
        r.call(2.0 + i, ["timeout"], method="resources/read", tool=None, observed={1: 400.0 + 4 * i})
    r.flush(50.0)
    events, config = tmp_path / "events.jsonl", tmp_path / "proxy.yaml"
    events.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in r.events))
    config.write_text(CONFIG)
    return events, config


def timeouts_proposal(events: Path, config: Path) -> dict[str, Any]:
    run = analyze("--events", str(events), "--config", str(config), "--json")
    assert run.returncode == 0, run.stderr
    (proposal,) = [p for p in json.loads(run.stdout) if p["rule"] == "timeouts"]
    return proposal  # type: ignore[no-any-return]


def test_what_if_a_proposal_prints_before_after_and_the_verdict(tmp_path: Path) -> None:
    events, config = recorded(tmp_path)
    proposal = timeouts_proposal(events, config)
    run = analyze("--events", str(events), "--config", str(config), "--what-if", proposal["id"])
    assert run.returncode == 0, run.stderr
    rows = {line[:30].strip(): line[30:].split() for line in run.stdout.splitlines() if line[:30].strip()}
    assert rows["client-visible errors"] == ["25", "0", "-25"]
    assert rows["timeout"] == ["25", "0", "-25"]
    assert rows["succeeded"] == ["40", "65", "+25"]
    assert rows["calls"] == ["65", "65", "+0"]
    assert f"proposal {proposal['id']} (timeouts)" in run.stdout
    assert "would_complete (timed-out attempts avoided): estimated 25, replayed 25" in run.stdout
    assert "verdict: reproduced (replayed 25 vs estimated 25 for would_complete" in run.stdout
    assert config.read_text() == CONFIG  # a what-if never writes


def test_what_if_json_and_another_config_file(tmp_path: Path) -> None:
    events, config = recorded(tmp_path)
    proposal = timeouts_proposal(events, config)
    run = analyze("--events", str(events), "--config", str(config), "--what-if", proposal["id"], "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert (document["scope"], document["records"]) == ("docs resources/read", 65)
    assert document["figures"]["before"]["errors_by_kind"] == {"timeout": 25}
    assert document["figures"]["change"]["errors"] == -25
    assert document["verdict"]["status"] == "reproduced"
    assert document["verdict"]["estimates"] == [
        {"figure": "would_complete", "meaning": "timed-out attempts avoided", "estimated": 25.0, "replayed": 25, "within_tolerance": True}
    ]
    other = tmp_path / "other.yaml"
    other.write_text(CONFIG.replace("per_try: 200ms", "per_try: 420ms"))  # only the faster reads complete
    run = analyze("--events", str(events), "--config", str(config), "--what-if", str(other), "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert (document["what_if"]["proposal"], document["scope"], document["verdict"]) == (None, "the whole window", None)
    assert (document["figures"]["before"]["errors"], document["figures"]["after"]["errors"]) == (25, 19)


def test_what_if_needs_a_known_proposal_or_a_file_and_a_recording(tmp_path: Path) -> None:
    events, config = recorded(tmp_path)
    run = analyze("--events", str(events), "--config", str(config), "--what-if", "0000000000")
    assert run.returncode == 1
    assert "--what-if 0000000000: neither a proposal of this analysis" in run.stderr
    run = analyze("--follow", "http://127.0.0.1:1", "--config", str(config), "--what-if", "x")
    assert (run.returncode, run.stderr.strip()) == (1, "analyze: --what-if replays a recorded file: give it --events FILE")
    run = subprocess.run([sys.executable, "-m", "proxy", "analyze", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "--what-if ID|FILE" in run.stdout


READ = {"jsonrpc": "2.0", "method": "resources/read", "params": {"uri": "demo://facts"}}


async def test_a_real_recording_of_25_timed_out_reads_replays_to_no_errors(
    upstream: FaultUpstream, proxy_process: Callable[[dict[str, Any]], Awaitable[ProxyProcess]], tmp_path: Path
) -> None:
    upstream.fault("resources/read", delay=0.42)
    events = tmp_path / "events.jsonl"
    proxy = await proxy_process({
        "listen": {"port": 0},
        "admin": {"port": 0},
        "events": {"observe_timeouts": "5s", "log": False, "file": {"path": str(events)}},
        "upstreams": [{
            "name": "docs", "url": upstream.url, "health": {"active": {"enabled": False}},
            "timeouts": {"per_try": "200ms", "total": "1s"}, "retry": {"max_attempts": 1}, "breaker": {"enabled": False},
        }],
    })  # fmt: skip
    async with aiohttp.ClientSession() as session:

        async def one(n: int) -> int:
            async with session.post(proxy.url + "/mcp", json={**READ, "id": n}) as response:
                await response.read()
                return response.status

        assert await asyncio.gather(*(one(n) for n in range(25))) == [504] * 25

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in events.read_text().splitlines() if line.strip()] if events.exists() else []

    async with asyncio.timeout(30):  # the observations end ~420 ms after each read began; the file follows
        while sum(e["type"] == "timeout_observed" for e in lines()) < 25:
            await asyncio.sleep(0.05)
    config = tmp_path / "proxy.yaml"  # the file the proxy runs on
    proposal = timeouts_proposal(events, config)
    assert proposal["effect"]["numbers"]["timed_out"] == 25
    run = analyze("--events", str(events), "--config", str(config), "--what-if", proposal["id"], "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    figures = document["figures"]
    assert (figures["before"]["errors"], figures["after"]["errors"]) == (25, 0)
    assert (figures["before"]["errors_by_kind"], figures["after"]["succeeded"]) == ({"timeout": 25}, 25)
    assert document["verdict"]["status"] == "reproduced"


def test_what_the_cli_prints_and_writes_never_holds_the_files_credentials(tmp_path: Path) -> None:
    """The diff's context lines are lines of the operator's file: its upstream URL's user, password and
    key parameters are redacted in the report, the JSON, the Markdown file and the what-if."""
    events, config = recorded(tmp_path)
    secret_url = "http://alice:hunter2pw@127.0.0.1:1/mcp?api_key=SEKRET1&sig=SEKRET2"
    # In the url, and in a comment right where the change goes, so that it is a context line of every diff.
    config.write_text(CONFIG.replace("http://127.0.0.1:1/mcp", secret_url) + f"    # mirror: {secret_url}\n")
    report = tmp_path / "report.md"
    outputs = [
        analyze("--events", str(events), "--config", str(config)).stdout,
        analyze("--events", str(events), "--config", str(config), "--report", str(report)).stdout,
        analyze("--events", str(events), "--config", str(config), "--json").stdout,
    ]
    proposal = json.loads(outputs[-1])[0]
    assert proposal["changes"][0]["setting"] == "timeouts.per_try"  # the setting a change touches is no secret
    outputs.append(analyze("--events", str(events), "--config", str(config), "--what-if", proposal["id"], "--json").stdout)
    outputs.append(report.read_text())
    assert all("mirror: http://" in text for text in (outputs[0], outputs[2], outputs[4]))  # the diffs, with their context
    for text in outputs:
        assert not {"hunter2pw", "SEKRET1", "SEKRET2", "alice"} & set(text.replace("@", " ").replace("&", " ").replace("=", " ").replace(":", " ").replace("/", " ").split())
        assert "hunter2pw" not in text and "SEKRET" not in text


def test_a_window_spanning_a_reload_is_said_to(tmp_path: Path) -> None:
    events, config = recorded(tmp_path)
    reload = {"v": 1, "id": 10_000, "ts": 1_700_000_030.0, "type": "config_reloaded", "trigger": "api", "file_hash": "abc"}
    events.write_bytes(events.read_bytes() + orjson.dumps(reload) + b"\n")
    run = analyze("--events", str(events), "--config", str(config))
    assert run.returncode == 0 and "the window spans 1 config reload(s)" in run.stderr
    quiet = analyze("--events", str(events), "--config", str(config), "--window", "1s")
    assert "config reload" not in quiet.stderr
