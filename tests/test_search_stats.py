"""search.stats: mean +- std over seeds and the paired bootstrap CI, checked by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from search.stats import EXACT_MAX, mean_std, paired_bootstrap_ci


def test_mean_std_uses_the_sample_std_and_skips_missing_values():
    mean, std = mean_std([0.80, 0.82, None, 0.84, float("nan")])
    assert mean == pytest.approx(0.82)
    assert std == pytest.approx(0.02)  # sqrt(((-.02)^2 + 0 + .02^2) / 2)
    assert mean_std([0.9]) == (0.9, None)  # one seed has no spread
    assert mean_std([]) == (None, None)


def test_two_seeds_by_hand():
    # Resamples of [1, 2] (ordered): (1,1) (1,2) (2,1) (2,2) -> means 1, 1.5, 1.5, 2.
    # 2.5 % quantile: the smallest mean with cumulative share >= 0.025 is 1; 97.5 %: 2.
    ci = paired_bootstrap_ci([1.0, 2.0])
    assert ci.exact and ci.n == 2
    assert (ci.mean, ci.low, ci.high) == (1.5, 1.0, 2.0)
    # At 40 % confidence the 30 % / 70 % quantiles: shares 1/4, 3/4, 1 -> 1.5 and 1.5.
    ci = paired_bootstrap_ci([1.0, 2.0], confidence=0.4)
    assert (ci.low, ci.high) == (1.5, 1.5)


def test_three_seeds_give_the_range_of_the_differences():
    # 27 resamples; (d_min, d_min, d_min) alone has share 1/27 = 3.7 % > 2.5 %,
    # so the 95 % interval is [min, max] of the differences: wide, as the report says.
    ci = paired_bootstrap_ci([0.004, -0.002, 0.010])
    assert ci.low == pytest.approx(-0.002) and ci.high == pytest.approx(0.010)
    assert ci.mean == pytest.approx(0.004)
    assert not ci.excludes_zero
    assert paired_bootstrap_ci([0.01, 0.02, 0.03]).excludes_zero


def test_many_seeds_draw_seeded_resamples_like_numpy_does():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.0, 0.4, 0.1, 0.25])
    assert len(d) ** len(d) > EXACT_MAX
    ci = paired_bootstrap_ci(d, n_resamples=10_000, seed=7)
    idx = np.random.default_rng(7).integers(0, len(d), size=(10_000, len(d)))
    low, high = np.quantile(d[idx].mean(axis=1), [0.025, 0.975], method="inverted_cdf")
    assert not ci.exact
    assert (ci.low, ci.high) == (low, high)
    assert ci.low < d.mean() < ci.high
    assert paired_bootstrap_ci(d, seed=7) == ci  # seeded: the same interval every time


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_differences_are_refused_not_averaged(bad):
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_ci([0.1, bad, 0.2])


def test_no_pairs_give_no_interval_and_bad_settings_are_refused():
    assert paired_bootstrap_ci([]) is None
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci([1.0], confidence=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap_ci([1.0], n_resamples=0)
