"""Search spaces: `suggest(trial) -> params` and `build(params) -> Candidate`.

`suggest` only calls `trial.suggest_categorical/int/float`, so a space runs
under Optuna directly and under Ray Tune's define-by-run `OptunaSearch`.
`build` turns a plain dict of params back into a Candidate anywhere (a Ray
worker, a test, a results file), so params (and the space's `sigma`) are all
that travels.

sigma: the standard deviation of the activation's input that the EAFO theory
assumes (x ~ N(0, sigma^2)). A space built with `get_space(name, sigma=s)` derives
its EAFO corrections for that width; the default 1.0 is the paper's. Pass the
pre-activation std measured on the proxy model at init
(`evaluators.preactivation_std`), and record it with the study: `build` gives the
same Candidate for the same params only at the same sigma. Terms that are
literal formulas (CRReLU's x*exp(-x**2/2), the Hermite-Gaussian family) do not
depend on it.
"""
from __future__ import annotations

import difflib
import math
from typing import Callable

import sympy as sp

from spaces.candidate import Candidate, parse

# The reference points every leaderboard carries (the search backends run them
# first). CRReLU as in the paper: one learnable eps per module, init 0.01.
BASELINES: dict[str, Candidate] = {
    "gelu": parse("gelu(x)"),
    "relu": parse("relu(x)"),
    "silu": parse("silu(x)"),
    "crrelu": parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"]),
}


class Space:
    """Base class: a named family of candidates."""

    name: str = ""
    description: str = ""

    def __init__(self, sigma: float = 1.0):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or \
                not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"space {self.name!r}: sigma must be a finite number > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def suggest(self, trial) -> dict:
        raise NotImplementedError

    def build(self, params: dict) -> Candidate:
        raise NotImplementedError

    def sample(self, rng) -> dict:
        """Random params without an Optuna trial (tests, smoke runs)."""
        return self.suggest(_RandomTrial(rng))

    def _choice(self, params: dict, key: str, valid) -> object:
        if key not in params:
            raise ValueError(f"space {self.name!r}: missing param {key!r}")
        value = params[key]
        if value not in valid:
            raise ValueError(f"space {self.name!r}: invalid {key}={value!r}; valid: {list(valid)}")
        return value


class _RandomTrial:
    """The three suggest_* calls a space may make, answered by a numpy Generator."""

    def __init__(self, rng):
        self.rng = rng

    def suggest_categorical(self, name, choices):
        return choices[int(self.rng.integers(len(choices)))]

    def suggest_int(self, name, low, high, step=1, log=False):
        return int(low + step * self.rng.integers((high - low) // step + 1))

    def suggest_float(self, name, low, high, step=None, log=False):
        return float(self.rng.uniform(low, high))


_SPACES: dict[str, Callable[..., Space]] = {}


def register_space(cls):
    """Class decorator: make a Space available by its `name`."""
    _SPACES[cls.name] = cls
    return cls


def list_spaces() -> list[str]:
    return sorted(_SPACES)


def get_space(name: str, *, sigma: float = 1.0) -> Space:
    """A fresh instance of space `name` whose EAFO terms assume inputs N(0, sigma^2)."""
    if name not in _SPACES:
        close = difflib.get_close_matches(str(name), list(_SPACES), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown space {name!r}{hint}; valid spaces: {', '.join(list_spaces())}")
    return _SPACES[name](sigma=sigma)


def with_coefficient(base: sp.Expr, term: sp.Expr, name: str, init: float,
                     learnable: bool) -> Candidate:
    """base + name*term as a Candidate with one (possibly learnable) coefficient."""
    eps = sp.Symbol(name, real=True)
    return Candidate.from_expr(base + eps * term, init={name: init},
                               learnable=[name] if learnable else [])
