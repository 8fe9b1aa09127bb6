"""Regression fixtures: failing calls are saved redacted, and `replay` tells which still fail."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp

from proxy.app import running_proxy
from tests.conftest import REPO, proxy_config
from tests.fault_upstream import FaultUpstream
from tests.test_forwarding import JSON_HEADERS


def lookup(request_id: int) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": "lookup", "arguments": {"key": "k1", "password": "hunter2"}}}


async def replay(directory: Path, url: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "replay", str(directory), "--upstream", url,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode()


async def test_failing_calls_become_redacted_fixtures_that_replay(upstream: FaultUpstream, tmp_path: Path) -> None:
    upstream.fault("tools/call", "lookup", status=500)
    fixtures = tmp_path / "fixtures"
    config = proxy_config(
        upstream.url, upstream={"retry": {"max_attempts": 1}, "breaker": {"enabled": False}},
        events={"fixtures": {"dir": str(fixtures), "per_signature": 2}},
    )
    async with running_proxy(config) as proxy:
        async with aiohttp.ClientSession() as session:
            for n in range(4):
                headers = {**JSON_HEADERS, "Authorization": "Bearer s3cret", "Mcp-Param-Region": "eu", "Mcp-Param-Password": "hunter3"}
                async with session.post(proxy.url + "/mcp", json=lookup(n), headers=headers) as response:
                    assert response.status == 500
    files = sorted(fixtures.glob("*.json"))
    assert len(files) == 2  # per_signature bounds an outage to a handful of files
    fixture = json.loads(files[0].read_text())
    assert (fixture["method"], fixture["tool"], fixture["failure"]["kind"]) == ("tools/call", "lookup", "http_5xx")
    assert fixture["request"]["body"]["params"]["arguments"] == {"key": "[redacted]", "password": "[redacted]"}
    assert fixture["request"]["headers"]["Mcp-Param-Region"] == "eu"
    assert fixture["request"]["headers"]["Mcp-Param-Password"] == "[redacted]"  # as the `password` param it mirrors
    assert "hunter3" not in files[0].read_text()
    assert "s3cret" not in files[0].read_text() and "Authorization" not in fixture["request"]["headers"]

    code, out = await replay(fixtures, upstream.url)
    assert code == 1 and out.count("STILL FAILS") == 2 and out.strip().endswith("2 fixture(s): 0 pass, 2 still fail")
    upstream.faults.clear()
    before = upstream.attempts["tools/call:lookup"]
    code, out = await replay(fixtures, upstream.url)
    assert code == 0 and out.strip().endswith("2 fixture(s): 2 pass, 0 still fail")
    assert upstream.attempts["tools/call:lookup"] == before + 2


def test_a_fixture_directory_holds_a_bounded_number_of_signatures(tmp_path: Path) -> None:
    """A client inventing a tool name per failing call cannot fill the disk: past `MAX_SIGNATURES`
    distinct signatures nothing new is written, while signatures already kept still get their files."""
    from proxy.ops import fixtures
    from tests.fakes import make_call, tool_call

    writer = fixtures.FixtureWriter(str(tmp_path), per_signature=2)
    error = {"kind": "http_5xx", "status": 503}
    for index in range(fixtures.MAX_SIGNATURES):
        assert writer.save(make_call(tool_call(f"t{index}")), f"sig{index}", error) is not None
    assert writer.save(make_call(tool_call("invented")), "sig-new", error) is None
    assert writer.save(make_call(tool_call("t0")), "sig0", error) is not None  # a kept signature's second file
    assert len(list(tmp_path.glob("*.json"))) == fixtures.MAX_SIGNATURES + 1
    reopened = fixtures.FixtureWriter(str(tmp_path), per_signature=2)  # files on disk count after a restart
    assert reopened.save(make_call(tool_call("invented")), "sig-other", error) is None
