"""Every base matches its torch.nn counterpart, values and gradients."""
import numpy as np
import pytest
import sympy as sp
import torch

import spaces
from spaces.bases import torch_reference
from spaces.functions import X, to_elementary


def _candidate(name):
    return spaces.parse("x" if name == "identity" else f"{name}(x)")


@pytest.mark.parametrize("name", spaces.list_bases())
def test_base_matches_torch_module_to_1e6(name):
    x = torch.linspace(-8, 8, 10_001, dtype=torch.float64)
    ours = _candidate(name).to_module()(x)
    ref = torch_reference(name).double()(x)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", spaces.list_bases())
def test_base_gradient_matches_torch_autograd(name):
    x = torch.linspace(-8, 8, 2_001, dtype=torch.float64)
    x = x[x.abs() > 1e-9]  # the kink of relu-like bases: subgradient conventions differ
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    _candidate(name).to_module()(x1).sum().backward()
    torch_reference(name).double()(x2).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", spaces.list_bases())
def test_elementary_form_equals_named_form(name):
    """The elementary rewrite (used as reference and by the EAFO theory) is the same function."""
    expr = spaces.get_base(name)
    f = sp.lambdify(X, to_elementary(expr), modules=["scipy", "numpy"])
    xs = np.linspace(-10, 10, 1_001)
    assert np.allclose(np.broadcast_to(f(xs), xs.shape), _candidate(name).evaluate(xs), atol=1e-9)


def test_unknown_base_lists_valid_names():
    with pytest.raises(ValueError, match="gelu"):
        spaces.get_base("gleu")
