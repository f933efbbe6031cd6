"""Ray backend scaling: trials per hour at 1 and 2 concurrent trials, and the same small
search under the Optuna backend and under Ray, in one run on this machine.

    PYTHONPATH=. python bench/ray_scaling.py                          # local Ray on loopback
    PYTHONPATH=. python bench/ray_scaling.py --ray-address 127.0.0.1:6379 --trials 12

Every search is the same: the same space, seed, sampler, task and trial count, with
no pruner (every trial trains its full budget, so the work is equal). Ray runs
with 1 CPU per trial (one torch thread), --max-concurrent 1 and then 2; the Optuna
backend runs its trials one after another in this process, once with torch's
default threads (every core) and once with one thread, like a Ray trial. On a
machine shared with other jobs, torch on every core can be several times slower
than on one (its threads wait for each other), hence both.

Figures per search:
  wall_s            the whole run_* call (Ray: includes starting a local instance,
                    or joining the cluster, and Tune's start-up)
  search_s          from the first trial's start to the last trial's end (Ray only,
                    from the workers' events): the steady-state part
  trials_per_hour   finished trials / search_s * 3600 (Optuna: / wall_s)
Prints one JSON object. Ray on one machine stays on loopback (shared/DESIGN.md).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import spaces  # noqa: E402
from evaluators import ProxyTask  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.results import versions  # noqa: E402


def _task(config: SearchConfig, num_threads: int | None = None) -> ProxyTask:
    return ProxyTask(dataset=config.dataset, model=config.model, epochs=config.epochs,
                     train_size=config.train_size, val_size=config.val_size, device=config.device,
                     num_threads=num_threads)


def run_ray_search(base: SearchConfig, runs: Path, concurrent: int) -> dict:
    from search import ray_backend

    config = SearchConfig(**{**base.to_dict(), "backend": "ray", "max_concurrent": concurrent,
                             "study": f"ray-{concurrent}", "runs_dir": str(runs)}).validate()
    t0 = time.perf_counter()
    records = ray_backend.run_ray(config, spaces.get_space(config.space), _task(config), config.study_dir,
                                  progress=False)
    wall = time.perf_counter() - t0
    events = ray_backend.read_events(config.study_dir)
    starts = [e["time"] for e in events if e["event"] in ("start", "duplicate")]
    ends = [e["time"] for e in events if e["event"] == "end"]
    span = max(ends) - min(starts)
    finished = sum(r.status not in ("error", "interrupted", "running") for r in records)
    return {"max_concurrent": concurrent, "trials": finished, "wall_s": round(wall, 1),
            "search_s": round(span, 1), "trials_per_hour": round(finished / span * 3600, 1),
            "statuses": _count(r.status for r in records)}


def run_optuna_search(base: SearchConfig, runs: Path, num_threads: int | None) -> dict:
    from search.optuna_backend import run_optuna

    config = SearchConfig(**{**base.to_dict(), "backend": "optuna", "study": f"optuna-{num_threads}",
                             "runs_dir": str(runs)}).validate()
    config.study_dir.mkdir(parents=True, exist_ok=True)
    task = _task(config, num_threads)
    t0 = time.perf_counter()
    records = run_optuna(config, spaces.get_space(config.space), task, config.study_dir, progress=False)
    wall = time.perf_counter() - t0
    finished = sum(r.status not in ("error", "interrupted", "running") for r in records)
    return {"torch_threads": num_threads or "default (all cores)", "trials": finished,
            "wall_s": round(wall, 1), "trials_per_hour": round(finished / wall * 3600, 1),
            "statuses": _count(r.status for r in records)}


def _count(statuses) -> dict:
    out: dict[str, int] = {}
    for s in statuses:
        out[s] = out.get(s, 0) + 1
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8, help="trials per search, the 4 baselines included")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=1000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--space", default="eafo_default")
    p.add_argument("--ray-address", default=None, help="join this cluster (default: a local instance)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    base = SearchConfig(space=args.space, epochs=args.epochs, train_size=args.train_size,
                        val_size=args.val_size, trials=args.trials, pruner="none", sampler="tpe", seed=0,
                        device=args.device, ray_address=args.ray_address, cpus_per_trial=1.0).validate()
    out = {"settings": {k: getattr(base, k) for k in ("space", "model", "dataset", "epochs", "train_size",
                                                        "val_size", "trials", "pruner", "sampler", "seed",
                                                        "device", "cpus_per_trial", "ray_address")},
           "hardware": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "load_avg_start": os.getloadavg()},
           "versions": versions()}
    with tempfile.TemporaryDirectory(prefix="eafo-ray-scaling-") as tmp:
        runs = Path(tmp)
        out["ray"] = {str(n): run_ray_search(base, runs, n) for n in (1, 2)}
        out["optuna"] = run_optuna_search(base, runs, num_threads=None)
        out["optuna_1_thread"] = run_optuna_search(base, runs, num_threads=1)
    one, two = out["ray"]["1"], out["ray"]["2"]
    out["speedup_2_vs_1"] = round(two["trials_per_hour"] / one["trials_per_hour"], 2)
    out["wall_ray2_over_optuna"] = round(two["wall_s"] / out["optuna"]["wall_s"], 2)
    out["wall_ray2_over_optuna_1_thread"] = round(two["wall_s"] / out["optuna_1_thread"]["wall_s"], 2)
    out["hardware"]["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
