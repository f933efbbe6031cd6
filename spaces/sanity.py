"""The sanity filter: reject hopeless candidates before any training time is spent."""
from __future__ import annotations

import numpy as np

WIDE = np.linspace(-20.0, 20.0, 4001)    # must be finite here
NARROW = np.linspace(-5.0, 5.0, 1001)    # must stay below EXPLODE here
EXPLODE = 1e4
CONSTANT_TOL = 1e-6                      # max-min below this on WIDE counts as constant


def sanity_check(candidate) -> str | None:
    """None when `candidate` may be trained, else the reason it is rejected.

    Rejected: NaN/inf values or derivatives on [-20, 20] (at the initial
    coefficient values), a constant function, or |f(x)| > 1e4 on [-5, 5].
    """
    try:
        with np.errstate(all="ignore"):
            f = candidate.evaluate(WIDE)
            df = candidate.evaluate(WIDE, derivative=True)
    except (ValueError, RuntimeError, ZeroDivisionError, OverflowError) as e:
        return f"cannot be evaluated: {e}"
    bad = ~np.isfinite(f)
    if bad.any():
        return f"not finite on [-20, 20] (e.g. f({WIDE[bad][0]:g}) = {f[bad][0]})"
    bad = ~np.isfinite(df)
    if bad.any():
        return f"derivative not finite on [-20, 20] (e.g. at x = {WIDE[bad][0]:g})"
    if np.ptp(f) < CONSTANT_TOL:
        return f"constant on [-20, 20] (f = {f[0]:g})"
    near = np.abs(f[np.abs(WIDE) <= 5.0])
    if near.max() > EXPLODE:
        return f"explodes: |f(x)| reaches {near.max():.3g} > {EXPLODE:g} on [-5, 5]"
    return None
