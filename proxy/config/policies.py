"""The resilience policy sections of an upstream, and the rules that override them per method and tool.

An upstream declares its defaults (``timeouts``, ``retry``, ``breaker``, ``app_breaker``, ``rate_limit``, ``cache``);
each entry of ``rules`` matches calls by ``method`` and ``tool`` (shell-style globs) and overrides only
the keys it sets: ``{match: {tool: search}, retry: {max_attempts: 5}}`` keeps the upstream's backoff
and budget. The most specific matching rule wins (an exact tool beats a tool glob beats no tool; then
the same for the method; then the earlier rule) and is resolved once per distinct (method, tool).
``rate_limit``, ``cache`` and ``app_breaker`` are off unless set; ``rate_limit: null`` (likewise the
others) in a rule turns them off for the calls it matches. One key is not merged on its own: a rule's
``rate_limit`` that sets ``rate`` and not ``burst`` gets its own rate's default burst (`RateLimitOverride`).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import Field, model_validator

from proxy.config.units import ByteSize, ConfigModel, Duration

__all__ = [
    "AppBreakerConfig",
    "BackoffConfig",
    "BreakerConfig",
    "BudgetConfig",
    "CacheConfig",
    "MatchConfig",
    "RateLimitConfig",
    "RateLimitOverride",
    "RetryConfig",
    "RetryOn",
    "RuleConfig",
    "TimeoutsConfig",
    "overlay",
]

RetryOn = Literal["connect_error", "timeout", "http_5xx", "http_429", "server_error", "session_expired"]
DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("connect_error", "timeout", "http_5xx", "http_429")
"""What a retry can fix. `server_error` (a JSON-RPC -32603 or -32000…-32099 answer) is opt-in: the
server answered, usually about the request, and asking again mostly gets the same answer."""


class TimeoutsConfig(ConfigModel):
    """How long the proxy waits on an upstream.

    The defaults never cut a call a client talking to the server directly would still be waiting for:
    the official Python SDK reads an answer with a 300 s timeout (the TypeScript SDK gives up after 60 s),
    so `per_try` is 5 minutes, and `total` twice that, room for one more attempt of a timed-out
    idempotent call. Shorter limits, which fail hung calls sooner, are a choice per tool (`rules`).
    """

    connect: Duration = Field(
        5.0, gt=0, description="The wait for a free pooled connection, and then the TCP connect: each gets this long."
    )
    per_try: Duration = Field(
        300.0, gt=0, description="One attempt: until the response headers and, for a JSON answer, the whole body."
    )
    total: Duration = Field(
        600.0, gt=0, description="A call's deadline over every attempt and backoff, until its first byte reaches the client."
    )
    stream_idle: Duration = Field(
        300.0, gt=0, description="Longest silence inside an SSE answer to a request before it counts as broken."
    )


class BackoffConfig(ConfigModel):
    """Exponential backoff with full jitter: attempt n sleeps uniformly in [0, min(max, base * 2**(n-1))]."""

    base: Duration = Field(0.1, gt=0, description="First backoff ceiling.")
    max: Duration = Field(2.0, gt=0, description="Largest backoff ceiling.")
    max_retry_after: Duration = Field(
        10.0, ge=0, description="Largest upstream Retry-After the proxy waits for; a longer one ends the retries."
    )


class BudgetConfig(ConfigModel):
    """Retries may be at most `ratio` of the requests over `window`, plus `min_per_second` (a floor for quiet times)."""

    ratio: float = Field(0.2, ge=0, le=10, description="Retries allowed per request over the window (0.2 = 20%).")
    min_per_second: float = Field(5.0, ge=0, description="Retries always allowed per second, whatever the ratio.")
    window: Duration = Field(10.0, gt=0, description="The sliding window the ratio is measured over.")


class RetryConfig(ConfigModel):
    """When and how a failed attempt is tried again. Non-idempotent calls retry only if never sent."""

    max_attempts: int = Field(3, ge=1, le=20, description="Attempts in all, the first included; 1 disables retry.")
    backoff: BackoffConfig = Field(default_factory=BackoffConfig)  # type: ignore[arg-type]
    retry_on: tuple[RetryOn, ...] = Field(
        DEFAULT_RETRY_ON,
        description="Failure kinds that are retried (server_error, JSON-RPC errors the server sent, only when listed; "
        "the same error twice in a row ends the retries).",
    )
    budget: BudgetConfig = Field(default_factory=BudgetConfig)  # type: ignore[arg-type]


class BreakerConfig(ConfigModel):
    """A circuit breaker: consecutive failures (`failure_threshold`) or a failure rate over a window."""

    enabled: bool = Field(True, description="false: no breaker for these calls.")
    scope: Literal["upstream", "tool"] = Field("upstream", description="One breaker per upstream, or one per tool.")
    failure_threshold: int | None = Field(
        None,
        ge=1,
        description="Consecutive upstream failures (no connection, timeouts, 502/503/504; never an answer the "
        "server gave) that open it (default 5 when failure_rate is unset).",
    )
    failure_rate: float | None = Field(
        None, gt=0, le=1, description="Share of failed calls over `window` that opens it (needs `min_calls`)."
    )
    window: Duration = Field(30.0, gt=0, description="With failure_rate: the sliding window of calls.")
    min_calls: int = Field(10, ge=1, description="With failure_rate: calls in the window before the rate counts.")
    reset_timeout: Duration = Field(30.0, gt=0, description="How long it stays open before trial calls.")
    half_open_max_calls: int = Field(
        1,
        ge=1,
        description="Trial calls admitted while half-open, each from a different client; the first success closes "
        "it, and it opens again when they all failed.",
    )

    @model_validator(mode="after")
    def _one_trigger(self) -> BreakerConfig:
        if self.failure_threshold is not None and self.failure_rate is not None:
            raise ValueError("set failure_threshold or failure_rate, not both")
        return self

    @property
    def consecutive_threshold(self) -> int | None:
        """The consecutive-failure trigger in force (5 by default), or None in failure-rate mode."""
        if self.failure_rate is not None:
            return None
        return self.failure_threshold or 5

    @property
    def rate_trigger(self) -> float | None:
        """The failure-rate trigger in force, or None in consecutive mode."""
        return self.failure_rate

    @property
    def failing_clients(self) -> int:
        """An upstream failure is the upstream's, whoever met it: one client's are enough."""
        return 1


AppErrorKind = Literal["is_error", "timeout"]


class AppBreakerConfig(ConfigModel):
    """A breaker on application errors, one per tool (per method outside tools/call); off unless set.

    The upstream breaker never counts what the server answered. Where a tool's own failures should
    shed load (a tool that errors for everybody), name the answers that count here: by default a
    failure *rate* over a window with a minimum volume, and failures from at least two clients, so one
    client's bad calls never trip it; half-open trials spread over distinct clients.
    """

    errors: tuple[AppErrorKind | int, ...] = Field(
        ("is_error",),
        min_length=1,
        description="What counts as the tool failing: is_error (a result with isError: true), timeout, and "
        "JSON-RPC error codes the server answers with (e.g. -32603).",
    )
    min_clients: int = Field(
        2,
        ge=1,
        description="Distinct clients whose calls must have failed before it opens: one client's bad arguments "
        "never close a tool for everybody (1: any failures count).",
    )
    failure_threshold: int | None = Field(
        None, ge=1, description="Consecutive failures that open it (instead of failure_rate)."
    )
    failure_rate: float | None = Field(
        None, gt=0, le=1, description="Share of failed calls over `window` that opens it (default 0.5 unless "
        "failure_threshold is set).",
    )
    window: Duration = Field(60.0, gt=0, description="The sliding window of calls for failure_rate.")
    min_calls: int = Field(20, ge=1, description="Calls in the window before the rate counts.")
    reset_timeout: Duration = Field(30.0, gt=0, description="How long it stays open before trial calls.")
    half_open_max_calls: int = Field(
        3, ge=1, description="Trial calls while half-open, each from a different client; the first success closes it."
    )

    @model_validator(mode="after")
    def _one_trigger(self) -> AppBreakerConfig:
        if self.failure_threshold is not None and self.failure_rate is not None:
            raise ValueError("set failure_threshold or failure_rate, not both")
        return self

    @property
    def consecutive_threshold(self) -> int | None:
        """The consecutive-failure trigger, or None in failure-rate mode (the default)."""
        return self.failure_threshold

    @property
    def failing_clients(self) -> int:
        """Distinct clients among the failures that trip it."""
        return self.min_clients

    @property
    def rate_trigger(self) -> float | None:
        """The failure-rate trigger in force: 0.5 unless a consecutive threshold is set instead."""
        if self.failure_threshold is not None:
            return None
        return self.failure_rate if self.failure_rate is not None else 0.5


class _RateLimitKeys(ConfigModel):
    """The keys of a `rate_limit` section; `rate` is required where the section stands alone."""

    rate: float | None = Field(None, gt=0, description="Calls allowed per `per`.")
    per: Duration = Field(1.0, gt=0, description="The period of `rate`.")
    burst: int | None = Field(None, ge=1, description="Bucket size: calls that may arrive at once (default: rate, at least 1).")
    key: Literal["client", "tool", "upstream", "global"] = Field(
        "client", description="One bucket per client identity, per tool, per upstream, or one for everything."
    )
    max_wait: Duration = Field(0.0, ge=0, description="How long a call may queue for a token before it is refused.")
    max_keys: int = Field(10_000, ge=1, description="Buckets kept; the least recently used go first.")


class RateLimitConfig(_RateLimitKeys):
    """A token bucket per key: `burst` calls at once, refilled at `rate` per `per`."""

    rate: float = Field(..., gt=0, description="Calls allowed per `per`.")

    @property
    def bucket_size(self) -> int:
        return self.burst if self.burst is not None else max(1, int(self.rate))


class RateLimitOverride(_RateLimitKeys):
    """A rule's `rate_limit`: the upstream's with the keys set here replaced, like every rule section.

    `rate` may be left out when the upstream has a `rate_limit` (a rule that only lets calls wait longer,
    or only sets another `burst`). `burst` belongs with `rate`: a rule that sets `rate` and not `burst`
    gets the default burst of its own rate, since an upstream's burst was sized for the upstream's rate
    (a burst of 200 inherited by a rule of 2/s would let 200 through at once).
    """

    @model_validator(mode="before")
    @classmethod
    def _rate_left_out_not_null(cls, data: Any) -> Any:
        if isinstance(data, dict) and "rate" in data and data["rate"] is None:
            raise ValueError("rate: must be a number > 0 (leave it out to keep the upstream's)")
        return data

    def over(self, base: RateLimitConfig | None) -> RateLimitConfig:
        """The effective limit: `base` (the upstream's, or None) with this rule's keys applied."""
        updates: dict[str, Any] = {name: getattr(self, name) for name in self.model_fields_set}
        if "rate" in updates and "burst" not in updates:
            updates["burst"] = None  # the default burst of the rule's own rate
        if base is None:
            if updates.get("rate") is None:  # `ProxyConfig` rejects this file; never reached from a loaded one
                raise ValueError("rate_limit.rate: required: the upstream has no rate_limit to take it from")
            return RateLimitConfig(**updates)
        return base.model_copy(update=updates)


class CacheConfig(ConfigModel):
    """Answers of idempotent calls kept to serve again: fresh hits (`ttl` mode) or only on failure (`fallback`)."""

    mode: Literal["fallback", "ttl"] = Field(
        "fallback", description="fallback: serve a stored answer only when the upstream fails; ttl: also serve fresh hits."
    )
    ttl: Duration = Field(30.0, ge=0, description="How long an answer is fresh (capped by a modern answer's ttlMs).")
    max_stale: Duration = Field(300.0, ge=0, description="How long past fresh an answer may still stand in for a failure.")
    max_entries: int = Field(1000, ge=1, description="Answers kept at most.")
    max_bytes: ByteSize = Field(32 * 1024**2, description="Bytes of answers kept at most.")
    scope: Literal["private", "shared"] = Field(
        "private", description="private: one cache per credential scope (every forwarded header that may identify the client); shared: all clients share answers."
    )


class MatchConfig(ConfigModel):
    """Which calls a rule applies to: shell-style globs on the method and, for tools/call, the tool name."""

    method: str = Field("*", min_length=1, description="JSON-RPC method glob, e.g. tools/call or resources/*.")
    tool: str | None = Field(None, min_length=1, description="Tool name glob (implies method tools/call).")


class RuleConfig(ConfigModel):
    """Overrides for the calls `match` selects; only the keys set here replace the upstream's."""

    match: MatchConfig
    timeouts: TimeoutsConfig | None = None
    retry: RetryConfig | None = None
    breaker: BreakerConfig | None = None
    app_breaker: AppBreakerConfig | None = None
    rate_limit: RateLimitOverride | None = None
    cache: CacheConfig | None = None
    idempotent: bool | None = Field(
        None, description="Declare the matched tools idempotent (retry them) or not (never, whatever annotations say)."
    )

    @model_validator(mode="after")
    def _pool_settings_stay_on_the_upstream(self) -> RuleConfig:
        if self.timeouts is not None and "connect" in self.timeouts.model_fields_set:
            raise ValueError("timeouts.connect belongs to the upstream's connection pool, not to a rule")
        return self


M = TypeVar("M", bound=ConfigModel)


def overlay(base: M | None, override: M | None, explicit: bool) -> M | None:
    """`base` with the fields `override` set explicitly replaced (recursively); `explicit` = the key was present."""
    if not explicit:
        return base
    if override is None or base is None:
        return override
    updates: dict[str, Any] = {}
    for name in override.model_fields_set:
        value = getattr(override, name)
        current = getattr(base, name)
        if isinstance(value, ConfigModel) and isinstance(current, ConfigModel):
            updates[name] = overlay(current, value, True)
        else:
            updates[name] = value
    return base.model_copy(update=updates)
