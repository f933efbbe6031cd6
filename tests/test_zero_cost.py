"""Zero-cost scores: EAFO entropy (no data) and gradient norm at initialisation."""
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


def test_entropy_score_is_the_eafo_entropy_and_wafbc_distance():
    eafo = pytest.importorskip("spaces.eafo")
    s = entropy_score(CRRELU)
    assert s["output_entropy"] == pytest.approx(eafo.output_entropy(CRRELU))
    assert s["wafbc_distance"] == pytest.approx(eafo.wafbc_distance(CRRELU))
    assert 0 <= s["seconds"] < 5  # no data, no training
    # The WAFBC (a scaled Gaussian CDF) is the maximum-entropy activation: distance ~ 0,
    # and ReLU is further from it than tanh (which is itself close to a Gaussian CDF).
    assert entropy_score(spaces.parse("erf(x/sqrt(2))"))["wafbc_distance"] == pytest.approx(0, abs=1e-6)
    assert entropy_score(spaces.parse("relu(x)"))["wafbc_distance"] > \
        entropy_score(spaces.parse("tanh(x)"))["wafbc_distance"]


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
