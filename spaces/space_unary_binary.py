"""`unary_binary`: the grammar of Ramachandran et al., "Searching for Activation
Functions" (2017): f(x) = binary(unary1(x), unary2(x)).

Operator set (documented here, used as is):
- unary: their set minus the ops whose derivative is infinite at 0 (sqrt) or
  which divide by near-zero (log|x|), plus this project's bases gelu/silu and
  the CRReLU term, so that every baseline is a point of the space;
- binary: their set minus x1/(x2+eps) (same reason), plus `add_scaled`
  u1 + beta*u2 (beta learnable or fixed), which makes CRReLU a point.
`beta` appears only in the binary ops that use it.
"""
from __future__ import annotations

import sympy as sp

from spaces import functions as fn
from spaces.candidate import Candidate
from spaces.functions import X
from spaces.space import Space, register_space

U1, U2, BETA = sp.Symbol("_u1"), sp.Symbol("_u2"), sp.Symbol("beta", real=True)

UNARY: dict[str, sp.Expr] = {
    "x": X, "neg": -X, "abs": sp.Abs(X), "square": X**2, "cube": X**3,
    "exp": sp.exp(X), "sin": sp.sin(X), "cos": sp.cos(X), "tanh": sp.tanh(X),
    "asinh": sp.asinh(X), "atan": sp.atan(X), "relu": fn.relu(X), "min0": -fn.relu(-X),
    "sigmoid": fn.sigmoid(X), "softplus": fn.softplus(X), "gauss": sp.exp(-X**2),
    "erf": sp.erf(X), "gelu": fn.gelu(X), "silu": fn.silu(X),
    "crrelu_term": X * sp.exp(-X**2 / 2), "zero": sp.Integer(0), "one": sp.Integer(1),
}
BINARY: dict[str, sp.Expr] = {
    "add": U1 + U2, "mul": U1 * U2, "sub": U1 - U2,
    "max": sp.Max(U1, U2), "min": sp.Min(U1, U2),
    "sigmoid_mul": fn.sigmoid(U1) * U2,
    "gauss_diff": sp.exp(-BETA * (U1 - U2)**2),
    "laplace_diff": sp.exp(-BETA * sp.Abs(U1 - U2)),
    "mix": BETA * U1 + (1 - BETA) * U2,
    "add_scaled": U1 + BETA * U2,
}
BETA_RANGE = (-1.0, 2.0)


@register_space
class UnaryBinary(Space):
    name = "unary_binary"
    description = "binary(unary1(x), unary2(x)) over Ramachandran et al.'s operator set"

    def suggest(self, trial) -> dict:
        p = {"binary": trial.suggest_categorical("binary", list(BINARY)),
             "unary1": trial.suggest_categorical("unary1", list(UNARY)),
             "unary2": trial.suggest_categorical("unary2", list(UNARY))}
        if BETA in BINARY[p["binary"]].free_symbols:
            p["beta_init"] = trial.suggest_float("beta_init", *BETA_RANGE)
            p["beta_learnable"] = trial.suggest_categorical("beta_learnable", [True, False])
        return p

    def build(self, params: dict) -> Candidate:
        op = BINARY[self._choice(params, "binary", BINARY)]
        u1 = UNARY[self._choice(params, "unary1", UNARY)]
        u2 = UNARY[self._choice(params, "unary2", UNARY)]
        expr = op.subs({U1: u1, U2: u2}, simultaneous=True)
        if BETA not in expr.free_symbols:
            return Candidate.from_expr(expr)
        return Candidate.from_expr(expr, init={"beta": float(params.get("beta_init", 1.0))},
                                   learnable=["beta"] if params.get("beta_learnable", True) else [])
