"""Shadow trials: run a proposal's candidate policy next to the live one, counted, never enforced.

A trial starts from a proposal (``POST /trials`` from ``analyze --apply ID --shadow``, or the embedded
analyzer's auto-apply with ``auto_apply.shadow``): the candidate file text must be valid exactly as a
reload would find it, edit the very file the proxy runs on (its SHA-256 is the request's `base_hash`),
and be the proposal's own edit of it. The live config keeps enforcing; an evaluator made by the
factory from (live config, candidate config) is fed the proxy's own events from the trial's start, read
from the bus's ring on each `step` (no subscriber queue: the proxy never waits for a trial; events the
ring pushed out before a step read them are counted, and any makes the trial inconclusive).

At the end of the duration, `judge` compares what the evaluator measured with the proposal's estimate:

- ``inconclusive``: events were lost, the evaluator could not model some calls, fewer than `min_calls`
  calls were seen, the cut rests on outcomes the replay had to assume (attempts the live policy never
  sent: a trial cannot measure what an added retry would have got), or the proposal estimates a cut in
  errors and there were none to cut;
- ``rejected``: the candidate would have made client-visible errors worse, or cut them by less than its
  estimate (`estimated_cut`) minus `tolerance` (both shares of the errors seen under the live policy);
- ``promoted``: otherwise. Only then is anything written, by `proxy.analyzer.apply.apply_proposal`
  (validated again, the old file backed up to ``FILE.bak-<time>``, replaced atomically), and only onto
  the file the trial started from (same hash; else the verdict is ``stale`` and nothing is written), so
  what is written is exactly what was trialled. The hot reload then picks it up.

A reload of another file during the trial (a `config_reloaded` with another hash) ends it as ``stale``:
the live policy it was compared with is gone. ``DELETE /trials/ID`` and the proxy stopping end it as
``aborted``. Each start and end is an event (`trial_started`, `trial_finished`); free text in them and
in `document` goes through `proxy.redact` (a title or a reason may quote the file).

The candidate a request posts is checked, not trusted: it must be exactly the proposal's changes applied
to the file by the analyzer's own editor (`_changes_of` rebuilds them from their JSON, finding again the
rule a new exact rule copies, which JSON drops), and a change may touch policy keys only
(`POLICY_SECTIONS`): never where calls go. The admin port can make the proxy write its file through a
trial, but only what a proposal could have written.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Protocol

import structlog

from proxy.analyzer.apply import ApplyError, apply_proposal
from proxy.analyzer.proposal import Change, Effect, Match, Proposal
from proxy.analyzer.yamledit import EditError, edit_text, unified_diff
from proxy.config.model import ConfigError, ProxyConfig, load_config
from proxy.config.resolve import PolicyResolver
from proxy.config.operations import MAX_TRIAL_S, ShadowConfig
from proxy.events.bus import EventBus
from proxy.policies.base import Observer
from proxy.redact import Budget, redact, redact_text
from proxy.tasks import Owner, cancel_and_wait, spawn
from proxy.trials.replayed import ReplayEvaluator

__all__ = [
    "FINISHED_KEPT",
    "MAX_ESTIMATE_NUMBERS",
    "MAX_FIGURES",
    "MAX_TRIAL_BODY_BYTES",
    "POLL_S",
    "Evaluator",
    "EvaluatorFactory",
    "Trial",
    "TrialManager",
    "TrialRefused",
    "Unsupported",
    "Verdict",
    "estimated_cut",
    "judge",
]

log = structlog.get_logger("proxy.trials")

Verdict = Literal["promoted", "rejected", "inconclusive", "stale", "aborted"]

POLL_S: Final = 1.0
"""How often a running trial reads the new events and checks whether its time is up."""
FINISHED_KEPT: Final = 10
"""Finished trials kept for ``GET /trials`` and for `TrialManager.outcome`."""
MAX_ESTIMATE_NUMBERS: Final = 16
"""Numbers of a proposal's estimate a trial keeps (its events carry them)."""
MAX_FIGURES: Final = 32
"""Figures of an evaluator a trial keeps (the first ones; ``dropped_events`` always)."""
MAX_NAME_CHARS: Final = 64
"""Longest name of an estimate's number or an evaluator's figure kept (cut past it)."""
MAX_PROPOSAL_ID_CHARS: Final = 64
MAX_TRIAL_BODY_BYTES: Final = 1024 * 1024
POLICY_SECTIONS: Final = frozenset({"timeouts", "retry", "breaker", "app_breaker", "rate_limit", "cache", "health", "idempotent"})
"""What a trial may change: policy, never where calls go (``url``, ``path``, ``pool``, headers)."""
_ESCAPED_GLOB = re.compile(r"\[([*?\[])\]")
"""Largest ``POST /trials`` body: a proposal and the full text of an edited config file."""


class Evaluator(Protocol):
    """Counts what the candidate would have changed, fed the proxy's events (dicts, as the bus publishes them).

    `figures` must have at least ``calls`` (calls seen), ``errors_before`` (client-visible errors under
    the live config) and ``errors_after`` (under the candidate); ``unmodelled`` (calls it could not tell
    about) is read when present. Any other figure is passed on to ``/trials`` and `trial_finished`."""

    def feed(self, event: dict[str, Any]) -> None: ...

    def figures(self) -> dict[str, int | float]: ...


EvaluatorFactory = Callable[[ProxyConfig, ProxyConfig], Evaluator]
"""(live config, candidate config) -> a fresh evaluator; raises `Unsupported` for a change it cannot measure."""


class Unsupported(Exception):
    """The evaluator cannot measure this change: the trial is refused before it starts."""


class TrialRefused(ApplyError):
    """A trial cannot start (or be found); `status` is the HTTP status the admin API answers with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def estimated_cut(numbers: dict[str, Any]) -> float | None:
    """The share of client-visible errors a proposal's effect says it removes, or None when it says nothing
    in those terms. Read from the numbers the rules write (`proxy.analyzer.rules`):

    ``errors_before``/``errors_after`` (any rule may state them), ``timed_out``/``would_complete`` (the
    timeouts rule), ``exhausted``/``would_succeed`` (retries_more), ``failed``/``would_succeed``
    (declared_idempotent), ``failed_after``/``would_be_served`` (cache_max_stale); ``attempts_saved``
    (retries_fewer: same answers, fewer attempts) is a cut of 0. ``cache_fallback`` states no share: its
    trial is promoted when it makes nothing worse (the trial's figures are of every call, and only the
    failures of params that had succeeded before can be served, which its estimate is not a share of).
    """

    def share(part: str, whole: str) -> float | None:
        total, some = numbers.get(whole), numbers.get(part)
        if not isinstance(total, int | float) or not isinstance(some, int | float) or total <= 0:
            return None
        return max(0.0, min(1.0, float(some) / float(total)))

    if "errors_before" in numbers and "errors_after" in numbers:
        before, after = numbers["errors_before"], numbers["errors_after"]
        if isinstance(before, int | float) and isinstance(after, int | float) and before > 0:
            return max(0.0, min(1.0, (before - after) / before))
        return None
    for part, whole in (
        ("would_complete", "timed_out"), ("would_succeed", "exhausted"), ("would_succeed", "failed"),
        ("would_be_served", "failed_after"),
    ):  # fmt: skip
        if whole in numbers and part in numbers:
            return share(part, whole)
    if "attempts_saved" in numbers:
        return 0.0
    return None


def judge(measured: dict[str, int | float], estimate: dict[str, Any], tolerance: float, min_calls: int) -> tuple[Verdict, str]:
    """The verdict on what a trial measured, and why in words (see the module's docstring)."""
    calls, before, after = int(measured.get("calls", 0)), measured.get("errors_before", 0), measured.get("errors_after", 0)
    if measured.get("dropped_events", 0):
        return "inconclusive", f"{measured['dropped_events']:g} events were lost before the trial read them"
    if measured.get("unmodelled", 0):
        return "inconclusive", f"the evaluator cannot tell what the candidate would have done to {measured['unmodelled']:g} of {calls} calls"
    if calls < min_calls:
        return "inconclusive", f"{calls} calls during the trial, {min_calls} needed for a verdict"
    if after > before:
        return "rejected", f"it would have made client-visible errors worse: {before:g} -> {after:g} of {calls} calls"
    estimated = measured.get("estimated_after", 0)
    if estimated and before - after > 0:
        # Outcomes the replay had to assume (an attempt the live policy never sent: an added retry) are
        # no measurement: a cut resting on them is the estimate checking itself.
        return "inconclusive", (
            f"{estimated:g} of the candidate's outcomes are estimates (attempts the live policy never sent), "
            f"not measurements: the cut of {before - after:g} errors cannot be checked in shadow"
        )
    cut = estimated_cut(estimate)
    if cut is None or cut <= 0:
        what = "no estimated cut in errors to check" if cut is None else "it estimates no cut in errors"
        return "promoted", f"{what}; client-visible errors {before:g} -> {after:g} of {calls} calls, not worse"
    if before <= 0:
        return "inconclusive", f"no client-visible errors during the trial to measure the estimated cut of {cut:.0%} against"
    achieved = (before - after) / before
    figures = f"it would have cut {before - after:g} of {before:g} errors ({achieved:.0%}); estimated {cut:.0%}, tolerance {tolerance:.0%}"
    if achieved + tolerance + 1e-9 >= cut:
        return "promoted", figures
    return "rejected", figures


@dataclass
class Trial:
    """One trial: what it tries, since when, what it has read, and (once finished) its verdict."""

    id: str
    proposal: dict[str, Any]
    candidate: str
    base_hash: str
    origin: str
    started_at: float
    ends_at: float
    evaluator: Evaluator = field(repr=False)
    changes: tuple[Change, ...]
    last_id: int
    estimate: dict[str, float]
    dropped: int = 0
    verdict: Verdict | None = None
    reason: str | None = None
    measured: dict[str, int | float] = field(default_factory=dict)
    finished_at: float | None = None
    backup: Path | None = None

    @property
    def proposal_id(self) -> str:
        return str(self.proposal["id"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "proposal": self.proposal_id,
            "title": self.proposal.get("title"),
            "changes": _describe_changes(self.proposal),
            "origin": self.origin,
            "started_at": round(self.started_at, 3),
            "ends_at": round(self.ends_at, 3),
            "duration_s": round(self.ends_at - self.started_at, 3),
            "estimate": self.estimate,
            "verdict": self.verdict,
            "reason": self.reason,
            "measured": self.measured,
            "finished_at": None if self.finished_at is None else round(self.finished_at, 3),
            "backup": None if self.backup is None else str(self.backup),
        }


def _describe_changes(proposal: dict[str, Any]) -> list[str]:
    described = []
    for change in proposal.get("changes") or []:
        match = change.get("match")
        scope = "defaults" if not match else "rule " + ", ".join(f"{k}={v}" for k, v in match.items())
        described.append(f"{change.get('upstream')} {scope}: {change.get('setting')}: {change.get('old')} -> {change.get('value')}")
    return described


def _changes_of(proposal: dict[str, Any], config: ProxyConfig) -> tuple[Change, ...]:
    """The proposal's changes as the analyzer made them, from their JSON (`Change.to_dict`); `TrialRefused` (422)
    for a change that is not one. JSON drops what a new exact rule copies (`Match.inherit_from`): it is found
    again as `proxy.analyzer.scope` found it, the rule that decides that call in `config` today."""
    changes = []
    for raw in proposal["changes"]:
        upstream, key, match = raw.get("upstream"), raw.get("setting"), raw.get("match")
        if not isinstance(upstream, str) or not isinstance(key, str) or not (match is None or isinstance(match, dict)):
            raise TrialRefused("each change needs upstream and setting (strings) and match (an object or null)", 422)
        if key.split(".")[0] not in POLICY_SECTIONS:
            raise TrialRefused(f"a trial changes policy keys only ({', '.join(sorted(POLICY_SECTIONS))}), not {key}", 422)
        target = None if match is None else _match_of(match, upstream, config)
        changes.append(Change(upstream, target, key, raw.get("value"), raw.get("old")))
    return tuple(changes)


def _match_of(written: dict[str, Any], upstream: str, config: ProxyConfig) -> Match:
    method, tool = written.get("method", "*"), written.get("tool")
    if not isinstance(method, str) or not (tool is None or isinstance(tool, str)):
        raise TrialRefused("a change's match holds method and tool as strings", 422)
    match = Match(method.replace("$${", "${"), None if tool is None else tool.replace("$${", "${"))
    try:
        rules = config.upstream(upstream).rules
    except KeyError:
        return match  # the edit itself refuses an upstream the file does not have
    if any(Match.from_config(rule.match) == match for rule in rules):
        return match
    name = _ESCAPED_GLOB.sub(r"\1", match.tool if match.tool is not None else match.method)
    method_name = "tools/call" if match.tool is not None else name
    policy = PolicyResolver(config.upstream(upstream)).resolve(method_name, name if match.tool is not None else None)
    if policy.rule == "default":
        return match
    index = int(policy.rule[len("rules[") : policy.rule.index("]")])
    return Match(match.method, match.tool, inherit_from=Match.from_config(rules[index].match))


def _numbers(numbers: Any, most: int = MAX_ESTIMATE_NUMBERS) -> dict[str, float]:
    """The finite numbers of `numbers` (a foreign dict: a posted estimate, an evaluator's figures), bounded."""
    if not isinstance(numbers, dict):
        return {}
    kept: dict[str, float] = {}
    for name, value in numbers.items():
        if len(kept) >= most:
            break
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            kept[str(name)[:MAX_NAME_CHARS]] = float(value)
    return kept


def _checked_proposal(proposal: Any) -> dict[str, Any]:
    """The proposal as the trial keeps it (the `Proposal.to_dict` shape); `TrialRefused` (422) if it is not one."""
    if not isinstance(proposal, dict):
        raise TrialRefused("proposal must be a proposal object (analyze --json gives them)", 422)
    pid, title, changes = proposal.get("id"), proposal.get("title"), proposal.get("changes")
    if not isinstance(pid, str) or not pid or len(pid) > MAX_PROPOSAL_ID_CHARS:
        raise TrialRefused(f"proposal.id must be a string of 1 to {MAX_PROPOSAL_ID_CHARS} characters", 422)
    if not isinstance(title, str):
        raise TrialRefused("proposal.title must be a string", 422)
    if proposal.get("advisory") or not isinstance(changes, list) or not changes or not all(isinstance(c, dict) for c in changes):
        raise TrialRefused(f"proposal {pid} is advice only: it has no change to try", 422)
    effect = proposal.get("effect")
    numbers = effect.get("numbers") if isinstance(effect, dict) else None
    rule, target = proposal.get("rule"), proposal.get("target")
    return {
        "id": pid, "rule": rule if isinstance(rule, str) else "", "target": target if isinstance(target, str) else "",
        "title": title, "changes": changes, "effect": {"numbers": _numbers(numbers)},
    }  # fmt: skip


class TrialManager:
    """Runs the shadow trials of a proxy started from a config file, one at a time."""

    def __init__(
        self,
        path: Path,
        config: ShadowConfig,
        bus: EventBus,
        announcer: Observer,
        factory: EvaluatorFactory = ReplayEvaluator,
        *,
        clock: Callable[[], float] = time.time,
        flush: Callable[[], object] = lambda: None,
        env: dict[str, str] | None = None,
        poll: float = POLL_S,
    ) -> None:
        """`flush` publishes the proxy's pending `call_ok` summaries (called at a trial's start and end, so
        the calls it counts are exactly those of its span); `env` is what ``${VAR}`` reads (None: the
        process's, as a reload reads it); `clock` is wall time (tests pass a fake one)."""
        self.path = path
        self.config = config
        self._bus = bus
        self._announcer = announcer
        self._factory = factory
        self.clock = clock
        self._flush = flush
        self._env = env
        self._poll = poll
        self.running: Trial | None = None
        self.finished: deque[Trial] = deque(maxlen=FINISHED_KEPT)
        self._tasks: Owner = set()

    # --- starting ---------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A trial is running: another cannot start."""
        return self.running is not None

    def start(
        self, proposal: Any, candidate: Any, base_hash: Any, duration: float | None = None, origin: str = "api"
    ) -> Trial:
        """Start a trial of `candidate` (the full text of the edited file); `TrialRefused` with its status if not:
        409 while another runs or when the file is no longer `base_hash`, 422 for what cannot be tried."""
        if self.running is not None:
            running = self.running
            raise TrialRefused(
                f"trial {running.id} (proposal {running.proposal_id}) is running until {_clock_time(running.ends_at)}; "
                f"DELETE /trials/{running.id} aborts it",
                409,
            )
        checked = _checked_proposal(proposal)
        if not isinstance(candidate, str) or not isinstance(base_hash, str):
            raise TrialRefused("candidate (the edited file's text) and base_hash (its original's SHA-256) must be strings", 422)
        length = self.config.duration if duration is None else duration
        if not 0 < length <= MAX_TRIAL_S:
            raise TrialRefused(f"duration must be above 0 and at most {MAX_TRIAL_S:g}s (got {length:g}s)", 422)
        base = self._read()
        if hashlib.sha256(base.encode("utf-8")).hexdigest() != base_hash.lower():
            raise TrialRefused(
                f"{self.path} changed since the proposal was made (base_hash differs): run the analyzer again", 409
            )
        if candidate == base:
            raise TrialRefused("the candidate is the file as it is: nothing to try", 422)
        before, after = self._load(base, "the file in force"), self._load(candidate, "the candidate")
        changes = _changes_of(checked, before)
        try:
            derived = edit_text(base, changes)
        except EditError as exc:
            raise TrialRefused(f"proposal {checked['id']} does not apply to {self.path}: {exc}", 422) from exc
        if derived != candidate:
            raise TrialRefused(f"the candidate is not proposal {checked['id']}'s edit of {self.path}", 422)
        try:
            evaluator = self._factory(before, after)
        except Unsupported as exc:
            raise TrialRefused(f"this change cannot be tried in shadow: {exc}", 422) from exc
        self._flush()  # the calls finished before the trial are summarized before it, not in it
        now = self.clock()
        trial = Trial(
            id=secrets.token_hex(5), proposal=checked, candidate=candidate, base_hash=base_hash.lower(), origin=origin,
            started_at=now, ends_at=now + length, evaluator=evaluator, changes=changes, last_id=self._bus.published,
            estimate=checked["effect"]["numbers"],
        )  # fmt: skip
        self.running = trial
        self._announcer.policy_event(
            "trial_started", None, trial=trial.id, proposal=trial.proposal_id, title=redact_text(checked["title"]),
            changes=[redact_text(c) for c in _describe_changes(checked)], duration_s=round(length, 3), estimate=trial.estimate,
        )  # fmt: skip
        log.info("trial_started", trial=trial.id, proposal=trial.proposal_id, origin=origin, duration_s=length)
        if self._poll > 0:
            spawn(self._run(trial), name=f"shadow-trial:{trial.id}", owner=self._tasks)
        return trial

    def trial(self, proposal: Proposal) -> str:
        """Start a trial of `proposal` on the file as it is now (the embedded analyzer's auto-apply); its id.
        Raises `TrialRefused` (an `ApplyError`) when it cannot start."""
        text = self._read()
        try:
            candidate = edit_text(text, proposal.changes)
        except EditError as exc:
            raise TrialRefused(f"proposal {proposal.id} no longer applies to {self.path}: {exc}", 422) from exc
        base_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self.start(proposal.to_dict(), candidate, base_hash, origin="auto").id

    def outcome(self, trial_id: str) -> tuple[str, Path | None] | None:
        """(verdict, backup of the file a promotion replaced) of a finished trial; None while it runs.
        A trial no longer kept reads as ``aborted``."""
        if self.running is not None and self.running.id == trial_id:
            return None
        for trial in self.finished:
            if trial.id == trial_id:
                return str(trial.verdict), trial.backup
        return "aborted", None

    def _read(self) -> str:
        try:
            return self.path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TrialRefused(f"cannot read {self.path}: {exc}", 409) from exc

    def _load(self, text: str, what: str) -> ProxyConfig:
        try:
            return load_config(text, self._env)
        except ConfigError as exc:
            raise TrialRefused(f"{what} is not a valid config: " + "; ".join(redact_text(e) for e in exc.errors), 422) from exc

    # --- running ----------------------------------------------------------------------------------

    async def _run(self, trial: Trial) -> None:
        while self.running is trial:
            await asyncio.sleep(max(0.01, min(self._poll, trial.ends_at - self.clock())))
            try:
                self.step()
            except Exception as exc:  # a trial must never take the proxy down
                log.error("trial_failed", trial=trial.id, error=repr(exc))
                self._finish(trial, "inconclusive", f"the trial failed: {exc!r}")

    def step(self, now: float | None = None) -> None:
        """Feed the running trial what the bus published since the last step; give the verdict when it is due."""
        trial = self.running
        if trial is None:
            return
        if self._drain(trial) or trial.verdict is not None:
            return
        now = self.clock() if now is None else now
        if now < trial.ends_at:
            return
        self._flush()
        if self._drain(trial):
            return
        try:
            measured: dict[str, int | float] = dict(_numbers(trial.evaluator.figures(), MAX_FIGURES - 1))
        except Exception as exc:
            self._finish(trial, "inconclusive", f"the evaluator failed: {exc!r}")
            return
        measured["dropped_events"] = trial.dropped
        trial.measured = measured
        verdict, reason = judge(measured, trial.estimate, self.config.tolerance, self.config.min_calls)
        if verdict == "promoted":
            verdict, reason = self._promote(trial, reason, now)
        self._finish(trial, verdict, reason)

    def _drain(self, trial: Trial) -> bool:
        """Feed the trial's evaluator; True when that ended the trial (another file was reloaded)."""
        for event in self._bus.recent(trial.last_id):
            event_id = int(event["id"])
            trial.dropped += max(0, event_id - trial.last_id - 1)
            trial.last_id = event_id
            if event.get("type") == "config_reloaded" and event.get("file_hash") != trial.base_hash[: len(str(event.get("file_hash")))]:
                self._finish(trial, "stale", "another config was reloaded during the trial: the live policy it was measured against is gone")
                return True
            try:
                trial.evaluator.feed(event)
            except Exception as exc:
                self._finish(trial, "inconclusive", f"the evaluator failed: {exc!r}")
                return True
        return False

    def _promote(self, trial: Trial, reason: str, now: float) -> tuple[Verdict, str]:
        """Apply the trialled proposal to the file it started from: (promoted, why) or (stale, why not)."""
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            return "stale", f"{reason}; but {self.path} cannot be read now ({exc.strerror or exc}): nothing written"
        if hashlib.sha256(raw).hexdigest() != trial.base_hash:
            return "stale", f"{reason}; but {self.path} changed during the trial: nothing written, run the analyzer again"
        proposal = Proposal(
            rule=trial.proposal["rule"], target=trial.proposal["target"],
            title=str(trial.proposal["title"]), rationale="", evidence={}, effect=Effect("", trial.estimate),
            confidence="low", confidence_reason="", changes=trial.changes,
            diff=unified_diff(raw.decode("utf-8"), trial.candidate),
        )  # fmt: skip
        try:
            trial.backup = apply_proposal(self.path, proposal, env=self._env, now=now)
        except (ApplyError, OSError) as exc:
            return "stale", f"{reason}; but {exc}: nothing written"
        return "promoted", f"{reason}; written to {self.path} (backup: {trial.backup.name})"

    def _finish(self, trial: Trial, verdict: Verdict, reason: str) -> None:
        if trial.verdict is not None:
            return
        trial.verdict, trial.reason, trial.finished_at = verdict, redact_text(reason), self.clock()
        if self.running is trial:
            self.running = None
        self.finished.appendleft(trial)
        self._announcer.policy_event(
            "trial_finished", None, trial=trial.id, proposal=trial.proposal_id, verdict=verdict, reason=trial.reason,
            measured={k: float(v) for k, v in trial.measured.items()}, estimate=trial.estimate,
        )  # fmt: skip
        log.info("trial_finished", trial=trial.id, proposal=trial.proposal_id, verdict=verdict, reason=trial.reason)

    # --- stopping, reading ------------------------------------------------------------------------

    def abort(self, trial_id: str, reason: str = "aborted by DELETE /trials") -> Trial:
        """End the running trial `trial_id` without writing anything; `TrialRefused` (404) if it is not running."""
        trial = self.running
        if trial is None or trial.id != trial_id:
            raise TrialRefused(f"no running trial {trial_id}" + (f" (trial {trial.id} is running)" if trial else ""), 404)
        self._finish(trial, "aborted", reason)
        return trial

    async def stop(self) -> None:
        """The proxy stops: a running trial ends as aborted (nothing written)."""
        if self.running is not None:
            self.abort(self.running.id, "the proxy stopped")
        await cancel_and_wait(self._tasks)

    def document(self) -> dict[str, Any]:
        """The ``GET /trials`` body (and /proposals' `trial` member), redacted."""
        document = {
            "running": None if self.running is None else self.running.as_dict(),
            "finished": [trial.as_dict() for trial in self.finished],
            "defaults": {"duration_s": self.config.duration, "tolerance": self.config.tolerance, "min_calls": self.config.min_calls},
        }
        redacted: dict[str, Any] = redact(document, max_chars=None, max_depth=64, budget=Budget(chars=None, items=None))
        return redacted


def _clock_time(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))
