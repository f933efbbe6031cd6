"""Named activation functions as sympy functions.

Each base is a `sympy.Function` subclass so that formulas stay readable
(`relu(x) + eps*x*exp(-x**2/2)`, not a Piecewise soup) and so that the torch
code generator can emit one fused, numerically stable torch call for it
(`F.softplus` rather than `log(1 + exp(x))`, which overflows in float32).

Each class also knows:
- `fdiff`: its derivative, in closed form, so sympy differentiates formulas
  built from it (the backward pass and the EAFO correction both need that);
- `elementary(arg)`: the same function written with elementary sympy functions
  and Piecewise, used as the *independent* reference in tests (lambdify) and
  by the EAFO theory where branches matter.

Constants follow torch's defaults (leaky_relu slope 0.01, elu/celu alpha 1,
selu's alpha/scale from Klambauer et al. 2017 as in torch).
"""
from __future__ import annotations

import sympy as sp

X = sp.Symbol("x", real=True)

# torch.nn.SELU constants (Klambauer et al., 2017, as hard-coded in PyTorch).
SELU_ALPHA = sp.Float("1.6732632423543772848170429916717")
SELU_SCALE = sp.Float("1.0507009873554804934193349852946")
LEAKY_SLOPE = sp.Rational(1, 100)
GELU_TANH_K = sp.sqrt(2 / sp.pi)
GELU_TANH_C = sp.Float("0.044715")


class ActivationFunction(sp.Function):
    """A one-argument named function with a closed-form derivative."""

    nargs = 1
    is_real = True

    @classmethod
    def elementary(cls, a: sp.Expr) -> sp.Expr:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def eval(cls, arg):
        # Fold numbers so that e.g. relu(2) is 2, as sympy does for exp(0).
        if arg.is_Number:
            return cls.elementary(arg)
        return None

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_evalf(self, prec):
        return self.elementary(self.args[0])._eval_evalf(prec)


class step(ActivationFunction):
    """Heaviside step with step(0) = 0, the subgradient torch uses for relu."""

    @classmethod
    def elementary(cls, a):
        return sp.Piecewise((1, a > 0), (0, True))

    def fdiff(self, argindex=1):
        return sp.Integer(0)  # almost everywhere


class relu(ActivationFunction):
    @classmethod
    def elementary(cls, a):
        return sp.Piecewise((a, a > 0), (0, True))

    def fdiff(self, argindex=1):
        return step(self.args[0])


class leaky_relu(ActivationFunction):
    @classmethod
    def elementary(cls, a):
        return sp.Piecewise((a, a > 0), (LEAKY_SLOPE * a, True))

    def fdiff(self, argindex=1):
        a = self.args[0]
        return sp.Piecewise((1, a > 0), (LEAKY_SLOPE, True))


class elu(ActivationFunction):
    @classmethod
    def elementary(cls, a):
        return sp.Piecewise((a, a > 0), (sp.exp(a) - 1, True))

    def fdiff(self, argindex=1):
        a = self.args[0]
        return sp.Piecewise((1, a > 0), (sp.exp(a), True))


class celu(elu):
    """CELU with alpha = 1 (torch's default): the same function as ELU."""


class selu(ActivationFunction):
    @classmethod
    def elementary(cls, a):
        return SELU_SCALE * sp.Piecewise((a, a > 0), (SELU_ALPHA * (sp.exp(a) - 1), True))

    def fdiff(self, argindex=1):
        a = self.args[0]
        return SELU_SCALE * sp.Piecewise((1, a > 0), (SELU_ALPHA * sp.exp(a), True))


class gelu(ActivationFunction):
    """GELU, exact erf form: x * Phi(x)."""

    @classmethod
    def elementary(cls, a):
        return a / 2 * (1 + sp.erf(a / sp.sqrt(2)))

    def fdiff(self, argindex=1):
        a = self.args[0]
        return (1 + sp.erf(a / sp.sqrt(2))) / 2 + a * sp.exp(-a**2 / 2) / sp.sqrt(2 * sp.pi)


class gelu_tanh(ActivationFunction):
    """GELU, tanh approximation (torch's approximate='tanh')."""

    @classmethod
    def elementary(cls, a):
        return a / 2 * (1 + sp.tanh(GELU_TANH_K * (a + GELU_TANH_C * a**3)))

    def fdiff(self, argindex=1):
        return sp.diff(self.elementary(X), X).subs(X, self.args[0])


class sigmoid(ActivationFunction):
    @classmethod
    def elementary(cls, a):
        return 1 / (1 + sp.exp(-a))

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(ActivationFunction):
    """log(1 + exp(x)); emitted as torch's stable softplus (beta 1, threshold 20)."""

    @classmethod
    def elementary(cls, a):
        return sp.log(1 + sp.exp(a))

    def _eval_is_nonnegative(self):
        # so Abs(softplus(u)) is softplus(u), and kernels (mish's tanh) skip an abs
        return True if self.args[0].is_real else None

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class silu(ActivationFunction):
    @classmethod
    def elementary(cls, a):
        return a / (1 + sp.exp(-a))

    def fdiff(self, argindex=1):
        a = self.args[0]
        s = sigmoid(a)
        return s * (1 + a * (1 - s))


class mish(ActivationFunction):
    @classmethod
    def elementary(cls, a):
        return a * sp.tanh(sp.log(1 + sp.exp(a)))

    def fdiff(self, argindex=1):
        a = self.args[0]
        t = sp.tanh(softplus(a))
        return t + a * sigmoid(a) * (1 - t**2)


class hardswish(ActivationFunction):
    @classmethod
    def elementary(cls, a):
        return sp.Piecewise((0, a <= -3), (a, a >= 3), (a * (a + 3) / 6, True))

    def fdiff(self, argindex=1):
        # torch's hardswish_backward: 0 at or below -3, (2x+3)/6 on (-3, 3), 1 from 3 up.
        a = self.args[0]
        return sp.Piecewise((0, a <= -3), ((2 * a + 3) / 6, a < 3), (1, True))


# Every named function a formula may call, beyond sympy's own elementary ones.
ACTIVATION_FUNCTIONS: dict[str, type[ActivationFunction]] = {
    cls.__name__: cls
    for cls in (step, relu, leaky_relu, elu, celu, selu, gelu, gelu_tanh,
                sigmoid, softplus, silu, mish, hardswish)
}


def to_elementary(expr: sp.Expr) -> sp.Expr:
    """Rewrite every ActivationFunction in `expr` into elementary functions/Piecewise."""
    while True:
        found = expr.atoms(ActivationFunction)
        if not found:
            return expr
        expr = expr.xreplace({f: type(f).elementary(f.args[0]) for f in found})


def _indicator(cond) -> sp.Expr:
    """step-function form of a one-sided condition on an expression (ties ignored)."""
    if isinstance(cond, (sp.StrictGreaterThan, sp.GreaterThan)):
        return step(cond.lhs - cond.rhs)
    if isinstance(cond, (sp.StrictLessThan, sp.LessThan)):
        return step(cond.rhs - cond.lhs)
    if isinstance(cond, sp.And):
        out = sp.Integer(1)
        for c in cond.args:
            out *= _indicator(c)
        return out
    if isinstance(cond, sp.Or):
        none = sp.Integer(1)
        for c in cond.args:
            none *= 1 - _indicator(c)
        return 1 - none
    raise ValueError(f"cannot express condition {cond} with step functions")


def piecewise_to_step(expr: sp.Expr) -> sp.Expr:
    """Rewrite Piecewise((e1, c1), ..., (en, True)) as sums of e_i times step indicators.

    Candidate formulas must be re-parseable by the safe parser, which has no
    comparisons; step(x) (0 at 0, like torch's relu gradient) carries the
    branches instead. Values differ from the Piecewise only on the branch
    boundaries themselves (a set of measure zero).
    """
    def convert(pw):
        out = pw.args[-1].expr
        if pw.args[-1].cond is not sp.true:
            raise ValueError("Piecewise without a default branch")
        for e, c in reversed(pw.args[:-1]):
            ind = _indicator(c)
            out = e * ind + out * (1 - ind)
        return out

    return expr.replace(lambda e: isinstance(e, sp.Piecewise), convert)
