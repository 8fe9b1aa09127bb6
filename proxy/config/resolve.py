"""Which policy applies to a call: the upstream's defaults overlaid with its most specific matching rule.

Rules are ordered once, at build time, by specificity (exact tool > tool glob > any tool, then exact
method > method glob > any method, then file order). A call's (method, tool) pair is resolved by the
first rule in that order that matches, and the answer is memoized in a bounded LRU map: a busy proxy
resolves each distinct pair once, and clients inventing tool names cannot grow memory.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from cachetools import LRUCache

from proxy.config.model import UpstreamConfig
from proxy.config.policies import (
    AppBreakerConfig,
    BreakerConfig,
    CacheConfig,
    MatchConfig,
    RateLimitConfig,
    RetryConfig,
    RuleConfig,
    TimeoutsConfig,
    overlay,
)

__all__ = ["Policy", "PolicyResolver"]

RESOLVED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Policy:
    """The effective policy of one kind of call. `rule` names the rule that won (``default`` for none)."""

    rule: str
    timeouts: TimeoutsConfig
    retry: RetryConfig
    breaker: BreakerConfig
    rate_limit: RateLimitConfig | None
    cache: CacheConfig | None
    idempotent: bool | None
    app_breaker: AppBreakerConfig | None = None


_ESCAPED = re.compile(r"\[[*?[]\]")
"""A glob character written as a literal (`[*]`, `[?]`, `[[]`), as the analyzer writes client-chosen names."""


def _glob_rank(pattern: str | None) -> int:
    """0 for match-all, 1 for a glob, 2 for an exact name (escaped glob characters are literal: a rule for
    the tool literally named ``fetch_*``, written ``fetch_[*]``, outranks the glob ``fetch_*``)."""
    if pattern is None or pattern == "*":
        return 0
    return 1 if any(ch in _ESCAPED.sub("", pattern) for ch in "*?[") else 2


def _matches(pattern: str | None, value: str | None) -> bool:
    if pattern is None:
        return True
    return value is not None and fnmatch.fnmatchcase(value, pattern)


def _rule_name(index: int, match: MatchConfig) -> str:
    parts = [f"method={match.method}"] if match.method != "*" else []
    if match.tool is not None:
        parts.append(f"tool={match.tool}")
    return f"rules[{index}]" + (f" ({', '.join(parts)})" if parts else "")


class PolicyResolver:
    """Resolves and memoizes the `Policy` of (method, tool) pairs for one upstream."""

    __slots__ = ("_default", "_memo", "_rules")

    def __init__(self, upstream: UpstreamConfig) -> None:
        self._default = Policy(
            "default", upstream.timeouts, upstream.retry, upstream.breaker, upstream.rate_limit, upstream.cache, None,
            upstream.app_breaker,
        )
        indexed = list(enumerate(upstream.rules))
        indexed.sort(key=lambda item: (-_glob_rank(item[1].match.tool), -_glob_rank(item[1].match.method), item[0]))
        self._rules = [(index, rule, self._apply(index, rule)) for index, rule in indexed]
        self._memo: LRUCache[tuple[str, str | None], Policy] = LRUCache(maxsize=RESOLVED_CACHE_SIZE)

    def _apply(self, index: int, rule: RuleConfig) -> Policy:
        base = self._default
        present = rule.model_fields_set
        return Policy(
            rule=_rule_name(index, rule.match),
            timeouts=overlay(base.timeouts, rule.timeouts, "timeouts" in present) or base.timeouts,
            retry=overlay(base.retry, rule.retry, "retry" in present) or base.retry,
            breaker=overlay(base.breaker, rule.breaker, "breaker" in present) or base.breaker,
            rate_limit=overlay(base.rate_limit, rule.rate_limit, "rate_limit" in present),
            cache=overlay(base.cache, rule.cache, "cache" in present),
            idempotent=rule.idempotent,
            app_breaker=overlay(base.app_breaker, rule.app_breaker, "app_breaker" in present),
        )

    @property
    def default(self) -> Policy:
        return self._default

    def policies(self) -> list[Policy]:
        """Every policy this upstream can resolve to: its defaults and each rule's."""
        return [self._default, *(policy for _, _, policy in self._rules)]

    def resolve(self, method: str, tool: str | None) -> Policy:
        """The policy for a call of `method` (and `tool`, for tools/call)."""
        key = (method, tool)
        policy = self._memo.get(key)
        if policy is None:
            policy = self._memo[key] = self._search(method, tool)
        return policy

    def _search(self, method: str, tool: str | None) -> Policy:
        for _, rule, policy in self._rules:
            if _matches(rule.match.method, method) and _matches(rule.match.tool, tool):
                return policy
        return self._default
