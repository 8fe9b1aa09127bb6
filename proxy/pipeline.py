"""`build_pipeline()`: the only place that sets the order of the resilience stages.

Every JSON-RPC request goes, outermost to innermost::

    classify -> fallback -> rate_limit -> retry -> breaker -> passive_health -> timeout -> transport -> upstream

Why this order:

- **classify** runs first (in the handler, producing the `Call`), so every stage reads the same
  verdict: upstream, era, method, tool, idempotency, client identity.
- **fallback** is outermost so a cached answer can stand in for *any* failure below it, a
  rate-limit rejection and an open breaker included.
- **rate_limit** spends one token per client call, before any upstream work, and never per retry.
- **retry** wraps the breaker, so every attempt is counted by the breaker, and an open breaker fails
  the remaining attempts fast (`CircuitOpen` is never retried).
- **breaker** wraps the timeout, so a timed-out attempt counts as a breaker failure.
- **passive_health** sits inside the breaker and outside the timeout, so it sees every attempt,
  timeouts included, whatever the breaker's config (outlier detection for readiness and /status).
- **timeout** covers exactly one attempt; the call's overall deadline belongs to retry.
- Retry and fallback act only before the first byte of the answer left for the client: once an SSE
  stream is being passed through, the call is committed.

A stage that is not configured for an upstream is left out entirely rather than passed through, so
an unconfigured policy costs nothing per call.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Final

from proxy.policies.base import Handler, Stage

__all__ = ["PIPELINE_ORDER", "build_pipeline"]

PIPELINE_ORDER: Final[tuple[str, ...]] = ("fallback", "rate_limit", "retry", "breaker", "passive_health", "timeout")
"""Stage names, outermost first. Tests assert this order; change it only with the docstring above."""


def _bind(stage: Stage, next_handler: Handler) -> Handler:
    # A partial, not a wrapper coroutine: one frame less per stage on every call.
    handler = functools.partial(stage, next=next_handler)
    handler.__qualname__ = f"{type(stage).__name__}->{getattr(next_handler, '__qualname__', 'next')}"  # type: ignore[attr-defined]
    return handler


def build_pipeline(terminal: Handler, stages: Mapping[str, Stage | None]) -> Handler:
    """Compose `stages` (by name, any subset of `PIPELINE_ORDER`) around `terminal` in the fixed order."""
    unknown = set(stages) - set(PIPELINE_ORDER)
    if unknown:
        raise ValueError(f"unknown pipeline stage(s): {', '.join(sorted(unknown))}; known: {', '.join(PIPELINE_ORDER)}")
    handler = terminal
    for name in reversed(PIPELINE_ORDER):
        stage = stages.get(name)
        if stage is not None:
            handler = _bind(stage, handler)
    return handler
