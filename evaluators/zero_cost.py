"""Zero-cost scores: rank candidates before (or instead of) training them.

- `entropy_score`: the paper's own quantities, no data, milliseconds.
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


def entropy_score(candidate) -> dict:
    """EAFO output entropy and WAFBC distance of `candidate` (Sun et al., ICLR 2025).

    output_entropy: H[f(x)] for x ~ N(0, 1); EAFO moves activations *down* this
      entropy, so lower is predicted better.
    wafbc_distance: distance from the worst activation (a scaled Gaussian CDF,
      the entropy maximiser); larger is predicted better.
    Returns {"output_entropy", "wafbc_distance", "seconds"} and, when the theory
    does not apply to the candidate (spaces.eafo raises ValueError), NaNs and "error".
    """
    from spaces import eafo  # written alongside; imported lazily so evaluators import without it

    t0 = time.perf_counter()
    out = {"output_entropy": math.nan, "wafbc_distance": math.nan}
    try:
        out["output_entropy"] = float(eafo.output_entropy(candidate))
        out["wafbc_distance"] = float(eafo.wafbc_distance(candidate))
    except (ValueError, ArithmeticError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    out["seconds"] = time.perf_counter() - t0
    return out


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


__all__ = ["entropy_score", "grad_norm_score"]
