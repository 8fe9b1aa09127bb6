"""The /status document: what an operator asks first, in one JSON object.

Per upstream: health, breakers, retry budgets; per proxy: rate-limit and cache figures, the config
hash, and the last reload's result (with the path-named errors of a rejected file). The document
passes through `proxy.redact.redact` on its way out (no clipping: it is the proxy's own state), so a
credential can reach it through no field, present or future.
"""

from __future__ import annotations

import time
from typing import Any

from proxy.config.model import safe_url
from proxy.redact import Budget, redact
from proxy.ops.reload import ConfigReloader
from proxy.runtime import Runtime, UpstreamState
from proxy.upstream.stdio.upstream import StdioUpstream

__all__ = ["status_document"]


def _upstream(state: UpstreamState, path: str) -> dict[str, Any]:
    config = state.transport.config
    transport = state.transport
    return {
        "url": safe_url(config.url) if config.url is not None else None,
        **({"stdio": transport.gateway.snapshot()} if isinstance(transport, StdioUpstream) else {}),
        "path": path,
        "health": state.health.snapshot(),
        "breakers": [{"name": b.name, **b.snapshot()} for b in state.breaker.breakers],
        "retry_budgets": [
            {"ratio": b.config.ratio, "allowance": round(b.allowance(), 1), "exhausted": b.exhausted}
            for b in state.retry.budgets
        ],
        "annotated_tools": len(state.catalog),
        "clients_with_open_requests": state.clients.clients,
    }


def status_document(
    runtime: Runtime, reloader: ConfigReloader | None, ready: bool, why: str, draining: bool, started_at: float
) -> dict[str, Any]:
    """The whole document for `runtime` as it is now."""
    paths = {route.config.name: path for path, route in runtime.routes.items()}
    document = {
        "ready": ready,
        "readiness": why,
        "draining": draining,
        "uptime_s": round(time.time() - started_at, 1),
        "config": {
            "hash": runtime.config_hash,
            "path": str(reloader.path) if reloader is not None else None,
            "reloads_applied": reloader.applied if reloader is not None else 0,
            "reloads_rejected": reloader.rejected if reloader is not None else 0,
            "last_reload": reloader.last.as_dict() if reloader is not None and reloader.last is not None else None,
        },
        "upstreams": {name: _upstream(state, paths[name]) for name, state in runtime.states.items()},
        "rate_limit": runtime.shared.rate_limit.stats(),
        "cache": runtime.shared.cache.stats(),
        "events": runtime.events.bus.stats(),
    }
    redacted: dict[str, Any] = redact(document, max_chars=None, max_depth=64, budget=Budget(chars=None, items=None))
    return redacted
