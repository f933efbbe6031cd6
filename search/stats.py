"""Mean +- std over seeds, and a paired bootstrap confidence interval.

Paired: a candidate and GELU trained with the same seed see the same
initialisation stream and batch order, so the per-seed *differences* carry
less noise than the two means do apart.

The interval is the percentile bootstrap of the mean difference. With few
seeds the resampling distribution is small enough to enumerate exactly
(n**n ordered resamples, up to EXACT_MAX of them), which makes the interval
deterministic and checkable by hand; beyond that, `n_resamples` seeded draws.
With n seeds the percentile interval can be no narrower than the resamples
allow: for n = 3 at 95 % it is simply [min, max] of the differences, since the
resample repeating one seed three times has probability 1/27 > 2.5 %. That is
wide: say so, and ask for more seeds.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

EXACT_MAX = 10_000   # enumerate all n**n resamples up to this many (n <= 5)


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of the finite values.

    (None, None) for no values, (mean, None) for one: a single seed has no spread.
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


@dataclass(frozen=True)
class BootstrapCI:
    mean: float        # mean of the differences
    low: float         # lower end of the interval
    high: float        # upper end
    n: int             # number of paired differences
    confidence: float  # e.g. 0.95
    exact: bool        # all resamples enumerated (True) or n_resamples drawn

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap_ci(diffs, confidence: float = 0.95, n_resamples: int = 10_000,
                        seed: int = 0) -> BootstrapCI | None:
    """Percentile-bootstrap CI of the mean of paired differences (None for no data).

    Quantiles use the inverted-CDF definition (the smallest resampled mean whose
    cumulative share reaches the level), so for small n the ends are actual
    resampled means: diffs [1, 2] give the resample means 1, 1.5, 1.5, 2 and the
    95 % interval [1, 2].
    """
    d = np.asarray(list(diffs), dtype=np.float64)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    if d.size == 0:
        return None
    if not np.isfinite(d).all():
        raise ValueError(f"paired differences must be finite, got {d.tolist()}")
    n = d.size
    exact = n ** n <= EXACT_MAX
    if exact:
        idx = np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    else:
        idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    means = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return BootstrapCI(float(d.mean()), float(low), float(high), int(n), confidence, exact)


__all__ = ["mean_std", "paired_bootstrap_ci", "BootstrapCI", "EXACT_MAX"]
