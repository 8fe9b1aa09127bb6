"""Config sections for operations: health checks, readiness, hot reload, events and the analyzer.

Split from `proxy.config.model` (which holds the listeners, the upstreams and loading) to keep each module
small; `proxy.config.model` re-exports every name, so callers import from there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from proxy.config.units import ByteSize, ConfigModel, Duration

__all__ = [
    "ActiveHealthConfig",
    "AnalyzerConfig",
    "AutoApplyConfig",
    "BoundConfig",
    "EventFileConfig",
    "EventsConfig",
    "FixturesConfig",
    "HealthConfig",
    "PassiveHealthConfig",
    "ReadinessConfig",
    "ReloadConfig",
    "ShadowConfig",
]


class ActiveHealthConfig(ConfigModel):
    """MCP-level probes over POST: `server/discover` (modern) or `ping` on a health session (legacy)."""

    enabled: bool = Field(True, description="Probe the upstream on an interval.")
    interval: Duration = Field(10.0, gt=0, description="Time between probes.")
    unhealthy_interval: Duration = Field(
        1.0,
        gt=0,
        description="Time between probes while the last one failed or the upstream's breaker is open: a restarted "
        "upstream is seen back (and its breaker half-opened) within about this long.",
    )
    jitter: float = Field(0.1, ge=0, le=1, description="Each interval varies randomly by up to this fraction.")
    timeout: Duration = Field(2.0, gt=0, description="A probe that takes longer fails.")
    healthy_threshold: int = Field(2, ge=1, description="Consecutive successes that make an unhealthy upstream healthy.")
    unhealthy_threshold: int = Field(3, ge=1, description="Consecutive failures that make a healthy upstream unhealthy.")
    protocol: Literal["auto", "modern", "legacy"] = Field(
        "auto", description="auto: server/discover, falling back to a legacy ping session when it is not supported."
    )


class PassiveHealthConfig(ConfigModel):
    """Outlier detection from real traffic, through the failure classifier."""

    enabled: bool = Field(
        True, description="Let real calls' transport failures (no connection, a broken one) mark the upstream unhealthy."
    )
    consecutive_failures: int = Field(5, ge=1, description="Consecutive transport failures of real calls that do.")


class HealthConfig(ConfigModel):
    active: ActiveHealthConfig = Field(default_factory=ActiveHealthConfig)  # type: ignore[arg-type]
    passive: PassiveHealthConfig = Field(default_factory=PassiveHealthConfig)  # type: ignore[arg-type]


class ReadinessConfig(ConfigModel):
    """What /readyz requires besides a loaded config and not draining."""

    require_healthy_upstream: bool = Field(
        True, description="Ready only while at least one upstream is healthy (probed, or not yet failing)."
    )


class ReloadConfig(ConfigModel):
    """Hot reload of the config file (also on SIGHUP and POST /reload on the admin port)."""

    watch: bool = Field(True, description="Watch the file's directory (survives the Kubernetes ConfigMap symlink swap).")
    interval: Duration = Field(1.0, gt=0, description="How often the file's content hash is compared (the polling fallback).")


class EventFileConfig(ConfigModel):
    """An optional JSON-lines file of every event, rotated by size."""

    path: str | None = Field(None, description="File to append events to (one JSON object per line); unset: no file.")
    max_bytes: ByteSize = Field(10 * 1024**2, description="Rotate when the file reaches this size.")
    backups: int = Field(3, ge=0, le=100, description="Rotated files kept (FILE.1 … FILE.N).")


class FixturesConfig(ConfigModel):
    """Failing exchanges saved (redacted) as regression fixtures, for `mcp-resilience-proxy replay`."""

    dir: str | None = Field(None, description="Directory for the fixture files; unset: none are saved.")
    per_signature: int = Field(5, ge=1, description="Fixtures kept per failure signature.")


class EventsConfig(ConfigModel):
    """Failure events: every failure-relevant moment as one structured, versioned JSON object."""

    enabled: bool = Field(True, description="Produce events (the analyzer reads nothing else).")
    buffer: int = Field(10_000, ge=100, description="Recent events kept in memory for /events and the analyzer.")
    subscriber_queue: int = Field(
        1000, ge=10, description="Events a slow /events consumer may lag behind before its oldest are dropped."
    )
    log: bool = Field(True, description="Also write each event as a structlog JSON line.")
    include_params: bool = Field(
        False, description="Put the call's params (secrets redacted) in events; default: only a hash of them."
    )
    summary_interval: Duration = Field(
        10.0, gt=0, description="Period of the call_ok summaries (counts and latency histograms per tool)."
    )
    observe_timeouts: Duration = Field(
        10.0,
        ge=0,
        description="After a per-try timeout of an attempt that reached the upstream (any call, writes included: "
        "they run upstream anyway), keep waiting this long in the background (the answer is never delivered, "
        "the call never retried for it) to record when it would have arrived; at most a quarter of the upstream's "
        "pool and one per client watched at once; 0 turns it off.",
    )
    file: EventFileConfig = Field(default_factory=EventFileConfig)  # type: ignore[arg-type]
    fixtures: FixturesConfig = Field(default_factory=FixturesConfig)  # type: ignore[arg-type]


class BoundConfig(ConfigModel):
    """The range an automatic change may move a value within (durations or plain numbers)."""

    min: Duration = Field(..., description="Lowest value auto-apply may set.")
    max: Duration = Field(..., description="Highest value auto-apply may set.")

    @model_validator(mode="after")
    def _ordered(self) -> BoundConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self


class AutoApplyConfig(ConfigModel):
    """Off by default: apply proposals by themselves, only inside declared bounds, rolled back if worse."""

    enabled: bool = Field(False, description="Apply proposals without an operator (needs bounds).")
    bounds: dict[str, BoundConfig] = Field(
        default_factory=dict,
        description="Policy keys auto-apply may change, with their ranges, e.g. {timeouts.per_try: {min: 1s, max: 30s}}. "
        "A proposal touching any other key, or going out of range, waits for an operator.",
    )
    verify_after: Duration = Field(
        60.0, gt=0, description="After applying, compare the error rate of this long with the one before; worse rolls back."
    )
    min_calls: int = Field(
        20, ge=1, description="Calls needed in each window for a kept change to count as verified (a change that "
        "looks worse is rolled back on any number of calls)."
    )
    shadow: bool = Field(
        False,
        description="Run a proposal within bounds as a shadow trial (analyzer.shadow) first, and apply it only when "
        "the trial promotes it; then verify_after still applies. Off: applied at once, as before.",
    )


MAX_TRIAL_S = 24 * 3600.0
"""The longest shadow trial: its evidence is the proxy's event ring, which a day of traffic outgrows anyway."""


class ShadowConfig(ConfigModel):
    """Shadow trials: a candidate policy counted next to the live one before it is enforced."""

    duration: Duration = Field(
        300.0, gt=0, le=MAX_TRIAL_S, description="How long a trial runs when its request names no duration (at most 24h)."
    )
    tolerance: float = Field(
        0.2, ge=0, le=1,
        description="How far (a share of the errors) the measured cut in client-visible errors may fall short of the "
        "proposal's estimate and still promote it.",
    )
    min_calls: int = Field(20, ge=1, description="Calls a trial must see to reach a verdict; fewer: inconclusive.")


class AnalyzerConfig(ConfigModel):
    """The analyzer running inside the proxy, serving its proposals at the admin endpoint /proposals."""

    enabled: bool = Field(False, description="Run the analyzer in the proxy (needs serve --config FILE).")
    window: Duration = Field(300.0, gt=0, description="Events considered: the last this long.")
    interval: Duration = Field(30.0, gt=0, description="How often the proposals are recomputed.")
    auto_apply: AutoApplyConfig = Field(default_factory=AutoApplyConfig)  # type: ignore[arg-type]
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)  # type: ignore[arg-type]
