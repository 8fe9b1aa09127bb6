"""A proposal's estimate against the replayed figures: which keys are compared, and the tolerance."""

from __future__ import annotations

from proxy.trials import Figures, Tally
from proxy.trials.compare import compare


def figures(**change: tuple[int, int]) -> Figures:
    before = Tally(**{name: pair[0] for name, pair in change.items()})
    after = Tally(**{name: pair[1] for name, pair in change.items()})
    return Figures(before, after)


def test_a_matching_estimate_is_reproduced_and_a_distant_one_is_not() -> None:
    assert compare({"would_complete": 25, "timed_out": 25}, figures(timeouts=(25, 0))).status == "reproduced"
    missed = compare({"would_complete": 25}, figures(timeouts=(25, 15)))
    assert missed.status == "not_reproduced"
    assert missed.text.startswith("not reproduced (replayed 10 vs estimated 25 for would_complete;")


def test_each_comparable_key_reads_its_own_figure() -> None:
    numbers = {"would_succeed": 12, "attempts_saved": 40, "would_be_served": 3}
    result = compare(numbers, figures(errors=(20, 8), attempts=(100, 60), served_stale=(5, 8)))
    assert [(e.key, e.replayed) for e in result.estimates] == [("would_succeed", 12), ("attempts_saved", 40), ("would_be_served", 3)]
    assert result.status == "reproduced"


def test_the_tolerance_is_one_call_or_ten_percent() -> None:
    assert compare({"would_succeed": 5}, figures(errors=(6, 0))).status == "reproduced"
    assert compare({"would_succeed": 5}, figures(errors=(7, 0))).status == "not_reproduced"
    assert compare({"would_succeed": 100}, figures(errors=(110, 0))).status == "reproduced"
    assert compare({"would_succeed": 100}, figures(errors=(111, 0))).status == "not_reproduced"


def test_numbers_a_replay_does_not_measure_leave_nothing_to_compare() -> None:
    result = compare({"http_429": 20, "rate": 5, "would_complete": True}, figures(errors=(1, 0)))
    assert (result.status, result.estimates) == ("no_estimate", ())
    assert result.text.startswith("no estimate to compare")
