"""The Optuna backend against objectives that return NaN, +-inf, diverge, fail or get Ctrl-C.

A fake task stands in for training (these tests are about the backend, not the
evaluator): it returns real `evaluators.TrialResult`s, or, where a real
TrialResult would refuse it, a plain object with a non-finite score, as a buggy
or foreign evaluator might.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from optuna.trial import TrialState

import spaces
from evaluators import ACCURACY, TrialResult
from search.config import SearchConfig
from search.exceptions import SearchInterrupted, TooManyErrors
from search.optuna_backend import (MAX_CONSECUTIVE_ERRORS, MAX_DUPLICATES_IN_A_ROW, _evaluated, open_study,
                                   records_from_study, run_optuna)

FORMULAS = ["tanh(x)", "softplus(x)", "elu(x)", "mish(x)", "selu(x)", "hardswish(x)"]


@spaces.register_space
class _PickSpace(spaces.Space):
    """One categorical choice among a few formulas: duplicates are frequent."""

    name = "test_search_pick"

    def suggest(self, trial):
        return {"formula": trial.suggest_categorical("formula", FORMULAS)}

    def build(self, params):
        return spaces.parse(params["formula"])


class FakeTask:
    """evaluate(candidate) -> an outcome chosen by formula; reports one val_acc per epoch."""

    metric = ACCURACY
    precision = "fp32"

    def __init__(self, outcomes: dict, epochs: int = 2, default: float = 0.5):
        self.outcomes, self.epochs, self.default = outcomes, epochs, default
        self.calls: list[str] = []

    def to_dict(self):
        return {"fake": True, "epochs": self.epochs}

    def evaluate(self, candidate, seed=0, report=None, split="val"):
        self.calls.append(candidate.formula)
        out = self.outcomes.get(candidate.formula, self.default)
        if callable(out):
            out = out(candidate)
        if isinstance(out, BaseException):
            raise out
        if isinstance(out, TrialResult):
            return out
        history = []
        for epoch in range(1, self.epochs + 1):
            metrics = {"val_acc": out, "val_loss": 1.0, "epoch": epoch}
            history.append(metrics)
            if report is not None:
                report(epoch, metrics)
        if isinstance(out, float) and not math.isfinite(out):
            # A TrialResult refuses an ok status without a finite score; a foreign one may not.
            return SimpleNamespace(status="ok", score=out, reason=None, history=history,
                                   coefficients={}, wall_seconds=0.01, metrics=history[-1])
        return TrialResult("ok", out, history=history, metrics=history[-1], wall_seconds=0.01)


def _config(tmp_path, **kw):
    d = dict(space="test_search_pick", trials=10, epochs=2, sampler="random", pruner="none",
             runs_dir=str(tmp_path), study="s", heartbeat_interval=1, grace_period=2)
    d.update(kw)
    c = SearchConfig(**d).validate()
    c.study_dir.mkdir(parents=True, exist_ok=True)
    return c


def _run(config, task):
    return run_optuna(config, spaces.get_space(config.space), task, config.study_dir, progress=False)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "+inf", "-inf"])
def test_non_finite_objective_is_recorded_diverged_never_scored_and_the_study_goes_on(tmp_path, bad):
    outcomes = {f: bad for f in FORMULAS[:3]}
    outcomes.update({"mish(x)": 0.91, "gelu(x)": 0.6})
    config = _config(tmp_path, trials=9)
    records = _run(config, FakeTask(outcomes))

    study = open_study(config, FakeTask({}))
    assert _evaluated(study) == 9  # the study went on to its budget
    bad_trials = [t for t in study.trials if t.params.get("formula") in FORMULAS[:3]]
    assert bad_trials, "5 distinct draws of 6 formulas must include a non-finite one"
    for t in bad_trials:
        assert t.state == TrialState.PRUNED and t.value is None  # never a number
        assert t.user_attrs["status"] == "diverged"
        assert "not a finite number" in t.user_attrs["reason"] or "duplicate of" in t.user_attrs["reason"]
    assert all(math.isfinite(t.value) for t in study.trials if t.state == TrialState.COMPLETE)
    assert study.best_trial.user_attrs["formula"] == "mish(x)" or "mish(x)" not in \
        [t.params.get("formula") for t in study.trials]
    assert math.isfinite(study.best_value)
    by_number = {r.number: r for r in records}
    for t in bad_trials:
        assert by_number[t.number].status == "diverged" and by_number[t.number].score is None


def test_every_fingerprint_is_trained_once_and_duplicates_reuse_its_outcome(tmp_path):
    task = FakeTask({"tanh(x)": math.nan, "mish(x)": 0.8})
    config = _config(tmp_path, trials=9)
    records = _run(config, task)

    assert len(task.calls) == len(set(task.calls)) == 9  # no formula trained twice
    dups = [r for r in records if r.duplicate_of is not None]
    assert dups, "random draws of 6 formulas until 5 are distinct repeat some (seeded)"
    by_number = {r.number: r for r in records}
    for r in dups:
        orig = by_number[r.duplicate_of]
        assert r.fingerprint == orig.fingerprint and orig.duplicate_of is None
        assert (r.status, r.score) == (orig.status, orig.score)


def test_baselines_come_first_once_and_a_rerun_only_adds_the_missing_trials(tmp_path):
    task = FakeTask({})
    config = _config(tmp_path, trials=6)
    first = _run(config, task)
    assert [r.baseline for r in first[:4]] == list(spaces.BASELINES)
    assert [r.label for r in first[:4]] == list(spaces.BASELINES)
    assert all(r.params is None for r in first[:4])

    n_calls = len(task.calls)
    again = _run(config, task)  # same --trials: nothing to do
    assert len(task.calls) == n_calls and again == first

    more = _run(_config(tmp_path, trials=9), task)
    assert sum(r.duplicate_of is None for r in more) == 9 == len(task.calls)
    assert sorted(r.baseline for r in more if r.baseline) == sorted(spaces.BASELINES)


def test_ctrl_c_saves_finished_trials_and_the_rerun_retries_the_interrupted_one(tmp_path):
    calls = {"n": 0}

    def interrupt_once(candidate):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return 0.7

    task = FakeTask({f: interrupt_once for f in FORMULAS})
    config = _config(tmp_path, trials=8)
    with pytest.raises(SearchInterrupted) as info:
        _run(config, task)
    finished = [r for r in info.value.records if r.status == "ok"]
    assert len(finished) == 4  # the baselines ran before the first search trial
    interrupted = [r for r in info.value.records if r.status == "interrupted"]
    assert len(interrupted) == 1

    study = open_study(config, FakeTask({}))
    stopped = next(t for t in study.trials if t.number == interrupted[0].number)
    assert stopped.state == TrialState.FAIL
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["retry_history"] for t in waiting] == [[stopped.number]]

    records = _run(config, task)
    retry = next(r for r in records if r.number == waiting[0].number)
    assert retry.status == "ok" and retry.params == stopped.params
    assert f"retried as trial {retry.number}" in next(r for r in records if r.number == stopped.number).reason
    assert sum(r.status in ("ok", "pruned", "rejected", "diverged") and r.duplicate_of is None
               for r in records) == 8


def test_repeated_exceptions_stop_the_search_with_every_trial_recorded(tmp_path):
    task = FakeTask({f: RuntimeError("boom") for f in FORMULAS})
    config = _config(tmp_path, trials=20)
    with pytest.raises(TooManyErrors, match="boom"):
        _run(config, task)
    records = records_from_study(open_study(config, FakeTask({})))
    errors = [r for r in records if r.status == "error"]
    assert len(errors) == MAX_CONSECUTIVE_ERRORS
    assert all("RuntimeError: boom" in r.reason for r in errors)
    assert sum(r.status == "ok" for r in records) == 4  # the baselines


def test_diverged_and_rejected_results_are_pruned_with_their_reasons(tmp_path):
    diverged = TrialResult("diverged", None, reason="training loss is nan at step 3 (epoch 1)")
    rejected = TrialResult("rejected", None, reason="not finite on [-20, 20]")
    task = FakeTask({"tanh(x)": diverged, "elu(x)": rejected}, default=0.4)
    config = _config(tmp_path, trials=10, sampler="tpe", pruner="median")
    records = _run(config, task)
    seen = {r.formula: r for r in records if r.duplicate_of is None}
    assert seen["tanh(x)"].status == "diverged" and "nan" in seen["tanh(x)"].reason
    assert seen["elu(x)"].status == "rejected" and "finite" in seen["elu(x)"].reason
    study = open_study(config, FakeTask({}))
    assert study.best_trial.user_attrs["formula"] not in ("tanh(x)", "elu(x)")
    assert _evaluated(study) == 10


@pytest.mark.parametrize("sampler,pruner", [("tpe", "hyperband"), ("gp", "median"), ("random", "none")])
def test_every_sampler_and_pruner_runs_the_conditional_default_space(tmp_path, sampler, pruner):
    config = _config(tmp_path, space="eafo_default", trials=7, sampler=sampler, pruner=pruner)
    records = _run(config, FakeTask({}, default=0.3))
    assert sum(r.duplicate_of is None for r in records) == 7
    for r in records[4:]:
        assert spaces.get_space("eafo_default").build(r.params).fingerprint == r.fingerprint


def test_the_sampler_of_a_resumed_study_does_not_replay_the_first_draws(tmp_path):
    task = FakeTask({})
    _run(_config(tmp_path, space="eafo_default", trials=7), task)
    _run(_config(tmp_path, space="eafo_default", trials=10), task)
    study = open_study(_config(tmp_path, space="eafo_default", trials=10), FakeTask({}))
    params = [t.params for t in study.trials if t.params]
    assert params[3:6] != params[0:3]


@spaces.register_space
class _RejectSpace(spaces.Space):
    """Half of its candidates fail the sanity filter (exp(exp(x)) overflows)."""

    name = "test_search_reject"

    def suggest(self, trial):
        return {"which": trial.suggest_categorical("which", ["overflow", "tanh"])}

    def build(self, params):
        return spaces.parse("exp(exp(x))" if params["which"] == "overflow" else "tanh(x)")


def test_a_candidate_the_real_evaluator_rejects_is_recorded_and_the_study_goes_on(tmp_path, fashion_root):
    from evaluators import ProxyTask

    task = ProxyTask(epochs=1, train_size=64, val_size=50, batch_size=32, device="cpu",
                     data_root=fashion_root)
    config = _config(tmp_path, space="test_search_reject", trials=6, epochs=1)
    records = _run(config, task)
    rejected = [r for r in records if r.formula == "exp(exp(x))"]
    assert rejected, "the space has 2 candidates: both are drawn"
    assert all(r.status == "rejected" and r.score is None for r in rejected)
    assert "not finite" in rejected[0].reason
    assert {r.baseline for r in records if r.status == "ok"} >= set(spaces.BASELINES)


def test_duplicates_do_not_count_and_an_exhausted_space_ends_the_search(tmp_path, capsys):
    task = FakeTask({})
    config = _config(tmp_path, trials=20)  # 4 baselines + 6 formulas: only 10 distinct exist
    records = _run(config, task)
    assert len(task.calls) == 10 == sum(r.duplicate_of is None for r in records)
    tail = records[-MAX_DUPLICATES_IN_A_ROW:]
    assert all(r.duplicate_of is not None for r in tail)
    assert "space looks exhausted" in capsys.readouterr().err


def test_prefilter_trains_the_surrogates_pick_of_m_sampler_proposals_on_a_real_study(tmp_path, fashion_root,
                                                                                      monkeypatch):
    """--prefilter 4 on eafo_default with real training: every searched trial trains the
    proposal policy.Prefilter chose among 4 of the sampler's (the highest upper bound of
    the surrogate, fitted to the trials before it); the proposals not chosen leave no trial
    in the study; the baselines still come first."""
    import numpy as np

    from evaluators import ProxyTask
    from search import policy

    chosen = []
    original = policy.Prefilter.choose

    def spy(self, proposals, evaluated=frozenset()):
        index = original(self, proposals, evaluated)
        mean, std = self.surrogate.predict([b.candidate for b in proposals])
        chosen.append({"proposals": proposals, "index": index, "ucb": mean + self.surrogate.kappa * std,
                       "observed": len(self.surrogate._seen)})
        return index

    monkeypatch.setattr(policy.Prefilter, "choose", spy)
    task = ProxyTask(epochs=1, train_size=64, val_size=50, batch_size=32, device="cpu", data_root=fashion_root)
    config = _config(tmp_path, space="eafo_default", trials=7, epochs=1, sampler="tpe", prefilter=4)
    space = spaces.get_space("eafo_default", sigma=0.16)
    records = run_optuna(config, space, task, config.study_dir, progress=False)
    study = open_study(config, task)
    assert len(study.trials) == len(records) == 7
    assert all(t.state != TrialState.FAIL for t in study.trials)
    assert [r.baseline for r in records[:4]] == list(spaces.BASELINES)
    assert len(chosen) == 3 and all(len(c["proposals"]) == 4 for c in chosen)
    for c, r in zip(chosen, records[4:]):
        assert c["observed"] >= 4  # the four baselines at least: the surrogate is in use
        pick = c["proposals"][c["index"]]
        assert r.fingerprint == pick.fingerprint and r.candidate == pick.candidate.to_dict()
        built = [i for i, b in enumerate(c["proposals"]) if b.candidate is not None]
        assert c["ucb"][c["index"]] == pytest.approx(np.nanmax(c["ucb"][built]))
