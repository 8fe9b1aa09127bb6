"""Everything derived from one config, behind one reference that is swapped atomically.

A request reads `RuntimeRef.current` once, when it starts, and keeps that `Runtime` to its end: a
reload never changes the policies of a call in flight. What carries state lives in `UpstreamState`
(per upstream name) and `SharedStages` (per proxy), and a reload hands it to the new runtime:

- the connection pool is kept when the upstream's URL, pool and connect settings are unchanged;
  otherwise a new one is opened and the old one is closed once calls in flight had time to finish;
- breakers, retry budgets, rate-limit buckets and cache stores are keyed by their policy's config
  value inside their stage, so a policy that did not change keeps its state and a changed one starts
  fresh, with no bookkeeping here;
- the tool catalog (what the upstream listed, `proxy.mcp.tool_catalog`), health and each client's count
  of open requests survive as long as the upstream keeps its name (and its URL). The catalog is learned
  from every upstream; the retry policy sees it through `Route.annotations`, which believes the hints
  only when the config trusts them. Metrics and events are told each upstream's catalog here
  (`catalogs`), so names the upstream has always keep their own labels, summaries and buffer room.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from proxy.mcp.annotations import ToolAnnotations
from proxy.mcp.tool_catalog import ToolCatalog
from proxy.config.model import LimitsConfig, ProxyConfig, UpstreamConfig
from proxy.policies.fairness import ClientSlots
from proxy.mcp.headers import HostPolicy
from proxy.ops.health import HealthProber, PassiveHealthStage, UpstreamHealth
from proxy.ops.metrics import ProxyMetrics
from proxy.pipeline import Stages, build_pipeline
from proxy.events.recorder import EventRecorder, FanOut
from proxy.policies.base import CallHandler, Clock, Observer
from proxy.policies.breaker import BreakerStage
from proxy.policies.fallback import CacheStage
from proxy.policies.ratelimit import RateLimitStage
from proxy.config.resolve import PolicyResolver
from proxy.policies.retry import RetryStage
from proxy.policies.timeout import TimeoutStage
from proxy.sessions.keeper import UpstreamSessions
from proxy.sessions.stage import SessionStage
from proxy.upstream.transport import HttpUpstream
from proxy.upstream.stdio.upstream import StdioUpstream, transport_for

__all__ = ["Route", "Runtime", "RuntimeRef", "SharedStages", "UpstreamState", "build_runtime", "config_hash"]


@dataclass(frozen=True, slots=True)
class SharedStages:
    """Stage instances that serve every upstream (a `global` rate-limit bucket spans upstreams)."""

    rate_limit: RateLimitStage
    cache: CacheStage


@dataclass(slots=True)
class UpstreamState:
    """What one upstream accumulates while it runs; kept across reloads while the upstream keeps its name."""

    transport: HttpUpstream
    retry: RetryStage
    breaker: BreakerStage
    catalog: ToolCatalog
    """The upstream's tools as it last listed them (trusted or not)."""
    health: UpstreamHealth
    clients: ClientSlots
    """Requests open per client: kept across reloads, so a reload never resets a client's count."""
    sessions: UpstreamSessions
    """The legacy sessions kept for recovery (`proxy.sessions`): kept across reloads, like the clients'."""
    prober: HealthProber | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """One listener path: the upstream behind it, its policies, and the composed pipeline in front of it."""

    state: UpstreamState
    config: UpstreamConfig
    pipeline: CallHandler
    resolver: PolicyResolver
    annotations: ToolAnnotations
    """The catalog as the retry policy sees it: learned from every `tools/list` answer, believed only
    when `trust_annotations` is on (otherwise `safe_to_retry` is always False)."""

    @property
    def upstream(self) -> HttpUpstream:
        return self.state.transport


@dataclass(frozen=True, slots=True)
class Runtime:
    """The live state built from one validated `ProxyConfig`."""

    config: ProxyConfig
    routes: dict[str, Route]
    hosts: HostPolicy
    metrics: ProxyMetrics
    config_hash: str
    shared: SharedStages
    states: dict[str, UpstreamState]
    events: EventRecorder
    observer: Observer
    """Metrics and events together (`FanOut`): what the stages report to, and what the listener reports
    a moment of its own to (a relayed message's lost session, a resumed stream), so both hear it."""

    @property
    def upstreams(self) -> list[HttpUpstream]:
        return [state.transport for state in self.states.values()]


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


def build_stages(
    upstream: UpstreamConfig,
    state: UpstreamState,
    shared: SharedStages,
    clock: Clock,
    observer: Observer,
    observe: float,
) -> Stages:
    """The policy stages one upstream needs: session, retry, breaker and timeout always; rate limit and cache
    only when the upstream or one of its rules configures them (an unused stage costs nothing)."""
    stages: Stages = {}
    if _configures(upstream, "cache"):
        stages["fallback"] = shared.cache
    if _configures(upstream, "rate_limit"):
        stages["rate_limit"] = shared.rate_limit
    stages["session"] = SessionStage(state.sessions, state.transport, observer)
    stages["retry"] = state.retry
    stages["breaker"] = state.breaker
    if upstream.health.passive.enabled:
        stages["passive_health"] = PassiveHealthStage(state.health)
    stages["timeout"] = TimeoutStage(clock, observer, observe, max_observed=upstream.pool.client_share)
    return stages


def _new_health(upstream: UpstreamConfig, clock: Clock, metrics: ProxyMetrics, observer: Observer) -> UpstreamHealth:
    metrics.set_health(upstream.name, "unknown")
    return UpstreamHealth(upstream.name, upstream.health, observer, clock)


def _same_server(before: UpstreamConfig, now: UpstreamConfig) -> bool:
    """Whether a reloaded upstream is still the server it was: the same URL, or the same child command."""
    return before.url == now.url and before.command == now.command


def _state_for(
    upstream: UpstreamConfig,
    limits: LimitsConfig,
    previous: UpstreamState | None,
    clock: Clock,
    metrics: ProxyMetrics,
    observer: Observer,
) -> UpstreamState:
    if previous is None:
        catalog = ToolCatalog()
        return UpstreamState(
            transport=transport_for(upstream, limits, observer),
            retry=RetryStage(clock, observer),
            breaker=BreakerStage(upstream.name, clock, observer, catalog),
            catalog=catalog,
            health=_new_health(upstream, clock, metrics, observer),
            clients=ClientSlots(upstream.name),
            sessions=UpstreamSessions(upstream.name, upstream.sessions, on_count=metrics.set_sessions),
        )
    if not _same_server(previous.transport.config, upstream):
        # Another server now: nothing learned about the old one (breakers, budgets, its tool
        # catalog, health) applies to it.
        return _state_for(upstream, limits, None, clock, metrics, observer)
    transport = previous.transport
    if transport.same_connection(upstream, limits):
        transport.config = upstream
    else:
        transport = transport_for(upstream, limits, observer)
    health = previous.health
    if health.config != upstream.health:
        health = _new_health(upstream, clock, metrics, observer)
    previous.sessions.reconfigure(upstream.sessions)
    return UpstreamState(
        transport, previous.retry, previous.breaker, previous.catalog, health, previous.clients, previous.sessions
    )


def build_runtime(
    config: ProxyConfig, metrics: ProxyMetrics, events: EventRecorder, clock: Clock, previous: Runtime | None = None
) -> Runtime:
    """Build the runtime for `config`, carrying over `previous`'s state where it still applies.

    Every stage reports to metrics and to the event recorder. Pools are opened (and replaced ones
    closed) by the caller: building never does I/O.
    """
    observer = FanOut(metrics, events)
    shared = (
        previous.shared
        if previous is not None
        else SharedStages(RateLimitStage(observer), CacheStage(clock, observer=observer))
    )
    observe = config.events.observe_timeouts if config.events.enabled else 0.0
    routes: dict[str, Route] = {}
    states: dict[str, UpstreamState] = {}
    for upstream in config.upstreams:
        before = previous.states.get(upstream.name) if previous is not None else None
        state = states[upstream.name] = _state_for(upstream, config.limits, before, clock, metrics, observer)
        stages = build_stages(upstream, state, shared, clock, observer, observe)
        pipeline = build_pipeline(state.transport.send, stages)
        annotations = ToolAnnotations(state.catalog, trusted=upstream.trust_annotations)
        routes[upstream.path] = Route(state, upstream, pipeline, PolicyResolver(upstream), annotations)
    # Keyed stage state of policies no rule resolves to any more can go (unchanged ones stay).
    live = [(route.config.name, policy) for route in routes.values() for policy in route.resolver.policies()]
    for route in routes.values():
        policies = route.resolver.policies()
        route.state.breaker.retain({p.breaker for p in policies} | {p.app_breaker for p in policies if p.app_breaker})
    catalogs = {name: state.catalog for name, state in states.items()}
    metrics.catalogs = events.catalogs = catalogs
    metrics.stdio.children = {
        name: state.transport.gateway.snapshot
        for name, state in states.items()
        if isinstance(state.transport, StdioUpstream)
    }
    shared.rate_limit.retain([policy.rate_limit for _, policy in live if policy.rate_limit is not None])
    shared.cache.retain({(name, policy.cache) for name, policy in live if policy.cache is not None})
    hosts = HostPolicy(config.security.allowed_hosts, config.security.allowed_origins)
    return Runtime(config, routes, hosts, metrics, config_hash(config), shared, states, events, observer)
