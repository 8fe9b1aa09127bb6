"""One finished client call as the simulator needs it (`CallRecord`), and the calls of a recorded event stream.

A record says what happened to a call: when, what was called, by whom (when known), with which params
(their hash), whether it was safe to repeat, each attempt's outcome (``ok`` or a failure kind of
`proxy.failure_kinds.Failure`, ``circuit_open`` for an attempt a breaker refused unsent, ``unknown`` for
a failed attempt whose kind no event names) with its latency where known, and how the call ended. The
proxy could build records directly from the calls it serves (a shadow trial feeds the same
`proxy.trials.simulate.Simulator` live); offline they are rebuilt from events by `records_from_events`.

How a recorded stream becomes records, and where that is exact or approximate:

- **Failed, retried, refused and stale-served calls are exact**, rebuilt from their own events tied by
  `call_id`: ``retry`` (a failed attempt that was retried, its kind and backoff), ``timeout`` and
  ``timeout_observed`` (the limit it passed and when the answer would have come), ``retry_exhausted``
  and ``retry_budget_exhausted`` (the last attempt and why retrying stopped), ``call_failed`` (what the
  client heard, after how many attempts, and who it was), ``rate_limited`` (refused before any
  attempt), ``fallback_served`` (a stored answer stood in, ``stale``, or answered fresh, ``hit``).
  A call with retry events and no final failure succeeded on the attempt after its last failed one.
- ``circuit_open`` events name no call: a call that failed ``circuit_open`` carries it in its
  ``call_failed``; a stale answer standing in for a refused attempt is matched to an unclaimed
  ``circuit_open`` of its upstream within `CIRCUIT_OPEN_MATCH_S`, else its last attempt is ``unknown``.
- **Successful calls come from the ``call_ok`` summaries**, which count every call of a window by outcome
  and by the attempt that succeeded. The calls rebuilt from events are taken out of their summary: a
  failure out of the one whose window holds its last event but its observations (which come up to
  ``events.observe_timeouts`` after the client had its answer), by the reason ``call_failed`` gave, which is
  the summary's outcome name; a success (or stored answer) out of the first summary at or after its end
  that still counts one on its attempt. A retried success's end is estimated as its last ``retry`` plus that
  retry's backoff (the ``retry`` event precedes both the backoff and the attempt that answered, which may
  land in a later window). What remains becomes records of their own:
  - times: spread evenly over the summary's window (record ``i`` of ``n`` at ``start + (i + 0.5) *
    length / n``), or, when the summary carries ``ok_timeline`` and ``timeline_slot_s``, over each slot by
    its own count (slot ``i`` covers ``[window_end - window_s + i * slot, + slot)``);
  - latencies: the histogram's calls, each placed evenly inside its bucket (the overflow bucket reaches
    ``latency_max_ms``), as many as remain picked evenly from the sorted list, and handed out in a
    fixed low-discrepancy order, so slow and fast calls interleave in time;
  - params: when the summary names them (``ok_params``, the distinct hashes of its idempotent successes in
    first-success order), handed out in that order to its successes in time order, cycling when they are
    fewer (each success was of one of them; which, the summary does not say); the last
    ``ok_params_overflow`` successes (params past the summary's bound) get None, unknown. These successes
    are held idempotent (the recorder names and counts only those). Every success of a summary without
    ``ok_params`` (a recording made before it) has params and idempotence unknown (None). The cache
    model counts a success of unknown params as one of every params of its call kind, as an estimate
    (see `proxy.trials.simulate`);
  - client: unknown (None);
  - a success on attempt ``k > 1`` without events (none should exist: every retry has one) gets
    ``k - 1`` ``unknown`` attempts before its ``ok``;
  - outcomes a summary counts without any ``call_failed`` for them are application answers
    (``jsonrpc_error``, ``http_4xx``, a 5xx with a JSON-RPC body: outcome ``answered``), cancelled calls
    (``cancelled``), or failures whose events fell outside the window (``failed``, attempt ``unknown``).
- The latency of an ``ok`` attempt of a retried call is unknown (None), as is how long a failed attempt
  other than a timeout took: the simulator counts them as taking no time.
- A call whose last failed attempt was not retried and which has no final event (the window or a
  dropped event cut it) is counted as failed with that attempt's kind.
- A record's ``ts`` is its first event's time (for a failed first attempt: when it failed), or the time
  given to it inside its summary's window.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from proxy.analyzer.aggregate import number as _num
from proxy.analyzer.aggregate import select_window
from proxy.failure_kinds import Failure

__all__ = [
    "CIRCUIT_OPEN_MATCH_S",
    "REFUSED",
    "UNKNOWN",
    "AttemptRecord",
    "CallRecord",
    "Outcome",
    "records_from_events",
]

UNKNOWN: Final = "unknown"
"""The outcome of an attempt that failed in a way no event names."""
REFUSED: Final = "circuit_open"
"""The outcome of an attempt a breaker refused: never sent."""
CIRCUIT_OPEN_MATCH_S: Final = 0.05
"""How close (s) an unclaimed ``circuit_open`` must be to a stale serve to be taken as what it stood in for."""

Outcome = Literal["ok", "hit", "stale", "failed", "answered", "cancelled"]
"""How a call ended: answered well by the upstream (``ok``) or by a fresh stored answer (``hit``); a stored
answer stood in for a failure (``stale``); the client heard a failure (``failed``); the upstream answered
with an application error the proxy passes on as it is (``answered``); the client went away (``cancelled``)."""

_FAILURE_KINDS: Final = frozenset(kind.value for kind in Failure)
_CALL_TYPES: Final = frozenset(
    {"retry", "timeout", "timeout_observed", "retry_exhausted", "retry_budget_exhausted", "call_failed",
     "fallback_served", "rate_limited"}
)  # fmt: skip
_GOLDEN: Final = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One attempt of a call."""

    outcome: str
    """``ok``, a failure kind (`proxy.failure_kinds.Failure`), `REFUSED` (never sent) or `UNKNOWN`."""
    latency_ms: float | None = None
    """For ``ok``: how long it took. For ``timeout``: when the answer would have come
    (``timeout_observed.observed_ms``), None when nobody saw it. None: unknown."""
    limit_ms: float | None = None
    """For ``timeout``: the limit it passed (the per-try timeout, or what the call's deadline left)."""
    delay_ms: float | None = None
    """When it was retried: the backoff before the next attempt."""

    @property
    def sent(self) -> bool:
        """Whether the attempt reached the upstream (a breaker's refusal never does)."""
        return self.outcome != REFUSED


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One finished client call: what the simulator replays under another policy."""

    ts: float
    """When the call started, Unix seconds (rebuilt from events: see the module docstring)."""
    upstream: str
    method: str
    tool: str | None
    client: str | None = None
    """Who called (the events' hash of its identity), when known."""
    params_hash: str | None = None
    """The hash of its params; None when unknown (a success known only from a summary without ``ok_params``
    or past its bound, or a call recorded with ``include_params``)."""
    idempotent: bool | None = None
    """Whether the proxy held it safe to repeat; None when unknown (a summary's call)."""
    attempts: tuple[AttemptRecord, ...] = ()
    """Its attempts in order; none when it was refused by the rate limit or answered from the cache fresh."""
    outcome: Outcome = "ok"
    error: str | None = None
    """For ``failed``: the kind the client heard (``call_failed.error.kind``: a failure kind or the proxy's
    reason, e.g. ``circuit_open``, ``rate_limited``, ``retry_budget_exhausted``); for ``answered``: the
    summary's outcome name."""
    stop: str | None = None
    """Why retrying stopped, when an event said so (``retry_exhausted.why``, or ``budget``)."""
    rate_limited: bool = False
    """Refused by the proxy's own rate limit (before any attempt)."""
    stale_age: float | None = None
    """For ``stale``: how old the stored answer was (s)."""
    call_id: str | None = None
    streamed: bool = False
    """For ``failed``: its answer was already being relayed when it failed (``call_failed.streamed``, or a
    ``stream_broken``, which only a relayed answer fails with): committed, beyond any fallback."""
    from_summary: bool = False
    """Rebuilt from a ``call_ok`` summary (times, latencies spread; params as its ``ok_params`` say, client unknown)."""

    @property
    def target(self) -> tuple[str, str, str | None]:
        return (self.upstream, self.method, self.tool)

    @property
    def refused_by_breaker(self) -> bool:
        return any(a.outcome == REFUSED for a in self.attempts)

    @property
    def sent(self) -> int:
        """Attempts that reached the upstream."""
        return sum(1 for a in self.attempts if a.sent)


Event = dict[str, Any]


def _attempt_of(event: Event) -> int:
    return max(1, int(_num(event.get("x_attempt", event.get("attempt")), 1)))


def _error_kind(event: Event) -> str | None:
    error = event.get("error")
    kind = error.get("kind") if isinstance(error, dict) else None
    kind = kind if kind is not None else event.get("failure")
    return None if kind is None else str(kind)


def _call_id(event: Event) -> str | None:
    raw = event.get("call_id")
    return str(raw) if isinstance(raw, int | str) and not isinstance(raw, bool) else None


def _target(event: Event) -> tuple[str, str, str | None] | None:
    upstream, method, tool = event.get("upstream"), event.get("method"), event.get("tool")
    if not isinstance(upstream, str) or not isinstance(method, str):
        return None
    return (upstream, method, tool if isinstance(tool, str) else None)


def _valid(events: Iterable[Event], window_s: float | None) -> list[Event]:
    """The analyzer's own selection (`select_window`), so a replay covers exactly the window its proposals came from."""
    return select_window(events, window_s)[0]


@dataclass(slots=True)
class _Attempt:
    outcome: str | None = None
    latency_ms: float | None = None
    limit_ms: float | None = None
    delay_ms: float | None = None
    retried: bool = False


@dataclass(slots=True)
class _Rebuilt:
    """A call rebuilt from its events, and what its summary must not count again."""

    record: CallRecord
    end_ts: float
    reason: str | None
    """The ``call_failed`` reason (the summary's outcome name for it); None for a call that did not fail."""
    ok_attempt: int | None
    """For a call the summary counts ok (a success, a stale or fresh stored answer): the attempt it names."""


def _rebuild(events: list[Event], circuit_opens: dict[str, list[float]]) -> _Rebuilt | None:
    target = _target(events[0])
    if target is None:
        return None
    upstream, method, tool = target
    attempts: dict[int, _Attempt] = defaultdict(_Attempt)
    client = params = None
    idempotent: bool | None = None
    outcome: Outcome | None = None
    error = stop = reason = None
    rate_limited = streamed = False
    stale_age: float | None = None
    last = 0
    for event in events:
        kind, number = event.get("type"), _attempt_of(event)
        client = event.get("client") if isinstance(event.get("client"), str) else client
        params = event.get("params_hash") if isinstance(event.get("params_hash"), str) else params
        idempotent = event.get("idempotent") if isinstance(event.get("idempotent"), bool) else idempotent
        failure = _error_kind(event)
        if kind == "retry":
            attempt = attempts[number]
            attempt.outcome = attempt.outcome or failure or UNKNOWN
            attempt.delay_ms, attempt.retried = _num(event.get("delay_ms")), True
            last = max(last, number + 1)
        elif kind == "timeout":
            attempts[number].outcome = "timeout"
            attempts[number].limit_ms = _num(event.get("limit_ms")) or None
            last = max(last, number)
        elif kind == "timeout_observed":
            observed = event.get("observed_ms")
            attempts[number].outcome = "timeout"
            attempts[number].latency_ms = _num(observed) if isinstance(observed, int | float) else None
            attempts[number].limit_ms = attempts[number].limit_ms or _num(event.get("limit_ms")) or None
            last = max(last, number)
        elif kind in ("retry_exhausted", "retry_budget_exhausted"):
            attempts[number].outcome = attempts[number].outcome or failure or UNKNOWN
            stop = str(event.get("why")) if kind == "retry_exhausted" else "budget"
            last = max(last, number)
        elif kind == "rate_limited":
            rate_limited = True
        elif kind == "call_failed":
            outcome, error, reason = "failed", failure or UNKNOWN, str(event.get("reason") or failure)
            streamed = event.get("streamed") is True or failure == Failure.STREAM_BROKEN.value
            last = max(last, number)
            if failure in _FAILURE_KINDS or failure == REFUSED:
                attempts[number].outcome = attempts[number].outcome or failure
        elif kind == "fallback_served":
            if event.get("status") == "hit":
                outcome = "hit"
            else:
                outcome, stale_age = "stale", _num(event.get("age"))
                last = max(last, number)
    # When the client had its answer: the call's last event but its observations, which may come up to
    # `events.observe_timeouts` later (the summary that counted the call is the one of this moment).
    end_ts = max((float(e["ts"]) for e in events if e.get("type") != "timeout_observed"), default=float(events[-1]["ts"]))
    if rate_limited or outcome == "hit":
        built: tuple[AttemptRecord, ...] = ()
        last = 0
    else:
        if outcome is None:
            if last and attempts[last].outcome is None and attempts[last - 1].retried:
                outcome = "ok"  # retried, and no failure after: the attempt after the last failed one answered
                attempts[last].outcome = "ok"
                # Its last event is the last `retry`, sent before the backoff: the answer came after that
                # backoff at the earliest (and the summary that counted it may be a later one).
                end_ts = max(
                    [end_ts] + [float(e["ts"]) + _num(e.get("delay_ms")) / 1000 for e in events if e.get("type") == "retry"]
                )
            else:
                failed = attempts[last] if last else _Attempt(UNKNOWN)
                outcome, error = "failed", failed.outcome or UNKNOWN
        if outcome == "stale" and last and attempts[last].outcome is None:
            attempts[last].outcome = _claim(circuit_opens.get(upstream), end_ts)
        last = max(last, 1)
        built = tuple(
            AttemptRecord(a.outcome or UNKNOWN, a.latency_ms, a.limit_ms, a.delay_ms if a.retried else None)
            for a in (attempts[n] for n in range(1, last + 1))
        )
    if outcome == "failed" and error == REFUSED:
        _claim(circuit_opens.get(upstream), end_ts, anywhere=True)
    record = CallRecord(
        ts=float(events[0]["ts"]), upstream=upstream, method=method, tool=tool, client=client, params_hash=params,
        idempotent=idempotent, attempts=built, outcome=outcome or "ok", error=error, stop=stop,
        rate_limited=rate_limited, stale_age=stale_age, call_id=_call_id(events[0]), streamed=streamed,
    )  # fmt: skip
    counted_ok = record.outcome in ("ok", "stale", "hit")
    return _Rebuilt(record, end_ts, reason if record.outcome == "failed" else None, max(1, len(built)) if counted_ok else None)


def _claim(opens: list[float] | None, ts: float, anywhere: bool = False) -> str:
    """Take the `circuit_open` event of this upstream closest to `ts` (within `CIRCUIT_OPEN_MATCH_S` unless
    `anywhere`: a call that failed ``circuit_open`` certainly had one)."""
    if not opens:
        return UNKNOWN
    best = min(range(len(opens)), key=lambda i: abs(opens[i] - ts))
    if abs(opens[best] - ts) > CIRCUIT_OPEN_MATCH_S and not anywhere:
        return UNKNOWN
    del opens[best]
    return REFUSED


def _spread(start: float, length: float, count: int) -> list[float]:
    return [start + (i + 0.5) * length / count for i in range(count)]


def _latencies(event: Event, count: int) -> list[float | None]:
    """`count` latencies from the summary's histogram, each bucket's calls placed evenly inside it, picked
    evenly from the sorted list, in a low-discrepancy order (slow and fast calls interleave in time)."""
    bounds, counts = event.get("latency_buckets_ms") or [], event.get("latency_histogram") or []
    values: list[float] = []
    if len(counts) == len(bounds) + 1:
        top = _num(event.get("latency_max_ms"))
        for index, raw in enumerate(counts):
            n = int(_num(raw))
            low = _num(bounds[index - 1]) if index > 0 else 0.0
            high = _num(bounds[index]) if index < len(bounds) else max(top, low)
            values.extend(low + (high - low) * (j + 0.5) / n for j in range(n))
    if count <= 0:
        return []
    if not values:
        return [None] * count
    picked = [values[min(len(values) - 1, int((i + 0.5) * len(values) / count))] for i in range(count)]
    order = sorted(range(count), key=lambda i: (i * _GOLDEN) % 1.0)
    return [picked[i] for i in order]


def _times(event: Event, start: float, length: float, count: int, taken: Sequence[float]) -> list[float]:
    """Times for `count` successes of a summary: by its ``ok_timeline`` when it has one (less the successes
    rebuilt from events at `taken`), else evenly over the window."""
    timeline, slot = event.get("ok_timeline"), _num(event.get("timeline_slot_s"))
    if isinstance(timeline, list) and timeline and slot > 0 and all(isinstance(c, int) for c in timeline):
        left = [int(c) for c in timeline]
        for ts in taken:
            index = min(len(left) - 1, max(0, int((ts - start) // slot)))
            left[index] = max(0, left[index] - 1)
        times = [t for i, c in enumerate(left) if c > 0 for t in _spread(start + i * slot, slot, c)]
        if len(times) >= count:
            return times[:count]
        return times + _spread(start, length, count - len(times))
    return _spread(start, length, count) if count else []


def _ok_by_attempt(event: Event) -> dict[int, int]:
    """A summary's successes by the attempt that succeeded."""
    return {int(k): int(_num(v)) for k, v in (event.get("ok_by_attempt") or {}).items() if str(k).isdigit()}


def _summary_params(event: Event, count: int) -> list[str | None]:
    """The params hashes of a summary's `count` successes in time order (see the module docstring): its
    ``ok_params`` in order, cycling, and None for the last ``ok_params_overflow`` and without ``ok_params``."""
    named = event.get("ok_params")
    if not isinstance(named, list) or not named or not all(isinstance(h, str) for h in named):
        return [None] * count
    unknown = min(count, max(0, int(_num(event.get("ok_params_overflow")))))
    return [named[i % len(named)] for i in range(count - unknown)] + [None] * unknown


def _from_summary(event: Event, rebuilt: list[_Rebuilt]) -> list[CallRecord]:
    target = _target(event)
    if target is None:
        return []
    end = _num(event.get("window_end"), float(event["ts"]))
    length = max(0.0, _num(event.get("window_s")))
    start = end - length
    ok_by_attempt = {int(k): int(_num(v)) for k, v in (event.get("ok_by_attempt") or {}).items() if str(k).isdigit()}
    outcomes = {str(k): int(_num(v)) for k, v in (event.get("outcomes") or {}).items()}
    for call in rebuilt:
        if call.ok_attempt is not None:
            ok_by_attempt[call.ok_attempt] = ok_by_attempt.get(call.ok_attempt, 0) - 1
        elif call.reason is not None and call.reason in outcomes:
            outcomes[call.reason] -= 1
    remaining = sorted((k, n) for k, n in ok_by_attempt.items() if n > 0)
    ok_count = sum(n for _, n in remaining)
    times = _times(event, start, length, ok_count, [c.end_ts for c in rebuilt if c.ok_attempt is not None])
    latencies = _latencies(event, ok_count)
    params = _summary_params(event, ok_count)  # handed out in the order of `times`
    named = True if isinstance(event.get("ok_params"), list) else None  # it names (or counts) idempotent successes only
    upstream, method, tool = target
    records: list[CallRecord] = []
    index = 0
    for number, n in remaining:
        for _ in range(n):
            attempts = (*(AttemptRecord(UNKNOWN) for _ in range(number - 1)), AttemptRecord("ok", latencies[index]))
            records.append(CallRecord(times[index], upstream, method, tool, params_hash=params[index],
                                      idempotent=named, attempts=attempts, from_summary=True))  # fmt: skip
            index += 1
    others = [(name, n) for name, n in sorted(outcomes.items()) if name != "ok" and n > 0]
    others_times = _spread(start, length, sum(n for _, n in others))
    index = 0
    for name, n in others:
        for _ in range(n):
            if name == "cancelled":
                outcome: Outcome = "cancelled"
                attempt = AttemptRecord(Failure.CANCELLED.value)
            elif name == "jsonrpc_error" or name.startswith("http_"):
                outcome, attempt = "answered", AttemptRecord(Failure.CLIENT_ERROR.value)
            else:
                outcome, attempt = "failed", AttemptRecord(UNKNOWN)
            records.append(CallRecord(
                others_times[index], upstream, method, tool, attempts=(attempt,), outcome=outcome, error=name, from_summary=True,
            ))  # fmt: skip
            index += 1
    return records


def records_from_events(events: Iterable[Event], window_s: float | None = None) -> list[CallRecord]:
    """The calls of a recorded event stream, in time order (see the module docstring for how, and where
    that is approximate). With `window_s`, only events within `window_s` of the latest count, as the
    analyzer selects them."""
    valid = _valid(events, window_s)
    calls: dict[tuple[str, str], list[Event]] = {}
    summaries: list[Event] = []
    circuit_opens: dict[str, list[float]] = defaultdict(list)
    for event in valid:
        kind = event.get("type")
        if kind == "call_ok":
            summaries.append(event)
        elif kind == "circuit_open" and isinstance(event.get("upstream"), str):
            circuit_opens[event["upstream"]].append(float(event["ts"]))
        elif kind in _CALL_TYPES:
            call_id = _call_id(event)
            if call_id is not None and isinstance(event.get("upstream"), str):
                calls.setdefault((event["upstream"], call_id), []).append(event)
    rebuilt: list[_Rebuilt] = []
    # Calls that failed with circuit_open claim their refusals first; stale serves get what is left.
    ordered = sorted(calls.values(), key=lambda es: not any(e.get("type") == "call_failed" for e in es))
    for call_events in ordered:
        one = _rebuild(call_events, circuit_opens)
        if one is not None:
            rebuilt.append(one)
    records = [r.record for r in rebuilt]
    # Each rebuilt call belongs to the summary whose window holds its end (`end_ts`; the earliest such).
    windows: dict[tuple[str, str, str | None], list[tuple[float, float, int]]] = defaultdict(list)
    for index, event in enumerate(summaries):
        target = _target(event)
        if target is not None:
            end = _num(event.get("window_end"), float(event["ts"]))
            windows[target].append((end, end - max(0.0, _num(event.get("window_s"))), index))
    # A call counted ok (a success, a stored answer) belongs to the first summary at or after its end that still
    # counts one on its attempt: a retried success's end is only estimated (its last retry and backoff; the
    # answer came later, maybe in a later window), so the summary's own count decides, and a success never
    # takes a count another summary holds for it (which would rebuild it twice). Calls are matched in the
    # order they ended, so the earlier ones take the earlier counts.
    members: dict[int, list[_Rebuilt]] = defaultdict(list)
    held: dict[int, dict[int, int]] = {}
    for call in sorted(rebuilt, key=lambda c: c.end_ts):
        spans = sorted(windows.get(call.record.target, ()))
        at = bisect.bisect_left([end for end, _, _ in spans], call.end_ts)
        if call.ok_attempt is not None:
            for _, _, index in spans[at:]:
                left = held.setdefault(index, _ok_by_attempt(summaries[index]))
                if left.get(call.ok_attempt, 0) > 0:
                    left[call.ok_attempt] -= 1
                    members[index].append(call)
                    break
        elif at < len(spans) and spans[at][1] <= call.end_ts:
            members[spans[at][2]].append(call)
    for index, event in enumerate(summaries):
        records.extend(_from_summary(event, members.get(index, [])))
    records.sort(key=lambda r: (r.ts, r.upstream, r.method, r.tool or "", r.call_id or ""))
    return records
