"""spaces.kernels.forms and float32_ops: the float32 forms of the fused CPU kernels, against
float64 exact values (an independent reference: the exact kernels in float64, and scipy),
at the edges (infinities, NaN, huge and tiny inputs), and the stored coefficient tables'
own accuracy. Bounds are absolute against float64, never relative to the host's float32
libm (torch's erf differs by a factor 4 between an AVX2 EPYC and an AVX-512 Xeon)."""
import math

import numpy as np
import pytest
import torch
from scipy import special

import spaces
from spaces.codegen import function_sources, kernel_functions
from spaces.kernels import float32_ops, forms

# Documented accuracy of the float32 forms (docs/kernels.md): up to 1.2e-6 off float64
# for gelu's forward (the rational erf's own float32 rounding, a few ulp), a few 1e-7
# elsewhere; measured: 8.3e-7 (gelu), at most 6.9e-7 for every other form and derivative.
FLOAT32_FORM_ERROR = 1.2e-6


def kernels(formula, eps=0.3):
    has_eps = "eps" in formula
    c = spaces.parse(formula, init={"eps": eps} if has_eps else None, learnable=["eps"] if has_eps else [])
    return kernel_functions(c.code_expr(), c.learnable), [torch.tensor(eps)] if has_eps else []


def error(y, ref):
    """Largest absolute error where |ref| <= 1, relative above."""
    return ((y.double() - ref).abs() / ref.abs().clamp_min(1.0)).max().item()


@pytest.mark.parametrize("formula", ["gelu(x)", "gelu(x) + eps*x*exp(-x**2/2)", "eps*erf(x) + x",
                                     "eps*gelu(x) + (1 - eps)*silu(x)", "eps*gelu(x) + (1 - eps)*tanh(x)",
                                     "silu(x) + eps*(x**2 - 1)*exp(-x**2/2)", "relu(x) + eps*x*exp(-x**2/2)",
                                     "mish(x)", "sigmoid(x)*eps", "tanh(x)", "gelu_tanh(x)", "softplus(x)",
                                     "x*tanh(x)", "x*tanh(x + 1)", "tanh(x + 1)"])
def test_float32_forms_are_within_their_documented_accuracy_of_float64(formula):
    """The fused float32 forms (polynomial exp; erf and sigmoid through it; the rational
    tanh and erf; tanh' through exp or a rational) against the exact kernels in float64,
    forward and derivative: within 1.2e-6 (absolute where |f| <= 1, relative above), on
    [-12, 12] and at 0, 1e-30, -1e-8, 3e-5. The coefficient's gradient (a sum over the
    tensor) agrees with the float32 exact kernels' to float32 summation error."""
    k, coefs = kernels(formula)
    x = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([0.0, 1e-30, -1e-8, 3e-5])])
    g = torch.ones_like(x)
    exact_y = k["fwd"](x.double(), *[t.double() for t in coefs])
    exact_d = k["bwd"](x.double(), *[t.double() for t in coefs], g.double())
    fast_y, fast_d = k["f32_fwd"](x, *coefs), k["f32_bwd"](x, *coefs, g)
    assert fast_y.dtype == torch.float32
    assert error(fast_y, exact_y) <= FLOAT32_FORM_ERROR
    assert error(fast_d[0], exact_d[0]) <= FLOAT32_FORM_ERROR
    for fast, exact in zip(fast_d[1:], exact_d[1:]):
        assert abs(fast.item() - exact.item()) <= 5e-7 * x.numel()


@pytest.mark.parametrize("formula", ["tanh(x)", "sigmoid(x)", "silu(x)", "gelu(x)", "mish(x)",
                                     "relu(x) + x*exp(-x**2/2)", "0.8*gelu(x) + 0.2*tanh(x)", "gelu_tanh(x)",
                                     "x*tanh(x)", "softplus(x)"])
def test_float32_forms_agree_with_torch_at_infinities_huge_tiny_and_nan(formula):
    """The fused float32 forms at the edges (where exp under- or overflows, where
    tanh and sigmoid saturate): the same values as the exact torch forms, NaN for NaN.
    At +-inf, torch's own value or the function's limit there (the float64 value at
    +-1e300, rounded to float32): torch's float32 gelu gives NaN at +inf on some CPUs
    (its AVX-512 kernel) and inf on others."""
    k, _ = kernels(formula)
    x = torch.tensor([-1e30, -100.0, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 100.0, 1e30, float("nan")])
    g = torch.ones_like(x)
    assert torch.allclose(k["f32_fwd"](x), k["fwd"](x), atol=1e-6, equal_nan=True)
    assert torch.allclose(k["f32_bwd"](x, g)[0], k["bwd"](x, g)[0], atol=1e-6, equal_nan=True)
    inf, huge = torch.tensor([-float("inf"), float("inf")]), torch.tensor([-1e300, 1e300], dtype=torch.float64)
    for fused, exact, limit in [
            (k["f32_fwd"](inf), k["fwd"](inf), k["fwd"](huge).float()),
            (k["f32_bwd"](inf, torch.ones(2))[0], k["bwd"](inf, torch.ones(2))[0],
             k["bwd"](huge, torch.ones(2, dtype=torch.float64))[0].float())]:
        for f, e, lim in zip(fused.tolist(), exact.tolist(), limit.tolist()):
            assert f == lim or f == e or math.isnan(f) and math.isnan(e), (f, e, lim)


def test_polynomial_exp_is_float32_accurate_and_underflows_to_zero():
    """_exp_nonpositive (every exp of a fused float32 kernel) against float64 exp:
    relative error below 1e-7 wherever float32 exp is a normal number, exactly 0 below
    -88 and at -inf, exactly 1 at 0, NaN propagated; torch.compile'd, the same to 2e-7."""
    exp_np = float32_ops._exp_nonpositive
    a = -torch.cat([torch.linspace(0, 87.3, 1_000_001), torch.rand(100_000) * 1e-3,
                    torch.tensor([0.0, 1e-30, 1e-8])])
    ref = torch.exp(a.double())
    assert ((exp_np(a).double() - ref).abs() / ref).max().item() < 1e-7
    out = exp_np(torch.tensor([-88.0, -100.0, -1e30, -float("inf"), 0.0, float("nan")]))
    assert out[:4].tolist() == [0.0] * 4 and out[4].item() == 1.0 and out[5].isnan()
    compiled = torch.compile(exp_np, fullgraph=True)
    assert torch.allclose(compiled(a), exp_np(a), rtol=2e-7, atol=0)


def test_softplus_and_sign_helpers_match_torch():
    """_softplus (y P(y)/Q(y), no log) is within 3e-7 of float64 softplus relatively (2.5e-7
    measured, down to softplus(-80) = 1.8e-35), exactly a for a > 17 and NaN for NaN;
    _with_sign_of(y, x) is sign(x) * y for x != 0."""
    a = torch.cat([torch.linspace(-80, 40, 200_001), torch.tensor([17.5, 1e30])])
    ref = torch.nn.functional.softplus(a.double(), threshold=1e9)
    assert ((float32_ops._softplus(a).double() - ref).abs() / ref).max().item() < 3e-7
    assert torch.equal(float32_ops._softplus(a[a > 17]), a[a > 17])
    assert float32_ops._softplus(torch.tensor(float("nan"))).isnan()
    y, x = torch.rand(1000), torch.randn(1000)
    assert torch.equal(float32_ops._with_sign_of(y, x), torch.sign(x) * y)


# Measured in float64 with the stored (float32-rounded) coefficients: 7.2e-8, 1.06e-7,
# 4.3e-8 and 2.9e-8 (the fits before rounding: 5.3e-8, 5.4e-8, 2.3e-8, 1.6e-8).
@pytest.mark.parametrize("name,stored,reference,limit", [
    ("tanh", forms.TANH_RATIONAL, np.tanh, 8e-8),
    ("erf", forms.ERF_RATIONAL, special.erf, 1.2e-7),
    ("1 - tanh", forms.TANH_COMPLEMENT_RATIONAL, lambda a: 2.0 / (1.0 + np.exp(2.0 * a)), 5e-8),
    ("log(1 + y)/y", float32_ops._LOG1P_RATIO_RATIONAL, lambda y: np.log1p(y) / y, 3e-8),
])
def test_stored_rational_coefficients_are_accurate(name, stored, reference, limit):
    """The stored rationals (fitted by tools/minimax.py, coefficients rounded to float32),
    evaluated in float64 on a fine grid of [0, c] (off 0 for the ratios), are within a few
    1e-8 of the function (numpy/scipy), below float32's rounding of the kernels that use
    them: tanh and erf odd, x P(x^2)/Q(x^2); 1 - tanh(a) and log(1 + y)/y as P/Q."""
    c, p, q = stored
    odd = name in ("tanh", "erf")
    x = np.linspace(0.0, c, 400_001)[1:]
    v = x * x if odd else x
    r = (x if odd else 1.0) * np.polyval(p[::-1], v) / np.polyval(q[::-1], v)
    assert np.abs(r - reference(x)).max() < limit
    assert all(np.float32(t) == t for t in (*p, *q))  # rounded to float32, as documented


def test_stored_exp_polynomial_is_within_5e_9_of_exp():
    """exp(r) = 1 + r + r^2 P(r) on |r| <= ln(2)/2 with the stored P: relative error below
    5e-9 in float64 (3.9e-9 measured; far below float32's rounding)."""
    r = np.linspace(-np.log(2) / 2, np.log(2) / 2, 200_001)
    approx = 1 + r + r * r * np.polyval(float32_ops._EXP_REMAINDER[::-1], r)
    assert np.abs(approx / np.exp(r) - 1).max() < 5e-9


@pytest.mark.parametrize("formula", ["exp(-eps*Abs(x**3 - erf(x)))", "Abs(tanh(x) - x)*eps + x"])
def test_float32_forms_stay_real_inside_abs(formula):
    """The float32 forms' own functions (sign bits, selects) are real to sympy: inside an
    Abs, whose derivative takes sign(...) of them, no conjugate() appears, the kernels
    print, and away from the kink they agree with the exact ones."""
    k, (eps,) = kernels(formula)
    x = torch.linspace(-3, 3, 601)
    x = x[(x.abs() > 0.05)]  # off the kink at 0, where A&S erf's 1e-9 can flip a sign
    g = torch.ones_like(x)
    assert torch.allclose(k["f32_fwd"](x, eps), k["fwd"](x, eps), atol=1e-6)
    assert torch.allclose(k["f32_bwd"](x, eps, g)[0], k["bwd"](x, eps, g)[0], atol=1e-5)


@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_rational_forward_forms_are_exactly_one_past_their_clamp_odd_and_accurate(name):
    """The fused forward tanh and erf (erf where no Gaussian is computed anyway): sign(x)
    a P(a**2)/Q(a**2), a = |x| clamped, capped at 1. Exactly +-1 from the clamp on (so
    gelu(-1e30) is -0, not -1e30 times a rounding error), never past 1, odd, increasing
    up to float32 rounding (dips of a few ulp), within 4e-7 of float64 everywhere; the
    rational at the clamp is over 1 by far more than rounding."""
    fit, clamp, exact = {"tanh": (forms.TANH_RATIONAL, forms.TANH_CLAMP, np.tanh),
                         "erf": (forms.ERF_RATIONAL, forms.ERF_CLAMP, special.erf)}[name]
    f32 = kernels(f"{name}(x)")[0]["f32_fwd"]
    x = torch.linspace(0, 30, 300_001)
    y = f32(x)
    assert torch.equal(f32(-x), -y)
    assert y.diff().min().item() > -5e-7 and y.max().item() == 1.0
    assert (y[x >= clamp] == 1.0).all()
    assert np.abs(y.double().numpy() - exact(x.double().numpy())).max() < 4e-7
    _, p, q = fit
    c = np.float64(clamp)
    assert c * np.polyval(p[::-1], c * c) / np.polyval(q[::-1], c * c) - 1.0 > 1e-6


def test_gelu_forward_form_is_within_its_documented_accuracy():
    """gelu's fused forward (the rational erf) is -0 for x = -1e30 and x for x = 1e30,
    within 1.2e-6 of float64 on [-10, 10] and within 1e-6 in the tail (x in [-6, -3],
    values down to -1e-8): about float32 torch's own F.gelu's accuracy on an AVX-512 Xeon
    (1.15e-6; 2.6e-7 on an AVX2 EPYC)."""
    f32 = kernels("gelu(x)")[0]["f32_fwd"]
    big = torch.tensor([1e30])
    assert f32(-big).item() == 0.0 and torch.equal(f32(big), big)
    for lo, hi, limit in ((-10, 10, 1.2e-6), (-6, -3, 1e-6)):
        x = torch.linspace(lo, hi, 200_001)
        exact = x.double() * (1 + torch.from_numpy(special.erf(x.double().numpy() / 2**0.5))) / 2
        assert (f32(x).double() - exact).abs().max().item() < limit


@pytest.mark.parametrize("formula, uses_exp", [("tanh(x)", False), ("0.3*gelu(x) + 0.7*tanh(x)", False),
                                               ("x*tanh(x)", True), ("x*tanh(x + 1)", True), ("tanh(x + 1)", False)])
def test_backward_tanh_form_follows_how_the_gradient_depends_on_it(formula, uses_exp):
    """A backward needing tanh' takes 1 - tanh(|u|) as a rational (no exp) where the
    gradient's sensitivity to tanh(u) is free of x, so an absolute error stays bounded;
    where x multiplies tanh' (x tanh x) it keeps the exp form, whose tanh' is relatively
    accurate in the tails: within 3e-7 of float64 either way (relative above 1; 2.1e-7
    measured), and 0 beyond |u| = 9 for the rational."""
    c = spaces.parse(formula)
    src = function_sources(c.code_expr(), [], "_k")
    bwd = src[src.index("def _k_f32_bwd"):]
    assert ("_exp_nonpositive((-2.0 * " in bwd) == uses_exp  # e = exp(-2|u|)
    k = kernel_functions(c.code_expr(), [])
    x = torch.linspace(-12, 12, 48_001)
    g = torch.ones_like(x)
    fast = k["f32_bwd"](x, g)[0]
    assert error(fast, k["bwd"](x.double(), g.double())[0]) < 3e-7
    if formula == "tanh(x)":
        assert (fast[x.abs() > 9.0] == 0).all() and (fast >= 0).all()


def test_mish_kernels_take_one_exp_and_keep_tanh_prime_relatively_accurate():
    """mish's tanh(softplus(x)) in fused kernels: closed forms in e = exp(-|x|), one exp
    per kernel (sigmoid's included); 1 - tanh(softplus(x)) stays relatively accurate
    where it is tiny (x = 6..14), which mish'(x) multiplies by x."""
    c = spaces.parse("mish(x)")
    src = function_sources(c.code_expr(), [], "_k")
    f32 = src[src.index("def _k_f32_fwd"):]
    fwd, bwd = f32[:f32.index("def _k_f32_bwd")], f32[f32.index("def _k_f32_bwd"):]
    assert fwd.count("_exp_nonpositive(") == 1 and bwd.count("_exp_nonpositive(") == 1
    assert "softplus" not in f32 and "torch.tanh" not in f32
    k = kernel_functions(c.code_expr(), [])
    x = torch.linspace(6, 14, 8001)
    g = torch.ones_like(x)
    exact = k["bwd"](x.double(), g.double())[0]
    fast = k["f32_bwd"](x, g)[0].double()
    # mish'(x) = tanh(sp) + x sigmoid(x) sech^2(sp): an absolute error of 1e-7 in sech^2
    # would show here as x * 1e-7 (1 - rational**2 was 5e-6 off at x = 8)
    assert (fast - exact).abs().max() < 2.5e-7


def test_backward_computes_each_transcendental_once():
    """gelu(x) in a coefficient's gradient reuses the erf of gelu'(x); constants are folded."""
    c = spaces.parse("beta*gelu(x) + (1 - beta)*silu(x)", init={"beta": 0.7}, learnable=["beta"])
    src = function_sources(c.code_expr(), ["beta"], "_a")
    bwd = src[src.index("def _a_bwd"):src.index("def _a_eager_fwd")]
    f32 = src[src.index("def _a_f32_fwd"):]
    # float32 forms: exp(-|x|) for sigmoid in both kernels, exp(-x**2/2) for erf and phi
    # in the backward (the forward's erf, with no Gaussian to share, is a rational); no
    # Sleef call left for inductor to make
    fwd32, bwd32 = f32[:f32.index("def _a_f32_bwd")], f32[f32.index("def _a_f32_bwd"):]
    assert fwd32.count("_exp_nonpositive(") == 1 and bwd32.count("_exp_nonpositive(") == 2
    assert not any(f in f32 for f in ("torch.exp", "torch.erf", "torch.sigmoid", "F.silu"))
    assert "torch.where(x > 0" in f32 and ".to(x.dtype)" not in f32  # sigmoid's sides: a blend
    assert bwd.count("torch.erf(") == 1 and bwd.count("torch.sigmoid(") == 1
    assert "F.gelu" not in bwd and "F.silu" not in bwd
    assert "as_tensor" not in src  # 1/sqrt(2*pi) is one float literal, not a tensor op
