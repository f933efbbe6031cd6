"""Sympy expression -> the source of a generated activation module.

One generator serves both uses: `Candidate.to_module()` executes the generated module
source in a fresh namespace, and `search.export` writes the very same source to a file.
A module is three parts:
- the runtime, the same for every formula: ordinary modules of `spaces.kernels`, pasted
  in from their own source (`spaces.kernels.inline`);
- its formula's kernels, printed from the sympy expression tree, node by node
  (`spaces.kernels.printers`); the only names in them are `x`, `g`, generated
  temporaries and coefficient names that passed `check_name`, so no text of the user's
  formula string is ever copied into the source;
- the function, the autograd.Function and the nn.Module, from the short templates below.

Backward is the sympy derivative, with common subexpressions shared between the input
gradient and the coefficient gradients (`sympy.cse`), so the autograd.Function saves only
the input (and the scalar coefficients). Each kernel pair comes in up to three forms: the
exact one; the same with in-place ops for eager mode (`InplacePrinter`); and, with
`native=True`, the float32 forms of the fused CPU kernels (exp, erf, tanh and sigmoid as
multiply-adds: `spaces.kernels.forms`), also printed as C (`spaces.kernels.c_source`).

native=False (what `python -m search.export` writes by default) is plain PyTorch: the
module imports only torch. native=True (the engine's modules, `--native` exports) adds
the fused float32 CPU kernels: our C, built by the system's C compiler on first use.
"""
from __future__ import annotations

import math

import sympy as sp

from spaces.functions import X
from spaces.kernels.c_source import kernel_source, source_literal
from spaces.kernels.forms import float32_forms, shared_form
from spaces.kernels.inline import runtime_source
from spaces.kernels.printers import InplacePrinter, TorchPrinter, common_subexpressions
from spaces.parse import check_name


def _cse_lines(exprs: list[sp.Expr], names: dict[sp.Symbol, str], indent: str, inplace: bool = False):
    """Common subexpressions of `exprs` as assignment lines, and the printed results.

    inplace: print with InplacePrinter (eager kernels inside the autograd.Function)."""
    replacements, reduced = common_subexpressions(exprs)
    names = dict(names)
    full = {sym for sym in names if sym.name in ("x", "g")}  # X is named x; g is bound by the caller

    def printer():
        return InplacePrinter(names, full) if inplace else TorchPrinter(names)

    lines = []
    for i, (sym, sub) in enumerate(replacements):
        # A leading underscore: no coefficient name can start with one (check_name).
        line = f"{indent}_t{i} = {printer().doprint(sub)}"
        names[sym] = f"_t{i}"
        if sub.free_symbols & full:
            full.add(sym)
        lines.append(line)
    # fresh: the printed result is a new buffer of x's shape (see InplacePrinter._emit)
    fresh = [inplace and not isinstance(r, sp.Symbol) and bool(r.free_symbols & full) for r in reduced]
    return lines, [printer().doprint(r) for r in reduced], fresh


# Names the generated code itself binds or reads. A coefficient is an argument of
# the kernels and of the Function/Module methods, and an attribute of the module,
# so one spelled like any of these would shadow it (silently wrong values, or a
# SyntaxError for a duplicate argument). Module-level names (the function and
# class) must not shadow the module's globals or the builtins the code calls.
_KERNEL_NAMES = frozenset({"x", "g", "torch", "F", "math"})
_METHOD_NAMES = _KERNEL_NAMES | {"xc", "gc", "low", "grads", "coefficients", "ctx", "inputs",
                                 "output", "self", "inplace", "enabled", "float", "tuple", "super",
                                 "training"}
_MODULE_GLOBALS = frozenset({"math", "torch", "F", "FORMULA", "COEFFICIENTS", "use_compiled_kernels",
                             "use_native_kernels", "kernel_info"})
# (the module's other globals, the runtime's (spaces.kernels.inline checks it), _KERNELS,
# _C_SOURCE and the _<name>_* kernels, start with an underscore, which check_name refuses
# in any user-given name)


def check_generated_names(func_name: str, class_name: str, coefficients=()) -> None:
    """Raise ValueError unless these names are safe to print into a generated module."""
    import builtins

    import torch

    check_name(func_name, "function name")
    check_name(class_name, "class name")
    for what, n in (("function name", func_name), ("class name", class_name),
                    ("class name", f"{class_name}Function")):
        if n in _MODULE_GLOBALS or hasattr(builtins, n):
            raise ValueError(f"invalid {what} {n!r}: reserved (a name the generated module uses)")
    if func_name in (class_name, f"{class_name}Function"):
        raise ValueError(f"function name and class name must differ (both {func_name!r})")
    for n in coefficients:
        check_name(n, "coefficient name")
        # nn.Module attributes (forward, training, ...) and the class's own `function`
        if n in _METHOD_NAMES or hasattr(torch.nn.Module, n) or n == "function":
            raise ValueError(f"invalid coefficient name {n!r}: reserved in generated code")


def _kernel_pair(prefix: str, learnable: list[str], syms: dict, expr: sp.Expr,
                 derivs: list[sp.Expr], inplace: bool = False) -> list[str]:
    """Source lines of `{prefix}_fwd(x, *coefs)` and `{prefix}_bwd(x, *coefs, g)`."""
    args = ", ".join(["x", *learnable])
    ind = "    "
    fwd_lines, (fwd,), _ = _cse_lines([expr], syms, ind, inplace)
    if expr == X:
        fwd = "x.clone()"  # autograd.Function may not return its input as is
    elif X not in expr.free_symbols:
        fwd = f"torch.zeros_like(x) + {fwd}"  # a constant still has x's shape
    bwd_lines, printed, fresh = _cse_lines(derivs, syms, ind, inplace)

    def times_g(d, fresh_d):
        return f"{d}.mul_(g)" if fresh_d else f"g * {d}"

    grads = [times_g(printed[0], fresh[0])]
    for n, d, f in zip(learnable, printed[1:], fresh[1:]):
        # one scalar per coefficient: reduce in float32 at least, whatever g's dtype
        grads.append(f"torch.sum({times_g(d, f)}, dtype=torch.promote_types(g.dtype, torch.float32))"
                     f".reshape({n}.shape).to({n}.dtype)")
    return [
        f"def {prefix}_fwd({args}):",
        *fwd_lines,
        f"{ind}return {fwd}",
        "",
        "",
        f"def {prefix}_bwd({args}, g):",
        *bwd_lines,
        f"{ind}return ({', '.join(grads)},)",
    ]


def function_sources(expr: sp.Expr, learnable: list[str], prefix: str) -> str:
    """Source of the kernels: `{prefix}_fwd(x, *coefs)` and `{prefix}_bwd(x, *coefs, g)`;
    `{prefix}_eager_fwd` / `_bwd`, the same printed with in-place ops (InplacePrinter) for
    the autograd.Function in eager mode; and `{prefix}_f32_fwd` / `_bwd`, the forms fused
    CPU float32 kernels use (the same functions, written for fusion: spaces.kernels.forms).

    `expr` may contain only x and the symbols named in `learnable` (fixed
    coefficients must already be substituted).
    """
    return kernel_sources(expr, learnable, prefix)[0]


def kernel_sources(expr: sp.Expr, learnable: list[str], prefix: str,
                   native: bool = True) -> tuple[str, str | None]:
    """(function_sources, the C source of the float32 forms or None). native=False: the
    exact and eager kernels only (no float32 forms, no C)."""
    check_name(prefix.lstrip("_"), "function prefix")
    syms = {X: "x"}
    for n in learnable:
        check_name(n, "coefficient name")
        if n in _KERNEL_NAMES:
            raise ValueError(f"invalid coefficient name {n!r}: reserved in generated code")
        syms[sp.Symbol(n, real=True)] = n
    extra = expr.free_symbols - set(syms)
    if extra:
        raise ValueError(f"expression has unbound symbols {sorted(map(str, extra))}")
    derivs = [shared_form(sp.diff(expr, s)) for s in syms]  # x first, then coefficients
    exact = _kernel_pair(prefix, learnable, syms, expr, derivs)
    eager = _kernel_pair(f"{prefix}_eager", learnable, syms, expr, derivs, inplace=True)
    if not native:
        return "\n".join([*exact, "", "", *eager]) + "\n", None
    (f32_expr,), f32_derivs = float32_forms([expr]), float32_forms(derivs)
    if f32_expr != expr or f32_derivs != derivs:
        fused = _kernel_pair(f"{prefix}_f32", learnable, syms, f32_expr, f32_derivs)
    else:  # nothing to rewrite: the float32 kernels are the exact ones
        fused = [f"{prefix}_f32_fwd, {prefix}_f32_bwd = {prefix}_fwd, {prefix}_bwd"]
    c_source = kernel_source(f32_expr, f32_derivs, list(syms)[1:])
    return "\n".join([*exact, "", "", *eager, "", "", *fused]) + "\n", c_source





def kernel_functions(expr: sp.Expr, learnable: list[str], native: bool = True) -> dict:
    """The kernels `module_source` prints for `expr`, as functions: "fwd", "bwd", "eager_fwd",
    "eager_bwd" and (native) "f32_fwd", "f32_bwd" (see `function_sources`), for evaluating a
    formula (spaces.compile), tests and benchmarks."""
    import torch
    import torch.nn.functional as F

    from spaces.kernels import float32_ops

    namespace = {"torch": torch, "F": F, **{k: v for k, v in vars(float32_ops).items() if k.startswith("_")}}
    source = kernel_sources(expr, list(learnable), "_kernel", native)[0]
    exec(compile(source, "<eafo-kernels>", "exec"), namespace)  # noqa: S102 - printed from a sympy tree
    names = ("fwd", "bwd", "eager_fwd", "eager_bwd") + (("f32_fwd", "f32_bwd") if native else ())
    return {n: namespace[f"_kernel_{n}"] for n in names}

# The parts of a module after its kernels: short templates, filled with checked names,
# float literals and text that passed _doc_safe.
_BINDINGS = """

_KERNELS = _Kernels({prefix}_fwd, {prefix}_bwd, {prefix}_eager_fwd, {prefix}_eager_bwd, {fused})
use_compiled_kernels = _KERNELS.use_compiled
kernel_info = _KERNELS.info
{native_switch}

def {func_name}(x, {coef_kwargs}inplace=False):
    \"\"\"Plain function: the formula composed from torch ops (autograd differentiates it).\"\"\"
    return {prefix}_fwd(x{coef_tensors})
"""
_FUNCTION_CLASS = """

class {class_name}Function(torch.autograd.Function):
    \"\"\"Memory-efficient form: saves only the input and the scalar coefficients.\"\"\"

    @staticmethod
    def forward(ctx, x{coef_args}):
        ctx.save_for_backward(x{coef_args})
        return _KERNELS.forward(x{coef_args})

    @staticmethod
    def backward(ctx, g):
        return _KERNELS.backward(g, *ctx.saved_tensors)
"""
_MODULE_CLASS = """

class {class_name}(torch.nn.Module):
    \"\"\"{class_name} activation: ``{formula_doc}``.

    Zero-argument constructible, so it works as timm's ``act_layer``; ``inplace``
    is accepted for compatibility and ignored (the output is a new tensor).
    Each learnable coefficient is one scalar ``nn.Parameter`` per instance.
    \"\"\"

    function = {class_name}Function  # the autograd.Function forward applies

    def __init__(self, inplace=False{init_kwargs}):
        super().__init__()
{param_lines}"""
_MODULE_METHODS = """
    def forward(self, x):
        if torch.jit.is_scripting():  # (TorchScript compiles this branch only)
            return {prefix}_fwd(x{self_args})
        if _KERNELS.plain_ops_wanted(x):  # traced, exported, compiled: tools see torch ops
            return {prefix}_fwd(x{self_args})
        return {class_name}Function.apply(x{self_args})

    def extra_repr(self):
        return "formula=" + FORMULA
"""


def module_source(expr: sp.Expr, learnable: dict[str, float], *, class_name: str, func_name: str,
                  formula: str, docstring: str, native: bool = True) -> str:
    """The full source of a standalone module implementing `expr`.

    learnable: coefficient name -> initial value, in argument order.
    formula: the canonical formula (sympy's printing of the parsed tree) for display.
    native: with the fused float32 CPU kernels (C, built on first use); False: plain PyTorch.
    """
    names = list(learnable)
    check_generated_names(func_name, class_name, names)
    prefix = f"_{func_name}"
    inits = {n: float(v) for n, v in learnable.items()}
    for n, v in inits.items():
        if not math.isfinite(v):
            raise ValueError(f"initial value of {n} is not finite: {v}")
    functions, c_source = kernel_sources(expr, names, prefix, native)
    imports, runtime = runtime_source(native)
    api = [func_name, class_name, f"{class_name}Function", "use_compiled_kernels", "kernel_info",
           *(["use_native_kernels"] if native else [])]
    fields = dict(
        prefix=prefix, func_name=func_name, class_name=class_name,
        fused=f'_FusedCpuKernels({prefix}_f32_fwd, {prefix}_f32_bwd, _C_SOURCE, "{class_name.lower()}")'
        if native else "None",
        native_switch="use_native_kernels = _KERNELS.fused.use_native\n" if native else "",
        coef_kwargs="".join(f"{n}={inits[n]!r}, " for n in names),
        coef_tensors="".join(f", torch.as_tensor({n}, dtype=x.dtype, device=x.device)" for n in names),
        coef_args="".join(f", {n}" for n in names),
        formula_doc=_doc_safe(formula),
        init_kwargs="".join(f", {n}={inits[n]!r}" for n in names),
        param_lines="".join(f"        self.{n} = torch.nn.Parameter(torch.tensor(float({n})))\n"
                            for n in names) or "        pass\n",
        self_args="".join(f", self.{n}" for n in names))
    return "".join([
        _docstring_literal(docstring), "\n", imports, "import torch.nn.functional as F\n" if "F." in functions else "",
        "\n", runtime, "\n\n",
        "# ---- this activation's formula and kernels ----\n",
        f"__all__ = [{', '.join(map(repr, api))}]\n\n",
        f"FORMULA = {formula!r}\n",
        f"COEFFICIENTS = {inits!r}  # name -> initial value (learnable ones)\n\n\n",
        functions,
        f"\n\n# C source of the fused float32 CPU kernels (spaces.kernels.c_source): only float literals\n"
        f"# and fixed names. None where a form has no C counterpart.\n_C_SOURCE = {source_literal(c_source)}\n"
        if native else "",
        _BINDINGS.format(**fields), _FUNCTION_CLASS.format(**fields), _MODULE_CLASS.format(**fields),
        _MODULE_METHODS.format(**fields)])


def _doc_safe(text: str) -> str:
    # Formulas are printed by sympy from a parsed tree (names, digits, operators),
    # but a docstring must never be closable from inside: refuse anything odd.
    if any(c in text for c in ('"', "\\", "\n", "\r")) or not text.isprintable():
        raise ValueError("text cannot be placed in a docstring")
    return text


def _docstring_literal(text: str) -> str:
    lines = [_doc_safe(line) if line else "" for line in text.splitlines()]
    return '"""' + "\n".join(lines) + '\n"""'


def load_module_source(source: str, module_name: str):
    """Execute generated source (never user text) in a fresh module, registered in
    sys.modules under `module_name` (so `module_of(cls)` finds it, as pickle would), its
    text in linecache (tracebacks show it; torch.jit.script reads a module's source)."""
    import linecache
    import sys
    import types

    module = types.ModuleType(module_name)
    filename = f"<eafo-generated {module_name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(source, filename, "exec")
    exec(code, module.__dict__)  # noqa: S102 - source printed from a sympy tree
    sys.modules[module_name] = module
    return module


def module_of(cls: type):
    """The generated (or exported) module a generated activation class was defined in:
    its `kernel_info()`, `use_compiled_kernels()`, `use_native_kernels()`, FORMULA."""
    import sys

    module = sys.modules.get(getattr(cls, "__module__", None))
    if module is None or getattr(module, getattr(cls, "__name__", ""), None) is not cls \
            or not callable(getattr(module, "kernel_info", None)):
        raise ValueError(f"{cls!r} is not a class of a loaded generated activation module")
    return module


__all__ = ["check_generated_names", "function_sources", "kernel_sources", "kernel_functions",
           "module_source", "load_module_source", "module_of"]
