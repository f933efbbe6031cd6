"""evaluators.prefilter: features of an activation's response, a GP on them, and selection."""
import math

import numpy as np
import pytest
from scipy.stats import kendalltau

import spaces
from evaluators import prefilter
from evaluators.prefilter import MIN_HISTORY, N_POINTS, Prefilter

GELU = spaces.parse("gelu(x)")


BASES = ("relu", "gelu", "silu", "tanh", "elu", "softplus", "leaky_relu", "sigmoid")
TERMS = ("x*exp(-x**2/2)", "(x**2 - 1)*exp(-x**2/2)", "exp(-x**2/2)")


def _proposals(n, seed):
    """base + eps * Hermite-Gaussian term, random base, term and eps in [-0.6, 0.5]."""
    rng = np.random.default_rng(seed)
    return [spaces.parse(f"{BASES[rng.integers(len(BASES))]}(x) + "
                         f"{rng.uniform(-0.6, 0.5):.3f}*{TERMS[rng.integers(len(TERMS))]}")
            for _ in range(n)]


def _closeness_to_gelu(c):
    """A stand-in for a trained score that depends on the function's shape only."""
    shape = prefilter.features(c)[:N_POINTS]
    return -float(np.mean((shape - prefilter.features(GELU)[:N_POINTS]) ** 2))


def test_features_ignore_scale_and_tell_shapes_apart():
    f = prefilter.features(GELU, 0.16)
    assert f.shape == (2 * N_POINTS + 6,) and np.isfinite(f).all()
    scaled = prefilter.features(spaces.parse("3*gelu(x)"), 0.16)
    assert np.allclose(scaled, f, atol=1e-6)
    assert not np.allclose(prefilter.features(spaces.parse("relu(x)"), 0.16), f, atol=1e-2)
    assert np.isnan(prefilter.features(spaces.parse("log(x)"))).all()


def test_cold_start_keeps_the_proposal_order_and_puts_broken_candidates_last():
    props = [spaces.parse("log(x)"), spaces.parse("relu(x)"), GELU, spaces.parse("tanh(x)")]
    assert prefilter.select(props, 2) == [1, 2]
    assert prefilter.select(props, 10) == [1, 2, 3, 0]
    pf = Prefilter()
    for c, s in zip(props[1:], (0.5, 0.7, 0.6)):  # fewer than MIN_HISTORY = 4
        pf.observe(c, s)
    assert MIN_HISTORY == 4 and np.isnan(pf.predict(props)[0]).all()
    with pytest.raises(ValueError, match="k"):
        pf.select(props, 0)
    with pytest.raises(ValueError, match="sigma"):
        Prefilter(sigma=0)


def test_learned_selection_beats_the_average_proposal():
    """Trained on 16 candidates scored by a shape-only objective, the GP's top 4 of 16
    fresh proposals score above the proposals' mean, and its predictions rank them."""
    seen, fresh = _proposals(16, seed=0), _proposals(16, seed=1)
    pf = Prefilter(kappa=0.0)
    for c in seen:
        pf.observe(c, _closeness_to_gelu(c))
    truth = np.array([_closeness_to_gelu(c) for c in fresh])
    mean, std = pf.predict(fresh)
    assert np.isfinite(mean).all() and (std >= 0).all()
    assert kendalltau(mean, truth).statistic > 0.6  # 0.88 when written
    keep = pf.select(fresh, 4)
    assert len(set(keep)) == 4 and truth[keep].mean() > truth.mean()
    assert keep == pf.select(fresh, 4)  # deterministic


def test_failed_runs_count_as_the_worst_score_and_broken_proposals_come_last():
    seen = _proposals(6, seed=2)
    pf = Prefilter()
    for i, c in enumerate(seen):
        pf.observe(c, math.nan if i == 0 else float(i))
    props = [spaces.parse("log(x)")] + _proposals(5, seed=3)
    mean, _ = pf.predict(props)
    assert math.isnan(mean[0]) and np.isfinite(mean[1:]).all()
    assert pf.select(props, 6)[-1] == 0
