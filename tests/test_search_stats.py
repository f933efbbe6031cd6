"""search.stats and search.racing: the winner decision, checked by hand and by simulation.

The simulations are the decision's specification: with 5 candidates against
GELU (the default: top 2 + 3 other baselines), the familywise false-claim rate
must stay at or under 5 % at 3, 5 and 10 seeds, and a 1.5 sd improvement must
be found most of the time at 10 seeds, with racing as without it.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, t as student_t, ttest_1samp

from search.racing import plan, rounds, simulate
from search.stats import ALPHA, compare, holm, mean_std, one_sided_p, winners

N_STUDIES = 20_000   # per setting: the standard error of a 5 % rate is 0.15 pp
DEFAULT_CANDIDATES = 5  # top 2 + relu, silu, crrelu, each compared with gelu


def test_mean_std_uses_the_sample_std_and_skips_missing_values():
    mean, std = mean_std([0.80, 0.82, None, 0.84, float("nan")])
    assert mean == pytest.approx(0.82)
    assert std == pytest.approx(0.02)  # sqrt(((-.02)^2 + 0 + .02^2) / 2)
    assert mean_std([0.9]) == (0.9, None)  # one seed has no spread
    assert mean_std([]) == (None, None)


def test_one_candidate_is_scipys_one_sided_paired_t_test():
    d = [0.012, 0.004, 0.009, -0.001, 0.010]
    c = compare({"a": d})["a"]
    ref = ttest_1samp(d, 0.0, alternative="greater")
    assert c.p == pytest.approx(ref.pvalue) and c.p_holm == pytest.approx(ref.pvalue)
    assert c.level == ALPHA and c.n == 5 and c.mean == pytest.approx(np.mean(d))
    # with one candidate the lower end is scipy's one-sided 95 % bound
    assert c.low == pytest.approx(ref.confidence_interval(0.95).low)
    assert c.high - c.mean == pytest.approx(c.mean - c.low)
    assert c.claimed == (ref.pvalue <= ALPHA) == (c.low > 0)


def test_holm_by_hand():
    # p = (0.01, 0.04, 0.03, 0.5), m = 4: step 1 0.01 <= 0.05/4, step 2 0.03 > 0.05/3: stop.
    rejected, adjusted, level = holm(np.array([0.01, 0.04, 0.03, 0.5]))
    assert rejected.tolist() == [True, False, False, False]
    assert adjusted.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])  # max-accumulated (m-k+1) p
    # levels: step 1 0.05/4; every later step gets the level of step 2 (the first not rejected)
    assert level.tolist() == pytest.approx([0.0125, 0.05 / 3, 0.05 / 3, 0.05 / 3])


def test_a_claim_is_exactly_a_lower_interval_end_above_zero():
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(300):
        diffs = {f"c{i}": rng.normal(rng.choice([0.0, 1.5, 3.0]), 1.0, size=rng.integers(2, 11))
                 for i in range(5)}
        result = compare(diffs)
        for c in result.values():
            assert c.claimed == (c.low > 0)
            seen.add(c.claimed)
        assert winners(diffs) == {k for k, c in result.items() if c.claimed}
    assert seen == {True, False}


def test_the_dict_api_decides_as_the_array_core_the_simulations_use():
    rng = np.random.default_rng(5)
    d = rng.normal(0.8, 1.0, size=(200, 5, 5))
    claimed, _, _ = holm(one_sided_p(d))
    for i in range(d.shape[0]):
        assert winners({k: d[i, k] for k in range(5)}) == set(np.flatnonzero(claimed[i]).tolist())


def test_untestable_candidates_are_never_claimed_but_count_in_m():
    result = compare({"one_seed": [0.5], "no_spread": [0.01, 0.01, 0.01], "real": [1.0, 1.2, 0.9, 1.1]})
    assert result["one_seed"].p == 1.0 and not result["one_seed"].claimed and result["one_seed"].low is None
    assert result["no_spread"].p == 1.0 and not result["no_spread"].claimed and result["no_spread"].low is None
    # "real" is alone at step 1 of 3: its level is 0.05/3, not 0.05
    assert result["real"].level == pytest.approx(ALPHA / 3) and result["real"].claimed
    half = student_t.ppf(1 - ALPHA / 3, 3) * np.std([1.0, 1.2, 0.9, 1.1], ddof=1) / 2
    assert result["real"].low == pytest.approx(1.05 - half)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_differences_are_refused_not_averaged(bad):
    with pytest.raises(ValueError, match="finite"):
        compare({"a": [0.1, bad, 0.2]})
    assert compare({}) == {}


# ---------------------------------------------------------------------------
# Simulation: calibration and power, fixed and racing
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "racing"])
@pytest.mark.parametrize("n_seeds", [3, 5, 10])
def test_null_studies_name_a_false_winner_at_most_5_percent_of_the_time(n_seeds, adaptive):
    r = simulate(DEFAULT_CANDIDATES, n_seeds, n_studies=N_STUDIES, adaptive=adaptive, seed=n_seeds)
    k = round(r["fwer"] * N_STUDIES)
    # not significantly above 5 % (one-sided binomial test at 1 %), and not absurdly conservative
    assert binomtest(k, N_STUDIES, ALPHA, alternative="greater").pvalue > 0.01, r
    assert 0.02 < r["fwer"] <= 0.055, r


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "racing"])
def test_a_1_5_sd_improvement_is_found_most_of_the_time_at_10_seeds(adaptive):
    r = simulate(DEFAULT_CANDIDATES, 10, effects=(1.5,), n_studies=N_STUDIES, adaptive=adaptive, seed=11)
    assert r["power"][0] > 0.9, r
    assert r["fwer"] <= 0.055, r  # the other four stay calibrated


def test_racing_costs_fewer_runs_and_almost_no_power():
    for effects in ((), (1.5,), (1.0,)):
        fixed = simulate(DEFAULT_CANDIDATES, 10, effects=effects, n_studies=N_STUDIES, seed=2)
        racing = simulate(DEFAULT_CANDIDATES, 10, effects=effects, n_studies=N_STUDIES, adaptive=True, seed=2)
        assert fixed["runs"] == 60 and racing["runs"] < 0.8 * fixed["runs"], (effects, racing)
        for i, p in fixed["power"].items():  # same simulated runs: racing only loses what futility stops
            assert racing["power"][i] <= p and p - racing["power"][i] < 0.01, (effects, fixed, racing)


# ---------------------------------------------------------------------------
# The racing plan on saved results
# ---------------------------------------------------------------------------

def test_rounds_grow_to_the_maximum():
    assert rounds(10) == [3, 5, 8, 10]
    assert rounds(3) == [3] and rounds(2) == [2] and rounds(5) == [3, 5]
    assert rounds(20) == [3, 5, 8, 12, 18, 20]


def _results(table: dict[str, list[float | None]], seeds):
    return {(k, s): v for k, vals in table.items() for s, v in zip(seeds, vals)}


def test_a_candidate_behind_the_reference_stops_and_the_others_race_on():
    seeds = list(range(1, 11))
    keys = ["gelu", "ahead", "behind", "failed"]
    state = plan(keys, "gelu", seeds, {})
    assert state.round == 1 and state.seeds == 3 and len(state.todo) == 12  # everyone, seeds 1-3
    done = _results({"gelu": [0.80, 0.81, 0.79], "ahead": [0.82, 0.80, 0.81],
                     "behind": [0.79, 0.80, 0.80], "failed": [None, None, None]}, seeds)
    state = plan(keys, "gelu", seeds, done)
    assert state.out == {"behind": 3, "failed": 3}
    assert state.round == 2 and sorted(state.todo) == [("ahead", 4), ("ahead", 5), ("gelu", 4), ("gelu", 5)]
    # the fixed design asks for everything at once
    assert len(plan(keys, "gelu", seeds, done, adaptive=False).todo) == 4 * 10 - 12


def test_the_race_ends_when_every_candidate_is_out():
    seeds = [1, 2, 3, 4, 5]
    done = _results({"gelu": [0.8, 0.8, 0.8], "a": [0.7, 0.79, 0.81], "b": [0.7, 0.7, 0.7]}, seeds)
    state = plan(["gelu", "a", "b"], "gelu", seeds, done)
    assert state.finished and state.out == {"a": 3, "b": 3} and state.active == ["gelu"]


def test_an_interrupted_race_resumed_at_any_run_ends_as_an_uninterrupted_one():
    seeds = list(range(1, 11))
    keys = ["gelu", "x", "y", "z"]
    rng = np.random.default_rng(0)
    oracle = {(k, s): float(rng.normal(0.3 if k == "x" else 0.0)) for k in keys for s in seeds}

    whole: dict = {}
    while not (state := plan(keys, "gelu", seeds, whole)).finished:
        whole.update({pair: oracle[pair] for pair in state.todo})  # a round at a time
    one_by_one: dict = {}
    while not (resumed := plan(keys, "gelu", seeds, one_by_one)).finished:
        pair = resumed.todo[0]
        one_by_one[pair] = oracle[pair]  # killed after every run, replayed from the saved ones
    assert one_by_one == whole and resumed.out == state.out
    assert state.out and len(whole) < len(keys) * len(seeds)  # someone stopped early: runs saved
