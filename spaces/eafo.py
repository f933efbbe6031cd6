"""EAFO theory, the measuring half: output entropy, its scale-free parts, the WAFBC.

Sun et al., "A Method on Searching Better Activation Functions" (ICLR 2025), model
the input of an activation as x ~ N(0, sigma^2) with density p and ask how much
information survives the activation y = f(x), measured by the output entropy

    H[Y] = -integral q(u) log q(u) du,   q(u) = p(y(u)) y'(u),   y = f^-1.

Implemented here, top to bottom:

1. ``output_entropy(f)``: H[f(X)] computed numerically, the paper's quantity. For a
   strictly monotone f the change of variables gives H[Y] = H[X] + E[log|f'(X)|] with
   H[X] = 1/2 log(2 pi e sigma^2). For everything else (flat regions = point masses,
   non-monotone GELU/SiLU/Mish) a deterministic estimator is used; its exact definition
   is at `_histogram_law`. Two properties make H a poor score on its own: it moves by
   log(a) when f is multiplied by a (a following linear layer undoes any scale), and a
   law with an atom (ReLU's point mass at 0) has H = -infinity, so any finite number for
   it is a convention (here: an atom charged as if spread over `bin_width`).
2. ``output_law(f)``: the same estimator's decomposition of Y into its atoms and its
   continuous part, from which the scale-free, bin-free scores are read: the
   continuous part's ``negentropy`` (distance from the Gaussian of the same variance),
   its ``wafbc_distance`` and the total ``atom_mass``.
3. ``wafbc(lower, upper)``: the worst activation with boundary conditions. The
   Euler-Lagrange equation of H under f(-inf) = lower, f(+inf) = upper has the scaled
   Gaussian CDF as solution, f = lower + (upper - lower) Phi(x / sigma): its output is
   uniform on (lower, upper), the maximum-entropy law on a bounded interval, so
   H = log(upper - lower) and every other activation with those bounds has less.

The direction in which to move an activation to change H (the EAFO correction, and
CRReLU) is in `spaces.correction`; ``spaces.eafo.correction`` still finds it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import sympy as sp
from scipy.special import ndtr

from spaces.bases import get_base
from spaces.candidate import Candidate
from spaces.functions import X

# ---- the quadrature grid shared by every numeric helper ------------------------------
# Cells of width h = 16 sigma / 8000 = 0.002 sigma on [-8 sigma, 8 sigma]. The Gaussian
# mass outside is 2 Phi(-8) = 1.2e-15, so truncation is invisible next to the O(h^2)
# discretisation error (~1e-6 nats). An even cell count puts x = 0 on a cell edge, where
# ReLU-family kinks are, so the midpoint rule stays second order there. 8000 midpoints
# through the generated torch code take well under a millisecond. Every function takes
# `cells=` to change this resolution (the tests check that rankings do not depend on it).
GRID_HALF_WIDTH = 8.0       # in units of sigma
GRID_CELLS = 8000

# Only `output_entropy` (the paper's raw quantity) uses this: there an atom (point mass)
# is charged as if spread uniformly over this width, in output units; see
# `OutputLaw.entropy`. 1e-2 is about bf16's spacing near 1 (2^-7 = 0.0078). The
# scale-free scores (negentropy, wafbc_distance, atom_mass) have no such width.
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

# The input range the WAFBC distance looks at: the central [-3 sigma, 3 sigma] of X.
RANGE_SIGMAS = 3.0

METHODS = ("auto", "change_of_variables", "histogram")


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return v


def _cells(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 100 \
            or value % 2:
        raise ValueError(f"cells must be an even integer >= 100, got {value!r}")
    return int(value)


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


def _as_function(f):
    """Anything with ``evaluate(xs, derivative=False)`` in float64 numpy: a Candidate is
    used as is (its generated code is cached per candidate); names and expressions become
    one. `spaces.correction` passes its own numeric perturbations of a base this way."""
    if hasattr(f, "evaluate") and not isinstance(f, (sp.Basic, str)):
        return f
    return Candidate.from_expr(_as_expr(f))


@lru_cache(maxsize=32)
def _grid(sigma: float, cells: int = GRID_CELLS):
    """Cell edges, cell midpoints and the exact N(0, sigma^2) mass of each cell."""
    edges = np.linspace(-GRID_HALF_WIDTH * sigma, GRID_HALF_WIDTH * sigma, cells + 1)
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
                   bin_width: float = BIN_WIDTH, cells: int = GRID_CELLS) -> float:
    """Entropy in nats of Y = f(X), X ~ N(0, sigma^2): the paper's quantity.

    f: a base name, a sympy expression in x, or a Candidate (at its initial values).

    Not a scale-free score: H[a f(X)] = H[f(X)] + log a, and an output with an atom has
    H = -infinity, replaced here by a convention that depends on `bin_width`. Rank
    activations with `output_law(f).negentropy`, `.wafbc_distance` and `.atom_mass`.

    method:
      "change_of_variables": H[X] + E[log|f'(X)|] by the midpoint rule with exact
          Gaussian cell masses on [-8 sigma, 8 sigma] (identity gives H[X] exactly,
          a*x gives H[X] + log|a|). Valid for strictly monotone f only: a sign change
          of f' (or f stepping back) raises ValueError; f' == 0 on a set of Gaussian
          mass > 1e-6 (a flat region, so Y has an atom) returns -inf, the exact
          differential entropy of a law with an atom.
      "histogram": `OutputLaw.entropy(bin_width)` of the estimator of `_histogram_law`:
          the differential entropy when Y has no atoms (it agrees with the change of
          variables to ~2e-7 nats for tanh and sigmoid, and with adaptive quadrature of
          the exact branch densities to ~2e-5 for GELU and SiLU), plus
          -m log(m / bin_width) for each atom of mass m, as if the atom were spread
          uniformly over one bin.
      "auto": change of variables when f' keeps one sign on the grid, f(x) never
          steps against it and f' == 0 has mass <= 1e-6; histogram otherwise.
    cells: grid cells on [-8 sigma, 8 sigma] (resolution h = 16 sigma / cells).

    Returns NaN when f or f' is not finite at some grid point: the score is undefined
    there, and NaN is reported, never ranked. Deterministic (no sampling). Once the
    candidate's torch code exists (generated on its first call) a call takes about 1 ms
    for monotone f and 3-5 ms with the histogram's fold refinement, on one idle core.
    """
    sigma = _positive(sigma, "sigma")
    bin_width = _positive(bin_width, "bin_width")
    cells = _cells(cells)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    fn = _as_function(f)
    edges, mids, mass = _grid(sigma, cells)
    h = edges[1] - edges[0]
    with np.errstate(all="ignore"):
        y = fn.evaluate(mids)
        df = fn.evaluate(mids, derivative=True)
    if not (np.isfinite(y).all() and np.isfinite(df).all()):
        return math.nan
    if method == "histogram":
        return _law(fn, sigma, cells, y, df).entropy(bin_width)
    shape = _shape(y, df, mass, h)
    if method == "auto":
        if shape != "monotone":
            return _law(fn, sigma, cells, y, df).entropy(bin_width)
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


# ---- 2. the law of the output: atoms and continuous part ------------------------------
@dataclass(frozen=True)
class OutputLaw:
    """Y = f(X), X ~ N(0, sigma^2), split into its atoms and its continuous part.

    Why a split: the differential entropy of a law with an atom is -infinity, and any
    finite stand-in for it depends on a bin width (that is what made ReLU's entropy
    score, and its rank against CRReLU, follow the estimator's resolution). The atoms'
    total mass is kept as its own feature, and every entropy below is that of the
    continuous part alone, renormalised to a probability law, which has no width in it.

    continuous_entropy: differential entropy (nats) of the continuous part, normalised to
        mass 1. NaN when there is no continuous part (f constant) or f is not finite.
    continuous_std: its standard deviation; continuous_mean its mean.
    atom_values, atom_masses: each point mass of Y (outputs of cells where f is flat to
        float64 resolution, grouped by value).
    central_range: max - min of f over x in [-3 sigma, 3 sigma] (on the grid).
    """

    sigma: float
    continuous_entropy: float
    continuous_mean: float
    continuous_std: float
    atom_values: tuple[float, ...]
    atom_masses: tuple[float, ...]
    central_range: float

    @property
    def atom_mass(self) -> float:
        """P(Y is one of the atoms): 1/2 for ReLU, 0 for an invertible f."""
        return float(sum(self.atom_masses))

    @property
    def negentropy(self) -> float:
        """KL divergence (nats) of the continuous part from the Gaussian of the same mean
        and variance: 1/2 log(2 pi e s^2) - H_c, with s and H_c the continuous part's std
        and entropy. >= 0, 0 only for a Gaussian (identity, any linear f); unchanged when f
        is multiplied by a positive or negative constant or shifted (both terms move by
        log|a|), and free of any bin width. It measures how far the activation reshapes
        its input's law, the scale-free form of the paper's "lower output entropy"."""
        if not math.isfinite(self.continuous_entropy) or not self.continuous_std > 0:
            return math.nan
        return gaussian_entropy(self.continuous_std) - self.continuous_entropy

    @property
    def wafbc_distance(self) -> float:
        """Entropy gap (nats) between the WAFBC that spans f's central range and the
        continuous part of Y:

            log(central_range / (Phi(3) - Phi(-3))) - H_c.

        The reference is the WAFBC rescaled so that its values at x = -3 sigma and
        3 sigma are the min and max of f there; its output entropy is exactly
        log(range / (Phi(3) - Phi(-3))). So the distance is 0 (to ~2e-7) for any WAFBC
        with this sigma and positive for ordinary activations (identity 0.375, ReLU's
        half-normal part the same): larger means further from the worst activation,
        which the paper reads as better. Scale-free (range and H_c both move by log a) and
        bin-free; atoms are left to `atom_mass`. It can be negative when f spreads the
        0.27% of inputs outside 3 sigma over a very wide range. NaN when f is constant
        on [-3 sigma, 3 sigma] or H_c is NaN."""
        if not (math.isfinite(self.continuous_entropy) and self.central_range > 0):
            return math.nan
        central_mass = 1 - 2 * float(ndtr(-RANGE_SIGMAS))
        return math.log(self.central_range / central_mass) - self.continuous_entropy

    def entropy(self, bin_width: float = BIN_WIDTH) -> float:
        """The paper's H[Y] with each atom charged as if spread over `bin_width`:

            H = (1 - m) (H_c - log(1 - m))  -  sum_k m_k log(m_k / bin_width)

        (the first term is -integral q_c log q_c of the unnormalised continuous density;
        atoms are merged into bins of width `bin_width` centred on multiples of it).
        Equivalently, the entropy of Y relative to Lebesgue measure plus a point mass
        `bin_width` at each atom. So an atom-free output gets its differential entropy,
        and each atom costs m log(1/bin_width) relative to that limit: ReLU's output (atom
        1/2 at 0, half-normal otherwise) gets H[X]/2 - 1/2 log(1/2 / bin_width), -1.2465
        at the default width. This number, unlike the scores above, changes with the
        width and with the scale of f."""
        bin_width = _positive(bin_width, "bin_width")
        m = self.atom_mass
        out = 0.0
        if m > 0:
            bins = np.round(np.asarray(self.atom_values) / bin_width)
            _, which = np.unique(bins, return_inverse=True)
            merged = np.bincount(which.ravel(), weights=np.asarray(self.atom_masses))
            merged = merged[merged > 0]
            out -= float(np.sum(merged * np.log(merged / bin_width)))
        if m < 1:
            if not math.isfinite(self.continuous_entropy):
                return math.nan
            out += (1 - m) * (self.continuous_entropy - math.log(1 - m))
        return out


def output_law(f, sigma: float = 1.0, *, cells: int = GRID_CELLS) -> OutputLaw:
    """The atoms and the continuous part of Y = f(X), X ~ N(0, sigma^2) (see OutputLaw).

    f: a base name, a sympy expression in x, or a Candidate (at its initial values).
    Deterministic; a few milliseconds once the candidate's code exists. NaN fields (never
    an exception) when f or f' is not finite on the grid.
    """
    sigma = _positive(sigma, "sigma")
    cells = _cells(cells)
    fn = _as_function(f)
    _, mids, _ = _grid(sigma, cells)
    with np.errstate(all="ignore"):
        y = fn.evaluate(mids)
        df = fn.evaluate(mids, derivative=True)
    return _law(fn, sigma, cells, y, df)


def _law(fn, sigma: float, cells: int, y: np.ndarray, df: np.ndarray) -> OutputLaw:
    edges, _, _ = _grid(sigma, cells)
    central = edges[np.abs(edges) <= RANGE_SIGMAS * sigma * (1 + 1e-12)]
    with np.errstate(all="ignore"):
        yr = fn.evaluate(central)
    span = float(np.max(yr) - np.min(yr)) if np.isfinite(yr).all() else math.nan
    if not (np.isfinite(y).all() and np.isfinite(df).all()):
        return OutputLaw(sigma, math.nan, math.nan, math.nan, (), (), span)
    return _histogram_law(*_refine(fn, sigma, cells, y, df), sigma=sigma, span=span)


def _refine(fn, sigma: float, cells: int, y: np.ndarray, df: np.ndarray):
    """(f, f', mass, width) per cell, with the cells next to folds and kinks subdivided.

    The tangent model of `_histogram_law` errs by about w (h f''/f')^2 nats on a cell
    of mass w, which adds up to O(h) next to an extremum of f, where f' -> 0 (GELU's fold:
    4.5e-4 nats at h = 0.002). Cells whose estimate exceeds REFINE_ERROR are split into
    REFINE_SUBCELLS (f'' by finite differences of f'); this brings GELU and SiLU to ~2e-5
    nats of the exact value for about 10,000 extra points. NaN marks a non-finite value.
    """
    edges, _, mass = _grid(sigma, cells)
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
        sub_y = fn.evaluate(sub_mids)
        sub_df = fn.evaluate(sub_mids, derivative=True)
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


def _histogram_law(y: np.ndarray, df: np.ndarray, mass: np.ndarray, width: np.ndarray, *,
                   sigma: float, span: float) -> OutputLaw:
    """The law of f(X) from the quadrature grid, deterministic, with no bin anywhere:

    On each grid cell f is replaced by its tangent at the cell midpoint, so the cell's
    exact Gaussian mass w spreads uniformly over [f(m) - |f'(m)| h/2, f(m) + |f'(m)| h/2]
    (density w / (|f'| h); error O(h^2); a jump of f at a cell edge stays a jump, a chord
    across it would smear one cell over it). Cells whose image has zero width in float64
    are atoms at f(m): f'(m) == 0 (ReLU's negative side), or f' so small that the image is
    below the float spacing at f(m) (tanh beyond |x| = 15, whose values are +-1.0 in
    float64 anyway). Atoms are thus the same as in the change of variables' test
    (f' == 0), up to that float resolution, so both methods agree wherever both apply.
    The other cells form runs in which f' keeps its sign and f does not step back, so
    their images do not overlap; for non-monotone f the runs' densities are added on the
    merged breakpoints, which handles GELU's fold and the integrable density spike at its
    minimum without any fixed bin. The continuous part's entropy is then exact for the
    piecewise-constant density; its mean and variance are those of the same density.
    """
    nan = OutputLaw(sigma, math.nan, math.nan, math.nan, (), (), span)
    if not np.isfinite(y).all():
        return nan
    half = np.abs(df) * width / 2
    flat = y - half >= y + half
    # A flat cell between two sloped ones is a fold that fell on a midpoint (f' = 0 at a
    # point, e.g. the CRReLU term's at |x| = 1), not a flat region: its image has width
    # about |f''| w^2 / 8, f'' from the neighbours' slopes.
    inner = np.flatnonzero(flat[1:-1] & ~flat[:-2] & ~flat[2:]) + 1
    if inner.size:
        curv = np.abs(df[inner + 1] - df[inner - 1]) / (width[inner - 1] / 2 + width[inner]
                                                        + width[inner + 1] / 2)
        half[inner] = curv * width[inner] ** 2 / 16
        flat = y - half >= y + half
    atom_values, atom_masses = (), ()
    if flat.any():
        values, which = np.unique(y[flat], return_inverse=True)
        masses = np.bincount(which.ravel(), weights=mass[flat])
        atom_values, atom_masses = tuple(map(float, values)), tuple(map(float, masses))

    cont = ~flat
    if not cont.any():
        return OutputLaw(sigma, math.nan, math.nan, math.nan, atom_values, atom_masses, span)
    yc, w = y[cont], mass[cont]
    total_mass = float(w.sum())
    a, b = yc - half[cont], yc + half[cont]
    dens = w / (b - a)
    # Moments of the piecewise-uniform density: a cell adds its mass at its centre plus
    # the variance of a uniform law on its image, (b - a)^2 / 12.
    mean = float(np.dot(w, yc)) / total_mass
    var = float(np.dot(w, (yc - mean) ** 2 + (b - a) ** 2 / 12)) / total_mass
    rising = df[cont] > 0
    # A step against the slope (beyond rounding noise) starts a new run: a jump back.
    back = np.diff(yc) * np.where(rising[1:], 1.0, -1.0) < -STEP_TOL * width[cont][1:]
    run = np.concatenate([[0], np.cumsum((rising[1:] != rising[:-1]) | back)])
    if run[-1] == 0:
        # Monotone: cell images are disjoint, the density is dens on each one.
        plogp = -float(np.dot(w, np.log(dens)))
    else:
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
        plogp = -float(np.dot(seg_mass[pos], np.log(total[pos])))
    # -integral q log q of the unnormalised part -> entropy of the normalised law.
    h_c = plogp / total_mass + math.log(total_mass)
    return OutputLaw(sigma, h_c, mean, math.sqrt(var), atom_values, atom_masses, span)


def negentropy(f, sigma: float = 1.0, *, cells: int = GRID_CELLS) -> float:
    """`output_law(f, sigma).negentropy`: the continuous part's distance from a Gaussian."""
    return output_law(f, sigma, cells=cells).negentropy


def atom_mass(f, sigma: float = 1.0, *, cells: int = GRID_CELLS) -> float:
    """`output_law(f, sigma).atom_mass`: the probability of the output's point masses."""
    return output_law(f, sigma, cells=cells).atom_mass


def wafbc_distance(f, sigma: float = 1.0, *, cells: int = GRID_CELLS) -> float:
    """`output_law(f, sigma).wafbc_distance`: scale-free, bin-free distance from the WAFBC."""
    return output_law(f, sigma, cells=cells).wafbc_distance


# ---- 3. the worst activation with boundary conditions ---------------------------------
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


__all__ = ["output_entropy", "output_law", "OutputLaw", "negentropy", "atom_mass",
           "wafbc_distance", "gaussian_entropy", "wafbc", "BIN_WIDTH", "GRID_CELLS"]
