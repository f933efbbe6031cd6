"""Adaptive confirmation seeds (racing): seeds go only where the decision is still open.

`--confirm-seeds S` is the most seeds any candidate gets. Confirmation runs in
rounds of cumulative seed counts (`rounds(S)`: 3, 5, 8, 10 for S = 10). After
each round but the last, a candidate whose mean improvement over the
reference is not above 0 on its paired seeds (or which has no successful run
at all) is out: it gets no more seeds. The reference runs as long as any
candidate does. The study ends when every candidate is out or has S seeds.

Why this keeps the winner decision's error rate: racing never claims anything
early. The claim is made once, at the end, by `search.stats.winners` over every
candidate (stopped ones included, so Holm's m is unchanged). A stopped
candidate has a mean improvement <= 0, so its one-sided p-value is >= 0.5 and
it can neither be claimed nor change which others are: the claims are a
subset of what the fixed design (every candidate on S seeds) would claim on
the same runs, and the familywise error rate can only go down. What racing can
lose is power: a real winner that happens to trail GELU after 3 seeds stops
(for a 1.5 sd effect that is P(mean of 3 differences <= 0) ~ 0.5 %; `simulate`
measures it).

The plan is a pure function of the saved results, so an interrupted
confirmation resumes by replaying the rounds from `confirm.jsonl`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

FIRST_ROUND = 3   # seeds before any candidate may stop: fewer tell too little


def rounds(max_seeds: int) -> list[int]:
    """Cumulative seeds per round: 3, then about x1.5 (at least +2) each round, up to max_seeds."""
    if max_seeds < 1:
        raise ValueError(f"max_seeds must be positive, got {max_seeds}")
    out = [min(max_seeds, FIRST_ROUND)]
    while out[-1] < max_seeds:
        out.append(min(max_seeds, max(out[-1] + 2, math.ceil(1.5 * out[-1]))))
    return out


@dataclass
class RaceState:
    """Where a confirmation stands: what to run next, and who stopped."""

    todo: list[tuple[str, int]]        # (key, seed) pairs of the current round not run yet; [] when finished
    round: int                         # 1-based index of the current (or last) round
    seeds: int                         # cumulative seeds of that round
    out: dict[str, int] = field(default_factory=dict)  # key -> seeds it had when it stopped
    active: list[str] = field(default_factory=list)    # keys still racing (reference included)

    @property
    def finished(self) -> bool:
        return not self.todo


def plan(keys: list[str], reference: str, seeds: list[int], results: dict[tuple[str, int], float | None],
         adaptive: bool = True) -> RaceState:
    """The next round's pairs, replaying every round from the saved results.

    keys: every candidate's key (the reference's included); seeds: the S seeds in order.
    results: (key, seed) -> improvement-oriented score (higher is better; the
      caller multiplies by the metric's sign), or None for a run that ended
      without a score (diverged, rejected). Pairs not in `results` are not run yet.
    adaptive: False runs every candidate on every seed in one round (the fixed design).
    """
    if reference not in keys:
        raise ValueError(f"the reference {reference!r} is not among the candidates")
    schedule = rounds(len(seeds)) if adaptive else [len(seeds)]
    active = list(keys)
    out: dict[str, int] = {}
    for k, n in enumerate(schedule, 1):
        todo = [(key, s) for s in seeds[:n] for key in active if (key, s) not in results]
        if todo:
            return RaceState(todo, k, n, out, active)
        if n == schedule[-1]:
            break
        for key in active:
            if key != reference and _behind(key, reference, seeds[:n], results):
                out[key] = n
        active = [key for key in active if key not in out]
        if active == [reference]:  # every candidate is out: the reference has nothing to race
            break
    return RaceState([], k, n, out, active)


def _behind(key: str, reference: str, seeds: list[int], results) -> bool:
    """Out: no successful run at all, or a mean improvement <= 0 over >= 2 paired seeds."""
    mine = [results[(key, s)] for s in seeds]
    if all(v is None for v in mine):
        return True
    diffs = [v - results[(reference, s)] for s, v in zip(seeds, mine)
             if v is not None and results[(reference, s)] is not None]
    return len(diffs) >= 2 and float(np.mean(diffs)) <= 0.0


# ---------------------------------------------------------------------------
# Simulation: the error rate, power and cost of the decision, fixed and racing
# ---------------------------------------------------------------------------

def simulate(n_candidates: int, max_seeds: int, effects=(), n_studies: int = 20_000, adaptive: bool = False,
             seed: int = 0, alpha: float | None = None) -> dict:
    """Simulated studies of `n_candidates` candidates against one reference.

    Per seed, the reference and every candidate score N(0, 1) (candidate i plus
    effects[i] * sqrt(2), so effects are in standard deviations of the paired
    difference; missing effects are 0). Decisions as in confirmation: racing
    (adaptive) or not, then `search.stats` (paired t-test, Holm).

    Returns fwer (share of studies claiming any candidate with effect 0),
    power (per candidate with an effect > 0: share of studies claiming it),
    runs (mean training runs per study, the reference's included) and
    fixed_runs ((n_candidates + 1) * max_seeds).
    """
    from search.stats import ALPHA, holm, one_sided_p

    alpha = ALPHA if alpha is None else alpha
    rng = np.random.default_rng(seed)
    mu = np.zeros(n_candidates)
    mu[:len(effects)] = effects
    ref = rng.standard_normal((n_studies, 1, max_seeds))
    cand = rng.standard_normal((n_studies, n_candidates, max_seeds)) + (mu * math.sqrt(2))[None, :, None]
    diffs = cand - ref
    stopped_at = np.full((n_studies, n_candidates), max_seeds)
    active = np.ones((n_studies, n_candidates), dtype=bool)
    if adaptive:
        for n in rounds(max_seeds)[:-1]:
            behind = active & (diffs[..., :n].mean(axis=-1) <= 0.0)
            stopped_at[behind] = n
            active &= ~behind
    p = np.where(active, one_sided_p(diffs), 1.0)  # a stopped candidate's p is >= 0.5: as good as 1
    claimed, _, _ = holm(p, alpha)
    null = mu == 0
    runs = stopped_at.sum(axis=-1) + stopped_at.max(axis=-1)  # the reference runs while any candidate does
    return {
        "n_candidates": n_candidates, "max_seeds": max_seeds, "adaptive": adaptive, "n_studies": n_studies,
        "effects": [float(e) for e in mu],
        "fwer": float((claimed & null).any(axis=-1).mean()) if null.any() else 0.0,
        "power": {int(i): float(claimed[:, i].mean()) for i in np.flatnonzero(mu > 0)},
        "runs": float(runs.mean()), "fixed_runs": (n_candidates + 1) * max_seeds,
    }


__all__ = ["rounds", "plan", "RaceState", "simulate", "FIRST_ROUND"]
