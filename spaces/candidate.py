"""A candidate activation: a sympy expression in x plus named scalar coefficients."""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import sympy as sp

from spaces.codegen import check_generated_names
from spaces.functions import X, piecewise_to_step
from spaces.parse import coefficient_symbol, parse_expression

# A coefficient given no initial value starts at the paper's CRReLU eps init:
# small, so an added correction term starts close to its base function.
DEFAULT_INIT = 0.01

# Fingerprint grid: dense where activations differ (|x| <= 6), plus far points
# that tell apart functions agreeing near zero (e.g. tanh vs a saturating poly).
_FP_GRID = np.concatenate([np.linspace(-6.0, 6.0, 241), [-20.0, -10.0, 10.0, 20.0]])
_FP_DECIMALS = 6


@dataclass(frozen=True)
class Coefficient:
    name: str
    init: float
    learnable: bool


@dataclass(frozen=True)
class Candidate:
    """Immutable, hashable. Build with `spaces.parse` or `Candidate.from_expr`."""

    expr: sp.Expr
    coefficient_specs: tuple[Coefficient, ...]

    @classmethod
    def from_expr(cls, expr: sp.Expr, init: Mapping[str, float] | None = None,
                  learnable: Iterable[str] = ()) -> "Candidate":
        init = dict(init or {})
        learnable = set(learnable)
        if expr.has(sp.Piecewise):  # keep every formula re-parseable (no comparisons)
            expr = piecewise_to_step(expr)
        names = sorted(s.name for s in expr.free_symbols if s != X)
        for s in expr.free_symbols:
            if s != X:
                coefficient_symbol(s.name)  # validates the name
        # Names the generated torch code binds itself (g, torch, self, ...) would
        # shadow a coefficient there: refuse them now, not at compile time.
        check_generated_names("activation", "Activation", names)
        unknown = (set(init) | learnable) - set(names)
        if unknown:
            raise ValueError(
                f"coefficient(s) {sorted(unknown)} not in formula; formula has {names or 'none'}")
        specs = []
        for n in names:
            v = float(init.get(n, DEFAULT_INIT))
            if not math.isfinite(v):
                raise ValueError(f"initial value of {n!r} is not finite: {v}")
            specs.append(Coefficient(n, v, n in learnable))
        return cls(expr, tuple(specs))

    # ---- descriptions -------------------------------------------------------
    @property
    def formula(self) -> str:
        """Canonical formula: sympy's printing of the expression tree."""
        return sp.sstr(self.expr)

    @property
    def coefficients(self) -> dict[str, tuple[float, bool]]:
        """name -> (initial value, learnable?)"""
        return {c.name: (c.init, c.learnable) for c in self.coefficient_specs}

    @property
    def learnable(self) -> dict[str, float]:
        return {c.name: c.init for c in self.coefficient_specs if c.learnable}

    def describe(self) -> str:
        """Formula plus coefficient settings, one line (for tables and logs)."""
        parts = [f"{c.name}={c.init:g}{'*' if c.learnable else ''}" for c in self.coefficient_specs]
        return self.formula + (f"  [{', '.join(parts)}]" if parts else "")

    def to_dict(self) -> dict:
        return {"formula": self.formula,
                "init": {c.name: c.init for c in self.coefficient_specs},
                "learnable": [c.name for c in self.coefficient_specs if c.learnable]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Candidate":
        """Inverse of `to_dict`; the formula is parsed again (safely)."""
        return parse(d["formula"], init=d.get("init"), learnable=d.get("learnable", ()))

    # ---- the expression the code is generated from --------------------------
    def code_expr(self) -> sp.Expr:
        """The expression with fixed coefficients substituted by their values."""
        fixed = {sp.Symbol(c.name, real=True): sp.Float(c.init)
                 for c in self.coefficient_specs if not c.learnable}
        return self.expr.xreplace(fixed) if fixed else self.expr

    def substituted(self, values: Mapping[str, float] | None = None) -> sp.Expr:
        """The expression with every coefficient replaced (inits, or `values`)."""
        values = dict(values or {})
        return self.expr.xreplace({sp.Symbol(c.name, real=True): sp.Float(values.get(c.name, c.init))
                                   for c in self.coefficient_specs})

    # ---- torch --------------------------------------------------------------
    def module_class(self) -> type:
        """An nn.Module class (zero-argument constructible; timm `act_layer`)."""
        from spaces.compile import module_class_for

        return module_class_for(self)

    def to_module(self):
        """A fresh nn.Module instance with its own learnable coefficients."""
        return self.module_class()()

    def evaluate(self, xs, values: Mapping[str, float] | None = None, derivative: bool = False):
        """f(xs) (or f'(xs)) in float64 numpy, using the generated torch code."""
        from spaces.compile import evaluate

        return evaluate(self, np.asarray(xs, dtype=np.float64), values, derivative)

    # ---- identity -----------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Hash of rounded values on a fixed grid: equal functions share it.

        Learnable coefficients are part of the function a trainer sees, so the
        derivative with respect to each learnable coefficient (sorted, so names
        do not matter) is hashed too.
        """
        cached = _FINGERPRINTS.get(self)
        if cached is None:
            cached = _fingerprint(self)
            _FINGERPRINTS[self] = cached
        return cached


_FINGERPRINTS: dict[Candidate, str] = {}


def _rounded(values: np.ndarray) -> bytes:
    with np.errstate(all="ignore"):
        r = np.round(np.asarray(values, dtype=np.float64), _FP_DECIMALS)
    r = np.where(np.isnan(r), np.nan, r) + 0.0  # one NaN pattern; -0.0 -> 0.0
    return r.tobytes()


def _fingerprint(c: Candidate) -> str:
    from spaces.compile import coefficient_gradients

    h = hashlib.sha256(_rounded(c.evaluate(_FP_GRID)))
    for grad in sorted(_rounded(g) for g in coefficient_gradients(c, _FP_GRID)):
        h.update(b"|")
        h.update(grad)
    return h.hexdigest()[:16]


def parse(formula: str, init: Mapping[str, float] | None = None,
          learnable: Iterable[str] = ()) -> Candidate:
    """Parse a formula string safely into a Candidate (see spaces.parse)."""
    return Candidate.from_expr(parse_expression(formula), init, learnable)
