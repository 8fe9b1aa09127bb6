"""Rate limiting: one token per client call, before any upstream work, refused with a `retryAfter`.

Each `RateLimitConfig` is a token bucket per key: `bucket_size` calls at once, refilled at `rate` per
`per`. It maps onto aiolimiter's leaky bucket (which starts empty, i.e. with a full burst available)
as ``AsyncLimiter(bucket_size, bucket_size * per / rate)``: capacity `bucket_size`, drained at
``rate / per`` per second. aiolimiter's own `acquire()` queues without bound, so a call that finds no
token waits only if one frees within `max_wait` (the queue ahead of it counted); otherwise, or if the
wait runs out, it is refused with `RateLimited` and the time until its token would be free.

Buckets are keyed by the config itself (frozen, hashable: two rules with different limits never share
a bucket, and a reload that changes a limit gets fresh limiters, since aiolimiter does not rederive its
drain rate when `max_rate` changes), the upstream, and the key value (client identity, tool name or
method, or nothing for ``upstream``); ``global`` buckets are shared by every upstream, which is why one
stage instance serves the whole proxy. Per config the buckets live in an LRU map of
`max_keys` entries, so clients inventing identities cannot grow memory; an evicted key starts again
with a full bucket.

`retryAfter` reads aiolimiter 1.3's internals (`_level`, `_rate_per_sec`, `_waiters`), as its public
API has no "time until capacity"; `tests/policies/test_ratelimit.py` pins the arithmetic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiolimiter import AsyncLimiter
from cachetools import LRUCache

from proxy.errors import RateLimited
from proxy.policies.base import NULL_OBSERVER, Call, CallHandler, Observer, Reply
from proxy.config.policies import RateLimitConfig

__all__ = ["RateLimitStage", "bucket_key"]

Buckets = LRUCache[tuple[str, str], AsyncLimiter]


def bucket_key(cfg: RateLimitConfig, call: Call) -> tuple[str, str]:
    """A bucket's key under `cfg`: (upstream, client | tool-or-method | ""); ``global`` shares across upstreams."""
    if cfg.key == "global":
        return ("", "")
    if cfg.key == "client":
        return (call.upstream, call.client)
    if cfg.key == "tool":
        return (call.upstream, call.tool if call.tool is not None else call.method)
    return (call.upstream, "")


def _delay(limiter: AsyncLimiter) -> float:
    """Seconds until a newcomer's token is free, behind the callers already queued (0: free now)."""
    limiter.has_capacity()  # drains the bucket up to now
    queued = sum(1 for *_, waiter in limiter._waiters if not waiter.done())
    excess = limiter._level + 1 + queued - limiter.max_rate
    return max(0.0, excess / limiter._rate_per_sec)


class RateLimitStage:
    """The pipeline stage: takes one token from the call's bucket, waits up to `max_wait`, or refuses."""

    __slots__ = ("_buckets", "_observer", "_rejected", "_waiting")

    def __init__(self, observer: Observer = NULL_OBSERVER) -> None:
        self._observer = observer
        self._buckets: dict[RateLimitConfig, Buckets] = {}
        self._rejected = 0
        self._waiting = 0

    async def __call__(self, call: Call, next: CallHandler) -> Reply:
        cfg = call.policy.rate_limit
        if cfg is None:
            return await next(call)
        limiter = self._limiter(cfg, call)
        delay = _delay(limiter)
        if delay > 0:
            if delay > cfg.max_wait:
                raise self._refuse(call, delay)
            await self._wait(cfg, call, limiter)
        else:
            await limiter.acquire()  # a token is free: returns without suspending
        return await next(call)

    async def _wait(self, cfg: RateLimitConfig, call: Call, limiter: AsyncLimiter) -> None:
        self._waiting += 1
        try:
            async with asyncio.timeout(cfg.max_wait):
                await limiter.acquire()  # cancelled while queued: aiolimiter drops the waiter, no token taken
            return
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1
        delay = _delay(limiter)
        if delay > 0:
            raise self._refuse(call, delay)
        await limiter.acquire()  # freed just as the deadline struck: take it rather than refuse

    def _limiter(self, cfg: RateLimitConfig, call: Call) -> AsyncLimiter:
        buckets = self._buckets.get(cfg)
        if buckets is None:
            buckets = self._buckets[cfg] = LRUCache(maxsize=cfg.max_keys)
        key = bucket_key(cfg, call)
        limiter = buckets.get(key)
        if limiter is None:
            size = cfg.bucket_size
            limiter = buckets[key] = AsyncLimiter(size, size * cfg.per / cfg.rate)
        return limiter

    def _refuse(self, call: Call, delay: float) -> RateLimited:
        self._rejected += 1
        self._observer.policy_event("rate_limited", call, retry_after=delay)
        return RateLimited(
            f"rate limit exceeded for {call.method}; retry in {delay:.3f}s", upstream=call.upstream, retry_after=delay
        )

    async def spend(self, call: Call) -> bool:
        """Take a token for `call` if one is free now; never wait, never refuse. For messages a refusal would
        make things worse for (a client's answer to the server's own request, a cancellation, a DELETE):
        they still count against the client's budget, so its next call pays for them. True if one was taken."""
        cfg = call.policy.rate_limit
        if cfg is None:
            return True
        limiter = self._limiter(cfg, call)
        if _delay(limiter) > 0:
            return False
        await limiter.acquire()  # a token is free: returns without suspending
        return True

    def retry_after(self, call: Call) -> float:
        """Seconds until `call` would get a token (0: now, or no limit applies). Takes none."""
        cfg = call.policy.rate_limit
        buckets = self._buckets.get(cfg) if cfg is not None else None
        if cfg is None or buckets is None:
            return 0.0
        limiter = buckets.get(bucket_key(cfg, call))
        return _delay(limiter) if limiter is not None else 0.0

    def retain(self, live: Iterable[RateLimitConfig]) -> None:
        """After a reload: drop the buckets of configs no longer in use; unchanged ones keep their state."""
        keep = set(live)
        for cfg in [cfg for cfg in self._buckets if cfg not in keep]:
            del self._buckets[cfg]

    def stats(self) -> dict[str, int]:
        """For /status: buckets held, calls queued for a token now, calls refused so far."""
        buckets = sum(len(b) for b in self._buckets.values())
        return {"buckets": buckets, "waiting": self._waiting, "rejected": self._rejected}
