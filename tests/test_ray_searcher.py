"""The Ray backend's driver-side parts, without a cluster: the searcher (baselines
first, deduplication by fingerprint, its saved state) and the schedulers' rules."""
from __future__ import annotations

import json
import math
import os

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before Ray is imported
pytest.importorskip("ray.tune")

import spaces  # noqa: E402
from evaluators import ACCURACY  # noqa: E402
from ray.tune.schedulers import TrialScheduler  # noqa: E402
from ray_helpers import FewBases  # noqa: E402  (relu, gelu: the baselines again; tanh: new)
from search import policy  # noqa: E402
from search import ray_backend as rb  # noqa: E402
from search.policy import Outcome  # noqa: E402

BASELINE_FPS = {label: c.fingerprint for label, c in spaces.BASELINES.items()}
METRIC = ACCURACY.key("val")


class _Task:
    metric = ACCURACY


def final(status="ok", score=0.5):
    o = Outcome(status, score, None if status == "ok" else "why")
    return {"final": True, "outcome": json.dumps(o.to_dict()), METRIC: score if score is not None else math.nan,
            rb.TIME_ATTR: 2}


def searcher(max_concurrent=None, target=100):
    return rb.BaselinesFirstSearcher(FewBases(), "random", seed=0, max_concurrent=max_concurrent,
                                     baselines=dict(spaces.BASELINES), metric=ACCURACY, target=target)


def start_baselines(s):
    return [s.suggest(f"b{i}") for i in range(4)]


def test_baselines_come_first_in_order_with_numbers():
    s = searcher()
    configs = start_baselines(s)
    assert [c["baseline"] for c in configs] == ["gelu", "relu", "silu", "crrelu"]
    assert [c["number"] for c in configs] == [0, 1, 2, 3]
    assert all("params" not in c for c in configs)


def test_duplicate_of_a_running_trial_is_held_then_reuses_its_outcome():
    s = searcher()
    start_baselines(s)
    # While the baselines run, every relu/gelu suggestion is held back, tanh runs.
    emitted = []
    for i in range(40):
        c = s.suggest(f"s{i}")
        if c is not None:
            emitted.append(c)
            s.on_trial_complete(f"s{i}", result=final(score=0.3))
    assert emitted and all(c["params"]["base"] == "tanh" for c in emitted)
    assert all("duplicate_of" not in c for c in emitted[:1])
    assert all(c.get("duplicate_of") == emitted[0]["number"] for c in emitted[1:])  # tanh again
    held = {h["params"]["base"] for h in s._held}
    assert held <= {"relu", "gelu"} and held
    # relu (trial 1) finishes: a held relu suggestion becomes a duplicate of trial 1.
    assert "relu" in held  # seeded sampler: it does suggest relu
    s.on_trial_complete("b1", result=final(score=0.61))
    c = s.suggest("after_relu")
    assert c["params"] == {"base": "relu"} and c["duplicate_of"] == 1
    assert c["reuse"]["status"] == "ok" and c["reuse"]["score"] == pytest.approx(0.61)
    # its completion tells Optuna the reused score (a COMPLETE trial with that value)
    s.on_trial_complete("after_relu", result=final(score=0.61))
    values = [t.value for t in s._optuna._ot_study.trials if t.params == {"base": "relu"}
              and t.state.name == "COMPLETE"]
    assert values == [pytest.approx(0.61)]


def test_owner_error_releases_the_fingerprint_to_a_held_duplicate():
    s = searcher()
    start_baselines(s)
    # Ask until a gelu suggestion is held (gelu is baseline 0, still running).
    for i in range(60):
        c = s.suggest(f"s{i}")
        if c is not None:
            s.on_trial_complete(f"s{i}", result=final())
        if any(h["params"]["base"] == "gelu" for h in s._held):
            break
    assert any(h["params"]["base"] == "gelu" for h in s._held)
    s.on_trial_complete("b0", error=True)  # the gelu baseline failed for good
    c = s.suggest("retry")
    assert c["params"] == {"base": "gelu"} and "duplicate_of" not in c  # trained, now the owner
    assert s._registry.owner(BASELINE_FPS["gelu"])[0] == c["number"]


def test_non_ok_outcomes_are_pruned_for_optuna_and_reused_with_their_status():
    s = searcher()
    start_baselines(s)
    c = None
    for i in range(40):
        c = s.suggest(f"s{i}")
        if c is not None:
            tid = f"s{i}"
            break
    assert c is not None and c["params"]["base"] == "tanh"
    s.on_trial_complete(tid, result=final(status="diverged", score=None))
    state = [t.state.name for t in s._optuna._ot_study.trials if t.params == {"base": "tanh"}]
    assert state == ["PRUNED"]  # never scored, never FAIL (the sampler must learn from it)
    for i in range(40):
        d = s.suggest(f"t{i}")
        if d is not None and d["params"]["base"] == "tanh":
            assert d["duplicate_of"] == c["number"] and d["reuse"]["status"] == "diverged"
            assert d["reuse"]["score"] is None
            break
        if d is not None:
            s.on_trial_complete(f"t{i}", result=final())
    else:
        pytest.fail("tanh was not suggested again")


def test_max_concurrent_limits_live_trials():
    s = searcher(max_concurrent=2)
    assert s.suggest("a") is not None and s.suggest("b") is not None
    assert s.suggest("c") is None
    s.on_trial_complete("a", result=final())
    assert s.suggest("c")["baseline"] == "silu"


def test_stopped_trial_is_pruned_not_scored():
    o = rb.trial_outcome({rb.TIME_ATTR: 1, METRIC: 0.12, "final": False}, METRIC)
    assert o.status == "pruned" and o.score is None and "epoch 1" in o.reason
    assert rb.trial_outcome(final(status="ok", score=float("nan")), METRIC).status == "diverged"


def test_duplicates_and_errors_do_not_count_toward_the_trials_to_add():
    """As under Optuna (policy.counts): --trials counts finished trials of their own candidate."""
    s = searcher(target=5)  # 4 baselines + 1: tanh is FewBases' only new candidate
    start_baselines(s)
    for i in range(4):
        s.on_trial_complete(f"b{i}", result=final())
    new, dups = [], []
    for i in range(200):
        c = s.suggest(f"s{i}")
        if c is None or c == s.FINISHED:
            break
        (dups if "duplicate_of" in c else new).append(c)
        first_tanh = "duplicate_of" not in c and len(new) == 1
        s.on_trial_complete(f"s{i}", result=None if first_tanh else final(), error=first_tanh)
    assert c == s.FINISHED  # the experiment ends once 5 trials count
    assert [n["params"] for n in new] == [{"base": "tanh"}, {"base": "tanh"}]  # the errored one was replaced
    assert dups and all(d["duplicate_of"] in (0, 1) and d["params"]["base"] in ("gelu", "relu") for d in dups)


def test_state_round_trip_continues_identically(tmp_path):
    a = searcher()
    start_baselines(a)
    for label in range(4):
        a.on_trial_complete(f"b{label}", result=final(score=0.4 + label / 100))
    a.save(str(tmp_path / "state.pkl"))
    b = searcher()
    b.restore(str(tmp_path / "state.pkl"))
    for i in range(6):
        ca, cb = a.suggest(f"x{i}"), b.suggest(f"x{i}")
        assert ca == cb
        if ca is not None:
            a.on_trial_complete(f"x{i}", result=final())
            b.on_trial_complete(f"x{i}", result=final())


def test_timeout_stops_new_trials_and_ends_once_the_running_ones_finish(monkeypatch):
    s = searcher()
    assert s.suggest("a") is not None
    monkeypatch.setitem(rb.RUN, "deadline", 0.0)  # long past
    assert s.suggest("b") is None  # trial "a" still runs: wait for it
    s.on_trial_complete("a", result=final())
    assert s.suggest("c") == s.FINISHED  # ends this experiment; a rerun continues the study


class FakeTrial:
    def __init__(self, trial_id, config):
        self.trial_id, self.config = trial_id, config


def _scheduler(pruner, epochs=3):
    return rb.make_scheduler(policy.pruning(pruner, _Task(), epochs, n_baselines=4))


@pytest.mark.parametrize("pruner", ["hyperband", "median"])
def test_scheduler_never_stops_baselines_nor_a_finished_trial(pruner):
    sched = _scheduler(pruner)
    trials = [FakeTrial(f"t{i}", {"number": i, "baseline": "x"}) for i in range(4)]
    poor_baseline = FakeTrial("pb", {"number": 4, "baseline": "relu"})
    poor = FakeTrial("p", {"number": 5, "params": {}})
    last = FakeTrial("l", {"number": 6, "params": {}})
    for t in trials + [poor_baseline, poor, last]:
        sched.on_trial_add(None, t)
    for t in trials:
        for epoch in (1, 2):
            assert sched.on_trial_result(None, t, {rb.TIME_ATTR: epoch, METRIC: 0.8}) == "CONTINUE"
    bad = {rb.TIME_ATTR: 1, METRIC: 0.1}
    assert sched.on_trial_result(None, poor_baseline, bad) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, poor, bad) == TrialScheduler.STOP
    assert sched.on_trial_result(None, last, {rb.TIME_ATTR: 3, METRIC: 0.1}) == TrialScheduler.CONTINUE
    # a final report or a NaN (no score) is never ranked
    assert sched.on_trial_result(None, poor, {**bad, "final": True}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, poor, {rb.TIME_ATTR: 1, METRIC: math.nan}) == TrialScheduler.CONTINUE


def test_asha_is_primed_with_earlier_segments():
    from search.records import TrialRecord

    sched = _scheduler("hyperband")
    earlier = [TrialRecord(number=i, status="ok", label="gelu", score=0.8,
                           history=[{"epoch": 1, "val_acc": 0.8}, {"epoch": 2, "val_acc": 0.85}])
               for i in range(3)]
    sched.prime(earlier)
    poor = FakeTrial("p", {"number": 9, "params": {}})
    sched.on_trial_add(None, poor)
    assert sched.on_trial_result(None, poor, {rb.TIME_ATTR: 1, METRIC: 0.1}) == TrialScheduler.STOP


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1:notaport", "127.0.0.1:0", "ray://127.0.0.1:10001"])
def test_bad_addresses_are_usage_errors(address):
    from search.exceptions import UsageError

    with pytest.raises(UsageError, match="--ray-address"):
        rb.connect(address)


def test_prefilter_asks_optuna_m_proposals_trains_one_and_fails_the_others():
    """--prefilter 3 on Ray: each searched suggestion is one of 3 OptunaSearch proposals;
    the 2 not chosen are told to Optuna as FAIL (never a score), and the prefilter learns
    from every trained trial that finishes."""
    s = rb.BaselinesFirstSearcher(FewBases(), "random", seed=0, max_concurrent=None,
                                  baselines=dict(spaces.BASELINES), metric=ACCURACY, target=100, prefilter=3)
    for i, c in enumerate(start_baselines(s)):
        s.on_trial_complete(f"b{i}", result=final(score=0.8 - 0.01 * i))
    assert sorted(s._prefilter.seen) == [0, 1, 2, 3]
    c = s.suggest("s0")
    states = [t.state.name for t in s._optuna._ot_study.trials]
    assert len(states) == 3 and states.count("FAIL") == 2 and states.count("RUNNING") == 1
    running = next(t for t in s._optuna._ot_study.trials if t.state.name == "RUNNING")
    assert c["params"] == running.params
    s.on_trial_complete("s0", result=final(score=0.5))
    assert 4 in s._prefilter.seen or "duplicate_of" in c  # a trained trial teaches the prefilter
