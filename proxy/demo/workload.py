"""A client workload that drives the demo tools through the official SDK client.

Each worker opens ``mcp.Client(url, mode=...)``, cycling through the modes in ``MODES`` (so
both protocol eras and the ``auto`` negotiation get traffic), runs one round of operations,
and closes the client (a legacy client sends ``DELETE`` on close). One round is:

``tools/list`` → ``lookup`` → ``slow`` (progress counted) → ``create_ticket`` →
``resources/read`` → ``prompts/get``

Every outcome and latency goes into a ``WorkloadStats`` the caller can render while the
workload runs. Failures are data here, never exceptions: a JSON-RPC error, a timeout or a
dead transport is recorded and the worker carries on, opening a fresh client when the old
session cannot be used any more.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any, Final

import structlog
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INVALID_REQUEST
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from proxy.demo.server import DEMO_PROMPT, DEMO_RESOURCE_URI, FACTS

__all__ = [
    "MODES",
    "OPERATIONS",
    "CallStats",
    "WorkloadStats",
    "run_workload",
]

logger = structlog.get_logger(__name__)

MODES: Final[tuple[str, ...]] = ("legacy", "2026-07-28", "auto")
"""``mcp.Client`` ``mode=`` values the workload cycles through, in order."""

OPERATIONS: Final[tuple[str, ...]] = (
    "connect",
    "tools/list",
    "lookup",
    "slow",
    "create_ticket",
    "resources/read",
    "prompts/get",
)
"""Operation names used as keys of ``WorkloadStats.ops``, in the order a round runs them."""

OK: Final = "ok"
TOOL_ERROR: Final = "tool_error"
"""A tool answered with ``isError: true``: the call worked, the tool reported a failure."""

LATENCY_WINDOW: Final = 10_000
"""Latencies kept per operation; percentiles describe this most recent window."""

Clock = Callable[[], float]


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in (0, 1]) of already sorted values; ``None`` when empty."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 1))  # ceil(n * q), at least 1
    return sorted_values[int(rank) - 1]


@dataclass(slots=True)
class CallStats:
    """Outcomes and recent latencies of one operation."""

    outcomes: Counter[str] = field(default_factory=Counter)
    """Count per outcome: ``"ok"``, ``"tool_error"``, ``"error:<json-rpc code>"`` or
    ``"exception:<type>"`` (the client itself failed, e.g. the connection dropped)."""
    latencies_s: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def record(self, outcome: str, latency_s: float) -> None:
        self.outcomes[outcome] += 1
        self.latencies_s.append(latency_s)

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    @property
    def ok(self) -> int:
        return self.outcomes[OK]

    def percentiles(self) -> tuple[float | None, float | None]:
        """(p50, p99) in seconds over the latency window; ``None`` before the first call."""
        values = sorted(self.latencies_s)
        return _percentile(values, 0.50), _percentile(values, 0.99)


@dataclass(slots=True)
class WorkloadStats:
    """Everything a workload observed; safe to read (and render) while it runs.

    All updates happen on the event loop thread, so readers on the same loop see a
    consistent snapshot between awaits.
    """

    ops: dict[str, CallStats] = field(default_factory=lambda: {op: CallStats() for op in OPERATIONS})
    slow_progress: Counter[int] = field(default_factory=Counter)
    """For successful ``slow`` calls: progress notifications received → number of calls."""
    rounds_by_mode: Counter[str] = field(default_factory=Counter)
    """Rounds started, by client mode."""
    protocol_versions: Counter[str] = field(default_factory=Counter)
    """Protocol version each successful connect negotiated (shows what ``auto`` picked)."""
    clients_lost: int = 0
    """Clients abandoned because their session or transport died after connecting. A pinned
    modern mode connects without any request, so there an unreachable server counts here too."""
    recent_errors: deque[str] = field(default_factory=lambda: deque(maxlen=20))
    """Latest failure descriptions, newest last."""

    def record(self, op: str, outcome: str, latency_s: float, detail: str | None = None) -> None:
        """Record one finished operation; ``detail`` (for failures) goes to ``recent_errors``."""
        self.ops.setdefault(op, CallStats()).record(outcome, latency_s)
        if detail is not None:
            self.recent_errors.append(f"{op}: {outcome}: {detail}")

    def counts(self) -> dict[str, dict[str, int]]:
        """Outcome counts per operation, leaving out operations that never ran."""
        return {op: dict(stats.outcomes) for op, stats in self.ops.items() if stats.total}

    @property
    def total_calls(self) -> int:
        return sum(stats.total for stats in self.ops.values())

    @property
    def failed_calls(self) -> int:
        return sum(stats.total - stats.ok for stats in self.ops.values())

    def render(self) -> str:
        """A fixed-width text table of the stats, for a live terminal summary."""
        lines = [f"{'operation':<16}{'calls':>7}{'ok':>7}{'p50 ms':>9}{'p99 ms':>9}  failures"]
        for op, stats in self.ops.items():
            if not stats.total:
                continue
            p50, p99 = stats.percentiles()
            failures = ", ".join(f"{k}={v}" for k, v in sorted(stats.outcomes.items()) if k != OK) or "-"
            lines.append(f"{op:<16}{stats.total:>7}{stats.ok:>7}{_ms(p50):>9}{_ms(p99):>9}  {failures}")
        modes = ", ".join(f"{m}={n}" for m, n in self.rounds_by_mode.items()) or "-"
        progress = ", ".join(f"{k} notifications x{v}" for k, v in sorted(self.slow_progress.items())) or "-"
        lines.append(f"rounds by mode: {modes}; clients lost: {self.clients_lost}")
        lines.append(f"slow progress: {progress}")
        return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception inside ``exc``: the SDK wraps transport failures in groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _exception_outcome(exc: BaseException) -> tuple[str, str]:
    """Outcome key and detail for a (leaf) exception."""
    if isinstance(exc, MCPError):
        return f"error:{exc.code}", exc.message
    return f"exception:{type(exc).__name__}", str(exc) or type(exc).__name__


def _session_is_dead(exc: MCPError) -> bool:
    """Whether this error means the client must be replaced rather than reused.

    The SDK reports a legacy session the server no longer knows (HTTP 404) as
    ``-32600 "Session terminated"`` on every later call and never re-initializes by itself;
    ``-32000`` means the connection closed.
    """
    return exc.code == CONNECTION_CLOSED or (exc.code == INVALID_REQUEST and exc.message == "Session terminated")


class _SessionDead(Exception):
    """Internal: stop this round and open a new client."""


class _Round:
    """One client session running the operation sequence once, recording into ``stats``."""

    def __init__(self, stats: WorkloadStats, clock: Clock, slow_seconds: float, round_no: int) -> None:
        self._stats = stats
        self._clock = clock
        self._slow_seconds = slow_seconds
        self._round_no = round_no
        self.current_op: str | None = None
        self.current_started = 0.0

    async def _timed(self, op: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run one operation, record its outcome, and return its result (``None`` on failure).

        A JSON-RPC error is recorded and swallowed unless it means the session is gone. Any
        other exception propagates: the transport's task group is failing and the whole
        client will unwind; the caller records it against ``current_op``.
        """
        self.current_op, self.current_started = op, self._clock()
        try:
            result = await call()
        except MCPError as exc:
            self._stats.record(op, f"error:{exc.code}", self._clock() - self.current_started, exc.message)
            self.current_op = None
            if _session_is_dead(exc):
                raise _SessionDead(exc.message) from exc
            return None
        outcome = TOOL_ERROR if getattr(result, "is_error", False) else OK
        detail = _tool_error_text(result) if outcome == TOOL_ERROR else None
        self._stats.record(op, outcome, self._clock() - self.current_started, detail)
        self.current_op = None
        return result

    async def run(self, client: Client) -> None:
        stats = self._stats
        key = sorted(FACTS)[self._round_no % len(FACTS)]
        await self._timed("tools/list", lambda: client.list_tools())
        await self._timed("lookup", lambda: client.call_tool("lookup", {"key": key}))

        progress_seen = 0

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            nonlocal progress_seen
            progress_seen += 1

        slow = await self._timed(
            "slow",
            lambda: client.call_tool("slow", {"seconds": self._slow_seconds}, progress_callback=on_progress),
        )
        if slow is not None and not slow.is_error:
            stats.slow_progress[progress_seen] += 1

        await self._timed(
            "create_ticket", lambda: client.call_tool("create_ticket", {"title": f"round {self._round_no}"})
        )
        await self._timed("resources/read", lambda: client.read_resource(DEMO_RESOURCE_URI))
        await self._timed("prompts/get", lambda: client.get_prompt(DEMO_PROMPT, {"key": key}))


def _tool_error_text(result: Any) -> str:
    content = getattr(result, "content", None) or []
    return " ".join(getattr(block, "text", "") for block in content) or "isError result"


async def _worker(
    url: str,
    deadline: float,
    stats: WorkloadStats,
    *,
    modes: Sequence[str],
    first_mode: int,
    rounds: count[int],
    slow_seconds: float,
    call_timeout_s: float,
    reconnect_delay_s: float,
    clock: Clock,
) -> None:
    """Run rounds until ``deadline``, cycling modes; never raises for client failures."""
    mode_index = first_mode
    while clock() < deadline:
        mode = modes[mode_index % len(modes)]
        mode_index += 1
        round_no = next(rounds)
        stats.rounds_by_mode[mode] += 1
        current = _Round(stats, clock, slow_seconds, round_no)
        connected = False
        started = clock()
        current.current_op, current.current_started = "connect", started
        try:
            async with Client(url, mode=mode, read_timeout_seconds=call_timeout_s) as client:
                connected = True
                stats.record("connect", OK, clock() - started)
                stats.protocol_versions[client.protocol_version] += 1
                current.current_op = None
                await current.run(client)
        except Exception as exc:  # noqa: BLE001 - boundary: any client failure is data, the workload goes on
            leaf = _leaf(exc)
            if isinstance(leaf, _SessionDead):
                # Already recorded against its operation by _Round._timed.
                stats.clients_lost += 1
                logger.debug("workload.client_lost", mode=mode, reason=str(leaf))
                continue
            outcome, detail = _exception_outcome(leaf)
            if current.current_op is not None:
                stats.record(current.current_op, outcome, clock() - current.current_started, detail)
            if connected:
                stats.clients_lost += 1
            logger.debug("workload.client_failed", mode=mode, op=current.current_op, outcome=outcome, detail=detail)
            if reconnect_delay_s > 0:
                # The transport failed (unreachable, connection dropped); do not spin. Note a
                # pinned modern mode "connects" without a request, so it fails on the first call.
                await asyncio.sleep(min(reconnect_delay_s, max(0.0, deadline - clock())))


async def run_workload(
    url: str,
    duration_s: float,
    *,
    modes: Sequence[str] = MODES,
    stats: WorkloadStats | None = None,
    concurrency: int = 1,
    slow_seconds: float = 0.05,
    call_timeout_s: float = 10.0,
    reconnect_delay_s: float = 0.2,
    clock: Clock = time.monotonic,
) -> WorkloadStats:
    """Drive the demo operations against ``url`` for ``duration_s`` seconds; return the stats.

    ``concurrency`` workers run side by side, each starting at a different mode. No new round
    starts after the deadline; a round already running finishes, so the call can outlast
    ``duration_s`` by about one round. Pass ``stats`` to watch it fill while the workload runs.
    Client failures never escape: they are recorded and the worker opens a new client.

    Raises:
        ValueError: ``modes`` is empty or names a mode ``mcp.Client`` rejects, or ``concurrency < 1``.
    """
    if not modes:
        raise ValueError("modes must not be empty")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1 (got {concurrency})")
    unknown = [m for m in modes if m not in ("legacy", "auto") and m not in MODERN_PROTOCOL_VERSIONS]
    if unknown:
        # mcp.Client would reject these too, but only when each round starts.
        raise ValueError(f"unknown client modes {unknown}; use 'legacy', 'auto' or one of {MODERN_PROTOCOL_VERSIONS}")
    stats = stats if stats is not None else WorkloadStats()
    deadline = clock() + duration_s
    rounds = count()
    logger.info("workload.started", url=url, duration_s=duration_s, modes=list(modes), concurrency=concurrency)
    async with asyncio.TaskGroup() as tg:
        for n in range(concurrency):
            tg.create_task(
                _worker(
                    url,
                    deadline,
                    stats,
                    modes=modes,
                    first_mode=n,
                    rounds=rounds,
                    slow_seconds=slow_seconds,
                    call_timeout_s=call_timeout_s,
                    reconnect_delay_s=reconnect_delay_s,
                    clock=clock,
                ),
                name=f"workload-worker-{n}",
            )
    logger.info("workload.finished", url=url, calls=stats.total_calls, failed=stats.failed_calls)
    return stats
