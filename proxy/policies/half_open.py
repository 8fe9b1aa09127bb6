"""Who gets a half-open breaker's trial calls, and what their outcomes decide: fairness between clients.

A breaker that admits its trials first come, first served can be held by one client: the one that
calls most often takes every slot, and if its calls fail (or count nothing) the others never get to
show that the server works for them. `TrialPeriod` keeps each half-open period's trials apart by
client:

- up to `slots` trials at once, **each from a different client**; a client whose trial is in flight or
  failed gets no other this period;
- a client whose trial counted nothing (a 429, a cancel, an excused timeout) gets another only while
  no other client is waiting, that is, none that asked since the breaker opened and had no trial yet;
- the first successful trial closes the breaker (the server works for somebody); it opens again when
  every slot failed, or as soon as every client that asked has failed its trial (nobody else to wait
  for: a lone client, or all clients behind one identity, see a plain breaker);
- a period of `reset_timeout` that ends with failed trials and no success opens it again; one that
  learned nothing starts a fresh period, so a client that asked once and left never keeps others out.

Who asked is remembered for up to `MAX_ASKED` clients; past that, others are assumed to be waiting.
The breaker (`proxy.policies.breaker`) owns the state machine; this class only answers its questions.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["MAX_ASKED", "TrialPeriod"]

MAX_ASKED = 64
"""Clients remembered as waiting for a breaker; past this many, others are assumed to be waiting too."""

Refusal = Literal["taken", "has_one", "others_waiting"]
Decision = Literal["close", "open", "wait"]


class TrialPeriod:
    """The trial bookkeeping of one breaker; a fresh `period` number each time it goes half-open."""

    __slots__ = ("_asked", "_failed", "_holding", "_tried", "period", "started_at")

    def __init__(self) -> None:
        self.period = 0
        """Counts half-open periods: a trial speaks only for the period that admitted it."""
        self.started_at = 0.0
        self._holding: set[str] = set()
        """Clients whose trial call of this period is in flight."""
        self._tried: set[str] = set()
        """Clients that had a trial this period, whatever came of it."""
        self._failed: set[str] = set()
        """Clients whose trial of this period failed."""
        self._asked: set[str] | None = set()
        """Clients that asked since the breaker opened (None: more than `MAX_ASKED`)."""

    @property
    def failed(self) -> int:
        return len(self._failed)

    def reset(self) -> None:
        """The breaker opened or closed: nobody holds a trial, and who waits is asked afresh."""
        self._asked = set()
        self._holding.clear()
        self._tried.clear()
        self._failed.clear()

    def begin(self, now: float, asking: str | None = None) -> None:
        """A half-open period starts: fresh slots; trials still in flight from before no longer count.
        `asking`: the only client remembered as waiting (a fresh period after one that learned nothing)."""
        self.period += 1
        self.started_at = now
        self._holding.clear()
        self._tried.clear()
        self._failed.clear()
        if asking is not None:
            self._asked = {asking}

    def note_asking(self, client: str) -> None:
        """`client` wants a call through while the breaker is not closed."""
        asked = self._asked
        if asked is not None and client not in asked:
            if len(asked) >= MAX_ASKED:
                self._asked = None
            else:
                asked.add(client)

    def refusal(self, client: str, slots: int) -> Refusal | None:
        """Why `client` gets no trial now, or None: then it has one (counted until `finish`)."""
        if len(self._holding) + len(self._failed) >= slots:
            return "taken"
        if client in self._holding or client in self._failed:
            return "has_one"
        if client in self._tried and self._others_waiting(client):
            return "others_waiting"
        self._holding.add(client)
        self._tried.add(client)
        return None

    def finish(self, client: str, failed: bool | None, slots: int) -> Decision:
        """A trial of this period ended: True failed, False succeeded, None counted nothing."""
        self._holding.discard(client)
        if failed is None:
            return "wait"  # the slot goes to the next caller (this one again only if nobody waits)
        if not failed:
            return "close"
        self._failed.add(client)
        nobody_else = self._asked is not None and self._asked <= self._failed
        return "open" if len(self._failed) >= slots or nobody_else else "wait"

    def _others_waiting(self, client: str) -> bool:
        asked = self._asked
        return asked is None or any(other != client and other not in self._tried for other in asked)
