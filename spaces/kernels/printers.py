"""Kernel expressions -> torch and C source: three printers that share one tree walk.

`TorchPrinter` (torch expressions), `InplacePrinter` (the same, reusing the buffers an
expression allocates) and `CPrinter` (the float32 C of the fused CPU kernels) are
sympy's own code printers (`sympy.printing.pytorch.TorchPrinter`,
`sympy.printing.c.C99CodePrinter`) with `_KernelWalk` in front: the nodes both print
alike (sums, products with their numeric factors folded into one literal, comparisons,
piecewise selects, max/min that keep NaN, the float32 forms' own functions) are walked
once, here, and each printer supplies only its spelling (a literal, a select, a product).
sympy's dispatch (`_print_<class name>`), its torch function table and C99's float32
math functions (`fabsf`) do the rest.

Only names given in `names` (x, g, temporaries, checked coefficient names), fixed
function names and float literals are ever printed: no text of a user's formula.
"""
from __future__ import annotations

import math

import sympy as sp
from sympy.codegen.ast import float32, real
from sympy.printing.c import C99CodePrinter
from sympy.printing.pytorch import TorchPrinter as _SympyTorchPrinter

from spaces import functions as fn
from spaces.kernels.forms import at_most, exp_nonpositive, softplus_float32, where_positive, with_sign_of

_RELATIONS = {sp.StrictGreaterThan: ">", sp.GreaterThan: ">=", sp.StrictLessThan: "<", sp.LessThan: "<="}


class Unsupported(ValueError):
    """A node a printer cannot print (the C printer: anything but the float32 forms' nodes)."""


def float_literal(value) -> str:
    """repr of a finite float: the shortest text that reads back as the same double."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"constant {value} is not finite")
    return repr(v)


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


def mul_parts(e: sp.Mul):
    """(numeric coefficient, factors) of a product. Symbol-free factors (1/sqrt(2*pi),
    ...) join the coefficient, so they are one float literal, not an op per call."""
    coeff, factors = e.as_coeff_mul()
    coeff = coeff * sp.Mul(*[f for f in factors if not f.free_symbols])
    return coeff, [f for f in factors if f.free_symbols]


def is_denominator(f) -> bool:
    """Whether a factor is base**-k for a number k > 0: printed as a division by base**k."""
    return isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0


class _KernelWalk:
    """The walk both printers share; each printer spells `_number` (a float),
    `_literal` (a folded subexpression), `_boolean`, `_select`, `_sum`, `_product`,
    `_power` and `_bounded` (a max/min step)."""

    def __init__(self, names: dict[sp.Symbol, str], settings=None):
        super().__init__(settings)
        self.names = names  # every symbol the expression may contain -> its name

    def doprint(self, expr) -> str:
        # (not CodePrinter.doprint: no assignment, no comment lines for unsupported nodes)
        return self._print(expr)

    def _print(self, expr, **kwargs) -> str:
        if isinstance(expr, (bool, sp.logic.boolalg.BooleanAtom)):
            return self._boolean(bool(expr))
        if isinstance(expr, sp.Basic) and not expr.free_symbols:
            return self._literal(expr)  # pi, exp(-1/2), Rational: folded to one float
        return super()._print(expr, **kwargs)

    def _print_Symbol(self, e) -> str:
        try:
            return self.names[e]
        except KeyError:
            raise Unsupported(f"unbound symbol {e} in expression") from None

    def _print_Add(self, e) -> str:
        return self._sum([self._print(a) for a in e.args])

    def _print_Mul(self, e) -> str:
        coeff, factors = mul_parts(e)
        return self._product(coeff, [self._print(f) for f in factors if not is_denominator(f)],
                             [self._power(f.base, -f.exp) for f in factors if is_denominator(f)])

    def _print_Pow(self, e) -> str:
        return self._power(e.base, e.exp)

    def _print_Relational(self, e) -> str:
        op = _RELATIONS.get(type(e))
        if op is None:
            raise Unsupported(f"relation {type(e).__name__} is not supported")
        return f"({self._print(e.lhs)} {op} {self._print(e.rhs)})"

    def _print_And(self, e) -> str:  # & and | on 0/1 (C) or bool tensors: no branch
        return "(" + " & ".join(self._print(a) for a in e.args) + ")"

    def _print_Or(self, e) -> str:
        return "(" + " | ".join(self._print(a) for a in e.args) + ")"

    def _print_Piecewise(self, e) -> str:
        if e.args[-1].cond is not sp.true:
            raise Unsupported("Piecewise without a default branch cannot be generated")
        out = self._branch(e.args[-1].expr)
        for expr, cond in reversed(e.args[:-1]):
            out = self._select(self._print(cond), self._branch(expr), out)
        return out

    def _print_where_positive(self, e) -> str:
        a, pos, other = e.args
        shift, rest = a.as_independent(*a.free_symbols, as_Add=True)
        # r + k > 0 printed as r > -k: the same for floats (a sum of two distinct
        # floats never rounds to 0), one addition less
        return self._select(f"{self._print(rest)} > {self._number(-shift)}", self._branch(pos),
                            self._branch(other))

    def _print_Max(self, e) -> str:
        return self._max_min(e, "max")

    def _print_Min(self, e) -> str:
        return self._max_min(e, "min")

    def _max_min(self, e, kind: str) -> str:
        # x-dependent arguments first: a NaN in them is what must come through
        args = sorted(e.args, key=lambda v: not v.free_symbols)
        out = self._print(args[0])
        for a in args[1:]:
            out = self._bounded(kind, out, a)
        return out

    def _print_DiracDelta(self, e) -> str:
        return self._number(0)  # the derivative of a step: zero almost everywhere

    def _print_not_supported(self, expr) -> str:
        raise Unsupported(f"cannot print {type(expr).__name__}")

    def _branch(self, e) -> str:
        return self._print(e)


class TorchPrinter(_KernelWalk, _SympyTorchPrinter):
    """Prints a kernel expression as one torch expression."""

    mapping = {
        **_SympyTorchPrinter.mapping,
        fn.relu: "torch.relu", fn.sigmoid: "torch.sigmoid", fn.softplus: "F.softplus", fn.silu: "F.silu",
        fn.mish: "F.mish", fn.gelu: "F.gelu", fn.elu: "F.elu", fn.celu: "F.celu", fn.selu: "torch.selu",
        fn.hardswish: "F.hardswish", exp_nonpositive: "_exp_nonpositive", softplus_float32: "_softplus",
    }

    def __init__(self, names: dict[sp.Symbol, str]):
        super().__init__(names, {"fully_qualified_modules": True})

    @staticmethod
    def _tensorish(e) -> bool:
        # x, coefficients (0-dim tensors) and temporaries are all tensors;
        # symbol-free subexpressions are folded to Python floats.
        return bool(e.free_symbols)

    def _as_tensor(self, e) -> str:
        s = self._print(e)
        return s if self._tensorish(e) else f"torch.as_tensor({s})"

    def _number(self, value) -> str:
        return float_literal(value)

    _literal = _number

    def _boolean(self, b: bool) -> str:
        return "True" if b else "False"

    def _select(self, cond: str, a: str, b: str) -> str:
        return f"torch.where({cond}, {a}, {b})"

    def _branch(self, e) -> str:
        # torch.where with two Python scalars would compute in float32; pin x's dtype.
        return self._print(e) if self._tensorish(e) else f"x.new_full((), {self._print(e)})"

    def _sum(self, terms: list[str]) -> str:
        out = terms[0]
        for t in terms[1:]:
            out = f"{out} - {t[1:]}" if t.startswith("-") else f"{out} + {t}"
        return f"({out})"

    def _product(self, coeff, num: list[str], den: list[str]) -> str:
        sign = ""
        if coeff == -1:
            sign = "-"
        elif coeff != 1:
            num.insert(0, float_literal(coeff))
        top = " * ".join(num) if num else "1.0"
        body = top if not den else f"{top} / {den[0]}" if len(den) == 1 else f"{top} / ({' * '.join(den)})"
        return f"{sign}({body})"

    def _power(self, base, exp) -> str:
        b = self._print(base)
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
            return f"torch.pow({float_literal(base)}, {self._as_tensor(exp)})"
        return f"torch.pow({self._as_tensor(base)}, {self._print(exp)})"

    def _bounded(self, kind: str, out: str, arg) -> str:
        if self._tensorish(arg):
            return f"torch.{'maximum' if kind == 'max' else 'minimum'}({out}, {self._print(arg)})"
        # clamp(min=) for Max, clamp(max=) for Min; works for floats and 0-dim tensors
        return f"torch.clamp({out}, {'min' if kind == 'max' else 'max'}={self._print(arg)})"

    def _print_Function(self, e) -> str:
        if type(e) not in self.mapping:
            raise ValueError(f"cannot generate torch code for {type(e).__name__}")
        return f"{self.mapping[type(e)]}({self._as_tensor(e.args[0])})"

    def _print_gelu_tanh(self, e) -> str:
        return f"F.gelu({self._as_tensor(e.args[0])}, approximate='tanh')"

    def _print_leaky_relu(self, e) -> str:
        return f"F.leaky_relu({self._as_tensor(e.args[0])}, {float_literal(fn.LEAKY_SLOPE)})"

    def _print_step(self, e) -> str:
        return f"({self._as_tensor(e.args[0])} > 0).to(x.dtype)"

    def _print_Heaviside(self, e) -> str:
        h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
        return f"torch.heaviside({self._as_tensor(e.args[0])}, x.new_full((), {self._print(h0)}))"

    def _print_with_sign_of(self, e) -> str:
        return f"_with_sign_of({self._as_tensor(e.args[0])}, {self._as_tensor(e.args[1])})"

    def _print_at_most(self, e) -> str:
        return f"torch.clamp({self._as_tensor(e.args[0])}, max={float_literal(e.args[1])})"


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

    def doprint(self, e) -> str:
        return self._emit(e)[0]

    def _is_full(self, e) -> bool:
        return bool(e.free_symbols & self.full)

    def _emit(self, e) -> tuple[str, bool]:
        """(code, fresh): fresh when the value is a new buffer of x's shape, ours to overwrite."""
        if isinstance(e, sp.Symbol) or not self._is_full(e):
            return self._print(e), False
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
        return self._print(e), True  # any other op on a tensor of x's shape returns a new one

    def _chain(self, e) -> tuple[str, bool]:
        items = []  # (operand, in-place method)
        if isinstance(e, sp.Add):
            for a in e.args:
                neg = a.could_extract_minus_sign()
                items.append((-a if neg else a, "sub_" if neg else "add_"))
        else:
            coeff, factors = mul_parts(e)
            items = [(sp.Pow(f.base, -f.exp), "div_") if is_denominator(f) else (f, "mul_") for f in factors]
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


class CPrinter(_KernelWalk, C99CodePrinter):
    """Prints a float32 form as a C float expression; `Unsupported` for any node outside
    the float32 forms (log, sin, an exp not known to be <= 0, ...): such a candidate
    keeps inductor's kernels. The helpers it calls (`eafo_max`, ...) are in
    `spaces.kernels.c_source`."""

    # The function nodes it prints. Of C99's float32 math functions only fabsf: libm's
    # others (expf, logf, ...) are calls GCC does not vectorise, which the float32 forms
    # exist to avoid.
    _KNOWN = (sp.Abs, sp.sign, sp.Piecewise, sp.Heaviside, sp.DiracDelta, fn.relu, fn.leaky_relu,
              exp_nonpositive, softplus_float32, with_sign_of, at_most, where_positive)

    def __init__(self, names: dict[sp.Symbol, str]):
        super().__init__(names, {"type_aliases": {real: float32}})

    def _number(self, value) -> str:
        return f"{float_literal(value)}f"

    def _literal(self, value) -> str:
        return f"({self._number(value)})"

    def _boolean(self, b: bool) -> str:
        return "1" if b else "0"

    def _select(self, cond: str, a: str, b: str) -> str:
        return f"({cond} ? {a} : {b})"

    def _sum(self, terms: list[str]) -> str:
        return "(" + " + ".join(terms) + ")"

    def _product(self, coeff, num: list[str], den: list[str]) -> str:
        if coeff != 1:
            num.insert(0, self._literal(coeff))
        out = " * ".join(num) if num else "1.0f"
        for d in den:
            out = f"{out} / {d}"
        return f"({out})"

    def _power(self, base, exp) -> str:
        b = self._print(base)
        if exp.is_Integer and 1 <= exp <= 16:
            return "(" + " * ".join([b] * int(exp)) + ")"
        if exp.is_Integer and -16 <= exp <= -1:
            return f"(1.0f / {self._power(base, -exp)})"
        if exp == sp.Rational(1, 2):
            return C99CodePrinter._print_Pow(self, sp.Pow(base, exp, evaluate=False))  # sqrtf
        if exp == sp.Rational(-1, 2):
            return f"(1.0f / {self._power(base, -exp)})"
        raise Unsupported(f"power {exp}")

    def _bounded(self, kind: str, out: str, arg) -> str:
        return f"eafo_{kind}({out}, {self._print(arg)})"  # NaN-keeping, unlike fmaxf

    def _print(self, expr, **kwargs) -> str:
        if isinstance(expr, sp.Function) and expr.free_symbols and not isinstance(expr, self._KNOWN):
            raise Unsupported(type(expr).__name__)
        return super()._print(expr, **kwargs)

    def _print_exp_nonpositive(self, e) -> str:
        return f"eafo_exp_np({self._print(e.args[0])})"

    def _print_softplus_float32(self, e) -> str:
        return f"eafo_softplus({self._print(e.args[0])})"

    def _print_with_sign_of(self, e) -> str:
        return f"eafo_with_sign_of({self._print(e.args[0])}, {self._print(e.args[1])})"

    def _print_at_most(self, e) -> str:
        return f"eafo_at_most({self._print(e.args[0])}, {self._number(e.args[1])})"

    def _print_sign(self, e) -> str:  # a select (vectorises), where C99's is int arithmetic
        return f"eafo_sign({self._print(e.args[0])})"

    def _print_relu(self, e) -> str:
        return f"eafo_max({self._print(e.args[0])}, 0.0f)"

    def _print_leaky_relu(self, e) -> str:
        a = self._print(e.args[0])
        return f"({a} > 0.0f ? {a} : {self._number(fn.LEAKY_SLOPE)} * {a})"

    def _print_Heaviside(self, e) -> str:  # torch.heaviside: h0 at 0, else 0 (NaN included)
        a = self._print(e.args[0])
        h0 = self._print(e.args[1]) if len(e.args) > 1 else "0.5f"
        return f"({a} > 0.0f ? 1.0f : ({a} == 0.0f ? {h0} : 0.0f))"
