"""Sympy expression -> torch source code.

One generator serves both uses: `Candidate.to_module()` executes the generated
module source in a fresh namespace, and `search.export` writes the very same
source to a file. The source is printed from the sympy expression tree, node
by node, by the printer below; the only names in it are `x`, `g`, generated
temporaries and coefficient names that passed `check_name`. No text of the
user's formula string is ever copied into it.

Backward is the sympy derivative, with common subexpressions shared between
the input gradient and the coefficient gradients (`sympy.cse`), so the
autograd.Function saves only the input (and the scalar coefficients).
Each kernel pair comes three times: the exact form; the same with in-place ops
for eager mode (`InplacePrinter`); and the form fused float32 CPU kernels use
(exp, erf, tanh and sigmoid as multiply-adds; see `_float32_forms`), which
`spaces.native` also prints as C for the fused float32 CPU kernels.
"""
from __future__ import annotations

import math

import sympy as sp

from spaces import functions as fn
from spaces import native
from spaces.functions import X
from spaces.parse import check_name

_UNARY_TORCH = {
    sp.exp: "torch.exp",
    sp.log: "torch.log",
    sp.sin: "torch.sin",
    sp.cos: "torch.cos",
    sp.tanh: "torch.tanh",
    sp.atan: "torch.atan",
    sp.asinh: "torch.asinh",
    sp.erf: "torch.erf",
    sp.Abs: "torch.abs",
    sp.sign: "torch.sign",
    fn.relu: "torch.relu",
    fn.sigmoid: "torch.sigmoid",
    fn.softplus: "F.softplus",
    fn.silu: "F.silu",
    fn.mish: "F.mish",
    fn.gelu: "F.gelu",
    fn.elu: "F.elu",
    fn.celu: "F.celu",
    fn.selu: "torch.selu",
    fn.hardswish: "F.hardswish",
}  # (and exp_nonpositive: "_exp_nonpositive", added below where it is defined)
_SPECIAL_TORCH = {
    fn.gelu_tanh: "F.gelu({}, approximate='tanh')",
    fn.leaky_relu: "F.leaky_relu({}, 0.01)",
    fn.step: "({} > 0).to(x.dtype)",
}
_RELATIONS = {
    sp.StrictGreaterThan: ">",
    sp.GreaterThan: ">=",
    sp.StrictLessThan: "<",
    sp.LessThan: "<=",
}


def _float_literal(value: sp.Expr) -> str:
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"constant {value} is not finite")
    return repr(v)


class TorchPrinter:
    """Prints a sympy expression as a torch expression string."""

    def __init__(self, names: dict[sp.Symbol, str]):
        # names: every symbol the expression may contain -> its Python name.
        self.names = names

    def doprint(self, e: sp.Expr) -> str:
        return self._p(e)

    @staticmethod
    def _tensorish(e: sp.Expr) -> bool:
        # x, coefficients (0-dim tensors) and temporaries are all tensors;
        # symbol-free subexpressions are folded to Python floats.
        return bool(e.free_symbols)

    def _p(self, e) -> str:
        if isinstance(e, sp.Symbol):
            try:
                return self.names[e]
            except KeyError:
                raise ValueError(f"unbound symbol {e} in expression") from None
        if isinstance(e, (bool, sp.logic.boolalg.BooleanAtom)):
            return "True" if bool(e) else "False"
        if not e.free_symbols:
            return _float_literal(e)  # pi, exp(-1/2), Rational: fold to a float
        if isinstance(e, sp.Add):
            terms = [self._p(a) for a in e.args]
            out = terms[0]
            for t in terms[1:]:
                out = f"{out} - {t[1:]}" if t.startswith("-") else f"{out} + {t}"
            return f"({out})"
        if isinstance(e, sp.Mul):
            return self._mul(e)
        if isinstance(e, sp.Pow):
            return self._pow(e.base, e.exp)
        if isinstance(e, sp.Piecewise):
            return self._piecewise(e)
        if isinstance(e, sp.core.relational.Relational):
            op = _RELATIONS.get(type(e))
            if op is None:
                raise ValueError(f"relation {type(e).__name__} is not supported")
            return f"({self._p(e.lhs)} {op} {self._p(e.rhs)})"
        if isinstance(e, sp.And):
            return "(" + " & ".join(self._p(a) for a in e.args) + ")"
        if isinstance(e, sp.Or):
            return "(" + " | ".join(self._p(a) for a in e.args) + ")"
        if isinstance(e, (sp.Max, sp.Min)):
            return self._maxmin(e)
        if isinstance(e, sp.Heaviside):
            a = self._as_tensor(e.args[0])
            h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
            return f"torch.heaviside({a}, x.new_full((), {self._p(h0)}))"
        if isinstance(e, sp.DiracDelta):
            return "0.0"  # derivative of a step: zero almost everywhere
        if isinstance(e, with_sign_of):
            return f"_with_sign_of({self._as_tensor(e.args[0])}, {self._as_tensor(e.args[1])})"
        if isinstance(e, at_most):
            return f"torch.clamp({self._as_tensor(e.args[0])}, max={_float_literal(e.args[1])})"
        if isinstance(e, where_positive):
            a, pos, other = e.args
            shift, rest = a.as_independent(*a.free_symbols, as_Add=True)
            # r + k > 0 printed as r > -k: the same for floats (a sum of two distinct
            # floats never rounds to 0), one addition less
            return (f"torch.where({self._p(rest)} > {_float_literal(-shift)}, "
                    f"{self._branch(pos)}, {self._branch(other)})")
        func = type(e)
        if func in _UNARY_TORCH:
            return f"{_UNARY_TORCH[func]}({self._as_tensor(e.args[0])})"
        if func in _SPECIAL_TORCH:
            return _SPECIAL_TORCH[func].format(self._as_tensor(e.args[0]))
        raise ValueError(f"cannot generate torch code for {func.__name__}")

    def _as_tensor(self, e) -> str:
        s = self._p(e)
        return s if self._tensorish(e) else f"torch.as_tensor({s})"

    def _mul(self, e: sp.Mul) -> str:
        num, den = [], []
        coeff, factors = e.as_coeff_mul()
        # Symbol-free factors (1/sqrt(2*pi), ...) join the numeric coefficient, so
        # they are one float literal, not a tensor op per call.
        coeff = coeff * sp.Mul(*[f for f in factors if not f.free_symbols])
        factors = [f for f in factors if f.free_symbols]
        for f in factors:
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                den.append(self._pow(f.base, -f.exp))
            else:
                num.append(self._p(f))
        sign = ""
        if coeff == -1:
            sign = "-"
        elif coeff != 1:
            num.insert(0, _float_literal(coeff))
        top = " * ".join(num) if num else "1.0"
        body = top if not den else f"{top} / {' / '.join(den)}" if len(den) == 1 else \
            f"{top} / ({' * '.join(den)})"
        return f"{sign}({body})"

    def _pow(self, base, exp) -> str:
        b = self._p(base)
        if exp == 1:
            return b
        if exp == 2:
            return f"torch.square({b})" if self._tensorish(base) else f"({b} * {b})"
        if exp == sp.Rational(1, 2):
            return f"torch.sqrt({self._as_tensor(base)})"
        if exp == -1:
            return f"torch.reciprocal({self._as_tensor(base)})"
        if exp == sp.Rational(-1, 2):
            return f"torch.rsqrt({self._as_tensor(base)})"
        if exp.is_Integer and 2 < exp <= 16 and self._tensorish(base):
            return f"torch.pow({b}, {int(exp)})"
        if base == sp.E:
            return f"torch.exp({self._as_tensor(exp)})"
        if not base.free_symbols:
            return f"torch.pow({_float_literal(base)}, {self._as_tensor(exp)})"
        return f"torch.pow({self._as_tensor(base)}, {self._p(exp)})"

    def _maxmin(self, e) -> str:
        op, bound = ("torch.maximum", "min") if isinstance(e, sp.Max) else ("torch.minimum", "max")
        args = list(e.args)
        tensors = [a for a in args if self._tensorish(a)]
        scalars = [a for a in args if not self._tensorish(a)]
        if not tensors:
            out = self._as_tensor(args[0])
            for a in args[1:]:
                out = f"{op}({out}, {self._as_tensor(a)})"
            return out
        out = self._p(tensors[0])
        for a in tensors[1:]:
            out = f"{op}({out}, {self._p(a)})"
        for a in scalars:
            # clamp(min=) for Max, clamp(max=) for Min; works for floats and 0-dim tensors
            out = f"torch.clamp({out}, {bound}={self._p(a)})"
        return out

    def _piecewise(self, e: sp.Piecewise) -> str:
        pieces = list(e.args)
        cond_last = pieces[-1].cond
        if cond_last is not sp.true:
            raise ValueError("Piecewise without a default branch cannot be generated")
        out = self._branch(pieces[-1].expr)
        for expr, cond in reversed(pieces[:-1]):
            out = f"torch.where({self._p(cond)}, {self._branch(expr)}, {out})"
        return out

    def _branch(self, e) -> str:
        # torch.where with two Python scalars would compute in float32; pin x's dtype.
        return self._p(e) if self._tensorish(e) else f"x.new_full((), {self._p(e)})"


# Tensor methods that apply a unary function in place.
_INPLACE_UNARY = {
    sp.exp: "exp_", sp.log: "log_", sp.sin: "sin_", sp.cos: "cos_", sp.tanh: "tanh_",
    sp.atan: "atan_", sp.asinh: "asinh_", sp.erf: "erf_", sp.Abs: "abs_", sp.sign: "sign_",
    fn.relu: "relu_", fn.sigmoid: "sigmoid_",
}


class InplacePrinter(TorchPrinter):
    """Prints an expression so that each buffer it allocates is reused, in place, by
    the ops that follow (`torch.mul(x, 0.5).add_(t).mul_(g)`): for eager kernels, where
    every op is a pass over memory anyway but a new buffer per op also costs an
    allocation (and, for large tensors, fresh pages). Only buffers the expression
    itself allocated are ever written: never x, g, a coefficient or a shared temporary.
    Used only where autograd does not record (inside the autograd.Function).
    """

    def __init__(self, names: dict[sp.Symbol, str], full: set[sp.Symbol]):
        super().__init__(names)
        self.full = full  # symbols bound to tensors of x's shape (x, g, temporaries of them)

    def doprint(self, e: sp.Expr) -> str:
        return self._emit(e)[0]

    def _is_full(self, e) -> bool:
        return bool(e.free_symbols & self.full)

    def _emit(self, e) -> tuple[str, bool]:
        """(code, fresh): fresh when the value is a new buffer of x's shape, ours to overwrite."""
        if isinstance(e, sp.Symbol) or not self._is_full(e):
            return self._p(e), False
        if isinstance(e, (sp.Add, sp.Mul)):
            return self._chain(e)
        if type(e) in _INPLACE_UNARY:
            code, fresh = self._emit(e.args[0])
            if fresh:
                return f"{code}.{_INPLACE_UNARY[type(e)]}()", True
        if isinstance(e, sp.Pow) and e.exp == 2:
            code, fresh = self._emit(e.base)
            if fresh:
                return f"{code}.square_()", True
        return self._p(e), True  # any other op on a tensor of x's shape returns a new one

    def _chain(self, e) -> tuple[str, bool]:
        items = []  # (operand, in-place method)
        if isinstance(e, sp.Add):
            for a in e.args:
                neg = a.could_extract_minus_sign()
                items.append((-a if neg else a, "sub_" if neg else "add_"))
        else:
            coeff, factors = e.as_coeff_mul()
            coeff = coeff * sp.Mul(*[f for f in factors if not f.free_symbols])
            for f in factors:
                if not f.free_symbols:
                    continue
                if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                    items.append((sp.Pow(f.base, -f.exp), "div_"))
                else:
                    items.append((f, "mul_"))
            if coeff != 1:
                items.append((coeff, "mul_"))
        emitted = [(self._emit(a), op, a) for a, op in items]
        # The accumulator: an operand that is already a fresh buffer, else a new buffer
        # made from the first operand of x's shape.
        pick = next((i for i, ((_, fresh), _, _) in enumerate(emitted) if fresh), None)
        if pick is None:
            pick = next(i for i, (_, _, a) in enumerate(emitted) if self._is_full(a))
        (code, fresh), op, _ = emitted.pop(pick)
        if op == "div_":
            acc = f"{code}.reciprocal_()" if fresh else f"torch.reciprocal({code})"
        elif op == "sub_":
            acc = f"{code}.neg_()" if fresh else f"torch.neg({code})"
        elif fresh:
            acc = code
        elif emitted:  # x * c, x + t, ...: the first op allocates
            (code2, _), op2, _ = emitted.pop(0)
            fname = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div"}[op2]
            acc = f"torch.{fname}({code}, {code2})"
        else:
            acc = f"{code}.clone()"
        for (c, _), op, _ in emitted:
            acc = f"{acc}.{op}({c})"
        return acc, True


def common_subexpressions(exprs: list[sp.Expr]):
    """sympy.cse of `exprs`: ([(temporary, expression)], reduced expressions). A
    symbol-free temporary (sqrt(2)/2, ...) is put back in place: printers fold it
    into a float literal where it is used."""
    temps = sp.numbered_symbols("_cse")
    replacements, reduced = sp.cse(exprs, symbols=temps, optimizations="basic")
    constants = {}
    kept = []
    for sym, sub in replacements:
        sub = sub.xreplace(constants)
        if sub.free_symbols:
            kept.append((sym, sub))
        else:
            constants[sym] = sub
    return kept, [r.xreplace(constants) for r in reduced]


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
                             "use_native_kernels"})
# (the module's other globals, _PLAIN, _EAGER, _KERNELS, _kernel and the _<name>_* kernels,
# start with an underscore, which check_name refuses in any user-given name)


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


# Backward forms of bases that share their expensive part with the rest of the
# derivative: gelu'(x) needs erf(x/sqrt(2)) anyway, silu'(x) and mish'(x) need
# sigmoid(x) and tanh(softplus(x)). Writing gelu(x) itself (e.g. in a
# coefficient's gradient) through the same erf lets sympy.cse compute each
# transcendental once per element instead of once per use.
_SHARED_FORMS = {
    fn.gelu: lambda a: a * (1 + sp.erf(a / sp.sqrt(2))) / 2,
    fn.silu: lambda a: a * fn.sigmoid(a),
    fn.mish: lambda a: a * sp.tanh(fn.softplus(a)),
}


def _shared_form(e: sp.Expr) -> sp.Expr:
    return e.replace(lambda n: type(n) in _SHARED_FORMS,
                     lambda n: _SHARED_FORMS[type(n)](n.args[0]))


# Float32 forms for fused CPU kernels. Inductor's C++ calls Sleef for exp, erf,
# tanh and sigmoid, and for the same maths it is several times slower than the
# oneDNN kernel behind nn.GELU. These forms are plain multiply-adds that inductor
# fuses into one loop:
# - erf(u), where the kernel needs the Gaussian exp(-u**2) anyway (gelu'(x), EAFO
#   corrections of gelu), is Abramowitz & Stegun 7.1.26 (the formula of PyTorch's own
#   vectorised float32 erf, at::vec::Vectorized<float>::erf):
#   sign(u) * (1 - t*P(t) * exp(-u**2)), t = 1/(1 + p|u|), |error| <= 1.5e-7; sympy.cse
#   computes that exp once for both.
# - erf(u) elsewhere (a gelu forward, the gelu-tanh mix's) is an odd minimax rational
#   like tanh's: sign(u) a P(a**2)/Q(a**2), a = |u| clamped to 4.2, exactly 1 in size
#   from there on and wherever rounding would pass 1 (`_ERF_RATIONAL`, within 5.4e-8
#   of erf): no exp. On a 2-vCPU AVX-512 Xeon the gelu forward kernel took 0.74x the
#   time of the A&S form (0.53 against 0.72 ms, 16x197x768), the mix's 0.8x. It is
#   less accurate than A&S with torch's ops (1.2e-6 against 4.6e-7 off for gelu on
#   [-10, 10]: the rational's own float32 rounding, a few ulp), as accurate as float32
#   torch's F.gelu there (1.15e-6 on that Xeon); tested.
# - tanh(u) alone (a forward) is an odd minimax rational: sign(u) a P(a**2)/Q(a**2),
#   a = |u| clamped to 9.5, exactly 1 in size from there on and wherever rounding
#   would pass 1 (`_tanh_float32`): no exp; the gelu-tanh mix's forward kernel took
#   ~0.87x the time of the exp form. Within 3.7e-7 of tanh in float32 (rounding, not the fit).
# - a kernel that also needs tanh(u)**2 (a backward) must not take tanh' as
#   1 - (rational)**2: near tanh = 1 that cancels to 7e-7 off. Where the gradient's
#   sensitivity to tanh(u) is free of x, a rational for T = 1 - tanh(|u|) gives
#   tanh' = T (2 - T) and tanh = sign(u) (1 - T), within 1.5e-7 and with no exp (the
#   mix's backward kernel: ~0.9x the exp form's time). Where x multiplies tanh'
#   ((x tanh x)', say), it needs relative accuracy in the tails: tanh' is
#   4e/(1 + e)**2, tanh is sign(u)(1 - e)/(1 + e), one e = exp(-2|u|) for both.
#   See `_float32_forms`.
# - sigmoid(a) = 1/(1 + e) (times e for a < 0), e = exp(-|a|): no overflow.
# - softplus(a) = max(a, 0) + y P(y)/Q(y), y = exp(-|a|), P/Q a minimax rational for
#   log(1 + y)/y (`_softplus`, _LOG1P_RATIO_RATIONAL): no log.
# - mish's tanh(softplus(u)) is a closed form in e = exp(-|u|), its complement too
#   (`_tanh_softplus_float32`): mish's kernels take one exp each.
# - sign(u) * y is `with_sign_of(y, u)`: a compare and a blend (where(u < 0, -y, y)), not
#   inductor's five-op sign. (Not bit operations through view(torch.int32): inductor
#   writes each such view as a store, a scalar loop and a load, which GCC turned into
#   ~35 shuffles per 512-bit vector; the tanh mix's forward took 6.3 ms instead of 2.2.)
# - every exp whose argument sympy proves <= 0 (all of the above, and every
#   Gaussian term) becomes `exp_nonpositive`, printed as `_exp_nonpositive`: a Cody-Waite
#   reduction, a degree-4 polynomial, 2**n built in the exponent bits
#   (EXP_NONPOSITIVE_SOURCE).
# Accuracy against float64 is tested to be within a few 1e-7 of float32 torch.
# float64 and CUDA kernels keep the exact forms (torch.erf, torch.exp, ...).


class exp_nonpositive(sp.Function):  # noqa: N801 - printed like sympy's own functions
    """exp(a) for an argument known to be <= 0 (see `_float32_forms`)."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        return sp.exp(arg) if arg.is_Number else None

    def fdiff(self, argindex=1):
        return self


_UNARY_TORCH[exp_nonpositive] = "_exp_nonpositive"


class at_most(sp.Function):  # noqa: N801
    """min(a, c) for a number c, NaN kept: printed as torch.clamp(a, max=c), in C as one
    compare and one blend (`eafo_at_most`), where a NaN-keeping Min takes three ops."""

    nargs = 2

    def _eval_is_extended_real(self):
        return True

    @classmethod
    def eval(cls, a, c):
        return sp.Min(a, c) if a.is_Number else None


class softplus_float32(sp.Function):  # noqa: N801
    """softplus(a) for fused float32 kernels, printed as `_softplus(a)` (see
    _LOG1P_RATIO_RATIONAL): nonnegative to sympy, so exp(-2 softplus) is an
    exp_nonpositive and |softplus| is softplus."""

    nargs = 1

    def _eval_is_extended_real(self):
        return True

    def _eval_is_nonnegative(self):
        return True

    @classmethod
    def eval(cls, a):
        return fn.softplus(a) if a.is_Number else None


_UNARY_TORCH[softplus_float32] = "_softplus"


class with_sign_of(sp.Function):  # noqa: N801
    """y * sign(x) for y >= 0, printed as `_with_sign_of(y, x)`: where(x < 0, -y, y), a
    compare and a blend, where inductor's sign is two compares, two blends and a
    subtract. At x = 0 (either sign) it gives y where sign(x) * y gives 0; the erf and
    tanh forms that use it have y = 0 or ~1e-9 there."""

    nargs = 2

    def _eval_is_extended_real(self):
        return True  # else sympy treats sign(... with_sign_of ...) as complex: conjugate()

    @classmethod
    def eval(cls, y, x):
        if x.is_Number:
            return y * sp.sign(x)
        if x.is_nonnegative:  # softplus(u), say: no sign to put back
            return y
        if isinstance(x, sp.Mul):  # sign(x/sqrt(2)) is sign(x): no multiply for it
            consts = [a for a in x.args if not a.free_symbols]
            if consts and sp.Mul(*consts).is_positive:
                return cls(y, sp.Mul(*[a for a in x.args if a.free_symbols]))
        return None


def _horner_source(coefs, v: str) -> str:
    out = repr(coefs[-1])
    for c in reversed(coefs[:-1]):
        out = f"({c!r} + {v} * {out})"
    return out


# log(1 + y)/y on [0, 1], degrees (2, 3): (c, P, Q), coefficients in powers of y rounded
# to float32, from `spaces.minimax.rational_fit(log1p_ratio, 1, 2, 3, odd=False)` (max
# error 1.6e-8). softplus(a) = max(a, 0) + y P(y)/Q(y), y = exp(-|a|): no log, no
# overflow, relatively accurate where softplus is tiny (a << 0); exactly a for a > 17.
_LOG1P_RATIO_RATIONAL = (1.0, (1.0, 0.8692220449447632, 0.12455064058303833),
                         (1.0, 1.3692203760147095, 0.4758569598197937, 0.031328726559877396))


_SOFTPLUS_SOURCE = f"""

def _softplus(a):
    \"\"\"log(1 + exp(a)) in float32: max(a, 0) + y P(y)/Q(y), y = exp(-|a|); NaN stays NaN.\"\"\"
    y = _exp_nonpositive(-torch.abs(a))
    return torch.where(a > 0.0, a, 0.0) + y * {_horner_source(_LOG1P_RATIO_RATIONAL[1], "y")} / {_horner_source(_LOG1P_RATIO_RATIONAL[2], "y")}
"""


# The float32 exp of fused CPU kernels, for a <= 0: a = n*ln2 + r with |r| <= ln2/2
# (Cody-Waite: ln2 in two parts, so n*ln2 is exact), exp(r) = 1 + r + r**2 P(r) with
# P of degree 4 (`spaces.minimax.exp_remainder_fit`: 3e-9 off; Cephes' expf has one
# degree more, which float32 rounding hides), 2**n written straight into the float's
# exponent bits: the integer (n + 127) * 2**23, computed exactly in float32 as one
# multiply-add. Relative error below 1e-7 (tested). a < -88 gives n = -127, exponent
# bits 0: exactly 0.0, where float32's exp underflows anyway. NaN stays NaN.
# (ln2 high part, ln2 low part, P's coefficients from r^0 up): shared with the C form
# of the same exp (spaces.native)
EXP_LN2_HI, EXP_LN2_LO = 0.693359375, -2.12194440e-4
EXP_REMAINDER = (4.999999403953552e-1, 1.666652113199234e-1, 4.1668377816677094e-2,
                 8.36868304759264e-3, 1.3815137790516019e-3)
EXP_NONPOSITIVE_SOURCE = f"""\
def _exp_nonpositive(a):
    \"\"\"exp(a) for a <= 0 in float32, in multiply-adds a fused CPU kernel inlines.\"\"\"
    a = torch.where(a < -88.0, -88.0, a)  # a select: NaN stays NaN (a clamp costs one op more)
    n = torch.floor(a * 1.4426950408889634 + 0.5)
    r = a - n * {EXP_LN2_HI!r} - n * {EXP_LN2_LO!r}
    p = {_horner_source(EXP_REMAINDER, "r")} * (r * r) + r + 1.0
    return p * (n * 8388608.0 + 1065353216.0).to(torch.int32).view(torch.float32)


def _with_sign_of(y, x):
    \"\"\"y (>= 0) with the sign of x, in float32: sign(x) * y as a compare and a blend.\"\"\"
    return torch.where(x < 0.0, -y, y)
""" + _SOFTPLUS_SOURCE


# tanh on [0, c], degrees (5, 3): (c, P, Q), coefficients in powers of s = u**2 rounded
# to float32, from `spaces.minimax.odd_rational_fit(np.tanh, 9, 5, 3)` (max error 5.3e-8;
# `python -m spaces.minimax` prints it again, a test re-runs it). Beyond c, tanh is 1 to
# within 3e-8, below float32's half ulp: the form gives exactly 1 there.
# The forward clamps u to +-9.5, where the rational is 1 + 1.3e-6 (22 ulps over 1).
_TANH_CLAMP = 9.5
_TANH_RATIONAL = (9.0,
                  (0.9999997615814209, 0.1291065812110901, 0.0029119683895260096, 9.194866834150162e-06,
                   -1.2590678721835502e-08, 1.783723342640986e-11),
                  (1.0, 0.4624389111995697, 0.02372605912387371, 0.00022693752544000745))

# erf on [0, c], degrees (6, 4): (c, P, Q) as for tanh, from
# `spaces.minimax.odd_rational_fit(spaces.minimax.erf, 4, 6, 4)` (max error 5.4e-8).
# Beyond c, erf is 1 to within 1.6e-8, below float32's half ulp. The form clamps u to
# +-4.2, where the rational is 1 + 2.4e-6 (40 ulps over 1): exactly 1 after the clamp.
_ERF_CLAMP = 4.2
_ERF_RATIONAL = (4.0,
                 (1.1283786296844482, 0.2139449417591095, 0.052433501929044724, 0.004293064586818218,
                  0.00015553721459582448, -1.990324790313025e-06, 1.9217230473600466e-08),
                 (1.0, 0.5229314565658569, 0.1207997277379036, 0.015551112592220306, 0.0010980413062497973))

# 1 - tanh(a) on [0, c], a >= 0, degrees (5, 7): (c, P, Q), coefficients in powers of a
# rounded to float32, from `spaces.minimax.rational_fit(tanh_complement, 9, 5, 7,
# odd=False)` (max error 2.3e-8); 1 - tanh(9) = 3e-8, so the form is 0 beyond c.
_TANH_COMPLEMENT_RATIONAL = (9.0,
                             (1.0, -0.5898440480232239, 0.14313693344593048, -0.017802836373448372,
                              0.001130669959820807, -2.9221660952316597e-05),
                             (1.0, 0.4101581275463104, 0.5532601475715637, 0.20233531296253204,
                              0.06610940396785736, 0.01606503129005432, 0.002281732624396682,
                              0.0005384827964007854))


def _horner(coefs, v: sp.Expr) -> sp.Expr:
    out = sp.Float(coefs[-1])
    for c in reversed(coefs[:-1]):
        out = sp.Float(c) + v * out
    return out


_AS_P = 0.3275911
_AS_COEFFS = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf_float32(u: sp.Expr) -> sp.Expr:
    t = 1 / (1 + sp.Float(_AS_P) * sp.Abs(u))
    poly = sp.Float(0)
    for c in reversed(_AS_COEFFS):  # Horner: t*(a1 + t*(a2 + ...))
        poly = t * (sp.Float(c) + poly)
    return with_sign_of(1 - poly * sp.exp(-u**2), u)


def _odd_rational_float32(u: sp.Expr, fit, clamp_at: float) -> sp.Expr:
    # sign(u) a P(a**2)/Q(a**2) for a = |u| clamped to clamp_at, the rational clamped to
    # 1: where the rational at clamp_at is over 1 by many ulps (tested), the form is
    # exactly 1 in size from there on (so gelu_tanh(-1e30) is -0, not -1e30 times a
    # rounding error), and also wherever rounding would pass 1. The sign of u is put
    # back with a select (odd). NaN stays NaN (the clamps keep it).
    _, p, q = fit
    a = sp.Abs(u)
    # min(k*|x|, c) as k*min(|x|, c/k) for a constant k > 0 (erf(x/sqrt(2))): k then
    # joins the coefficients (not in the outer clamp: that must give exactly 1)
    k, rest = a.as_independent(*a.free_symbols, as_Add=False) if a.is_Mul else (sp.Integer(1), a)
    v = k * at_most(rest, sp.Float(float(clamp_at / k))) if k.is_positive else at_most(a, clamp_at)
    return with_sign_of(at_most(v * _horner(p, v**2) / _horner(q, v**2), 1), u)


def _tanh_float32(u: sp.Expr) -> sp.Expr:
    return _odd_rational_float32(u, _TANH_RATIONAL, _TANH_CLAMP)


def _erf_rational_float32(u: sp.Expr) -> sp.Expr:
    return _odd_rational_float32(u, _ERF_RATIONAL, _ERF_CLAMP)


def _tanh_complement_float32(u: sp.Expr) -> sp.Expr:
    """1 - tanh(|u|) = P(a)/Q(a), a = |u| <= c; 0 beyond c."""
    c, p, q = _TANH_COMPLEMENT_RATIONAL
    a = sp.Abs(u)
    return where_positive(a - c, 0, _horner(p, a) / _horner(q, a))


def _tanh_exp_float32(u: sp.Expr) -> sp.Expr:
    e = sp.exp(-2 * sp.Abs(u))
    return with_sign_of((1 - e) / (1 + e), u)


def _tanh_squared_float32(u: sp.Expr) -> sp.Expr:
    # tanh' = 1 - tanh**2 becomes 4e/(1 + e)**2: no cancellation where tanh is near 1,
    # so tanh' keeps its relative accuracy in the tails ((x tanh x)' multiplies it by x)
    e = sp.exp(-2 * sp.Abs(u))
    return 1 - 4 * e / (1 + e)**2


def _tanh_softplus_float32(u: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """(tanh(softplus(u)), 1 - tanh(softplus(u))) from one e = exp(-|u|), for mish:
    with w = e**u, tanh(log(1 + w)) = (w**2 + 2w)/(w**2 + 2w + 2); divided through by
    w**2 where u > 0, so nothing overflows, and 1 - tanh is 2e**2/D or 2/D exactly
    (no cancellation where tanh is near 1, which mish'(x) multiplies by x)."""
    e = exp_nonpositive(-sp.Abs(u))  # not sp.exp: sympy would make e**2 a second exp
    denominator = where_positive(u, 1 + 2 * e + 2 * e**2, e**2 + 2 * e + 2)
    tanh = where_positive(u, 1 + 2 * e, e**2 + 2 * e) / denominator
    complement = where_positive(u, 2 * e**2, 2) / denominator
    return tanh, complement


class where_positive(sp.Function):  # noqa: N801
    """`pos` where a > 0, else `other` (also for a NaN): printed as torch.where, a
    blend in a fused kernel. (A Piecewise whose condition holds another Piecewise
    turns into sympy's ITE; `(a > 0).to(dtype)` times a difference costs fused kernels
    ~20% more.)"""

    nargs = 3

    def _eval_is_extended_real(self):
        return True  # its branches are; else sign() of it prints conjugate()

    @classmethod
    def eval(cls, a, pos, other):
        return (pos if a > 0 else other) if a.is_Number else None


def _sigmoid_float32(a: sp.Expr) -> sp.Expr:
    # 1/(1 + e) for a > 0, e/(1 + e) below (no cancellation); at a = 0, e = 1: both agree.
    e = sp.exp(-sp.Abs(a))
    return where_positive(a, 1, e) / (1 + e)


def _step_float32(a: sp.Expr) -> sp.Expr:
    return where_positive(a, 1, 0)


_FLOAT32_FORMS = {sp.tanh: _tanh_float32, fn.sigmoid: _sigmoid_float32,
                  fn.step: _step_float32, fn.softplus: softplus_float32}


def _tanh_sensitivity_free_of_x(exprs: list[sp.Expr], u: sp.Expr) -> bool:
    """Whether d(expr)/d(tanh(u)) is free of x for every expression: then an absolute
    error in tanh(u) stays a bounded absolute error in the kernel's outputs."""
    tau = sp.Dummy("tau", real=True)
    return all(X not in sp.diff(e.subs(sp.tanh(u), tau), tau).free_symbols for e in exprs)


def _float32_forms(exprs: list[sp.Expr]) -> list[sp.Expr]:
    """The float32 forms of the expressions one fused kernel computes."""
    exprs = [_shared_form(e) for e in exprs]
    # tanh(u) in a kernel that also needs tanh(u)**2 (a backward): tanh' = 1 - tanh**2
    # must not be 1 - (rational)**2, which cancels where tanh is near 1 (7e-7 off).
    # - Where the outputs' sensitivity to tanh(u) is free of x (beta*gelu + (1-beta)*tanh,
    #   tanh itself), absolute accuracy is what counts: T = 1 - tanh(|u|) as a rational,
    #   tanh' = T (2 - T), tanh = sign(u)(1 - T); no exp.
    # - Else ((x tanh x)' multiplies tanh' by x, so it needs relative accuracy in the
    #   tails): one e = exp(-2|u|), tanh' = 4e/(1 + e)**2, tanh = sign(u)(1-e)/(1+e).
    # mish's tanh(softplus(u)) has closed forms of its own (`_tanh_softplus_float32`).
    # A forward's tanh alone is the odd rational (`_tanh_float32`).
    squared = {n.base.args[0] for e in exprs for n in e.atoms(sp.Pow)
               if n.exp == 2 and isinstance(n.base, sp.tanh)}
    bounded = {u for u in squared if _tanh_sensitivity_free_of_x(exprs, u)}

    def squared_form(u):
        if u in bounded:
            t = _tanh_complement_float32(u)
            return 1 - t * (2 - t)
        return _tanh_squared_float32(u)

    def tanh_form(u):
        if u in bounded:
            return with_sign_of(1 - _tanh_complement_float32(u), u)
        return _tanh_exp_float32(u)

    # erf(u) shares its exp with a Gaussian exp(-u**2) the kernel computes anyway (A&S),
    # else it is a rational with no exp
    gaussians = {sp.expand(n.args[0]) for e in exprs for n in e.atoms(sp.exp)}

    def erf_form(u):
        return _erf_float32(u) if sp.expand(-u**2) in gaussians else _erf_rational_float32(u)

    def is_tanh_softplus(n):
        return isinstance(n, sp.tanh) and isinstance(n.args[0], fn.softplus)

    def form(e):
        # mish's tanh(softplus(u)): closed forms in exp(-|u|), one exp for the kernel
        e = e.replace(lambda n: n.is_Pow and n.exp == 2 and is_tanh_softplus(n.base),
                      lambda n: 1 - (lambda c: c * (2 - c))(_tanh_softplus_float32(n.base.args[0].args[0])[1]))
        e = e.replace(is_tanh_softplus, lambda n: _tanh_softplus_float32(n.args[0].args[0])[0])
        e = e.replace(lambda n: n.is_Pow and n.exp == 2 and isinstance(n.base, sp.tanh),
                      lambda n: squared_form(n.base.args[0]))
        e = e.replace(lambda n: isinstance(n, sp.tanh) and n.args[0] in squared,
                      lambda n: tanh_form(n.args[0]))
        e = e.replace(lambda n: isinstance(n, sp.erf), lambda n: erf_form(n.args[0]))
        e = e.replace(lambda n: type(n) in _FLOAT32_FORMS,
                      lambda n: _FLOAT32_FORMS[type(n)](n.args[0]))
        return e.replace(lambda n: isinstance(n, sp.exp) and bool(n.args[0].is_nonpositive),
                         lambda n: exp_nonpositive(n.args[0]))

    return [form(e) for e in exprs]


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
    CPU float32 kernels use (the same functions, written for fusion: see `_erf_float32`).

    `expr` may contain only x and the symbols named in `learnable` (fixed
    coefficients must already be substituted).
    """
    return _sources(expr, learnable, prefix)[0]


def _sources(expr: sp.Expr, learnable: list[str], prefix: str) -> tuple[str, str | None]:
    """(function_sources, the C source of the float32 forms or None: spaces.native)."""
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
    derivs = [_shared_form(sp.diff(expr, s)) for s in syms]  # x first, then coefficients
    exact = _kernel_pair(prefix, learnable, syms, expr, derivs)
    eager = _kernel_pair(f"{prefix}_eager", learnable, syms, expr, derivs, inplace=True)
    (f32_expr,), f32_derivs = _float32_forms([expr]), _float32_forms(derivs)
    if f32_expr != expr or f32_derivs != derivs:
        fused = _kernel_pair(f"{prefix}_f32", learnable, syms, f32_expr, f32_derivs)
    else:  # nothing to rewrite: the float32 kernels are the exact ones
        fused = [f"{prefix}_f32_fwd, {prefix}_f32_bwd = {prefix}_fwd, {prefix}_bwd"]
    c_source = native.kernel_source(f32_expr, f32_derivs, list(syms)[1:])
    return "\n".join([*exact, "", "", *eager, "", "", *fused]) + "\n", c_source


MODULE_TEMPLATE = '''\
{docstring}
import math

import torch
import torch.nn.functional as F

__all__ = [{all_names}]

FORMULA = {formula_literal}
COEFFICIENTS = {coefficients_literal}  # name -> initial value (learnable ones)


{exp_helper}

{functions}

# Kernels the autograd.Function calls. Float32 on the CPU: the *_f32 forms (polynomial
# exp, erf, tanh and sigmoid in multiply-adds; erf shares its exp with the Gaussian
# terms where there are some) as our own C (`_NATIVE_SOURCE`, built by the system's C
# compiler on first use), eager or not, one fused kernel each way. Elsewhere (or where a
# form has no C counterpart, no compiler works, or use_native_kernels(False)), eager
# runs the *_eager forms (in-place ops: one buffer reused along each expression), and
# `use_compiled_kernels()` swaps in torch.compile'd versions at a one-off compile cost
# (the *_f32 forms on the CPU in float32; the plain forms elsewhere: C++ on CPU,
# Triton on CUDA). Under torch.compile of a model, the plain forms are traced into its
# graph, except float32 on the CPU, whose kernels run as two opaque ops (`_f32_fwd_op`,
# below). One op at a time, the exact forms are cheaper.
_PLAIN = {{"fwd": {prefix}_fwd, "bwd": {prefix}_bwd, "f32_fwd": {prefix}_f32_fwd, "f32_bwd": {prefix}_f32_bwd}}
_EAGER = {{"fwd": {prefix}_eager_fwd, "bwd": {prefix}_eager_bwd}}
_KERNELS = dict(_PLAIN, compiled=False)


def _cpu_kernel_options():
    # - multiply-adds contracted to FMAs (inductor's default keeps them apart to match
    #   eager bit for bit): ~25% faster for these polynomial kernels;
    # - 256-bit vectors where inductor would pick 512-bit ones. On a 2-vCPU Xeon with
    #   AVX-512 (one 512-bit FMA unit: 2.6 zmm FMAs/ns against 6.0 ymm), CRReLU's kernels
    #   took 1.9x nn.GELU's with zmm and 1.2x with ymm. Also, in AVX-512 code inductor
    #   writes each select as four instructions (mask, vector, mask, blend), and GCC
    #   stores exp's 2**n in two halves that one 512-bit load reads back (a failed store
    #   forward each element); with ymm a select is two and the 2**n stays in a register.
    options = {{"cpp.enable_floating_point_contract_flag": "fast"}}
    try:
        from torch._inductor import cpu_vec_isa
        widths = {{isa.bit_width() for isa in cpu_vec_isa.valid_vec_isa_list()}}
        if cpu_vec_isa.pick_vec_isa().bit_width() == 512 and 256 in widths:
            options["cpp.simdlen"] = 256
    except Exception:  # noqa: BLE001 - another torch's inductor: its own defaults
        pass
    return options


def _compiled(f):
    try:
        return torch.compile(f, fullgraph=True, options=_cpu_kernel_options())
    except RuntimeError:  # a torch whose inductor lacks one of the options
        return torch.compile(f, fullgraph=True)


def use_compiled_kernels(enabled=True):
    """Fuse forward and backward into one kernel each with torch.compile (the first call
    compiles, other shapes may take more), where our C kernels do not already: float32 on
    the CPU runs those whenever they build, with or without this switch."""
    if enabled:
        _KERNELS.update(fwd=_compiled(_PLAIN["fwd"]), bwd=_compiled(_PLAIN["bwd"]), **_F32_FUSED)
    else:
        _KERNELS.update(_PLAIN)
    _KERNELS["compiled"] = enabled


# Under torch.compile of a model, float32 CPU kernels are two custom ops, opaque to
# the model's graph, that run our own compiled kernels: inductor compiles a model's
# graph with multiply-adds kept apart (to match eager bit for bit), which costs these
# polynomial kernels ~25%. The cost: inductor cannot fuse the activation with its
# neighbours. In a transformer MLP (Linear, act, Linear) it does not on the CPU anyway;
# a gated unit (x * act(gate)) loses one fused multiply.


def _free_op_name(base):
    # one name per loaded module: the same class may be loaded more than once
    n = 0
    while hasattr(torch.ops.eafo, f"{{base}}_{{n}}_fwd"):
        n += 1
    return f"eafo::{{base}}_{{n}}"


_OP_NAME = _free_op_name("{op_prefix}")


# The fused float32 CPU kernels run over x viewed as rows of its trailing dimensions
# (16x197x768: 3152 rows of 768), with a zero per row subtracted from x (exact for every
# x, -0.0 included). Why: over a flat tensor, inductor writes one OpenMP loop whose body
# checks its index against the bound, and GCC cannot drop that check when OpenMP picks
# the range: the tanh mix's forward took 3.47 ms on one thread against 2.95 ms for the
# same loop without OpenMP. A row-indexed input makes inductor parallelise the rows, and
# the inner loop, of a fixed length, loses the check. Rows of the trailing dimensions keep
# that length when the batch size changes (only the row count becomes dynamic).
def _f32_rows_fwd(x, zero, *coefficients):
    return {prefix}_f32_fwd(x - zero, *coefficients)


def _f32_rows_bwd(x, zero, *coefficients_and_g):
    return {prefix}_f32_bwd(x - zero, *coefficients_and_g)


def _own_copy(f, name):
    # torch.compile keeps its compiled variants, and its limit of 8 of them, per code
    # object; the custom ops' tensors carry other dispatch keys than eager ones, which
    # would take variants from the eager kernels: the ops get their own code objects
    return type(f)(f.__code__.replace(co_name=name), f.__globals__, name)


_F32_ROWS = {{"fwd": _f32_rows_fwd, "bwd": _f32_rows_bwd,
             "op_fwd": _own_copy(_f32_rows_fwd, "_op_rows_fwd"),
             "op_bwd": _own_copy(_f32_rows_bwd, "_op_rows_bwd")}}
_FUSED_F32 = {{}}
_ZERO_ROWS = {{}}


def _fused_f32(name):
    if name not in _FUSED_F32:
        _FUSED_F32[name] = _compiled(_F32_ROWS[name])
    return _FUSED_F32[name]


def _row_length(shape):
    """Elements per row: the trailing dimensions' product once it reaches 512, if that is
    a whole number of 16-float vectors and leaves at least 2 rows; else the whole tensor."""
    numel, n = math.prod(shape), 1
    for d in reversed(shape):
        n *= d
        if n >= 512:
            break
    return n if n % 16 == 0 and 2 * n <= numel else numel


def _zero_rows(rows):
    if rows not in _ZERO_ROWS:
        _ZERO_ROWS[rows] = torch.zeros((rows, 1), dtype=torch.float32)
    return _ZERO_ROWS[rows]


def _run_f32(name, x, *args):
    """The fused float32 CPU kernel `name` ("fwd", "bwd", "op_fwd" or "op_bwd") on x;
    args: the coefficients, then g for a backward.

    Our C kernels where there are some (`_native_kernels`) and no graph is being recorded
    (a backward with create_graph=True: the compiled kernels are differentiable).
    Else the compiled kernel, which sees few kinds of input, so that it is compiled few
    times: 2-d contiguous tensors (a copy where x or g is not contiguous), which do not
    require grad unless a graph is being recorded."""
    recording = torch.is_grad_enabled()
    native = _native_kernels()
    if native is not None and not (recording and any(t.requires_grad for t in (x, *args))):
        return _run_native(native, name, x, *args)
    kernel = _fused_f32(name)
    n = _row_length(x.shape)
    rows = (x.numel() // n, n) if n else (1, 0)
    xr = (x if recording else x.detach()).contiguous().view(rows)
    if name.endswith("fwd"):
        return kernel(xr, _zero_rows(rows[0]), *args).view(x.shape)
    *coefficients, g = args
    gr = (g if recording else g.detach()).contiguous().view(rows)
    dx, *dc = kernel(xr, _zero_rows(rows[0]), *coefficients, gr)
    return (g if dx is gr and g.is_contiguous() else dx.view(x.shape), *dc)


# C source of the same kernels (spaces.native), printed from the float32 forms: only
# float literals and fixed names. None where a form has no C counterpart.
_NATIVE_SOURCE = {native_source}
{native_loader}

_F32_FUSED = {{"f32_fwd": lambda x, *args: _run_f32("fwd", x, *args),
              "f32_bwd": lambda x, *args: _run_f32("bwd", x, *args)}}


def _laid_out_like(x, t, g=None):
    # what the ops' fake kernels promise: a new tensor laid out as empty_like(x) (never g,
    # the op's own input, which x's gradient is where f' = 1)
    return torch.empty_like(x).copy_(t) if t is g or t.stride() != x.stride() else t


@torch.library.custom_op(_OP_NAME + "_fwd", mutates_args=())
def _f32_fwd_op(x: torch.Tensor{op_args}) -> torch.Tensor:
    return _laid_out_like(x, _run_f32("op_fwd", x{op_call}))


@_f32_fwd_op.register_fake
def _(x{op_call}):
    return torch.empty_like(x)


@torch.library.custom_op(_OP_NAME + "_bwd", mutates_args=())
def _f32_bwd_op(x: torch.Tensor{op_args}, g: torch.Tensor) -> list[torch.Tensor]:
    dx, *dc = _run_f32("op_bwd", x{op_call}, g)
    return [_laid_out_like(x, dx, g), *dc]


@_f32_bwd_op.register_fake
def _(x{op_call}, g):
    return [torch.empty_like(x){op_fake_grads}]


def _kernel(name, x):
    """The forward or backward kernel for x: eager, compiled, or traced by torch.compile.
    Float32 on the CPU runs our C kernels wherever they build, with or without
    use_compiled_kernels() (they need no compile step worth a switch: ~0.2 s once, cached
    on disk), except where autograd records the kernel (a backward with
    create_graph=True); else the in-place ops, or the compiled kernels once switched on."""
    compiling = torch.compiler.is_compiling()
    if compiling:
        if x.dtype == torch.float32 and x.is_cpu:
            return _f32_fwd_op if name == "fwd" else _f32_bwd_op
        return _KERNELS[name]
    recording = torch.is_grad_enabled()
    # (x.is_cpu, not x.device.type: a device object per call costs ~15 us cold)
    if not recording and x.dtype == torch.float32 and x.is_cpu and _native_kernels() is not None:
        return _NATIVE_CALLS[name]
    if not _KERNELS["compiled"]:
        return _PLAIN[name] if recording else _EAGER[name]  # in place only where nothing records
    return _KERNELS["f32_" + name] if x.dtype == torch.float32 and x.is_cpu else _KERNELS[name]


def {func_name}(x, {coef_kwargs}inplace=False):
    """Plain function: the formula composed from torch ops (autograd differentiates it)."""
    return {prefix}_fwd(x{coef_tensors})


class {class_name}Function(torch.autograd.Function):
    """Memory-efficient form: saves only the input and the scalar coefficients."""

    # forward(ctx, ...) rather than forward + setup_context: on 2 CPU cores the latter
    # cost ~50 us more per call, 0.2-0.35 ms per forward+backward of a 16x197x768 tensor
    # (no .to() where the dtype is already x's: each step between two kernels that
    # stream the tensor runs on cold caches, ~45 us for a no-op .to() at 16x197x768)
    @staticmethod
    def forward(ctx, x{coef_args}):
        ctx.save_for_backward(x{coef_args})
        xc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        _y = _kernel("fwd", xc)(xc{coef_args})
        return _y if _y.dtype == x.dtype else _y.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, *coefficients = ctx.saved_tensors
        low = x.dtype in (torch.float16, torch.bfloat16)
        xc = x.float() if low else x
        gc = g.float() if low else g
        _dx, *_dc = _kernel("bwd", xc)(xc, *coefficients, gc)
        return (_dx if _dx.dtype == x.dtype else _dx.to(x.dtype), *_dc)


class {class_name}(torch.nn.Module):
    """{class_name} activation: ``{formula_doc}``.

    Zero-argument constructible, so it works as timm's ``act_layer``; ``inplace``
    is accepted for compatibility and ignored (the output is a new tensor).
    Each learnable coefficient is one scalar ``nn.Parameter`` per instance.
    """

    function = {class_name}Function  # the autograd.Function forward applies

    def __init__(self, inplace=False{init_kwargs}):
        super().__init__()
{param_lines}
    def forward(self, x):
        return {class_name}Function.apply(x{self_args})

    def extra_repr(self):
        return "formula=" + FORMULA
'''


def module_source(expr: sp.Expr, learnable: dict[str, float], *, class_name: str,
                  func_name: str, formula: str, docstring: str) -> str:
    """The full source of a standalone module implementing `expr`.

    learnable: coefficient name -> initial value, in argument order.
    formula: the canonical formula (sympy's printing of the parsed tree) for display.
    """
    names = list(learnable)
    check_generated_names(func_name, class_name, names)
    prefix = f"_{func_name}"
    inits = {n: float(v) for n, v in learnable.items()}
    for n, v in inits.items():
        if not math.isfinite(v):
            raise ValueError(f"initial value of {n} is not finite: {v}")
    coef_args = "".join(f", {n}" for n in names)
    functions, c_source = _sources(expr, names, prefix)
    params = "".join(
        f"        self.{n} = torch.nn.Parameter(torch.tensor(float({n})))\n" for n in names)
    return MODULE_TEMPLATE.format(
        docstring=_docstring_literal(docstring),
        all_names=", ".join(repr(s) for s in (func_name, class_name, f"{class_name}Function",
                                               "use_compiled_kernels", "use_native_kernels")),
        formula_literal=repr(formula),
        coefficients_literal=repr(inits),
        exp_helper=EXP_NONPOSITIVE_SOURCE,
        functions=functions,
        native_source=native.source_literal(c_source),
        native_loader=native.NATIVE_LOADER_SOURCE,
        func_name=func_name,
        coef_kwargs="".join(f"{n}={inits[n]!r}, " for n in names),
        prefix=prefix,
        coef_tensors="".join(f", torch.as_tensor({n}, dtype=x.dtype, device=x.device)" for n in names),
        class_name=class_name,
        coef_args=coef_args,
        formula_doc=_doc_safe(formula),
        init_kwargs="".join(f", {n}={inits[n]!r}" for n in names),
        param_lines=params or "        pass\n",
        self_args="".join(f", self.{n}" for n in names),
        op_prefix=class_name.lower(),
        op_args="".join(f", c{i}: torch.Tensor" for i in range(len(names))),
        op_call="".join(f", c{i}" for i in range(len(names))),
        op_fake_grads="".join(f", torch.empty_like(c{i})" for i in range(len(names))),
    )


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
    """Execute generated source (never user text) in a fresh namespace."""
    import types

    module = types.ModuleType(module_name)
    code = compile(source, f"<eafo-generated {module_name}>", "exec")
    exec(code, module.__dict__)  # noqa: S102 - source printed from a sympy tree
    return module


__all__ = ["TorchPrinter", "check_generated_names", "function_sources", "module_source",
           "load_module_source"]
