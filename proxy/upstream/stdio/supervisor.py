"""Keeps one initialized stdio child running: spawn, MCP handshake, watch, and respawn with backoff.

A stdio server is one process holding one MCP session: the proxy initializes it itself (a client's own
``initialize`` cannot reach a server that is already initialized) and hands each initialized generation
out as a `Link`. One loop (`Supervisor.start`) owns the child; its states::

    starting --answered initialize--> up --child ended / restart()--> backoff --> starting
    starting --no answer, error, wrong version, exit--> backoff
    any --stop()--> stopped

- **Handshake**: ``initialize`` with the id ``mcp-resilience-proxy:init:<generation>`` (no client id can
  collide with it: the proxy writes every line the child reads), answered within `Timing.start_timeout`
  with a protocol version in `Handshake.accepted`; then ``notifications/initialized``. Messages before the
  answer are dropped: no link exists yet to give them to.
- **Order**: `on_up(link)` comes before any of that link's messages (a message the child writes while
  ``notifications/initialized`` is being written is held until `on_up` returned), every message the child
  wrote comes before `on_down(link, reason)` (the child is stopped, its output read to the end, first),
  and `on_down` comes once per link. A failed start is reported as ``on_down(None, reason)``.
- **Backoff**: full-jitter exponential, ``uniform(0, min(backoff_max, backoff_base * 2**n))`` for the
  n-th consecutive failure (from 0), but never under ``backoff_base / 2``: a child that dies at once must
  not become a fork loop. A child that stayed up `Timing.stable_after` seconds resets n.
- Time is injected (`sleep`, `clock`, `jitter`), so backoff is tested without waiting; the handshake's
  deadline and the stop's grace are real time, spent on a real process.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import structlog

from proxy.errors import NeverSent
from proxy.mcp.eras import LEGACY_VERSION
from proxy.mcp.stdio import dumps, frame
from proxy.redact import redact_text
from proxy.tasks import Owner, cancel_and_wait
from proxy.tasks import spawn as spawn_task
from proxy.upstream.stdio.child import Child, ChildGone, ChildNotRunning, ChildSpec, exit_text, spawn

__all__ = [
    "ACCEPTED_VERSIONS",
    "ChildUnavailable",
    "Handshake",
    "Initialized",
    "Link",
    "State",
    "Supervisor",
    "Timing",
]

log = structlog.get_logger("proxy.upstream.stdio")

State: TypeAlias = Literal["starting", "up", "backoff", "stopped"]

ACCEPTED_VERSIONS: Final = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
"""The legacy-era protocol versions the proxy can relay for a stdio child."""
INIT_ID_PREFIX: Final = "mcp-resilience-proxy:init:"


@dataclass(frozen=True)
class Timing:
    """A supervisor's clocks, in seconds."""

    start_timeout: float = 30.0
    """From spawn to the ``initialize`` answer (``npx`` may download the server first)."""
    stop_grace: float = 2.0
    """Each step of `Child.stop`: stdin closed, then SIGTERM, then SIGKILL."""
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    stable_after: float = 60.0
    """A child up this long resets the backoff: its next failure is a new story, not the same crash loop."""


@dataclass(frozen=True)
class Handshake:
    """What the proxy says in ``initialize`` to a child, and which answers it accepts."""

    capabilities: dict[str, Any]
    client_info: dict[str, Any]
    protocol_version: str = LEGACY_VERSION
    accepted: frozenset[str] = field(default=ACCEPTED_VERSIONS)


@dataclass(frozen=True)
class Initialized:
    """One generation's handshake: the version agreed and the child's whole ``initialize`` result."""

    generation: int
    protocol_version: str
    result: dict[str, Any]
    """capabilities, serverInfo, instructions…, as the child sent them."""


class ChildUnavailable(NeverSent):
    """No initialized child came in time: the request was not sent. `retry_after` is set while backing off."""

    def __init__(
        self,
        message: str,
        *,
        upstream: str | None = None,
        retry_after: float | None = None,
        last_error: str | None = None,
    ) -> None:
        super().__init__(message, upstream=upstream, retry_after=retry_after)
        self.last_error = last_error


class Link:
    """One initialized generation of the child: what the gateway sends through and receives from."""

    __slots__ = ("_alive", "_child", "generation", "initialized", "pid")

    def __init__(self, child: Child, initialized: Initialized) -> None:
        self._child = child
        self._alive = True
        self.generation = initialized.generation
        self.initialized = initialized
        self.pid = child.pid

    @property
    def alive(self) -> bool:
        """False once the child ended or a restart or stop began: `send` then raises `ChildNotRunning`."""
        return self._alive and not self._child.ended.is_set()

    async def send(self, message: Any) -> None:
        """Write `message` as one line. Raises `ChildNotRunning` (not sent) or `ChildGone` (may have been sent)."""
        if not self._alive:
            name = self._child.spec.name
            raise ChildNotRunning(f"upstream {name}: generation {self.generation} is down", upstream=name)
        await self._child.write(frame(dumps(message)))


class Supervisor:
    """Keeps one initialized child of `spec` running (module docstring); `ready` hands out its `Link`."""

    def __init__(
        self,
        spec: ChildSpec,
        timing: Timing,
        handshake: Handshake,
        *,
        on_message: Callable[[Link, Any], None],
        on_up: Callable[[Link], None],
        on_down: Callable[[Link | None, str], None],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._spec = spec
        self._timing = timing
        self._handshake = handshake
        self._on_message = on_message
        self._on_up = on_up
        self._on_down = on_down
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._tasks: Owner = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stop_lock = asyncio.Lock()
        self._closed = False
        self._state: State = "stopped"
        self._changed = asyncio.Event()
        """Set (and replaced) at every change of state: `ready` waits on it."""
        self._wake = asyncio.Event()
        """The loop's wake-up: the child ended, answered initialize, or a restart was asked for."""
        self._child: Child | None = None
        self._link: Link | None = None
        self._generation = 0
        self._restarts = 0
        self._up_since: float | None = None
        self._next_attempt: float | None = None
        self._last_exit: dict[str, Any] | None = None
        self._last_error: str | None = None
        self._restart_reason: str | None = None
        self._answer: dict[str, Any] | None = None
        self._held: list[Any] | None = None
        """Messages of a link whose `on_up` has not been called yet (None: deliver at once)."""

    async def start(self) -> None:
        """Start the supervision loop (once; a stopped supervisor stays stopped)."""
        if self._loop_task is not None or self._closed:
            return
        self._set_state("starting")
        self._loop_task = spawn_task(self._supervise(), name=f"stdio-supervisor:{self._spec.name}", owner=self._tasks)

    async def ready(self, timeout: float) -> Link:
        """The live link, waiting up to `timeout` seconds for one. Raises `ChildUnavailable` when none comes,
        at once if the supervisor is stopped or the next attempt is due only after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            link = self._link
            if link is not None and link.alive:
                return link
            retry_after = self._retry_after()
            remaining = deadline - loop.time()
            if self._state == "stopped" or remaining <= 0 or (retry_after is not None and retry_after > remaining):
                raise self._unavailable(retry_after)
            changed = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                raise self._unavailable(self._retry_after()) from None

    def restart(self, reason: str) -> None:
        """Stop the current child (e.g. it broke the protocol); the loop starts the next one after a backoff."""
        if self._child is None or self._state not in ("starting", "up") or self._restart_reason is not None:
            return
        log.warning("stdio_child_restart_requested", upstream=self._spec.name, pid=self._child.pid, reason=reason)
        self._restart_reason = reason
        if self._link is not None:
            self._link._alive = False
        self._wake.set()

    async def stop(self) -> None:
        """Stop the loop and the child (`Timing.stop_grace` per step); idempotent, safe to call concurrently."""
        self._closed = True
        async with self._stop_lock:
            if self._loop_task is not None:
                await cancel_and_wait([self._loop_task])
            self._set_state("stopped")

    def snapshot(self) -> dict[str, Any]:
        """The supervisor's state for /status and metrics (times are the injected clock's)."""
        return {
            "state": self._state,
            "pid": self._child.pid if self._child is not None and self._child.returncode is None else None,
            "last_pid": self._child.pid if self._child is not None else None,
            "generation": self._generation,
            "restarts": self._restarts,
            "up_since": self._up_since,
            "last_exit": self._last_exit,
            "last_error": self._last_error,
        }

    def _retry_after(self) -> float | None:
        if self._state != "backoff" or self._next_attempt is None:
            return None
        return max(0.0, self._next_attempt - self._clock())

    def _unavailable(self, retry_after: float | None) -> ChildUnavailable:
        why = f": {self._last_error}" if self._last_error else ""
        return ChildUnavailable(
            f"upstream {self._spec.name}: no initialized child ({self._state}){why}",
            upstream=self._spec.name,
            retry_after=retry_after,
            last_error=self._last_error,
        )

    def _set_state(self, state: State) -> None:
        self._state = state
        self._changed.set()
        self._changed = asyncio.Event()

    def _backoff(self, failures: int) -> float:
        """The wait before the next attempt after `failures` consecutive failures (1 for the first)."""
        base, cap = self._timing.backoff_base, self._timing.backoff_max
        ceiling = min(cap, base * 2.0 ** min(failures - 1, 64))
        return max(base / 2, self._jitter() * ceiling)

    async def _supervise(self) -> None:
        failures = 0
        try:
            while True:
                link = await self._start_one()
                if link is not None:
                    up_at = self._clock()
                    await self._serve(link)
                    if self._clock() - up_at >= self._timing.stable_after:
                        failures = 0
                failures += 1
                delay = self._backoff(failures)
                self._next_attempt = self._clock() + delay
                self._set_state("backoff")
                await self._sleep(delay)
                self._next_attempt = None
        finally:
            await self._shutdown()

    async def _start_one(self) -> Link | None:
        """Spawn the next generation and initialize it: its link, or None (`_last_error` says why)."""
        self._generation += 1
        generation = self._generation
        if generation > 1:
            self._restarts += 1
        self._restart_reason = None
        self._answer = None
        self._held = None
        self._wake.clear()
        self._set_state("starting")
        init_id = f"{INIT_ID_PREFIX}{generation}"
        try:
            child = await spawn(
                self._spec,
                lambda message: self._route(generation, init_id, message),
                on_end=self._wake.set,
                grace=self._timing.stop_grace,
                clock=self._clock,
            )
        except ChildGone as exc:
            self._start_failed(None, exc.message)
            self._notify_down(None, exc.message)
            return None
        self._child = child
        request = {
            "jsonrpc": "2.0",
            "id": init_id,
            "method": "initialize",
            "params": {
                "protocolVersion": self._handshake.protocol_version,
                "capabilities": self._handshake.capabilities,
                "clientInfo": self._handshake.client_info,
            },
        }
        try:
            await child.write(frame(dumps(request)))
        except ChildGone:
            pass  # it ended: the wait below sees it
        error = await self._await_answer(child)
        if error is None:
            assert self._answer is not None
            result, error = self._check_answer(self._answer)
        if error is not None:
            self._start_failed(child, error)
            await child.stop(self._timing.stop_grace)
            self._record_exit(child)
            self._notify_down(None, error)
            return None
        link = Link(child, Initialized(generation, result["protocolVersion"], result))
        self._held = []
        try:
            await child.write(frame(dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})))
        except ChildGone:
            pass  # it ended right after answering: it goes up and down at once, as it did
        self._link = link
        self._up_since = self._clock()
        self._set_state("up")
        server = result.get("serverInfo")
        log.info(
            "stdio_child_up",
            upstream=self._spec.name,
            pid=child.pid,
            generation=generation,
            protocol_version=link.initialized.protocol_version,
            server=redact_text(str(server.get("name")))[:200] if isinstance(server, dict) else None,
        )
        self._call("on_up", self._on_up, link)
        held, self._held = self._held, None
        for message in held:
            self._call("on_message", self._on_message, link, message)
        return link

    async def _await_answer(self, child: Child) -> str | None:
        """Wait for the initialize answer; None once it came, else why it did not."""
        timeout = self._timing.start_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._answer is None:
            if self._restart_reason is not None:
                return f"restart requested during initialize: {self._restart_reason}"
            if child.ended.is_set():
                await child.stop(self._timing.stop_grace)
                return f"{child.end_reason} before answering initialize"
            remaining = deadline - loop.time()
            if remaining <= 0:
                return f"the child did not answer initialize within {timeout:g}s"
            try:
                async with asyncio.timeout(remaining):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
        return None

    def _check_answer(self, answer: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """The initialize result, and why it is refused (None if it is not)."""
        error = answer.get("error")
        if "result" not in answer:
            if isinstance(error, dict):
                text = redact_text(str(error.get("message")))[:200]
                return {}, f"the child answered initialize with error {error.get('code')}: {text}"
            return {}, "the child answered initialize with neither a result nor an error"
        result = answer["result"]
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(version, str):
            return {}, "the child answered initialize without a protocol version"
        if version not in self._handshake.accepted:
            shown = redact_text(version[:64])
            return (
                result,
                f"the child answered initialize with protocol version {shown!r}, which the proxy does not speak",
            )
        return result, None

    async def _serve(self, link: Link) -> None:
        """Wait until the link's child ends or a restart is asked for; stop the child, then `on_down`."""
        child = self._child
        assert child is not None
        while not child.ended.is_set() and self._restart_reason is None:
            await self._wake.wait()
            self._wake.clear()
        link._alive = False
        restart = self._restart_reason
        await child.stop(self._timing.stop_grace)
        reason = f"restart requested: {restart}" if restart is not None else child.end_reason
        self._record_exit(child)
        self._link = None
        self._up_since = None
        self._last_error = reason
        log.warning(
            "stdio_child_down", upstream=self._spec.name, pid=child.pid, generation=link.generation, reason=reason
        )
        self._notify_down(link, reason)

    async def _shutdown(self) -> None:
        """The loop ends (stop): stop the child, and tell `on_down` if a link was up."""
        child, link = self._child, self._link
        if link is not None:
            link._alive = False
        if child is not None:
            await child.stop(self._timing.stop_grace)
            self._record_exit(child)
        self._link = None
        self._up_since = None
        self._next_attempt = None
        self._set_state("stopped")
        if link is not None:
            self._notify_down(link, "the proxy stopped the child")

    def _route(self, generation: int, init_id: str, message: Any) -> None:
        """A message of generation `generation`'s child: the initialize answer, held, or passed to `on_message`."""
        if generation != self._generation:
            return  # an old generation's last words, after its on_down: nobody to give them to
        link = self._link
        if link is not None and link.generation == generation and self._held is None:
            self._call("on_message", self._on_message, link, message)
        elif self._held is not None:
            self._held.append(message)
        elif (
            self._answer is None
            and isinstance(message, dict)
            and message.get("id") == init_id
            and ("result" in message or "error" in message)
        ):
            self._answer = message
            self._wake.set()
        else:
            log.debug(
                "stdio_child_message_dropped", upstream=self._spec.name, generation=generation, before="initialized"
            )

    def _start_failed(self, child: Child | None, error: str) -> None:
        self._last_error = error
        log.warning(
            "stdio_child_start_failed",
            upstream=self._spec.name,
            pid=child.pid if child is not None else None,
            generation=self._generation,
            error=error,
        )

    def _record_exit(self, child: Child) -> None:
        code = child.returncode
        if code is not None:
            self._last_exit = {"code": code} if code >= 0 else {"signal": exit_text(code).rsplit(" ", 1)[-1]}

    def _notify_down(self, link: Link | None, reason: str) -> None:
        self._call("on_down", self._on_down, link, reason)

    def _call(self, name: str, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("stdio_supervisor_callback_failed", upstream=self._spec.name, callback=name)
