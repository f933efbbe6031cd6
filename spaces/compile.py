"""Candidate -> torch: generated modules, cached per candidate."""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache

import numpy as np

from spaces.codegen import load_module_source, module_source


def _key(candidate) -> str:
    return hashlib.sha1(json.dumps(candidate.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


@lru_cache(maxsize=4096)
def _generated(candidate, all_coefficients: bool):
    """The loaded generated module for `candidate`.

    all_coefficients=False: fixed coefficients are baked in as constants and
    only learnable ones are arguments (what training uses).
    all_coefficients=True: every coefficient is an argument, for evaluating the
    formula at arbitrary (e.g. learned) values.
    """
    if all_coefficients:
        expr = candidate.expr
        args = {c.name: c.init for c in candidate.coefficient_specs}
    else:
        expr = candidate.code_expr()
        args = candidate.learnable
    key = _key(candidate)
    source = module_source(
        expr, args, class_name=f"Candidate_{key}", func_name="activation",
        formula=candidate.formula,
        docstring=f"Generated activation for {candidate.formula}")
    return load_module_source(source, f"eafo_candidate_{key}")


def module_class_for(candidate) -> type:
    mod = _generated(candidate, False)
    cls = getattr(mod, [n for n in mod.__all__ if n.startswith("Candidate_") and
                        not n.endswith("Function")][0])
    cls.candidate = candidate  # lets evaluators and exporters find the formula back
    return cls


def evaluate(candidate, xs: np.ndarray, values=None, derivative=False) -> np.ndarray:
    import torch

    mod = _generated(candidate, True)
    values = dict(values or {})
    x = torch.as_tensor(xs, dtype=torch.float64)
    coefs = [torch.tensor(float(values.get(c.name, c.init)), dtype=torch.float64)
             for c in candidate.coefficient_specs]
    with torch.no_grad():
        if derivative:
            out = mod._activation_bwd(x, *coefs, torch.ones_like(x))[0]
        else:
            out = mod._activation_fwd(x, *coefs)
    return torch.broadcast_to(torch.as_tensor(out, dtype=torch.float64), x.shape).numpy().copy()


def coefficient_gradients(candidate, xs: np.ndarray) -> list[np.ndarray]:
    """Pointwise df/dc on xs for each learnable coefficient c (at its init)."""
    import torch

    learnable = [c for c in candidate.coefficient_specs if c.learnable]
    if not learnable:
        return []
    mod = _generated(candidate, True)
    x = torch.as_tensor(xs, dtype=torch.float64)
    # One copy of each coefficient per point: the gradient of sum(f) with
    # respect to copy i is df/dc at point i.
    coefs = [torch.full_like(x, c.init, requires_grad=c.learnable)
             for c in candidate.coefficient_specs]
    out = torch.broadcast_to(mod._activation_fwd(x, *coefs), x.shape)
    wanted = [t for t, c in zip(coefs, candidate.coefficient_specs) if c.learnable]
    grads = torch.autograd.grad(out.sum(), wanted, allow_unused=True)
    return [np.zeros_like(xs) if g is None else g.numpy() for g in grads]
