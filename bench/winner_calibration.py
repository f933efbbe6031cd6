"""The winner decision's error rate, power and cost, by simulation (no training, ~20 s).

    python bench/winner_calibration.py [--studies 20000] [--out bench/results/winner_calibration.json]

Each simulated study compares 5 candidates with GELU (the default: top 2 + 3
other baselines) on paired seeds, as search.confirm does, and decides with
search.stats (one-sided paired t-tests, Holm), with and without racing
(search.racing). Scores are N(0, 1) per run; a candidate with an effect of d
scores d * sqrt(2) more, so d is in standard deviations of the paired
difference. Prints one JSON object (and writes it with --out):

  fwer      share of studies with no real winner that name one (at most 5 % is the target)
  power     share of studies that find a candidate d sd better, the other 4 null
  runs      mean training runs per study, GELU's included (fixed: 6 x seeds)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from search.racing import simulate  # noqa: E402

SEEDS = (3, 5, 10)
EFFECTS = (0.5, 1.0, 1.5, 2.0)
N_CANDIDATES = 5


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=20_000, help="simulated studies per setting")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    for n in SEEDS:
        for adaptive in (False, True):
            null = simulate(N_CANDIDATES, n, n_studies=args.studies, adaptive=adaptive, seed=n)
            row = {"seeds": n, "design": "racing" if adaptive else "fixed", "fwer": null["fwer"],
                   "runs_null": null["runs"], "fixed_runs": null["fixed_runs"], "power": {}, "runs_one_real": {}}
            for d in EFFECTS:
                real = simulate(N_CANDIDATES, n, effects=(d,), n_studies=args.studies, adaptive=adaptive,
                                seed=1000 + n)
                row["power"][str(d)] = real["power"][0]
                row["runs_one_real"][str(d)] = real["runs"]
            rows.append(row)
    out = {"bench": "winner_calibration", "n_candidates": N_CANDIDATES, "studies_per_setting": args.studies,
           "alpha": 0.05, "decision": "one-sided paired t-test per candidate vs GELU, Holm over the candidates",
           "racing": "rounds 3, 5, 8, 10 seeds; out when the mean improvement is <= 0 after a round",
           "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
