"""search.results and search.plots: the leaderboard, the verdict against GELU, best.json, files."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import ttest_1samp

import spaces
from search.config import SearchConfig
from search.records import ConfirmRecord, TrialRecord
from evaluators import entropy_score
from evaluators.metrics import BITS_PER_CHAR
from search.results import build_leaderboard, format_table, verdict, write_results, zero_cost_agreement

CAND = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": -0.3}, learnable=["eps"])
WEAK = spaces.parse("tanh(x)")


def _trial(number, cand, score, baseline=None, status="ok", **kw):
    return TrialRecord(number=number, status=status, label=baseline or f"trial_{number}", baseline=baseline,
                       params=None if baseline else {"p": number}, candidate=cand.to_dict(),
                       formula=cand.formula, fingerprint=cand.fingerprint,
                       score=score if status == "ok" else None, **kw)


def _confirm(label, cand, scores, coef=None):
    per_layer = {k: [v + 0.05, v - 0.05] for k, v in (coef or {}).items()}  # two layers, mean = coef
    return [ConfirmRecord(label=label, fingerprint=cand.fingerprint, candidate=cand.to_dict(), seed=s,
                          status="ok", score=v, learned_coefficients=coef or {}, learned_per_layer=per_layer,
                          device="cpu", precision="fp32", pid=1, node="here")
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
    # paired differences +0.010, +0.005, -0.002: the one-sided t-test over 4 candidates (Holm)
    diffs = [0.010, 0.005, -0.002]
    assert top["mean_diff_vs_gelu"] == pytest.approx(np.mean(diffs))
    assert top["p_value"] == pytest.approx(ttest_1samp(diffs, 0, alternative="greater").pvalue)
    assert top["n_pairs"] == 3 and top["beats_gelu"] is False
    assert top["ci_low"] < 0 < top["ci_high"]
    assert top["mean"] == pytest.approx((0.860 + 0.845 + 0.858) / 3)
    assert top["search_score"] == 0.86 and top["search_trial"] == 4
    # learned coefficients: the mean over layers and seeds, labelled; the values behind it per seed
    assert top["learned_coefficients"] == {"eps": pytest.approx(-0.25)}
    assert top["coefficients"] == "eps -0.3->-0.25"
    assert rows[[r["label"] for r in rows].index("gelu")]["coefficients"] == ""
    # searched but unconfirmed: after every confirmed row; rejected and duplicates never appear
    assert [r["label"] for r in rows[5:]] == ["trial_5"] and rows[5]["confirmed"] is False
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5, 6]


def test_a_claim_is_the_holm_corrected_t_test_over_every_confirmed_candidate():
    # +0.010, +0.010, +0.020 over 3 seeds: p = 0.038 alone, but 4 candidates are compared
    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.850, 3: 0.880}))
    top = rows[0]
    assert top["label"] == "trial_4" and top["beats_gelu"] is False
    assert top["p_value"] < 0.05 < top["p_holm"]
    assert top["ci_low"] < 0 and top["ci_level"] == pytest.approx(0.05 / 4)
    # a consistent, large improvement survives the correction, and its interval is above 0
    rows = build_leaderboard(_records(), _confirmations({1: 0.900, 2: 0.890, 3: 0.911}))
    top = rows[0]
    assert top["beats_gelu"] is True and top["p_holm"] <= 0.05 and top["ci_low"] > 0
    assert {r["label"] for r in rows if r["beats_gelu"]} == {"trial_4"}
    summary = verdict(rows, complete=True)
    assert "trial_4 beats GELU by +5.03 pp" in summary and "Holm" in summary
    assert "a study with no real winner names one" in summary  # what the decision means, simulated


def test_a_minimizing_metric_ranks_lower_first_and_decides_on_improvements():
    """Bits per character: lower is better. The same machinery, through the metric."""
    gelu = {1: 1.50, 2: 1.52, 3: 1.49, 4: 1.51, 5: 1.50}
    better = {s: v - 0.05 + 0.002 * (s % 2) for s, v in gelu.items()}   # ~0.05 bpc lower
    worse = {s: v + 0.04 for s, v in gelu.items()}
    conf = _confirm("gelu", spaces.BASELINES["gelu"], gelu) + _confirm("trial_4", CAND, better) \
        + _confirm("trial_5", WEAK, worse)
    recs = [_trial(0, spaces.BASELINES["gelu"], 1.6, baseline="gelu"), _trial(4, CAND, 1.55),
            _trial(5, WEAK, 1.7), _trial(6, spaces.parse("elu(x)"), 1.58), _trial(7, spaces.parse("mish(x)"), 1.65)]
    rows = build_leaderboard(recs, conf, BITS_PER_CHAR)
    assert [r["label"] for r in rows] == ["trial_4", "gelu", "trial_5", "trial_6", "trial_7"]
    assert rows[0]["metric"] == "test_bpc" and rows[0]["direction"] == "minimize"
    assert rows[0]["mean_diff_vs_gelu"] == pytest.approx(0.05 - 0.002 * 3 / 5)  # an improvement: positive
    assert rows[0]["beats_gelu"] is True and rows[2]["beats_gelu"] is False
    assert rows[2]["mean_diff_vs_gelu"] == pytest.approx(-0.04)
    table = format_table(rows, BITS_PER_CHAR)
    assert "test bits per character" in table and "vs GELU, bpc" in table
    assert "trial_4 beats GELU by +0.049 bpc" in verdict(rows, True, BITS_PER_CHAR)
    # the zero-cost check orients the score too: a lower bpc is a better search score
    agreement = zero_cost_agreement(rows)
    assert agreement["y"] == [-r["search_score"] for r in rows]


def test_rows_of_one_formula_are_told_apart_by_their_coefficients_and_a_learned_value_is_called_a_mean():
    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}))
    table = format_table(rows)
    same = {r["label"]: r["coefficients"] for r in rows if r["formula"] == CAND.formula}
    assert same == {"trial_4": "eps -0.3->-0.25", "crrelu": "eps 0.01->0.02"}  # init -> learned mean
    assert all(any(line.split()[1] == label and text in line for line in table.splitlines())
               for label, text in same.items())
    assert "learned is the MEAN over the model's activation layers and over the confirmation seeds" \
        in " ".join(table.split())  # the note is wrapped
    fixed = build_leaderboard([_trial(0, spaces.parse("x*sigmoid(a*x)", init={"a": 1.1}), 0.8)], [])
    assert fixed[0]["coefficients"] == "a=1.1" and "MEAN" not in format_table(fixed)  # nothing learned


def test_write_results_writes_every_file_atomically_and_says_when_nothing_beats_gelu(tmp_path):
    config = SearchConfig(runs_dir=str(tmp_path), study="s")
    summary = write_results(tmp_path, _records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}), config)
    assert "No candidate beats GELU" in summary.text
    assert "--confirm-seeds 10" in summary.text  # three seeds miss most real improvements
    for name in ("trials.json", "leaderboard.json", "leaderboard.csv", "best.json", "summary.txt",
                 "activations.png", "history.png", "zero_cost.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["label"] == "trial_4" and best["params"] == {"p": 4}
    assert best["learned_coefficients"] == {"eps": pytest.approx(-0.25)}
    assert best["learned_coefficients_per_seed"] == {"1": {"eps": [-0.2, -0.3]}, "2": {"eps": [-0.2, -0.3]},
                                                     "3": {"eps": [-0.2, -0.3]}}
    assert "means over the activation layers" in best["learned_coefficients_are"] and \
        "3 confirmation seeds" in best["learned_coefficients_are"]  # the mean says it is one
    assert best["confirmed"]["seeds"] == [1, 2, 3] and best["confirmed"]["n_seeds"] == 3
    assert best["confirmed"]["metric"] == "test_acc" and best["confirmed"]["direction"] == "maximize"
    assert best["vs_gelu"]["beats_gelu"] is False and "Holm" in best["vs_gelu"]["decision"]
    assert best["hardware"]["devices"] == ["cpu"] and best["hardware"]["precisions"] == ["fp32"]
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


def test_every_row_carries_its_zero_cost_scores_at_the_studys_sigma_and_the_summary_ranks_by_negentropy(tmp_path):
    """Rows carry evaluators.entropy_score's features at the sigma of the study's sigma.json;
    the printed tau is negentropy (scale-free, bin-free) against the search score."""
    from scipy.stats import kendalltau

    from search.results import ZERO_COST_KEYS
    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}), sigma=0.16)
    for r in rows:
        expected = entropy_score(spaces.Candidate.from_dict(r["candidate"]), 0.16)
        for key in ZERO_COST_KEYS:
            assert r[key] == pytest.approx(expected[key]), key
    relu = next(r for r in rows if r["label"] == "relu")
    assert relu["atom_mass"] == pytest.approx(0.5, abs=1e-3)  # ReLU's point mass at 0
    at_one = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}))
    assert at_one[0]["negentropy"] != pytest.approx(rows[0]["negentropy"])  # sigma matters
    # search scores 0.80..0.83 (baselines), 0.86 (CAND), 0.70 (tanh): tau of negentropy against them
    tau = kendalltau([r["negentropy"] for r in rows], [r["search_score"] for r in rows]).statistic
    agreement = zero_cost_agreement(rows)
    assert agreement["n"] == 6 and agreement["tau"] == pytest.approx(tau)
    (tmp_path / "sigma.json").write_text(json.dumps({"setting": "measured", "sigma": 0.16, "preactivation": None}))
    summary = write_results(tmp_path, _records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}),
                            SearchConfig(runs_dir=str(tmp_path), study="s"), plots=False)
    assert f"negentropy (higher first) and the ranking by search score have Kendall tau {tau:+.2f}" \
        in summary.text
    header = (tmp_path / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert "output_entropy" in header and "wafbc_distance" in header
    assert "learned_coefficients_mean" in header and "learned_coefficients" not in header  # says it is a mean
    assert {"negentropy", "wafbc_distance", "atom_mass", "output_entropy"} <= set(header)
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["sigma"] == {"setting": "measured", "sigma": 0.16, "preactivation": None}
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert [r["negentropy"] for r in board] == pytest.approx([r["negentropy"] for r in rows])


def test_a_study_without_sigma_json_is_scored_at_the_papers_sigma(tmp_path):
    """Studies from before --sigma ran at sigma = 1: their rows and best.json say so."""
    summary = write_results(tmp_path, _records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}),
                            SearchConfig(runs_dir=str(tmp_path), study="s"), plots=False)
    assert summary.best["sigma"]["sigma"] == 1.0
    expected = entropy_score(spaces.Candidate.from_dict(summary.rows[0]["candidate"]), 1.0)
    assert summary.rows[0]["negentropy"] == pytest.approx(expected["negentropy"])
    (tmp_path / "sigma.json").write_text("{not json")
    from search.exceptions import UsageError
    with pytest.raises(UsageError, match="sigma.json is not a readable sigma file"):
        write_results(tmp_path, _records(), [], SearchConfig(runs_dir=str(tmp_path), study="s"), plots=False)


def test_zero_cost_agreement_needs_four_scored_rows():
    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}))
    assert zero_cost_agreement(rows[:3]) is None


def test_a_candidate_the_zero_cost_score_cannot_handle_leaves_the_columns_empty():
    from search.results import _zero_cost
    empty = {"negentropy": None, "wafbc_distance": None, "atom_mass": None, "output_entropy": None}
    assert _zero_cost({"formula": "x +* 1", "coefficients": []}) == empty
    assert _zero_cost(None) == empty


# ---------------------------------------------------------------------------
# Plots: what they draw, checked on the figure itself
# ---------------------------------------------------------------------------

@pytest.fixture
def figures(monkeypatch):
    """The figures the plots would save, kept open for inspection."""
    import matplotlib

    from search import plots

    matplotlib.use("Agg", force=True)
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: kept.append(fig))
    yield kept
    import matplotlib.pyplot as plt
    for fig in kept:
        plt.close(fig)


def _overlapping(texts, renderer):
    boxes = [t.get_window_extent(renderer) for t in texts]
    return [(a.get_text(), b.get_text()) for i, (a, ba) in enumerate(zip(texts, boxes))
            for b, bb in zip(texts[i + 1:], boxes[i + 1:]) if ba.overlaps(bb)]


def test_activation_curves_are_told_apart_and_clipped_ones_are_marked(figures, tmp_path):
    from search import plots

    big = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 3.0})
    conf = _confirmations({1: 0.860, 2: 0.845, 3: 0.858}) + _confirm("trial_8", big, {1: 0.85, 2: 0.85, 3: 0.85})
    rows = build_leaderboard(_records() + [_trial(8, big, 0.8)], conf)
    drawn = plots.plot_activations(tmp_path / "a.png", rows)
    styles = [v["style"] for v in drawn.values()]
    assert len(styles) == len(set(styles)) == 6  # gelu, relu and 4 candidates, each its own line and marker
    # trial_4 and crrelu share a formula: their legend entries differ by their coefficients
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert any("trial_4" in t and "eps -0.3->-0.25" in t for t in legend)
    assert any("crrelu" in t and "eps 0.01->0.02" in t for t in legend)
    # f'(0) = 4 and f(-1) = -1.82 leave the axes; gelu stays inside both
    assert drawn["trial_8"]["clipped"] == ["f(x)", "f'(x)"] and not drawn["gelu"]["clipped"]
    d_legend = [t.get_text() for t in figures[0].axes[1].get_legend().get_texts()]
    assert any("clipped" in t for t in d_legend) and any("clipped" in t for t in legend)  # both panels


def test_zero_cost_plots_the_quantities_whose_tau_it_prints(figures, tmp_path):
    from scipy.stats import kendalltau

    from search import plots

    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}), sigma=0.16)
    plots.plot_zero_cost(tmp_path / "z.png", rows, sigma=0.16)
    ax = figures[0].axes[0]
    xy = ax.collections[0].get_offsets()
    tau = kendalltau(xy[:, 0], xy[:, 1]).statistic
    assert f"{tau:+.2f}" in ax.get_title()
    assert "negentropy" in ax.get_xlabel() and "0.16" in ax.get_xlabel()
    assert sorted(xy[:, 0]) == pytest.approx(sorted(r["negentropy"] for r in rows))


def test_point_labels_never_overprint(figures, tmp_path):
    import matplotlib.pyplot as plt

    from search import plots

    fig, ax = plt.subplots(figsize=(4, 3))
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(0, 0.01, 14), rng.normal(0, 0.01, 14)  # a crowd: not every label fits
    ax.scatter(xs, ys)
    ax.set_xlim(-0.2, 0.2)
    ax.set_ylim(-0.2, 0.2)
    labels = [f"trial_{i}" for i in range(14)]
    placed = plots.place_labels(ax, xs, ys, labels)
    renderer = fig.canvas.get_renderer()
    assert placed and not _overlapping(placed, renderer)
    left_out = [t.get_text() for t in fig.texts]
    assert len(placed) == 14 or (left_out and all(f"trial_{i}" in left_out[0] for i in range(14)
                                                  if all(p.get_text() != f"trial_{i}" for p in placed)))
    plt.close(fig)


def test_a_gated_study_names_its_curves_geglu_and_plots_say_which_way_is_better(figures, tmp_path):
    from search import plots
    from search.baselines import display_name

    rows = build_leaderboard(_records(), _confirmations({1: 0.860, 2: 0.845, 3: 0.858}))
    for r in rows:
        r["name"] = display_name(r["label"], "glu")
    drawn = plots.plot_activations(tmp_path / "a.png", rows, mlp="glu")
    assert (drawn["gelu"]["name"], drawn["relu"]["name"]) == ("GEGLU", "ReGLU")
    legend = " ".join(t.get_text() for t in figures[0].axes[0].get_legend().get_texts())
    assert "GEGLU" in legend and "crrelu-glu" in legend and "gated MLP" in figures[0]._suptitle.get_text()
    plots.plot_history(tmp_path / "h.png", _records(), BITS_PER_CHAR, mlp="glu")
    assert figures[1].axes[0].get_ylabel() == "validation bits per character (lower is better)"


def test_the_history_draws_a_duplicate_hollow_and_keeps_labels_off_the_legend(figures, tmp_path):
    from matplotlib.colors import to_rgba

    from search import plots

    plots.plot_history(tmp_path / "h.png", _records())
    ax = figures[0].axes[0]
    assert "1 duplicate, not trained" in ax.get_title()
    by_label = dict(zip([t.get_text() for t in ax.get_legend().get_texts()], ax.get_legend().legend_handles))
    hollow = next(c for c in ax.collections if c.get_label().startswith("duplicate"))
    assert hollow.get_offsets().tolist() == [[6, 86.0]]  # trial 6, the duplicate of trial 4
    assert hollow.get_facecolors().size == 0 or to_rgba(hollow.get_facecolors()[0])[3] == 0
    assert "duplicate (earlier score, not trained)" in by_label
    trials = next(c for c in ax.collections if c.get_label() == "trial")
    assert [6, 86.0] not in trials.get_offsets().tolist()
    renderer = figures[0].canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    labels = [t for t in ax.texts if t.get_text() in ("gelu", "relu", "silu", "crrelu")]
    assert len(labels) == 4 and not any(t.get_window_extent(renderer).overlaps(legend_box) for t in labels)


def test_long_formulas_and_many_coefficients_wrap_in_the_legend_and_leave_the_panels_their_width(figures, tmp_path):
    from search import plots

    long = spaces.parse("relu(x) + eps*x*exp(-x**2/2) + beta*tanh(gamma*x) + delta*x**2*exp(-x**2)",
                        init={"eps": 0.0123, "beta": -0.314, "gamma": 1.234, "delta": 0.05},
                        learnable=["eps", "beta", "gamma"])
    conf = _confirmations({1: 0.860, 2: 0.845, 3: 0.858}) + _confirm(
        "trial_8", long, {1: 0.85, 2: 0.85, 3: 0.86}, {"eps": 0.0234, "beta": -0.2871, "gamma": 1.3012})
    plots.plot_activations(tmp_path / "a.png", build_leaderboard(_records() + [_trial(8, long, 0.85)], conf))
    fig = figures[0]
    entry = next(t.get_text() for t in fig.axes[0].get_legend().get_texts() if "trial_8" in t.get_text())
    assert "gamma 1.23->1.3" in entry and "delta=0.05" in entry  # every coefficient, fixed and learned
    assert all(len(line) <= plots.LEGEND_WIDTH + 4 for line in entry.splitlines()) and "\n" in entry
    assert all(ax.get_position().width > 0.38 for ax in fig.axes[:2])  # not squeezed by a wide legend


def test_tables_print_long_constants_with_four_significant_digits_and_files_keep_them_exact():
    """A derived correction at sigma 0.158 carries exp(-20.0812507814035*x**2): the console
    table and the verdict shorten it, leaderboard.json keeps the exact formula."""
    from search.results import short_numbers

    assert short_numbers("eps*x*exp(-20.0812507814035*x**2) + leaky_relu(x)") == \
        "eps*x*exp(-20.08*x**2) + leaky_relu(x)"
    assert short_numbers("relu(x) + 0.01*x + 1.5*x**2") == "relu(x) + 0.01*x + 1.5*x**2"  # short ones stay
    rows = [{"rank": 1, "label": "trial_1", "formula": "eps*x*exp(-20.0812507814035*x**2) + relu(x)",
             "coefficients": "eps=0.02", "confirmed": False, "mean": None, "std": None, "n_seeds": 0,
             "mean_diff_vs_gelu": None, "ci_low": None, "ci_high": None, "beats_gelu": False,
             "search_score": 0.7}]
    table = format_table(rows)
    assert "exp(-20.08*x**2)" in table and "20.0812507814035" not in table
