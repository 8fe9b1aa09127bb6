"""The harness of the live fault scenarios: a faulty upstream, the proxy as a user runs it, clients, the analyzer CLI.

Each scenario builds one `Stage`: the fault-injecting upstream (`tests.fault_upstream`) over real HTTP on
127.0.0.1, the proxy started as ``python -m proxy serve --config proxy.yaml`` (a file it hot-reloads),
and the helpers to drive traffic, read the proxy's own event stream, run the analyzer exactly as a
user types it (``python -m proxy analyze --follow ADMIN --once --config FILE --json``), apply one
proposal (``... --apply ID``) and wait for the reload.

Nothing here sleeps to synchronise. Each wait polls a condition (an event, a count, ``/status``) with a
generous timeout: `settle` waits until the proxy's `call_ok` summaries account for every call the
harness sent and every watched timeout has its `timeout_observed`, so the analyzer always sees all the
evidence of what came before; `wait_breaker_reset` waits until every breaker that opened has been open
longer than its ``reset_timeout``. The one use of the clock for pacing is `paced`, which sends calls on
a fixed schedule (the load of the rate-limit scenario), never to wait for an outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.conftest import REPO, ProxyProcess, start_proxy_process
from tests.fault_upstream import FaultUpstream

__all__ = [
    "READ",
    "Call",
    "Outcome",
    "Stage",
    "Tally",
    "base_config",
    "changes_of",
    "cli",
    "lookup",
    "only",
    "read",
    "rules_of",
    "ticket",
    "until",
]

WAIT_S = 60.0
"""Generous ceiling of every condition wait: a loaded 2-CPU machine is slow, never wrong."""
CLI_TIMEOUT_S = 90.0
READ = "resources/read"


@dataclass(frozen=True)
class Call:
    """One client call to send: a JSON-RPC method and its params."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def tool(self) -> str | None:
        return self.params.get("name") if self.method == "tools/call" else None


def read(uri: str = "demo://facts") -> Call:
    return Call(READ, {"uri": uri})


def lookup(query: str = "q") -> Call:
    return Call("tools/call", {"name": "lookup", "arguments": {"query": query}})


def ticket(title: str = "t") -> Call:
    return Call("tools/call", {"name": "create_ticket", "arguments": {"title": title}})


@dataclass(frozen=True)
class Outcome:
    """What one client saw: the HTTP status and, for an error, its reason.

    `reason` is None for a JSON-RPC result; the proxy's own ``error.data.reason`` for an answer the proxy
    gave itself (``upstream_timeout``, ``circuit_open``, ``rate_limited`` ...); ``jsonrpc_<code>`` for
    the server's own JSON-RPC error; ``http_<status>`` for an upstream answer relayed without one. An
    ``isError`` tool result is a result (the server answered), flagged by `tool_error`.
    """

    call: Call
    id: int
    status: int
    reason: str | None
    tool_error: bool = False
    retry_after: float | None = None
    stale: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass
class Tally:
    """The outcomes of one run of traffic, in the order the calls were made."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def errors(self) -> int:
        """Client-visible errors: every answer that is not a JSON-RPC result."""
        return sum(not o.ok for o in self.outcomes)

    @property
    def ok(self) -> int:
        return sum(o.ok for o in self.outcomes)

    def reasons(self) -> Counter[str]:
        return Counter(o.reason for o in self.outcomes if o.reason is not None)

    def errors_of(self, predicate: Callable[[Call], bool]) -> int:
        return sum(not o.ok for o in self.outcomes if predicate(o.call))

    def __add__(self, other: Tally) -> Tally:
        return Tally(self.outcomes + other.outcomes)


def base_config(upstream_url: str, **upstream: Any) -> dict[str, Any]:
    """A config as a user would write it for these scenarios: one upstream `up`, everything else default
    but for what makes a test exact and quick.

    Free ports; the file polled every 100 ms; events not logged (the stream is what counts), `call_ok`
    summaries every 200 ms so `settle` is quick; timed-out calls watched for 5 s; active health probes
    off (they would add requests to the upstream's exact counts). `upstream` is merged into the upstream.
    """
    return {
        "listen": {"port": 0},
        "admin": {"port": 0},
        "reload": {"interval": "100ms"},
        "events": {"log": False, "summary_interval": "200ms", "observe_timeouts": "5s"},
        "upstreams": [{"name": "up", "url": upstream_url, "health": {"active": {"enabled": False}}, **upstream}],
    }


async def cli(*args: str) -> tuple[int, str, str]:
    """``python -m proxy ARGS`` from the repository, as a user runs it: (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    return process.returncode or 0, out.decode(), err.decode()


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT_S) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}") from None


class Stage:
    """One scenario's world: the upstream, the proxy process on `config_file`, and an HTTP client."""

    def __init__(self, upstream: FaultUpstream, proxy: ProxyProcess, config_file: Path, session: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.proxy = proxy
        self.config_file = config_file
        self.session = session
        self.sent: Counter[tuple[str, str | None]] = Counter()
        """Calls sent and answered, per (method, tool): what the `call_ok` summaries must account for."""
        self._ids = itertools.count(1)
        self._reloads = 0

    @classmethod
    async def start(cls, upstream: FaultUpstream, config: dict[str, Any], tmp_path: Path, session: aiohttp.ClientSession) -> Stage:
        proxy = await start_proxy_process(config, tmp_path)
        return cls(upstream, proxy, tmp_path / "proxy.yaml", session)

    @property
    def url(self) -> str:
        return self.proxy.url + "/mcp"

    # --- traffic ---------------------------------------------------------------------------------

    def next_id(self) -> int:
        return next(self._ids)

    async def send(self, call: Call, request_id: int | None = None) -> Outcome:
        """One call, on its own JSON-RPC id (ids never repeat within a stage)."""
        request_id = self.next_id() if request_id is None else request_id
        body = {"jsonrpc": "2.0", "id": request_id, "method": call.method, "params": call.params}
        async with self.session.post(self.url, json=body) as response:
            raw = await response.read()
            status, stale = response.status, "X-Mcp-Proxy-Cache" in response.headers
        self.sent[(call.method, call.tool)] += 1
        try:
            message = json.loads(raw)
        except ValueError:
            return Outcome(call, request_id, status, f"http_{status}")
        if not isinstance(message, dict):
            return Outcome(call, request_id, status, f"http_{status}")
        if "result" in message and status == 200:
            result = message["result"]
            return Outcome(call, request_id, status, None, bool(result.get("isError")), stale=stale)
        error = message.get("error") if isinstance(message.get("error"), dict) else {}
        data = error.get("data") if isinstance(error.get("data"), dict) else {}
        reason = data.get("reason") if isinstance(data.get("reason"), str) else f"jsonrpc_{error.get('code')}"
        retry_after = data.get("retryAfter") if isinstance(data.get("retryAfter"), int | float) else None
        return Outcome(call, request_id, status, reason, retry_after=retry_after)

    async def run(self, calls: Iterable[Call], concurrency: int = 1) -> Tally:
        """Send `calls`, at most `concurrency` at a time, each worker in order; outcomes in call order."""
        listed = list(calls)
        ids = [self.next_id() for _ in listed]
        outcomes: list[Outcome | None] = [None] * len(listed)
        queue = iter(range(len(listed)))

        async def worker() -> None:
            for index in queue:
                outcomes[index] = await self.send(listed[index], ids[index])

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        return Tally([o for o in outcomes if o is not None])

    async def paced(self, calls: Sequence[Call], per_second: float) -> Tally:
        """Send call i at i / per_second after the start, without waiting for earlier answers (open loop)."""
        start = time.monotonic()

        async def at(index: int, call: Call) -> Outcome:
            await asyncio.sleep(max(0.0, start + index / per_second - time.monotonic()))
            return await self.send(call)

        return Tally(list(await asyncio.gather(*(at(i, c) for i, c in enumerate(calls)))))

    # --- the proxy's own view ------------------------------------------------------------------------

    async def events(self) -> list[dict[str, Any]]:
        async with self.session.get(self.proxy.admin_url + "/events", params={"format": "json", "since": "0"}) as response:
            assert response.status == 200
            return list(await response.json())

    async def status(self) -> dict[str, Any]:
        async with self.session.get(self.proxy.admin_url + "/status") as response:
            assert response.status == 200
            return dict(await response.json())

    async def settle(self) -> list[dict[str, Any]]:
        """Wait until the event stream holds all the evidence of the calls sent so far; return the events.

        Every finished call is counted in a `call_ok` summary (published every 200 ms), and every timeout
        the proxy keeps watching ends in a `timeout_observed` (within `observe_timeouts`).
        """
        events: list[dict[str, Any]] = []

        async def complete() -> bool:
            nonlocal events
            events = await self.events()
            counted: Counter[tuple[str, str | None]] = Counter()
            for e in events:
                if e["type"] == "call_ok":
                    counted[(e["method"], e.get("tool"))] += e["calls"]
            watched = sum(1 for e in events if e["type"] == "timeout" and e.get("observing"))
            observed = sum(1 for e in events if e["type"] == "timeout_observed")
            return counted == self.sent and observed == watched

        await until(complete, f"call_ok summaries of {dict(self.sent)} and every timeout_observed")
        return events

    async def wait_breaker_reset(self) -> None:
        """Wait until each breaker that opened has been open longer than its reset_timeout (so its next call is a trial).

        The proxy's breakers move to half-open only when a call asks, so this compares the latest
        ``breaker_state -> open`` event of each breaker with the wall clock the proxy stamps events with.
        """
        config = yaml.safe_load(self.config_file.read_text())
        reset_s = _seconds(config["upstreams"][0].get("breaker", {}).get("reset_timeout", "30s"))
        events = await self.events()
        opened: dict[str, float] = {}
        for e in events:
            if e["type"] == "breaker_state":
                if e["new"] == "open":
                    opened[e["breaker"]] = e["ts"]
                else:
                    opened.pop(e["breaker"], None)
        if not opened:
            return
        due = max(opened.values()) + reset_s + 0.1

        async def passed() -> bool:
            return time.time() >= due

        await until(passed, f"breakers {sorted(opened)} past reset_timeout {reset_s:g}s", timeout=reset_s + WAIT_S)

    # --- the analyzer, as a user runs it -----------------------------------------------------------

    async def analyze(self) -> list[dict[str, Any]]:
        """``analyze --follow ADMIN --once --config FILE --json``: the proposals, after `settle`."""
        await self.settle()
        code, out, err = await cli("analyze", "--follow", self.proxy.admin_url, "--once", "--config", str(self.config_file), "--json")
        assert code == 0, err
        return list(json.loads(out))

    async def apply(self, proposal_id: str) -> None:
        """``analyze ... --apply ID``, then wait until the proxy has reloaded the edited file."""
        code, _, err = await cli(
            "analyze", "--follow", self.proxy.admin_url, "--once", "--config", str(self.config_file), "--apply", proposal_id
        )
        assert code == 0, err
        self._reloads += 1
        expected = self._reloads

        async def reloaded() -> bool:
            status = await self.status()
            return int(status["config"]["reloads_applied"]) >= expected

        await until(reloaded, f"reload {expected} of {self.config_file.name}")

    async def stop(self) -> None:
        await self.proxy.stop()


def _seconds(value: Any) -> float:
    """A duration as the config file holds it (a number of seconds, or "250ms", "2s", "1m")."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    return float(text)


def only(proposals: list[dict[str, Any]], rule: str) -> dict[str, Any]:
    """The one proposal of `rule` (failing with every proposal shown when there is not exactly one)."""
    chosen = [p for p in proposals if p["rule"] == rule]
    assert len(chosen) == 1, f"expected one {rule} proposal, got: {[(p['rule'], p['title']) for p in proposals]}"
    return chosen[0]


def changes_of(proposal: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (old, value)} of a proposal's changes."""
    return {c["setting"]: (c["old"], c["value"]) for c in proposal["changes"]}


def rules_of(proposals: list[dict[str, Any]]) -> list[str]:
    return sorted(p["rule"] for p in proposals)
