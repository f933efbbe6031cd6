"""Generated torch modules (spaces.codegen): forward vs an independent sympy reference, sympy
backward vs numerical gradients (gradcheck, float64), dtypes, compile, which kernels run
where, timm. (The float32 forms: test_kernel_forms.py; the fused CPU kernels:
test_kernel_fused_cpu.py and test_kernel_c.py; exported files: test_export.py.)"""
import numpy as np
import pytest
import sympy as sp
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import spaces
from spaces.codegen import kernel_functions, load_module_source, module_of, module_source
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


def test_each_load_of_a_generated_module_registers_its_own_ops():
    """The same source loaded twice (as a registry or an export may do) gets two op
    names, so the second load does not fail on a name already registered."""
    c = spaces.parse("silu(x)")
    src = module_source(c.code_expr(), {}, class_name="Twice", func_name="twice", formula=c.formula,
                        docstring="d")
    a, b = load_module_source(src, "twice_a"), load_module_source(src, "twice_b")
    ops = [m.kernel_info()["fused_cpu"]["custom_ops"] for m in (a, b)]
    assert ops[0] != ops[1] and all(op.startswith("eafo::twice_") for op in ops)


@pytest.mark.parametrize("formula,dtype,native", [
    ("beta*gelu(x) + (1 - beta)*x*exp(-x**2/2)", torch.float32, False),
    ("beta*gelu(x) + (1 - beta)*x*exp(-x**2/2)", torch.float64, True),
    ("beta*tanh(x) + (1 - beta)*silu(x)", torch.float32, False),
])
def test_compiled_kernels_match_plain_kernels_and_can_be_switched_off(formula, dtype, native):
    """use_compiled_kernels() fuses the kernels without changing values or gradients beyond
    float32 rounding: in float64 torch.compile's kernels of the exact forms; in float32 on
    the CPU with the C kernels off (use_native_kernels(False)), inductor's kernels of the
    float32 forms (polynomial exp, erf, tanh and sigmoid, FMA-contracted). kernel_info()
    says which run, and use_compiled_kernels(False) switches back."""
    c = spaces.parse(formula, init={"beta": 0.7}, learnable=["beta"])
    cls = c.module_class()
    module = module_of(cls)
    x1 = (torch.randn(4, 1000, dtype=dtype) * 3).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    plain, fused = cls().to(dtype), cls().to(dtype)
    module.use_native_kernels(native)
    try:
        y1 = plain(x1)
        y1.pow(2).sum().backward()
        runs = "float32_cpu" if dtype == torch.float32 else "other"
        assert module.kernel_info()[runs] == "in-place ops"
        module.use_compiled_kernels(True)
        try:
            assert module.kernel_info()[runs] == "torch.compile" and module.kernel_info()["compiled"]
            y2 = fused(x2)
            y2.pow(2).sum().backward()
        finally:
            module.use_compiled_kernels(False)
        assert module.kernel_info()[runs] == "in-place ops" and not module.kernel_info()["compiled"]
    finally:
        module.use_native_kernels(True)
    tol = 1e-10 if dtype == torch.float64 else 2e-6
    assert torch.allclose(y1, y2, atol=tol, rtol=tol)
    assert torch.allclose(x1.grad, x2.grad, atol=tol, rtol=tol)
    assert torch.allclose(plain.beta.grad, fused.beta.grad, rtol=1e-5)


@pytest.mark.parametrize("base", ALL_BASES)
def test_in_place_eager_kernels_equal_the_plain_ones_and_leave_their_inputs_alone(base):
    """The eager kernels reuse their own buffers (InplacePrinter): same values as the
    plain kernels, and x, g and the coefficients unchanged."""
    for family, k in [("hermite", 2), ("eafo", 1)]:
        c = corrected(base, family, k)
        kernels = kernel_functions(c.code_expr(), c.learnable, native=False)
        x = torch.linspace(-5.1, 4.9, 1001, dtype=torch.float64).reshape(7, 143)
        g = torch.randn_like(x)
        eps = torch.tensor(0.3, dtype=torch.float64)
        copies = [t.clone() for t in (x, g, eps)]
        plain_y, eager_y = kernels["fwd"](x, eps), kernels["eager_fwd"](x, eps)
        plain_d, eager_d = kernels["bwd"](x, eps, g), kernels["eager_bwd"](x, eps, g)
        for t, copy in zip((x, g, eps), copies):
            assert torch.equal(t, copy)
        assert torch.allclose(plain_y, eager_y, rtol=1e-12, atol=1e-12)
        for a, b in zip(plain_d, eager_d):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def plain_module(candidate, name="plain_act"):
    """The module as `search.export` writes it by default: plain PyTorch (native=False)."""
    src = module_source(candidate.code_expr(), candidate.learnable, class_name="PlainAct", func_name="plain_act",
                        formula=candidate.formula, docstring="d", native=False)
    return load_module_source(src, name)


class AtenOps(TorchDispatchMode):
    """Records the aten ops a block of code runs (which kernels ran, observed from outside)."""

    def __enter__(self):
        self.ops = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("native", [False, True], ids=["plain", "native"])
def test_training_applies_the_function_and_other_calls_run_plain_torch_ops(native):
    """With gradients recorded, forward applies the memory-efficient autograd.Function
    (its backward node; the plain module's eager kernels work in place). Under no_grad the
    plain module computes the formula as out-of-place torch ops (no Function), the native
    one runs its C kernels (no aten compute op). Under torch.jit.trace both trace plain
    torch ops (no PythonOp: a C call would be a constant, the Function an op no exporter
    knows), and the traced graph computes the formula on a new input with the moved
    coefficient. Values agree to float32 rounding throughout."""
    c = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.3}, learnable=["eps"])
    cls = c.module_class() if native else plain_module(c, "plain_routes").PlainAct
    m = cls()
    with torch.no_grad():
        m.eps.fill_(-0.4)  # moved from its init: a traced constant would show
    x = torch.randn(3, 50, requires_grad=True)
    ref = torch.relu(x) - 0.4 * x * torch.exp(-x**2 / 2)
    with AtenOps() as recorded:
        y = m(x)
    assert type(y.grad_fn).__name__ == f"{cls.__name__}FunctionBackward"
    assert native or "exp_" in recorded.ops  # the in-place eager kernel
    with torch.no_grad(), AtenOps() as recorded:
        torch.testing.assert_close(m(x), ref.detach(), atol=1e-6, rtol=1e-6)
    assert ("exp" in recorded.ops and "exp_" not in recorded.ops) if not native else "exp" not in recorded.ops
    traced = torch.jit.trace(m, (x.detach(),))
    assert "PythonOp" not in str(traced.graph) and "aten::exp" in str(traced.graph)
    x2 = torch.randn(3, 50) * 2
    torch.testing.assert_close(traced(x2), torch.relu(x2) - 0.4 * x2 * torch.exp(-x2**2 / 2), atol=1e-6, rtol=1e-6)


def test_plain_module_imports_only_torch_and_runs_no_fused_kernels():
    """native=False: the module's source imports torch alone (no C loader, no float32
    forms), and kernel_info() says what runs: in-place ops in eager training, plain ops
    under torch.compile, no fused CPU kernels."""
    import ast

    c = spaces.parse("gelu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.1}, learnable=["eps"])
    src = module_source(c.code_expr(), c.learnable, class_name="P", func_name="p", formula=c.formula,
                        docstring="d", native=False)
    roots = {(a.name if isinstance(n, ast.Import) else n.module).split(".")[0]
             for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert roots == {"torch"}
    assert "_f32_fwd" not in src and "_C_SOURCE" not in src and "custom_op" not in src
    module = load_module_source(src, "plain_info")
    assert module.kernel_info() == {"float32_cpu": "in-place ops", "other": "in-place ops", "compiled": False,
                                    "under_torch_compile": "plain ops", "fused_cpu": None}
    assert not hasattr(module, "use_native_kernels")


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
