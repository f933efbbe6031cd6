"""ProxyTask: train a small model with a candidate activation and score it.

    task = ProxyTask(epochs=5, train_size=10_000)
    result = task.evaluate(candidate, seed=0, report=lambda epoch, m: print(epoch, m["val_acc"]))

The recipe is the paper's ViT recipe (DeiT's AdamW + cosine, Touvron et al. 2021),
scaled down to a proxy budget: AdamW (betas 0.9/0.999, weight decay 0.05 on
weight matrices only), linear warmup then cosine decay to zero, gradient-norm
clipping at 1.0, cross-entropy. The evaluator knows nothing of Optuna or Ray:
progress leaves a trial only through ``report(epoch, metrics)``.

The language-model track runs through the same loop: on a text dataset
(``shakespeare``) the model is a character GPT (``gpt-nano``), a sample is a
sequence of ``block_size`` characters, the loss is the next character's
cross-entropy at every position, and the score is validation bits per character
(``metric`` says so, and that lower is better). ``ProxyTask.for_dataset(name)``
starts from settings sized for that dataset (``TEXT_DEFAULTS`` for text).
"""
from __future__ import annotations

import contextlib
import gc
import math
import platform
import resource
import sys
import time
import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from evaluators import data as data_mod
from evaluators import text as text_mod
from evaluators.metrics import ACCURACY, BITS_PER_CHAR, Metric
from evaluators.models import build_model, check_mlp, get_preset, list_models
from evaluators.result import TrialResult

Report = Callable[[int, dict], None]


class Checkpoint(Protocol):
    """Where a trial keeps its state between epochs (e.g. a Ray Tune checkpoint)."""

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


# Settings sized for a text dataset, which ProxyTask.for_dataset() starts from. A text
# "sample" is one sequence of block_size characters at a random offset of the training
# part, so train_size sequences x block_size characters is one epoch's training tokens.
# Sized so that a search trial (3 epochs, 192 steps, 393,216 training characters) takes
# about 18 s on 2 idle CPU cores: 12 trials and 18 confirmation runs in about 10 min.
TEXT_DEFAULTS = dict(
    model="gpt-nano",      # 4 layers, dim 64, 64 characters of context (evaluators/gpt.py)
    epochs=3,              # 4 took 14.5 min for the default search; the 3-epoch ranking of 9
                           # activations matches the 4-epoch one at Kendall tau +0.89 (3 seeds,
                           # bench/results/proxy_fidelity_lm_b3_cpu.json), where 1 epoch gave +0.06
    train_size=2_048,      # sequences per epoch: 2,048 x 64 = 131,072 characters, 64 steps
    val_size=32_768,       # characters scored on the validation part (512 windows of 64, of 250,208)
    test_size=65_536,      # characters scored on the test part (1,024 windows; None: all 250,213)
    batch_size=32,         # sequences per step. At equal steps more tokens per step helped
                           # (256 steps, lr 1e-2: 3.37 bpc at 32 x 64 vs 3.54 at 16 x 64)
    eval_batch_size=512,   # windows per forward pass when evaluating
    lr=5e-3,               # peak AdamW lr. gpt-nano, 256 steps of 32 x 64, seed 0, GELU val_bpc:
                           # 2e-3 3.58, 5e-3 3.40, 1e-2 3.37, 2e-2 3.95 (unstable); 5e-3 is on
                           # the plateau with a 4x margin below the lr where training breaks down
)


@dataclass
class ProxyTask:
    """A flat training configuration; one instance evaluates many candidates."""

    dataset: str = "fashion_mnist"   # evaluators.data.list_datasets(); Fashion-MNIST is the embedded default
    model: str = "vit-nano"          # evaluators.list_models(); vit-nano is CPU-sized (~4 s/epoch on 10k images)
    mlp: str = "plain"               # plain | glu: glu makes the candidate the gate of a gated MLP (transformers)
    epochs: int = 5                  # full passes over train_size images: the proxy budget
    train_size: int | None = 10_000  # images, stratified (None: every training image not in val);
                                     # text: sequences drawn per epoch (None: training characters / block_size)
    val_size: int = 5_000            # images carved from the training set (fixed seed): the search score;
                                     # text: characters scored on the fixed validation part
    test_size: int | None = None     # images of the official test set for split="test" (None: all 10,000);
                                     # text: characters scored on the test part (None: all of it)
    batch_size: int = 128            # images (text: sequences) per step; small sets need many steps
    eval_batch_size: int = 1_000     # images (text: windows) per forward pass when evaluating (no gradients)
    lr: float = 2e-3                 # peak AdamW lr. DeiT's 5e-4 * batch/512 is for 300 epochs of ImageNet;
                                     # a 5-epoch proxy needs more. vit-nano, 10k images, 5 epochs, seed 0,
                                     # GELU val_acc: 3e-4 .749, 1e-3 .812, 2e-3 .816, 4e-3 .820 (ReLU .772/.806
                                     # at 3e-4/1e-3); 2e-3 sits on the plateau with margin below unstable lrs
    weight_decay: float = 0.05       # DeiT/paper value; not applied to biases, norms, tokens, coefficients
    warmup_fraction: float = 0.1     # fraction of all steps spent on linear lr warmup (at least one step)
    grad_clip: float = 1.0           # max global gradient norm (paper's ViT recipe); 0 disables
    label_smoothing: float | None = None  # None: the model preset's recipe (deit-tiny 0.1, others 0)
    augment: str | None = None       # none|crop|flip|crop_flip; None: dataset default (Fashion none, CIFAR crop_flip)
    image_size: int | None = None    # pad images up to this size; None: the preset's size (vit-tiny 32) or native
    block_size: int | None = None    # text: characters of context per sequence; None: the preset's (gpt-nano 128)
    device: str = "auto"             # auto = cuda, then mps, then cpu; or cpu, cuda, cuda:N, mps
    precision: str = "auto"          # auto = bf16 autocast on CUDA, fp32 elsewhere; or fp32, bf16
    deterministic: bool | None = None  # torch deterministic algorithms; None: on for CPU, off on GPUs (speed)
    num_threads: int | None = None   # torch CPU threads during a trial (restored after); None: leave as is
    divergence_factor: float = 3.0   # after warmup, a mean training loss above this x the first batch's
                                     # loss is divergence (chance level is ln(classes); 3x is far past it)
    check_every: int = 20            # steps between divergence checks (each costs one host-device sync)
    sanity: bool = True              # run spaces.sanity_check first and reject without training
    data_root: str | None = None     # dataset folder (--data-root); None: EAFO_DATA_ROOT, then defaults
    download: bool = False           # let torchvision download a dataset that is not found
    verify_checksums: bool = True    # CIFAR: torchvision's md5s; text: the corpus's pinned sha256
                                     # (False: a re-packed or edited local copy; the sha256 is recorded anyway)

    def __post_init__(self):
        kind = data_mod.dataset_kind(self.dataset)
        if get_preset(self.model).kind != kind:
            raise ValueError(f"model {self.model!r} does not train on {kind} datasets like {self.dataset!r}; "
                             f"{kind} models: {', '.join(m for m in list_models() if get_preset(m).kind == kind)}")
        check_mlp(self.mlp)
        if kind == "text":
            for name in ("image_size", "augment"):
                if getattr(self, name) not in (None, "none"):
                    raise ValueError(f"{name}={getattr(self, name)!r} is for images, not {self.dataset!r}")
            if self.download:
                raise ValueError(f"{self.dataset!r} is not downloaded at run time: "
                                 f"{text_mod.TEXT_DATASETS[self.dataset].install}")
        elif self.block_size is not None:
            raise ValueError(f"block_size={self.block_size!r} is for text datasets, not {self.dataset!r}")
        for name in ("epochs", "val_size", "batch_size", "eval_batch_size", "check_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("train_size", "test_size", "image_size", "block_size", "num_threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"grad_clip must be >= 0 (0 disables), got {self.grad_clip!r}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if self.augment is not None and self.augment not in data_mod.AUGMENTATIONS:
            raise ValueError(f"unknown augment {self.augment!r}; valid: {', '.join(data_mod.AUGMENTATIONS)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; valid: auto, fp32, bf16")
        if not self.divergence_factor > 1:
            raise ValueError(f"divergence_factor must be > 1, got {self.divergence_factor!r}")
        if self.device != "auto":
            try:
                dev = torch.device(self.device)
            except RuntimeError:
                dev = None
            if dev is None or dev.type not in ("cpu", "cuda", "mps"):
                raise ValueError(f"unknown device {self.device!r}; valid: auto, cpu, cuda, cuda:N, mps")
        self._splits: dict = {}  # (split, device) -> DeviceSplit, reused across trials

    # ---- configuration ------------------------------------------------------
    def to_dict(self) -> dict:
        """The resolved configuration, saved beside every result."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> "ProxyTask":
        """A task with the settings sized for `dataset` (text: TEXT_DEFAULTS; images: the
        defaults above), then `overrides` (unknown keys are rejected)."""
        base = dict(TEXT_DEFAULTS) if data_mod.dataset_kind(dataset) == "text" else {}
        return cls.from_dict({**base, "dataset": dataset, **overrides})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProxyTask":
        """Build from a dict (a saved config, CLI overrides); unknown keys are rejected."""
        valid = {f.name for f in fields(cls)}
        unknown = set(d) - valid
        if unknown:
            raise ValueError(f"unknown ProxyTask key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(valid))}")
        return cls(**dict(d))

    def replace(self, **changes) -> "ProxyTask":
        """A copy with some fields changed; it shares the loaded data when that is unchanged."""
        new = self.from_dict({**self.to_dict(), **changes})
        if all(getattr(new, k) == getattr(self, k) for k in _DATA_FIELDS):
            new._splits = self._splits
        return new

    def resolve_precision(self, device: torch.device | None = None) -> str:
        """"bf16" (autocast) or "fp32": "auto" is bf16 on CUDA, fp32 elsewhere (as `_Run` trains)."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if (device or self.resolve_device()).type == "cuda" else "fp32"

    def check_data(self) -> None:
        """Raise ValueError unless the data is there and every size fits it (train, val, test).

        Loads it as training would, on the CPU, and keeps nothing loaded in this
        process: for a driver that trains nothing (Ray's: its workers load their own).
        """
        kept = dict(self._splits)
        try:
            self.load_split("test", torch.device("cpu"))  # the test split checks train, val and test sizes
        finally:
            self._splits.clear()
            self._splits.update(kept)
            data_mod.clear_cache()

    def __getstate__(self):  # Ray pickles tasks to workers: send the config, not cached tensors
        state = dict(self.__dict__)
        state["_splits"] = {}
        return state

    @property
    def kind(self) -> str:
        """"image" or "text": the kind of dataset and model this task trains."""
        return data_mod.dataset_kind(self.dataset)

    @property
    def metric(self) -> Metric:
        """What `evaluate` scores, and whether higher or lower is better: accuracy for images
        (maximise), bits per character for text (minimise)."""
        return BITS_PER_CHAR if self.kind == "text" else ACCURACY

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            if torch.backends.mps.is_available():
                return torch.device("mps")
            return torch.device("cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {self.device!r} requested but MPS is not available")
        return dev

    def load_split(self, split: str = "val", device: torch.device | None = None):
        """The data one trial uses (cached on this task object): a DeviceSplit of images,
        or a TextSplit of a text corpus."""
        device = device or self.resolve_device()
        key = (split, str(device))
        if key not in self._splits and self.kind == "text":
            self._splits.clear()
            self._splits[key] = text_mod.prepare_text_split(
                self.dataset, split=split, sequences=self.train_size,
                block_size=self.block_size or get_preset(self.model).block_size, val_size=self.val_size,
                test_size=self.test_size, device=device, root=self.data_root,
                verify_checksums=self.verify_checksums)
        if key not in self._splits:
            self._splits.clear()  # one split at a time on the device
            self._splits[key] = data_mod.prepare_split(
                self.dataset, split=split, train_size=self.train_size, val_size=self.val_size,
                test_size=self.test_size, image_size=self.image_size or get_preset(self.model).img_size,
                device=device, root=self.data_root, download=self.download,
                verify_checksums=self.verify_checksums)
        return self._splits[key]

    def build(self, candidate, data) -> nn.Module:
        """A fresh model for `candidate` (a Candidate, or an activation class) on `data`'s
        device (seed the RNG first)."""
        act = candidate if isinstance(candidate, type) else candidate.module_class()
        if isinstance(data, text_mod.TextSplit):
            return build_model(self.model, act, vocab_size=data.vocab_size,
                               block_size=data.block_size, mlp=self.mlp).to(data.train.device)
        return build_model(self.model, act, data.in_chans, data.num_classes,
                           data.image_size, mlp=self.mlp).to(data.train_x.device)

    # ---- one trial ----------------------------------------------------------
    def evaluate(self, candidate, seed: int = 0, report: Report | None = None, split: str = "val",
                 checkpoint: Checkpoint | None = None) -> TrialResult:
        """Train a fresh model with `candidate` as every activation, and score it.

        seed: model init, batch order, augmentation, dropout (not the data split).
        report: called as report(epoch, metrics) after each epoch (1-based); it may
          raise to stop the trial (pruning): the exception propagates after cleanup,
          carrying the partial result as ``exc.partial_result`` (status "pruned").
          metrics: the score "<split>_<metric>" (split = val or test; "val_acc" for
          images, "val_bpc" for text: see `metric`), "<split>_loss" (cross-entropy,
          nats per image or per character), "train_loss" (mean over the epoch),
          "lr", "epoch_seconds", "train_seconds", "samples_per_s" (training only;
          a text sample is one sequence), and per learnable coefficient c
          "coef/<c>_mean" and "coef/<c>" (its value in each activation instance).
          With split="test" the score and loss are in the last epoch's metrics only:
          the test set is scored once, at the end.
        split: "val" scores on the validation split; "test" trains the same way and
          scores on the official test set (confirmation only).
        checkpoint: optional object with load() -> dict | None and save(state); save
          is called after each epoch, before report; a loaded state resumes training.

        Never raises for a bad candidate: one that fails the sanity check comes
        back "rejected", one whose training blows up comes back "diverged".
        """
        if split not in ("val", "test"):
            raise ValueError(f"unknown split {split!r}; valid splits: val, test")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(candidate, str):
            import spaces

            candidate = spaces.parse(candidate)
        t0 = time.perf_counter()
        info = dict(seed=seed, score_name=self.metric.key(split), candidate=_describe(candidate),
                    task=self.to_dict(), versions=_versions())
        if self.sanity:
            from spaces import sanity_check

            reason = sanity_check(candidate)
            if reason is not None:
                return TrialResult("rejected", None, reason=reason, wall_seconds=time.perf_counter() - t0, **info)
        try:
            candidate.module_class()
        except (ValueError, TypeError) as e:
            return TrialResult("rejected", None, reason=f"cannot be compiled: {e}",
                               wall_seconds=time.perf_counter() - t0, **info)
        device = self.resolve_device()
        data = self.load_split(split, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with _trial_environment(device, self.num_threads, self.deterministic):
            run = _Run(self, candidate, data, seed, device, split)
            try:
                status, reason = run.train(report, checkpoint)
            except Exception as exc:
                if run.in_report:  # the callback stopped the trial (pruning): hand back what we have
                    exc.partial_result = run.result(
                        "pruned", f"stopped by report after epoch {len(run.history)}: "
                                  f"{type(exc).__name__}: {exc}", t0, info)
                raise
            finally:
                run.free()
            return run.result(status, reason, t0, info)


# The fields that decide what load_split() returns.
_DATA_FIELDS = ("dataset", "model", "train_size", "val_size", "test_size", "image_size", "block_size", "device",
                "data_root", "download", "verify_checksums")


class _Run:
    """The state of one training run (so that cleanup and partial results are easy)."""

    def __init__(self, task: ProxyTask, candidate, data, seed: int,
                 device: torch.device, split: str):
        self.task, self.candidate, self.data, self.seed, self.device, self.split = \
            task, candidate, data, seed, device, split
        self.history: list[dict] = []
        self.resumed_from: int | None = None
        self.in_report = False
        self.final_coefficients: dict[str, list[float]] = {}
        self.act_cls = candidate.module_class()
        preset = get_preset(task.model)
        self.label_smoothing = task.label_smoothing if task.label_smoothing is not None else \
            preset.recipe.get("label_smoothing", 0.0)
        self.augment = task.augment or data.default_augment
        bf16 = task.precision == "bf16" or (task.precision == "auto" and device.type == "cuda")
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else \
            contextlib.nullcontext

        torch.manual_seed(seed)  # seeds CPU and every CUDA device: model init, dropout, drop-path
        self.model = task.build(candidate, data)
        self.acts = [m for m in self.model.modules() if isinstance(m, self.act_cls)]
        self.steps_per_epoch = data.n_steps(task.batch_size)
        self.total_steps = task.epochs * self.steps_per_epoch
        self.warmup = max(1, round(task.warmup_fraction * self.total_steps))
        # timm's AdamW with its parameter groups: weight decay on weight matrices only, not on
        # biases, norm gains, what the model's no_weight_decay() names (position embeddings,
        # class token), or scalar activation coefficients (decaying those would pull every
        # correction term towards zero). fused: one kernel per step on CUDA (default: foreach).
        self.optimizer = create_optimizer_v2(self.model, "adamw", lr=task.lr, weight_decay=task.weight_decay,
                                             betas=(0.9, 0.999), fused=device.type == "cuda" or None)
        # Not timm's CosineLRScheduler: its warmup starts at warmup_lr_init (0 wastes the first
        # step) and peaks one step later than this recipe, whose first step already has lr/warmup
        # and whose cosine reaches 0 after the last step; no step offset matches both phases.
        warmup, total = self.warmup, self.total_steps

        def lr_factor(step: int) -> float:  # step = optimizer steps taken so far
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self.generator = torch.Generator(device=device)
        self.first_loss: float | None = None

    # -- the loop --
    def train(self, report: Report | None, checkpoint: Checkpoint | None) -> tuple[str, str | None]:
        task, data = self.task, self.data
        start = 0
        if checkpoint is not None:
            state = checkpoint.load()
            if state is not None and not self._same_optimizer_layout(state):
                # A checkpoint from before the optimizer came from timm (other group order):
                # its moments cannot be mapped back, so the run starts again, not fails.
                warnings.warn("checkpoint's optimizer groups differ from this version's "
                              "(saved by an older eafo-search); training this run from epoch 0", stacklevel=2)
                state = None
            if state is not None:
                start = self._restore(state)
                self.resumed_from = start
        params = [p for p in self.model.parameters()]
        step = start * self.steps_per_epoch
        for epoch in range(start, task.epochs):
            t_epoch = time.perf_counter()
            self.model.train()
            # Batch order and augmentation depend on (seed, epoch) only, so a resumed run
            # sees the same batches as an uninterrupted one.
            self.generator.manual_seed(self.seed * 1_000_003 + epoch)
            loss_sum = torch.zeros((), device=self.device)
            window = torch.zeros((), device=self.device)
            n_window = n_samples = 0
            for xb, yb in data.batches(task.batch_size, self.generator, self.augment):
                with self.autocast():
                    logits = self.model(xb)
                # images: (batch, classes) vs (batch,); text: (batch, time, vocab) vs (batch, time)
                loss = F.cross_entropy(logits.flatten(0, -2).float(), yb.flatten(),
                                       label_smoothing=self.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if task.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, task.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                step += 1
                loss = loss.detach()
                loss_sum += loss
                window += loss
                n_window += 1
                n_samples += xb.shape[0]
                if self.first_loss is None:
                    self.first_loss = loss.item()  # the one extra sync of the run
                    if not math.isfinite(self.first_loss):
                        return "diverged", f"loss is {self.first_loss} at the first step"
                if n_window == task.check_every:
                    reason = self._diverged(window.item() / n_window, step, epoch)
                    if reason:
                        return "diverged", reason
                    window.zero_()
                    n_window = 0
            train_loss = loss_sum.item() / self.steps_per_epoch  # syncs: timing below is honest
            if n_window:
                reason = self._diverged(window.item() / n_window, step, epoch)
                if reason:
                    return "diverged", reason
            t_train = time.perf_counter() - t_epoch
            metrics = {"epoch": epoch + 1}
            # The validation split is scored every epoch (pruning, history.png); the test split
            # only after the last one: a confirmation run's score is its final one, and a pass
            # over the test set each epoch cost a text confirmation run 3 of its 28 s for curves
            # that nobody should look at, let alone tune on.
            if self.split == "val" or epoch + 1 == task.epochs:
                eval_loss, eval_acc = self._evaluate()
                if not math.isfinite(eval_loss):
                    return "diverged", f"{self.split} loss is {eval_loss} after epoch {epoch + 1}"
                # bits per character: the mean cross-entropy in nats over every scored character, / ln 2
                score = eval_loss / math.log(2) if task.metric is BITS_PER_CHAR else eval_acc
                metrics.update({task.metric.key(self.split): score, f"{self.split}_loss": eval_loss})
            metrics.update({
                "train_loss": train_loss,
                "lr": self.scheduler.get_last_lr()[0],
                "epoch_seconds": time.perf_counter() - t_epoch,
                "train_seconds": t_train,
                "samples_per_s": n_samples / t_train,
                **self._coefficient_metrics(),
            })
            self.history.append(metrics)
            if checkpoint is not None:
                checkpoint.save(self._state(epoch + 1))
            if report is not None:
                self.in_report = True
                report(epoch + 1, metrics)
                self.in_report = False
        return "ok", None

    def _diverged(self, mean_loss: float, step: int, epoch: int) -> str | None:
        where = f"step {step} (epoch {epoch + 1})"
        if not math.isfinite(mean_loss):
            return f"training loss is {mean_loss} at {where}"
        limit = self.task.divergence_factor * self.first_loss
        if step > self.warmup and mean_loss > limit:
            return (f"training loss {mean_loss:.4g} at {where} is above {self.task.divergence_factor:g}x "
                    f"the first batch's {self.first_loss:.4g} after warmup")
        return None

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float]:
        """(mean cross-entropy in nats, accuracy) over every scored target: one per image,
        or one per character of each text window."""
        self.model.eval()
        x, y = self.data.eval_x, self.data.eval_y
        loss = torch.zeros((), device=self.device, dtype=torch.float64)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for i in range(0, x.shape[0], self.task.eval_batch_size):
            with self.autocast():
                logits = self.model(x[i:i + self.task.eval_batch_size]).float()
            yb = y[i:i + self.task.eval_batch_size]
            loss += F.cross_entropy(logits.flatten(0, -2), yb.flatten(), reduction="sum")
            correct += (logits.argmax(-1) == yb).sum()
        return loss.item() / y.numel(), correct.item() / y.numel()

    # -- coefficients --
    def coefficients(self) -> dict[str, list[float]]:
        """Learned value of each learnable coefficient, one per activation instance in model order."""
        if self.model is None:  # freed
            return self.final_coefficients
        names = list(self.candidate.learnable)
        if not names or not self.acts:
            return {n: [] for n in names}
        flat = torch.stack([getattr(a, n).detach().float() for n in names for a in self.acts]).cpu().tolist()
        k = len(self.acts)
        return {n: flat[i * k:(i + 1) * k] for i, n in enumerate(names)}

    def _coefficient_metrics(self) -> dict:
        out = {}
        for n, vals in self.coefficients().items():
            out[f"coef/{n}_mean"] = sum(vals) / len(vals) if vals else None
            out[f"coef/{n}"] = vals
        return out

    # -- checkpoints --
    def _state(self, epochs_done: int) -> dict:
        """A snapshot on the CPU: state_dict() tensors alias the live ones, so they are copied."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"model": _cpu_copy(self.model.state_dict()), "optimizer": _cpu_copy(self.optimizer.state_dict()),
                "scheduler": self.scheduler.state_dict(), "epoch": epochs_done, "rng": rng,
                "history": [dict(h) for h in self.history], "first_loss": self.first_loss,
                "seed": self.seed, "formula": self.candidate.formula}

    def _same_optimizer_layout(self, state: dict) -> bool:
        """Whether the checkpoint's optimizer has our parameter groups (sizes, in order)."""
        saved = [len(g["params"]) for g in state.get("optimizer", {}).get("param_groups", [])]
        return saved == [len(g["params"]) for g in self.optimizer.param_groups]

    def _restore(self, state: dict) -> int:
        if state.get("formula") != self.candidate.formula or state.get("seed") != self.seed:
            raise ValueError(f"checkpoint is for {state.get('formula')!r} seed {state.get('seed')!r}, "
                             f"not {self.candidate.formula!r} seed {self.seed}")
        epoch = int(state["epoch"])
        if not 0 <= epoch <= self.task.epochs:
            raise ValueError(f"checkpoint epoch {epoch} is outside 0..{self.task.epochs}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.history = [dict(h) for h in state["history"]]
        self.first_loss = state["first_loss"]
        return epoch

    # -- results and cleanup --
    def result(self, status: str, reason: str | None, t0: float, info: dict) -> TrialResult:
        final = self.history[-1] if self.history else {}
        score = final.get(self.task.metric.key(self.split)) if status == "ok" else None
        if self.device.type == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(self.device), "cuda_max_allocated"
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            peak, kind = rss * (1 if sys.platform == "darwin" else 1024), "process_max_rss"
        coefs = self.coefficients()
        return TrialResult(status, score, epochs_completed=len(self.history), data=dict(self.data.provenance),
                           metrics=dict(final), history=[dict(h) for h in self.history], coefficients=coefs,
                           wall_seconds=time.perf_counter() - t0, peak_memory_bytes=int(peak),
                           peak_memory_kind=kind, reason=reason, resumed_from_epoch=self.resumed_from,
                           device=str(self.device), **info)

    def free(self) -> None:
        """Keep the learned coefficients, drop the model and optimizer state."""
        self.final_coefficients = self.coefficients()
        self.model = self.optimizer = self.scheduler = None
        self.acts = []
        if self.device.type == "cuda":
            # a cycle can hold GPU tensors that the next trial needs; on the CPU, reference
            # counting frees the model and the collector's own schedule does the rest, and a
            # full collection costs 0.4 s a run in a process holding sympy's caches
            gc.collect()
            torch.cuda.empty_cache()


def _cpu_copy(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


@contextlib.contextmanager
def _trial_environment(device: torch.device, num_threads: int | None, deterministic: bool | None):
    """Set threads and determinism for one trial; restore the caller's settings after."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_det, cudnn_bench = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    want_det = device.type == "cpu" if deterministic is None else deterministic
    try:
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        torch.use_deterministic_algorithms(want_det, warn_only=True)
        torch.backends.cudnn.deterministic = want_det
        torch.backends.cudnn.benchmark = not want_det and device.type == "cuda"
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_det, cudnn_bench


def _describe(candidate) -> dict:
    d = candidate.to_dict()
    try:
        d["fingerprint"] = candidate.fingerprint
    except (ValueError, RuntimeError, ZeroDivisionError, OverflowError) as e:
        d["fingerprint"] = None
        d["fingerprint_error"] = str(e)
    return d


def _versions() -> dict:
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__}


__all__ = ["ProxyTask", "Checkpoint", "Report", "TEXT_DEFAULTS"]
