"""Minimax rational approximations on [0, c] (and exp's polynomial), for the fused
float32 kernels: an offline tool, not part of the engine.

The fused float32 CPU kernels (`spaces.kernels.forms`, `spaces.kernels.float32_ops`)
evaluate tanh and erf through rationals fitted here (`python -m tools.minimax` prints
their coefficients again; tests/test_kernel_forms.py checks the stored ones' accuracy,
tests/test_tools_minimax.py this fitter on small problems):
- forwards: tanh(u) ~ u * P(u**2) / Q(u**2), an odd rational (`odd=True`): relatively
  accurate near 0, a few multiply-adds and one division where the exp-based form costs
  an exp, a division and a sign;
- erf(u) ~ u * P(u**2) / Q(u**2) the same way, for kernels that need no Gaussian
  exp(-u**2) of their own (a gelu forward): no exp;
- backwards whose sensitivity to tanh is free of x: 1 - tanh(a) ~ P(a) / Q(a), a = |u|
  (`odd=False`). It gives tanh' = T (2 - T) and tanh = 1 - T with no cancellation where
  tanh is near 1, which 1 - (odd rational)**2 suffers (7e-7 off in float32).

Method (rational Remez exchange): with N = m + n + 2 reference points x_i, the equations
    R_P(x_i) - f(x_i) Q(v_i) = (-1)**i E Q(v_i)
(R_P(x) = x P(x**2), v = x**2 when odd; R_P = P, v = x otherwise) are a generalised
eigenvalue problem for (P, Q; E); the pole-free solution with the smallest |E| is kept,
the references move to the extrema of the error on a fine grid, until the error
equi-oscillates (max |error| = |E|). Polynomials are built in the Chebyshev basis of
t = 2 v / v_max - 1 (well conditioned) and returned in powers of v, normalised to Q(0) = 1.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.polynomial import chebyshev as cheb
from numpy.polynomial import polynomial as poly
from scipy import linalg


def rational_fit(f: Callable[[np.ndarray], np.ndarray], c: float, m: int, n: int, *, odd: bool,
                 iters: int = 80, grid: int = 200_001) -> tuple[float, list[float], list[float]]:
    """(max |R(x) - f(x)| on [0, c], P's coefficients, Q's) for the minimax rational R of
    degrees m (P) and n (Q): R(x) = x P(x^2)/Q(x^2) if `odd`, else P(x)/Q(x).
    Coefficients in powers of the polynomials' variable (x^2 or x) from the constant
    up, Q[0] = 1."""
    refs = m + n + 2
    xs = np.linspace(0.0, c, grid)[1 if odd else 0:]  # an odd R is exact at 0

    def var(x):
        return x * x if odd else x

    v_max = var(c)

    def t_of(x):
        return 2.0 * var(x) / v_max - 1.0

    def evaluate(x, p, q):
        return (x if odd else 1.0) * cheb.chebval(t_of(x), p) / cheb.chebval(t_of(x), q)

    k = np.arange(refs)
    signs = (-1.0) ** k
    nodes = (1.0 - np.cos(np.pi * (k + 0.5) / refs)) / 2.0  # Chebyshev nodes of [0, 1] in v
    xref = c * (np.sqrt(nodes) if odd else nodes)
    best = None
    for _ in range(iters):
        t, fx = t_of(xref), f(xref)
        tp, tq = cheb.chebvander(t, m) * (xref[:, None] if odd else 1.0), cheb.chebvander(t, n)
        a = np.hstack([tp, -fx[:, None] * tq])
        b = np.hstack([np.zeros_like(tp), signs[:, None] * tq])
        values, vectors = linalg.eig(a, b)
        solutions = []
        for e, v in zip(values, vectors.T):
            if not np.isfinite(e) or abs(e.imag) > 1e-12 * max(1.0, abs(e.real)):
                continue
            p, q = v.real[:m + 1], v.real[m + 1:]
            qg = cheb.chebval(t_of(xs), q)
            if np.all(qg > 0) or np.all(qg < 0):  # no pole on [0, c]
                solutions.append((abs(e.real), p / q[0], q / q[0]))
        if not solutions:
            raise RuntimeError(f"no pole-free ({m}, {n}) approximation found")
        level, p, q = min(solutions, key=lambda s: s[0])
        err = evaluate(xs, p, q) - f(xs)
        worst = float(np.abs(err).max())
        if best is None or worst < best[0]:
            best = (worst, p, q)
        if worst <= level * (1 + 1e-6):
            break  # equi-oscillation: this is the minimax approximation
        sign = np.where(err >= 0, 1, -1)
        runs = np.split(np.arange(len(xs)), np.nonzero(np.diff(sign))[0] + 1)
        extrema = [r[np.argmax(np.abs(err[r]))] for r in runs]
        while len(extrema) > refs:  # drop the smaller end until N alternating points remain
            extrema = extrema[1:] if abs(err[extrema[0]]) < abs(err[extrema[-1]]) else extrema[:-1]
        if len(extrema) < refs:
            raise RuntimeError(f"error alternates only {len(extrema)} times, need {refs}")
        xref = xs[extrema]
    worst, p, q = best
    pm, qm = _in_powers(p, v_max), _in_powers(q, v_max)
    return worst, list(pm / qm[0]), list(qm / qm[0])


def odd_rational_fit(f: Callable[[np.ndarray], np.ndarray], c: float, m: int, n: int,
                     **kwargs) -> tuple[float, list[float], list[float]]:
    """`rational_fit(..., odd=True)`: f(x) ~ x P(x^2)/Q(x^2), coefficients in powers of x^2."""
    return rational_fit(f, c, m, n, odd=True, **kwargs)


def _in_powers(chebyshev_coefs: np.ndarray, v_max: float) -> np.ndarray:
    """Chebyshev series in t = 2 v / v_max - 1 -> coefficients in powers of v."""
    in_t = cheb.cheb2poly(chebyshev_coefs)
    t_of_v = np.array([-1.0, 2.0 / v_max])
    out, power = np.zeros(1), np.array([1.0])
    for coef in in_t:
        out = poly.polyadd(out, coef * power)
        power = poly.polymul(power, t_of_v)
    return out


def tanh_complement(a: np.ndarray) -> np.ndarray:
    """1 - tanh(a) = 2 / (1 + exp(2a)) for a >= 0, without cancellation."""
    return 2.0 / (1.0 + np.exp(2.0 * a))


def exp_remainder_fit(degree: int = 4, iters: int = 30,
                      grid: int = 200_001) -> tuple[float, list[float]]:
    """(max relative error of exp, coefficients) of the polynomial P, in powers of r
    from r^0 up, with exp(r) ~ 1 + r + r^2 P(r) on |r| <= ln(2)/2 (the reduced range of
    a float32 exp). Weighted least squares in the Chebyshev basis, reweighted by the
    error (Lawson's iteration) towards the minimax polynomial of the relative error."""
    h = np.log(2.0) / 2.0
    r = np.linspace(-h, h, grid)
    r = r[r != 0.0]
    g = (np.expm1(r) - r) / (r * r)
    w = np.ones_like(r)
    for _ in range(iters):
        coefs = cheb.chebfit(r / h, g, degree, w=np.sqrt(w))
        err = (1.0 + r + r * r * cheb.chebval(r / h, coefs)) / np.exp(r) - 1.0
        w = w * (np.abs(err) / np.abs(err).max() + 1e-3)
        w /= w.mean()
    in_r = cheb.cheb2poly(coefs) / h ** np.arange(degree + 1)
    return float(np.abs(err).max()), list(in_r)


def erf(u: np.ndarray) -> np.ndarray:
    """erf, from scipy (float64)."""
    from scipy import special

    return special.erf(u)


def log1p_ratio(y: np.ndarray) -> np.ndarray:
    """log(1 + y) / y, 1 at y = 0: softplus(a) = max(a, 0) + y log1p_ratio(y) with
    y = exp(-|a|) in [0, 1], relatively accurate for tiny y."""
    y = np.asarray(y, dtype=float)
    safe = np.where(y == 0.0, 1.0, y)
    return np.where(y == 0.0, 1.0, np.log1p(safe) / safe)


# (name, f, c, m, n, odd): the fits the stored tables of spaces.kernels come from
FITS = (("tanh", np.tanh, 9.0, 5, 3, True),
        ("erf", erf, 4.0, 6, 4, True),
        ("1 - tanh", tanh_complement, 9.0, 5, 7, False),
        ("log(1 + y)/y", log1p_ratio, 1.0, 2, 3, False))


def main() -> None:
    for name, f, c, m, n, odd in FITS:
        worst, p, q = rational_fit(f, c, m, n, odd=odd)
        as_f32 = lambda cs: [float(np.float32(v)) for v in cs]  # noqa: E731
        form = "x P(x^2)/Q(x^2)" if odd else "P(x)/Q(x)"
        print(f"{name} on [0, {c}] as {form}, degrees ({m}, {n}): max error {worst:.2e}")
        print(f"  P = {as_f32(p)}\n  Q = {as_f32(q)}")
    worst, p = exp_remainder_fit()
    print(f"exp(r) = 1 + r + r^2 P(r) on |r| <= ln(2)/2, degree {len(p) - 1}: max relative error {worst:.2e}")
    print(f"  P = {[float(np.float32(v)) for v in p]}")


if __name__ == "__main__":
    main()
