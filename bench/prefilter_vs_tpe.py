"""Does --prefilter M buy anything? Prefilter + TPE against TPE alone, on the same trainings.

    nice -n 5 python bench/prefilter_vs_tpe.py [--repeats 4] [--trials 14] [--prefilter 8]
        [--train-size 2000] [--val-size 1000] [--epochs 1] [--out bench/results/prefilter_vs_tpe_cpu.json]

For each repeat r (seed r: the sampler's and the training's), the same study is run
twice with the Optuna backend (search.optuna_backend.run_optuna, SQLite, the real
policy: baselines first, deduplication) on eafo_default at the measured sigma: once
with TPE alone, once with --prefilter M (M TPE proposals per trial, the surrogate of
evaluators.prefilter picks one). Both train on real Fashion-MNIST with the real
ProxyTask. A training is a (candidate, seed) pair: both arms of a repeat share the
trainings they both ask for (the four baselines at least), which CPU determinism
makes identical anyway.

What is measured, per repeat and arm, over the trials that trained in trial order
(the four baselines first, common to both):
- trainings_to_target: the first training whose validation score is within noise of
  the best score any arm found in that repeat (same seed, so comparable): best - sd,
  sd the seed-to-seed standard deviation of the baselines' scores, pooled over the
  four baselines and the repeats; None when the arm never got there (censored);
- best_so_far: the best score after each training.
The summary gives the mean trainings to target (censored at trials + 1), how many
repeats each arm won, and the mean best score at the end. Prints JSON, writes --out.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--trials", type=int, default=14, help="trials per study, the 4 baselines included")
    p.add_argument("--prefilter", type=int, default=8, help="proposals per trial in the prefilter arm")
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per training")
    p.add_argument("--out", default=str(ROOT / "bench/results/prefilter_vs_tpe_cpu.json"))
    a = p.parse_args(argv)

    import torch

    import spaces
    from evaluators import ProxyTask, preactivation_std
    from search.config import SearchConfig
    from search.optuna_backend import run_optuna

    torch.set_num_threads(a.threads)
    trainings: dict[tuple, object] = {}  # (fingerprint, seed) -> TrialResult
    seconds = []

    class SharedTask(ProxyTask):
        """ProxyTask whose trainings both arms of a repeat share (same candidate, same seed)."""

        def evaluate(self, candidate, seed=0, report=None, split="val", **kw):
            key = (candidate.fingerprint, seed, split)
            if key not in trainings:
                t0 = time.perf_counter()
                trainings[key] = super().evaluate(candidate, seed=seed, split=split, **kw)
                seconds.append(time.perf_counter() - t0)
            result = trainings[key]
            for epoch, metrics in enumerate(result.history or [], 1):
                if report is not None:
                    report(epoch, metrics)
            return result

    t_start = time.perf_counter()
    stats = preactivation_std("vit-nano")
    task = SharedTask(epochs=a.epochs, train_size=a.train_size, val_size=a.val_size, device="cpu",
                      num_threads=a.threads)
    space = spaces.get_space("eafo_default", sigma=stats.sigma)
    arms = {"tpe": 1, f"prefilter_{a.prefilter}": a.prefilter}
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for arm, m in arms.items():
                config = SearchConfig(space="eafo_default", trials=a.trials, epochs=a.epochs,
                                      train_size=a.train_size, val_size=a.val_size, seed=r, prefilter=m,
                                      sigma=stats.sigma, runs_dir=tmp, study=f"{arm}-{r}").validate()
                config.study_dir.mkdir(parents=True, exist_ok=True)
                t0 = time.perf_counter()
                records = run_optuna(config, space, task, config.study_dir, progress=False)
                trained = [rec for rec in sorted(records, key=lambda x: x.number)
                           if rec.duplicate_of is None and rec.status in ("ok", "pruned", "rejected", "diverged")]
                runs[(arm, r)] = {"scores": [rec.score for rec in trained],
                                  "formulas": [rec.formula for rec in trained],
                                  "baselines": {rec.baseline: rec.score for rec in trained if rec.baseline},
                                  "seconds": time.perf_counter() - t0}
                best = max((s for s in runs[(arm, r)]["scores"] if s is not None), default=None)
                print(f"repeat {r} {arm}: best {best} in {runs[(arm, r)]['seconds']:.0f} s", file=sys.stderr)

    # the noise: seed-to-seed sd of each baseline's score, pooled over the baselines
    base_names = sorted(runs[("tpe", 0)]["baselines"])
    per_baseline = {b: [runs[("tpe", r)]["baselines"][b] for r in range(a.repeats)] for b in base_names}
    pooled = [statistics.variance(v) for v in per_baseline.values() if len(v) > 1 and None not in v]
    noise = math.sqrt(sum(pooled) / len(pooled)) if pooled else 0.0

    out = {"settings": vars(a), "sigma": stats.sigma, "noise_sd": noise, "per_repeat": [], "versions": {
        "python": platform.python_version(), "torch": torch.__version__}, "machine": platform.platform()}
    hits = {arm: [] for arm in arms}
    finals = {arm: [] for arm in arms}
    wins = {arm: 0 for arm in arms}
    for r in range(a.repeats):
        best = max(s for arm in arms for s in runs[(arm, r)]["scores"] if s is not None)
        target = best - noise
        row = {"repeat": r, "best": best, "target": target}
        reached = {}
        for arm in arms:
            scores = runs[(arm, r)]["scores"]
            hit = next((i + 1 for i, s in enumerate(scores) if s is not None and s >= target), None)
            so_far, cur = [], -math.inf
            for s in scores:
                cur = max(cur, s if s is not None else -math.inf)
                so_far.append(cur if math.isfinite(cur) else None)
            reached[arm] = hit if hit is not None else a.trials + 1
            hits[arm].append(reached[arm])
            finals[arm].append(so_far[-1])
            row[arm] = {"trainings_to_target": hit, "best_so_far": so_far, "final_best": so_far[-1],
                        "best_formula": runs[(arm, r)]["formulas"][scores.index(so_far[-1])],
                        "seconds": runs[(arm, r)]["seconds"]}
        first = min(reached.values())
        for arm in arms:
            if reached[arm] == first and list(reached.values()).count(first) == 1:
                wins[arm] += 1
        out["per_repeat"].append(row)
    out["summary"] = {arm: {"mean_trainings_to_target": statistics.mean(hits[arm]),
                            "trainings_to_target": hits[arm],
                            "repeats_reached": sum(h <= a.trials for h in hits[arm]),
                            "repeats_first": wins[arm],
                            "mean_final_best": statistics.mean(finals[arm])} for arm in arms}
    out["trainings"] = len(trainings)
    out["seconds_per_training"] = statistics.mean(seconds) if seconds else None
    out["wall_seconds"] = time.perf_counter() - t_start
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out["summary"], indent=1))
    return out


if __name__ == "__main__":
    main()
