"""A stdio upstream: its child behind a gateway, reached through the proxy's own HTTP client.

`StdioUpstream` is an `HttpUpstream` whose pool connects to the Unix socket of the child's gateway
(`proxy.upstream.stdio.gateway`) instead of a host and port: the rest of the proxy cannot tell a stdio
server from an HTTP one, so every policy, the session keeper, resumed streams and health probes apply to
it unchanged. Starting it starts the child; closing it stops the child (stdin closed, SIGTERM, SIGKILL).

A reload that changes anything the child is made from (its command, environment, directory, stderr,
isolation or `child` settings) starts a new child beside the old one; the old one stops once the calls
begun on it have had `drain_timeout` to finish, as a replaced HTTP pool does.
"""

from __future__ import annotations

from typing import Any

from proxy.config.model import LimitsConfig, UpstreamConfig
from proxy.upstream.stdio.child import ChildSpec, child_environment
from proxy.policies.base import Observer
from proxy.upstream.stdio.gateway import Gateway
from proxy.upstream.stdio.supervisor import Timing
from proxy.upstream.transport import HttpUpstream

__all__ = ["StdioUpstream", "child_settings", "transport_for"]

_BODY_SLACK = 64 * 1024
"""What the gateway accepts beyond `limits.max_body_bytes`: the proxy has bounded the body already; the
gateway's own bound only keeps a bug from costing memory."""


def child_settings(config: UpstreamConfig) -> tuple[Any, ...]:
    """Everything a child is made from: two configs with equal settings can share one child."""
    return (
        config.command,
        tuple(sorted(config.env.items())),
        config.cwd,
        config.stderr,
        config.isolation,
        config.child,
    )


def spec_of(config: UpstreamConfig) -> ChildSpec:
    assert config.command is not None
    return ChildSpec(
        name=config.name,
        argv=tuple(config.command),
        env=child_environment(config.env),
        cwd=config.cwd,
        stderr=config.stderr,
        secrets=tuple(config.env.values()),
    )


def timing_of(config: UpstreamConfig) -> Timing:
    child = config.child
    return Timing(
        start_timeout=child.start_timeout,
        stop_grace=child.stop_grace,
        backoff_base=child.restart_backoff.base,
        backoff_max=child.restart_backoff.max,
    )


class StdioUpstream(HttpUpstream):
    """One stdio child as an upstream."""

    def __init__(self, config: UpstreamConfig, limits: LimitsConfig, observer: Observer | None = None) -> None:
        super().__init__(config, limits, url=f"http://stdio.{config.name}.invalid/mcp")
        self.gateway = Gateway(
            spec_of(config),
            timing_of(config),
            max_body=limits.max_body_bytes + _BODY_SLACK,
            idle_timeout=config.sessions.idle_timeout,
            isolation=config.isolation,
            max_children=config.child.max_children,
            child_idle_timeout=config.child.idle_timeout,
            observer=observer,
            connections=config.pool.max_connections,
        )
        self._settings = child_settings(config)

    async def start(self) -> None:
        await self.gateway.start()
        self._origin.unix_socket = self.gateway.socket_path
        await super().start()

    def same_connection(self, config: UpstreamConfig, limits: LimitsConfig) -> bool:
        return child_settings(config) == self._settings and super().same_connection(config, limits)

    def retiring(self) -> None:
        """A reload replaced this upstream: its child's open streams move to the new one (`Gateway.cut_streams`)."""
        self.gateway.cut_streams("the stdio server was replaced by a reload")

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.gateway.stop()


def transport_for(config: UpstreamConfig, limits: LimitsConfig, observer: Observer | None = None) -> HttpUpstream:
    """The transport an upstream's config asks for: a child's gateway for `command` (its events to
    `observer`), else the URL's pool."""
    if config.command is not None:
        return StdioUpstream(config, limits, observer)
    return HttpUpstream(config, limits)
