"""Every base matches its torch.nn counterpart, values and gradients."""
import numpy as np
import pytest
import sympy as sp
import torch

import spaces
from spaces.bases import torch_reference
from spaces.functions import X, to_elementary


def _candidate(name):
    return spaces.base_candidate(name)


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


@pytest.mark.parametrize("name,params", [("prelu", {"slope": "weight"}),
                                         ("star_relu", {"scale": "scale", "bias": "bias"})])
def test_learnable_coefficients_match_the_reference_parameters(name, params):
    """prelu's slope and star_relu's scale and bias: same initial values and same
    gradients as the torch.nn / timm module's parameters."""
    ours, ref = _candidate(name).to_module().double(), torch_reference(name).double()
    x = torch.linspace(-4, 4, 801, dtype=torch.float64)
    (ours(x) ** 2).sum().backward()
    (ref(x) ** 2).sum().backward()
    mine, theirs = dict(ours.named_parameters()), dict(ref.named_parameters())
    assert sorted(mine) == sorted(params)
    for coef, param in params.items():
        torch.testing.assert_close(mine[coef].detach().reshape(()), theirs[param].detach().reshape(()))
        torch.testing.assert_close(mine[coef].grad.reshape(()), theirs[param].grad.reshape(()))


def test_get_base_is_the_candidate_at_its_initial_values():
    """The theory reads get_base (coefficients substituted); training gets base_candidate."""
    for name in spaces.list_bases():
        assert spaces.get_base(name).free_symbols <= {X}
        assert sp.simplify(spaces.get_base(name) - _candidate(name).substituted()) == 0
    assert _candidate("prelu").learnable == {"slope": 0.25}
    assert set(_candidate("star_relu").learnable) == {"scale", "bias"}
    assert spaces.get_base("squared_relu") == spaces.parse("relu(x)**2").expr


def test_unknown_base_lists_valid_names():
    with pytest.raises(ValueError, match="gelu"):
        spaces.get_base("gleu")
