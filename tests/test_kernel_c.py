"""spaces.kernels.c_source and c_loader: the fused float32 CPU kernels as our own C, against
the float32 torch forms they are printed from and against float64; caching, fallbacks,
thread counts, and how a generated module switches them."""
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import spaces
from spaces.codegen import kernel_functions, kernel_sources, load_module_source, module_of, module_source
from spaces.kernels.c_loader import _CKernels
from spaces.kernels.c_source import source_literal

BENCH_FORMULAS = ["relu(x) + eps*x*exp(-x**2/2)", "gelu(x) + eps*x*exp(-x**2/2)",
                  "silu(x) + eps*(x**2 - 1)*exp(-x**2/2)", "eps*gelu(x) + (1 - eps)*tanh(x)"]
WITH_C_FORM = BENCH_FORMULAS + ["x", "relu(x)", "leaky_relu(x)", "gelu(x)", "silu(x)", "mish(x)", "softplus(x)",
                                "tanh(x)", "sigmoid(x)*eps", "x*tanh(x)", "Max(x, eps*x)", "Abs(x) + eps",
                                "eps*erf(x) + x", "x**3/(1 + x**2) + eps*sqrt(1 + x**2)"]
WITHOUT_C_FORM = ["log(1 + x**2)", "sin(x) + x", "exp(x)", "elu(x)"]


def candidate(formula):
    has_eps = "eps" in formula
    return spaces.parse(formula, init={"eps": 0.3} if has_eps else None, learnable=["eps"] if has_eps else [])


def c_source(formula):
    c = candidate(formula)
    return kernel_sources(c.code_expr(), c.learnable, "_k")[1]


def c_kernels(formula):
    """(the formula's C kernels, loaded; its float32 torch kernels)."""
    c = candidate(formula)
    ck = _CKernels(c_source(formula))
    assert ck.get() is not None
    return ck, kernel_functions(c.code_expr(), c.learnable)


def fresh_module(formula, name):
    """The module loaded anew: its C library is looked up (or built) again."""
    c = candidate(formula)
    src = module_source(c.code_expr(), c.learnable, class_name="Fresh", func_name="fresh",
                        formula=c.formula, docstring="d")
    return load_module_source(src, name)


def edge_points():
    return torch.cat([torch.linspace(-12, 12, 20001), torch.randn(5000) * 3,
                      torch.tensor([0.0, -0.0, 1e-30, -1e-30, 3e-5, -88.0, 88.0, -100.0, 100.0, 1e30, -1e30,
                                    float("inf"), -float("inf"), float("nan")])])


@pytest.mark.parametrize("formula", WITH_C_FORM)
def test_c_kernels_give_the_float32_forms_values_and_gradients(formula):
    """The C kernels compute the same float32 forms as the torch ones (`f32_fwd`, `f32_bwd`),
    so they agree to float32 rounding (FMA contraction, another order of operations)
    everywhere, NaN where they give NaN, at infinities too; the coefficient's gradient,
    a sum over blocks in double, within float32 summation error of torch's float32 sum."""
    ck, k = c_kernels(formula)
    coefs = [torch.tensor(0.3)] if "eps" in formula else []
    x = edge_points()
    g = torch.randn_like(x)
    y, ref_y = ck.run("fwd", x, *coefs), k["f32_fwd"](x, *coefs)
    torch.testing.assert_close(y, torch.broadcast_to(ref_y, x.shape), atol=1e-6, rtol=1e-6, equal_nan=True)
    (dx, *_), (ref_dx, *_) = ck.run("bwd", x, *coefs, g), k["f32_bwd"](x, *coefs, g)
    torch.testing.assert_close(dx, torch.broadcast_to(ref_dx, x.shape), atol=1e-6, rtol=1e-5, equal_nan=True)
    finite = x.abs() < 1e3
    if coefs:  # on moderate points: at the edges a term may be inf or NaN (x**2 overflows) for both
        (_, dc_finite), (_, ref_finite) = (ck.run("bwd", x[finite], *coefs, g[finite]),
                                            k["f32_bwd"](x[finite], *coefs, g[finite]))
        scale = (g[finite].abs() * (x[finite].abs() + 1)).sum().item()
        assert dc_finite.dtype == torch.float32 and dc_finite.shape == coefs[0].shape
        assert abs(dc_finite.item() - ref_finite.item()) <= 2e-6 * scale


@pytest.mark.parametrize("formula", BENCH_FORMULAS + ["gelu(x)", "mish(x)", "tanh(x)", "softplus(x)"])
def test_c_kernels_are_within_the_float32_forms_documented_accuracy(formula):
    """Against float64 exact values, forward and derivative: within 1.2e-6, the float32
    forms' documented accuracy (absolute where |f| <= 1, relative above; 8.1e-7 measured
    for gelu's forward, at most 6.9e-7 elsewhere), whatever the host's libm."""
    ck, k = c_kernels(formula)
    coefs = [torch.tensor(0.3)] if "eps" in formula else []
    x = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([0.0, 1e-30, -1e-8, 3e-5])])
    g = torch.ones_like(x)
    exact_y = k["fwd"](x.double(), *[c.double() for c in coefs])
    exact_d = k["bwd"](x.double(), *[c.double() for c in coefs], g.double())[0]

    def error(y, ref):
        return ((y.double() - ref).abs() / ref.abs().clamp_min(1.0)).max().item()

    assert error(ck.run("fwd", x, *coefs), exact_y) <= 1.2e-6
    assert error(ck.run("bwd", x, *coefs, g)[0], exact_d) <= 1.2e-6


@pytest.mark.parametrize("n", [0, 1, 17, 4095, 4096, 4097, 3 * 4096 + 5])
def test_c_kernels_handle_any_size_and_layout(n):
    """Empty tensors, sizes around the 4096-element block, non-contiguous x and g: the
    same as the float32 torch forms, in x's shape."""
    ck, k = c_kernels("eps*gelu(x) + (1 - eps)*tanh(x)")
    beta = torch.tensor(0.7)
    x = (torch.randn(2 * n + 1) * 4)[::2][:n].reshape(n, 1).expand(n, 3).t()  # strided, expanded
    g = torch.randn(n, 3).t()
    y = ck.run("fwd", x, beta)
    assert y.shape == x.shape
    torch.testing.assert_close(y, k["f32_fwd"](x, beta), atol=1e-6, rtol=1e-6)
    dx, db = ck.run("bwd", x, beta, g)
    ref_dx, ref_db = k["f32_bwd"](x, beta, g)
    torch.testing.assert_close(dx, ref_dx, atol=1e-6, rtol=1e-5)
    assert abs(db.item() - ref_db.item()) <= 2e-6 * (g.abs() * (x.abs() + 1)).sum().item() + 1e-12


def test_coefficient_gradient_does_not_depend_on_the_thread_count():
    """Each block's sum is one thread's, blocks are added in order: 1 and 2 threads give
    bit-identical gradients."""
    ck, _ = c_kernels("relu(x) + eps*x*exp(-x**2/2)")
    x, g, eps = torch.randn(64, 4096), torch.randn(64, 4096), torch.tensor(0.01)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ck.run("bwd", x, eps, g)
        torch.set_num_threads(2)
        two = ck.run("bwd", x, eps, g)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one[0], two[0]) and one[1].item() == two[1].item()


@pytest.mark.parametrize("formula", WITHOUT_C_FORM)
def test_forms_without_a_c_counterpart_keep_compiled_kernels(formula):
    """A node the C printer does not know (log, sin, an exp that may overflow, elu's
    expm1) gives no C source; a module's fused kernels are then torch.compile's (after
    use_compiled_kernels()), with the same values as the float32 forms."""
    assert c_source(formula) is None
    cls = candidate(formula).module_class()
    module = module_of(cls)
    assert module.kernel_info()["fused_cpu"]["c_kernels"] == {"source": False, "enabled": True, "built": False,
                                                                "build": None}
    x = torch.linspace(-3, 3, 1000, requires_grad=True)
    module.use_compiled_kernels()
    try:
        assert module.kernel_info()["float32_cpu"] == "torch.compile"
        y = cls()(x)
        assert "fwd" in module.kernel_info()["fused_cpu"]["compiled_row_kernels"]
    finally:
        module.use_compiled_kernels(False)
    k = kernel_functions(candidate(formula).code_expr(), [])
    torch.testing.assert_close(y, k["f32_fwd"](x), atol=1e-6, rtol=1e-6)


def test_c_source_holds_no_user_text_and_only_known_tokens():
    """Coefficients are c0, c1, ...: a user's names never reach the C file, which holds
    only numbers, fixed identifiers and C punctuation; in the Python module it is a raw
    string without quotes or backslashes (and the module's text holds no user name
    outside its Python code either)."""
    c = spaces.parse("relu(x) + zzsecret*x*exp(-x**2/2) + qqother*tanh(x)", init={"zzsecret": 0.1, "qqother": 0.2},
                     learnable=["zzsecret", "qqother"])
    src = kernel_sources(c.code_expr(), c.learnable, "_k")[1]
    assert "zzsecret" not in src and "qqother" not in src and "c0" in src and "c1" in src
    assert '"' not in src and "\\" not in src
    code = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    words = set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", code))
    allowed = {"include", "math", "h", "stdint", "string", "static", "inline", "float", "const", "int32_t",
               "int64_t", "int", "double", "void", "return", "for", "if", "memcpy", "sizeof", "floorf",
               "fabsf", "copysignf", "sqrtf", "restrict", "stdlib", "malloc", "free", "size_t", "pragma", "omp",
               "simd", "parallel", "num_threads", "schedule",
               "reduction", "define", "x", "a", "b", "c", "n", "r", "p", "y", "i", "b", "g", "gi", "xs", "gs",
               "dx", "dc", "out", "end", "bits", "scale", "blocks", "threads", "block_sums", "f", "e"}
    unexpected = {w for w in words if w not in allowed and not re.fullmatch(
        r"(eafo_\w+|EAFO_BLOCK|[ct]\d+|s\d+|dc\d+|\d*e?f?)", w) and w != "static"}
    assert not unexpected, unexpected


def test_library_is_built_once_and_reused_from_the_disk_cache(tmp_path, monkeypatch):
    """The first load compiles one library into EAFO_KERNEL_CACHE; a second load of the
    same module (another process, say) finds it there and builds nothing."""
    monkeypatch.setenv("EAFO_KERNEL_CACHE", str(tmp_path))
    first = fresh_module("gelu(x) + eps*x*exp(-x**2/2)", "cache_first")
    assert first.kernel_info()["float32_cpu"] == "c"
    built = sorted(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    stamp = built[0].stat().st_mtime_ns
    second = fresh_module("gelu(x) + eps*x*exp(-x**2/2)", "cache_second")
    assert second.kernel_info()["float32_cpu"] == "c"
    assert sorted(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


def test_without_a_compiler_fused_kernels_fall_back_to_torch_compile(tmp_path, monkeypatch):
    """No working C compiler: one RuntimeWarning that says so, and use_compiled_kernels()
    still fuses (inductor's kernels), with the same values. EAFO_NATIVE_KERNELS=0, read
    once when a module first runs a kernel, starts it with the C kernels off (nothing
    tried, no warning); use_native_kernels(True) switches them on again."""
    monkeypatch.setenv("EAFO_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    module = fresh_module("relu(x) + eps*x*exp(-x**2/2)", "no_compiler")
    with pytest.warns(RuntimeWarning, match="no C kernels"):
        assert module.kernel_info()["fused_cpu"]["c_kernels"]["built"] is False
    x = torch.randn(3, 512, requires_grad=True)
    m = module.Fresh()
    module.use_compiled_kernels()
    try:
        assert module.kernel_info()["float32_cpu"] == "torch.compile"
        y = m(x)
        assert module.kernel_info()["fused_cpu"]["compiled_row_kernels"] == ["fwd"]
    finally:
        module.use_compiled_kernels(False)
    k = kernel_functions(candidate("relu(x) + eps*x*exp(-x**2/2)").code_expr(), ["eps"])
    torch.testing.assert_close(y, k["f32_fwd"](x, m.eps), atol=1e-6, rtol=1e-6)
    monkeypatch.setenv("EAFO_NATIVE_KERNELS", "0")
    off = fresh_module("relu(x) + eps*x*exp(-x**2/2)", "switched_off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is tried, so nothing warns
        assert off.kernel_info()["float32_cpu"] == "in-place ops"
    monkeypatch.delenv("EAFO_NATIVE_KERNELS")
    assert off.kernel_info()["fused_cpu"]["c_kernels"]["enabled"] is False  # the variable is read once
    monkeypatch.delenv("CC")
    off.use_native_kernels(True)
    assert off.kernel_info()["float32_cpu"] == "c"


def test_no_compiler_warns_once_per_process_not_once_per_candidate(tmp_path):
    """With no working compiler, a process that runs several candidates (a search) prints
    the "no C kernels" warning once, and every candidate still computes its values."""
    script = (
        "import torch, spaces\n"
        "x = torch.linspace(-3, 3, 1000)\n"
        "for f in ['relu(x) + 0.1*x*exp(-x**2/2)', 'silu(x)', 'gelu(x) + 0.2*tanh(x)']:\n"
        "    m = spaces.parse(f).to_module()\n"
        "    with torch.no_grad():\n"
        "        assert torch.isfinite(m(x)).all()\n"
        "print('ok')\n")
    env = dict(os.environ, CC=str(tmp_path / "no-such-compiler"), EAFO_KERNEL_CACHE=str(tmp_path / "cache"))
    env.pop("PYTHONWARNINGS", None)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    assert run.stderr.count("eafo: no C kernels") == 1, run.stderr


def test_use_native_kernels_switches_them_off_and_on():
    """use_native_kernels(False) sends eager float32 CPU calls to the in-place ops,
    use_native_kernels(True) back to the C kernels."""
    module = module_of(candidate("relu(x) + eps*x*exp(-x**2/2)").module_class())
    module.use_native_kernels(False)
    try:
        assert module.kernel_info()["float32_cpu"] == "in-place ops"
    finally:
        module.use_native_kernels(True)
    assert module.kernel_info()["float32_cpu"] == "c"


@pytest.mark.parametrize("switch", [False, True], ids=["default", "use_compiled_kernels"])
def test_module_runs_c_kernels_and_trains_like_the_op_by_op_module(switch):
    """End to end through the autograd.Function: a float32 CPU module runs the C kernels,
    by default and after use_compiled_kernels() (inductor's kernels never compile); its
    outputs, input gradients and eps's gradient match the op-by-op in-place kernels
    (use_native_kernels(False)); a backward with create_graph=True (recorded, so op by
    op) matches too."""
    cls = candidate("relu(x) + eps*x*exp(-x**2/2)").module_class()
    module = module_of(cls)
    plain, fast = cls(), cls()
    x1 = (torch.randn(8, 197, 64) * 2).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    module.use_native_kernels(False)
    try:
        assert module.kernel_info()["float32_cpu"] == "in-place ops"
        plain(x1).square().sum().backward()
    finally:
        module.use_native_kernels(True)
    plain_eps = plain.eps.grad.item()
    module.use_compiled_kernels(switch)
    try:
        compiled_before = module.kernel_info()["fused_cpu"]["compiled_row_kernels"]
        assert module.kernel_info()["float32_cpu"] == "c"
        y2 = fast(x2)
        y2.square().sum().backward()
        # the C kernels ran, not inductor's
        assert module.kernel_info()["fused_cpu"]["compiled_row_kernels"] == compiled_before
        assert math.isclose(fast.eps.grad.item(), plain_eps, rel_tol=1e-5)
        x3 = x1.detach().clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(fast(x3).sum(), x3, create_graph=True)
        gx.sum().backward()
    finally:
        module.use_compiled_kernels(False)
    module.use_native_kernels(False)
    try:
        torch.testing.assert_close(y2, plain(x1), atol=2e-6, rtol=2e-6)
        torch.testing.assert_close(x2.grad, x1.grad, atol=2e-6, rtol=2e-6)
        x4 = x1.detach().clone().requires_grad_(True)
        (gx4,) = torch.autograd.grad(plain(x4).sum(), x4, create_graph=True)
        gx4.sum().backward()
    finally:
        module.use_native_kernels(True)
    torch.testing.assert_close(x3.grad, x4.grad, atol=2e-6, rtol=2e-6)


def test_kernel_source_is_none_only_for_unknown_nodes():
    """The printer's coverage, stated: the benchmark's candidates and the common bases
    have a C form; log, sin, a general exp and elu do not. In a module the C text is a
    raw string literal, which a quote or backslash could close: refused."""
    for formula in WITH_C_FORM:
        assert c_source(formula) is not None, formula
    for formula in WITHOUT_C_FORM:
        assert c_source(formula) is None, formula
    assert source_literal(None) == "None"
    with pytest.raises(ValueError):
        source_literal('x = "a";')


@pytest.mark.parametrize("flags", [["-march=native", "-mprefer-vector-width=512"], ["-march=native"], []],
                         ids=["native-512", "native", "portable"])
def test_every_fallback_build_gives_the_same_values(flags, tmp_path, monkeypatch):
    """Each compiler command line the loader may fall back to (a CPU or compiler that
    rejects the first) builds kernels with the float32 forms' values and gradients."""
    monkeypatch.setenv("EAFO_KERNEL_CACHE", str(tmp_path))
    formula = "silu(x) + eps*(x**2 - 1)*exp(-x**2/2)"
    ck = _CKernels(c_source(formula))
    ck.flag_sets = (flags,)
    assert ck.get() is not None
    assert ck.build.split(" ")[-len(flags) or len(ck.build):] == flags  # compiler, base flags, these
    k = kernel_functions(candidate(formula).code_expr(), ["eps"])
    x, eps = edge_points(), torch.tensor(0.3)
    g = torch.randn_like(x)
    torch.testing.assert_close(ck.run("fwd", x, eps), k["f32_fwd"](x, eps), atol=1e-6, rtol=1e-6, equal_nan=True)
    torch.testing.assert_close(ck.run("bwd", x, eps, g)[0], k["f32_bwd"](x, eps, g)[0],
                               atol=1e-6, rtol=1e-5, equal_nan=True)
