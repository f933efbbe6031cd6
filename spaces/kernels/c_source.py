"""Float32 forms -> C: the fused CPU kernels' own source, compiled by the system's C compiler.

Why not inductor alone: on a 2-vCPU AVX-512 Xeon (one 512-bit FMA unit) the kernels
inductor generates from the same forms ran 1.3-1.8x `nn.GELU` (oneDNN; forward+backward,
median of 6 benchmark runs), and no option of inductor's brought them closer; each call
also crossed ~45 us of Dynamo guards. A plain C loop over the same forms, vectorised by
GCC (`#pragma omp simd`, 512-bit vectors where the CPU has them), ran 0.98-1.26x there in
the same runs, and is called through ctypes in a few microseconds.

`kernel_source` prints the float32 forms (`spaces.kernels.forms`) of a forward and a
backward as one C file: two functions, `eafo_fwd` and `eafo_bwd`, each one pass over the
tensor, split among OpenMP threads in blocks. The backward sums each coefficient's
gradient per block (in float, one vector lane per element group) and the blocks in
order in double: the result does not depend on the thread count. Only fixed names (x,
c0, t0, ...), float literals and the helpers below are ever printed: no user text. Forms
with a node the printer does not know (log, sin, an exp of an argument not known to be
<= 0, ...) give None: those candidates keep inductor's kernels.

A generated module with fused CPU kernels holds this C text (`source_literal`) and
builds it on first use (`spaces.kernels.c_loader`).
"""
from __future__ import annotations

import sympy as sp

from spaces.functions import X
from spaces.kernels.float32_ops import _EXP_LN2_HI, _EXP_LN2_LO, _EXP_REMAINDER, _LOG1P_RATIO_RATIONAL
from spaces.kernels.printers import CPrinter, Unsupported, common_subexpressions, float_literal

# Elements per block: one OpenMP work item, and one float partial sum per lane of a
# coefficient's gradient (4096 floats: 256 per lane of a 16-lane vector, far from
# float32's cancellation trouble; the blocks are summed in double).
BLOCK = 4096


def _c_float(value) -> str:
    return f"{float_literal(value)}f"


def helpers_source() -> str:
    """C helpers the printed expressions call: the same float32 forms as the torch ones
    of spaces.kernels.float32_ops (`_exp_nonpositive`, `_softplus`, `_with_sign_of`, ...),
    with the same constants."""

    def horner(coefs, v):
        out = _c_float(coefs[-1])
        for c in reversed(coefs[:-1]):
            out = f"({_c_float(c)} + {v} * {out})"
        return out

    return f"""\
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* exp(a) for a <= 0: Cody-Waite reduction, a degree-4 polynomial, 2**n built in the
   exponent bits (the integer (n + 127) * 2**23, exact in float32). a < -88 gives 0.
   NaN: n is NaN, its conversion gives INT32_MIN on x86 (cvttps2dq; 0 on ARM), and
   p, NaN too, times that scale is NaN. */
static inline float eafo_exp_np(float a) {{
    a = a < -88.0f ? -88.0f : a;
    const float n = floorf(a * 1.4426950408889634f + 0.5f);
    const float r = a - n * {_c_float(_EXP_LN2_HI)} - n * {_c_float(_EXP_LN2_LO)};
    const float p = {horner(_EXP_REMAINDER, "r")} * (r * r) + r + 1.0f;
    const int32_t bits = (int32_t)(n * 8388608.0f + 1065353216.0f);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}}

/* log(1 + exp(a)) = max(a, 0) + y P(y)/Q(y), y = exp(-|a|); NaN stays NaN */
static inline float eafo_softplus(float a) {{
    const float y = eafo_exp_np(-fabsf(a));
    return (a > 0.0f ? a : 0.0f) + y * {horner(_LOG1P_RATIO_RATIONAL[1], "y")}
        / {horner(_LOG1P_RATIO_RATIONAL[2], "y")};
}}

/* max/min that keep a NaN of either argument, as torch.maximum/clamp do */
static inline float eafo_max(float a, float b) {{ return (a > b || a != a) ? a : b; }}
static inline float eafo_min(float a, float b) {{ return (a < b || a != a) ? a : b; }}
/* y >= 0 with the sign of x: one bit operation (torch's form, where(x < 0, -y, y),
   takes three here). For x = -0.0 it gives -y: an odd function's -0 stays -0. */
static inline float eafo_with_sign_of(float y, float x) {{ return copysignf(y, x); }}
/* min(a, c), NaN kept: a compare and a blend */
static inline float eafo_at_most(float a, float c) {{ return a > c ? c : a; }}
/* torch.sign: 1, -1, else 0 (for 0, -0 and NaN alike) */
static inline float eafo_sign(float a) {{ return a > 0.0f ? 1.0f : (a < 0.0f ? -1.0f : 0.0f); }}
"""


def _body(exprs: list[sp.Expr], n_coefficients: int, indent: str):
    """(lines binding the temporaries, printed results) of exprs, or raises Unsupported."""
    names = {X: "x"}
    for i in range(n_coefficients):
        names[sp.Symbol(f"_c{i}", real=True)] = f"c{i}"
    replacements, reduced = common_subexpressions(exprs)
    lines = []
    for i, (sym, sub) in enumerate(replacements):
        lines.append(f"{indent}const float t{i} = {CPrinter(names).doprint(sub)};")
        names[sym] = f"t{i}"
    return lines, [CPrinter(names).doprint(r) for r in reduced]


def kernel_source(expr: sp.Expr, derivs: list[sp.Expr], coefficients: list[sp.Symbol]) -> str | None:
    """C source of `eafo_fwd` and `eafo_bwd` for the float32 forms `expr` (the forward)
    and `derivs` (d/dx, then d/dc per coefficient), or None where a node has no C form.

    void eafo_fwd(const float *x, float *out, int64_t n, const float *c, int threads)
    int eafo_bwd(const float *x, const float *g, float *dx, int64_t n, const float *c,
                 float *dc, int threads)
    c: the coefficients' values; dc: one sum of g * df/dc per coefficient out, summed per
    block in float and over the blocks, in order, in double (block sums in memory of its
    own: eafo_bwd returns 1 where that allocation fails, else 0).
    """
    k = len(coefficients)
    rename = {s: sp.Symbol(f"_c{i}", real=True) for i, s in enumerate(coefficients)}
    expr, derivs = expr.xreplace(rename), [d.xreplace(rename) for d in derivs]
    ind = " " * 12
    try:
        fwd_lines, (fwd,) = _body([expr], k, ind)
        bwd_lines, printed = _body(derivs, k, ind)
    except Unsupported:
        return None
    coefs = "".join(f"    const float c{i} = c[{i}];\n" for i in range(k))
    sums = " ".join(f"float s{i} = 0.0f;" for i in range(k))
    reduction = f" reduction(+:{', '.join(f's{i}' for i in range(k))})" if k else ""
    accumulate = "".join(f"{ind}s{i} += gi * {d};\n" for i, d in enumerate(printed[1:]))
    store = "".join(f"        block_sums[b * {k} + {i}] = s{i};\n" for i in range(k))
    total = "".join(f"        dc{i} += block_sums[b * {k} + {i}];\n" for i in range(k))
    totals = "".join(f"    double dc{i} = 0.0;\n" for i in range(k))
    results = "".join(f"    dc[{i}] = (float)dc{i};\n" for i in range(k))
    nl = "\n"
    return f"""{helpers_source()}
#define EAFO_BLOCK {BLOCK}

void eafo_fwd(const float *restrict xs, float *restrict out, int64_t n, const float *c, int threads) {{
    (void)c;
{coefs}    const int64_t blocks = (n + EAFO_BLOCK - 1) / EAFO_BLOCK;
    #pragma omp parallel for num_threads(threads) schedule(static) if(blocks > 1)
    for (int64_t b = 0; b < blocks; b++) {{
        const int64_t end = (b + 1) * EAFO_BLOCK < n ? (b + 1) * EAFO_BLOCK : n;
        #pragma omp simd
        for (int64_t i = b * EAFO_BLOCK; i < end; i++) {{
            const float x = xs[i];
{nl.join(fwd_lines)}
            out[i] = {fwd};
        }}
    }}
}}

int eafo_bwd(const float *restrict xs, const float *restrict gs, float *restrict dx, int64_t n,
             const float *c, float *dc, int threads) {{
    (void)c; (void)dc;
{coefs}    const int64_t blocks = (n + EAFO_BLOCK - 1) / EAFO_BLOCK;
    float *restrict block_sums = malloc(sizeof(float) * (size_t)(blocks * {k} + 1));
    if (!block_sums) return 1;
    #pragma omp parallel for num_threads(threads) schedule(static) if(blocks > 1)
    for (int64_t b = 0; b < blocks; b++) {{
        const int64_t end = (b + 1) * EAFO_BLOCK < n ? (b + 1) * EAFO_BLOCK : n;
        {sums}
        #pragma omp simd{reduction}
        for (int64_t i = b * EAFO_BLOCK; i < end; i++) {{
            const float x = xs[i];
            const float gi = gs[i];
{nl.join(bwd_lines)}
            dx[i] = gi * {printed[0]};
{accumulate}        }}
{store}    }}
{totals}    for (int64_t b = 0; b < blocks{"" if k else " && 0"}; b++) {{
{total}    }}
{results}    free(block_sums);
    return 0;
}}
"""


def source_literal(source: str | None) -> str:
    """`source` as a raw triple-quoted Python literal (or None): C printed by kernel_source
    holds no quote or backslash, checked here."""
    if source is None:
        return "None"
    if '"' in source or "\\" in source:
        raise ValueError("generated C source holds a quote or a backslash")
    return 'r"""' + source + '"""'
