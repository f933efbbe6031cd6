"""Does the cheap proxy rank activations the way a longer run does? Do the zero-cost scores?

Trains 12 activations on the proxy task at budgets B and 4B epochs, several seeds each:
the 8 of the first measurement (ReLU, GELU, SiLU, ELU, tanh, CRReLU, and GELU and SiLU
with eps = +0.01 learnable along their own EAFO correction), the paper's neighbours PReLU
and squared ReLU, and EAFO descent steps (eps = -0.1, fixed) for GELU and SiLU. The
corrections are derived for N(0, sigma^2) inputs with sigma the model's measured
pre-activation std (evaluators.preactivation_std; --correction-sigma 1 for the paper's).
It reports:

- mean +- std of the score per activation and budget;
- Kendall tau against the 4B ranking (of the per-activation means), with its p-value
  (scipy.stats.kendalltau, tau-b) and a 95% bootstrap interval over activations
  (scipy.stats.bootstrap, paired, percentile, 2000 resamples, seeded), for the B ranking
  and for each zero-cost feature: negentropy, WAFBC distance and atom mass at sigma = 1
  and at the measured sigma, the paper's -output entropy at sigma = 1, and the gradient
  norm at init. Each feature is read as "higher predicts better"; a negative tau says the
  opposite order, an interval containing 0 says it does not predict.

    PYTHONPATH=. python bench/proxy_fidelity.py                 # B = 2, 3 seeds, 10k images (~40 min, 2 cores)
    PYTHONPATH=. python bench/proxy_fidelity.py --budget 1 --factor 2 --seeds 1 \\
        --train-size 500 --val-size 500 --activations relu,gelu-eafo   # smoke run, ~1 min

Resumable: each finished (activation, budget, seed) is written to
<out without .json>.trials/<activation>__B<budget>__s<seed>.json; a rerun with the same
task settings reads it back instead of training again. Prints a markdown table, then
one JSON object, on stdout (progress goes to stderr), and writes the JSON with every
trial's result to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import sympy as sp  # noqa: E402
import torch  # noqa: E402
from scipy.stats import bootstrap, kendalltau  # noqa: E402

import spaces  # noqa: E402
from evaluators import ProxyTask, entropy_score, grad_norm_score, preactivation_std  # noqa: E402
from spaces.correction import correction  # noqa: E402

ASCENT_EPS = 0.01    # the paper's CRReLU init, learnable: as in the first measurement
DESCENT_EPS = -0.1   # a fixed EAFO descent step (lowers the output entropy)
BOOTSTRAP_RESAMPLES = 2000
ACTIVATIONS = ("relu", "gelu", "silu", "elu", "tanh", "crrelu", "gelu+eafo", "silu+eafo",
               "prelu", "squared_relu", "gelu-eafo", "silu-eafo")
# Optional extras for --activations.
EXTRAS = ("leaky_relu", "star_relu", "mish", "softplus")


def corrected(base: str, sigma: float, eps: float, learnable: bool) -> spaces.Candidate:
    """base + eps * (base's own EAFO correction for N(0, sigma^2) inputs)."""
    e = sp.Symbol("eps", real=True)
    return spaces.Candidate.from_expr(spaces.get_base(base) + e * correction(base, sigma),
                                      init={"eps": eps}, learnable=["eps"] if learnable else [])


def activation(name: str, sigma: float) -> tuple[spaces.Candidate, str]:
    """The Candidate for a benchmark name, and where it comes from."""
    if name.endswith("+eafo"):
        base = name[:-len("+eafo")]
        return corrected(base, sigma, ASCENT_EPS, True), \
            f"{base} + eps*correction(sigma={sigma:.4g}), eps {ASCENT_EPS} learnable"
    if name.endswith("-eafo"):
        base = name[:-len("-eafo")]
        return corrected(base, sigma, DESCENT_EPS, False), \
            f"{base} + eps*correction(sigma={sigma:.4g}), eps {DESCENT_EPS} fixed (EAFO descent)"
    built = spaces.builtin_candidates()
    if name not in built:
        valid = ", ".join(list(ACTIVATIONS) + list(EXTRAS))
        raise SystemExit(f"unknown activation {name!r}; valid: {valid} (any built-in name)")
    origin = "Sun et al. 2025" if name == "crrelu" else "built-in"
    return built[name], origin


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def rank_agreement(scores: list[float], reference: list[float], seed: int = 0) -> dict:
    """Kendall tau-b of `scores` against `reference` over the same activations (NaNs left
    out), its p-value, and a 95% percentile bootstrap interval over activations."""
    pairs = [(x, y) for x, y in zip(scores, reference) if math.isfinite(x) and math.isfinite(y)]
    out = {"tau": None, "p": None, "ci95": None, "n": len(pairs)}
    if len(pairs) < 3:
        return out
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    res = kendalltau(a, b)
    if not math.isfinite(res.statistic):
        return out  # one of the rankings is all ties
    out.update(tau=float(res.statistic), p=float(res.pvalue))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples (all ties) of very few activations
        boot = bootstrap((a, b), lambda x, y: kendalltau(x, y).statistic, paired=True,
                         vectorized=False, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                         rng=np.random.default_rng(seed))
    lo, hi = boot.confidence_interval
    if math.isfinite(lo) and math.isfinite(hi):
        out["ci95"] = [float(lo), float(hi)]
    return out


def _trial_path(trials_dir: Path, name: str, budget: int, seed: int) -> Path:
    safe = name.replace("+", "_plus_").replace("-", "_minus_")
    return trials_dir / f"{safe}__B{budget}__s{seed}.json"


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=2, allow_nan=False))
    tmp.replace(path)  # atomic


def run_trial(task: ProxyTask, name: str, cand, budget: int, seed: int, trials_dir: Path) -> dict:
    """One training, or its saved result when the same settings finished it before."""
    path = _trial_path(trials_dir, name, budget, seed)
    settings = {**task.replace(epochs=budget).to_dict(), "formula": cand.describe()}
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            return {**saved["result"], "resumed": True}
    r = task.replace(epochs=budget).evaluate(cand, seed=seed)
    _write_json(path, {"settings": settings, "result": r.to_dict()})
    return r.to_dict()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Kendall tau of the proxy's and the zero-cost "
                                             "scores' rankings against training at 4B epochs")
    ap.add_argument("--budget", type=int, default=2, help="B, in epochs")
    ap.add_argument("--factor", type=int, default=4, help="the long run is factor * B epochs")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--activations", default=",".join(ACTIVATIONS),
                    help=f"comma-separated (default: the 12); extras: {', '.join(EXTRAS)}")
    ap.add_argument("--correction-sigma", default="measured",
                    help="input std the EAFO corrections assume: 'measured' (the model's "
                         "pre-activation std at init) or a number (1 is the paper's)")
    ap.add_argument("--train-size", type=int, default=10_000)
    ap.add_argument("--val-size", type=int, default=5_000)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--model", default="vit-nano")
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default="bench/out/proxy_fidelity.json")
    args = ap.parse_args(argv)

    task = ProxyTask(dataset=args.dataset, model=args.model, epochs=args.budget, train_size=args.train_size,
                     val_size=args.val_size, batch_size=args.batch_size, device=args.device,
                     num_threads=args.threads, data_root=args.data_root)
    pre = preactivation_std(args.model, args.dataset, data_root=args.data_root)
    sigma = pre.sigma if args.correction_sigma == "measured" else float(args.correction_sigma)
    budgets = sorted({args.budget, args.factor * args.budget})
    short, long_ = budgets[0], budgets[-1]
    names = [n.strip() for n in args.activations.split(",") if n.strip()]
    acts = {n: activation(n, sigma) for n in names}
    out_path = Path(args.out) if args.out else Path("bench/out/proxy_fidelity.json")
    trials_dir = out_path.with_suffix(".trials")
    print(f"sigma: measured {pre.sigma:.4f} on {args.model}; corrections at {sigma:.4g}",
          file=sys.stderr, flush=True)

    rows, trials = {}, []
    t_start = time.perf_counter()
    for name, (cand, origin) in acts.items():
        row = {"formula": cand.describe(), "origin": origin}
        for s_label, s in (("1", 1.0), ("measured", pre.sigma)):
            zc = entropy_score(cand, s)
            for key in ("negentropy", "wafbc_distance", "atom_mass", "output_entropy"):
                row[f"{key}@{s_label}"] = zc[key]
        row["grad_norm"] = _mean_std([grad_norm_score(cand, task, seed=s) for s in range(args.seeds)])[0]
        for b in budgets:
            scores = []
            for seed in range(args.seeds):
                r = run_trial(task, name, cand, b, seed, trials_dir)
                scores.append(r["score"])
                trials.append({"activation": name, "budget": b, **r})
                print(f"[{time.perf_counter() - t_start:7.1f}s] {name:12s} B={b:<3d} seed={seed} "
                      f"{r['status']} {r['score']}{' (saved)' if r.get('resumed') else ''}",
                      file=sys.stderr, flush=True)
            m, s = _mean_std(scores)
            row[f"mean@{b}"], row[f"std@{b}"] = m, s
            row[f"failed@{b}"] = sum(x is None for x in scores)
        rows[name] = row

    order = list(rows)
    reference = [rows[n][f"mean@{long_}"] for n in order]
    features = {  # each read as "higher predicts better"
        f"accuracy at {short} epochs": [rows[n][f"mean@{short}"] for n in order],
        **{f"{key}@{s}": [rows[n][f"{key}@{s}"] for n in order]
           for s in ("1", "measured") for key in ("negentropy", "wafbc_distance", "atom_mass")},
        "-output_entropy@1 (the paper's)": [-rows[n]["output_entropy@1"] for n in order],
        "grad_norm": [rows[n]["grad_norm"] for n in order],
    }
    agreement = {k: rank_agreement(v, reference) for k, v in features.items()} \
        if short != long_ else {}
    out = {
        "budgets": budgets,
        "seeds": args.seeds,
        "sigma": {"measured": pre.to_dict(), "corrections": sigma},
        "activations": rows,
        "kendall_tau_vs_long": agreement,
        "task": task.to_dict(),
        "seconds": round(time.perf_counter() - t_start, 1),
        "device": str(task.resolve_device()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }

    lines = [f"| activation | acc % @{short} ep | acc % @{long_} ep | negentropy (sigma {pre.sigma:.3f}) "
             "| negentropy (sigma 1) | WAFBC dist (1) | atom mass | -H (1) | grad-norm |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in sorted(order, key=lambda n: -rows[n][f"mean@{long_}"] if math.isfinite(rows[n][f"mean@{long_}"])
                    else math.inf):
        r = rows[n]
        lines.append(f"| {n} | {_fmt(r[f'mean@{short}'], r[f'std@{short}'])} | "
                     f"{_fmt(r[f'mean@{long_}'], r[f'std@{long_}'])} | {r['negentropy@measured']:.3f} | "
                     f"{r['negentropy@1']:.3f} | {r['wafbc_distance@1']:.3f} | {r['atom_mass@1']:.2f} | "
                     f"{-r['output_entropy@1']:.3f} | {r['grad_norm']:.3g} |")
    if agreement:
        lines += ["", f"| ranking by (higher predicts better) | Kendall tau vs {long_} epochs | p | "
                      "95% bootstrap CI | n |", "| --- | --- | --- | --- | --- |"]
        for k, v in agreement.items():
            ci = "n/a" if v["ci95"] is None else f"[{v['ci95'][0]:+.2f}, {v['ci95'][1]:+.2f}]"
            tau = "n/a" if v["tau"] is None else f"{v['tau']:+.2f}"
            p = "n/a" if v["p"] is None else f"{v['p']:.3f}"
            lines.append(f"| {k} | {tau} | {p} | {ci} | {v['n']} |")
    print("\n".join(lines))
    print(json.dumps(_finite(out), indent=2, allow_nan=False))
    if args.out:
        _write_json(out_path, {**out, "trials": trials})
    return out


def _fmt(m: float, s: float) -> str:
    return "n/a" if not math.isfinite(m) else f"{100 * m:.2f} ± {100 * s:.2f}"


def _finite(v):
    """NaN/inf -> None for strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


if __name__ == "__main__":
    main()
