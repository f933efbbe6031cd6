"""Generated torch modules: forward vs an independent sympy reference, sympy
backward vs numerical gradients (gradcheck, float64), dtypes, compile, timm."""
import math

import numpy as np
import pytest
import sympy as sp
import torch

import spaces
from spaces.functions import X, to_elementary
from spaces.space_eafo_default import BASES, correction_term

FAMILIES = [("crrelu", 1), ("hermite", 0), ("hermite", 1), ("hermite", 2), ("hermite", 3), ("eafo", 1)]
ALL_BASES = spaces.list_bases()


def corrected(base, family, k, learnable=True, init=0.3):
    return spaces.space.with_coefficient(spaces.get_base(base), correction_term(base, family, k),
                                         "eps", init, learnable)


def reference(candidate, xs):
    """Independent reference: sympy's own lambdify of the elementary form (numpy/scipy)."""
    f = sp.lambdify(X, to_elementary(candidate.substituted()), modules=["scipy", "numpy"])
    return np.broadcast_to(f(xs), xs.shape)


def gradcheck_module(candidate, xs):
    m = candidate.to_module().double()
    x = xs.clone().requires_grad_(True)
    return torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def _points(n):
    # Avoid the kinks of piecewise bases (0, +-3) where one-sided gradients differ.
    xs = torch.linspace(-4.9, 5.1, n, dtype=torch.float64)
    for kink in (0.0, 3.0, -3.0):
        xs = xs[(xs - kink).abs() > 1e-3]
    return xs


@pytest.mark.parametrize("base", ALL_BASES)
def test_gradcheck_every_base(base):
    c = spaces.base_candidate(base)  # prelu, star_relu: with their learnable coefficients
    assert gradcheck_module(c, _points(61))


@pytest.mark.parametrize("family,k", FAMILIES)
@pytest.mark.parametrize("base", ["relu", "gelu", "silu", "tanh", "elu", "mish"])
def test_gradcheck_every_correction_family_including_coefficient(base, family, k):
    c = corrected(base, family, k)
    x = _points(41).requires_grad_(True)
    eps = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    # gradcheck over the input and the learnable coefficient together
    assert torch.autograd.gradcheck(c.module_class().function.apply, (x, eps),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family,k", FAMILIES)
@pytest.mark.parametrize("base", sorted(BASES))
def test_forward_matches_lambdify_reference_on_10000_points(base, family, k):
    c = corrected(base, family, k, learnable=False, init=0.2)
    xs = np.linspace(-10, 10, 10_000)
    ours = c.to_module().double()(torch.from_numpy(xs)).detach().numpy()
    assert np.allclose(ours, reference(c, xs), atol=1e-6, rtol=1e-6)


def test_learnable_coefficient_gradient_is_sum_of_pointwise_derivative():
    c = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])
    m = c.to_module().double()
    x = torch.linspace(-3, 3, 101, dtype=torch.float64)
    g = torch.randn_like(x)
    m(x).backward(g)
    expected = (g * x * torch.exp(-x**2 / 2)).sum()
    assert torch.allclose(m.eps.grad, expected, atol=1e-12)


def test_each_module_instance_has_its_own_scalar_parameter():
    cls = spaces.BASELINES["crrelu"].module_class()
    a, b = cls(), cls(inplace=True)
    assert a.eps is not b.eps and a.eps.shape == () and a.eps.item() == pytest.approx(0.01)
    assert [n for n, _ in a.named_parameters()] == ["eps"]
    assert "eps*x*exp(-x**2/2) + relu(x)" in repr(a)


def test_fixed_coefficients_are_not_parameters():
    c = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.5})
    assert list(c.to_module().parameters()) == []


def test_backward_saves_only_the_input_and_scalars():
    m = spaces.BASELINES["crrelu"].to_module()
    x = torch.randn(1000, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        m(x).sum().backward()
    assert sorted(saved) == [1, 1000]  # eps (a scalar) and x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_works_in_float32_float64_bfloat16(dtype):
    m = spaces.BASELINES["crrelu"].to_module().to(dtype)
    x = torch.linspace(-4, 4, 1001, dtype=dtype, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert y.dtype == dtype and x.grad.dtype == dtype and m.eps.grad.dtype == dtype
    ref = spaces.BASELINES["crrelu"].to_module().double()(x.detach().double())
    tol = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 2e-2}[dtype]
    assert torch.allclose(y.double(), ref, atol=tol, rtol=tol)


def test_bfloat16_input_with_float32_parameter_under_autocast_style_mixing():
    m = spaces.BASELINES["crrelu"].to_module()  # float32 eps
    x = torch.randn(64, dtype=torch.bfloat16, requires_grad=True)
    m(x).sum().backward()
    assert x.grad.dtype == torch.bfloat16 and m.eps.grad.dtype == torch.float32


def test_torch_compile_fullgraph_matches_eager():
    c = spaces.parse("gelu(x) + eps*(x**2 - 1)*exp(-x**2/2)", init={"eps": 0.1}, learnable=["eps"])
    eager, comp = c.to_module(), c.to_module()
    compiled = torch.compile(comp, fullgraph=True)
    x1 = torch.randn(257, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = eager(x1), compiled(x2)
    y1.sum().backward()
    y2.sum().backward()
    assert torch.allclose(y1, y2, atol=1e-6)
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert torch.allclose(eager.eps.grad, comp.eps.grad, atol=1e-4)


@pytest.mark.parametrize("native", [True, False], ids=["c-kernels", "inductor-kernels"])
@pytest.mark.parametrize("formula,transposed", [("beta*gelu(x) + (1 - beta)*tanh(x)", False), ("x", False),
                                                ("x", True), ("alpha*relu(x) + beta*x*exp(-x**2/2)", False)])
def test_compiled_model_runs_float32_cpu_kernels_as_opaque_fused_ops(formula, transposed, native, monkeypatch):
    """Under torch.compile(fullgraph=True), a float32 CPU module's forward and backward
    are the generated module's two custom ops, which run its own fused float32 kernels
    (FMA-contracted, which a model's graph is not): our C kernels, or with
    use_native_kernels(False) the ops' compiled kernels; the values and gradients match
    eager. "x" checks the backward op's output is not the incoming gradient itself
    (custom ops may not alias inputs); a transposed input after another shape (a
    dynamic-shape graph checks strides), that the ops lay their outputs out as their
    fake kernels promise (empty_like(x)); with two coefficients, that their gradients
    (two outputs of the backward op) do not alias each other."""
    coefficients = {n: v for n, v in (("alpha", 1.1), ("beta", 0.7)) if n in formula}
    c = spaces.parse(formula, init=coefficients or None, learnable=list(coefficients))
    cls = c.module_class()
    ns = cls.forward.__globals__
    monkeypatch.setitem(ns["_NATIVE"], "enabled", native)  # use_native_kernels(native), undone after
    ns["_FUSED_F32"].clear()
    eager, comp = cls(), cls()
    compiled = torch.compile(comp, fullgraph=True)
    if transposed:
        compiled(torch.randn(4, 600, requires_grad=True)).sum().backward()
        comp.zero_grad()
    x = torch.randn(500, 3).t() if transposed else torch.randn(3, 500)
    x1 = (x * 3).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = eager(x1), compiled(x2)
    y1.square().sum().backward()
    y2.square().sum().backward()
    assert set(ns["_FUSED_F32"]) == (set() if native else {"op_fwd", "op_bwd"})
    assert ns["_OP_NAME"].startswith("eafo::candidate_")
    torch.testing.assert_close(y2, y1, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(x2.grad, x1.grad, atol=2e-6, rtol=2e-6)
    for p1, p2 in zip(eager.parameters(), comp.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("shape,row", [((16, 197, 768), 768), ((4, 50, 96), 4800), ((4, 1000), 4000),
                                       ((1000,), 1000), ((3, 256), 768), ((0, 768), 0)])
def test_fused_float32_kernels_run_over_rows_of_the_trailing_dimensions(shape, row):
    """Rows are the trailing dimensions once they reach 512 elements, a whole number of
    16-float vectors, at least 2 of them; otherwise one row holds the whole tensor."""
    ns = spaces.parse("silu(x)").module_class().forward.__globals__
    assert ns["_row_length"](shape) == row


def test_fused_float32_kernels_take_the_sign_by_a_select_and_256_bit_vectors_over_avx512():
    """The C++ inductor writes for the tanh mix's fused forward has no float-to-int bit
    view (inductor writes one as a store, a scalar loop and a load: with 512-bit vectors
    GCC made ~35 shuffles of each, 6.3 ms instead of 2.2), and the kernels compile for
    256-bit vectors exactly where inductor would pick 512-bit ones and AVX2 is there (one
    512-bit FMA unit ran them 1.5x slower), always with multiply-adds contracted."""
    from torch._inductor import cpu_vec_isa
    from torch._inductor.utils import run_and_get_code

    c = spaces.parse("beta*gelu(x) + (1 - beta)*tanh(x)", init={"beta": 0.7}, learnable=["beta"])
    ns = c.module_class().forward.__globals__
    options = ns["_cpu_kernel_options"]()
    assert options["cpp.enable_floating_point_contract_flag"] == "fast"
    isa = cpu_vec_isa.pick_vec_isa()
    avx512_over_avx2 = isa.bit_width() == 512 and 256 in {i.bit_width() for i in cpu_vec_isa.valid_vec_isa_list()}
    assert options.get("cpp.simdlen") == (256 if avx512_over_avx2 else None)
    x = torch.randn(6, 768)
    y, code = run_and_get_code(ns["_compiled"](ns["_F32_ROWS"]["fwd"]), x, torch.zeros(6, 1), torch.tensor(0.7))
    torch.testing.assert_close(y, ns["_PLAIN"]["f32_fwd"](x, torch.tensor(0.7)))
    assert code and "bit_cast<int32_t>" not in "".join(code)


@pytest.mark.parametrize("formula", ["x", "beta*gelu(x) + (1 - beta)*tanh(x)"])
def test_fused_float32_kernels_match_plain_kernels_for_any_layout_and_batch_size(formula, monkeypatch):
    """The compiled fused float32 CPU kernels (use_native_kernels(False); run over rows) give
    the plain float32 forms' values and gradients for contiguous, transposed and sliced
    inputs and gradients, and for ten batch sizes without a recompilation each
    (fullgraph=True would fail past 8). Where f' = 1 the backward hands back g itself, as
    the plain form does. (The C kernels: tests/test_native.py.)"""
    has_beta = "beta" in formula
    c = spaces.parse(formula, init={"beta": 0.7} if has_beta else None, learnable=["beta"] if has_beta else [])
    ns = c.module_class().forward.__globals__
    monkeypatch.setitem(ns["_NATIVE"], "enabled", False)  # use_native_kernels(False), undone after
    coefs = [torch.tensor(0.7)] if has_beta else []
    run, plain = ns["_run_f32"], ns["_PLAIN"]
    xs = [torch.randn(b, 20, 64) * 3 for b in range(1, 11)]
    xs += [torch.randn(8, 64, 20).transpose(1, 2) * 3, torch.randn(8, 20, 128)[..., ::2] * 3]
    with torch.no_grad():
        for x in xs:
            g = torch.randn(x.shape[::-1]).permute(*reversed(range(x.dim())))  # non-contiguous g
            torch.testing.assert_close(run("fwd", x, *coefs), plain["f32_fwd"](x, *coefs), atol=1e-6, rtol=1e-6)
            (dx, *dc), (ref_dx, *ref_dc) = run("bwd", x, *coefs, g), plain["f32_bwd"](x, *coefs, g)
            torch.testing.assert_close(dx, ref_dx, atol=1e-6, rtol=1e-5)
            # beta's gradient is a float32 sum of g * (gelu - tanh), |gelu - tanh| <= |x| + 1,
            # summed in another order: its rounding error scales with the sum of |terms|
            # (not with the result, which cancels), ~1e-7 of it per level of summation
            for fused, ref in zip(dc, ref_dc):
                assert abs(fused.item() - ref.item()) <= 2e-6 * (g.abs() * (x.abs() + 1)).sum().item()
            g = torch.randn_like(x).contiguous()
            if not has_beta:
                assert run("bwd", x, g)[0] is g


def test_each_load_of_a_generated_module_registers_its_own_ops():
    """The same source loaded twice (as a registry or an export may do) gets two op
    names, so the second load does not fail on a name already registered."""
    from spaces.codegen import load_module_source, module_source
    c = spaces.parse("silu(x)")
    src = module_source(c.code_expr(), {}, class_name="Twice", func_name="twice", formula=c.formula,
                        docstring="d")
    a, b = load_module_source(src, "twice_a"), load_module_source(src, "twice_b")
    assert a._OP_NAME != b._OP_NAME and a._OP_NAME.startswith("eafo::twice_")


@pytest.mark.parametrize("formula,dtype", [
    ("beta*gelu(x) + (1 - beta)*x*exp(-x**2/2)", torch.float32),
    ("beta*gelu(x) + (1 - beta)*x*exp(-x**2/2)", torch.float64),
    ("beta*tanh(x) + (1 - beta)*silu(x)", torch.float32),
])
def test_compiled_kernels_match_plain_kernels_and_can_be_switched_off(formula, dtype):
    """use_compiled_kernels() fuses the kernels (float32 on the CPU: the polynomial
    exp, erf, tanh and sigmoid forms, FMA-contracted) without changing values or
    gradients beyond float32 rounding."""
    c = spaces.parse(formula, init={"beta": 0.7}, learnable=["beta"])
    cls = c.module_class()
    ns = cls.forward.__globals__  # the generated module's namespace
    x1 = (torch.randn(4, 1000, dtype=dtype) * 3).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    plain, fused = cls().to(dtype), cls().to(dtype)
    y1 = plain(x1)
    y1.pow(2).sum().backward()
    ns["use_compiled_kernels"](True)
    try:
        assert ns["_kernel"]("fwd", x2) is not ns["_PLAIN"]["fwd"]
        y2 = fused(x2)
        y2.pow(2).sum().backward()
    finally:
        ns["use_compiled_kernels"](False)
    assert ns["_kernel"]("fwd", x2) is ns["_PLAIN"]["fwd"]
    tol = 1e-10 if dtype == torch.float64 else 2e-6
    assert torch.allclose(y1, y2, atol=tol, rtol=tol)
    assert torch.allclose(x1.grad, x2.grad, atol=tol, rtol=tol)
    assert torch.allclose(plain.beta.grad, fused.beta.grad, rtol=1e-5)


@pytest.mark.parametrize("formula", ["gelu(x)", "gelu(x) + eps*x*exp(-x**2/2)", "eps*erf(x) + x",
                                     "eps*gelu(x) + (1 - eps)*silu(x)", "eps*gelu(x) + (1 - eps)*tanh(x)",
                                     "silu(x) + eps*(x**2 - 1)*exp(-x**2/2)", "relu(x) + eps*x*exp(-x**2/2)",
                                     "mish(x)", "sigmoid(x)*eps", "tanh(x)", "gelu_tanh(x)", "softplus(x)"])
def test_float32_kernel_form_is_as_accurate_as_torch_erf(formula):
    """The fused float32 forms (polynomial exp; erf and sigmoid through it; the rational
    tanh; tanh' through exp) against float64 exact values: no worse than float32 torch
    itself, to a few 1e-7."""
    has_eps = "eps" in formula
    c = spaces.parse(formula, init={"eps": 0.3} if has_eps else None, learnable=["eps"] if has_eps else [])
    ns = c.module_class().forward.__globals__
    x = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([0.0, 1e-30, -1e-8, 3e-5])])
    coefs = [torch.tensor(0.3)] if has_eps else []
    g = torch.ones_like(x)
    exact_y = ns["_PLAIN"]["fwd"](x.double(), *[t.double() for t in coefs])
    exact_d = ns["_PLAIN"]["bwd"](x.double(), *[t.double() for t in coefs], g.double())
    fast_y = ns["_PLAIN"]["f32_fwd"](x, *coefs)
    fast_d = ns["_PLAIN"]["f32_bwd"](x, *coefs, g)
    assert fast_y.dtype == torch.float32
    plain32_y = ns["_PLAIN"]["fwd"](x, *coefs)  # float32 torch ops, erf included
    plain32_d = ns["_PLAIN"]["bwd"](x, *coefs, g)

    def error(y, ref):
        return ((y.double() - ref).abs() / ref.abs().clamp_min(1.0)).max().item()  # relative above 1

    # A&S 7.1.26 is within 1.5e-7 of erf, the tanh rational within 3e-7 evaluated in
    # float32 (3.5e-7 off this grid): allow that over float32 torch
    assert error(fast_y, exact_y) <= error(plain32_y, exact_y) + 3e-7
    assert error(fast_d[0], exact_d[0]) <= error(plain32_d[0], exact_d[0]) + 3e-7
    for a, b in zip(fast_d[1:], plain32_d[1:]):
        assert abs(a.item() - b.item()) <= 5e-7 * x.numel()


@pytest.mark.parametrize("formula", ["tanh(x)", "sigmoid(x)", "silu(x)", "gelu(x)", "mish(x)",
                                     "relu(x) + x*exp(-x**2/2)", "0.8*gelu(x) + 0.2*tanh(x)", "gelu_tanh(x)",
                                     "x*tanh(x)", "softplus(x)"])
def test_float32_kernel_forms_agree_with_torch_at_infinities_huge_tiny_and_nan(formula):
    """The fused float32 forms at the edges (where exp under- or overflows, where
    tanh and sigmoid saturate): the same values as the exact torch forms, NaN for NaN.
    At +-inf, torch's own value or the function's limit there (the float64 value at
    +-1e300, rounded to float32): torch's float32 gelu gives NaN at +inf on some CPUs
    (its AVX-512 kernel) and inf on others."""
    plain = spaces.parse(formula).module_class().forward.__globals__["_PLAIN"]
    x = torch.tensor([-1e30, -100.0, -88.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.0, 100.0, 1e30, float("nan")])
    g = torch.ones_like(x)
    assert torch.allclose(plain["f32_fwd"](x), plain["fwd"](x), atol=1e-6, equal_nan=True)
    assert torch.allclose(plain["f32_bwd"](x, g)[0], plain["bwd"](x, g)[0], atol=1e-6, equal_nan=True)
    inf, huge = torch.tensor([-float("inf"), float("inf")]), torch.tensor([-1e300, 1e300], dtype=torch.float64)
    for fused, exact, limit in [
            (plain["f32_fwd"](inf), plain["fwd"](inf), plain["fwd"](huge).float()),
            (plain["f32_bwd"](inf, torch.ones(2))[0], plain["bwd"](inf, torch.ones(2))[0],
             plain["bwd"](huge, torch.ones(2, dtype=torch.float64))[0].float())]:
        for f, e, lim in zip(fused.tolist(), exact.tolist(), limit.tolist()):
            assert f == lim or f == e or math.isnan(f) and math.isnan(e), (f, e, lim)


def test_polynomial_exp_of_fused_kernels_is_float32_accurate_and_underflows_to_zero():
    """_exp_nonpositive (every exp of a fused float32 CPU kernel) against float64 exp:
    relative error below 1e-7 wherever float32 exp is a normal number, exactly 0 below
    -88 and at -inf, exactly 1 at 0, NaN propagated."""
    ns = spaces.parse("x*exp(-x**2/2)").module_class().forward.__globals__
    exp_np = ns["_exp_nonpositive"]
    a = -torch.cat([torch.linspace(0, 87.3, 1_000_001), torch.rand(100_000) * 1e-3,
                    torch.tensor([0.0, 1e-30, 1e-8])])
    ref = torch.exp(a.double())
    rel = ((exp_np(a).double() - ref).abs() / ref).max().item()
    assert rel < 1e-7
    out = exp_np(torch.tensor([-88.0, -100.0, -1e30, -float("inf"), 0.0, float("nan")]))
    assert out[:4].tolist() == [0.0] * 4 and out[4].item() == 1.0 and out[5].isnan()
    compiled = torch.compile(exp_np, fullgraph=True)
    assert torch.allclose(compiled(a), exp_np(a), rtol=2e-7, atol=0)


def test_polynomial_exp_coefficients_are_the_fit_in_spaces_minimax():
    """The exp polynomial's coefficients (printed into the torch and the C kernels'
    source) are what spaces.minimax.exp_remainder_fit gives, to float32 precision, and
    that fit is within 1e-8 of exp on the reduced range, far below float32's rounding."""
    import numpy as np

    from spaces import codegen, minimax, native
    worst, fit = minimax.exp_remainder_fit()
    assert worst < 1e-8
    assert np.allclose(codegen.EXP_REMAINDER, fit, rtol=3e-7, atol=0)
    for c in codegen.EXP_REMAINDER:
        assert repr(c) in codegen.EXP_NONPOSITIVE_SOURCE and f"{c!r}f" in native.helpers_source()


@pytest.mark.parametrize("formula", ["exp(-eps*Abs(x**3 - erf(x)))", "Abs(tanh(x) - x)*eps + x"])
def test_float32_forms_stay_real_inside_abs(formula):
    """The float32 forms' own functions (sign bits, selects) are real to sympy: inside an
    Abs, whose derivative takes sign(...) of them, no conjugate() appears, the kernels
    print, and away from the kink they agree with the exact ones."""
    c = spaces.parse(formula, init={"eps": 0.3}, learnable=["eps"])
    ns = c.module_class().forward.__globals__
    x = torch.linspace(-3, 3, 601)
    x = x[(x.abs() > 0.05)]  # off the kink at 0, where A&S erf's 1e-9 can flip a sign
    eps, g = torch.tensor(0.3), torch.ones_like(x)
    assert torch.allclose(ns["_PLAIN"]["f32_fwd"](x, eps), ns["_PLAIN"]["fwd"](x, eps), atol=1e-6)
    assert torch.allclose(ns["_PLAIN"]["f32_bwd"](x, eps, g)[0], ns["_PLAIN"]["bwd"](x, eps, g)[0], atol=1e-5)


@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_rational_forward_forms_are_exactly_one_past_their_clamp_odd_and_accurate(name):
    """The fused forward tanh and erf (erf where no Gaussian is computed anyway): sign(x)
    a P(a**2)/Q(a**2), a = |x| clamped, capped at 1. Exactly +-1 from the clamp on (so
    gelu(-1e30) is -0, not -1e30 times a rounding error), never past 1, odd, increasing
    up to float32 rounding (dips of a few ulp), within 4e-7 of float64 everywhere; the
    rational at the clamp is over 1 by far more than rounding."""
    import numpy as np
    from scipy import special

    from spaces import codegen
    fit, clamp, exact = {"tanh": (codegen._TANH_RATIONAL, codegen._TANH_CLAMP, np.tanh),
                         "erf": (codegen._ERF_RATIONAL, codegen._ERF_CLAMP, special.erf)}[name]
    ns = spaces.parse(f"{name}(x)").module_class().forward.__globals__
    f32 = ns["_PLAIN"]["f32_fwd"]
    x = torch.linspace(0, 30, 300_001)
    y = f32(x)
    assert torch.equal(f32(-x), -y)
    assert y.diff().min().item() > -5e-7 and y.max().item() == 1.0
    assert (y[x >= clamp] == 1.0).all()
    assert np.abs(y.double().numpy() - exact(x.double().numpy())).max() < 4e-7
    _, p, q = fit
    c = np.float64(clamp)
    assert c * np.polyval(p[::-1], c * c) / np.polyval(q[::-1], c * c) - 1.0 > 1e-6


def test_gelu_forward_form_is_as_accurate_as_float32_torch():
    """gelu's fused forward (the rational erf) is -0 for x = -1e30 and x for x = 1e30,
    within 1.2e-6 of float64 on [-10, 10] and within 1e-6 in the tail (x in [-6, -3],
    values down to -1e-8): float32 torch's own F.gelu is 1.15e-6 off on an AVX-512 Xeon."""
    from scipy import special
    ns = spaces.parse("gelu(x)").module_class().forward.__globals__
    f32 = ns["_PLAIN"]["f32_fwd"]
    big = torch.tensor([1e30])
    assert f32(-big).item() == 0.0 and torch.equal(f32(big), big)
    for lo, hi, limit in ((-10, 10, 1.2e-6), (-6, -3, 1e-6)):
        x = torch.linspace(lo, hi, 200_001)
        exact = x.double() * (1 + torch.from_numpy(special.erf(x.double().numpy() / 2**0.5))) / 2
        assert (f32(x).double() - exact).abs().max().item() < limit


def test_rational_coefficients_are_the_remez_fits():
    """The forward tanh's and erf's coefficients, the backward's 1 - tanh(|x|) =
    P(|x|)/Q(|x|) and softplus's log(1 + y)/y, are what spaces.minimax's Remez fits give
    (to float32 precision), within 6e-8, 6e-8, 3e-8 and 2e-8 of the functions."""
    import numpy as np

    from spaces import codegen, minimax
    for (c, p, q), (f, limit, odd) in ((codegen._TANH_RATIONAL, (np.tanh, 6e-8, True)),
                                       (codegen._ERF_RATIONAL, (minimax.erf, 6e-8, True)),
                                       (codegen._TANH_COMPLEMENT_RATIONAL, (minimax.tanh_complement, 3e-8, False)),
                                       (codegen._LOG1P_RATIO_RATIONAL, (minimax.log1p_ratio, 2e-8, False))):
        worst, p_fit, q_fit = minimax.rational_fit(f, c, len(p) - 1, len(q) - 1, odd=odd)
        assert worst < limit
        assert np.allclose(p_fit, p, rtol=3e-7, atol=0) and np.allclose(q_fit, q, rtol=3e-7, atol=0)


@pytest.mark.parametrize("formula, uses_exp", [("tanh(x)", False), ("0.3*gelu(x) + 0.7*tanh(x)", False),
                                               ("x*tanh(x)", True), ("x*tanh(x + 1)", True), ("tanh(x + 1)", False)])
def test_backward_tanh_form_follows_how_the_gradient_depends_on_it(formula, uses_exp):
    """A backward needing tanh' takes 1 - tanh(|u|) as a rational (no exp) where the
    gradient's sensitivity to tanh(u) is free of x, so an absolute error stays bounded;
    where x multiplies tanh' (x tanh x) it keeps the exp form, whose tanh' is
    relatively accurate in the tails. Either way tanh' is within float32 torch's error
    + 1e-7 of float64, and 0 beyond |u| = 9 for the rational."""
    from spaces.codegen import function_sources
    c = spaces.parse(formula)
    src = function_sources(c.code_expr(), [], "_k")
    bwd = src[src.index("def _k_f32_bwd"):]
    assert ("_exp_nonpositive((-2.0 * " in bwd) == uses_exp  # e = exp(-2|u|)
    ns = c.module_class().forward.__globals__
    x = torch.linspace(-12, 12, 48_001)
    g = torch.ones_like(x)
    exact = ns["_PLAIN"]["bwd"](x.double(), g.double())[0]
    plain32 = ns["_PLAIN"]["bwd"](x, g)[0]
    fast = ns["_PLAIN"]["f32_bwd"](x, g)[0]
    scale = exact.abs().clamp_min(1.0)
    assert ((fast.double() - exact).abs() / scale).max() <= ((plain32.double() - exact).abs() / scale).max() + 1e-7
    if formula == "tanh(x)":
        assert (fast[x.abs() > 9.0] == 0).all() and (fast >= 0).all()


def test_mish_kernels_take_one_exp_and_keep_tanh_prime_relatively_accurate():
    """mish's tanh(softplus(x)) in fused kernels: closed forms in e = exp(-|x|), one exp
    per kernel (sigmoid's included); 1 - tanh(softplus(x)) stays relatively accurate
    where it is tiny (x = 6..14), which mish'(x) multiplies by x."""
    from spaces.codegen import function_sources
    c = spaces.parse("mish(x)")
    src = function_sources(c.code_expr(), [], "_k")
    f32 = src[src.index("def _k_f32_fwd"):]
    fwd, bwd = f32[:f32.index("def _k_f32_bwd")], f32[f32.index("def _k_f32_bwd"):]
    assert fwd.count("_exp_nonpositive(") == 1 and bwd.count("_exp_nonpositive(") == 1
    assert "softplus" not in f32 and "torch.tanh" not in f32
    ns = c.module_class().forward.__globals__
    x = torch.linspace(6, 14, 8001)
    g = torch.ones_like(x)
    exact = ns["_PLAIN"]["bwd"](x.double(), g.double())[0]
    fast = ns["_PLAIN"]["f32_bwd"](x, g)[0].double()
    # mish'(x) = tanh(sp) + x sigmoid(x) sech^2(sp): an absolute error of 1e-7 in sech^2
    # would show here as x * 1e-7 (1 - rational**2 was 5e-6 off at x = 8)
    assert (fast - exact).abs().max() < 2.5e-7


def test_backward_computes_each_transcendental_once():
    """gelu(x) in a coefficient's gradient reuses the erf of gelu'(x); constants are folded."""
    from spaces.codegen import function_sources
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


@pytest.mark.parametrize("base", ALL_BASES)
def test_in_place_eager_kernels_equal_the_plain_ones_and_leave_their_inputs_alone(base):
    """The eager kernels reuse their own buffers (InplacePrinter): same values as the
    plain kernels, and x, g and the coefficients unchanged."""
    for family, k in [("hermite", 2), ("eafo", 1)]:
        c = corrected(base, family, k)
        ns = c.module_class().forward.__globals__
        x = torch.linspace(-5.1, 4.9, 1001, dtype=torch.float64).reshape(7, 143)
        g = torch.randn_like(x)
        eps = torch.tensor(0.3, dtype=torch.float64)
        copies = [t.clone() for t in (x, g, eps)]
        plain_y, eager_y = ns["_PLAIN"]["fwd"](x, eps), ns["_EAGER"]["fwd"](x, eps)
        plain_d, eager_d = ns["_PLAIN"]["bwd"](x, eps, g), ns["_EAGER"]["bwd"](x, eps, g)
        for t, copy in zip((x, g, eps), copies):
            assert torch.equal(t, copy)
        assert torch.allclose(plain_y, eager_y, rtol=1e-12, atol=1e-12)
        for a, b in zip(plain_d, eager_d):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_double_backward_goes_through_the_plain_kernels():
    """Under create_graph the backward must be recorded: no in-place kernels there."""
    c = spaces.parse("gelu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.2}, learnable=["eps"])
    m = c.to_module().double()
    x = torch.linspace(-3, 3, 101, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_works_as_timm_act_layer():
    from timm.models.vision_transformer import VisionTransformer

    cls = spaces.BASELINES["crrelu"].module_class()
    model = VisionTransformer(img_size=16, patch_size=8, in_chans=1, num_classes=3, embed_dim=16,
                              depth=2, num_heads=2, mlp_ratio=2, act_layer=cls)
    acts = [m for m in model.modules() if isinstance(m, cls)]
    assert len(acts) == 2 and acts[0].eps is not acts[1].eps
    model(torch.randn(2, 1, 16, 16)).sum().backward()
    assert all(a.eps.grad is not None for a in acts)


def test_fingerprint_identifies_equal_functions():
    assert spaces.parse("relu(x)").fingerprint == spaces.parse("Max(x, 0)").fingerprint
    assert spaces.parse("x*sigmoid(x)").fingerprint == spaces.parse("silu(x)").fingerprint
    assert spaces.parse("relu(x)").fingerprint != spaces.parse("gelu(x)").fingerprint
    learn = spaces.parse("relu(x) + a*x*exp(-x**2/2)", init={"a": 0.01}, learnable=["a"])
    renamed = spaces.parse("relu(x) + b*x*exp(-x**2/2)", init={"b": 0.01}, learnable=["b"])
    fixed = spaces.parse("relu(x) + a*x*exp(-x**2/2)", init={"a": 0.01})
    assert learn.fingerprint == renamed.fingerprint != fixed.fingerprint


def test_candidate_is_immutable_and_hashable():
    c = spaces.BASELINES["crrelu"]
    with pytest.raises(Exception):
        c.expr = X
    assert {c: 1}[spaces.Candidate.from_dict(c.to_dict())] == 1
