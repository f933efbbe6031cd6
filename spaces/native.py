"""Float32 forms -> C: the fused CPU kernels' own source, compiled by the system's C compiler.

Why not inductor alone: on a 2-vCPU AVX-512 Xeon (one 512-bit FMA unit) the kernels
inductor generates from the same forms ran 1.3-1.8x `nn.GELU` (oneDNN; forward+backward,
median of 6 benchmark runs), and no option of inductor's brought them closer; each call
also crossed ~45 us of Dynamo guards. A plain C loop over the same forms, vectorised by
GCC (`#pragma omp simd`, 512-bit vectors where the CPU has them), ran 0.98-1.26x there in
the same runs, and is called through ctypes in a few microseconds.

`kernel_source` prints the float32 forms (`spaces.codegen._float32_forms`) of a forward
and a backward as one C file: two functions, `eafo_fwd` and `eafo_bwd`, each one pass
over the tensor, split among OpenMP threads in blocks. The backward sums each
coefficient's gradient per block (in float, one vector lane per element group) and the
blocks in order in double: the result does not depend on the thread count. Only fixed
names (x, c0, t0, ...), float literals and the helpers below are ever printed: no user
text. Forms with a node the printer does not know (log, sin, an exp of an argument not
known to be <= 0, ...) give None: those candidates keep inductor's kernels.

The generated module compiles the file on first use, caches the library on disk by the
hash of its source, flags and CPU, and falls back to inductor where no compiler works
(`NATIVE_LOADER_SOURCE` in spaces.codegen's module template).
"""
from __future__ import annotations

import math

import sympy as sp

from spaces import functions as fn
from spaces.functions import X

# Elements per block: one OpenMP work item, and one float partial sum per lane of a
# coefficient's gradient (4096 floats: 256 per lane of a 16-lane vector, far from
# float32's cancellation trouble; the blocks are summed in double).
BLOCK = 4096


def _c_float(value) -> str:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"constant {value} is not finite")
    return f"{v!r}f"


def helpers_source() -> str:
    """C helpers the printed expressions call: the same float32 forms as the torch ones
    in spaces.codegen (`_exp_nonpositive`, `_softplus`, `_with_sign_of`, ...)."""
    from spaces.codegen import EXP_LN2_HI, EXP_LN2_LO, EXP_REMAINDER, _LOG1P_RATIO_RATIONAL

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
    const float r = a - n * {_c_float(EXP_LN2_HI)} - n * {_c_float(EXP_LN2_LO)};
    const float p = {horner(EXP_REMAINDER, "r")} * (r * r) + r + 1.0f;
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


class CPrinter:
    """Prints a float32 form as a C float expression; `Unsupported` for any other node."""

    class Unsupported(ValueError):
        pass

    def __init__(self, names: dict[sp.Symbol, str]):
        self.names = names

    def doprint(self, e) -> str:
        if isinstance(e, sp.Symbol):
            if e not in self.names:
                raise self.Unsupported(f"unbound symbol {e}")
            return self.names[e]
        if isinstance(e, (bool, sp.logic.boolalg.BooleanAtom)):
            return "1" if bool(e) else "0"
        if not e.free_symbols:
            return f"({_c_float(e)})"
        if isinstance(e, sp.Add):
            return "(" + " + ".join(self.doprint(a) for a in e.args) + ")"
        if isinstance(e, sp.Mul):
            return self._mul(e)
        if isinstance(e, sp.Pow):
            return self._pow(e.base, e.exp)
        return self._function(e)

    def _mul(self, e: sp.Mul) -> str:
        coeff, factors = e.as_coeff_mul()
        coeff = coeff * sp.Mul(*[f for f in factors if not f.free_symbols])
        num, den = [], []
        for f in factors:
            if not f.free_symbols:
                continue
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                den.append(self._pow(f.base, -f.exp))
            else:
                num.append(self.doprint(f))
        if coeff != 1:
            num.insert(0, f"({_c_float(coeff)})")
        out = " * ".join(num) if num else "1.0f"
        for d in den:
            out = f"{out} / {d}"
        return f"({out})"

    def _pow(self, base, exp) -> str:
        b = self.doprint(base)
        if exp.is_Integer and 1 <= exp <= 16:
            return "(" + " * ".join([b] * int(exp)) + ")"
        if exp.is_Integer and -16 <= exp <= -1:
            return f"(1.0f / {self._pow(base, -exp)})"
        if exp == sp.Rational(1, 2):
            return f"sqrtf({b})"
        if exp == sp.Rational(-1, 2):
            return f"(1.0f / sqrtf({b}))"
        raise self.Unsupported(f"power {exp}")

    def _condition(self, c) -> str:
        ops = {sp.StrictGreaterThan: ">", sp.GreaterThan: ">=", sp.StrictLessThan: "<",
               sp.LessThan: "<="}
        if type(c) in ops:
            return f"({self.doprint(c.lhs)} {ops[type(c)]} {self.doprint(c.rhs)})"
        if isinstance(c, (sp.And, sp.Or)):  # & and | on 0/1: no branch, so it vectorises
            op = " & " if isinstance(c, sp.And) else " | "
            return "(" + op.join(self._condition(a) for a in c.args) + ")"
        if isinstance(c, sp.logic.boolalg.BooleanAtom):
            return "1" if bool(c) else "0"
        raise self.Unsupported(f"condition {type(c).__name__}")

    def _function(self, e) -> str:
        from spaces.codegen import at_most, exp_nonpositive, softplus_float32, where_positive, with_sign_of

        if isinstance(e, sp.Piecewise):
            if e.args[-1].cond is not sp.true:
                raise self.Unsupported("Piecewise without a default branch")
            out = self.doprint(e.args[-1].expr)
            for expr, cond in reversed(e.args[:-1]):
                out = f"({self._condition(cond)} ? {self.doprint(expr)} : {out})"
            return out
        a = [self.doprint(arg) for arg in e.args]
        if isinstance(e, exp_nonpositive):
            return f"eafo_exp_np({a[0]})"
        if isinstance(e, softplus_float32):
            return f"eafo_softplus({a[0]})"
        if isinstance(e, with_sign_of):
            return f"eafo_with_sign_of({a[0]}, {a[1]})"
        if isinstance(e, where_positive):  # r + k > 0 as r > -k, as the torch printer does
            shift, rest = e.args[0].as_independent(*e.args[0].free_symbols, as_Add=True)
            return f"({self.doprint(rest)} > {_c_float(-shift)} ? {a[1]} : {a[2]})"
        if isinstance(e, at_most):
            return f"eafo_at_most({a[0]}, {_c_float(e.args[1])})"
        if isinstance(e, sp.Abs):
            return f"fabsf({a[0]})"
        if isinstance(e, sp.sign):
            return f"eafo_sign({a[0]})"
        if isinstance(e, fn.relu):
            return f"eafo_max({a[0]}, 0.0f)"
        if isinstance(e, fn.leaky_relu):
            return f"({a[0]} > 0.0f ? {a[0]} : {_c_float(fn.LEAKY_SLOPE)} * {a[0]})"
        if isinstance(e, sp.DiracDelta):
            return "0.0f"
        if isinstance(e, (sp.Max, sp.Min)):
            helper = "eafo_max" if isinstance(e, sp.Max) else "eafo_min"
            # x-dependent arguments first: a NaN in them is what must come through
            args = sorted(e.args, key=lambda v: not v.free_symbols)
            out = self.doprint(args[0])
            for v in args[1:]:
                out = f"{helper}({out}, {self.doprint(v)})"
            return out
        if isinstance(e, sp.Heaviside):  # torch.heaviside: h0 at 0, else 0 (NaN included)
            h0 = a[1] if len(a) > 1 else "0.5f"
            return f"({a[0]} > 0.0f ? 1.0f : ({a[0]} == 0.0f ? {h0} : 0.0f))"
        raise self.Unsupported(type(e).__name__)


def _body(exprs: list[sp.Expr], n_coefficients: int, indent: str):
    """(lines binding the temporaries, printed results) of exprs, or raises Unsupported."""
    from spaces.codegen import common_subexpressions

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
    except CPrinter.Unsupported:
        return None
    coefs = "".join(f"    const float c{i} = c[{i}];\n" for i in range(k))
    sums = "".join(f"float s{i} = 0.0f; " for i in range(k))
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


# The generated module's side: compile `_NATIVE_SOURCE` once per source, flags and CPU,
# cache the library on disk, call it through ctypes (which releases the GIL). Fixed text,
# pasted into every generated and exported module (spaces.codegen.MODULE_TEMPLATE).
NATIVE_LOADER_SOURCE = f'''
import os as _os

_NATIVE = {{}}
# Tried in order: vectors as wide as the CPU has (on a 2-vCPU AVX-512 Xeon, 512-bit
# vectors ran CRReLU's forward+backward in 0.76x the time of 256-bit ones), then the
# compiler's own choice, then portable code.
_NATIVE_FLAGS = (["-march=native", "-mprefer-vector-width=512"], ["-march=native"], [])
_NATIVE_BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno",
                      "-fno-trapping-math"]


def _cpu_identity():
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _build_native(compiler, flags, path):
    import os
    import subprocess
    import tempfile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        source = os.path.join(tmp, "kernel.c")
        with open(source, "w") as f:
            f.write(_NATIVE_SOURCE)
        built = os.path.join(tmp, "kernel.so")
        subprocess.run([compiler, *_NATIVE_BASE_FLAGS, *flags, source, "-o", built],
                       check=True, capture_output=True, timeout=300)
        os.replace(built, path)  # atomic: other processes see no library or a whole one


def _load_native():
    import ctypes
    import hashlib
    import os
    import subprocess

    cache = os.environ.get("EAFO_KERNEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "eafo-search", "kernels")
    compiler = os.environ.get("CC") or "gcc"
    errors = []
    for flags in _NATIVE_FLAGS:
        key = "\\0".join([_NATIVE_SOURCE, compiler, *_NATIVE_BASE_FLAGS, *flags, _cpu_identity()])
        path = os.path.join(cache, "eafo_" + hashlib.sha256(key.encode()).hexdigest()[:20] + ".so")
        try:
            if not os.path.exists(path):
                _build_native(compiler, flags, path)
            lib = ctypes.CDLL(path)
        except (OSError, subprocess.SubprocessError) as e:
            stderr = getattr(e, "stderr", None)
            errors.append((stderr.decode(errors="replace") if isinstance(stderr, bytes) and stderr
                           else str(e)).strip()[:200])
            continue
        fwd, bwd = lib.eafo_fwd, lib.eafo_bwd
        p, n, i = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        fwd.argtypes, fwd.restype = [p, p, n, p, i], None
        bwd.argtypes, bwd.restype = [p, p, p, n, p, p, i], ctypes.c_int
        _NATIVE["flags"] = [compiler, *_NATIVE_BASE_FLAGS, *flags]  # what built it (benchmarks report it)
        return fwd, bwd
    import warnings

    # warn_explicit with no registry of this module's: with the "once" filter spaces
    # installs, one line per process for any number of candidates (a module's registry
    # would make it one per module)
    warnings.warn_explicit("eafo: no C kernels (" + "; ".join(dict.fromkeys(errors)) + "): float32 CPU kernels "
                           "run op by op, or torch.compile's after use_compiled_kernels()", RuntimeWarning,
                           filename=__name__, lineno=0, module=__name__)
    return None


def use_native_kernels(enabled=True):
    """Run float32 CPU kernels as our C kernels (the default) or not: then op by op, or
    torch.compile's after use_compiled_kernels(). EAFO_NATIVE_KERNELS=0 in the
    environment, read once when a kernel first runs, starts with them off."""
    _NATIVE["enabled"] = bool(enabled)


def _native_kernels():
    """(forward, backward) C kernels for this CPU, or None: no C form (_NATIVE_SOURCE is
    None), switched off (use_native_kernels), or no compiler that builds it (a warning
    says why). Called on every kernel call: dict lookups only (reading os.environ each
    time cost ~13 us between two cold kernels)."""
    enabled = _NATIVE.get("enabled")
    if enabled is None:
        enabled = _NATIVE["enabled"] = _os.environ.get("EAFO_NATIVE_KERNELS", "1") != "0"
    if not enabled or _NATIVE_SOURCE is None:
        return None
    kernels = _NATIVE.get("kernels", False)
    if kernels is False:
        kernels = _NATIVE["kernels"] = _load_native()
    return kernels


def _coefficient_values(coefficients):
    """What the kernels' `const float *c` points at: a lone float32 coefficient's own
    storage (no copy, no dispatch), else a ctypes array of the values (None for none)."""
    if len(coefficients) == 1:
        (c,) = coefficients
        if isinstance(c, torch.Tensor) and c.dtype == torch.float32 and c.is_cpu:
            return c.data_ptr()
    if not coefficients:
        return None
    import ctypes

    return (ctypes.c_float * len(coefficients))(*[float(c) for c in coefficients])


def _run_native(kernels, name, x, *args):
    """_run_f32 with the C kernels: x (and g) as contiguous float32, coefficients as floats.
    (No autograd here: callers run it where nothing is recorded.) Lean on purpose: after a
    kernel has streamed tens of MB through the caches, each Python step between kernels
    runs cold (a no-op .to() took 45 us there, 5 us on a small tensor)."""
    fwd, bwd = kernels
    xc = x if x.is_contiguous() else x.contiguous()
    n, threads = xc.numel(), torch.get_num_threads()
    if name.endswith("fwd"):
        out = torch.empty_like(xc)
        fwd(xc.data_ptr(), out.data_ptr(), n, _coefficient_values(args), threads)
        return out
    *coefficients, g = args
    gc = g if g.is_contiguous() else g.contiguous()
    dx = torch.empty_like(xc)
    k = len(coefficients)
    dc = torch.empty(() if k == 1 else (k,), dtype=torch.float32) if k else None
    if bwd(xc.data_ptr(), gc.data_ptr(), dx.data_ptr(), n, _coefficient_values(coefficients),
           None if dc is None else dc.data_ptr(), threads):
        raise MemoryError("eafo: no memory for the C backward's block sums")
    # (one storage per gradient: a custom op's outputs may not alias each other)
    grads = () if dc is None else (dc,) if k == 1 else [d.clone() for d in dc.unbind()]
    return (dx, *[d if d.dtype == c.dtype else d.to(c.dtype) for d, c in zip(grads, coefficients)])


# what the autograd.Function calls once _native_kernels() has loaded the library
_NATIVE_CALLS = {{"fwd": lambda x, *args: _run_native(_NATIVE["kernels"], "fwd", x, *args),
                 "bwd": lambda x, *args: _run_native(_NATIVE["kernels"], "bwd", x, *args)}}
'''


def source_literal(source: str | None) -> str:
    """`source` as a raw triple-quoted Python literal (or None): C printed by kernel_source
    holds no quote or backslash, checked here."""
    if source is None:
        return "None"
    if '"' in source or "\\" in source:
        raise ValueError("generated C source holds a quote or a backslash")
    return 'r"""' + source + '"""'
