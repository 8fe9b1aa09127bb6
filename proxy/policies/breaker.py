"""Circuit breakers: pybreaker's state machine and storage, behind one asyncio adapter. Every breaker
decision lives in this module.

pybreaker 1.4 has no working asyncio path (its `call()` on a coroutine records a success and never a
failure; `calling()` counts `CancelledError` as a failure and admits unlimited half-open calls; its
clock is `datetime.now`). So the adapter drives pybreaker's public transitions (`open`, `half_open`,
`close`) and counters itself.

Two kinds of breaker, both built on `Breaker`, differing only in what counts (`Judge`):

- the **upstream breaker** (`breaker`, on by default; per upstream, or per tool with `scope: tool`)
  counts only the upstream failing as a server (`Verdict.server_failure`: no connection, a broken one,
  a timeout, 502/503/504). Anything the server *answered* (a JSON-RPC error, a 4xx, an `isError`
  result) proves it up and counts as a success; a 429, the proxy's own overload and a cancelled call
  count as nothing. So no client's mistake can open it for everybody.
- the **application breaker** (`app_breaker`, off unless configured; one per tool, or per method
  outside `tools/call`) counts the application errors the user names (`errors`: `is_error`, `timeout`,
  JSON-RPC codes) against that tool alone, by failure rate over a window once `min_calls` were seen,
  and only when the failures came from at least `min_clients` distinct clients.

Both:

- closed → open after `failure_threshold` consecutive failures, or when `failure_rate` of the calls in
  the last `window` failed (once `min_calls` calls were seen);
- open: calls fail fast with `CircuitOpen` naming the breaker, why it opened and the last failure, with
  `retryAfter` = time left, until `reset_timeout` passes on the injected clock;
- half-open: up to `half_open_max_calls` trial calls, each from a different client, so one client
  cannot hold them (`proxy.policies.half_open` decides who gets a trial and what its outcome means);
  the first trial that succeeds closes the breaker.

Breakers are keyed by their config (and tool), so a rule with its own thresholds never shares counts
with another. State changes are logged and exported as metrics.

Tool and method names come from clients, who may invent any number; the breakers they key are held
so that no invented name can push out the state of a real one (`_Breakers`):

- names the upstream listed (its `proxy.mcp.tool_catalog.ToolCatalog`), the MCP methods and the upstream
  breaker itself keep their breakers for as long as their config is in use (bounded by the listing);
- any other name (invented, or a tool listed since the last `tools/list`) gets a breaker of its own in
  a separate space of `MAX_UNLISTED_BREAKERS`; before the upstream's first listing nothing can be told
  apart, and that space holds `MAX_TOOL_BREAKERS`. When it is full the least recently used *closed*
  breaker goes (in constant time); an open or half-open one is never evicted, so a newcomer that finds
  every slot open gets no breaker of its own (its calls pass unguarded by one; an upstream answering
  an unknown tool with an error costs nothing). One shared breaker for all unknown names was the
  alternative: it would let invented names that fail open a breaker over tools the upstream added
  since its last listing, and a client could keep it open for everyone.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from typing import Any, Final

import pybreaker

from proxy.errors import CircuitOpen
from proxy.policies.failures import CANCELLED, STREAMING, Failure, Verdict, judged
from proxy.policies.base import NULL_OBSERVER, Attempt, AttemptHandler, Call, Clock, Observer, Reply
from proxy.policies.half_open import TrialPeriod
from proxy.config.policies import AppBreakerConfig, BreakerConfig
from proxy.mcp.tool_catalog import MCP_METHODS, ToolCatalog, listed

__all__ = [
    "MAX_TOOL_BREAKERS",
    "MAX_UNLISTED_BREAKERS",
    "Breaker",
    "BreakerStage",
    "Judge",
    "application_judge",
    "upstream_judge",
]


CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
MAX_TOOL_BREAKERS: Final = 1000
"""Per-tool breakers for names not told apart yet (before the upstream's first `tools/list`)."""
MAX_UNLISTED_BREAKERS: Final = 100
"""Per-tool breakers for names the upstream did not list, once it listed its tools."""
_REFUSALS = {
    "taken": "half-open and its trial calls are taken",
    "has_one": "half-open and this client already has its trial call",
    "others_waiting": "half-open and this client had its trial call; others are waiting",
}
_NO_CONSECUTIVE_LIMIT = 2**31

Judge = Callable[[Verdict], bool | None]
"""What one outcome means to a breaker: True a failure, False a success, None nothing (frees a trial slot)."""


def upstream_judge(verdict: Verdict) -> bool | None:
    """The upstream breaker: a server failure fails; any answer of the server's own succeeds."""
    if verdict.server_failure:
        return True
    if verdict.ok or verdict.application_answer:
        return False
    return None


def application_judge(config: AppBreakerConfig) -> Judge:
    """An application breaker: the outcomes `config.on` names fail, a clean answer succeeds."""
    codes = frozenset(item for item in config.errors if isinstance(item, int))
    is_error, timeout = "is_error" in config.errors, "timeout" in config.errors

    def judge(verdict: Verdict) -> bool | None:
        if verdict.ok:
            return False
        kind = verdict.kind
        if (
            (is_error and kind is Failure.TOOL_ERROR)
            or (timeout and kind is Failure.TIMEOUT)
            or (verdict.jsonrpc_code in codes and verdict.application_answer)
        ):
            return True
        return None

    return judge


class _Transitions(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breaker) -> None:
        self._owner = owner

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        self._owner._changed(old_state.name if old_state is not None else CLOSED, new_state.name)


class Breaker:
    """One circuit."""

    __slots__ = ("_cause", "_cb", "_clock", "_judge", "_last_failure", "_observer", "_opened_at", "_outcomes",
                 "_probe_reopened", "_streak_clients", "_trials", "config", "name", "on_state", "upstream")  # fmt: skip

    def __init__(
        self,
        upstream: str,
        name: str,
        config: BreakerConfig | AppBreakerConfig,
        clock: Clock,
        observer: Observer = NULL_OBSERVER,
        judge: Judge = upstream_judge,
    ) -> None:
        self.upstream = upstream
        self.name = name
        self.config = config
        self._clock = clock
        self._observer = observer
        self._judge = judge
        self._opened_at = 0.0
        self._probe_reopened = False
        """A passing probe half-opened it since it last closed (`probe_passed`: once per run of openings)."""
        self._trials = TrialPeriod()
        self._outcomes: deque[tuple[float, bool, str]] = deque()
        self._streak_clients: set[str] = set()
        """Distinct clients of the current run of consecutive failures (up to `failing_clients` of them)."""
        self._cause = ""
        self._last_failure: Verdict | None = None
        self.on_state: Callable[[Breaker, str], None] | None = None
        """Told each new state (the holder of breakers keeps open ones apart from closed ones)."""
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.consecutive_threshold or _NO_CONSECUTIVE_LIMIT,
            reset_timeout=config.reset_timeout,
            success_threshold=1,
            listeners=[_Transitions(self)],
            name=name,
        )

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        return str(self._cb.current_state)

    @property
    def failures(self) -> int:
        """Consecutive failures counted while closed."""
        return int(self._cb.fail_counter)

    @property
    def last_failure(self) -> str | None:
        """The last failure this breaker counted, for people (`/status`, the open error)."""
        return None if self._last_failure is None else self._last_failure.describe()

    def _changed(self, old: str, new: str) -> None:
        now = self._clock.monotonic()
        if new == CLOSED:
            self._probe_reopened = False  # the upstream worked again: the next outage may be cut short too
        if new == OPEN:
            self._opened_at = now
        if new == HALF_OPEN:
            self._trials.begin(now)
        else:
            self._trials.reset()
        self._outcomes.clear()
        self._streak_clients.clear()
        opened = new == OPEN
        last = self._last_failure if opened else None
        self._observer.policy_event(
            "breaker_state", None, upstream=self.upstream, breaker=self.name, old=old, new=new,
            cause=self._cause if opened else None, last_failure=None if last is None else last.describe(),
            last_failure_kind=None if last is None else last.kind.value,
        )  # fmt: skip
        if self.on_state is not None:
            self.on_state(self, new)

    def _open(self, cause: str) -> None:
        self._cause = cause
        self._cb.open()

    def probe_passed(self) -> None:
        """Open to half-open at once: the upstream answered an active probe (`BreakerStage.probe_passed`).
        Once per run of openings: if the trials that follow fail (a server that answers probes but fails
        real calls), the next opening lasts its whole `reset_timeout`, so a probe never stands in for it."""
        if self.state == OPEN and not self._probe_reopened:
            self._probe_reopened = True
            self._cb.half_open()

    def _refuse(self, message: str, retry_after: float) -> CircuitOpen:
        self._observer.policy_event("circuit_open", None, upstream=self.upstream, breaker=self.name)
        last = self.last_failure
        tool = self.name.removeprefix(f"{self.upstream}/") if self.name != self.upstream else None
        subject = f"upstream {self.upstream}" if tool is None else f"tool {tool} of upstream {self.upstream}"
        text = f"the circuit breaker of {subject} is {message}; it opened after {self._cause}"
        return CircuitOpen(
            f"{text}; last failure: {last}" if last else text,
            upstream=self.upstream,
            retry_after=retry_after,
            cause=self._cause,
            last_failure=last,
        )

    def admit(self, client: str = "") -> int | None:
        """Let a call through, or raise `CircuitOpen`; a half-open trial gets its period's number, others None."""
        state = self.state
        if state == CLOSED:
            return None
        trials = self._trials
        trials.note_asking(client)
        now = self._clock.monotonic()
        reset = self.config.reset_timeout
        if state == HALF_OPEN and now - trials.started_at >= reset:
            if trials.failed:
                self._open(self._cause)  # a period of failed trials and no success: open again
                state = OPEN
            else:  # nothing learned in a whole period (trials that counted nothing): fresh slots, fresh askers
                trials.begin(now, asking=client)
        if state == OPEN:
            left = self._opened_at + reset - now
            if left > 0:
                raise self._refuse("open", left)
            self._cb.half_open()
            state = HALF_OPEN
        if state == HALF_OPEN:
            refusal = trials.refusal(client, self.config.half_open_max_calls)
            if refusal is not None:
                raise self._refuse(_REFUSALS[refusal], reset)
            return trials.period
        return None

    def record(self, trial: int | None, verdict: Verdict, client: str = "") -> None:
        """Count the outcome of an admitted call (`trial`: what `admit` returned for it)."""
        state = self.state
        current = trial is not None and trial == self._trials.period and state == HALF_OPEN
        if verdict is STREAMING:  # its headers came: enough for a trial (the server answers); the end decides the rest
            failed: bool | None = False if current else None
        else:
            failed = None if verdict is CANCELLED else self._judge(verdict)
        if failed:
            self._last_failure = verdict
        if current:
            decision = self._trials.finish(client, failed, self.config.half_open_max_calls)
            if decision == "close":
                self._cb.close()
            elif decision == "open":
                self._open(f"{self._trials.failed} failed trial call(s) while half-open")
            return
        if failed is None or state != CLOSED:
            return  # nothing learned, or a stale outcome (admitted before it opened, or an earlier period's trial)
        storage = self._cb._state_storage
        if failed:
            storage.increment_counter()
            if len(self._streak_clients) < self.config.failing_clients:
                self._streak_clients.add(client)
        else:
            storage.reset_counter()
            self._streak_clients.clear()
        cause = self._tripped(failed, client)
        if cause is not None:
            self._open(cause)

    def _tripped(self, failed: bool, client: str) -> str | None:
        """Record the outcome; why the breaker must open when a failure just crossed the threshold (and
        the failures came from enough distinct clients)."""
        config = self.config
        rate = config.rate_trigger
        if rate is None:
            threshold = config.consecutive_threshold or _NO_CONSECUTIVE_LIMIT
            if failed and self.failures >= threshold and len(self._streak_clients) >= config.failing_clients:
                return f"{self.failures} consecutive failures"
            return None
        now = self._clock.monotonic()
        self._outcomes.append((now, failed, client))
        while self._outcomes and self._outcomes[0][0] <= now - config.window:
            self._outcomes.popleft()
        if not failed:
            return None
        calls = len(self._outcomes)
        failures = sum(f for _, f, _ in self._outcomes)
        if calls < config.min_calls or failures / calls < rate:
            return None
        if config.failing_clients > 1 and len({c for _, f, c in self._outcomes if f}) < config.failing_clients:
            return None
        return f"{failures} of {calls} calls failed within {config.window:g}s"

    def snapshot(self) -> dict[str, Any]:
        """What /status shows of this breaker."""
        return {
            "state": self.state,
            "consecutive_failures": self.failures,
            "cause": self._cause or None,
            "last_failure": self.last_failure,
        }


BreakerKey = tuple[BreakerConfig | AppBreakerConfig, str | None]


class _Breakers:
    """Breakers by (config, name), held so that invented names never push out a real one's state.

    Listed names (see the module docstring) live in `_listed`, unbounded by clients. Other names live
    in `_closed` (closed breakers, least recently used first: evicting is a `popitem`) and `_held`
    (open and half-open ones, never evicted); a breaker moves between the two when its state changes
    (`Breaker.on_state`). The split is redone whenever the upstream's listing changes.
    """

    __slots__ = ("_catalog", "_closed", "_held", "_listed", "_version", "on_open")

    def __init__(self, catalog: ToolCatalog) -> None:
        self.on_open: Callable[[], None] | None = None
        """Told when an upstream-wide breaker (tool None) opens."""
        self._catalog = catalog
        self._version = catalog.version
        self._listed: dict[BreakerKey, Breaker] = {}
        self._closed: OrderedDict[BreakerKey, Breaker] = OrderedDict()
        self._held: dict[BreakerKey, Breaker] = {}

    @property
    def _limit(self) -> int:
        return MAX_UNLISTED_BREAKERS if self._catalog.known else MAX_TOOL_BREAKERS

    def _is_listed(self, name: str | None) -> bool:
        return name is None or name in MCP_METHODS or self._catalog.has(name)

    def get(self, key: BreakerKey, known: bool | None) -> Breaker | None:
        """The breaker of `key`, if it has one; `known`: does the catalog vouch for its name."""
        if self._version != self._catalog.version:
            self._resort()
        breaker = self._listed.get(key)
        if breaker is not None:
            return breaker
        breaker = self._held.get(key)
        if breaker is None:
            breaker = self._closed.get(key)
            if breaker is not None:
                self._closed.move_to_end(key)
        if breaker is not None and known:  # a safety net: `_resort` already moved names that became listed
            self._forget(key, breaker)
            self._listed[key] = breaker
        return breaker

    def add(self, key: BreakerKey, breaker: Breaker, known: bool | None) -> bool:
        """Hold `breaker` for `key`; False when there is no room (every unlisted slot holds an open breaker)."""
        if known:
            self._listed[key] = breaker
        else:
            if len(self._closed) + len(self._held) >= self._limit:
                if not self._closed:
                    return False
                self._evict_one()
            self._closed[key] = breaker
        breaker.on_state = lambda moved, state: self._moved(key, moved, state)
        return True

    def _evict_one(self) -> None:
        _, victim = self._closed.popitem(last=False)
        victim.on_state = None

    def _forget(self, key: BreakerKey, breaker: Breaker) -> None:
        if self._closed.get(key) is breaker:
            del self._closed[key]
        elif self._held.get(key) is breaker:
            del self._held[key]

    def _moved(self, key: BreakerKey, breaker: Breaker, state: str) -> None:
        if state == OPEN and key[1] is None and self.on_open is not None:
            self.on_open()
        if self._listed.get(key) is breaker:
            return
        if state == CLOSED and self._held.get(key) is breaker:
            del self._held[key]
            self._closed[key] = breaker
            while len(self._closed) + len(self._held) > self._limit and self._closed:
                self._evict_one()
        elif state != CLOSED and self._closed.get(key) is breaker:
            del self._closed[key]
            self._held[key] = breaker

    def _resort(self) -> None:
        """The upstream's listing changed: sort every breaker again by whether its name is listed."""
        self._version = self._catalog.version
        every = [*self._listed.items(), *self._held.items(), *self._closed.items()]
        self._listed, self._held, self._closed = {}, {}, OrderedDict()
        for key, breaker in every:
            if self._is_listed(key[1]):
                self._listed[key] = breaker
            elif breaker.state == CLOSED:
                self._closed[key] = breaker
            else:
                self._held[key] = breaker
        while len(self._closed) + len(self._held) > self._limit and self._closed:
            self._evict_one()

    def retain(self, configs: Collection[BreakerConfig | AppBreakerConfig]) -> None:
        """Drop the breakers of configs no policy uses any more (a reload changed them)."""
        for space in (self._listed, self._held, self._closed):
            for key in [key for key in space if key[0] not in configs]:
                space.pop(key).on_state = None

    def values(self) -> list[Breaker]:
        return [*self._listed.values(), *self._held.values(), *self._closed.values()]


class BreakerStage:
    """Guards each attempt with its breakers: the upstream breaker (per upstream or per tool) and, where
    configured, the application breaker of the call's tool."""

    __slots__ = ("_breakers", "_catalog", "_clock", "_observer", "_upstream")

    def __init__(
        self, upstream: str, clock: Clock, observer: Observer = NULL_OBSERVER, catalog: ToolCatalog | None = None
    ) -> None:
        self._upstream = upstream
        self._clock = clock
        self._observer = observer
        self._catalog = catalog if catalog is not None else ToolCatalog()
        self._breakers = _Breakers(self._catalog)

    def _breaker(self, config: BreakerConfig | AppBreakerConfig, call: Call | None, judge: Callable[[], Judge]) -> Breaker | None:
        tool = None if call is None else call.tool or call.method
        known = True if call is None else listed(self._catalog, call.method, call.tool)
        key = (config, tool)
        breaker = self._breakers.get(key, known)
        if breaker is None:
            name = self._upstream if tool is None else f"{self._upstream}/{tool}"
            breaker = Breaker(self._upstream, name, config, self._clock, self._observer, judge())
            if not self._breakers.add(key, breaker, known):
                return None  # no room among unlisted names: this one goes unguarded by a breaker of its own
        return breaker

    def breaker_for(self, call: Call) -> Breaker | None:
        """The upstream breaker guarding `call`, or None when the policy turns it off (or, per tool, for
        an unlisted name finding no room)."""
        config = call.policy.breaker
        if not config.enabled:
            return None
        return self._breaker(config, call if config.scope == "tool" else None, lambda: upstream_judge)

    def app_breaker_for(self, call: Call) -> Breaker | None:
        """The application breaker of `call`'s tool (or method), or None when none is configured (or
        for an unlisted name finding no room)."""
        config = call.policy.app_breaker
        if config is None:
            return None
        return self._breaker(config, call, lambda: application_judge(config))

    def retain(self, configs: Collection[BreakerConfig | AppBreakerConfig]) -> None:
        """Keep only the breakers of `configs` (those the upstream's policies still use)."""
        self._breakers.retain(configs)

    @property
    def breakers(self) -> list[Breaker]:
        return self._breakers.values()

    def on_open(self, listener: Callable[[], None] | None) -> None:
        """Tell `listener` whenever an upstream-wide breaker opens (the active prober then probes at once)."""
        self._breakers.on_open = listener

    def any_open(self) -> bool:
        """Whether an upstream-wide breaker is open (its active probes then come faster: `proxy.ops.health`)."""
        return any(b.name == self._upstream and b.state == OPEN for b in self._breakers.values())

    def probe_passed(self) -> None:
        """An active health probe of the upstream succeeded: an upstream-wide breaker that is open goes
        half-open now instead of at the end of its `reset_timeout` (Envoy un-ejects a host that passes an
        active check). Its trial calls then decide, as after any open period; a restarted upstream is
        back within a probe, not 30 s later. Per-tool breakers are left alone: a probe says nothing of a tool."""
        for breaker in self._breakers.values():
            if breaker.name == self._upstream and breaker.state == OPEN:
                breaker.probe_passed()

    async def __call__(self, attempt: Attempt, next: AttemptHandler) -> Reply:
        call = attempt.call
        breaker = self.breaker_for(call)
        app = self.app_breaker_for(call)
        if breaker is None and app is None:
            return await next(attempt)
        client = call.client
        app_trial = app.admit(client) if app is not None else None
        try:
            trial = breaker.admit(client) if breaker is not None else None
        except CircuitOpen:
            if app is not None:
                app.record(app_trial, CANCELLED, client)  # never sent: the application trial learned nothing
            raise

        def record(verdict: Verdict) -> None:
            if breaker is not None:
                breaker.record(trial, verdict, client)
            if app is not None:
                app.record(app_trial, verdict, client)

        return await judged(attempt, next, record)
