"""search.results and search.plots: the leaderboard, the verdict against GELU, best.json, files."""
from __future__ import annotations

import json

import pytest

import spaces
from search.config import SearchConfig
from search.records import ConfirmRecord, TrialRecord
from evaluators import entropy_score
from search.results import build_leaderboard, write_results, zero_cost_agreement

CAND = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": -0.3}, learnable=["eps"])
WEAK = spaces.parse("tanh(x)")


def _trial(number, cand, score, baseline=None, status="ok", **kw):
    return TrialRecord(number=number, status=status, label=baseline or f"trial_{number}", baseline=baseline,
                       params=None if baseline else {"p": number}, candidate=cand.to_dict(),
                       formula=cand.formula, fingerprint=cand.fingerprint,
                       score=score if status == "ok" else None, **kw)


def _confirm(label, cand, scores, coef=None):
    return [ConfirmRecord(label=label, fingerprint=cand.fingerprint, candidate=cand.to_dict(), seed=s,
                          status="ok", score=v, learned_coefficients=coef or {})
            for s, v in scores.items()]


def _records():
    recs = [_trial(i, c, 0.80 + 0.01 * i, baseline=label) for i, (label, c) in enumerate(spaces.BASELINES.items())]
    recs += [_trial(4, CAND, 0.86, learned_coefficients={"eps": -0.2}),
             _trial(5, WEAK, 0.70),
             _trial(6, CAND, 0.86, duplicate_of=4),
             _trial(7, spaces.parse("exp(exp(x))"), None, status="rejected", reason="not finite")]
    return recs


def _confirmations(cand_scores):
    gelu = {1: 0.850, 2: 0.840, 3: 0.860}
    out = _confirm("gelu", spaces.BASELINES["gelu"], gelu)
    out += _confirm("relu", spaces.BASELINES["relu"], {1: 0.845, 2: 0.842, 3: 0.851})
    out += _confirm("silu", spaces.BASELINES["silu"], {1: 0.848, 2: 0.839, 3: 0.859})
    out += _confirm("crrelu", spaces.BASELINES["crrelu"], {1: 0.846, 2: 0.841, 3: 0.852}, {"eps": 0.02})
    out += _confirm("trial_4", CAND, cand_scores, {"eps": -0.25})
    return out


def test_rows_rank_on_confirmed_means_and_compare_with_gelu_on_the_same_seeds():
    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}))
    assert [r["label"] for r in rows][:5] == ["trial_4", "gelu", "silu", "crrelu", "relu"]
    top = rows[0]
    # paired differences: +0.010, +0.005, -0.002 -> mean 0.004333; 3 seeds: CI = [min, max]
    assert top["mean_diff_vs_gelu"] == pytest.approx(0.013 / 3)
    assert (top["ci_low"], top["ci_high"]) == (pytest.approx(-0.002), pytest.approx(0.010))
    assert top["beats_gelu"] is False
    assert top["mean"] == pytest.approx((0.860 + 0.845 + 0.858) / 3)
    assert top["search_score"] == 0.86 and top["search_trial"] == 4
    assert top["learned_coefficients"] == {"eps": pytest.approx(-0.25)}
    # searched but unconfirmed: after every confirmed row; rejected and duplicates never appear
    assert [r["label"] for r in rows[5:]] == ["trial_5"] and rows[5]["confirmed"] is False
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_beating_gelu_needs_a_ci_above_zero_on_at_least_three_seeds():
    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.850, 3: 0.870}))
    assert rows[0]["label"] == "trial_4" and rows[0]["beats_gelu"] is True
    two = [c for c in _confirmations({1: 0.860, 2: 0.850}) if c.seed < 3]
    rows = build_leaderboard(_records(), two)
    assert rows[0]["ci_low"] > 0 and rows[0]["beats_gelu"] is False  # two seeds prove nothing


def test_write_results_writes_every_file_atomically_and_says_when_nothing_beats_gelu(tmp_path):
    config = SearchConfig(runs_dir=str(tmp_path), study="s")
    summary = write_results(tmp_path, _records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}), config)
    assert "No candidate beats GELU beyond noise" in summary.text
    assert "wide" in summary.text  # three seeds
    for name in ("trials.json", "leaderboard.json", "leaderboard.csv", "best.json", "summary.txt",
                 "activations.png", "history.png", "zero_cost.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["label"] == "trial_4" and best["params"] == {"p": 4}
    assert best["learned_coefficients"] == {"eps": pytest.approx(-0.25)}
    assert best["confirmed"]["seeds"] == [1, 2, 3] and best["confirmed"]["n_seeds"] == 3
    # 8 trials, one a duplicate: --trials counts the 7 that evaluated a candidate (rejected included)
    assert best["search"] == {"backend": "optuna", "n_trials": 7, "sampler": "tpe"}
    trials = json.loads((tmp_path / "trials.json").read_text())
    assert [t["status"] for t in trials].count("rejected") == 1
    for name in ("trials.json", "leaderboard.json", "best.json"):  # strict JSON: no NaN anywhere
        json.loads((tmp_path / name).read_text(), parse_constant=lambda c: pytest.fail(f"{name}: {c}"))


def test_an_unfinished_confirmation_writes_a_partial_leaderboard_but_no_best_json(tmp_path):
    config = SearchConfig(runs_dir=str(tmp_path), study="s")
    summary = write_results(tmp_path, _records(), [], config, complete=False, plots=False)
    assert not (tmp_path / "best.json").exists() and summary.best is None
    rows = json.loads((tmp_path / "leaderboard.json").read_text())
    assert rows and not any(r["confirmed"] for r in rows)
    assert "not confirmed" in summary.text and "partial" in summary.text


def test_every_row_carries_its_zero_cost_scores_and_the_summary_says_how_well_they_ranked(tmp_path):
    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}))
    for r in rows:
        expected = entropy_score(spaces.Candidate.from_dict(r["candidate"]))
        assert r["output_entropy"] == pytest.approx(expected["output_entropy"])
        assert r["wafbc_distance"] == pytest.approx(expected["wafbc_distance"])
    # search scores 0.80..0.83 (baselines), 0.86 (CAND), 0.70 (tanh): tau of -entropy against them
    from scipy.stats import kendalltau
    tau = kendalltau([-r["output_entropy"] for r in rows], [r["search_score"] for r in rows]).statistic
    agreement = zero_cost_agreement(rows)
    assert agreement["n"] == 6 and agreement["tau"] == pytest.approx(tau)
    summary = write_results(tmp_path, _records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}),
                            SearchConfig(runs_dir=str(tmp_path), study="s"), plots=False)
    assert f"Kendall tau {tau:+.2f}" in summary.text
    header = (tmp_path / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert "output_entropy" in header and "wafbc_distance" in header


def test_zero_cost_agreement_needs_four_scored_rows():
    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}))
    assert zero_cost_agreement(rows[:3]) is None


def test_a_candidate_the_zero_cost_score_cannot_handle_leaves_the_columns_empty():
    from search.results import _zero_cost
    assert _zero_cost({"formula": "x +* 1", "coefficients": []}) == \
        {"output_entropy": None, "wafbc_distance": None}
    assert _zero_cost(None) == {"output_entropy": None, "wafbc_distance": None}
