"""spaces.kernels.fused_cpu (and runtime's torch.compile options): the fused float32 CPU
kernels of a generated module built with them: as custom ops under torch.compile of a
model, inductor's kernels over rows, and what they compute against the float32 forms."""
import pytest
import torch

import spaces
from spaces.codegen import kernel_functions, load_module_source, module_source
from spaces.kernels.fused_cpu import _FusedCpuKernels, _row_length
from spaces.kernels.runtime import _compile_kernel, _cpu_kernel_options


def fresh_module(candidate, name):
    """A module of its own (nothing compiled yet), with the fused CPU kernels (native)."""
    src = module_source(candidate.code_expr(), candidate.learnable, class_name="Fused", func_name="fused",
                        formula=candidate.formula, docstring="d")
    return load_module_source(src, name)


@pytest.mark.parametrize("native", [True, False], ids=["c-kernels", "inductor-kernels"])
@pytest.mark.parametrize("formula,transposed", [("beta*gelu(x) + (1 - beta)*tanh(x)", False), ("x", False),
                                                ("x", True), ("alpha*relu(x) + beta*x*exp(-x**2/2)", False)])
def test_compiled_model_runs_float32_cpu_kernels_as_opaque_fused_ops(formula, transposed, native):
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
    module = fresh_module(c, f"fused_ops_{abs(hash((formula, transposed, native)))}")
    module.use_native_kernels(native)
    eager, comp = module.Fused(), module.Fused()
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
    info = module.kernel_info()
    assert info["under_torch_compile"] == "custom ops" and info["fused_cpu"]["custom_ops"].startswith("eafo::fused_")
    assert info["fused_cpu"]["compiled_row_kernels"] == ([] if native else ["op_bwd", "op_fwd"])
    torch.testing.assert_close(y2, y1, atol=2e-6, rtol=2e-6)
    torch.testing.assert_close(x2.grad, x1.grad, atol=2e-6, rtol=2e-6)
    for p1, p2 in zip(eager.parameters(), comp.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("shape,row", [((16, 197, 768), 768), ((4, 50, 96), 4800), ((4, 1000), 4000),
                                       ((1000,), 1000), ((3, 256), 768), ((0, 768), 0)])
def test_fused_float32_kernels_run_over_rows_of_the_trailing_dimensions(shape, row):
    """Rows are the trailing dimensions once they reach 512 elements, a whole number of
    16-float vectors, at least 2 of them; otherwise one row holds the whole tensor."""
    assert _row_length(shape) == row


def test_fused_float32_kernels_take_the_sign_by_a_select_and_256_bit_vectors_over_avx512():
    """The C++ inductor writes for the tanh mix's fused forward has no float-to-int bit
    view (inductor writes one as a store, a scalar loop and a load: with 512-bit vectors
    GCC made ~35 shuffles of each, 6.3 ms instead of 2.2), and the kernels compile for
    256-bit vectors exactly where inductor would pick 512-bit ones and AVX2 is there (one
    512-bit FMA unit ran them 1.5x slower), always with multiply-adds contracted."""
    from torch._inductor import cpu_vec_isa
    from torch._inductor.utils import run_and_get_code

    c = spaces.parse("beta*gelu(x) + (1 - beta)*tanh(x)", init={"beta": 0.7}, learnable=["beta"])
    f32_fwd = kernel_functions(c.code_expr(), c.learnable)["f32_fwd"]
    options = _cpu_kernel_options()
    assert options["cpp.enable_floating_point_contract_flag"] == "fast"
    isa = cpu_vec_isa.pick_vec_isa()
    avx512_over_avx2 = isa.bit_width() == 512 and 256 in {i.bit_width() for i in cpu_vec_isa.valid_vec_isa_list()}
    assert options.get("cpp.simdlen") == (256 if avx512_over_avx2 else None)
    x = torch.randn(6, 768)

    def rows_fwd(x, zero, beta):
        return f32_fwd(x - zero, beta)

    y, code = run_and_get_code(_compile_kernel(rows_fwd), x, torch.zeros(6, 1), torch.tensor(0.7))
    torch.testing.assert_close(y, f32_fwd(x, torch.tensor(0.7)))
    assert code and "bit_cast<int32_t>" not in "".join(code)


@pytest.mark.parametrize("formula", ["x", "beta*gelu(x) + (1 - beta)*tanh(x)"])
def test_fused_float32_kernels_match_plain_kernels_for_any_layout_and_batch_size(formula):
    """Inductor's fused float32 kernels (no C source: what runs where no compiler does;
    over rows) give the float32 forms' values and gradients for contiguous, transposed
    and sliced inputs and gradients, and for ten batch sizes without a recompilation each
    (fullgraph=True would fail past 8). Where f' = 1 the backward hands back g itself, as
    the plain form does. (The C kernels: tests/test_kernel_c.py.)"""
    has_beta = "beta" in formula
    c = spaces.parse(formula, init={"beta": 0.7} if has_beta else None, learnable=["beta"] if has_beta else [])
    k = kernel_functions(c.code_expr(), c.learnable)
    fused = _FusedCpuKernels(k["f32_fwd"], k["f32_bwd"], None, "layouts")
    coefs = [torch.tensor(0.7)] if has_beta else []
    xs = [torch.randn(b, 20, 64) * 3 for b in range(1, 11)]
    xs += [torch.randn(8, 64, 20).transpose(1, 2) * 3, torch.randn(8, 20, 128)[..., ::2] * 3]
    with torch.no_grad():
        for x in xs:
            g = torch.randn(x.shape[::-1]).permute(*reversed(range(x.dim())))  # non-contiguous g
            torch.testing.assert_close(fused.run("fwd", x, *coefs), k["f32_fwd"](x, *coefs), atol=1e-6, rtol=1e-6)
            (dx, *dc), (ref_dx, *ref_dc) = fused.run("bwd", x, *coefs, g), k["f32_bwd"](x, *coefs, g)
            torch.testing.assert_close(dx, ref_dx, atol=1e-6, rtol=1e-5)
            # beta's gradient is a float32 sum of g * (gelu - tanh), |gelu - tanh| <= |x| + 1,
            # summed in another order: its rounding error scales with the sum of |terms|
            # (not with the result, which cancels), ~1e-7 of it per level of summation
            for a, b in zip(dc, ref_dc):
                assert abs(a.item() - b.item()) <= 2e-6 * (g.abs() * (x.abs() + 1)).sum().item()
            g = torch.randn_like(x).contiguous()
            if not has_beta:
                assert fused.run("bwd", x, g)[0] is g
    assert sorted(fused.compiled_rows) == ["bwd", "fwd"]
