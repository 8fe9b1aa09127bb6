"""The confidence bounds the rules decide with, against figures computed by hand."""

from __future__ import annotations

import math

import pytest

from proxy.analyzer.stats import Share, wilson_bounds, wilson_lower, wilson_upper

Z = 1.645
Z2 = Z * Z  # 2.706025


def test_all_successes_give_a_lower_bound_of_n_over_n_plus_z_squared() -> None:
    # k = n: p = 1, the half-width is (z²/2n)/(1+z²/n), so the lower end is 1/(1+z²/n) = n/(n+z²).
    assert wilson_lower(8, 8) == pytest.approx(8 / (8 + Z2))
    assert wilson_lower(8, 8) == pytest.approx(0.747243, abs=1e-6)
    assert wilson_upper(8, 8) == 1.0


def test_no_successes_give_an_upper_bound_of_z_squared_over_n_plus_z_squared() -> None:
    assert wilson_upper(0, 25) == pytest.approx(Z2 / (25 + Z2))
    assert wilson_upper(0, 25) == pytest.approx(0.097669, abs=1e-6)
    assert wilson_lower(0, 25) == 0.0
    assert wilson_upper(0, 10, z=1.96) == pytest.approx(3.8416 / 13.8416)  # 0.2775, the textbook figure


def test_half_and_half() -> None:
    # 10 of 20: centre 0.5; half-width z/(1+z²/n) * sqrt(p(1-p)/n + z²/4n²) = 1.44896 * 0.119127 = 0.172609
    half = Z / (1 + Z2 / 20) * math.sqrt(0.25 / 20 + Z2 / 1600)
    low, high = wilson_bounds(10, 20)
    assert (low, high) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert low == pytest.approx(0.327391, abs=1e-6)


def test_a_small_share_of_many_calls() -> None:
    # 2 of 2000: p = 0.001; centre (0.001 + z²/4000)/(1 + z²/2000) = 0.0016742; half 0.0013433
    p, n = 2 / 2000, 2000
    centre = (p + Z2 / (2 * n)) / (1 + Z2 / n)
    half = Z / (1 + Z2 / n) * math.sqrt(p * (1 - p) / n + Z2 / (4 * n * n))
    assert wilson_lower(2, 2000) == pytest.approx(centre - half)
    assert wilson_lower(2, 2000) == pytest.approx(0.000331, abs=1e-6)  # far under any 1% floor


def test_without_data_nothing_is_claimed() -> None:
    assert wilson_bounds(0, 0) == (0.0, 1.0)
    assert not Share("x", 0, 0, "lower", 0.0).holds()
    assert not Share("x", 0, 0, "upper", 1.0).holds()


def test_a_share_holds_on_its_side_and_says_how_strongly() -> None:
    eight = Share("timed-out attempts that would complete", 8, 8, "lower", 0.5)
    assert eight.holds() and eight.proportion == 1.0
    assert eight.level == "high"  # still 8/(8+2.576²) = 0.547 >= 0.5 at one-sided 99.5%
    assert Share("x", 8, 8, "lower", 0.6).level == "medium"  # 0.547 < 0.6 at 99.5%; 8/(8+1.96²) = 0.676 at 97.5%
    assert Share("x", 8, 8, "lower", 0.7).level == "low"  # 0.747 at 95% only
    assert Share("x", 8, 8, "lower", 0.75).level == "none"
    mixed = Share("x", 10, 20, "lower", 0.5)
    assert not mixed.holds() and mixed.level == "none"
    assert Share("x", 0, 25, "upper", 0.15).holds() and not Share("x", 0, 10, "upper", 0.15).holds()
    assert eight.describe() == "timed-out attempts that would complete: 8/8 (100.0%), 95% lower bound 74.7% >= 50%"
    assert eight.to_dict() == {
        "what": "timed-out attempts that would complete", "k": 8, "n": 8, "proportion": 1.0, "side": "lower",
        "bound": 0.7472, "threshold": 0.5, "confidence": 0.95, "method": "wilson", "holds": True, "level": "high",
    }  # fmt: skip
