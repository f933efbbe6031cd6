"""The base-function library: each base is a sympy expression in `x`.

Three bases carry coefficients of their own, learnable as in their papers:
- `prelu`: relu(x) - slope*relu(-x), slope init 0.25 (He et al. 2015; torch.nn.PReLU);
- `squared_relu`: relu(x)**2, no coefficient (So et al. 2021, "Primer");
- `star_relu`: scale*relu(x)**2 + bias, scale 0.8944 and bias -0.4472 learnable
  (Yu et al. 2022, "MetaFormer Baselines": for x ~ N(0, 1) they give relu(x)**2 mean 0
  and variance 1: E[relu^2] = 1/2, Var = 5/4, so scale = 1/sqrt(5/4), bias = -scale/2).
`get_base(name)` is the expression at those initial values (what the EAFO theory reads);
`base_candidate(name)` is the Candidate with them learnable (what is trained).

`torch_reference(name)` names the module each base must match (tests check values and
gradients to 1e-6): torch.nn's, or timm's StarReLU for the two squared ReLUs; it is
looked up lazily so importing spaces stays light.
"""
from __future__ import annotations

import sympy as sp

from spaces import functions as fn
from spaces.functions import X

SLOPE, SCALE, BIAS = (sp.Symbol(n, real=True) for n in ("slope", "scale", "bias"))
STAR_SCALE = 0.8944271909999159   # 1 / sqrt(5/4)
STAR_BIAS = -0.4472135954999579   # -STAR_SCALE / 2

_BASES: dict[str, sp.Expr] = {
    "relu": fn.relu(X),
    "leaky_relu": fn.leaky_relu(X),
    "elu": fn.elu(X),
    "celu": fn.celu(X),
    "selu": fn.selu(X),
    "gelu": fn.gelu(X),
    "gelu_tanh": fn.gelu_tanh(X),
    "silu": fn.silu(X),
    "mish": fn.mish(X),
    "softplus": fn.softplus(X),
    "tanh": sp.tanh(X),
    "sigmoid": fn.sigmoid(X),
    "hardswish": fn.hardswish(X),
    "identity": X,
    "prelu": fn.relu(X) - SLOPE * fn.relu(-X),
    "squared_relu": fn.relu(X) ** 2,
    "star_relu": SCALE * fn.relu(X) ** 2 + BIAS,
}

# Coefficients of a base: name -> (initial value, learnable).
_COEFFICIENTS: dict[str, dict[str, tuple[float, bool]]] = {
    "prelu": {"slope": (0.25, True)},  # torch.nn.PReLU(): one slope, init 0.25
    "star_relu": {"scale": (STAR_SCALE, True), "bias": (STAR_BIAS, True)},
}

# torch.nn class name (and constructor kwargs) that each base reproduces.
_TORCH_REFERENCE: dict[str, tuple[str, dict]] = {
    "relu": ("ReLU", {}),
    "leaky_relu": ("LeakyReLU", {}),
    "elu": ("ELU", {}),
    "celu": ("CELU", {}),
    "selu": ("SELU", {}),
    "gelu": ("GELU", {}),
    "gelu_tanh": ("GELU", {"approximate": "tanh"}),
    "silu": ("SiLU", {}),
    "mish": ("Mish", {}),
    "softplus": ("Softplus", {}),
    "tanh": ("Tanh", {}),
    "sigmoid": ("Sigmoid", {}),
    "hardswish": ("Hardswish", {}),
    "identity": ("Identity", {}),
    "prelu": ("PReLU", {}),
    # timm.models.metaformer.StarReLU is scale * relu(x)**2 + bias
    "squared_relu": ("timm:StarReLU", {"scale_value": 1.0, "bias_value": 0.0,
                                       "scale_learnable": False, "bias_learnable": False}),
    "star_relu": ("timm:StarReLU", {"scale_value": STAR_SCALE, "bias_value": STAR_BIAS}),
}


def list_bases() -> list[str]:
    """Names of every base function, sorted."""
    return sorted(_BASES)


def get_base(name: str) -> sp.Expr:
    """The sympy expression in `x` of base `name`, its coefficients at their initial values."""
    expr = _expression(name)
    coefs = _COEFFICIENTS.get(name, {})
    return expr.xreplace({sp.Symbol(c, real=True): sp.Float(v) for c, (v, _) in coefs.items()})


def base_candidate(name: str):
    """Base `name` as a Candidate: its own coefficients (prelu's slope, star_relu's scale
    and bias) with their initial values, learnable as in their papers."""
    from spaces.candidate import Candidate

    coefs = _COEFFICIENTS.get(name, {})
    return Candidate.from_expr(_expression(name), init={c: v for c, (v, _) in coefs.items()},
                               learnable=[c for c, (_, learn) in coefs.items() if learn])


def _expression(name: str) -> sp.Expr:
    try:
        return _BASES[name]
    except KeyError:
        raise ValueError(f"unknown base {name!r}; valid bases: {', '.join(list_bases())}") from None


def torch_reference(name: str):
    """A fresh torch.nn module equal to base `name` (for tests and benchmarks)."""
    import torch.nn as nn

    get_base(name)  # validates the name
    cls_name, kwargs = _TORCH_REFERENCE[name]
    if cls_name.startswith("timm:"):
        from timm.models import metaformer

        return getattr(metaformer, cls_name[len("timm:"):])(**kwargs)
    return getattr(nn, cls_name)(**kwargs)
