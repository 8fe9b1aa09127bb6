"""The analyzer's one entry point: events + the user's config text -> the analysis and its proposals.

Each rule's proposals are turned into edits of the user's own file; a proposal survives only if the
edited file still validates (`load_config`, exactly as a reload would) and if it does not make the
proxy retry more any call the events do not show to be idempotent. That guard compares the effective
retry policy of every observed call before and after the edit, so it holds whichever rule, rule entry
or glob the change lands on. One exception, exactly one: a call the proxy treated as not idempotent
may be declared ``idempotent: true`` when its own events show the server declaring it safe to retry
(readOnlyHint or idempotentHint, never contradicted: `TargetStats.declared_safe`); even then no more
attempts, nor more failure kinds retried, may come with it.

Cause before symptom. The rules run in one order, `RULES` = `CAUSES` then `SYMPTOMS`, and each is handed
what the proposals kept so far address (`Addressed`: the client-visible failures and the breaker
openings their changes are expected to remove; kept means it survived validation and the guard in
`_finish`). The cause rules fix why calls fail (a per_try too short, too few attempts, an upstream
over its rate, a tool that shares a breaker, a breaker that trips on short bursts, a safe tool never
retried; a stdio child whose questions reach no client or that keeps failing to start); the symptom rules (a cached fallback, a longer max_stale) put stale answers in place of
failures, and speak only on the failures no kept cause proposal addresses, so a stale answer never
hides a cause that has its own fix. Within `CAUSES`, `breaker_flaps` comes after the rules whose
changes prevent openings (timeouts, rate_limit, breaker_per_tool): an opening whose cause is fixed is
not the breaker's threshold's doing. A kept proposal's `addresses` count is in its JSON
(``addresses.failures``, ``addresses.openings``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from proxy.analyzer import rules, rules_stdio, rules_upstream
from proxy.analyzer.aggregate import DEFAULT_WINDOW_S, Analysis
from proxy.analyzer.proposal import NOTHING, Proposal
from proxy.analyzer.rules import Rule
from proxy.analyzer.yamledit import EditError, edit_text, unified_diff
from proxy.config.model import ConfigError, ProxyConfig, load_config
from proxy.analyzer.scope import policy_of

__all__ = ["CAUSES", "RULES", "SYMPTOMS", "analyze", "propose", "unsafe_retries"]

log = logging.getLogger(__name__)

CAUSES: tuple[Rule, ...] = (
    rules.timeouts,
    rules.retries_fewer,
    rules.retries_more,
    rules_upstream.rate_limit,
    rules.declared_idempotent,
    rules_upstream.breaker_per_tool,
    rules_upstream.breaker_flaps,
    rules_upstream.health_flaps,
    rules_upstream.session_lost,
    rules_stdio.stdio,
)
"""The rules that fix why calls fail, in the order they run: `breaker_flaps` after every rule whose change
prevents breaker openings (it does not count those)."""
SYMPTOMS: tuple[Rule, ...] = (
    rules.cache_fallback,
    rules.cache_max_stale,
)
"""The rules that stand stale answers in for failures: after the causes, on the failures no kept cause
proposal addresses."""
RULES: tuple[Rule, ...] = CAUSES + SYMPTOMS
"""Every rule, in the order it runs and its proposals are reported: causes, then symptoms."""


def unsafe_retries(analysis: Analysis, before: ProxyConfig, after: ProxyConfig) -> list[str]:
    """Observed calls that `after` retries more than `before` without the events calling them idempotent.

    More is more attempts, more failure kinds retried, or being declared idempotent (a call treated as
    not idempotent is retried only when never sent; declared idempotent, after any retryable failure).
    A declaration is safe when the events call the target idempotent, or show its server declaring it
    safe to retry (`declared_safe`) and the attempts and kinds stay as they were.
    """
    unsafe = []
    for stats in analysis.all_targets():
        old, new = policy_of(before, stats.target), policy_of(after, stats.target)
        if old is None or new is None:
            continue
        more = new.retry.max_attempts > old.retry.max_attempts or bool(set(new.retry.retry_on) - set(old.retry.retry_on))
        declared = new.idempotent is True and old.idempotent is not True
        known = stats.idempotent is True
        if more and (not known or new.idempotent is False):
            unsafe.append(stats.target.label)
        elif declared and not known and not stats.declared_safe:
            unsafe.append(stats.target.label)
    return unsafe


def _finish(proposal: Proposal, analysis: Analysis, text: str, config: ProxyConfig, env: dict[str, str] | None, name: str) -> Proposal | None:
    if proposal.advisory:
        return proposal
    try:
        edited = edit_text(text, proposal.changes)
        after = load_config(edited, env)
    except EditError as exc:
        log.warning("analyzer dropped proposal %s (%s): %s", proposal.id, proposal.title, exc)
        return None
    except ConfigError as exc:
        log.warning("analyzer dropped proposal %s (%s): the edited file does not validate: %s", proposal.id, proposal.title, "; ".join(exc.errors))
        return None
    unsafe = unsafe_retries(analysis, config, after)
    if unsafe:
        log.warning(
            "analyzer dropped proposal %s (%s): it would retry calls not known to be idempotent: %s",
            proposal.id, proposal.title, ", ".join(unsafe),
        )  # fmt: skip
        return None
    return proposal.with_diff(unified_diff(text, edited, name))


def propose(
    analysis: Analysis, config_text: str, *, env: dict[str, str] | None = None, name: str = "proxy.yaml",
    rules: Sequence[Rule] = RULES,
) -> list[Proposal]:
    """Run `rules` over `analysis` in order; keep the proposals whose edit of `config_text` validates and is
    safe. Each rule is handed what the proposals kept before it address (`Addressed`)."""
    config = load_config(config_text, env)
    kept: dict[str, Proposal] = {}
    addressed = NOTHING
    for rule in rules:
        for proposal in rule(analysis, config, addressed):
            finished = _finish(proposal, analysis, config_text, config, env, name)
            if finished is not None and finished.id not in kept:
                kept[finished.id] = finished
                addressed = addressed.adding(finished)
    return list(kept.values())


def analyze(
    events: Iterable[dict[str, Any]], config_text: str, *, window_s: float | None = DEFAULT_WINDOW_S,
    env: dict[str, str] | None = None, name: str = "proxy.yaml", rules: Sequence[Rule] = RULES,
) -> tuple[Analysis, list[Proposal]]:
    """Aggregate `events` over the last `window_s` seconds and propose changes to `config_text`.

    Raises `ConfigError` when `config_text` itself does not validate (with `env` for ``${VAR}``).
    """
    load_config(config_text, env)  # fail before reading a large file when the config is broken
    analysis = Analysis.from_events(events, window_s)
    return analysis, propose(analysis, config_text, env=env, name=name, rules=rules)
