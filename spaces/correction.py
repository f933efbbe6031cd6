"""EAFO corrections: the direction in which to move an activation to change its output entropy.

Setting. X ~ N(0, sigma^2) with density p, Y = f(X) with density q (the branches of a
non-monotone f summed), H = -integral q log q. Along f -> f + e k,

    dH/de = -E[k(X) (log q)'(f(X))] = integral k(x) h(x) dx,   h(x) = -p(x) (log q)'(f(x)),

so h is the gradient of H in L2(dx): it raises H fastest among corrections of equal
L2 norm (Sun et al., ICLR 2025, move the inverse instead; see "paper" below). For an
increasing invertible f (inverse y, q(u) = p(y(u)) y'(u)), substituting y' = 1/f' and
y'' = -f''/f'^3 gives

    h(x) = p(x) (x / sigma^2 + f''(x) / f'(x)) / f'(x)          (`functional_gradient`)

and for f = x it is x p(x) / sigma^2, CRReLU's term.

`correction(base, sigma)` returns one of two forms, and `correction_kind` says which:

"paper": the base is invertible apart from flat regions (relu, leaky_relu, prelu, elu,
    celu, selu, softplus, tanh, sigmoid, identity, and any formula with the same
    property), and f''/f' stays bounded. The paper's own correction: Sun et al. perturb
    the inverse, g = y + eps * eta, which to first order moves f by -f' eta; the steepest
    eta in L2(du) gives

        correction(f) = sign(f') exp(-x^2 / (2 sigma^2)) (x + sigma^2 f''/f'),

    = sigma^3 sqrt(2 pi) |f'| h: the gradient in the paper's geometry (perturb each
    output's preimage), the same sign as h everywhere, so it also raises H. It is 0 on a
    flat branch (ReLU's x < 0): an atom has no inverse to perturb, and spreading it is
    no first-order step (from an atom's H = -infinity any spread raises H, whatever its
    sign). At sigma = 1, ``correction("relu")`` is x exp(-x^2/2) on x > 0 and 0 below,
    ``correction("identity")`` and ``correction("leaky_relu")`` are x exp(-x^2/2) on the
    whole line. The paper's CRReLU, relu(x) + eps x exp(-x^2/2) with eps = 0.01
    learnable, applies the identity's term to ReLU on the whole line, spreading the atom
    into a small negative lobe: that is the paper's choice, kept exactly as the `crrelu`
    baseline and space, not derived here. Where f'' jumps (ELU at 0), the correction
    jumps with it, as the pointwise formula says (by sigma^2 for ELU).

"projected": everything else, i.e. f folds (f' changes sign: gelu, gelu_tanh, silu,
    mish, hardswish, abs) or f''/f' has a pole (squared_relu, star_relu at 0, x**3).
    The paper gives no correction here, and neither does h: at a fold x0 (f' = 0) the
    density q has a 1/sqrt singularity, (log q)'(u) ~ -1/(2 (u - u0)), so
    h ~ p(x0) / (f''(x0) (x - x0)^2). That is not a function but a distribution (the
    Hadamard finite part; with it, dH/de along a smooth k is finite: a fold moved as a
    whole costs no entropy). Its coefficients on the Hermite functions psi_n do not
    decay (|<h, psi_n>| ~ 2-4 up to n = 14 for GELU and SiLU), so no L2 direction is
    steepest. This engine's generalisation takes the steepest direction in the metric
    sum_n (2n + 1)^2 a_n^2 (the squared harmonic-oscillator energy, a Hermite-Sobolev
    norm of order 2), which turns the fold's distribution into a bounded continuous
    function:

        correction(f) = w(x) sum_{n <= 8} a_n psi_n(x / sigma),   a_n = g_n / (2n + 1)^2,
        g_n = dH/de along w psi_n,

    rescaled to the L2 norm of x exp(-x^2 / (2 sigma^2)) (a step of eps means the same
    size as CRReLU's). g_n is measured on the entropy estimator itself (central
    differences, step 1e-3 of the output's std, where H is linear in e to a few %), so the
    finite part at folds and the branch sum in q are exactly those of the estimator the
    scores use. dH/d(eps) = sum g_n^2 / (2n + 1)^2 > 0 by construction. Truncating at
    n = 8 keeps the polynomial float32-friendly and is within 5% (L2) of n = 24 for GELU,
    2% for SiLU and Mish (measured with w = 1). The weight w makes the correction
    relative to the levels where f carries no information: w = prod_k (f - c_k) over
    the values c_k of f's atoms (hardswish and squared_relu at 0, star_relu at its
    bias) and of its finite limits at -inf and +inf (GELU, SiLU, Mish: 0), w = 1 with
    none. So atoms stay atoms, the correction is continuous, and in a tail where f
    decays as fast as the Gaussian window (GELU's x Phi(x)) the perturbation stays
    small relative to f: with w = 1 it was not, and the far tail's pile-up just below
    0 made GELU's and its tanh approximation's corrections differ by 0.3; with w = f
    they agree to 0.03.

Sign convention for both: eps > 0 raises the output entropy (towards the WAFBC), eps < 0
is the EAFO descent step that lowers it. `spaces.eafo` holds the entropy itself.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import sympy as sp

from spaces import eafo
from spaces.candidate import Candidate
from spaces.functions import ACTIVATION_FUNCTIONS, X

# Grid on which branch properties are checked (sign changes of f', finiteness), in
# units of max(1, sigma).
CHECK_HALF_WIDTH = 50.0
CHECK_POINTS = 10001
# A monotone f' that touches zero (x**3 at 0) gives f''/f' a pole; the grid may miss the
# pole itself but not its neighbourhood: |f''/f'| > 100 means f' changes by a factor e
# within 0.01 in x, as good as a zero. Smooth monotone bases stay below 2 (tanh: 2 tanh x).
RATIO_MAX = 100.0

# The projected form: Hermite functions psi_0..psi_MAX_DEGREE, Sobolev order 2.
MAX_DEGREE = 8
SOBOLEV_ORDER = 2
# Central-difference step for g_n, relative to the output's std (for a unit-sup basis
# function). H is linear in e from about 3e-4 to 3e-2 of the output's scale on GELU and
# SiLU; below 1e-4 the estimator's own error (~1e-5 nats) dominates the difference.
FD_STEP = 1e-3
# Significant digits of the projected form's coefficients in the formula.
DIGITS = 6

KINDS = ("paper", "projected")

# Named functions whose elementary form has branches (relu, step, leaky_relu, elu, ...):
# these are expanded into Piecewise to find branches; smooth ones (gelu, silu, mish,
# softplus, sigmoid) stay named, so the code generator keeps their stable torch kernels.
_BRANCHED = tuple(cls for cls in ACTIVATION_FUNCTIONS.values()
                  if cls.elementary(X).has(sp.Piecewise))


def correction(base, sigma: float = 1.0) -> sp.Expr:
    """Direction of the first-order EAFO correction of `base` at input std `sigma`.

    base: a base name, a sympy expression in x, or a Candidate (at its initial values).
    Returns an expression in x that the code generator compiles; ``base + eps *
    correction(base, sigma)`` raises the output entropy of N(0, sigma^2) inputs for small
    eps > 0 and lowers it for eps < 0. Which of the module docstring's two forms it is:
    `correction_kind(base)`. Cached per (base, sigma); the projected form takes about
    0.1-0.3 s the first time (18 entropy evaluations).
    """
    sigma = eafo._positive(sigma, "sigma")
    return _correction(eafo._as_expr(base), sigma)


def correction_kind(base, sigma: float = 1.0) -> str:
    """"paper" (the paper's closed form) or "projected" (this engine's generalisation)."""
    sigma = eafo._positive(sigma, "sigma")
    return _classify(eafo._as_expr(base), sigma)[0]


def functional_gradient(base, sigma: float = 1.0) -> sp.Expr:
    """h = -p(x) (log q)'(f(x)), the L2 gradient of H, for a base of kind "paper":

        h(x) = p(x) (x / sigma^2 + f''/f') / f'   on each non-flat branch, 0 on flat ones.

    For the other kind h is a distribution at the folds, not a function: ValueError.
    (`correction` is sigma^3 sqrt(2 pi) |f'| h for these bases.)
    """
    sigma = eafo._positive(sigma, "sigma")
    expr = eafo._as_expr(base)
    kind, branches = _classify(expr, sigma)
    if kind != "paper":
        raise ValueError(f"{expr} folds or has a pole in f''/f': its entropy gradient is not "
                         "a function there (see spaces.correction); correction() projects it")
    s2 = sp.Float(sigma) ** 2
    p = sp.exp(-X**2 / (2 * s2)) / (sp.Float(sigma) * sp.sqrt(2 * sp.pi))
    pieces = [(sp.Integer(0) if d1 is None else p * (X / s2 + ratio) / d1, cond)
              for _, cond, d1, ratio, _ in branches]
    return pieces[0][0] if len(pieces) == 1 else sp.Piecewise(*pieces)


# ---- classification ---------------------------------------------------------------------
@lru_cache(maxsize=256)
def _classify(expr: sp.Expr, sigma: float):
    """("paper", branches) or ("projected", None).

    branches: (g, cond, f', f''/f' simplified, sign of f') per branch; f' is None on a flat
    branch. "paper" needs every non-flat branch's f' to keep one sign, the same sign on
    all branches, f not to step back where branches meet (abs(x) folds at 0 although each
    branch is monotone), and f''/f' finite and at most RATIO_MAX on the check grid.
    """
    grid = np.linspace(-1, 1, CHECK_POINTS) * CHECK_HALF_WIDTH * max(1.0, sigma)
    branches = _branches(expr)
    masks = _regions([cond for _, cond in branches], grid)
    out, signs = [], set()
    for (g, cond), mask in zip(branches, masks):
        d1 = sp.diff(g, X)
        if d1.is_zero:
            out.append((g, cond, None, None, 0))
            continue
        xs = grid[mask]
        slope = _values(d1, xs) if xs.size else np.array([1.0])
        if (slope == 0).all():
            out.append((g, cond, None, None, 0))
            continue
        if (slope > 0).any() and (slope < 0).any():
            return "projected", None
        ratio = sp.cancel(sp.diff(d1, X) / d1)
        r = _values(ratio, xs) if xs.size else np.zeros(1)
        if not (np.isfinite(r).all() and np.abs(r).max() <= RATIO_MAX):
            return "projected", None
        sign = 1 if (slope > 0).any() else -1
        signs.add(sign)
        out.append((g, cond, d1, ratio, sign))
    if len(signs) > 1:
        return "projected", None
    with np.errstate(all="ignore"):
        ys = Candidate.from_expr(expr).evaluate(grid)
    steps = np.diff(ys) * (signs.pop() if signs else 1)
    if (steps < -1e-9 * (grid[1] - grid[0])).any():
        return "projected", None  # a jump back, or branches that meet in a fold
    return "paper", tuple(out)


def _branches(expr: sp.Expr) -> list[tuple[sp.Expr, sp.Basic]]:
    """(expression, condition) per branch, first match wins, last condition True."""
    e = expr.replace(lambda a: isinstance(a, _BRANCHED),
                     lambda a: type(a).elementary(a.args[0]))
    e = sp.piecewise_fold(e.rewrite(sp.Piecewise))  # Max, Min, Abs, Heaviside too
    if not isinstance(e, sp.Piecewise):
        return [(expr, sp.true)]  # smooth: keep the named functions as they were
    kept, seen = [], sp.EmptySet
    for g, cond in e.args:
        try:
            where = cond.as_set().intersect(sp.S.Reals)
            region = where - seen
            seen = seen | where
            negligible = region.is_empty or region.measure == 0
        except (NotImplementedError, TypeError, ValueError):
            negligible = False  # a condition sympy cannot solve: keep it, judge it numerically
        if negligible:
            continue  # empty or measure-zero branch (e.g. x == 0 of Heaviside): irrelevant
        kept.append((g, cond))
    if not kept:
        raise ValueError(f"{expr} has no branch of positive measure")
    # If the default branch was dropped (measure zero), the last kept one becomes default.
    kept[-1] = (kept[-1][0], sp.true)
    return kept


def _regions(conds: list, grid: np.ndarray) -> list[np.ndarray]:
    """Boolean mask over `grid` of each branch's region (first match wins)."""
    taken = np.zeros(grid.shape, dtype=bool)
    masks = []
    for cond in conds:
        hit = np.broadcast_to(np.asarray(sp.lambdify(X, cond, "numpy")(grid), dtype=bool),
                              grid.shape)
        masks.append(hit & ~taken)
        taken |= hit
    return masks


def _values(expr: sp.Expr, xs: np.ndarray) -> np.ndarray:
    # Through the same generated torch code that training will run.
    with np.errstate(all="ignore"):
        return Candidate.from_expr(expr).evaluate(xs)


# ---- the two forms ----------------------------------------------------------------------
@lru_cache(maxsize=256)
def _correction(expr: sp.Expr, sigma: float) -> sp.Expr:
    kind, branches = _classify(expr, sigma)
    if kind == "projected":
        return _projected(expr, sigma)
    s2 = sp.Float(sigma) ** 2 if sigma != 1.0 else sp.Integer(1)
    gauss = sp.exp(-X**2 / (2 * s2))
    pieces = [(sp.Integer(0) if d1 is None else sign * gauss * (X + s2 * ratio), cond)
              for _, cond, d1, ratio, sign in branches]
    if len(pieces) == 1:
        return pieces[0][0]
    return sp.Piecewise(*pieces)  # merges neighbouring equal pieces (leaky_relu -> one)


def hermite_functions(z: np.ndarray, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """psi_0..psi_n_max (orthonormal in L2(dz)) and their derivatives at z, by the stable
    three-term recurrence: psi_{n+1} = sqrt(2/(n+1)) z psi_n - sqrt(n/(n+1)) psi_{n-1},
    psi_n' = sqrt(n/2) psi_{n-1} - sqrt((n+1)/2) psi_{n+1}."""
    psi = np.zeros((n_max + 2,) + z.shape)
    psi[0] = math.pi ** -0.25 * np.exp(-z**2 / 2)
    psi[1] = math.sqrt(2) * z * psi[0]
    for n in range(1, n_max + 1):
        psi[n + 1] = math.sqrt(2 / (n + 1)) * z * psi[n] - math.sqrt(n / (n + 1)) * psi[n - 1]
    d = np.empty((n_max + 1,) + z.shape)
    d[0] = -z * psi[0]
    for n in range(1, n_max + 1):
        d[n] = math.sqrt(n / 2) * psi[n - 1] - math.sqrt((n + 1) / 2) * psi[n + 1]
    return psi[:n_max + 1], d


class _Perturbed:
    """f + e w psi_n(x / sigma) as numbers, for the entropy estimator: no formula and no
    code generation per direction. f, f', w and psi on the estimator's main grid are
    computed once (`_Directions`); only its refined sub-cells are evaluated anew."""

    def __init__(self, directions: "_Directions", n: int, e: float):
        self.d, self.n, self.e = directions, n, e

    def evaluate(self, xs, derivative: bool = False):
        d = self.d
        if xs is d.mids:  # the estimator's cached grid array itself
            f, df, w, dw, psi, dpsi = d.on_grid
        else:
            f, df, w, dw, psi, dpsi = d.at(np.asarray(xs, dtype=np.float64), self.n)
        if derivative:
            return df + self.e * (dw * psi[self.n] + w * dpsi[self.n] / d.sigma)
        return f + self.e * w * psi[self.n]


class _Directions:
    """The base f, its weight w = prod_k (f - c_k) over its levels c_k (`_levels`; w = 1
    without any) and the Hermite functions psi_n(x / sigma), at any points."""

    def __init__(self, base: Candidate, levels: list[float], sigma: float, n_max: int):
        self.base, self.levels, self.sigma, self.n_max = base, levels, sigma, n_max
        _, self.mids, _ = eafo._grid(sigma)
        self.on_grid = self.at(self.mids, n_max)

    def at(self, xs: np.ndarray, n: int):
        with np.errstate(all="ignore"):
            f, df = self.base.evaluate(xs), self.base.evaluate(xs, derivative=True)
        w, dw = np.ones_like(xs), np.zeros_like(xs)
        if self.levels:
            factors = [f - c for c in self.levels]
            w = np.prod(factors, axis=0)
            dw = sum(np.prod(factors[:i] + factors[i + 1:], axis=0) for i in range(len(factors))) * df
        psi, dpsi = hermite_functions(xs / self.sigma, n)
        return f, df, w, dw, psi, dpsi


def _levels(base: Candidate, sigma: float) -> list[float]:
    """The values where f carries no information: its atoms (flat regions, mass above
    tail underflow) and its finite limits at -inf and +inf (GELU, SiLU, Mish -> 0 on the
    left), each once."""
    law = eafo.output_law(base, sigma)
    levels = [float(c) for c, m in zip(law.atom_values, law.atom_masses) if m > eafo.UNDERFLOW_MASS]
    far = np.array([-2e3, -1e3, 1e3, 2e3]) * max(1.0, sigma)
    with np.errstate(all="ignore"):
        ends = base.evaluate(far)
    for a, b in ((ends[0], ends[1]), (ends[3], ends[2])):
        if np.isfinite(a) and np.isfinite(b) and abs(a - b) <= 1e-12 * (1 + abs(b)) \
                and abs(b) < 1e6 and not any(math.isclose(b, c, abs_tol=1e-12) for c in levels):
            levels.append(float(b) + 0.0)
    return levels


def _projected(expr: sp.Expr, sigma: float) -> sp.Expr:
    base = Candidate.from_expr(expr)
    levels = _levels(base, sigma)
    d = _Directions(base, levels, sigma, MAX_DEGREE)
    _, mids, mass = eafo._grid(sigma)
    f, _, w_grid, _, psi, _ = d.on_grid
    spread = math.sqrt(float(np.dot(mass, (f - np.dot(mass, f)) ** 2)))
    g = np.empty(MAX_DEGREE + 1)
    for n in range(MAX_DEGREE + 1):
        e = FD_STEP * spread / np.abs(w_grid * psi[n]).max()
        up, down = (eafo.output_entropy(_Perturbed(d, n, s * e), sigma, "histogram")
                    for s in (1, -1))
        g[n] = (up - down) / (2 * e)
    if not np.isfinite(g).all():
        raise ValueError(f"the output entropy of {expr} is not finite near N(0, {sigma}^2) "
                         "inputs: no correction")
    a = g / (2 * np.arange(MAX_DEGREE + 1) + 1) ** SOBOLEV_ORDER
    # Normalise to the L2(dx) norm of x exp(-x^2 / (2 sigma^2)): sqrt(sqrt(pi) sigma^3 / 2).
    h = mids[1] - mids[0]
    norm = math.sqrt(float(np.sum((w_grid * (a @ psi)) ** 2)) * h)
    a *= math.sqrt(math.sqrt(math.pi) * sigma**3 / 2) / norm
    # sum_n a_n psi_n(z) = exp(-z^2/2) P(z), P from the physicists' Hermite polynomials.
    z = sp.Symbol("z")
    poly = sum(sp.Float(a[n]) * sp.hermite(n, z) /
               sp.sqrt(sp.Integer(2)**n * sp.factorial(n) * sp.sqrt(sp.pi)) for n in range(len(a)))
    coeffs = sp.Poly(sp.expand(poly.subs(z, X / sp.Float(sigma))), X).all_coeffs()[::-1]
    p = sum(sp.Float(f"{float(c):.{DIGITS}g}") * X**k for k, c in enumerate(coeffs))
    s2 = sp.Float(sigma) ** 2 if sigma != 1.0 else sp.Integer(1)
    w_expr = sp.Mul(*[expr - sp.Float(c) for c in levels]) if levels else sp.Integer(1)
    return w_expr * p * sp.exp(-X**2 / (2 * s2))


__all__ = ["correction", "correction_kind", "functional_gradient", "hermite_functions",
           "KINDS", "MAX_DEGREE"]
