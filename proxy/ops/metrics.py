"""Prometheus metrics, on a registry of the proxy's own (tests and several proxies in one process never collide).

Label values that come from clients (method and tool names, and the per-tool breakers named after
them) are bounded: names the upstream listed (its `proxy.mcp.tool_catalog.ToolCatalog`, in `catalogs`)
and the methods MCP defines always have their own label; any other name takes one of
`MAX_LABEL_VALUES` slots of its kind, first come, and once they are taken counts as ``_other``. So a
client inventing names grows neither memory nor the scrape, and cannot take a real tool's label. The
latency histogram, the heaviest series, is labelled by MCP method only (others are ``_other``).
Every other label is the proxy's own (upstream names, outcomes and reasons it defines, failure kinds,
HTTP status classes): a bounded set.
Label children are cached per label tuple: `labels()` is measurably slow on the per-request path.
The three per-request series (requests, latency, in-flight) are plain dicts and ints exported by a
collector at scrape time: prometheus-client's own metric objects take a lock on every update, which
cost about 12 µs per proxied request (measured with `python -m tests.perf`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase

from proxy.policies.base import Attempt, Call
from proxy.redact import redact_text
from proxy.mcp.tool_catalog import MCP_METHODS, ToolCatalog

__all__ = ["MAX_LABEL_VALUES", "OVERFLOW", "ProxyMetrics"]

MAX_LABEL_VALUES: Final = 200
"""Label values of a kind (method, tool, breaker) for names neither listed by their upstream nor MCP's own."""
OVERFLOW: Final = "_other"
"""The label of every name past `MAX_LABEL_VALUES`."""
_HEALTH_LEVELS: Final = {"healthy": 1, "unhealthy": 0, "unknown": -1}
_BREAKER_LEVELS: Final = {"closed": 0, "half-open": 1, "open": 2}
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BUCKET_NAMES: Final = (*(repr(float(b)) for b in _LATENCY_BUCKETS), "+Inf")


class _RequestSeries:
    """Collector for the per-request series, kept as plain counters between scrapes."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, str], int] = {}
        self.histograms: dict[tuple[str, str], list[float]] = {}  # bucket counts..., then the sum
        self.in_flight: dict[str, int] = {}

    def observe(self, upstream: str, method: str, tool: str, outcome: str, seconds: float) -> None:
        key = (upstream, method, tool, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        pair = (upstream, method if method in MCP_METHODS else OVERFLOW)
        series = self.histograms.get(pair)
        if series is None:
            series = self.histograms[pair] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        series[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "mcp_proxy_requests",
            "JSON-RPC requests handled, by upstream, method, tool and outcome.",
            labels=("upstream", "method", "tool", "outcome"),
        )
        for key, count in self.counts.items():
            requests.add_metric(key, count)
        latency = HistogramMetricFamily(
            "mcp_proxy_request_duration_seconds",
            "Time from receiving a request to the end of its answer, by upstream and method.",
            labels=("upstream", "method"),
        )
        for pair, series in self.histograms.items():
            total = 0.0
            buckets: list[tuple[str, float]] = []
            for bound, hits in zip(_BUCKET_NAMES, series[:-1], strict=True):
                total += hits
                buckets.append((bound, total))
            latency.add_metric(pair, buckets, series[-1])
        in_flight = GaugeMetricFamily(
            "mcp_proxy_in_flight_requests", "Requests (and open streams) being handled now, by upstream.", labels=("upstream",)
        )
        for upstream, value in self.in_flight.items():
            in_flight.add_metric((upstream,), value)
        yield requests
        yield latency
        yield in_flight


class _ChildSeries:
    """Collector for stdio children (issue 14), read from each child's supervisor at scrape time: a
    child's state changes off the request path, and a scrape is the only reader."""

    def __init__(self) -> None:
        self.children: dict[str, Callable[[], Mapping[str, Any]]] = {}
        """Each stdio upstream's snapshot function (set by `proxy.runtime.build_runtime`)."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mcp_proxy_stdio_child_up", "1 while the stdio child is running and initialized.", labels=("upstream",))
        restarts = CounterMetricFamily(
            "mcp_proxy_stdio_child_restarts", "Times the stdio child was started again after its first start.", labels=("upstream",)
        )
        uptime = GaugeMetricFamily(
            "mcp_proxy_stdio_child_uptime_seconds", "Seconds since the running stdio child was initialized.", labels=("upstream",)
        )
        in_flight = GaugeMetricFamily(
            "mcp_proxy_stdio_child_in_flight", "Requests in the stdio child's hands now.", labels=("upstream",)
        )
        for upstream, snapshot in self.children.items():
            state = snapshot()
            up.add_metric((upstream,), 1 if state.get("state") == "up" else 0)
            restarts.add_metric((upstream,), int(state.get("restarts") or 0))
            uptime.add_metric((upstream,), float(state.get("uptime_s") or 0.0))
            in_flight.add_metric((upstream,), int(state.get("in_flight") or 0))
        yield up
        yield restarts
        yield uptime
        yield in_flight


class ProxyMetrics:
    """Every metric the proxy exports, and cheap recording helpers for the hot path."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._series = _RequestSeries()
        self.registry.register(self._series)
        self.stdio = _ChildSeries()
        self.registry.register(self.stdio)
        self.upstream_errors = Counter(
            "mcp_proxy_upstream_errors",
            "Failures talking to an upstream, by upstream and kind (the error reason).",
            ("upstream", "kind"),
            registry=self.registry,
        )
        self.rejected = Counter(
            "mcp_proxy_rejected_requests",
            "Requests refused before reaching any upstream, by reason (bad_json, too_large, forbidden_host, ...).",
            ("reason",),
            registry=self.registry,
        )
        self.retries = Counter(
            "mcp_proxy_retries", "Attempts retried, by upstream and the failure that caused them.", ("upstream", "failure"),
            registry=self.registry,
        )
        self.budget_exhausted = Counter(
            "mcp_proxy_retry_budget_exhausted", "Retries refused by the retry budget, by upstream.", ("upstream",),
            registry=self.registry,
        )
        self.breaker_state = Gauge(
            "mcp_proxy_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", ("upstream", "breaker"),
            registry=self.registry,
        )
        self.breaker_transitions = Counter(
            "mcp_proxy_breaker_transitions", "Circuit breaker state changes, by upstream, breaker and new state.",
            ("upstream", "breaker", "state"), registry=self.registry,
        )
        self.policy_rejections = Counter(
            "mcp_proxy_policy_rejections", "Calls answered by a policy without the upstream (rate_limited, circuit_open).",
            ("upstream", "reason"), registry=self.registry,
        )
        self.cache_served = Counter(
            "mcp_proxy_cache_served", "Answers served from the cache, by upstream and status (hit, stale).",
            ("upstream", "status"), registry=self.registry,
        )
        self.reloads = Counter(
            "mcp_proxy_config_reloads", "Config reload attempts, by result (applied, rejected).", ("result",),
            registry=self.registry,
        )
        self.health = Gauge(
            "mcp_proxy_upstream_health", "Upstream health: 1 healthy, 0 unhealthy, -1 not known yet.", ("upstream",),
            registry=self.registry,
        )
        self.sessions = Gauge(
            "mcp_proxy_sessions", "Legacy sessions the proxy keeps for recovery, by upstream.", ("upstream",),
            registry=self.registry,
        )
        self.session_recoveries = Counter(
            "mcp_proxy_session_recoveries",
            "Lost legacy sessions, by upstream and what became of them (recovered, failed, off, unknown_session).",
            ("upstream", "outcome"), registry=self.registry,
        )
        self.streams_resumed = Counter(
            "mcp_proxy_streams_resumed", "Upstream streams reopened under an open client stream, by upstream and stream.",
            ("upstream", "stream"), registry=self.registry,
        )
        self._children: dict[tuple[object, ...], MetricWrapperBase] = {}
        self.catalogs: dict[str, ToolCatalog] = {}
        """Each upstream's tool catalog (set by `proxy.runtime.build_runtime`): listed names keep their labels."""
        self._seen: dict[str, dict[str, str]] = {"method": {}, "tool": {}, "breaker": {}}
        """Per kind, each client-chosen name given a label of its own, and that label (redacted: a client
        that puts a credential in a name must not see it on /metrics)."""

    def _child(self, metric: MetricWrapperBase, *labels: str) -> MetricWrapperBase:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _real(self, upstream: str | None, name: str) -> bool:
        """A method MCP defines, or a tool `upstream` listed: a name that always has its own label."""
        if name in MCP_METHODS:
            return True
        catalog = self.catalogs.get(upstream) if upstream is not None else None
        return catalog is not None and catalog.has(name)

    def bounded(self, kind: str, value: str | None, upstream: str | None = None) -> str:
        """The label for a client-chosen `value`: itself when it is real (`_real`) or while fewer than
        `MAX_LABEL_VALUES` other names of its kind were seen, else ``_other``."""
        if not value:
            return ""
        seen = self._seen[kind]
        label = seen.get(value)
        if label is not None:
            return label
        if self._real(upstream, value):
            return value
        if len(seen) < MAX_LABEL_VALUES:
            label = seen[value] = redact_text(value)
            return label
        return OVERFLOW

    def observe(self, upstream: str, method: str, tool: str | None, outcome: str, seconds: float) -> None:
        """Record one finished request."""
        labels = self.bounded("method", method), self.bounded("tool", tool, upstream)
        self._series.observe(upstream, *labels, outcome, seconds)

    def _breaker_label(self, upstream: str, breaker: str) -> str:
        """A per-tool breaker is named ``upstream/tool`` (or ``upstream/method``): bounded like a tool."""
        if breaker == upstream:
            return breaker
        return f"{upstream}/{self.bounded('breaker', breaker.removeprefix(f'{upstream}/'), upstream)}"

    def enter(self, upstream: str) -> None:
        """A request to `upstream` started (the in-flight gauge)."""
        in_flight = self._series.in_flight
        in_flight[upstream] = in_flight.get(upstream, 0) + 1

    def leave(self, upstream: str) -> None:
        self._series.in_flight[upstream] -= 1

    def upstream_error(self, upstream: str, kind: str) -> None:
        self._child(self.upstream_errors, upstream, kind).inc()  # type: ignore[attr-defined]

    def reject(self, reason: str) -> None:
        self._child(self.rejected, reason).inc()  # type: ignore[attr-defined]

    def policy_event(self, kind: str, about: Call | Attempt | None, **fields: Any) -> None:
        """`Observer` for the policy stages: each reported moment moves its metric."""
        call = about.call if isinstance(about, Attempt) else about
        upstream = call.upstream if call is not None else str(fields.get("upstream", ""))
        if kind == "retry":
            self._child(self.retries, upstream, str(fields.get("failure", ""))).inc()  # type: ignore[attr-defined]
        elif kind == "retry_budget_exhausted":
            self._child(self.budget_exhausted, upstream).inc()  # type: ignore[attr-defined]
        elif kind == "breaker_state":
            breaker, state = self._breaker_label(upstream, str(fields["breaker"])), str(fields["new"])
            if not breaker.endswith(f"/{OVERFLOW}"):  # one gauge for many breakers would say nothing true
                self._child(self.breaker_state, upstream, breaker).set(_BREAKER_LEVELS.get(state, 0))  # type: ignore[attr-defined]
            self._child(self.breaker_transitions, upstream, breaker, state).inc()  # type: ignore[attr-defined]
        elif kind in ("rate_limited", "circuit_open"):
            self._child(self.policy_rejections, upstream, kind).inc()  # type: ignore[attr-defined]
        elif kind == "config_reloaded":
            self._child(self.reloads, "applied").inc()  # type: ignore[attr-defined]
        elif kind == "config_rejected":
            self._child(self.reloads, "rejected").inc()  # type: ignore[attr-defined]
        elif kind == "health_changed":
            self.set_health(upstream, str(fields.get("new")))
        elif kind == "session_recovered":
            self._child(self.session_recoveries, upstream, "recovered").inc()  # type: ignore[attr-defined]
        elif kind == "session_lost" and fields.get("recovery") != "recovering":
            self._child(self.session_recoveries, upstream, str(fields.get("recovery"))).inc()  # type: ignore[attr-defined]
        elif kind == "stream_resumed":
            self._child(self.streams_resumed, upstream, str(fields.get("stream"))).inc()  # type: ignore[attr-defined]
        elif kind == "fallback_served":
            self._child(self.cache_served, upstream, str(fields.get("status", "stale"))).inc()  # type: ignore[attr-defined]

    def set_health(self, upstream: str, state: str) -> None:
        """Export an upstream's health state (also called when its health starts, as unknown)."""
        self._child(self.health, upstream).set(_HEALTH_LEVELS.get(state, -1))  # type: ignore[attr-defined]

    def set_sessions(self, upstream: str, count: int) -> None:
        """Export how many legacy sessions the proxy keeps for `upstream`."""
        self._child(self.sessions, upstream).set(count)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        """The text exposition format, for /metrics."""
        return generate_latest(self.registry)
