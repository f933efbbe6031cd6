"""ProxyTask and TrialResult: real training on a Fashion-MNIST subset (CPU, seconds)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import spaces
from evaluators import ProxyTask, TrialResult
from evaluators import data as data_mod

pytestmark = pytest.mark.skipif(
    not (data_mod.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file() and
    not data_mod.os.environ.get(data_mod.ENV_ROOT),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist or set EAFO_DATA_ROOT)")

CRRELU = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])
# Small enough for about a second per epoch on one CPU core (one thread: the cores are
# shared, and oversubscribed threads slow everyone), big enough for the loss to fall clearly.
SMALL = dict(train_size=1000, val_size=500, batch_size=50, device="cpu", num_threads=1)
TIMING = {"epoch_seconds", "train_seconds", "samples_per_s"}


class Recorder:
    """A report callback and a checkpoint store in one (both are plain protocols)."""

    def __init__(self, states=None):
        self.calls, self.saved, self.states = [], [], states

    def __call__(self, epoch, metrics):
        self.calls.append((epoch, metrics))

    def load(self):
        return self.states

    def save(self, state):
        self.saved.append(state)


def _untimed(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


@pytest.fixture(scope="module")
def two_epochs():
    task = ProxyTask(epochs=2, **SMALL)
    rec = Recorder()
    return task, rec, task.evaluate(CRRELU, seed=0, report=rec, checkpoint=rec)


def test_loss_falls_over_two_epochs(two_epochs):
    _, _, result = two_epochs
    assert result.status == "ok" and result.epochs_completed == 2
    first, second = result.history
    assert second["train_loss"] < first["train_loss"] < math.log(10)  # below chance after one epoch
    assert second["val_loss"] < first["val_loss"]
    assert result.score == second["val_acc"] > 0.3  # 10 classes: chance is 0.1
    assert result.score_name == "val_acc"


def test_report_is_called_once_per_epoch_with_the_named_metrics(two_epochs):
    _, rec, result = two_epochs
    assert [e for e, _ in rec.calls] == [1, 2]
    for _, m in rec.calls:
        assert {"val_acc", "val_loss", "train_loss", "epoch_seconds", "samples_per_s",
                "coef/eps_mean", "coef/eps"} <= set(m)
        assert len(m["coef/eps"]) == 4  # one learnable eps per MLP of vit-nano
        assert m["coef/eps_mean"] == pytest.approx(sum(m["coef/eps"]) / 4)
    assert rec.calls[-1][1]["coef/eps"] == result.coefficients["eps"]
    assert result.coefficients["eps"] != [0.01] * 4  # eps was learned


def test_same_seed_gives_identical_metrics_on_cpu(two_epochs):
    task, _, first = two_epochs
    again = task.evaluate(CRRELU, seed=0)
    assert _untimed(again.history) == _untimed(first.history)
    assert again.coefficients == first.coefficients


def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(two_epochs):
    task, rec, full = two_epochs
    assert [s["epoch"] for s in rec.saved] == [1, 2]
    resumed = task.evaluate(CRRELU, seed=0, checkpoint=Recorder(states=rec.saved[0]))
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_completed == 2
    assert _untimed(resumed.history) == _untimed(full.history)


def test_exception_from_report_stops_the_trial_and_propagates():
    class Prune(Exception):
        pass

    calls = []

    def report(epoch, metrics):
        calls.append(epoch)
        raise Prune("val_acc too low")

    threads = torch.get_num_threads()
    with pytest.raises(Prune) as info:
        ProxyTask(epochs=3, **SMALL).evaluate(CRRELU, seed=1, report=report)
    assert calls == [1]  # no second epoch was trained
    partial = info.value.partial_result
    assert partial.status == "pruned" and partial.score is None and partial.epochs_completed == 1
    assert "val_acc too low" in partial.reason
    assert torch.get_num_threads() == threads  # global state restored after cleanup


def test_failing_sanity_check_is_rejected_without_training():
    calls = []
    result = ProxyTask(epochs=1, **SMALL).evaluate(spaces.parse("exp(exp(x))"), report=lambda *a: calls.append(a))
    assert result.status == "rejected" and result.score is None
    assert "not finite" in result.reason
    assert result.epochs_completed == 0 and calls == []


# At lr 0.05 (25x the default) ReLU still trains; exponential candidates overflow.
HIGH_LR = dict(SMALL, epochs=2, lr=0.05)


def test_high_lr_control_relu_trains_without_diverging():
    assert ProxyTask(**HIGH_LR).evaluate(spaces.parse("relu(x)"), seed=0).status == "ok"


def test_overflowing_candidate_comes_back_diverged_and_the_process_survives():
    # exp(exp(x)) overflows float32 once x > 4.5; the sanity filter (off here) would reject it.
    result = ProxyTask(sanity=False, **HIGH_LR).evaluate(spaces.parse("exp(exp(x))"), seed=0)
    assert result.status == "diverged" and result.score is None
    assert "training loss is nan" in result.reason
    json.dumps(result.to_dict(), allow_nan=False)


def test_candidate_that_passes_the_sanity_filter_but_explodes_in_training_is_diverged():
    cand = spaces.parse("exp(1.8*x)")  # f(5) = 8103 < 1e4: passes the filter
    assert spaces.sanity_check(cand) is None
    result = ProxyTask(**HIGH_LR).evaluate(cand, seed=0)
    assert result.status == "diverged" and result.score is None
    assert "training loss is nan" in result.reason


def test_test_split_scores_on_the_official_test_set():
    result = ProxyTask(epochs=1, test_size=500, **SMALL).evaluate(CRRELU, seed=0, split="test")
    assert result.status == "ok" and result.score_name == "test_acc"
    assert result.score == result.metrics["test_acc"] and "val_acc" not in result.metrics


def test_test_split_is_scored_once_after_the_last_epoch_and_training_is_unchanged():
    """A confirmation run's score is its last epoch's; the test set is not scored before."""
    task = ProxyTask(epochs=2, test_size=500, **SMALL)
    test, val = task.evaluate(CRRELU, seed=0, split="test"), task.evaluate(CRRELU, seed=0, split="val")
    assert "test_acc" not in test.history[0] and "test_loss" not in test.history[0]
    assert test.score == test.history[-1]["test_acc"] and "test_loss" in test.history[-1]
    assert all("val_acc" in h for h in val.history)  # validation: every epoch (pruning, plots)
    # scoring or not scoring in between leaves training bit for bit the same
    assert [h["train_loss"] for h in test.history] == [h["train_loss"] for h in val.history]


def test_result_round_trips_through_json(two_epochs):
    _, _, result = two_epochs
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    back = TrialResult.from_dict(d)
    assert back == result
    assert d["task"]["model"] == "vit-nano" and d["candidate"]["formula"] == CRRELU.formula
    assert d["peak_memory_bytes"] > 0 and d["peak_memory_kind"] == "process_max_rss"


def test_nan_is_never_a_score():
    with pytest.raises(ValueError, match="finite score"):
        TrialResult("ok", float("nan"))
    with pytest.raises(ValueError, match="no score"):
        TrialResult("diverged", 0.5)
    with pytest.raises(ValueError, match="unknown status 'great'"):
        TrialResult("great", None)


@pytest.mark.parametrize("kwargs, match", [
    (dict(epochs=0), "epochs must be a positive integer, got 0"),
    (dict(train_size=-5), "train_size must be a positive integer or None, got -5"),
    (dict(val_size=0), "val_size must be a positive integer, got 0"),
    (dict(dataset="imagenet"), "unknown dataset 'imagenet'"),
    (dict(model="vit-giant"), "unknown model 'vit-giant'"),
    (dict(device="tpu"), "unknown device 'tpu'"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
])
def test_invalid_config_is_a_value_error_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProxyTask(**kwargs)


def test_config_round_trips_and_rejects_unknown_keys():
    task = ProxyTask(epochs=3, lr=2e-3)
    assert ProxyTask.from_dict(task.to_dict()) == task
    json.dumps(task.to_dict())
    with pytest.raises(ValueError, match=r"unknown ProxyTask key\(s\) \['epoch'\]"):
        ProxyTask.from_dict({"epoch": 3})


def test_auto_device_is_cpu_without_accelerators():
    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("an accelerator is present")
    assert ProxyTask().resolve_device() == torch.device("cpu")


def test_replace_shares_loaded_data_and_pickling_drops_it():
    import pickle

    task = ProxyTask(**SMALL)
    split = task.load_split("val")
    longer = task.replace(epochs=4)
    assert longer.epochs == 4 and longer.load_split("val") is split  # same images, not reloaded
    assert task.replace(train_size=500).load_split("val").train_x.shape[0] == 500
    sent = pickle.loads(pickle.dumps(task))  # what a Ray worker receives: config, no tensors
    assert sent == task and sent._splits == {}


@pytest.mark.parametrize("model", ["vit-nano", "resnet-tiny"])
def test_the_optimizer_is_timms_adamw_decaying_weight_matrices_only(model):
    """timm's parameter groups give the recipe's AdamW exactly: weight decay on every weight
    matrix (conv kernels included), none on biases, norm gains, what the model's
    no_weight_decay() names (ViT's position embedding and class token) or the activation's
    learnable coefficients; every trainable parameter in exactly one group."""
    from evaluators.task import _Run

    task = ProxyTask(model=model, epochs=2, **SMALL)
    run = _Run(task, CRRELU, task.load_split("val"), seed=0, device=torch.device("cpu"), split="val")
    opt, named = run.optimizer, dict(run.model.named_parameters())
    assert type(opt) is torch.optim.AdamW
    skip = set(getattr(run.model, "no_weight_decay", lambda: set())())
    expected = {n for n, p in named.items() if p.ndim >= 2 and n not in skip}
    by_id = {id(p): n for n, p in named.items()}
    decayed = {by_id[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    grouped = [by_id[id(p)] for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(n for n, p in named.items() if p.requires_grad)  # each once
    assert decayed == expected and expected
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, task.weight_decay}
    coefficient_names = {n for n in named if n.endswith("eps")}
    assert coefficient_names and not coefficient_names & decayed  # corrections are not pulled to 0
    if model == "vit-nano":
        assert {"pos_embed", "cls_token"} <= skip and not {"pos_embed", "cls_token"} & decayed
    for g in opt.param_groups:
        assert (g["betas"], g["eps"], g["amsgrad"], g["initial_lr"]) == ((0.9, 0.999), 1e-8, False, task.lr)


def test_the_lr_warms_up_linearly_from_the_first_step_then_decays_to_zero_after_the_last():
    """The recipe's schedule, step by step (why it is not timm's CosineLRScheduler: see _Run)."""
    from evaluators.task import _Run

    task = ProxyTask(epochs=2, **SMALL)
    run = _Run(task, CRRELU, task.load_split("val"), seed=0, device=torch.device("cpu"), split="val")
    w, total = run.warmup, run.total_steps
    lrs = []
    for _ in range(total):
        lrs.append(run.optimizer.param_groups[0]["lr"])  # the lr this step trains with
        run.optimizer.step()
        run.scheduler.step()
    assert w >= 2 and lrs[:w] == pytest.approx([task.lr * (k + 1) / w for k in range(w)])
    assert lrs[w:] == pytest.approx([task.lr * 0.5 * (1 + math.cos(math.pi * (k - w) / (total - w)))
                                      for k in range(w, total)])  # peak at step w, then cosine
    assert lrs[-1] > 0  # the last step still learns
    assert run.scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)


def test_a_checkpoint_with_another_optimizer_layout_trains_afresh_with_a_warning(two_epochs):
    """A checkpoint saved before the optimizer came from timm (decay group first) cannot be
    mapped onto today's groups: the run starts at epoch 0 with a warning instead of failing."""
    task, rec, full = two_epochs
    state = dict(rec.saved[0])
    opt = dict(state["optimizer"])
    opt["param_groups"] = list(reversed(opt["param_groups"]))  # the old order: sizes no longer line up
    state["optimizer"] = opt
    with pytest.warns(UserWarning, match="optimizer groups differ"):
        again = task.evaluate(CRRELU, seed=0, checkpoint=Recorder(states=state))
    assert again.resumed_from_epoch in (None, 0) and again.epochs_completed == 2
    assert _untimed(again.history) == _untimed(full.history)
