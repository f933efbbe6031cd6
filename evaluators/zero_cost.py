"""Zero-cost scores: rank candidates before (or instead of) training them.

- `entropy_score`: the paper's own quantities, no data, milliseconds: scale-free,
  bin-free negentropy and WAFBC distance, the output's atom mass, and the paper's raw
  output entropy.
- `grad_norm_score`: a data-aware proxy from the zero-cost NAS literature, one batch.

Both may return NaN (a function the theory does not cover, a gradient that
overflows). NaN is an outcome to report, never a number to rank by.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from evaluators import data as data_mod


def entropy_score(candidate, sigma: float = 1.0) -> dict:
    """EAFO scores of `candidate` (at its initial coefficients) for inputs x ~ N(0, sigma^2).

    The EAFO theory (Sun et al., ICLR 2025) reads an activation through the law of its
    output. Scale-free and bin-free (unchanged when the activation is multiplied by a
    positive constant, which a following linear layer undoes; no estimator width):
      negentropy: how far the continuous part of the output is from the Gaussian of the
        same variance (its KL divergence from it, nats; 0 for a linear activation). The
        scale-free form of the paper's "lower output entropy is better": higher is
        predicted better.
      wafbc_distance: entropy gap between the worst activation (a scaled Gaussian CDF,
        spanning the activation's range over [-3 sigma, 3 sigma]) and the continuous part
        of the output; larger is predicted better.
      atom_mass: probability of the output's point masses (1/2 for ReLU, 0 for
        GELU); its own feature, since the differential entropy of a law with an atom is
        -infinity, and any finite number for it is an estimator's convention.
    Not scale-free, kept as the paper defines it:
      output_entropy: H[f(x)] in nats, atoms charged as if spread over
        spaces.eafo.BIN_WIDTH; it moves by log(a) when f is scaled by a.
    Also "sigma" (the input std used) and "seconds". Definitions: spaces.eafo.OutputLaw.
    sigma: the pre-activation std the theory assumes; 1.0 is the paper's, and
      evaluators.preactivation_std measures a model's. Every score depends on it.
    When the theory does not apply (spaces.eafo raises ValueError or ArithmeticError),
    the scores are NaN and "error" says why; NaN is reported, never ranked.
    """
    from spaces import eafo  # imported lazily, so evaluators import without sympy work

    t0 = time.perf_counter()
    out = {key: math.nan for key in ENTROPY_KEYS}
    out["sigma"] = float(sigma)
    try:
        law = eafo.output_law(candidate, sigma)
        out.update(negentropy=law.negentropy, wafbc_distance=law.wafbc_distance,
                   atom_mass=law.atom_mass, output_entropy=float(eafo.output_entropy(candidate, sigma)))
    except (ValueError, ArithmeticError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = time.perf_counter() - t0
    return out


# What entropy_score returns besides "sigma", "seconds" and "error".
ENTROPY_KEYS = ("negentropy", "wafbc_distance", "atom_mass", "output_entropy")


def grad_norm_score(candidate, task, seed: int = 0) -> float:
    """Gradient norm at initialisation on one training batch.

    The ``grad_norm`` proxy of Abdelfattah, Mehrotra, Dudziak and Lane, "Zero-Cost
    Proxies for Lightweight NAS", ICLR 2021: the sum over parameter tensors of the
    Euclidean norm of d(loss)/d(parameter), for the task's model freshly
    initialised (seed `seed`) with `candidate` as its activation, on the first
    `task.batch_size` images of the seed's shuffled training split, in fp32.
    Larger is predicted better.

    Returns NaN for a candidate that fails spaces.sanity_check (and whatever the
    gradient gives, inf or NaN included, otherwise). The global RNG is left as it was.
    """
    from spaces import sanity_check

    if task.sanity and sanity_check(candidate) is not None:
        return math.nan
    device = task.resolve_device()
    data = task.load_split("val", device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = task.build(candidate, data)
        model.train()
        gen = torch.Generator(device=device).manual_seed(seed * 1_000_003)  # epoch 0's batch order
        xb, yb = next(data_mod.epoch_batches(data.train_x, data.train_y, task.batch_size, gen))
        loss = F.cross_entropy(model(xb).float(), yb)
        loss.backward()
        norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
        score = torch.stack(norms).sum().item()
    del model
    return score


__all__ = ["entropy_score", "grad_norm_score", "ENTROPY_KEYS"]
