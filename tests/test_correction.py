"""Tests for spaces.correction: EAFO corrections for every base, checked against the entropy.

Three independent routes meet here: sympy (the functional gradient derived from the
inverse), numeric quadrature (scipy.integrate.quad of the first variation) and the
entropy estimator itself (central differences of spaces.eafo.output_entropy, which
runs the generated torch code).
"""
import math

import numpy as np
import pytest
import sympy as sp
from scipy.integrate import quad

from spaces import eafo, get_base, list_bases, parse
from spaces.candidate import Candidate
from spaces.correction import (MAX_DEGREE, correction, correction_kind, functional_gradient,
                               hermite_functions)
from spaces.functions import X, to_elementary

EPS = sp.Symbol("eps", real=True)
SIGMAS = (1.0, 0.16)  # the paper's, and vit-nano's measured pre-activation std
PAPER = {"celu", "elu", "identity", "leaky_relu", "prelu", "relu", "selu", "sigmoid",
         "softplus", "tanh"}
PROJECTED = {"gelu", "gelu_tanh", "hardswish", "mish", "silu", "squared_relu", "star_relu"}


def _values(expr, xs):
    return Candidate.from_expr(expr).evaluate(np.asarray(xs, dtype=float))


def _entropy_along(name, corr, e, sigma):
    cand = Candidate.from_expr(get_base(name) + EPS * corr, init={"eps": 0.0})
    return [eafo.output_entropy(cand.substituted({"eps": v}), sigma) for v in (-e, 0.0, e)]


def test_every_base_has_a_kind():
    assert set(list_bases()) == PAPER | PROJECTED
    assert {b for b in list_bases() if correction_kind(b) == "paper"} == PAPER


# ---- the paper's form ---------------------------------------------------------------------
def test_crrelu_term_is_the_paper_correction_of_relus_positive_branch():
    gauss_x = X * sp.exp(-X**2 / 2)
    for name in ("identity", "leaky_relu", "prelu"):  # linear branches: f'' = 0
        assert sp.simplify(correction(name) - gauss_x) == 0
    xs = np.linspace(-5, 5, 1001)
    vals = _values(correction("relu"), xs)
    pos = xs > 0
    assert np.allclose(vals[pos], xs[pos] * np.exp(-xs[pos] ** 2 / 2), rtol=0, atol=1e-15)
    assert np.all(vals[xs < 0] == 0)  # flat branch: the atom is left alone


@pytest.mark.parametrize("sigma", SIGMAS)
def test_paper_closed_forms_with_sigma(sigma):
    s2 = sp.Float(sigma) ** 2
    gauss = sp.exp(-X**2 / (2 * s2))
    # f''/f' = -2 tanh x (tanh), 1 - 2 sigmoid (sigmoid), 1 - sigmoid (softplus)
    expected = {"tanh": gauss * (X - 2 * s2 * sp.tanh(X)),
                "sigmoid": gauss * (X + s2 * (1 - 2 * get_base("sigmoid"))),
                "softplus": gauss * (X + s2 * (1 - get_base("sigmoid")))}
    xs = np.linspace(-6 * sigma, 6 * sigma, 601)
    for name, form in expected.items():
        assert np.allclose(_values(correction(name, sigma), xs), _values(form, xs), atol=1e-12)
    # ELU: f''/f' = 1 for x < 0 and 0 above, so the correction jumps by sigma^2 at 0.
    vals = _values(correction("elu", sigma), np.array([-sigma, sigma]))
    assert vals == pytest.approx([(-sigma + sigma**2) * math.exp(-0.5), sigma * math.exp(-0.5)],
                                 abs=1e-12)


@pytest.mark.parametrize("name,inverse", [
    ("tanh", sp.atanh(X)),
    ("sigmoid", sp.log(X / (1 - X))),
    ("softplus", sp.log(sp.exp(X) - 1)),
    ("identity", X),
])
def test_functional_gradient_from_the_inverse_symbolically(name, inverse):
    """h = -p(x) (log q)'(f(x)) with q(u) = p(y(u)) y'(u) and y the exact inverse equals
    p(x)(x/sigma^2 + f''/f')/f' (functional_gradient); the paper's form is sigma^3
    sqrt(2 pi) f' h, the same sign as h."""
    sigma = sp.Symbol("sigma", positive=True)
    u = sp.Symbol("u", real=True)
    p = lambda t: sp.exp(-t**2 / (2 * sigma**2)) / (sigma * sp.sqrt(2 * sp.pi))  # noqa: E731
    y = inverse.subs(X, u)
    log_q = sp.log(p(y)) + sp.log(sp.diff(y, u))
    f = to_elementary(get_base(name))
    h_from_inverse = -p(X) * sp.diff(log_q, u).subs(u, f)
    f1, f2 = sp.diff(f, X), sp.diff(f, X, 2)
    h_formula = p(X) * (X / sigma**2 + f2 / f1) / f1
    probe = {sigma: sp.Rational(7, 10)}
    for x0 in (-1.3, -0.2, 0.4, 2.1):
        assert float((h_from_inverse - h_formula).subs(probe).subs(X, x0)) == pytest.approx(0, abs=1e-12)
        h = float(functional_gradient(name, 0.7).subs(X, x0).evalf())
        assert h == pytest.approx(float(h_formula.subs(probe).subs(X, x0)), rel=1e-12)
        paper = float(correction(name, 0.7).subs(X, x0).evalf())
        scale = 0.7**3 * math.sqrt(2 * math.pi) * float(f1.subs(X, x0))
        assert paper == pytest.approx(scale * h, rel=1e-10)


@pytest.mark.parametrize("name", ["tanh", "softplus"])
def test_first_variation_is_the_integral_of_the_gradient(name):
    """dH/de along c measured on the estimator (central differences) equals the quadrature
    integral of h(x) c(x): the entropy, its gradient and the correction agree."""
    h = sp.lambdify(X, to_elementary(functional_gradient(name)), "numpy")
    c_expr = correction(name)
    c = sp.lambdify(X, to_elementary(c_expr), "numpy")
    expected = quad(lambda t: h(t) * c(t), -12, 12, limit=200)[0]
    down, _, up = _entropy_along(name, c_expr, 1e-3, 1.0)
    assert (up - down) / 2e-3 == pytest.approx(expected, rel=1e-3)
    assert expected > 0


def test_fold_derivative_is_the_hadamard_finite_part():
    """At a fold the pointwise gradient is not integrable; the estimator's derivative is
    its finite part. f = x^2: q(u) = p(sqrt u)/sqrt u, (log q)' = -1/2 - 1/(2u), so along
    k = exp(-x^2/2): dH/de = E[k]/2 + Pf E[k/X^2]/2 = 1/(2 sqrt 2) - sqrt(2)/2 = -1/(2 sqrt 2)
    (Pf integral of (exp(-x^2) - 1)/x^2 = -2 sqrt(pi)); the plain integral is +infinity."""
    cand = parse("x**2 + e*exp(-x**2/2)", init={"e": 0.0})
    up, down = (eafo.output_entropy(cand.substituted({"e": v})) for v in (3e-3, -3e-3))
    assert (up - down) / 6e-3 == pytest.approx(-1 / (2 * math.sqrt(2)), rel=1e-4)


# ---- every base: the sign convention, with the estimator --------------------------------
@pytest.mark.parametrize("sigma", SIGMAS)
@pytest.mark.parametrize("name", list_bases())
def test_eps_positive_raises_the_entropy_and_negative_lowers_it(name, sigma):
    """H(f - e c) < H(f) < H(f + e c) at e = 0.01 (and 0.002), for every base. Before the
    projected form, GELU's Tikhonov-regularised 'correction' raised H for both signs."""
    corr = correction(name, sigma)
    for e in (0.01, 0.002):
        down, mid, up = _entropy_along(name, corr, e, sigma)
        assert down < mid < up, (name, sigma, e, down, mid, up)


def test_gelu_regression_from_the_issue():
    # The old correction gave H = 0.054, -0.070, 0.181 at eps = -0.02, 0, 0.02.
    down, mid, up = _entropy_along("gelu", correction("gelu"), 0.02, 1.0)
    assert down < mid - 0.02 and up > mid + 0.02


# ---- the projected form ------------------------------------------------------------------
def test_hermite_functions_are_orthonormal_and_differentiated_right():
    z = np.linspace(-12, 12, 24001)
    psi, dpsi = hermite_functions(z, MAX_DEGREE)
    gram = psi @ psi.T * (z[1] - z[0])
    assert np.allclose(gram, np.eye(MAX_DEGREE + 1), atol=1e-9)
    assert np.allclose(dpsi[:, 1:-1], np.gradient(psi, z, axis=1)[:, 1:-1], atol=1e-5)


@pytest.mark.parametrize("name", sorted(PROJECTED))
def test_projected_form_is_smooth_bounded_and_crrelu_sized(name):
    corr = correction(name)
    assert corr.free_symbols <= {X}
    xs = np.linspace(-8, 8, 16001)
    vals = _values(corr, xs)
    assert np.isfinite(vals).all()
    # Normalised to the L2 norm of x exp(-x^2/2), sqrt(sqrt(pi)/2) = 0.941.
    assert math.sqrt(np.sum(vals**2) * (xs[1] - xs[0])) == pytest.approx(0.941, rel=1e-3)
    assert np.abs(np.diff(vals)).max() < 0.01  # continuous: no jump at folds or flat edges
    assert np.abs(_values(corr, np.array([-50.0, 50.0]))).max() < 1e-12


def test_projected_form_is_relative_to_the_levels_of_the_base():
    # GELU, SiLU, Mish tend to 0 on the left: w = f. star_relu is flat at its bias.
    for name in ("gelu", "silu", "mish", "hardswish", "squared_relu"):
        assert correction(name).has(get_base(name)), name
    assert correction("star_relu").has(get_base("star_relu") - get_base("star_relu").subs(X, -1))


@pytest.mark.parametrize("name,flat", [("hardswish", -3.0), ("squared_relu", 0.0),
                                       ("star_relu", 0.0)])
def test_projected_form_leaves_atoms_alone(name, flat):
    xs = np.linspace(-8, flat, 200)[:-1]
    assert np.all(_values(correction(name), xs) == 0)
    law = eafo.output_law(Candidate.from_expr(get_base(name) + 0.05 * correction(name)))
    assert law.atom_mass == pytest.approx(eafo.atom_mass(name), abs=1e-12)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_nearby_bases_get_nearby_corrections(sigma):
    """gelu and its tanh approximation differ by < 5e-4, though their far left tails
    decay differently (Gaussian vs exp(-0.07 |x|^3)): their corrections must agree.
    (They differed by 0.3 before the weight w = f made the correction relative.)"""
    xs = np.linspace(-6, 6, 1201) * sigma
    a, b = _values(correction("gelu", sigma), xs), _values(correction("gelu_tanh", sigma), xs)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()


def test_correction_is_cached_and_deterministic():
    assert correction("silu") is correction("silu")
    assert correction("silu", 0.5) != correction("silu")


# ---- what the rest of the engine relies on ------------------------------------------------
ALLOWED_FUNCS = (sp.exp, sp.log, sp.erf, sp.tanh, sp.Abs, sp.Max, sp.Min, sp.Piecewise)


@pytest.mark.parametrize("name", list_bases())
def test_every_correction_compiles_and_composes(name):
    corr = correction(name)
    assert corr.free_symbols <= {X}
    for func in corr.atoms(sp.Function):
        assert isinstance(func, ALLOWED_FUNCS) or type(func).__module__ == "spaces.functions", func
    for pw in corr.atoms(sp.Piecewise):
        assert pw.args[-1].cond == sp.true
    assert np.isfinite(_values(corr, np.linspace(-50, 50, 10001))).all()
    combined = Candidate.from_expr(get_base(name) + EPS * corr, init={"eps": 0.01})
    xs = np.linspace(-20, 20, 1001)
    assert np.isfinite(combined.evaluate(xs)).all()
    assert np.isfinite(combined.evaluate(xs, derivative=True)).all()
    # The formula survives a round trip through the safe parser (results files do that).
    assert Candidate.from_dict(combined.to_dict()).fingerprint == combined.fingerprint


def test_other_expressions():
    # A Candidate at its initial values; scaling f does not change f''/f'.
    assert sp.simplify(correction(parse("a*tanh(x)", init={"a": 2.0})) - correction("tanh")) == 0
    # abs folds at 0 although each branch is monotone; x**3 has a pole in f''/f'.
    assert correction_kind(sp.Abs(X)) == correction_kind(X**3) == "projected"
    # hard-tanh: flat outside [-1, 1] (two atoms), the paper's form in between.
    vals = _values(correction(sp.Max(-1, sp.Min(1, X))), np.array([-3.0, 0.5, 3.0]))
    assert vals == pytest.approx([0.0, 0.5 * math.exp(-0.125), 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="Candidate"):
        correction(sp.Symbol("a", real=True) * X)
    with pytest.raises(ValueError, match="sigma"):
        correction("relu", sigma=0)
    with pytest.raises(ValueError, match="not a function"):
        functional_gradient("gelu")
