"""`eafo_default`: base function x correction family x coefficient init x learnable.

f(x) = base(x) + eps * term(x), where term is one of
- `none`    : no correction (the plain base; eps does not exist),
- `eafo`    : the base's own first-order EAFO correction for inputs N(0, sigma^2),
              sigma the space's (spaces.correction.correction; the paper's closed
              form for invertible bases, this engine's projected one for GELU,
              SiLU, Mish, hardswish; eps > 0 raises the output entropy, eps < 0 is
              the EAFO descent step),
- `crrelu`  : the CRReLU term x*exp(-x**2/2) transplanted onto any base,
- `hermite` : a Hermite-Gaussian He_k(x)*exp(-x**2/2), k = 0..3 (probabilists'
              Hermite polynomials; k = 1 is the CRReLU term again).
eps starts in [-0.6, 0.5], the range of inits the paper's authors used in
later runs, and is either one learnable scalar per module or fixed.
CRReLU (relu, crrelu, eps=0.01, learnable) and every plain base are points of it.
"""
from __future__ import annotations

import sympy as sp

from spaces.bases import get_base
from spaces.candidate import Candidate
from spaces.functions import X
from spaces.space import Space, register_space, with_coefficient

# celu equals elu at torch's default alpha; identity is no activation at all.
BASES = ("relu", "leaky_relu", "elu", "selu", "gelu", "gelu_tanh", "silu", "mish",
         "softplus", "tanh", "hardswish")
CORRECTIONS = ("none", "eafo", "crrelu", "hermite")
EPS_RANGE = (-0.6, 0.5)
HERMITE_MAX_K = 3


def correction_term(base: str, family: str, k: int = 1, sigma: float = 1.0) -> sp.Expr:
    """The term eps multiplies; only `eafo` depends on sigma (the others are literal)."""
    if family == "crrelu":
        return X * sp.exp(-X**2 / 2)
    if family == "hermite":
        return sp.expand(sp.hermite_prob(k, X)) * sp.exp(-X**2 / 2)
    if family == "eafo":
        from spaces.correction import correction

        return correction(base, sigma)
    raise ValueError(f"unknown correction family {family!r}; valid: {', '.join(CORRECTIONS)}")


@register_space
class EafoDefault(Space):
    name = "eafo_default"
    description = "base x {none, own EAFO correction, CRReLU term, Hermite-Gaussian k<=3} x eps init x learnable"

    def suggest(self, trial) -> dict:
        p = {"base": trial.suggest_categorical("base", list(BASES)),
             "correction": trial.suggest_categorical("correction", list(CORRECTIONS))}
        if p["correction"] == "hermite":
            p["hermite_k"] = trial.suggest_int("hermite_k", 0, HERMITE_MAX_K)
        if p["correction"] != "none":
            p["eps_init"] = trial.suggest_float("eps_init", *EPS_RANGE)
            p["eps_learnable"] = trial.suggest_categorical("eps_learnable", [True, False])
        return p

    def build(self, params: dict) -> Candidate:
        base = self._choice(params, "base", BASES)
        family = self._choice(params, "correction", CORRECTIONS)
        if family == "none":
            return Candidate.from_expr(get_base(base))
        k = self._choice(params, "hermite_k", range(HERMITE_MAX_K + 1)) if family == "hermite" else 1
        init = float(params.get("eps_init", 0.01))
        return with_coefficient(get_base(base), correction_term(base, family, k, self.sigma), "eps",
                                init, bool(params.get("eps_learnable", True)))
