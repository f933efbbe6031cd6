"""tools/minimax.py, the offline fitter of the float32 kernels' rationals, on small problems
(the stored tables' own accuracy: tests/test_kernel_forms.py)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

_spec = importlib.util.spec_from_file_location(
    "tools_minimax", Path(__file__).resolve().parents[1] / "tools" / "minimax.py")
minimax = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(minimax)


def alternations(err: np.ndarray, level: float) -> int:
    """How many times the error reaches +-level (to 1%) with alternating signs."""
    count, sign = 0, 0
    for e in err:
        if abs(e) >= 0.99 * level and np.sign(e) != sign:
            count, sign = count + 1, np.sign(e)
    return count


@pytest.mark.parametrize("f,c,m,n,odd", [(np.tanh, 3.0, 3, 2, True), (np.exp, 1.0, 2, 2, False)])
def test_rational_fit_equi_oscillates_as_a_minimax_approximation_does(f, c, m, n, odd):
    """The fitted rational's error reaches its maximum with alternating signs at least
    m + n + 2 times (the equi-oscillation that characterises the minimax rational), Q has
    no zero on [0, c] and Q(0) = 1, and the reported error is the largest on the grid."""
    worst, p, q = minimax.rational_fit(f, c, m, n, odd=odd, grid=20_001)
    x = np.linspace(0.0, c, 20_001)
    v = x * x if odd else x
    qx = np.polyval(q[::-1], v)
    err = (x if odd else 1.0) * np.polyval(p[::-1], v) / qx - f(x)
    assert q[0] == 1.0 and qx.min() > 0
    assert np.abs(err).max() == pytest.approx(worst, rel=1e-6)
    assert alternations(err, worst) >= m + n + 2


def test_exp_remainder_fit_gains_accuracy_with_degree_and_is_relative():
    """exp(r) = 1 + r + r^2 P(r) on |r| <= ln(2)/2: each degree more gains more than a
    factor 10 in relative error, and the reported error is the one the coefficients give."""
    errors = []
    h = np.log(2.0) / 2.0
    r = np.linspace(-h, h, 20_001)
    for degree in (2, 3):
        worst, p = minimax.exp_remainder_fit(degree=degree, grid=20_001)
        measured = np.abs((1 + r + r * r * np.polyval(p[::-1], r)) / np.exp(r) - 1).max()
        assert measured == pytest.approx(worst, rel=1e-3)
        errors.append(worst)
    assert errors[1] < errors[0] / 10
