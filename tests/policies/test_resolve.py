"""Policy matching: the most specific rule wins, overrides merge key by key, resolution is memoized."""

from __future__ import annotations

import pytest

from proxy.config.model import ConfigError, load_config
from proxy.config.resolve import RESOLVED_CACHE_SIZE, PolicyResolver
from tests.fakes import upstream_config

RULES = [
    {"match": {"method": "tools/*"}, "retry": {"max_attempts": 2}},
    {"match": {"tool": "search_*"}, "retry": {"max_attempts": 4}, "timeouts": {"per_try": "5s"}},
    {"match": {"tool": "search_fast"}, "retry": {"backoff": {"base": "10ms"}}},
    {"match": {"method": "resources/read"}, "cache": {"mode": "ttl", "ttl": "1m"}},
    {"match": {"tool": "search_*"}, "retry": {"max_attempts": 9}},
]


def resolver() -> PolicyResolver:
    return PolicyResolver(upstream_config(retry={"max_attempts": 3, "backoff": {"max": "5s"}}, rules=RULES))


@pytest.mark.parametrize(
    ("method", "tool", "rule", "attempts"),
    [
        ("tools/call", "search_fast", "rules[2] (tool=search_fast)", 3),  # exact tool beats the glob
        ("tools/call", "search_slow", "rules[1] (tool=search_*)", 4),  # earlier of two equal globs
        ("tools/call", "lookup", "rules[0] (method=tools/*)", 2),
        ("tools/list", None, "rules[0] (method=tools/*)", 2),
        ("prompts/get", None, "default", 3),
    ],
)
def test_most_specific_rule_wins(method: str, tool: str | None, rule: str, attempts: int) -> None:
    policy = resolver().resolve(method, tool)
    assert (policy.rule, policy.retry.max_attempts) == (rule, attempts)


def test_overrides_merge_key_by_key_over_the_upstream_defaults() -> None:
    policy = resolver().resolve("tools/call", "search_fast")
    assert policy.retry.backoff.base == 0.01  # from the rule
    assert policy.retry.backoff.max == 5.0  # from the upstream default, same section
    assert policy.timeouts.per_try == 300.0  # rules[1] does not apply: only one rule wins
    slow = resolver().resolve("tools/call", "search_slow")
    assert (slow.timeouts.per_try, slow.timeouts.total) == (5.0, 600.0)


def test_sections_off_by_default_and_switchable_per_rule() -> None:
    r = resolver()
    assert r.resolve("tools/list", None).cache is None
    cache = r.resolve("resources/read", None).cache
    assert cache is not None and (cache.mode, cache.ttl, cache.max_stale) == ("ttl", 60.0, 300.0)
    off = PolicyResolver(upstream_config(cache={"mode": "ttl"}, rules=[{"match": {"tool": "x"}, "cache": None}]))
    assert off.resolve("tools/call", "x").cache is None
    assert off.resolve("tools/call", "y").cache is not None


def test_resolution_is_memoized_and_bounded() -> None:
    r = resolver()
    assert r.resolve("tools/call", "search_fast") is r.resolve("tools/call", "search_fast")
    for n in range(RESOLVED_CACHE_SIZE + 100):
        r.resolve("tools/call", f"random-{n}")
    assert len(r._memo) == RESOLVED_CACHE_SIZE


def test_bad_policy_file_is_rejected_with_path_named_errors() -> None:
    text = """
upstreams:
  - name: a
    url: http://127.0.0.1:1/mcp
    retry: {max_attempts: 0, backoff: {base: fast}, retry_on: [timeout, sometimes]}
    breaker: {failure_threshold: 3, failure_rate: 0.5, scope: planet}
    rate_limit: {per: 1s}
    cache: {mode: forever}
    rules:
      - match: {tool: search}
        retry: {max_atempts: 2}
      - retry: {max_attempts: 2}
"""
    with pytest.raises(ConfigError) as caught:
        load_config(text, {})
    assert caught.value.errors == [
        "upstreams[0].retry.max_attempts: must be >= 1 (got 0)",
        "upstreams[0].retry.backoff.base: must be a duration such as 250ms, 2s or 1m (got 'fast')",
        "upstreams[0].retry.retry_on[1]: must be 'connect_error', 'timeout', 'http_5xx', 'http_429', 'server_error' or 'session_expired' (got 'sometimes')",
        "upstreams[0].breaker.scope: must be 'upstream' or 'tool' (got 'planet')",
        "upstreams[0].rate_limit.rate: required",
        "upstreams[0].cache.mode: must be 'fallback' or 'ttl' (got 'forever')",
        "upstreams[0].rules[0].retry.max_atempts: unknown key",
        "upstreams[0].rules[1].match: required",
    ]


def test_breaker_takes_one_trigger() -> None:
    text = "upstreams: [{name: a, url: 'http://h/mcp', breaker: {failure_threshold: 3, failure_rate: 0.5}}]"
    with pytest.raises(ConfigError) as caught:
        load_config(text, {})
    assert caught.value.errors == ["upstreams[0].breaker: set failure_threshold or failure_rate, not both"]


def test_a_rules_rate_limit_merges_key_by_key_and_its_burst_follows_its_own_rate() -> None:
    """Like every section, a rule's `rate_limit` changes only the keys it sets (max_wait, key, per are the
    upstream's), except that `burst` belongs with `rate`: a rule that sets `rate` alone gets the default
    burst of its own rate, not a burst sized for the upstream's (200 at once would undo a limit of 2/s)."""
    r = PolicyResolver(upstream_config(
        rate_limit={"rate": 100, "burst": 200, "max_wait": "1s", "key": "tool"},
        rules=[
            {"match": {"tool": "slow"}, "rate_limit": {"rate": 2}},
            {"match": {"tool": "bursty"}, "rate_limit": {"burst": 5}},
            {"match": {"tool": "both"}, "rate_limit": {"rate": 2, "burst": 3}},
            {"match": {"tool": "patient"}, "rate_limit": {"max_wait": "5s"}},
        ],
    ))  # fmt: skip

    def shape(tool: str) -> tuple[float, float, int, float, str]:
        limit = r.resolve("tools/call", tool).rate_limit
        assert limit is not None
        return limit.rate, limit.per, limit.bucket_size, limit.max_wait, limit.key

    assert shape("slow") == (2.0, 1.0, 2, 1.0, "tool")
    assert shape("bursty") == (100.0, 1.0, 5, 1.0, "tool")
    assert shape("both") == (2.0, 1.0, 3, 1.0, "tool")
    assert shape("patient") == (100.0, 1.0, 200, 5.0, "tool")
    assert shape("other") == (100.0, 1.0, 200, 1.0, "tool")


def test_a_rules_rate_limit_takes_its_rate_from_the_upstream_or_states_it() -> None:
    alone = load_config("upstreams: [{name: a, url: 'http://h/mcp', rules: [{match: {tool: x}, rate_limit: {rate: 5}}]}]", {})
    limit = PolicyResolver(alone.upstreams[0]).resolve("tools/call", "x").rate_limit
    assert limit is not None and (limit.rate, limit.bucket_size) == (5.0, 5)
    assert PolicyResolver(alone.upstreams[0]).resolve("tools/call", "y").rate_limit is None
    with pytest.raises(ConfigError) as caught:
        load_config("upstreams: [{name: a, url: 'http://h/mcp', rules: [{match: {tool: x}, rate_limit: {burst: 5}}]}]", {})
    assert caught.value.errors == [
        "upstreams[0].rules[0].rate_limit.rate: required: the upstream has no rate_limit to take it from"
    ]
    with pytest.raises(ConfigError) as caught:
        load_config("upstreams: [{name: a, url: 'http://h/mcp', rate_limit: {rate: 3}, rules: [{match: {tool: x}, rate_limit: {rate: null}}]}]", {})
    assert caught.value.errors == [
        "upstreams[0].rules[0].rate_limit: rate: must be a number > 0 (leave it out to keep the upstream's)"
    ]


def test_the_memo_forgets_its_oldest_answer_first_and_a_hit_does_not_renew_it() -> None:
    """First in, first out, as docs/operations.md says: a hit is one lookup and never reorders the map;
    the pair pushed out is resolved again, to the same policy, when it comes back."""
    r = resolver()
    first = r.resolve("tools/call", "search_fast")
    for n in range(RESOLVED_CACHE_SIZE - 1):
        r.resolve("tools/call", f"random-{n}")
    assert r.resolve("tools/call", "search_fast") is first  # a hit, with the memo full
    r.resolve("tools/call", "one-more")
    assert ("tools/call", "search_fast") not in r._memo and ("tools/call", "random-0") in r._memo
    assert r.resolve("tools/call", "search_fast") is first  # rules resolve to the same Policy objects
