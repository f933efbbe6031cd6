"""EAFO theory: output entropy, the worst activation (WAFBC) and first-order corrections.

Sun et al., "A Method on Searching Better Activation Functions" (ICLR 2025), model
the input of an activation as x ~ N(0, sigma^2) with density p and ask how much
information survives the activation y = f(x), measured by the output entropy

    H[Y] = -integral q(u) log q(u) du,   q(u) = p(y(u)) y'(u),   y = f^-1.

Three results of the paper are implemented here, top to bottom:

1. ``output_entropy(f)``: H[f(X)] computed numerically. For a strictly monotone f the
   change of variables gives H[Y] = H[X] + E[log|f'(X)|] with H[X] = 1/2 log(2 pi e sigma^2).
   For everything else (flat regions = point masses, non-monotone GELU/SiLU/Mish) a
   deterministic histogram estimator is used; its exact definition is at
   `_histogram_entropy`.
2. ``wafbc(lower, upper)``: the worst activation with boundary conditions. The
   Euler-Lagrange equation of H under f(-inf) = lower, f(+inf) = upper has the scaled
   Gaussian CDF as solution, f = lower + (upper - lower) Phi(x / sigma): its output is
   uniform on (lower, upper), the maximum-entropy law on a bounded interval, so
   H = log(upper - lower) and every other activation with those bounds has less.
   ``wafbc_distance(f)`` measures how far f is from it (a zero-cost score).
3. ``correction(f)``: the EAFO step. The functional derivative of H with respect to the
   inverse is dH/dy = p'(y) y' + p(y) y''/y'. Moving the inverse against it,
   g = y + eps_paper * eta with eta = -dH/dy, and inverting gives to first order a
   correction of f itself (substitute y' = 1/f', y'' = -f''/f'^3 and p' = -x p):

       delta_f(x) = -eps_paper * p(x) * (x + f''(x) / f'(x)).

   For ReLU's positive branch f'' = 0, so delta_f is proportional to x exp(-x^2/2):
   CRReLU(x) = ReLU(x) + eps * x * exp(-x^2/2). The paper stops at invertible bases;
   here bases whose derivative crosses zero get a Tikhonov-regularised ratio.

Conventions are stated at each function. The one to know: ``correction(f)`` is
exp(-x^2/2) (x + f''/f') with the constant -1/sqrt(2 pi) dropped, so ``relu(x) + eps *
correction("identity")`` is CRReLU with the paper's sign and init (eps = +0.01), and
``correction("relu")`` is that same term on ReLU's positive branch and 0 on its flat one.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import sympy as sp
from scipy.special import ndtr

from spaces.bases import get_base
from spaces.candidate import Candidate
from spaces.functions import ACTIVATION_FUNCTIONS, X

# ---- the quadrature grid shared by every numeric helper ------------------------------
# Cells of width h = 16 sigma / 8000 = 0.002 sigma on [-8 sigma, 8 sigma]. The Gaussian
# mass outside is 2 Phi(-8) = 1.2e-15, so truncation is invisible next to the O(h^2)
# discretisation error (~1e-6 nats). An even cell count puts x = 0 on a cell edge, where
# ReLU-family kinks are, so the midpoint rule stays second order there. 8000 midpoints
# through the generated torch code take well under a millisecond.
GRID_HALF_WIDTH = 8.0       # in units of sigma
GRID_CELLS = 8000

# Atoms (point masses) are charged as if spread uniformly over this width, in output
# units; see `_histogram_entropy`. 1e-2 is about bf16's spacing near 1 (2^-7 = 0.0078):
# outputs closer than that are not told apart in low-precision training anyway.
BIN_WIDTH = 1e-2

# A step of f between neighbouring midpoints smaller than STEP_TOL * (cell width) is
# rounding noise, not a direction, in the monotonicity tests.
STEP_TOL = 1e-9

# f' that is exactly 0 on a set of Gaussian mass up to this is floating-point underflow
# in the tails (tanh'(x) = 1 - tanh(x)^2 rounds to 0 for |x| > 19, which the grid
# reaches for sigma > 2.4), not a flat region. Those points are dropped from the change
# of variables; their true contribution is below 1e-6 * |log f'| ~ 1e-4 nats.
UNDERFLOW_MASS = 1e-6

# Subdivision of histogram cells next to folds and kinks (see `_refine`): a cell is split
# when its estimated entropy error exceeds 1e-8 nats; the 500 or so cells this picks
# around one fold leave ~2e-5 nats outside. At most 2000 cells (32,000 points) are split.
REFINE_ERROR = 1e-8
REFINE_SUBCELLS = 16
REFINE_MAX_CELLS = 2000

METHODS = ("auto", "change_of_variables", "histogram")


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return v


def _as_expr(f) -> sp.Expr:
    """A base name, a sympy expression in x or a Candidate (at its inits) -> expression."""
    if isinstance(f, Candidate):
        return f.substituted()
    if isinstance(f, str):
        return get_base(f)  # ValueError listing the valid names
    if isinstance(f, sp.Basic):
        extra = f.free_symbols - {X}
        if extra:
            raise ValueError(
                f"expression has symbols {sorted(map(str, extra))} besides x; pass a Candidate "
                "(spaces.parse(..., init=...)) to give coefficients their values")
        return f
    raise TypeError(f"expected a base name, a sympy expression or a Candidate, "
                    f"got {type(f).__name__}")


def _as_candidate(f) -> Candidate:
    # A Candidate is evaluated as is (its generated code is cached per candidate).
    return f if isinstance(f, Candidate) else Candidate.from_expr(_as_expr(f))


@lru_cache(maxsize=32)
def _grid(sigma: float):
    """Cell edges, cell midpoints and the exact N(0, sigma^2) mass of each cell."""
    edges = np.linspace(-GRID_HALF_WIDTH * sigma, GRID_HALF_WIDTH * sigma, GRID_CELLS + 1)
    # Tail probabilities Phi(-|e|) keep full relative precision on both sides (1 - Phi
    # would cancel on the right); no cell straddles 0, so each mass is a difference of two.
    tail = ndtr(-np.abs(edges) / sigma)
    mass = np.abs(np.diff(tail))
    mass /= mass.sum()
    mids = (edges[:-1] + edges[1:]) / 2
    return edges, mids, mass  # shared between calls: never written to


def gaussian_entropy(sigma: float = 1.0) -> float:
    """H[X] of X ~ N(0, sigma^2) in nats: 1/2 log(2 pi e sigma^2)."""
    return 0.5 * math.log(2 * math.pi * math.e * _positive(sigma, "sigma") ** 2)


# ---- 1. output entropy ---------------------------------------------------------------
def output_entropy(f, sigma: float = 1.0, method: str = "auto", *,
                   bin_width: float = BIN_WIDTH) -> float:
    """Entropy in nats of Y = f(X), X ~ N(0, sigma^2).

    f: a base name, a sympy expression in x, or a Candidate (at its initial values).

    method:
      "change_of_variables": H[X] + E[log|f'(X)|] by the midpoint rule with exact
          Gaussian cell masses on [-8 sigma, 8 sigma] (identity gives H[X] exactly,
          a*x gives H[X] + log|a|). Valid for strictly monotone f only: a sign change
          of f' (or f stepping back) raises ValueError; f' == 0 on a set of Gaussian
          mass > 1e-6 (a flat region, so Y has an atom) returns -inf, the exact
          differential entropy of a law with an atom.
      "histogram": the estimator of `_histogram_entropy`: the differential entropy
          when Y has no atoms (it agrees with the change of variables to ~2e-7 nats
          for tanh and sigmoid, and with adaptive quadrature of the exact branch
          densities to ~2e-5 for GELU and SiLU), plus -m log(m / bin_width) for each
          atom of mass m, as if the atom were spread uniformly over one bin.
      "auto": change of variables when f' keeps one sign on the grid, f(x) never
          steps against it and f' == 0 has mass <= 1e-6; histogram otherwise.

    Returns NaN when f or f' is not finite at some grid point: the score is undefined
    there, and NaN is reported, never ranked. Deterministic (no sampling). Once the
    candidate's torch code exists (generated on its first call) a call takes about 1 ms
    for monotone f and 3-5 ms with the histogram's fold refinement, on one idle core.
    """
    sigma = _positive(sigma, "sigma")
    bin_width = _positive(bin_width, "bin_width")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    cand = _as_candidate(f)
    edges, mids, mass = _grid(sigma)
    h = edges[1] - edges[0]
    with np.errstate(all="ignore"):
        y = cand.evaluate(mids)
        df = cand.evaluate(mids, derivative=True)
    if not (np.isfinite(y).all() and np.isfinite(df).all()):
        return math.nan
    if method == "histogram":
        return _histogram_entropy(*_refine(cand, sigma, y, df), bin_width)
    shape = _shape(y, df, mass, h)
    if method == "auto":
        if shape != "monotone":
            return _histogram_entropy(*_refine(cand, sigma, y, df), bin_width)
    elif shape == "non_monotone":
        raise ValueError("change of variables needs a strictly monotone f; f' changes sign "
                         "(or f steps back) on the grid: use method='histogram' or 'auto'")
    elif shape == "flat":
        return -math.inf
    keep = df != 0  # tail underflow only, see UNDERFLOW_MASS
    w = mass[keep]
    return gaussian_entropy(sigma) + float(np.dot(w, np.log(np.abs(df[keep]))) / w.sum())


def _shape(y: np.ndarray, df: np.ndarray, mass: np.ndarray, h: float) -> str:
    """'monotone', 'flat' (monotone with an atom) or 'non_monotone', judged on the grid."""
    steps = np.diff(y)
    tol = STEP_TOL * h
    # f' alone misses jumps (x - 2*step(x) has f' = 1 and is not injective): the values
    # themselves must not step against the derivative's direction either.
    both_signs = (df > 0).any() and (df < 0).any()
    both_steps = (steps > tol).any() and (steps < -tol).any()
    if both_signs or both_steps:
        return "non_monotone"
    if mass[df == 0].sum() > UNDERFLOW_MASS:
        return "flat"
    return "monotone"


def _refine(cand: Candidate, sigma: float, y: np.ndarray, df: np.ndarray):
    """(f, f', mass, width) per cell, with the cells next to folds and kinks subdivided.

    The tangent model of `_histogram_entropy` errs by about w (h f''/f')^2 nats on a cell
    of mass w, which adds up to O(h) next to an extremum of f, where f' -> 0 (GELU's fold:
    4.5e-4 nats at h = 0.002). Cells whose estimate exceeds REFINE_ERROR are split into
    REFINE_SUBCELLS (f'' by finite differences of f'); this brings GELU and SiLU to ~2e-5
    nats of the exact value for about 10,000 extra points. NaN marks a non-finite value.
    """
    edges, _, mass = _grid(sigma)
    h = edges[1] - edges[0]
    width = np.full(mass.shape, h)
    with np.errstate(all="ignore"):
        err = mass * (np.gradient(df, h) * h / df) ** 2
    err[~np.isfinite(err)] = 0.0  # f' == 0: an atom, exact as it is
    pick = np.flatnonzero(err > REFINE_ERROR)
    if pick.size > REFINE_MAX_CELLS:  # bounded cost: refine the worst cells only
        pick = np.sort(pick[np.argsort(err[pick])[-REFINE_MAX_CELLS:]])
    if pick.size == 0:
        return y, df, mass, width
    n = REFINE_SUBCELLS
    sub_edges = edges[pick][:, None] + h * np.arange(n + 1) / n
    sub_mass = np.abs(np.diff(ndtr(-np.abs(sub_edges) / sigma), axis=1))
    sub_mass *= (mass[pick] / sub_mass.sum(axis=1))[:, None]  # same total per parent cell
    sub_mids = ((sub_edges[:, :-1] + sub_edges[:, 1:]) / 2).ravel()
    with np.errstate(all="ignore"):
        sub_y = cand.evaluate(sub_mids)
        sub_df = cand.evaluate(sub_mids, derivative=True)
    if not (np.isfinite(sub_y).all() and np.isfinite(sub_df).all()):
        sub_y = np.full_like(sub_y, np.nan)
    keep = np.ones(mass.shape, dtype=bool)
    keep[pick] = False
    # Put the sub-cells where their parent was, so x order (which runs rely on) holds.
    order = np.argsort(np.concatenate([np.flatnonzero(keep) * n,
                                       (pick[:, None] * n + np.arange(n)).ravel()]),
                       kind="stable")
    return (np.concatenate([y[keep], sub_y])[order],
            np.concatenate([df[keep], sub_df])[order],
            np.concatenate([mass[keep], sub_mass.ravel()])[order],
            np.concatenate([width[keep], np.full(sub_mids.shape, h / n)])[order])


def _histogram_entropy(y: np.ndarray, df: np.ndarray, mass: np.ndarray, width: np.ndarray,
                       bin_width: float) -> float:
    """Plug-in entropy of f(X) from the quadrature grid; what it returns, exactly:

        H = -integral q_c(u) log q_c(u) du  -  sum_k m_k log(m_k / bin_width)

    q_c is the density of the continuous part of Y and m_k the masses of its atoms,
    merged into bins of width `bin_width` centred on multiples of it. Equivalently, the
    entropy of Y relative to Lebesgue measure plus a point mass `bin_width` at each atom:
    an atom is charged as if spread uniformly over one bin, instead of the -inf of the
    differential entropy of a law with an atom. So
      - an atom-free output gets its differential entropy (no bin-width bias: it agrees
        with the change of variables, and with a fine fixed-bin histogram + log(width));
      - each atom costs m log(1/bin_width) relative to that limit: ReLU's output (atom
        1/2 at 0, half-normal otherwise) gets H[X]/2 - 1/2 log(1/2 / bin_width), -1.2465
        at the default width. Shrinking the width lowers every atom's score in
        proportion to its mass, so rankings at one fixed width are consistent and
        follow the theory's -inf limit (more atom mass ranks lower).

    Construction, deterministic: on each grid cell f is replaced by its tangent at the
    cell midpoint, so the cell's exact Gaussian mass w spreads uniformly over
    [f(m) - |f'(m)| h/2, f(m) + |f'(m)| h/2] (density w / (|f'| h); error O(h^2); a jump of
    f at a cell edge stays a jump, a chord across it would smear one cell over it).
    Cells whose image has zero width in float64 are atoms at f(m): f'(m) == 0 (ReLU's
    negative side), or f' so small that the image is below the float spacing at f(m)
    (tanh beyond |x| = 15, whose values are +-1.0 in float64 anyway). Atoms are thus the
    same as in the change of variables' test (f' == 0), up to that float resolution,
    so both methods agree wherever both apply. The other cells form runs in
    which f' keeps its sign and f does not step back, so their images do not overlap;
    for non-monotone f the runs' densities are added on the merged breakpoints, which
    handles GELU's fold and the integrable density spike at its minimum without any
    fixed bin for the continuous part.
    """
    if not np.isfinite(y).all():
        return math.nan
    half = np.abs(df) * width / 2
    flat = y - half >= y + half

    entropy = 0.0
    if flat.any():
        bins = np.round(y[flat] / bin_width)
        _, which = np.unique(bins, return_inverse=True)
        m = np.bincount(which.ravel(), weights=mass[flat])
        m = m[m > 0]
        entropy -= float(np.sum(m * np.log(m / bin_width)))

    cont = ~flat
    if not cont.any():
        return entropy
    yc, w = y[cont], mass[cont]
    a, b = yc - half[cont], yc + half[cont]
    dens = w / (b - a)
    rising = df[cont] > 0
    # A step against the slope (beyond rounding noise) starts a new run: a jump back.
    back = np.diff(yc) * np.where(rising[1:], 1.0, -1.0) < -STEP_TOL * width[cont][1:]
    run = np.concatenate([[0], np.cumsum((rising[1:] != rising[:-1]) | back)])
    if run[-1] == 0:
        # Monotone: cell images are disjoint, the density is dens on each one.
        return entropy - float(np.dot(w, np.log(dens)))

    # Several runs overlap in the output (a fold): add each run's piecewise-constant
    # density on the merged breakpoints. Within a run, look cells up by their start
    # (searchsorted), which is exact; a running sum of +-dens would cancel badly next
    # to the huge densities near an extremum of f.
    breaks = np.unique(np.concatenate([a, b]))
    centre = (breaks[:-1] + breaks[1:]) / 2
    total = np.zeros_like(centre)
    for r in range(run[-1] + 1):
        sel = run == r
        order = np.argsort(a[sel], kind="stable")
        ra, rb, rd = a[sel][order], b[sel][order], dens[sel][order]
        i = np.clip(np.searchsorted(ra, centre, side="right") - 1, 0, None)
        inside = (centre >= ra[i]) & (centre < rb[i])
        total += np.where(inside, rd[i], 0.0)
    seg_mass = total * np.diff(breaks)
    pos = total > 0
    return entropy - float(np.dot(seg_mass[pos], np.log(total[pos])))


# ---- 2. the worst activation with boundary conditions ---------------------------------
def _number(value, name: str) -> sp.Expr:
    # Numbers only: sympify would execute a string.
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating,
                                                          sp.Number)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, sp.Number):
        v = value
    elif isinstance(value, (int, np.integer)):
        v = sp.Integer(int(value))
    else:
        v = sp.Float(float(value))
    if not math.isfinite(float(v)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def wafbc(lower, upper, sigma: float = 1.0) -> sp.Expr:
    """The worst activation with boundary conditions f(-inf) = lower, f(+inf) = upper:

        f(x) = lower + (upper - lower) * Phi(x / sigma),  Phi(z) = (1 + erf(z / sqrt 2)) / 2.

    The Euler-Lagrange equation of the output entropy under these boundary conditions
    has the Gaussian CDF (scaled and shifted) as its solution (Sun et al. 2025, WAFBC).
    Y = f(X) is uniform on (lower, upper), so H[Y] = log(upper - lower), the largest
    entropy any output confined to that interval can have.
    """
    lo, up = _number(lower, "lower"), _number(upper, "upper")
    if not float(lo) < float(up):
        raise ValueError(f"lower must be < upper, got lower={lower!r}, upper={upper!r}")
    s = _number(sigma, "sigma")
    if not float(s) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    return lo + (up - lo) * (1 + sp.erf(X / (sp.sqrt(2) * s))) / 2


# The input range the distance looks at: the central [-3 sigma, 3 sigma] of X.
RANGE_SIGMAS = 3.0


def wafbc_distance(f, sigma: float = 1.0, *, bin_width: float = BIN_WIDTH) -> float:
    """Entropy gap between f and the WAFBC that spans the same output range (nats).

    lo, hi = min and max of f(x) over x in [-3 sigma, 3 sigma] (on the quadrature grid).
    The reference is the WAFBC rescaled so that its values at x = -3 sigma and 3 sigma
    are lo and hi: g = lo + (hi - lo) (Phi(x/sigma) - Phi(-3)) / (Phi(3) - Phi(-3)), whose
    output entropy is exactly log((hi - lo) / (Phi(3) - Phi(-3))). The distance is

        log((hi - lo) / (Phi(3) - Phi(-3))) - output_entropy(f, sigma, "auto", bin_width)

    0 (to ~2e-7) for any WAFBC with this sigma; positive for ordinary activations
    (identity 0.38, ReLU about 2.35 at bin width 1e-2): larger means further from the
    worst activation, which the paper reads as better. It can be negative when f spreads
    the 0.27% of inputs outside 3 sigma over a very wide range. NaN when f is constant on
    [-3 sigma, 3 sigma] (no range) or the entropy is NaN.
    """
    sigma = _positive(sigma, "sigma")
    cand = _as_candidate(f)
    entropy = output_entropy(cand, sigma, "auto", bin_width=bin_width)
    edges, _, _ = _grid(sigma)
    central = edges[np.abs(edges) <= RANGE_SIGMAS * sigma * (1 + 1e-12)]
    with np.errstate(all="ignore"):
        y = cand.evaluate(central)
    span = float(np.max(y) - np.min(y))
    if not math.isfinite(entropy) or not math.isfinite(span) or span <= 0:
        return math.nan
    central_mass = 1 - 2 * float(ndtr(-RANGE_SIGMAS))
    return math.log(span / central_mass) - entropy


# ---- 3. the first-order EAFO correction ----------------------------------------------
# Tikhonov regularisation of 1/f' where f' crosses zero: f''/f' -> f'' f' / (f'^2 + reg^2).
# Equal to the exact ratio times f'^2 / (f'^2 + reg^2), i.e. within 1% where |f'| >= 1 and
# within 10% where |f'| >= 0.3, and bounded by max|f''| / (2 reg) everywhere (about 4 for
# GELU, whose f'' peaks at 2 p(0) = 0.8). reg = 0.1 is of the order of the depth of the
# negative-derivative lobe it must bridge (min f' = -0.13 GELU, -0.10 SiLU, -0.11 Mish),
# and keeps the correction O(1), like CRReLU's term (max of x exp(-x^2/2) is 0.61).
REG = 0.1

# Grid on which branch properties are checked (sign changes of f', finiteness).
CHECK_GRID = np.linspace(-50.0, 50.0, 10001)
# A monotone f' that touches zero (x**3 at 0) gives f''/f' a pole; the grid may miss the
# pole itself but not its neighbourhood: |f''/f'| > 100 means f' changes by a factor e
# within 0.01 in x, as good as a zero. Smooth monotone bases stay below 2 (tanh: 2 tanh x).
RATIO_MAX = 100.0

# Named functions whose elementary form has branches (relu, step, leaky_relu, elu, ...):
# these are expanded into Piecewise to find branches; smooth ones (gelu, silu, mish,
# softplus, sigmoid) stay named, so the code generator keeps their stable torch kernels.
_BRANCHED = tuple(cls for cls in ACTIVATION_FUNCTIONS.values()
                  if cls.elementary(X).has(sp.Piecewise))


def correction(base, reg: float = REG) -> sp.Expr:
    """Direction of the first-order EAFO correction of `base`, as an expression in x.

    The paper's correction is delta_f = -eps_paper * p(x) (x + f''/f') (module docstring).
    This returns its direction with the constant dropped:

        correction(f) = exp(-x^2/2) * (x + f''(x)/f'(x)),

    so delta_f = eps * correction(f) with eps = -eps_paper / sqrt(2 pi). Sign: eps > 0
    *raises* the output entropy (towards the WAFBC), eps < 0 is the EAFO descent step
    that lowers it. The paper's CRReLU, ReLU + eps x exp(-x^2/2) with eps initialised at
    +0.01 and learned, is ``base + eps * correction`` in this convention; eps is a free
    learnable scalar, so the sign convention only fixes what its initial value means.

    Branches: the base is split into the branches of its Piecewise form (relu, elu,
    hardswish, Max/Min/Abs in an expression). On a branch where f' == 0 identically there
    is no inverse to perturb, so the correction is 0 there. ReLU therefore gives
    Piecewise((x*exp(-x**2/2), x > 0), (0, True)). The paper's CRReLU applies
    x*exp(-x**2/2) on the whole line; that term is ``correction("identity")`` (and
    ``correction("leaky_relu")``, whose branches both have f'' = 0). Where f''/f' jumps
    at a branch boundary the correction jumps with it, exactly as the pointwise formula
    says: ELU/CELU (and SELU) have ratio 0 for x > 0 and 1 for x < 0, so their correction
    jumps by 1 at x = 0 and base + eps * correction is discontinuous there by |eps|;
    hardswish's jumps at x = -3 and 3 are 0.040 and 0.0025.

    Ratio: the exact f''/f' (simplified with sympy.cancel, so tanh gives -2 tanh(x) and
    stays finite where f' underflows) on branches where f' keeps one sign and the ratio
    is finite and |ratio| <= 100 on [-50, 50]; the regularised f'' f'/(f'^2 + reg^2) on
    branches where f' crosses or touches zero (GELU, SiLU, Mish, hardswish's middle
    piece), where f''/f' has poles; reg is absolute, in units of f' (see REG). Both are
    finite on the whole line for every base.
    The result only uses functions the torch code generator prints (exp, erf, tanh,
    Piecewise with a final True branch, spaces' named functions).
    """
    return _correction(_as_expr(base), _positive(reg, "reg"))


@lru_cache(maxsize=256)
def _correction(expr: sp.Expr, reg: float) -> sp.Expr:
    branches = _branches(expr)
    masks = _regions([cond for _, cond in branches])
    pieces = [(_branch_correction(g, mask, reg), cond)
              for (g, cond), mask in zip(branches, masks)]
    if len(pieces) == 1:
        return pieces[0][0]
    return sp.Piecewise(*pieces)  # merges neighbouring equal pieces (leaky_relu -> one)


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


def _regions(conds: list) -> list[np.ndarray]:
    """Boolean mask over CHECK_GRID of each branch's region (first match wins)."""
    taken = np.zeros(CHECK_GRID.shape, dtype=bool)
    masks = []
    for cond in conds:
        hit = np.broadcast_to(np.asarray(sp.lambdify(X, cond, "numpy")(CHECK_GRID), dtype=bool),
                              CHECK_GRID.shape)
        masks.append(hit & ~taken)
        taken |= hit
    return masks


def _values(expr: sp.Expr, xs: np.ndarray) -> np.ndarray:
    # Through the same generated torch code that training will run.
    with np.errstate(all="ignore"):
        return Candidate.from_expr(expr).evaluate(xs)


def _branch_correction(g: sp.Expr, region: np.ndarray, reg: float) -> sp.Expr:
    d1 = sp.diff(g, X)
    if d1.is_zero:
        return sp.Integer(0)  # flat branch (ReLU's x < 0): no inverse, no correction
    d2 = sp.diff(d1, X)
    xs = CHECK_GRID[region]
    gauss = sp.exp(-X**2 / 2)
    if xs.size == 0:
        # No grid point in the branch: nothing to check, use the always-finite form.
        return gauss * (X + d2 * d1 / (d1**2 + reg**2))
    slope = _values(d1, xs)
    if (slope == 0).all():
        return sp.Integer(0)
    if (slope > 0).any() and (slope < 0).any():
        return gauss * (X + d2 * d1 / (d1**2 + reg**2))
    exact = sp.cancel(d2 / d1)
    ratio = _values(exact, xs)
    if np.isfinite(ratio).all() and np.abs(ratio).max() <= RATIO_MAX:
        return gauss * (X + exact)
    return gauss * (X + d2 * d1 / (d1**2 + reg**2))


__all__ = ["output_entropy", "gaussian_entropy", "wafbc", "wafbc_distance", "correction",
           "BIN_WIDTH", "REG"]
