"""Zero-cost scores: EAFO scores (no data) and gradient norm at initialisation."""
from __future__ import annotations

import math

import pytest
import torch

import spaces
from evaluators import ProxyTask, entropy_score, grad_norm_score
from evaluators import data as data_mod

CRRELU = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])
needs_fashion = pytest.mark.skipif(
    not (data_mod.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file() and
    not data_mod.os.environ.get(data_mod.ENV_ROOT), reason="Fashion-MNIST not installed")


@pytest.fixture(scope="module")
def task():
    return ProxyTask(train_size=500, val_size=500, batch_size=64, device="cpu", num_threads=1)


def test_entropy_score_reads_the_output_law():
    from spaces import eafo

    s = entropy_score(CRRELU)
    law = eafo.output_law(CRRELU)
    assert s["negentropy"] == pytest.approx(law.negentropy)
    assert s["wafbc_distance"] == pytest.approx(law.wafbc_distance)
    assert s["atom_mass"] == law.atom_mass == 0
    assert s["output_entropy"] == pytest.approx(eafo.output_entropy(CRRELU))
    assert s["sigma"] == 1.0 and 0 <= s["seconds"] < 5  # no data, no training
    # The WAFBC (a scaled Gaussian CDF) is the maximum-entropy activation: distance ~ 0,
    # and ReLU is further from it than tanh (which is itself close to a Gaussian CDF).
    assert entropy_score(spaces.parse("erf(x/sqrt(2))"))["wafbc_distance"] == pytest.approx(0, abs=1e-6)
    relu = entropy_score(spaces.parse("relu(x)"))
    assert relu["wafbc_distance"] > entropy_score(spaces.parse("tanh(x)"))["wafbc_distance"]
    assert relu["atom_mass"] == pytest.approx(0.5)


def test_entropy_scores_ignore_the_activations_scale_but_not_sigma():
    """What a following linear layer undoes must not change a score; the input width does."""
    for formula in ("gelu(x)", "relu(x)", "relu(x) + 0.01*x*exp(-x**2/2)", "tanh(x)"):
        one = entropy_score(spaces.parse(formula))
        for a in (0.5, 7.0):
            scaled = entropy_score(spaces.parse(f"{a}*({formula})"))
            for key in ("negentropy", "wafbc_distance", "atom_mass"):
                assert scaled[key] == pytest.approx(one[key], abs=1e-3), (formula, a, key)
    gelu = spaces.parse("gelu(x)")
    narrow = entropy_score(gelu, sigma=0.16)
    assert narrow["sigma"] == 0.16 and narrow["negentropy"] < entropy_score(gelu)["negentropy"] / 5


def test_entropy_score_of_a_function_the_theory_cannot_read_is_nan():
    s = entropy_score(spaces.parse("log(x)"))
    assert all(math.isnan(s[k]) for k in ("negentropy", "wafbc_distance", "output_entropy"))


@needs_fashion
def test_grad_norm_is_finite_seeded_and_tells_activations_apart(task):
    a = grad_norm_score(CRRELU, task, seed=0)
    assert math.isfinite(a) and a > 0
    assert grad_norm_score(CRRELU, task, seed=0) == a        # same init, same batch
    assert grad_norm_score(CRRELU, task, seed=1) != a        # another init
    assert grad_norm_score(spaces.parse("tanh(x)"), task, seed=0) != a


@needs_fashion
def test_grad_norm_leaves_the_global_rng_alone(task):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    grad_norm_score(CRRELU, task, seed=7)
    assert torch.equal(torch.rand(3), expected)


@needs_fashion
def test_grad_norm_of_a_rejected_candidate_is_nan(task):
    assert math.isnan(grad_norm_score(spaces.parse("exp(exp(x))"), task))
