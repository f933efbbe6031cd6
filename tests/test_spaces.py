"""Named spaces: suggest through real Optuna trials, build into valid candidates."""
import numpy as np
import optuna
import pytest
import torch

import spaces


def test_unknown_space_lists_valid_names():
    with pytest.raises(ValueError) as e:
        spaces.get_space("eafo_defualt")
    msg = str(e.value)
    assert all(name in msg for name in spaces.list_spaces()) and "did you mean eafo_default" in msg


def test_at_least_three_spaces_are_registered():
    assert {"eafo_default", "crrelu", "unary_binary"} <= set(spaces.list_spaces())


@pytest.mark.parametrize("name", spaces.list_spaces())
def test_fifty_optuna_suggestions_build_valid_candidates(name):
    space = spaces.get_space(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    x = torch.linspace(-3, 3, 64, dtype=torch.float64)
    for _ in range(50):
        trial = study.ask()
        params = space.suggest(trial)
        assert params == {k: trial.params[k] for k in params}  # everything came from the trial
        cand = space.build(params)
        assert spaces.Candidate.from_dict(cand.to_dict()).fingerprint == cand.fingerprint
        reason = spaces.sanity_check(cand)
        if reason is None:
            y = cand.to_module().double()(x)
            assert torch.isfinite(y).all()
        else:
            assert isinstance(reason, str) and reason
        study.tell(trial, 0.0)


def test_build_refuses_bad_params_with_value_error():
    with pytest.raises(ValueError, match="invalid base"):
        spaces.get_space("eafo_default").build({"base": "nope", "correction": "none"})
    with pytest.raises(ValueError, match="missing param"):
        spaces.get_space("unary_binary").build({"binary": "add"})


def test_crrelu_and_plain_bases_are_points_of_eafo_default():
    s = spaces.get_space("eafo_default")
    crrelu = s.build({"base": "relu", "correction": "crrelu", "eps_init": 0.01, "eps_learnable": True})
    assert crrelu.fingerprint == spaces.BASELINES["crrelu"].fingerprint
    for base in ("gelu", "relu", "silu"):
        assert s.build({"base": base, "correction": "none"}).fingerprint == spaces.BASELINES[base].fingerprint


def test_sigma_reaches_the_eafo_correction_and_only_it():
    """get_space(name, sigma=s): the eafo family's term is correction(base, s); the
    literal terms (CRReLU's, Hermite-Gaussian) and the plain bases do not depend on s."""
    from spaces.correction import correction
    from spaces.functions import X

    narrow, wide = spaces.get_space("eafo_default", sigma=0.16), spaces.get_space("eafo_default")
    assert narrow.sigma == 0.16 and wide.sigma == 1.0
    p = {"base": "tanh", "correction": "eafo", "eps_init": -0.1, "eps_learnable": False}
    eps = narrow.build(p).coefficients["eps"][0]
    assert narrow.build(p).substituted() == (spaces.get_base("tanh") + eps * correction("tanh", 0.16))
    assert narrow.build(p).fingerprint != wide.build(p).fingerprint
    for q in ({"base": "relu", "correction": "crrelu", "eps_init": 0.01, "eps_learnable": True},
              {"base": "gelu", "correction": "hermite", "hermite_k": 2, "eps_init": 0.1,
               "eps_learnable": False}, {"base": "silu", "correction": "none"}):
        assert narrow.build(q).fingerprint == wide.build(q).fingerprint
    assert spaces.get_space("crrelu", sigma=0.16).build({"eps_init": 0.01}).expr.has(
        X * spaces.parse("exp(-x**2/2)").expr)
    for bad in (0, -1.0, float("nan"), "1", True):
        with pytest.raises(ValueError, match="sigma"):
            spaces.get_space("eafo_default", sigma=bad)


def test_baselines_are_points_of_unary_binary():
    s = spaces.get_space("unary_binary")
    pts = {"relu": {"binary": "max", "unary1": "x", "unary2": "zero"},
           "silu": {"binary": "sigmoid_mul", "unary1": "x", "unary2": "x"},
           "gelu": {"binary": "add", "unary1": "gelu", "unary2": "zero"},
           "crrelu": {"binary": "add_scaled", "unary1": "relu", "unary2": "crrelu_term",
                      "beta_init": 0.01, "beta_learnable": True}}
    for label, params in pts.items():
        assert s.build(params).fingerprint == spaces.BASELINES[label].fingerprint, label


def test_hermite_k1_is_the_crrelu_term():
    s = spaces.get_space("eafo_default")
    a = s.build({"base": "gelu", "correction": "hermite", "hermite_k": 1, "eps_init": 0.1, "eps_learnable": False})
    b = s.build({"base": "gelu", "correction": "crrelu", "eps_init": 0.1, "eps_learnable": False})
    assert a.fingerprint == b.fingerprint


@pytest.mark.parametrize("formula,why", [
    ("exp(exp(x))", "not finite"),
    ("log(x)", "not finite"),
    ("0*x + 3", "constant"),
    ("x**6", "explodes"),
    ("sqrt(Abs(x))", "derivative not finite"),
])
def test_sanity_filter_rejects_with_a_reason(formula, why):
    assert why in spaces.sanity_check(spaces.parse(formula))


@pytest.mark.parametrize("formula", ["relu(x)", "gelu(x) + eps*x*exp(-x**2/2)", "tanh(x)", "x**3/100"])
def test_sanity_filter_accepts_reasonable_candidates(formula):
    assert spaces.sanity_check(spaces.parse(formula)) is None


def test_random_sampling_without_optuna_is_reproducible():
    s = spaces.get_space("eafo_default")
    a = [s.sample(np.random.default_rng(3)) for _ in range(1)]
    b = [s.sample(np.random.default_rng(3)) for _ in range(1)]
    assert a == b
