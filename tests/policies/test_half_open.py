"""Half-open trial bookkeeping on its own: who gets a trial, and what its outcome decides."""

from __future__ import annotations

from proxy.policies.half_open import MAX_ASKED, TrialPeriod


def period(*asking: str) -> TrialPeriod:
    trials = TrialPeriod()
    for client in asking:
        trials.note_asking(client)
    trials.begin(0.0)
    return trials


def test_each_slot_goes_to_a_different_client() -> None:
    trials = period("a", "b", "c")
    assert [trials.refusal(c, 2) for c in ("a", "a", "b", "c")] == [None, "has_one", None, "taken"]


def test_first_success_closes_all_slots_failing_opens() -> None:
    trials = period("a", "b", "c")
    trials.refusal("a", 2)
    trials.refusal("b", 2)
    assert trials.finish("a", True, 2) == "wait"  # c asked and has not tried: wait for it
    assert trials.finish("b", True, 2) == "open"  # both slots failed
    trials.begin(1.0)
    trials.refusal("c", 2)
    assert trials.finish("c", False, 2) == "close"


def test_nobody_else_waiting_opens_at_once() -> None:
    trials = period("a")
    trials.refusal("a", 3)
    assert trials.finish("a", True, 3) == "open"


def test_a_trial_that_learned_nothing_gets_another_only_when_nobody_waits() -> None:
    trials = period("a")
    trials.refusal("a", 1)
    assert trials.finish("a", None, 1) == "wait"
    assert trials.refusal("a", 1) is None  # alone: it may try again
    trials.finish("a", None, 1)
    trials.note_asking("b")
    assert trials.refusal("a", 1) == "others_waiting"
    assert trials.refusal("b", 1) is None


def test_past_max_asked_others_are_assumed_to_wait() -> None:
    trials = period(*(f"c{n}" for n in range(MAX_ASKED + 1)))
    trials.refusal("c0", 1)
    trials.finish("c0", None, 1)
    assert trials.refusal("c0", 1) == "others_waiting"
    trials.refusal("c1", 1)
    assert trials.finish("c1", True, 1) == "open"  # every slot failed
