"""Confirmation on one real study: racing against the fixed design, and Ray against serial.

    python bench/confirmation.py [--out bench/results/confirmation_cpu.json] [--quick]

1. Racing vs fixed, on the same study. A small default-space search on
   Fashion-MNIST (`python -m search.run`, Optuna backend; `--default-study`:
   the bare command's) confirms its top 2 and the 4 baselines with racing, up
   to 10 seeds. A copy of the study is then
   confirmed with --no-racing: it reuses the racing runs (training is
   deterministic per candidate and seed on the CPU, so they are the runs the
   fixed design would have made) and trains the rest. Reported: runs and
   training seconds spent, and the decisions (winners, and who racing stopped).
2. Ray vs serial. The same confirmation entries on 3 fresh seeds, every
   candidate on every seed (18 runs): in this process one after another
   (search.confirm.LocalRunner, torch on 2 threads), then as Ray tasks on a
   loopback head with 2 CPUs, --cpus-per-trial 1 and --max-concurrent 2
   (search.ray_backend.confirm.RayRunner). Reported: wall time of each.

Prints one JSON object (and writes it with --out). Wall times depend on what
else the machine runs: the JSON names the machine and its load average.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray stays on loopback (shared/DESIGN.md)

# A smaller study than the bare command's (10 trials of 2 epochs on 2,000 images, 2,000 test
# images; 60 confirmation runs at most): ~5 min of confirmation on 2 idle cores, not ~20.
# --default-study uses the bare command's settings instead.
STUDY = ["--space", "eafo_default", "--trials", "10", "--epochs", "2", "--train-size", "2000",
         "--val-size", "1000", "--test-size", "2000", "--confirm-top", "2", "--confirm-seeds", "10",
         "--device", "cpu", "--study", "bench"]
DEFAULT_STUDY = ["--space", "eafo_default", "--confirm-seeds", "10", "--device", "cpu", "--study", "bench"]
QUICK = ["--trials", "6", "--epochs", "1", "--train-size", "500", "--val-size", "300", "--test-size", "500",
         "--confirm-seeds", "5"]
RAY_SEEDS = [101, 102, 103]


def _run_cli(args: list[str]) -> tuple[int, float, str]:
    from search import run

    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run.main(args)
    return rc, time.perf_counter() - t0, out.getvalue()


def _decisions(study_dir: Path) -> dict:
    from search import confirm as cm

    rows = json.loads((study_dir / "leaderboard.json").read_text())
    records = cm.load(study_dir / cm.CONFIRM_FILE)
    return {"winners": [r["label"] for r in rows if r["beats_gelu"]],
            "stopped": {r["label"]: r["stopped_after"] for r in rows if r.get("stopped_after")},
            "rows": [{k: r[k] for k in ("label", "formula", "coefficients", "n_seeds", "mean", "std",
                                        "mean_diff_vs_gelu", "ci_low", "ci_high", "p_holm", "beats_gelu")}
                     for r in rows if r["confirmed"]],
            "runs": len(records), "train_seconds": round(sum(r.wall_time or 0.0 for r in records), 1)}


def racing_vs_fixed(runs_dir: Path, study: list[str]) -> dict:
    args = study + ["--runs-dir", str(runs_dir)]
    rc, wall, _ = _run_cli(args)
    assert rc == 0, f"the search exited with {rc}"
    racing = {**_decisions(runs_dir / "bench"), "wall_seconds": round(wall, 1)}
    fixed_dir = runs_dir / "fixed"
    fixed_dir.mkdir()
    shutil.copytree(runs_dir / "bench", fixed_dir / "bench")
    rc, wall, _ = _run_cli(args[:-2] + ["--runs-dir", str(fixed_dir), "--no-racing"])
    assert rc == 0, f"the fixed confirmation exited with {rc}"
    fixed = {**_decisions(fixed_dir / "bench"), "wall_seconds_extra_runs": round(wall, 1)}
    return {"racing": racing, "fixed": fixed, "runs_saved": fixed["runs"] - racing["runs"],
            "share_saved": round(1 - racing["runs"] / fixed["runs"], 3),
            "same_winners": racing["winners"] == fixed["winners"]}


def ray_vs_serial(study_dir: Path, work: Path) -> dict:
    from evaluators import ACCURACY
    from ray_helpers import start_head, stop_head

    from search import confirm as cm
    from search import run
    from search.baselines import resolve
    from search.config import SearchConfig
    from search.ray_backend import session
    from search.ray_backend.confirm import RayRunner

    config = SearchConfig.load(study_dir / "config.json")
    entries, _ = cm.select(_trial_records(study_dir), config.confirm_top, resolve(config.baselines), ACCURACY)
    _, task, _ = run.prepare(config)  # the study's task, device and precision resolved
    serial_dir, ray_dir = work / "serial", work / "ray"
    serial_dir.mkdir(), ray_dir.mkdir()
    t0 = time.perf_counter()
    done = cm.confirm(entries, RAY_SEEDS, serial_dir, cm.LocalRunner(task, serial_dir), ACCURACY, adaptive=False,
                      progress=False)
    serial = time.perf_counter() - t0
    assert done.complete
    proc, address, temp_dir = start_head(num_cpus=2)
    try:
        ray_config = SearchConfig.from_dict({**config.to_dict(), "backend": "ray", "ray_address": address,
                                             "max_concurrent": 2, "cpus_per_trial": 1.0})
        ray_task = run.resolve_hardware(ray_config, task)
        t0 = time.perf_counter()
        with session(ray_config):
            connected = time.perf_counter()
            done = cm.confirm(entries, RAY_SEEDS, ray_dir, RayRunner(ray_config, ray_task, ray_dir), ACCURACY,
                              adaptive=False, progress=False)
        ray_wall = time.perf_counter() - t0
        assert done.complete
        pids = sorted({r.pid for r in done.records})
    finally:
        stop_head(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)
    return {"runs": len(entries) * len(RAY_SEEDS), "serial_seconds": round(serial, 1),
            "serial_threads": task.num_threads or "torch default (2 on 2 cores)",
            "ray_seconds": round(ray_wall, 1), "ray_connect_seconds": round(connected - t0, 1),
            "ray_workers": len(pids), "speedup": round(serial / ray_wall, 2),
            "speedup_excluding_connect": round(serial / (ray_wall - (connected - t0)), 2)}


def _trial_records(study_dir: Path):
    from search.records import TrialRecord

    return [TrialRecord.from_dict(d) for d in json.loads((study_dir / "trials.json").read_text())]


def main(argv=None) -> dict:
    import platform

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--quick", action="store_true", help="a tiny study (a smoke test of this script)")
    p.add_argument("--default-study", action="store_true", help="the bare command's study (slower)")
    p.add_argument("--keep", help="keep the studies in this folder (default: a temporary one)")
    args = p.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="eafo-bench-confirm-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    study = (DEFAULT_STUDY if args.default_study else STUDY) + (QUICK if args.quick else [])
    out = {"bench": "confirmation", "study": study,
           "machine": {"node": platform.node(), "cpus": os.cpu_count(), "load_average_before": os.getloadavg()}}
    out["racing_vs_fixed"] = racing_vs_fixed(work / "runs", study)
    out["ray_vs_serial"] = ray_vs_serial(work / "runs" / "bench", work)
    out["machine"]["load_average_after"] = os.getloadavg()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
