"""The winner decision: which candidates beat the reference (GELU), with a known error rate.

Input: for each candidate, its paired improvements over the reference, one per
seed (candidate and GELU trained with the same seed see the same
initialisation stream and batch order, so the per-seed differences carry less
noise than the two means do apart). Improvements are direction-free: positive
means better, whatever the metric (evaluators.metrics.Metric.improvement).

The decision (`winners`, `compare`):
- each candidate: a one-sided paired t-test of "mean improvement > 0"
  (scipy.stats.ttest_1samp, alternative="greater");
- across the m candidates compared with the same reference: Holm's step-down
  correction, so the familywise error rate (the chance that a study names at
  least one false winner) is at most ALPHA = 5 % whatever the candidates'
  dependence (they share GELU's runs, so they are positively correlated).
- Simulated (tests/test_search_stats.py, bench/winner_calibration.py): with 5
  candidates, as in the default (top 2 + 3 baselines against GELU), and normal
  differences, the familywise false-claim rate stays under 5 % at 3, 5 and 10
  seeds; a candidate 1.5 standard deviations better than GELU is found most of
  the time at 10 seeds.
- A candidate with fewer than 2 paired seeds, or no spread at all, cannot be
  tested: p = 1, never claimed (it still counts in Holm's m).

The interval printed beside each decision is the same test's: a t interval at
the one-sided level Holm used for that candidate (alpha / (m - k + 1) at step
k; a candidate after the first step Holm did not reject gets that step's
level). So a candidate is claimed exactly when its lower end is above 0.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

ALPHA = 0.05       # familywise error rate of the winner decision
MIN_PAIRS = 2      # a t-test needs two differences for a spread
NO_SPREAD = 1e-12  # a standard deviation this small is rounding, not spread (accuracy steps are 1e-4)


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the finite values.

    (None, None) for no values, (mean, None) for one: a single seed has no spread.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


# ---------------------------------------------------------------------------
# The two steps, on arrays (the simulations call these on many studies at once)
# ---------------------------------------------------------------------------

def one_sided_p(diffs: np.ndarray) -> np.ndarray:
    """p-values of "mean > 0" along the last axis (paired t-test); 1 where untestable."""
    from scipy.stats import ttest_1samp

    d = np.asarray(diffs, dtype=np.float64)
    if d.shape[-1] < MIN_PAIRS:
        return np.ones(d.shape[:-1])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: handled below
        p = ttest_1samp(d, 0.0, axis=-1, alternative="greater").pvalue
    sd = d.std(axis=-1, ddof=1)
    return np.where(np.isfinite(p) & (sd > NO_SPREAD), p, 1.0)


def holm(p: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm's step-down procedure along the last axis.

    Returns (rejected, adjusted p-values, the one-sided level of each
    hypothesis's interval: alpha / (m - k + 1) at its step k, capped at the
    level of the first step that is not rejected).
    """
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    order = np.argsort(p, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=-1)
    factors = m - np.arange(m)                                   # m, m-1, ..., 1
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(sorted_p * factors, axis=-1))
    rejected_sorted = adjusted_sorted <= alpha
    # the first step not rejected (m when all are): every later step shares its level
    stop = np.where(rejected_sorted.all(axis=-1), m, np.argmin(rejected_sorted, axis=-1))
    steps = np.minimum(np.arange(m), stop[..., None])
    level_sorted = alpha / (m - steps)
    inverse = np.argsort(order, axis=-1, kind="stable")
    take = (lambda a: np.take_along_axis(a, inverse, axis=-1))
    return take(rejected_sorted), take(adjusted_sorted), take(level_sorted)


# ---------------------------------------------------------------------------
# The decision for one study
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """One candidate against the reference."""

    n: int                 # paired seeds
    mean: float | None     # mean improvement (positive: better than the reference)
    sd: float | None       # standard deviation of the improvements
    p: float               # one-sided paired t-test p-value of "better" (1: untestable)
    p_holm: float          # Holm-adjusted p-value
    level: float           # one-sided level of the interval (Holm's, see the module docstring)
    low: float | None      # interval: mean -+ t(1 - level, n - 1) * sd / sqrt(n)
    high: float | None
    claimed: bool          # p_holm <= alpha: counted as beating the reference


def compare(paired_diffs: Mapping[str, Sequence[float]], alpha: float = ALPHA) -> dict[str, Comparison]:
    """Every candidate's comparison with the reference, Holm-corrected over all of them.

    paired_diffs: {label: [improvement over the reference, one per paired seed]}.
    """
    from scipy.stats import t as student_t

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    labels = list(paired_diffs)
    if not labels:
        return {}
    diffs = {}
    for label in labels:
        d = np.asarray(list(paired_diffs[label]), dtype=np.float64)
        if not np.isfinite(d).all():
            raise ValueError(f"{label}: paired differences must be finite, got {d.tolist()}")
        diffs[label] = d
    p = np.array([one_sided_p(diffs[k])[()] for k in labels])
    rejected, adjusted, level = holm(p, alpha)
    out = {}
    for i, label in enumerate(labels):
        d = diffs[label]
        n = int(d.size)
        mean = float(d.mean()) if n else None
        sd = float(d.std(ddof=1)) if n >= MIN_PAIRS else None
        low = high = None
        if sd is not None and sd > NO_SPREAD:
            half = float(student_t.ppf(1.0 - level[i], n - 1)) * sd / math.sqrt(n)
            low, high = mean - half, mean + half
        out[label] = Comparison(n=n, mean=mean, sd=sd, p=float(p[i]), p_holm=float(adjusted[i]),
                                level=float(level[i]), low=low, high=high, claimed=bool(rejected[i]))
    return out


def winners(paired_diffs: Mapping[str, Sequence[float]], alpha: float = ALPHA) -> set[str]:
    """The labels claimed to beat the reference, familywise error <= alpha (see the module docstring)."""
    return {label for label, c in compare(paired_diffs, alpha).items() if c.claimed}


__all__ = ["ALPHA", "MIN_PAIRS", "Comparison", "compare", "winners", "mean_std", "one_sided_p", "holm"]
