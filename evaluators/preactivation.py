"""The width of an activation's input in a real model: sigma for the EAFO theory.

The theory (spaces.eafo, spaces.correction) models an activation's input as
x ~ N(0, sigma^2), with sigma = 1 in the paper. In a timm ViT at init the MLP's
pre-activations are far narrower: fc1 sees LayerNorm's unit-variance output through
weights drawn with std 0.02, so sigma ~ 0.02 sqrt(dim) (0.16 for vit-nano's dim 64),
where x*exp(-x**2/2) is almost x; the character GPT (GPT-2 init, std 0.02) is alike.
This module measures sigma on real data, per (model preset, dataset, MLP kind), with
forward hooks on the inputs of every activation module:

    >>> stats = preactivation_std("vit-nano")
    >>> stats.sigma, stats.per_layer[0]

and a search passes stats.sigma to spaces.get_space(name, sigma=...) and to
evaluators.entropy_score(candidate, sigma=...), recording stats.to_dict() with its
results.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class PreactivationStats:
    """Pre-activation statistics of one model preset at init.

    sigma: root mean square of every activation input (all layers, images, tokens and
        channels pooled, each layer weighted alike), about 0: the N(0, sigma^2) width.
    mean: the pooled mean (the theory assumes 0; a large value here says it does not hold).
    per_layer: (module name, mean, std, rms) of each activation module's input, in order.
    The rest says what was measured: preset, dataset, activation, images (text:
    sequences of the preset's context length), init seed, MLP kind (plain, or glu where
    the activation is the gate).
    """

    sigma: float
    mean: float
    per_layer: tuple[tuple[str, float, float, float], ...]
    model: str
    dataset: str
    activation: str
    n_images: int
    seed: int
    mlp: str = "plain"

    def to_dict(self) -> dict:
        return {**asdict(self), "per_layer": [dict(zip(("name", "mean", "std", "rms"), row))
                                              for row in self.per_layer]}


def preactivation_std(model: str = "vit-nano", dataset: str = "fashion_mnist", *,
                      activation: str = "gelu", n_images: int = 512, seed: int = 0, mlp: str = "plain",
                      data_root: str | None = None, device: str = "cpu") -> PreactivationStats:
    """Measure the pre-activation std of `model` at init on `n_images` training samples.

    The model is built as a trial builds it (evaluators.ProxyTask: the preset's image
    size and the dataset's normalisation, or the corpus's vocabulary and the preset's
    context; `mlp` "glu" makes the activation the gate of a gated MLP, whose fc1_g has
    the plain fc1's input and init, so about the same width) with `activation` (a name
    of spaces.get_activation; GELU is the ViT and GPT default) in every MLP, initialised under torch.manual_seed(seed) (the global RNG
    is left as it was), and run once, in train mode (BatchNorm uses batch statistics, as
    a first training step does) without gradients, over the first `n_images` training
    images, or (text) over `n_images` training sequences at offsets drawn from `seed`.
    A forward pre-hook on each activation module records its input.
    Cached per arguments for the process (a few seconds for vit-nano on the CPU).
    """
    if not isinstance(n_images, int) or isinstance(n_images, bool) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return _measure(model, dataset, activation, n_images, seed, mlp, data_root, device)


@lru_cache(maxsize=32)
def _measure(model, dataset, activation, n_images, seed, mlp, data_root, device) -> PreactivationStats:
    import spaces
    from evaluators import data as data_mod
    from evaluators import text as text_mod
    from evaluators.task import ProxyTask

    act = spaces.get_activation(activation)  # ValueError listing the valid names
    task = ProxyTask(dataset=dataset, model=model, mlp=mlp, train_size=n_images, device=device,
                     data_root=data_root, sanity=False)
    try:
        data = task.load_split("val", task.resolve_device())
        if task.kind == "text":  # one batch of n_images windows of the training part, seeded
            dev = data.train.device
            inputs = next(data.batches(n_images, torch.Generator(device=dev).manual_seed(seed)))[0]
        else:
            inputs = data.train_x
        devices = [dev] if (dev := inputs.device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            net = task.build(act, data)
    finally:
        data_mod.clear_cache()  # a driver that trains nothing keeps nothing loaded
        text_mod.clear_cache()
        task._splits.clear()
    sums: dict[str, list[float]] = {}

    def hook(name):
        def record(module, inputs):
            x = inputs[0].detach().double()
            s = sums.setdefault(name, [0.0, 0.0, 0.0])
            s[0] += x.numel()
            s[1] += float(x.sum())
            s[2] += float((x * x).sum())
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in net.named_modules()
               if isinstance(m, act)]
    if not handles:
        raise ValueError(f"model {model!r} has no {activation} module to measure "
                         "(does its preset pass act_layer to every MLP?)")
    try:
        # Train mode, as a first training step sees it: BatchNorm normalises with the
        # batch's statistics (in eval mode its fresh running statistics are the identity).
        # Dropout and stochastic depth draw from the seeded RNG; no gradients are kept.
        net.train()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            for i in range(0, inputs.shape[0], task.batch_size):
                net(inputs[i:i + task.batch_size])
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, (n, total, squares) in sums.items():
        mean, second = total / n, squares / n
        rows.append((name, mean, math.sqrt(max(second - mean * mean, 0.0)), math.sqrt(second)))
    sigma = math.sqrt(sum(r[3] ** 2 for r in rows) / len(rows))
    mean = sum(r[1] for r in rows) / len(rows)
    return PreactivationStats(sigma, mean, tuple(rows), model, dataset, activation, n_images, seed, mlp)


__all__ = ["PreactivationStats", "preactivation_std"]
