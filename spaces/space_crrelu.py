"""`crrelu`: the paper's CRReLU, ReLU + eps*x*exp(-x**2/2), with eps's init and
learnability searched. eps = 0 fixed is plain ReLU."""
from __future__ import annotations

from spaces.bases import get_base
from spaces.candidate import Candidate
from spaces.functions import X
from spaces.space import Space, register_space, with_coefficient
import sympy as sp

EPS_RANGE = (-0.6, 0.5)  # inits the paper's authors used in later runs


@register_space
class CRReLUSpace(Space):
    name = "crrelu"
    description = "relu(x) + eps*x*exp(-x**2/2), eps init in [-0.6, 0.5], learnable or fixed"

    def suggest(self, trial) -> dict:
        return {"eps_init": trial.suggest_float("eps_init", *EPS_RANGE),
                "eps_learnable": trial.suggest_categorical("eps_learnable", [True, False])}

    def build(self, params: dict) -> Candidate:
        if "eps_init" not in params:
            raise ValueError("space 'crrelu': missing param 'eps_init'")
        return with_coefficient(get_base("relu"), X * sp.exp(-X**2 / 2), "eps",
                                float(params["eps_init"]), bool(params.get("eps_learnable", True)))
