"""search.confirm: which candidates are confirmed, the rounds of runs, checkpoints and resuming.

Real training on tiny Fashion-MNIST subsets (the in-process runner); the Ray
runner is tested against a Ray head in tests/test_ray_backend.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

import spaces
from evaluators import ACCURACY, BITS_PER_CHAR, ProxyTask
from search import confirm as cm
from search.records import ConfirmRecord, TrialRecord

BASELINES = dict(spaces.BASELINES)


def _rec(number, cand, score, baseline=None):
    return TrialRecord(number=number, status="ok", label=baseline or f"trial_{number}", baseline=baseline,
                       candidate=cand.to_dict(), formula=cand.formula, fingerprint=cand.fingerprint, score=score)


def _crrelu_like(eps, learnable=False):
    return spaces.parse("gelu(x) + eps*x*exp(-x**2/2)", init={"eps": eps}, learnable=["eps"] if learnable else [])


def test_near_duplicates_do_not_take_confirmation_slots():
    records = [_rec(i, c, 0.80, baseline=b) for i, (b, c) in enumerate(BASELINES.items())]
    records += [_rec(4, _crrelu_like(0.31), 0.90), _rec(5, _crrelu_like(0.33), 0.89),   # 0.02 apart: one
                _rec(6, _crrelu_like(0.31, learnable=True), 0.88),                       # learnable: another
                _rec(7, _crrelu_like(0.10), 0.87), _rec(8, spaces.parse("tanh(x)"), 0.70)]
    entries, skipped = cm.select(records, 3, BASELINES, ACCURACY)
    assert [e.label for e in entries] == ["trial_4", "trial_6", "trial_7", "gelu", "relu", "silu", "crrelu"]
    assert skipped == [("trial_5", "trial_4")]
    assert cm.near(_crrelu_like(0.31).to_dict(), _crrelu_like(0.36).to_dict())
    # near a baseline (confirmed anyway): CRReLU's formula with eps 0.03 instead of 0.01 takes no slot
    close_to_crrelu = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.03}, learnable=["eps"])
    entries, skipped = cm.select(records + [_rec(9, close_to_crrelu, 0.95)], 3, BASELINES, ACCURACY)
    assert skipped == [("trial_9", "crrelu"), ("trial_5", "trial_4")]
    assert [e.label for e in entries][:3] == ["trial_4", "trial_6", "trial_7"]
    assert not cm.near(_crrelu_like(0.31).to_dict(), _crrelu_like(0.37).to_dict())


def test_selection_follows_the_metric_direction_and_the_chosen_baselines():
    records = [_rec(0, BASELINES["gelu"], 1.6, baseline="gelu"), _rec(1, spaces.parse("tanh(x)"), 1.9),
               _rec(2, spaces.parse("elu(x)"), 1.5)]
    entries, _ = cm.select(records, 1, {"gelu": BASELINES["gelu"]}, BITS_PER_CHAR)
    assert [e.label for e in entries] == ["trial_2", "gelu"]  # 1.5 bits per character is the best
    assert entries[1].search_score == 1.6


@dataclass
class StopAfterEpoch(ProxyTask):
    """A real task that raises KeyboardInterrupt (Ctrl-C) right after one epoch of one formula,
    its checkpoint saved: an interrupted confirmation."""

    stop_formula: str = "relu(x)"
    stop_after: int = 1
    armed: bool = True

    def evaluate(self, candidate, seed=0, report=None, split="val", checkpoint=None):
        def stop(epoch, metrics):
            if self.armed and candidate.formula == self.stop_formula and epoch == self.stop_after:
                raise KeyboardInterrupt

        return super().evaluate(candidate, seed=seed, report=stop, split=split, checkpoint=checkpoint)


@pytest.mark.slow
def test_an_interrupted_confirmation_resumes_its_run_from_the_checkpoint(tmp_path, fashion_root):
    task = StopAfterEpoch(epochs=2, train_size=128, val_size=64, test_size=100, device="cpu",
                          data_root=fashion_root)
    baselines = {k: BASELINES[k] for k in ("gelu", "relu")}
    entries, _ = cm.select([], 0, baselines, ACCURACY)
    with pytest.raises(KeyboardInterrupt):
        cm.confirm(entries, [1, 2], tmp_path, cm.LocalRunner(task, tmp_path), ACCURACY, progress=False)
    saved = cm.load(tmp_path / cm.CONFIRM_FILE)
    assert [(r.label, r.seed) for r in saved] == [("gelu", 1)]  # relu seed 1 stopped after epoch 1
    relu = BASELINES["relu"].fingerprint
    assert cm.checkpoint_path(tmp_path, relu, 1).exists()

    task.armed = False
    done = cm.confirm(entries, [1, 2], tmp_path, cm.LocalRunner(task, tmp_path), ACCURACY, progress=False)
    assert done.complete and done.runs == 4 == done.fixed_runs
    by_pair = {(r.label, r.seed): r for r in done.records}
    assert by_pair[("relu", 1)].resumed_from_epoch == 1  # not trained from scratch
    assert by_pair[("gelu", 1)].resumed_from_epoch is None and by_pair[("relu", 2)].resumed_from_epoch is None
    assert by_pair[("gelu", 1)] == saved[0]  # kept, not run again
    assert not list((tmp_path / cm.CHECKPOINT_DIR).iterdir())  # finished runs leave no checkpoint
    lines = [json.loads(x) for x in (tmp_path / cm.CONFIRM_FILE).read_text().splitlines()]
    assert all(x["pid"] and x["node"] and x["device"] == "cpu" and x["precision"] == "fp32" for x in lines)


class ScriptedRunner:
    """Stands in for training where the scores are the point: each (label, seed) gets a fixed score."""

    def __init__(self, scores):
        self.scores, self.calls = scores, []

    def run(self, pairs):
        for entry, seed in pairs:
            self.calls.append((entry.label, seed))
            yield ConfirmRecord(label=entry.label, fingerprint=entry.fingerprint, candidate=entry.candidate,
                                seed=seed, status="ok", score=self.scores[entry.label](seed))


def test_racing_runs_fewer_runs_and_the_fixed_design_runs_them_all(tmp_path):
    entries, _ = cm.select([], 0, BASELINES, ACCURACY)
    seeds = list(range(1, 11))
    scores = {"gelu": lambda s: 0.80 + 0.001 * (s % 3), "relu": lambda s: 0.79, "silu": lambda s: 0.78,
              "crrelu": lambda s: 0.82 + 0.002 * (s % 2)}
    racing = ScriptedRunner(scores)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    done = cm.confirm(entries, seeds, tmp_path / "a", racing, ACCURACY, progress=False)
    assert done.complete and done.stopped == {"relu": 3, "silu": 3}
    assert done.runs == len(racing.calls) == 2 * 3 + 2 * 10 and done.fixed_runs == 40
    fixed = ScriptedRunner(scores)
    done = cm.confirm(entries, seeds, tmp_path / "b", fixed, ACCURACY, adaptive=False, progress=False)
    assert done.complete and not done.stopped and done.runs == len(fixed.calls) == 40
    # racing is a subset of the fixed design's runs, in the same order of seeds
    assert set(racing.calls) <= set(fixed.calls)
