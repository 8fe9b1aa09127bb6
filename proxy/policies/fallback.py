"""Cache and fallback: a stored answer stands in for a failing upstream, or (``ttl`` mode) for the call.

This stage is outermost, so it can answer any failure below it: a `ProxyError` (timeout, unreachable
upstream, open breaker, rate limit, retry budget, the proxy's own overload) or a reply that
`proxy.policies.failures` calls a server failure (502/503/504, a 5xx without a JSON-RPC body) or a 429. An
answer of the server's own (a JSON-RPC error, a 4xx, an `isError` result) is never replaced: the
client that asked hears it. It never classifies on its own.

- Only idempotent calls whose policy has a ``cache`` section. ``fallback`` sends every call upstream
  and serves a stored answer only on failure, until ``max_stale`` past its freshness. ``ttl`` also
  answers fresh hits without calling upstream.
- What is stored is the ``result`` of a 2xx JSON-RPC success. Errors, ``isError`` tool results,
  ``input_required`` results and streamed answers are never stored, nor is an answer that is its
  caller's own: one carrying ``Set-Cookie`` or ``Cache-Control: private`` / ``no-store``.
- The key is the upstream, the method, the protocol version, the client's query string, the params minus
  ``_meta`` as canonical JSON (exact: `Message.canonical_arguments`), and, unless the policy is ``shared``, the credential
  scope: a hash over every credential-bearing header the upstream receives (`proxy.server.classify.
  credential_scope`: deny-by-default, so Authorization, Cookie, X-Api-Key, the configured identity
  header, Mcp-Session-Id and any header the proxy does not know all count; only headers that are
  forwarded, so one removed via ``Connection`` does not). A modern result's ``cacheScope: private``
  keeps it in its credential scope whatever the policy says, and its ``ttlMs`` caps the freshness.
- cachetools' TTLCache forgets expired entries, so it cannot serve stale ones. Entries carry their
  own fresh and stale deadlines instead, in an LRU bounded by entries and bytes. There is one LRU
  per (upstream, cache config), so each rule's limits hold on their own.
- An entry costs little more than its answer: the ``result`` is kept once, as its JSON bytes (parsed
  again on a hit, about a microsecond for a few kilobytes), in a slotted record with its deadlines and
  size; the key is one ``bytes`` (`_keys`); the LRU is a plain dict in use order. Anything kept is an
  exact-size copy: orjson returns every ``dumps`` in a buffer of 4 KiB or more, which, kept, would cost
  that much per entry whatever the answer.
- A served answer is a new JSON response with the current request's id and only Content-Type,
  marked in ``result._meta`` and by an ``X-Mcp-Proxy-Cache`` header. The upstream's headers are not
  replayed.
- Single flight: concurrent identical calls share one upstream call. It runs as a task that the
  flight owns, so a leader whose client goes away does not strand the others, and the last caller
  to leave cancels it. A flight is keyed like a private entry whatever the policy's ``scope``: a
  follower joins only a leader of its own credential scope (so never another legacy session). The
  leader gets its answer as it came; a follower gets only what a cache hit would give it: a new JSON
  answer with its own id and only Content-Type, built from a storable result (unmarked: it is fresh).
  A follower of any other answer (an error, a stream, ``isError``, ``Set-Cookie``, ``no-store``...)
  makes its own upstream call, or, when that answer is a failure a stored answer stands in for,
  gets the stale entry if there is one. The proxy's own verdicts (timeout, open breaker...) reach
  every follower; a rate-limit rejection only the same client.
- `invalidate_lists` drops an upstream's ``<kind>/list`` answers on ``notifications/<kind>/list_changed``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import orjson
from multidict import CIMultiDict

from proxy.tasks import Owner, cancel_and_wait, spawn
from proxy.errors import ProxyError, RateLimited
from proxy.policies.failures import Verdict, verdict_of
from proxy.policies.base import NULL_OBSERVER, Attempt, Call, CallHandler, Clock, Observer, Reply, last_attempt
from proxy.config.policies import CacheConfig

__all__ = ["CACHE_HEADER", "CACHE_META", "CacheStage", "Entry", "ResponseCache"]

CACHE_META: Final = "io.github.mcp-resilience-proxy/cache"
"""The `result._meta` key of a served stored answer: ``{"status": "hit"|"stale", "age_ms": N}``."""
CACHE_HEADER: Final = "X-Mcp-Proxy-Cache"

Key = bytes
"""An entry's key within its upstream's store: the method, the protocol version, the client's query string
(`Call.query`: it may name who or what is asked, so even a shared answer is shared only with the same
query) and the credential scope, each prefixed with its length (``10:tools/call10:2025-06-180:16:<hash>``;
the scope is ``-`` for an answer every client may share), then the canonical params. The prefixes delimit
every part, so two keys are equal exactly when all five parts are, whatever characters the parts hold (a
header may hold any)."""
FlightKey = tuple[str, Key]
"""(upstream, private key). A flight is keyed like a private entry, whatever the policy's scope: a call in
flight was made with one set of credentials, and its answer is not yet known to be shareable. The
credential scope counts ``Mcp-Session-Id``, so a flight never spans two legacy sessions either."""

NOT_STORED_HEADERS: Final = frozenset({"set-cookie", "set-cookie2"})
"""An answer carrying any of these (lower case) is its caller's own: never stored, never shared."""
NOT_STORED_DIRECTIVES: Final = frozenset({"no-store", "private"})
"""``Cache-Control`` directives (lower case, with or without a value) that keep an answer out of the store.
The proxy is a shared cache (RFC 9111 §5.2.2.7): its ``private`` scope is keyed by headers it can see,
not by the user, so it honours ``private`` as a shared cache must."""


class Entry:
    """A stored answer: its ``result`` as JSON (exact-size bytes), fresh until `fresh_until` (clock time),
    stale (usable for a failure) until its store's `max_stale` past that. `size` is what it counts against
    ``max_bytes``: the answer, the params and the method."""

    __slots__ = ("fresh_until", "result", "size", "stored_at")

    def __init__(self, result: bytes, stored_at: float, fresh_until: float, size: int) -> None:
        self.result = result
        self.stored_at = stored_at
        self.fresh_until = fresh_until
        self.size = size


class ResponseCache:
    """Entries by key, least recently used out first, bounded by count and by bytes.

    A plain dict in use order: a read moves its entry to the end, eviction takes from the front."""

    __slots__ = ("_bytes", "_entries", "_max_bytes", "_max_entries", "max_stale")

    def __init__(self, max_entries: int, max_bytes: int, max_stale: float = 0.0) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self.max_stale = max_stale
        self._entries: dict[Key, Entry] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: Key) -> Entry | None:
        """The entry under `key`, now the most recently used; None when there is none."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._entries[key] = entry
        return entry

    def put(self, key: Key, entry: Entry) -> None:
        """Store `entry`, evicting the least recently used; an entry larger than the whole cache is not kept."""
        self.pop(key)
        if entry.size > self._max_bytes:
            return
        entries = self._entries
        while entries and (len(entries) >= self._max_entries or self._bytes + entry.size > self._max_bytes):
            self._bytes -= entries.pop(next(iter(entries))).size
        entries[key] = entry
        self._bytes += entry.size

    def pop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size

    def drop(self, method: Callable[[str], bool]) -> int:
        """Remove the entries whose method matches; return how many."""
        doomed = [key for key in self._entries if method(_method_of(key))]
        for key in doomed:
            self.pop(key)
        return len(doomed)


class _Flight:
    """One upstream call shared by every concurrent caller with the same key."""

    __slots__ = ("call", "task", "waiters")

    def __init__(self, call: Call, task: asyncio.Task[tuple[Reply, Verdict]]) -> None:
        self.call = call
        self.task = task
        self.waiters = 0


NEVER_CACHED = frozenset({"initialize", "ping"})
"""`initialize` creates a session (a stored answer would hand out a dead one); a stored `ping` would hide an outage."""


class CacheStage:
    """The cache/fallback stage. Build one per proxy; its stores live as long as it does."""

    __slots__ = ("_background", "_clock", "_flights", "_generation", "_now_wall", "_observer", "_stores")

    def __init__(
        self, clock: Clock, now_wall: Callable[[], float] | None = None, *, observer: Observer = NULL_OBSERVER
    ) -> None:
        self._clock = clock
        self._observer = observer
        self._now_wall = now_wall  # wall time for Retry-After dates; None: the real time
        self._stores: dict[tuple[str, CacheConfig], ResponseCache] = {}
        self._flights: dict[FlightKey, _Flight] = {}
        self._generation: dict[str, int] = {}  # per upstream, bumped by invalidation
        self._background: Owner = set()

    def store(self, upstream: str, cfg: CacheConfig) -> ResponseCache:
        """The store of `upstream` calls under `cfg`, created on first use."""
        store = self._stores.get((upstream, cfg))
        if store is None:
            store = self._stores[(upstream, cfg)] = ResponseCache(cfg.max_entries, cfg.max_bytes, cfg.max_stale)
        return store

    def retain(self, live: set[tuple[str, CacheConfig]]) -> None:
        """After a reload: drop the stores of (upstream, cache config) pairs no longer in use."""
        for key in [key for key in self._stores if key not in live]:
            del self._stores[key]

    def stats(self) -> dict[str, int]:
        """For /status: stores, answers and bytes held, calls in flight."""
        return {
            "stores": len(self._stores),
            "entries": sum(len(store) for store in self._stores.values()),
            "bytes": sum(store.bytes for store in self._stores.values()),
            "in_flight": len(self._flights),
        }

    def invalidate_lists(self, upstream: str, kind: str) -> int:
        """Forget `upstream`'s ``<kind>/list`` answers (and ``<kind>/*/list``, e.g. resources/templates/list).

        Answers already in flight when this is called are not stored. Returns the number of entries dropped.
        """
        self._generation[upstream] = self._generation.get(upstream, 0) + 1
        prefix = f"{kind}/"

        def is_list(method: str) -> bool:
            return method.startswith(prefix) and method.endswith("/list")

        return sum(store.drop(is_list) for (name, _), store in self._stores.items() if name == upstream)

    async def __call__(self, call: Call, next: CallHandler) -> Reply:
        cfg = call.policy.cache
        if cfg is None or not call.idempotent or call.message.id is None or call.method in NEVER_CACHED:
            return await next(call)
        store = self.store(call.upstream, cfg)
        private, shared = pair = _keys(call)
        keys = (private,) if cfg.scope == "private" else (shared, private)
        flight = (call.upstream, private)
        if cfg.mode == "ttl":
            entry = _lookup(store, keys)
            now = self._clock.monotonic()
            if entry is not None and now < entry.fresh_until:
                self._observer.policy_event("fallback_served", call, status="hit")
                return _served(entry, call, "hit", now)
        try:
            reply, verdict = await self._join(flight, pair, call, next, store)
            if reply is None:  # a follower of an answer it may not share: its own, unless a failure has a stand-in
                if verdict.upstream_failed:
                    stale = self._stale(store, keys, call, None)
                    if stale is not None:
                        return stale
                reply, verdict = await self._fetch(pair, call, next, store)
        except ProxyError as exc:
            stale = self._stale(store, keys, call, last_attempt(call, exc))
            if stale is None:
                raise
            return stale
        if verdict.upstream_failed:
            stale = self._stale(store, keys, call, reply.attempt)
            if stale is not None:
                if reply.stream is not None:
                    await reply.stream.close()
                return stale
        return reply

    def _stale(self, store: ResponseCache, keys: tuple[Key, ...], call: Call, failed: Attempt | None) -> Reply | None:
        """A stored answer standing in for a failure, if one is fresh enough; `failed` is the try that
        failed (None: the call made no try of its own, or only its first), which its events name."""
        entry = _lookup(store, keys)
        now = self._clock.monotonic()
        if entry is None or now > entry.fresh_until + store.max_stale:
            return None
        self._observer.policy_event("fallback_served", failed or call, status="stale", age=now - entry.stored_at)
        reply = _served(entry, call, "stale", now)
        reply.attempt = failed
        return reply

    async def _join(
        self, key: FlightKey, pair: tuple[Key, Key], call: Call, next: CallHandler, store: ResponseCache
    ) -> tuple[Reply | None, Verdict]:
        """The outcome of the flight for `key`, taking off if there is none; `pair` is `call`'s own keys.

        The leader gets its answer as it came. A follower gets what a cache hit would give it: a new
        JSON answer with its own id and only Content-Type, built from a storable result; for any other
        answer, (None, the leader's verdict): the caller makes its own call (or serves a stale entry).
        """
        flight = self._flights.get(key) or self._take_off(key, pair, call, next, store)
        flight.waiters += 1
        try:
            reply, verdict = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                self._land(key, flight)
                await cancel_and_wait([flight.task])  # its upstream answer released before we go
            elif call is flight.call:
                flight.task.add_done_callback(self._close_orphan)
            raise
        except ProxyError as exc:
            if call is flight.call or not isinstance(exc, RateLimited) or call.client == flight.call.client:
                raise
            return await self._fetch(pair, call, next, store)
        if call is flight.call:
            return reply, verdict
        result = _storable(reply, verdict)
        if result is None:
            return None, verdict
        try:
            return _answer(call, dict(result)), verdict
        except orjson.JSONEncodeError:  # too deep to write again: this follower makes its own call
            return None, verdict

    def _take_off(self, key: FlightKey, pair: tuple[Key, Key], call: Call, next: CallHandler, store: ResponseCache) -> _Flight:
        task = spawn(self._fetch(pair, call, next, store), name=f"cache-flight:{call.method}", owner=self._background, awaited=True)
        flight = self._flights[key] = _Flight(call, task)
        task.add_done_callback(lambda _: self._land(key, flight))
        return flight

    def _land(self, key: FlightKey, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]

    def _close_orphan(self, task: asyncio.Task[tuple[Reply, Verdict]]) -> None:
        """The leader left; a streamed answer has no other reader, so release its connection."""
        if task.cancelled() or task.exception() is not None or (stream := task.result()[0].stream) is None:
            return
        spawn(stream.close(), name="cache-flight:close-orphan", owner=self._background)

    async def _fetch(
        self, pair: tuple[Key, Key], call: Call, next: CallHandler, store: ResponseCache
    ) -> tuple[Reply, Verdict]:
        """One upstream call; its answer is stored if it may be, unless lists were invalidated meanwhile."""
        generation = self._generation.get(call.upstream, 0)
        reply = await next(call)
        now_wall = None if self._now_wall is None else self._now_wall()
        verdict = verdict_of(reply, call.session_id is not None, now_wall)
        result = _storable(reply, verdict)
        cfg = call.policy.cache
        if result is not None and cfg is not None and self._generation.get(call.upstream, 0) == generation:
            private, shared = pair
            is_private = cfg.scope == "private" or result.get("cacheScope") == "private"
            if is_private and cfg.scope == "shared":
                store.pop(shared)  # the upstream now says private: stop sharing the old answer
            ttl = cfg.ttl
            ttl_ms = result.get("ttlMs")
            if isinstance(ttl_ms, int | float) and not isinstance(ttl_ms, bool) and ttl_ms >= 0:
                ttl = min(ttl, ttl_ms / 1000)
            now = self._clock.monotonic()
            try:
                stored = memoryview(orjson.dumps(result)).tobytes()  # exact size (see the module docstring)
            except orjson.JSONEncodeError:  # nested past orjson's 254 levels: the answer goes on, unstored
                return reply, verdict
            size = len(stored) + len(call.message.canonical_arguments()) + len(call.method)
            store.put(private if is_private else shared, Entry(stored, now, now + ttl, size))
        return reply, verdict


def _keys(call: Call) -> tuple[Key, Key]:
    """(private key, shared key) of a call within its upstream's store (`Key`). Concatenation makes each an
    exact-size ``bytes``, whatever buffer orjson handed the params back in."""
    params = call.message.canonical_arguments()
    method, protocol, query, scope = call.method, call.protocol, call.query, call.credential_scope
    head = f"{len(method)}:{method}{len(protocol)}:{protocol}{len(query)}:{query}"
    private = f"{head}{len(scope)}:{scope}".encode("utf-8", "surrogatepass") + params
    return private, f"{head}-".encode("utf-8", "surrogatepass") + params


def _method_of(key: Key) -> str:
    """The method a `Key` is for (its first part)."""
    length, _, rest = key.decode("utf-8", "surrogatepass").partition(":")
    return rest[: int(length)]


def _lookup(store: ResponseCache, keys: tuple[Key, ...]) -> Entry | None:
    for key in keys:
        entry = store.get(key)
        if entry is not None:
            return entry
    return None


def _storable(reply: Reply, verdict: Verdict) -> dict[str, Any] | None:
    """The result worth storing (and sharing with followers), or None: errors, tool errors, streams,
    input requests are not, nor an answer that is its caller's own (`_personal`)."""
    if not verdict.ok or reply.stream is not None or not 200 <= reply.status < 300 or _personal(reply):
        return None
    result = reply.message.get("result") if isinstance(reply.message, dict) else None
    if not isinstance(result, dict) or result.get("resultType") == "input_required":
        return None
    return result


def _personal(reply: Reply) -> bool:
    """Does the answer set a cookie or forbid storing (`NOT_STORED_HEADERS`, `NOT_STORED_DIRECTIVES`)?

    Directives are read leniently: a comma inside a quoted value may make a spurious token, which can
    only keep an answer out of the store, never let one in."""
    if any(name.lower() in NOT_STORED_HEADERS for name in reply.headers):
        return True
    for value in reply.headers.getall("Cache-Control", ()):
        for directive in value.split(","):
            if directive.split("=", 1)[0].strip().lower() in NOT_STORED_DIRECTIVES:
                return True
    return False


def _json_headers() -> CIMultiDict[str]:
    return CIMultiDict({"Content-Type": "application/json"})


def _served(entry: Entry, call: Call, status: str, now: float) -> Reply:
    """A stored answer as a new JSON-RPC response to `call`, marked with `status` and its age."""
    result: dict[str, Any] = orjson.loads(entry.result)
    meta = result.get("_meta")
    result["_meta"] = {**(meta if isinstance(meta, dict) else {}), CACHE_META: {
        "status": status, "age_ms": int((now - entry.stored_at) * 1000),
    }}
    if "ttlMs" in result:  # a client may cache too: only for what is left of the freshness
        result["ttlMs"] = max(0, int((entry.fresh_until - now) * 1000))
    return _answer(call, result, {CACHE_HEADER: status})


def _answer(call: Call, result: dict[str, Any], extra: dict[str, str] | None = None) -> Reply:
    """`result` as a new JSON-RPC answer to `call`: its id, only Content-Type, nothing of the upstream's headers."""
    message = {"jsonrpc": "2.0", "id": call.message.id, "result": result}
    return Reply(200, _json_headers(), body=orjson.dumps(message), message=message, extra=extra or {})
