"""The CLI as a user runs it: a subprocess, its exit code, what it prints, what it logs."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from proxy import __version__
from proxy.analyzer import Analysis, Proposal
from proxy.analyzer.rules import per_try_decision
from proxy.analyzer.stats import percentile
from tests.conftest import REPO, ProxyProcess
from tests.fault_upstream import FaultUpstream


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def test_version_and_help() -> None:
    assert run_cli("--version").stdout.strip() == f"mcp-resilience-proxy {__version__}"
    help_text = run_cli("serve", "--help").stdout
    for flag in ("--config", "--upstream", "--listen", "--admin"):
        assert flag in help_text


def test_validate_accepts_the_default_file() -> None:
    result = run_cli("validate", "config/proxy.yaml")
    assert (result.returncode, result.stdout.strip()) == (0, "config/proxy.yaml: OK (1 upstream(s): default)")


def test_validate_lists_every_error_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  - name: x\n    url: not-a-url\n    retries: 3\n")
    result = run_cli("validate", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}: invalid configuration",
        "  upstreams[0].url: not a URL: need http:// or https:// and a host (got 'not-a-url')",
        "  upstreams[0].retries: unknown key",
    ]


def test_serve_refuses_a_bad_config_before_binding(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams: [\n")
    result = run_cli("serve", "--config", str(bad))
    assert result.returncode == 1
    assert "invalid YAML" in result.stderr


def test_schema_command_prints_the_exported_schema() -> None:
    result = run_cli("schema")
    assert json.loads(result.stdout) == json.loads((REPO / "config" / "proxy.schema.json").read_text())


async def test_secrets_never_reach_the_logs(
    upstream: FaultUpstream, proxy_process: Callable[[dict[str, Any]], Awaitable[ProxyProcess]]
) -> None:
    upstream.fault("tools/call", "lookup", status=500)
    proxy = await proxy_process(
        {
            "listen": {"port": 0}, "admin": {"port": 0}, "logging": {"access_log": True},
            "upstreams": [{"name": "up", "url": upstream.url}, {"name": "dead", "url": "http://127.0.0.1:9/mcp", "path": "/dead"}],
        }
    )
    secret = "Bearer sk-live-very-secret-token"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "lookup", "arguments": {}}}
    async with aiohttp.ClientSession() as session:
        for path in ("/mcp", "/dead"):
            async with session.post(proxy.url + path, json=body, headers={"Authorization": secret}) as response:
                await response.read()
    # By method, not `received[-1]`: active health checks are on here, and a probe may come in last.
    calls = [received for received in upstream.received if received.method == "tools/call"]
    assert calls and all(received.headers["Authorization"] == secret for received in calls)
    await proxy.stop()
    await asyncio.wait_for(proxy.collector, 10)  # type: ignore[attr-defined]
    lines = proxy.log_lines
    assert [line["event"] for line in lines if line.get("event") in ("access", "call_failed")] == ["call_failed", "access", "call_failed", "access"]
    assert all("sk-live" not in json.dumps(line) for line in lines)


async def test_quick_start_serves_in_front_of_one_upstream(upstream: FaultUpstream) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--upstream", upstream.url, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        cwd=REPO, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            while (started := json.loads(await process.stderr.readline()))["event"] != "proxy_started":
                pass  # a health probe may report before the listeners are up
        async with aiohttp.ClientSession() as session:
            async with session.post(started["listen"] + "/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}) as response:
                assert response.status == 200
                assert (await response.json())["result"]["tools"][0]["name"] == "lookup"
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


PHASES = ("healthy", "flaky", "down", "recovered", "slow", "fixed")
EVIDENCE = "demo evidence: "


@dataclass(frozen=True)
class PhaseRow:
    """One row of the demo's phase table: what the clients saw in the phase, and what the proxy did."""

    calls: int
    failed: int
    reads_failed: int
    retries: int
    stale: int
    fast_fail: int


def phase_rows(stdout: str) -> dict[str, PhaseRow]:
    """The phase table, by phase name, in the order printed (the proposal lines between rows are indented)."""
    rows = {}
    for line in stdout.splitlines():
        words = line.split()
        if words and words[0] in PHASES and not line.startswith(" ") and all(w.isdigit() for w in words[-6:]):
            rows[words[0]] = PhaseRow(*map(int, words[-6:]))
    return rows


def operation_totals(stdout: str) -> dict[str, tuple[int, int]]:
    """The final per-operation table: (calls, ok) by operation, over the whole run."""
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("operation ")) + 1
    last = next(i for i, line in enumerate(lines) if line.startswith("rounds by mode:"))
    return {words[0]: (int(words[1]), int(words[2])) for words in (line.split() for line in lines[first:last])}


def print_demo_evidence() -> None:
    """In the demo's own process: print the evidence its analyzer decides on, as it decides.

    The demo's phases are wall-clock spans, so how many reads time out in its 'slow' phase (the
    timeouts rule needs 20) depends on how fast the machine runs the workload. With what the analyzer
    saw printed, the test can hold the demo to what the rule must make of exactly that, on any machine.
    """
    import proxy.demo.run as demo

    real = demo.propose

    def propose(analysis: Analysis, config_text: str, **kwargs: Any) -> list[Proposal]:
        for stats in analysis.all_targets():
            if stats.target.method == "resources/read":
                sys.stdout.write(EVIDENCE + json.dumps({"timeouts": stats.timeouts, "observed_ms": stats.observed_ms}) + "\n")
        return real(analysis, config_text, **kwargs)

    demo.propose = propose


DEMO_WITH_EVIDENCE = "import sys; from tests.test_cli import print_demo_evidence; print_demo_evidence(); from proxy.cli.main import main; sys.exit(main(sys.argv[1:]))"
"""`python -m proxy` (the same `main`), with the analyzer's evidence printed."""


def test_demo_runs_its_phases_learns_and_exits_zero() -> None:
    """The demo's story, checked by what holds whatever the machine's speed.

    How many calls each wall-clock phase holds depends on the machine; so the test checks exact
    bookkeeping, outcomes the mechanisms make certain, and, for what needs traffic to show at all, either
    a count derived from the mechanism or the analyzer's own evidence.
    """
    result = subprocess.run(
        [sys.executable, "-c", DEMO_WITH_EVIDENCE, "demo", "--duration", "16"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    rows = phase_rows(out)
    assert list(rows) == list(PHASES)
    healthy, flaky, down, slow, fixed = (rows[name] for name in ("healthy", "flaky", "down", "slow", "fixed"))

    # The phase rows split the final per-operation totals between them, exactly.
    totals = operation_totals(out)
    assert sum(row.calls for row in rows.values()) == sum(calls for calls, _ in totals.values())
    assert sum(row.failed for row in rows.values()) == sum(calls - ok for calls, ok in totals.values())
    assert sum(row.reads_failed for row in rows.values()) == totals["resources/read"][0] - totals["resources/read"][1]
    assert all(0 <= row.reads_failed <= row.failed <= row.calls for row in rows.values())
    # Every `slow` call that succeeded saw all four of its progress notifications, relayed in order.
    slow_ok = totals["slow"][1]
    assert f"slow progress: {f'4 notifications x{slow_ok}' if slow_ok else '-'}" in out.splitlines()

    # Nothing is injected while healthy: the only way to fail would be a read over its 150 ms limit.
    assert healthy.calls > 0 and healthy.failed == 0
    # 20% of requests draw a random 503; 4 of each round's 7 calls (tools/list, lookup, slow, prompts/get)
    # are idempotent and retried. A round cut by either end of the phase costs at most 6 calls per worker,
    # so 120 calls hold 13 whole rounds, 52 such first attempts: all miss the 503s with p = 0.8**52 < 1e-5.
    if flaky.calls >= 120:
        assert flaky.retries > 0
    # Every request fails; 10 failed attempts in a row open the breaker, and from then on calls fail fast.
    # At most every other call sends no request (a 2026-07-28 connect), so 30 calls make 15 attempts or
    # more; tools/list succeeded while healthy, so its stored answer stands in for it, stale.
    if down.calls >= 30:
        assert down.stale > 0 and down.fast_fail > 0

    evidence = [json.loads(line.removeprefix(EVIDENCE)) for line in out.splitlines() if line.startswith(EVIDENCE)]
    assert len(evidence) <= 1, evidence
    timeouts, observed = (evidence[0]["timeouts"], evidence[0]["observed_ms"]) if evidence else (0, [])
    # In 'slow' the server sleeps 300 ms before it answers a read, so a shorter observation can only be
    # of a read that took over its 150 ms earlier on (a busy machine), and that read failed in its phase.
    early = [ms for ms in observed if ms < 300]
    assert len(early) <= sum(rows[name].reads_failed for name in PHASES[:4]), observed
    # A read that failed in 'slow' timed out (they take 300 ms, the limit is 150 ms) before the analysis,
    # unless an open breaker failed it fast.
    assert timeouts >= slow.reads_failed - slow.fast_fail
    p95 = percentile(observed, 0.95)
    # The rule's own decision on this evidence; its materiality test (timed-out reads among all reads) holds
    # whenever this does: in 'slow' every read times out.
    due = per_try_decision(observed, timeouts, 0.15) is not None
    proposed = re.search(r"^    analyzer proposal \w+: Raise per_try for demo resources/read from 150ms to (\S+)$", out, re.MULTILINE)
    assert (proposed is not None) == due, (timeouts, len(observed), p95)
    if proposed is None:
        assert "the analyzer has no timeout proposal yet" in out and "per_try: " not in out
        # Nothing changed, so every read still times out. 14 calls in 'fixed' include 7 in a row from
        # one of the two workers, and each run of 7 in a row holds that worker's read.
        if fixed.calls >= 14:
            assert fixed.reads_failed > 0
        return
    # The rule writes the smallest readable duration at or above 1.2 x the observed p95 (or the successful
    # reads' p99, but those finished within 150 ms). Observed at 300 ms or more, and at most 3 x 150 ms
    # (else the reads look stuck, not slow), 1.2 x p95 lies in [360, 540] ms: 400ms, 500ms or 750ms.
    value = proposed.group(1)
    assert f"+      per_try: {value}" in out
    if not early:
        assert value in ("400ms", "500ms", "750ms")
    # Once reloaded, a 300 ms read fits the new per_try (>= 400 ms): in 'fixed', reads fail only until the
    # reload lands (the analysis, then a 200 ms file poll), a small part of the phase's 3.2 s or more. In
    # 'slow' every read failed. Shares of calls, not counts, so the machine's speed cancels out.
    assert 2 * fixed.reads_failed * slow.calls < slow.reads_failed * fixed.calls, (slow, fixed)


def test_demo_rejects_a_bad_listen_address_with_a_clear_error() -> None:
    result = run_cli("demo", "--listen", "nonsense", "--duration", "1")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == ["invalid demo options:", "  --listen: must be HOST:PORT (got 'nonsense')"]


def test_serve_raises_the_soft_open_files_limit_to_the_hard_one() -> None:
    """A soft limit of 1024 (a shell's default) would make the default connection cap tiny."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip("the hard limit leaves nothing to raise")
    code = (
        "import resource; from proxy.cli.main import _raise_fd_limit; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])); "
        "_raise_fd_limit(); print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    soft = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert soft > 1024 and (hard == resource.RLIM_INFINITY or soft == hard)


def test_validate_never_prints_a_token_it_quotes(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text('upstreams:\n  - name: a\n    url: "ftp://127.0.0.1:1/mcp?token=SECRETTOKQ&api_key=APIKEYQ"\n')
    result = run_cli("validate", str(path))
    assert result.returncode == 1 and "upstreams[0].url" in result.stderr
    assert "SECRETTOKQ" not in result.stderr + result.stdout and "APIKEYQ" not in result.stderr + result.stdout


STDIO_HINT = "e.g. serve --stdio -- npx -y @modelcontextprotocol/server-everything"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--stdio"], f"--stdio needs the server's command after --, {STDIO_HINT}"),
        (["--stdio", "--"], f"--stdio needs the server's command after --, {STDIO_HINT}"),
        (["--stdio", "server", "x"], f"--stdio: put the server's whole command after --, {STDIO_HINT}"),
        (["--stdio", "server", "--", "x"], f"--stdio: put the server's whole command after --, {STDIO_HINT}"),
        (["--stdio", "npx", "-y", "pkg"], f"unrecognized arguments: -y pkg; --stdio: put the server's whole command after --, {STDIO_HINT}"),
        (["--upstream", "http://127.0.0.1:1/mcp", "--", "server"], f"a server's command (server) goes with --stdio, {STDIO_HINT}"),
        (["--config", "config/proxy.yaml", "--", "server"], f"a server's command (server) goes with --stdio, {STDIO_HINT}"),
        (["--stdio", "--bogus", "--", "server"], "unrecognized arguments: --bogus"),
    ],
)  # fmt: skip
def test_serve_stdio_usage_errors_say_how(args: list[str], error: str) -> None:
    result = run_cli("serve", *args)
    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", [f"mcp-resilience-proxy serve: error: {error}"])


def test_serve_stdio_is_exclusive_with_the_other_sources() -> None:
    for flag, value in (("--upstream", "http://127.0.0.1:1/mcp"), ("--config", "config/proxy.yaml")):
        result = run_cli("serve", "--stdio", flag, value, "--", sys.executable)
        assert result.returncode == 2
        assert result.stderr.splitlines()[-1] == f"mcp-resilience-proxy serve: error: argument {flag}: not allowed with argument --stdio"


def test_serve_stdio_refuses_a_program_not_found_before_starting() -> None:
    result = run_cli("serve", "--stdio", "--listen", "127.0.0.1:0", "--", "mcp-proxy-test-no-such-program", "--flag")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == ["invalid configuration:", "  --stdio: 'mcp-proxy-test-no-such-program' not found on PATH"]


def test_serve_stdio_builds_one_command_upstream_from_everything_after_the_dashes() -> None:
    from proxy.cli.main import _load, _parser, _serve_usage

    argv = ["serve", "--stdio", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--",
            sys.executable, "-m", "server", "--listen", "x", "--", "--stdio", ""]  # fmt: skip
    args = _parser().parse_args(argv)
    assert _serve_usage(args, argv) is None
    config = _load(args)
    (upstream,) = config.upstreams
    assert upstream.command == (sys.executable, "-m", "server", "--listen", "x", "--", "--stdio", "")
    assert (upstream.name, upstream.path, upstream.url, upstream.isolation) == ("default", "/mcp", None, "shared")
    assert (config.listen.host, config.listen.port, config.admin.port) == ("127.0.0.1", 0, 0)


def test_serve_help_names_stdio() -> None:
    help_text = run_cli("serve", "--help").stdout
    assert "--stdio" in help_text and "-- CMD ARGS..." in help_text


def test_listen_with_a_config_file_names_both_quick_starts() -> None:
    result = run_cli("serve", "--config", "config/proxy.yaml", "--listen", "127.0.0.1:0")
    assert (result.returncode, result.stderr.splitlines()) == (
        1,
        ["invalid configuration:", "  --listen/--admin go with --upstream or --stdio; set listen/admin in the config file instead"],
    )


def test_validate_lists_stdio_upstreams_with_their_program_only(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "upstreams:\n"
        "  - {name: web, url: 'http://127.0.0.1:3000/mcp'}\n"
        f"  - {{name: files, command: ['{sys.executable}', -m, server, --token, SECRETARGQ], path: /files}}\n"
        f"  - {{name: notes, command: ['{sys.executable}'], path: /notes, isolation: per_session}}\n"
    )
    result = run_cli("validate", str(path))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.strip() == (
        f"{path}: OK (3 upstream(s): web, files [stdio: {sys.executable}], notes [stdio: {sys.executable}, per_session])"
    )


def test_validate_lists_every_stdio_error_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text(
        "upstreams:\n"
        "  - {name: a, command: [mcp-proxy-test-no-such-program]}\n"
        "  - {name: b, url: 'http://127.0.0.1:3000/mcp', path: /b, env: {TOKEN: x}}\n"
        "  - {name: c, path: /c}\n"
    )
    result = run_cli("validate", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: invalid configuration",
        "  upstreams[0].command: 'mcp-proxy-test-no-such-program' not found on PATH",
        "  upstreams[1].env: only with command (this upstream is a url)",
        "  upstreams[2]: needs either url or command",
    ]
