"""The analyzer inside the proxy: proposals at /proposals, and the opt-in, bounded auto-apply.

With ``analyzer: {enabled: true}`` (and ``serve --config FILE``), the proxy feeds its own events into
an analyzer window every `FEED_S` (read from the bus's ring, in chunks that give the event loop back
in between) and recomputes the proposals every `interval`, in a worker thread: a full window at thousands
of events a second takes seconds of CPU to analyze, which in the event loop would stall every call for
as long. The admin endpoint ``/proposals`` serves them with the events the window took in and the ones
it missed (the ring had moved past them), and ``analyze --apply ID`` (or an operator's edit) applies
one. The /proposals document
passes through `proxy.redact.redact` (a diff's context lines are lines of the operator's file, which
may hold an upstream URL with credentials).

``auto_apply`` is off by default. When on, a proposal is applied by itself only if every value it
changes is a key the operator listed in ``bounds`` and its new value lies in that range; anything else
waits for a person. After applying, the error rate over ``verify_after`` is compared with the one over
the same span before; if it got worse (on any number of calls: a thin sample that looks worse is
rolled back too, and ``verified`` says whether each side had ``min_calls``), the file is
restored from the backup that applying wrote, and the proxy reloads it. One change is verified at a
time; each step is an event (``proposal_applied``, ``proposal_kept``, ``proposal_rolled_back``).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from proxy.analyzer import ApplyError, Proposal, Window, apply_proposal, propose
from proxy.analyzer.apply import write_atomically
from proxy.analyzer.model import UPSTREAM_FAILED_OUTCOMES
from proxy.config.model import AnalyzerConfig, ConfigError, parse_duration
from proxy.events.bus import EventBus
from proxy.redact import Budget, redact
from proxy.tasks import Owner, cancel_and_wait, spawn

__all__ = ["Announcer", "EmbeddedAnalyzer", "Trials", "within_bounds"]


class Announcer(Protocol):
    """Where the analyzer reports what it did (the proxy's event recorder): a protocol, so the analyzer
    reads events without importing the recorder, which adapts the request pipeline."""

    def policy_event(self, kind: str, about: None, **fields: Any) -> None: ...


class Trials(Protocol):
    """Shadow trials (`proxy.trials.shadow.TrialManager`), handed in by the app: the analyzer never imports them.
    `trial` raises `ApplyError` when the proposal cannot be tried; `outcome` is None while the trial runs."""

    @property
    def busy(self) -> bool: ...

    def trial(self, proposal: Proposal) -> str: ...

    def outcome(self, trial_id: str) -> tuple[str, Path | None] | None: ...


log = structlog.get_logger("proxy.analyzer")
FEED_S = 1.0
"""How often the window takes in the bus's new events, whatever the proposal `interval`: the ring holds
`events.buffer` events (10,000 by default, 2 s at 5,000 events/s), so reading it only every `interval`
(30 s) would miss most of a busy proxy's events."""
FEED_CHUNK = 1000
"""Events folded before the event loop is given back: about 10 ms of work, so calls are never held longer."""


def within_bounds(proposal: Proposal, config: AnalyzerConfig) -> bool:
    """True when auto-apply may apply `proposal`: every change is a bounded key, inside its range."""
    bounds = config.auto_apply.bounds
    if proposal.advisory or not proposal.changes:
        return False
    for change in proposal.changes:
        bound = bounds.get(change.key)
        if bound is None:
            return False
        try:
            value = parse_duration(change.value)
        except ValueError:
            return False
        if not bound.min <= value <= bound.max:
            return False
    return True


def error_rate(events: list[dict[str, Any]], since: float, until: float) -> tuple[float, int]:
    """(the upstream's failure share, calls counted) of the `call_ok` summaries published between `since` and `until`.

    The share is failed / (ok + failed), where failed are the outcomes that are the upstream's failure
    (`model.UPSTREAM_FAILED_OUTCOMES`: unreachable, timed out, a broken answer, 5xx, 429, the breaker or
    the retry budget refusing because of such failures). Every other outcome, an application answer
    (``jsonrpc_error``, ``http_4xx``), the proxy's own limits, a client that gave up or deleted its
    session, leaves both sides: a burst of clients' own mistakes makes a change look neither worse nor
    better. A summary without `outcomes` (an old recording) counts every call that was not ok as failed.
    """
    ok = failed = 0
    for event in events:
        if event.get("type") != "call_ok" or not since <= event["ts"] <= until:
            continue
        outcomes = event.get("outcomes")
        if isinstance(outcomes, dict):
            ok += int(outcomes.get("ok", 0))
            failed += sum(int(n) for kind, n in outcomes.items() if kind in UPSTREAM_FAILED_OUTCOMES)
        else:
            ok += int(event["ok"])
            failed += int(event["calls"]) - int(event["ok"])
    calls = ok + failed
    return (failed / calls if calls else 0.0), calls


@dataclass
class _Verification:
    proposal: Proposal
    backup: Path
    applied_at: float
    rate_before: float
    calls_before: int
    written: str
    """Hash of the file as the change left it: a rollback never overwrites an operator's later edit."""


class EmbeddedAnalyzer:
    """Owns the analysis loop of a proxy started from a config file."""

    def __init__(
        self, path: Path, config: AnalyzerConfig, bus: EventBus, recorder: Announcer, trials: Trials | None = None
    ) -> None:
        self.path = path
        self.config = config
        self._bus = bus
        self._recorder = recorder
        self._window = Window(config.window)
        self._last_id = 0
        self.events_seen = 0
        """Events the window took in (config reloads, which restart it, included)."""
        self.events_missed = 0
        """Events the bus published that the window never saw: ids skipped because the ring had moved on."""
        self.proposals: list[Proposal] = []
        self.computed_at: float | None = None
        self._verifying: _Verification | None = None
        self._tasks: Owner = set()
        self._applied: set[str] = set()
        self.trials = trials
        self._trial: tuple[str, Proposal] | None = None
        self._analyzing = False
        self._last_call = 0
        self._fence = 0
        """Calls numbered up to this began before the last reload: their late events (an observed timeout's
        answer, seconds later) are the old config's evidence and stay out of the new window. Call ids
        only grow within a process, which is the embedded analyzer's (`proxy.policies.base.Call.call_id`)."""
        self._backlog: list[dict[str, Any]] = []
        """Events read while a worker thread analyzes the window, taken in once it is done."""

    def start(self) -> None:
        spawn(self._run(), name="embedded-analyzer", owner=self._tasks)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)

    def document(self) -> dict[str, Any]:
        """The /proposals body, redacted."""
        document = {
            "computed_at": self.computed_at,
            "window_s": self.config.window,
            "auto_apply": self.config.auto_apply.enabled,
            "verifying": None if self._verifying is None else self._verifying.proposal.id,
            "events_seen": self.events_seen,
            "events_missed": self.events_missed,
            "proposals": [p.to_dict() for p in self.proposals],
        }
        redacted: dict[str, Any] = redact(document, max_chars=None, max_depth=64, budget=Budget(chars=None, items=None))
        return redacted

    async def _run(self) -> None:
        spawn(self._feeding(), name="embedded-analyzer-feed", owner=self._tasks)
        while True:
            await asyncio.sleep(self.config.interval)
            try:
                await self._step_off_loop()
            except Exception as exc:  # the analyzer must never take the proxy down
                log.error("analyzer_failed", error=repr(exc))

    async def _feeding(self) -> None:
        """Read the bus every `FEED_S`, whatever `interval` says, so the ring never moves on unread."""
        while True:
            await asyncio.sleep(FEED_S)
            try:
                await self._feed()
            except Exception as exc:  # the analyzer must never take the proxy down
                log.error("analyzer_failed", error=repr(exc))

    async def _step_off_loop(self) -> None:
        """`step`, with the analysis (the window's slices merged, attributed, every rule run: seconds of
        CPU for a full window at thousands of events a second) in a worker thread, so the proxy goes on
        answering meanwhile instead of stalling for it. The window is left alone while the thread reads
        it: what the feed reads in the meantime waits in `_backlog` and is taken in afterwards."""
        now = time.time()
        await self._feed()
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except OSError as exc:
            log.warning("analyzer_skipped", reason=str(exc))
            return
        self._analyzing = True
        try:
            proposals = await asyncio.to_thread(self._propose, text)
        finally:
            self._analyzing = False
            backlog, self._backlog = self._backlog, []
            self._fold(backlog)
        if proposals is not None:
            self._act(now, proposals)

    async def _feed(self) -> None:
        """Take in the bus's new events, `FEED_CHUNK` at a time, yielding to the event loop in between."""
        while True:
            events = self._bus.recent(self._last_id)
            for start in range(0, len(events), FEED_CHUNK):
                self._take(events[start : start + FEED_CHUNK])
                await asyncio.sleep(0)
            if len(events) < FEED_CHUNK:
                return

    def _drain(self) -> None:
        """Take in what the bus published since the last read (from its ring: no subscriber queue to overflow)."""
        self._take(self._bus.recent(self._last_id))

    def _take(self, events: list[dict[str, Any]]) -> None:
        """Count `events` read (ids skipped are missed), then fold them into the window, or hold them in
        `_backlog` while a worker thread reads the window (it changes only once that is done)."""
        fresh = []
        for event in events:
            event_id = event["id"]
            if event_id <= self._last_id:
                continue  # read twice (a chunk of an older read): taken already
            self.events_missed += event_id - self._last_id - 1
            self.events_seen += 1
            self._last_id = event_id
            fresh.append(event)
        if self._analyzing:
            self._backlog.extend(fresh)
            return
        self._fold(fresh)

    def _fold(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            call_id = event.get("call_id")
            if event.get("type") == "config_reloaded":
                # What happened under the old config is no evidence against the new one: without
                # this, a kept change would be proposed again, one step further, from the same events.
                self._window = Window(self.config.window)
                self._fence = self._last_call
                continue
            if isinstance(call_id, int) and not isinstance(call_id, bool) and call_id > 0:  # 0: no call of its own
                if call_id <= self._fence:
                    continue  # a call begun under the old config, heard from late (its timeout's observation)
                self._last_call = max(self._last_call, call_id)
            self._window.add(event)

    def step(self, now: float | None = None) -> None:
        """One round, all in the caller's thread: take in new events, recompute proposals, verify or auto-apply."""
        now = time.time() if now is None else now
        self._drain()
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            log.warning("analyzer_skipped", reason=str(exc))
            return
        proposals = self._propose(text)
        if proposals is not None:
            self._act(now, proposals)

    def _propose(self, text: str) -> list[Proposal] | None:
        """The proposals of the window as it stands against the file's `text` (None: the file does not
        validate). Reads the window and changes nothing: it may run in a worker thread."""
        try:
            return propose(self._window.analysis(), text)
        except ConfigError as exc:
            log.warning("analyzer_skipped", reason=str(exc))
            return None

    def _act(self, now: float, proposals: list[Proposal]) -> None:
        """Publish a round's proposals, then verify, wait for a trial, or auto-apply (in the event loop)."""
        self.proposals = proposals
        self.computed_at = now
        if not self.config.auto_apply.enabled:
            return
        if self._verifying is not None:
            self._verify(now)
            return
        if self._trial is not None:
            self._await_trial(now)
            return
        for proposal in self.proposals:
            if proposal.id not in self._applied and within_bounds(proposal, self.config):
                if self.config.auto_apply.shadow and self.trials is not None:
                    self._start_trial(proposal)
                else:
                    self._auto_apply(proposal, now)
                return

    def _start_trial(self, proposal: Proposal) -> None:
        """Try `proposal` in shadow first (``auto_apply.shadow``); a promotion writes it, then it is verified."""
        assert self.trials is not None
        if self.trials.busy:
            return  # an operator's trial runs: this one waits for a later step
        self._applied.add(proposal.id)
        try:
            self._trial = (self.trials.trial(proposal), proposal)
        except ApplyError as exc:
            log.warning("auto_apply_refused", proposal=proposal.id, reason=str(exc))

    def _await_trial(self, now: float) -> None:
        assert self._trial is not None and self.trials is not None
        trial_id, proposal = self._trial
        result = self.trials.outcome(trial_id)
        if result is None:
            return
        self._trial = None
        verdict, backup = result
        if verdict == "promoted" and backup is not None:
            self._verify_from(proposal, backup, now)

    def _auto_apply(self, proposal: Proposal, now: float) -> None:
        try:
            backup = apply_proposal(self.path, proposal)
        except ApplyError as exc:
            log.warning("auto_apply_refused", proposal=proposal.id, reason=str(exc))
            self._applied.add(proposal.id)
            return
        self._applied.add(proposal.id)
        self._verify_from(proposal, backup, now)

    def _verify_from(self, proposal: Proposal, backup: Path, now: float) -> None:
        """`proposal` was just written (`backup` holds the file before): verify it over the next `verify_after`."""
        span = self.config.auto_apply.verify_after
        rate, calls = error_rate(list(self._bus.recent()), now - span, now)
        self._verifying = _Verification(proposal, backup, now, rate, calls, _digest(self.path))
        self._recorder.policy_event("proposal_applied", None, proposal=proposal.id, title=proposal.title, error_rate_before=round(rate, 4))

    def _verify(self, now: float) -> None:
        checking = self._verifying
        assert checking is not None
        span = self.config.auto_apply.verify_after
        if now < checking.applied_at + span:
            return
        rate, calls = error_rate(list(self._bus.recent()), checking.applied_at, now)
        self._verifying = None
        enough = min(calls, checking.calls_before) >= self.config.auto_apply.min_calls
        fields = {"proposal": checking.proposal.id, "error_rate_before": round(checking.rate_before, 4), "error_rate_after": round(rate, 4)}
        # Worse is rolled back even on too few calls to verify: the operator's own file is the safe side of
        # doubt (keeping a change that looked worse on a thin sample could cost every client; undoing a
        # good one costs only the improvement, which an operator can still apply from /proposals).
        if calls and rate > checking.rate_before:
            if _digest(self.path) != checking.written:
                log.warning("auto_apply_rollback_skipped", proposal=checking.proposal.id, reason="the file was edited since")
                self._recorder.policy_event("proposal_kept", None, **fields, verified=False, note="worse, but the file was edited since: not rolled back")
                return
            _restore(self.path, checking.backup)
            self._recorder.policy_event("proposal_rolled_back", None, **fields)
        else:
            self._recorder.policy_event("proposal_kept", None, **fields, verified=enough)


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


def _restore(path: Path, backup: Path) -> None:
    """Put the backup's content back, atomically, keeping the file's mode (through a symlink: the file it names)."""
    target = path.resolve()
    write_atomically(target, backup.read_bytes(), target.stat().st_mode & 0o7777)
