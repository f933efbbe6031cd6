"""Candidate -> torch: generated modules, cached per candidate."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache

import numpy as np

from spaces.codegen import kernel_functions, load_module_source, module_source


def _key(candidate) -> str:
    return hashlib.sha1(json.dumps(candidate.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


@lru_cache(maxsize=4096)
def _generated(candidate):
    """The loaded generated module for `candidate` (what training uses): fixed
    coefficients are baked in as constants, learnable ones are parameters."""
    key = _key(candidate)
    source = module_source(
        candidate.code_expr(), candidate.learnable, class_name=f"Candidate_{key}", func_name="activation",
        formula=candidate.formula, docstring=f"Generated activation for {candidate.formula}")
    return load_module_source(source, f"eafo_candidate_{key}")


@lru_cache(maxsize=4096)
def _all_coefficient_kernels(candidate) -> dict:
    """The exact kernels with every coefficient an argument, for evaluating the formula at
    arbitrary (e.g. learned) values."""
    return kernel_functions(candidate.expr, [c.name for c in candidate.coefficient_specs], native=False)


def module_class_for(candidate) -> type:
    mod = _generated(candidate)
    cls = getattr(mod, [n for n in mod.__all__ if n.startswith("Candidate_") and
                        not n.endswith("Function")][0])
    cls.candidate = candidate  # lets evaluators and exporters find the formula back
    return cls


def evaluate(candidate, xs: np.ndarray, values=None, derivative=False) -> np.ndarray:
    import torch

    kernels = _all_coefficient_kernels(candidate)
    values = dict(values or {})
    x = torch.as_tensor(xs, dtype=torch.float64)
    coefs = [torch.tensor(float(values.get(c.name, c.init)), dtype=torch.float64)
             for c in candidate.coefficient_specs]
    with torch.no_grad():
        if derivative:
            out = kernels["bwd"](x, *coefs, torch.ones_like(x))[0]
        else:
            out = kernels["fwd"](x, *coefs)
    return torch.broadcast_to(torch.as_tensor(out, dtype=torch.float64), x.shape).numpy().copy()


def coefficient_gradients(candidate, xs: np.ndarray) -> list[np.ndarray]:
    """Pointwise df/dc on xs for each learnable coefficient c (at its init)."""
    import torch

    learnable = [c for c in candidate.coefficient_specs if c.learnable]
    if not learnable:
        return []
    kernels = _all_coefficient_kernels(candidate)
    x = torch.as_tensor(xs, dtype=torch.float64)
    # One copy of each coefficient per point: the gradient of sum(f) with
    # respect to copy i is df/dc at point i.
    coefs = [torch.full_like(x, c.init, requires_grad=c.learnable)
             for c in candidate.coefficient_specs]
    out = torch.broadcast_to(kernels["fwd"](x, *coefs), x.shape)
    wanted = [t for t, c in zip(coefs, candidate.coefficient_specs) if c.learnable]
    grads = torch.autograd.grad(out.sum(), wanted, allow_unused=True)
    return [np.zeros_like(xs) if g is None else g.numpy() for g in grads]
