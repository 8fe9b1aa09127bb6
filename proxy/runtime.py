"""Everything derived from one config, behind one reference that is swapped atomically.

A request reads `RuntimeRef.current` once, when it starts, and keeps that `Runtime` to its end: a
reload never changes the policies of a call in flight. Upstream pools are owned by the `Runtime`
that created them and handed over to a successor whose upstream config is unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from proxy.annotations import ToolAnnotations
from proxy.config import ProxyConfig, UpstreamConfig
from proxy.headers import HostPolicy
from proxy.metrics import ProxyMetrics
from proxy.pipeline import build_pipeline
from proxy.policies.base import Clock, Handler, MonotonicClock, Observer, Stage
from proxy.policies.breaker import BreakerStage
from proxy.policies.fallback import CacheStage
from proxy.policies.ratelimit import RateLimitStage
from proxy.policies.resolve import PolicyResolver
from proxy.policies.retry import RetryStage
from proxy.policies.timeout import TimeoutStage
from proxy.transport import AiohttpUpstream

__all__ = ["Route", "Runtime", "RuntimeRef", "build_runtime", "config_hash"]


@dataclass(frozen=True, slots=True)
class Route:
    """One listener path: the upstream behind it, its policies, and the composed pipeline in front of it."""

    upstream: AiohttpUpstream
    pipeline: Handler
    resolver: PolicyResolver
    annotations: ToolAnnotations
    trust_annotations: bool
    stages: dict[str, Stage]


@dataclass(frozen=True, slots=True)
class Runtime:
    """The live state built from one validated `ProxyConfig`."""

    config: ProxyConfig
    routes: dict[str, Route]
    hosts: HostPolicy
    metrics: ProxyMetrics
    config_hash: str
    shared: SharedStages

    @property
    def upstreams(self) -> list[AiohttpUpstream]:
        return [route.upstream for route in self.routes.values()]


class RuntimeRef:
    """The single mutable reference to the current `Runtime`."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime


def config_hash(config: ProxyConfig) -> str:
    """A short digest of the effective config (after defaults), shown in /status and logs."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]


def _configures(upstream: UpstreamConfig, section: str) -> bool:
    """True when the upstream or any of its rules turns `section` (rate_limit, cache) on."""
    return getattr(upstream, section) is not None or any(getattr(rule, section) is not None for rule in upstream.rules)


@dataclass(frozen=True, slots=True)
class SharedStages:
    """Stage instances that serve every upstream (a `global` rate-limit bucket spans upstreams)."""

    rate_limit: RateLimitStage
    cache: CacheStage


def build_stages(upstream: UpstreamConfig, clock: Clock, observer: Observer, shared: SharedStages) -> dict[str, Stage]:
    """The policy stages one upstream needs: retry, breaker and timeout always; rate limit and cache
    only when the upstream or one of its rules configures them (an unused stage costs nothing)."""
    stages: dict[str, Stage] = {}
    if _configures(upstream, "cache"):
        stages["fallback"] = shared.cache
    if _configures(upstream, "rate_limit"):
        stages["rate_limit"] = shared.rate_limit
    stages["retry"] = RetryStage(clock, observer)
    stages["breaker"] = BreakerStage(upstream.name, clock, observer)
    stages["timeout"] = TimeoutStage(clock)
    return stages


def build_runtime(config: ProxyConfig, metrics: ProxyMetrics, clock: Clock | None = None) -> Runtime:
    """Build routes and pipelines for `config`. Pools are opened later, by `ProxyServer.start`."""
    clock = clock or MonotonicClock()
    shared = SharedStages(RateLimitStage(metrics), CacheStage(clock, observer=metrics))
    routes: dict[str, Route] = {}
    for upstream_config in config.upstreams:
        upstream = AiohttpUpstream(upstream_config, config.limits)
        stages = build_stages(upstream_config, clock, metrics, shared)
        routes[upstream_config.path] = Route(
            upstream=upstream,
            pipeline=build_pipeline(upstream.send, stages),
            resolver=PolicyResolver(upstream_config),
            annotations=ToolAnnotations(),
            trust_annotations=upstream_config.trust_annotations,
            stages=stages,
        )
    hosts = HostPolicy(config.security.allowed_hosts, config.security.allowed_origins)
    return Runtime(config, routes, hosts, metrics, config_hash(config), shared)
