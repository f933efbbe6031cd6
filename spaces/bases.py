"""The base-function library: each base is a sympy expression in `x`.

`torch_reference(name)` names the torch.nn module each base must match (tests
check the match to 1e-6); it is looked up lazily so importing spaces stays light.
"""
from __future__ import annotations

import sympy as sp

from spaces import functions as fn
from spaces.functions import X

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
}


def list_bases() -> list[str]:
    """Names of every base function, sorted."""
    return sorted(_BASES)


def get_base(name: str) -> sp.Expr:
    """The sympy expression in `x` of base `name`."""
    try:
        return _BASES[name]
    except KeyError:
        raise ValueError(f"unknown base {name!r}; valid bases: {', '.join(list_bases())}") from None


def torch_reference(name: str):
    """A fresh torch.nn module equal to base `name` (for tests and benchmarks)."""
    import torch.nn as nn

    get_base(name)  # validates the name
    cls_name, kwargs = _TORCH_REFERENCE[name]
    return getattr(nn, cls_name)(**kwargs)
