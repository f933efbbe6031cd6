"""The language-model track end to end, gated MLPs and the transfer check (search.transfer).

One tiny study on the real Shakespeare corpus, with gated MLPs and a transfer to
Fashion-MNIST, is run once for the module: a few seconds of training per run."""
from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from scipy.stats import kendalltau

from evaluators import ProxyTask
from search import run, transfer
from search.confirm import Entry
from search.records import ConfirmRecord

STUDY = "eafo_default-shakespeare-gpt-nano-glu"
TINY_LM = ["--dataset", "shakespeare", "--mlp", "glu", "--train-size", "32", "--val-size", "1024",
           "--test-size", "1024", "--epochs", "1", "--trials", "5", "--confirm-top", "1", "--confirm-seeds", "2",
           "--no-racing", "--device", "cpu"]
TINY_IMAGES = ["--transfer-to", "fashion_mnist:vit-nano", "--transfer-set", "train_size=200",
               "--transfer-set", "val_size=200", "--transfer-set", "test_size=200", "--transfer-set", "epochs=1"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, fashion_root):
    runs = tmp_path_factory.mktemp("runs")
    argv = TINY_LM + TINY_IMAGES + ["--runs-dir", str(runs)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EAFO_DATA_ROOT", fashion_root)  # the text falls back to the installed corpus
        rc = run.main(argv)
    return rc, runs / STUDY


def test_a_language_model_study_minimises_bits_per_character_everywhere(lm_run):
    rc, study_dir = lm_run
    assert rc == 0
    config = json.loads((study_dir / "config.json").read_text())
    assert (config["dataset"], config["model"], config["mlp"]) == ("shakespeare", "gpt-nano", "glu")
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{study_dir / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trials = json.loads((study_dir / "trials.json").read_text())
    assert all("val_bpc" in t["history"][-1] for t in trials if t["status"] == "ok")

    rows = json.loads((study_dir / "leaderboard.json").read_text())
    confirmed = [r for r in rows if r["confirmed"]]
    assert all(r["metric"] == "test_bpc" and r["direction"] == "minimize" for r in rows)
    means = [r["mean"] for r in confirmed]
    assert means == sorted(means)  # lowest bits per character first
    gelu = next(r for r in confirmed if r["label"] == "gelu")
    ref = dict(zip(gelu["seeds"], gelu["per_seed"]))
    for r in confirmed:  # "vs GELU" is an improvement: positive means fewer bits per character
        assert r["mean_diff_vs_gelu"] == pytest.approx(np.mean([ref[s] - v for s, v in zip(r["seeds"], r["per_seed"])]))
    best = json.loads((study_dir / "best.json").read_text())
    assert best["label"] == confirmed[0]["label"]
    assert (best["confirmed"]["metric"], best["confirmed"]["direction"]) == ("test_bpc", "minimize")
    assert (best["task"]["batch_size"], best["task"]["lr"]) == (32, 5e-3)  # the text recipe, not the image one


def test_a_gated_study_names_its_baselines_geglu_and_swiglu(lm_run):
    _, study_dir = lm_run
    summary = (study_dir / "summary.txt").read_text()
    assert "GEGLU" in summary and "SwiGLU" in summary and "ReGLU" in summary and "vs GEGLU" in summary
    assert "bits per character: lower is better" in summary
    rows = json.loads((study_dir / "leaderboard.json").read_text())
    names = {r["label"]: r["name"] for r in rows}
    assert (names["gelu"], names["silu"], names["crrelu"]) == ("GEGLU", "SwiGLU", "crrelu-glu")
    assert json.loads((study_dir / "best.json").read_text())["task"]["mlp"] == "glu"


def test_the_transfer_check_trains_every_confirmed_candidate_on_the_second_task_and_compares_rankings(lm_run):
    _, study_dir = lm_run
    rep = json.loads((study_dir / transfer.REPORT_JSON).read_text())
    assert (rep["first"]["dataset"], rep["second"]["dataset"]) == ("shakespeare", "fashion_mnist")
    assert (rep["first"]["direction"], rep["second"]["direction"]) == ("minimize", "maximize")
    confirmed = [r for r in json.loads((study_dir / "leaderboard.json").read_text()) if r["confirmed"]]
    assert {r["label"] for r in rep["rows"]} == {r["label"] for r in confirmed}
    assert all(r["first"]["n"] == 2 and r["second"]["n"] == 2 for r in rep["rows"])  # the same two seeds
    runs = [json.loads(x) for x in (study_dir / "transfer-fashion_mnist-vit-nano" / "confirm.jsonl").read_text()
            .splitlines()]
    assert {r["seed"] for r in runs} == {1, 2} and all(0 <= r["score"] <= 1 for r in runs)
    tau = kendalltau([-r["first"]["mean"] for r in rep["rows"]], [r["second"]["mean"] for r in rep["rows"]])
    assert rep["kendall_tau"] == pytest.approx(tau.statistic) and rep["p"] == pytest.approx(tau.pvalue)
    assert "Kendall tau" in (study_dir / transfer.REPORT_TEXT).read_text()


def test_a_rerun_of_a_finished_transfer_trains_nothing(lm_run, fashion_root, monkeypatch, capsys):
    _, study_dir = lm_run

    def no_training(*a, **k):
        raise AssertionError("a rerun of a finished study must not train")

    monkeypatch.setattr(ProxyTask, "evaluate", no_training)
    monkeypatch.setenv("EAFO_DATA_ROOT", fashion_root)
    assert run.main(TINY_LM + TINY_IMAGES + ["--runs-dir", str(study_dir.parent)]) == 0
    assert "Transfer: the rankings" in capsys.readouterr().out
    # other settings for the same transfer task are refused before anything runs
    changed = [x if x != "epochs=1" else "epochs=2" for x in TINY_IMAGES]
    assert run.main(TINY_LM + changed + ["--runs-dir", str(study_dir.parent)]) == 2
    assert "transfer task" in capsys.readouterr().err


def test_rankings_are_compared_in_each_tasks_direction():
    text, image = ProxyTask.for_dataset("shakespeare"), ProxyTask()
    entries = [Entry(n, {"formula": n}, n, None) for n in ("gelu", "a", "b")]

    def recs(scores):
        return [ConfirmRecord(label=n, fingerprint=n, candidate={}, seed=s, status="ok", score=v)
                for n, vs in scores.items() for s, v in zip((1, 2), vs)]

    bpc = recs({"gelu": [3.3, 3.4], "a": [3.0, 3.1], "b": [3.6, 3.7]})    # a best, then gelu, then b
    acc = recs({"gelu": [0.80, 0.81], "a": [0.85, 0.86], "b": [0.70, 0.72]})  # the same order
    rep = transfer.report(entries, bpc, text, acc, image, mlp="glu")
    assert rep["kendall_tau"] == pytest.approx(1.0)
    assert [r["first"]["rank"] for r in rep["rows"]] == [2, 1, 3]
    assert [r["name"] for r in rep["rows"]] == ["GEGLU", "a-glu", "b-glu"]
    flipped = recs({"gelu": [0.80, 0.81], "a": [0.70, 0.71], "b": [0.85, 0.86]})
    assert transfer.report(entries, bpc, text, flipped, image)["kendall_tau"] == pytest.approx(-1.0)
    assert "Kendall tau +1.00" in transfer.format_report(rep)
