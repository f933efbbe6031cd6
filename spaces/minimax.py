"""Minimax rational approximations of odd functions: f(x) ~ x * P(x**2) / Q(x**2) on [0, c].

The fused float32 CPU kernels (`spaces.codegen`) evaluate a forward's tanh this way: a
few multiply-adds and one division, where the exp-based form costs an exp, a division
and a sign. `odd_rational_fit` is the rational Remez exchange that produced its
coefficients (`python -m spaces.minimax` prints them again); a test re-runs it.

Method: with N = m + n + 2 reference points x_i, the equations
    x_i P(s_i) - f(x_i) Q(s_i) = (-1)**i E Q(s_i),  s_i = x_i**2,
are a generalised eigenvalue problem for (P, Q; E); the pole-free solution with the
smallest |E| is kept, the references move to the extrema of the error on a fine
grid, until the error equi-oscillates (max |error| = |E|). Polynomials are built in
the Chebyshev basis of t = 2 s / c**2 - 1 (well conditioned) and returned in powers
of s, normalised to Q(0) = 1.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.polynomial import chebyshev as cheb
from numpy.polynomial import polynomial as poly
from scipy import linalg


def odd_rational_fit(f: Callable[[np.ndarray], np.ndarray], c: float, m: int, n: int,
                     iters: int = 60, grid: int = 200_001) -> tuple[float, list[float], list[float]]:
    """(max |x P(x^2)/Q(x^2) - f(x)| on [0, c], P's coefficients, Q's), both in powers
    of s = x^2 from s^0 up, Q[0] = 1. Degrees m of P and n of Q."""
    refs = m + n + 2
    xs = np.linspace(0.0, c, grid)[1:]

    def t_of(x):
        return 2.0 * x * x / (c * c) - 1.0

    k = np.arange(refs)
    signs = (-1.0) ** k
    xref = c * np.sqrt((1.0 - np.cos(np.pi * (k + 0.5) / refs)) / 2.0)  # Chebyshev nodes in s
    best = None
    for _ in range(iters):
        t, fx = t_of(xref), f(xref)
        tp, tq = cheb.chebvander(t, m) * xref[:, None], cheb.chebvander(t, n)
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
        err = xs * cheb.chebval(t_of(xs), p) / cheb.chebval(t_of(xs), q) - f(xs)
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
    pm, qm = _in_powers_of_s(p, c), _in_powers_of_s(q, c)
    return worst, list(pm / qm[0]), list(qm / qm[0])


def _in_powers_of_s(chebyshev_coefs: np.ndarray, c: float) -> np.ndarray:
    """Chebyshev series in t = 2 s / c^2 - 1 -> coefficients in powers of s."""
    in_t = cheb.cheb2poly(chebyshev_coefs)
    t_of_s = np.array([-1.0, 2.0 / (c * c)])
    out, power = np.zeros(1), np.array([1.0])
    for coef in in_t:
        out = poly.polyadd(out, coef * power)
        power = poly.polymul(power, t_of_s)
    return out


def main() -> None:
    for name, f, c, m, n in (("tanh", np.tanh, 9.0, 5, 3),):
        worst, p, q = odd_rational_fit(f, c, m, n)
        as_f32 = lambda cs: [float(np.float32(v)) for v in cs]  # noqa: E731
        print(f"{name} on [0, {c}], degrees ({m}, {n}): max error {worst:.2e}")
        print(f"  P = {as_f32(p)}\n  Q = {as_f32(q)}")


if __name__ == "__main__":
    main()
