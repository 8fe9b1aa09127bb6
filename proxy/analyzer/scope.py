"""Where a change belongs in the file, and the evidence fields every proposal shares.

A change goes where the target's effective policy comes from: the rule that wins for it today (so
the settings that rule already carries, `idempotent` included, are kept), else a new exact rule for
the target (one slow tool must not slow every other; its client-chosen name written as a literal
pattern by `Match.exact`, so a tool named ``*`` gets a rule for ``*`` alone), or the upstream's defaults for upstream-wide
settings. The rules ask here instead of guessing from names.
"""

from __future__ import annotations

from typing import Any

from proxy.analyzer.aggregate import Analysis
from proxy.analyzer.model import Target
from proxy.analyzer.proposal import Match
from proxy.config.model import ProxyConfig, UpstreamConfig
from proxy.config.resolve import Policy, PolicyResolver

__all__ = ["policy_of", "scope_for", "upstream_config", "window_evidence"]


def upstream_config(config: ProxyConfig, name: str) -> UpstreamConfig | None:
    """The upstream's config, or None when the events name one the file no longer has."""
    try:
        return config.upstream(name)
    except KeyError:
        return None


def policy_of(config: ProxyConfig, target: Target) -> Policy | None:
    upstream = upstream_config(config, target.upstream)
    return None if upstream is None else PolicyResolver(upstream).resolve(target.method, target.tool)


def scope_for(config: ProxyConfig, target: Target) -> tuple[Match, Policy] | None:
    """(the match to edit; the policy in force) for `target`.

    The winning rule's own match when a rule decides the target's policy; otherwise an exact new rule.
    """
    upstream = upstream_config(config, target.upstream)
    if upstream is None:
        return None
    policy = PolicyResolver(upstream).resolve(target.method, target.tool)
    exact = Match.exact(target.method, target.tool)  # client-chosen names: literal patterns, never globs
    if policy.rule != "default":
        index = int(policy.rule[len("rules[") : policy.rule.index("]")])
        winning = Match.from_config(upstream.rules[index].match)
        if winning.exact_for(target.method, target.tool):
            return winning, policy
        # A glob rule governs others too: carve out an exact rule that copies it, then change that one.
        return Match(exact.method, exact.tool, inherit_from=winning), policy
    return exact, policy


def window_evidence(analysis: Analysis, example_ids: list[int], **counts: Any) -> dict[str, Any]:
    """The evidence dict: the counts a rule relied on, the window, and up to 5 example event ids."""
    return {
        **counts,
        "window_start": analysis.window_start,
        "window_end": analysis.window_end,
        "example_ids": example_ids[:5],
    }
