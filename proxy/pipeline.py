"""`build_pipeline()`: the only place that sets the order of the resilience stages.

Every JSON-RPC request goes, outermost to innermost::

    classify -> fallback -> rate_limit -> session -> retry -> breaker -> passive_health -> timeout -> transport
                `-------------- per call --------------´    `-------------- per try (Attempt) --------------´

Why this order:

- **classify** runs first (in the handler, producing the `Call`), so every stage reads the same
  verdict: upstream, era, method, tool, idempotency, client identity.
- **fallback** is outermost so a cached answer can stand in for *any* failure below it, a
  rate-limit rejection and an open breaker included.
- **rate_limit** spends one token per client call, before any upstream work, and never per retry.
- **session** (legacy sessions, `proxy.sessions.stage`) sits inside both: the request it replays on a
  rebuilt session after the upstream lost it is the same client call (one token; a stored answer can
  still stand in if the rebuild fails), and outside the retry, so each pass gets the whole retry policy.
- **retry** wraps the breaker, so every attempt is counted by the breaker, and an open breaker fails
  the remaining attempts fast (`CircuitOpen` is never retried).
- **breaker** wraps the timeout, so a timed-out attempt counts as a breaker failure.
- **passive_health** sits inside the breaker and outside the timeout, so it sees every attempt,
  timeouts included, whatever the breaker's config (outlier detection for readiness and /status).
- **timeout** covers exactly one attempt; the call's overall deadline belongs to retry.
- Retry and fallback act only before the first byte of the answer left for the client: once an SSE
  stream is being passed through, the call is committed.

The retry position is also where a `Call` becomes its `Attempt`s (`proxy.policies.base`): the stages
outside it are `CallStage`s, the ones inside `AttemptStage`s, and the transport's `send` is the last
`AttemptHandler`. The retry stage makes one `Attempt` per try. Without a retry stage the pipeline makes
the single one itself, with `_FirstAttempt`: a plain function, not a coroutine, that builds the
`Attempt` and returns the inner stage's coroutine, so the only cost is that one object (the same one
the retry stage would make); a retry stage that is always there would instead cost its budget's
bookkeeping and a verdict per call. Its `Attempt` has no deadline (only `timeouts.per_try` bounds it,
as the call's `timeouts.total` is the retry stage's), and it marks nothing on the outcome: a call's
only try is its first, which is what the events about a call name when nothing says otherwise
(`proxy.policies.base.last_attempt`).

A stage that is not configured for an upstream is left out entirely rather than passed through, so
an unconfigured policy costs nothing per call.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Final, TypedDict

from proxy.policies.base import (
    Attempt,
    AttemptHandler,
    AttemptMaker,
    AttemptStage,
    Call,
    CallHandler,
    CallStage,
    Reply,
)

__all__ = ["PIPELINE_ORDER", "Stages", "build_pipeline"]

PIPELINE_ORDER: Final[tuple[str, ...]] = ("fallback", "rate_limit", "session", "retry", "breaker", "passive_health", "timeout")
"""Stage names, outermost first. Tests assert this order; change it only with the docstring above."""


class Stages(TypedDict, total=False):
    """The stages of one upstream's pipeline by position (any subset; None or absent: left out)."""

    fallback: CallStage | None
    rate_limit: CallStage | None
    session: Callable[[Call, CallHandler], Awaitable[Reply]] | None
    """A plain function handing back the coroutine (`proxy.sessions.stage.SessionStage`): no frame of its
    own for a call without a session."""
    retry: AttemptMaker | None
    breaker: AttemptStage | None
    passive_health: AttemptStage | None
    timeout: AttemptStage | None


class _FirstAttempt:
    """The pipeline's retry position when no retry stage is configured: each call's one and only try."""

    __slots__ = ("_next",)

    def __init__(self, next_handler: AttemptHandler) -> None:
        self._next = next_handler

    def __call__(self, call: Call) -> Awaitable[Reply]:
        return self._next(Attempt(call, 1, None))

    def __repr__(self) -> str:
        return f"<first attempt -> {getattr(self._next, '__qualname__', 'next')}>"


def _bind(stage: Callable[..., Awaitable[Reply]], next_handler: object) -> Callable[..., Awaitable[Reply]]:
    """`stage` with its `next` bound, named after its chain (``BreakerStage->TimeoutStage->...``) for
    debugging. A partial, not a wrapper coroutine: one frame less per stage on every call."""
    handler = functools.partial(stage, next=next_handler)
    handler.__qualname__ = f"{type(stage).__name__}->{getattr(next_handler, '__qualname__', 'next')}"  # type: ignore[attr-defined]
    return handler


def build_pipeline(terminal: AttemptHandler, stages: Stages) -> CallHandler:
    """Compose `stages` (by name, any subset of `PIPELINE_ORDER`) around `terminal` in the fixed order:
    the tries' stages innermost first, then the retry position (`_FirstAttempt` when there is no retry
    stage), then the call's stages."""
    unknown = set(stages) - set(PIPELINE_ORDER)
    if unknown:
        raise ValueError(f"unknown pipeline stage(s): {', '.join(sorted(unknown))}; known: {', '.join(PIPELINE_ORDER)}")
    at = PIPELINE_ORDER.index("retry")
    inner: AttemptHandler = terminal
    for name in reversed(PIPELINE_ORDER[at + 1 :]):
        if (stage := stages.get(name)) is not None:
            inner = _bind(stage, inner)  # type: ignore[arg-type]
    retry = stages.get("retry")
    outer: CallHandler = _FirstAttempt(inner) if retry is None else _bind(retry, inner)
    for name in reversed(PIPELINE_ORDER[:at]):
        if (stage := stages.get(name)) is not None:
            outer = _bind(stage, outer)  # type: ignore[arg-type]
    return outer
