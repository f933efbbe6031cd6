"""Does the cheap proxy rank activations the way a longer run does?

Trains 8 activations (ReLU, GELU, SiLU, ELU, tanh, CRReLU and two EAFO-corrected
smooth bases) on the proxy task at budget B and 4B epochs, several seeds each,
and reports:

- mean +- std of the score per activation and budget,
- Kendall tau between the B and 4B rankings (of the per-activation means),
- Kendall tau of each zero-cost score (EAFO output entropy, WAFBC distance,
  grad-norm at init) against the 4B ranking.

    PYTHONPATH=. python bench/proxy_fidelity.py                        # B=2, 3 seeds, 10k images
    PYTHONPATH=. python bench/proxy_fidelity.py --budget 1 --seeds 1 --train-size 500 --val-size 500

Prints a markdown table, then one JSON object, on stdout (progress goes to stderr),
and writes the JSON with every trial's result to --out.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sympy as sp  # noqa: E402
import torch  # noqa: E402
from scipy.stats import kendalltau  # noqa: E402

import spaces  # noqa: E402
from evaluators import ProxyTask, entropy_score, grad_norm_score  # noqa: E402
from spaces.functions import X  # noqa: E402

# The CRReLU term, used as the correction when spaces.eafo.correction is missing.
CRRELU_TERM = X * sp.exp(-X**2 / 2)
EPS_INIT = 0.01  # the paper's CRReLU init, for every corrected activation alike


def corrected(base: str) -> tuple[spaces.Candidate, str]:
    """base + eps * (base's own EAFO correction), eps learnable from 0.01."""
    try:
        from spaces.eafo import correction
        term, how = correction(base), "spaces.eafo.correction"
    except ImportError:
        term, how = CRRELU_TERM, "x*exp(-x**2/2) (spaces.eafo missing)"
    eps = sp.Symbol("eps", real=True)
    return spaces.Candidate.from_expr(spaces.get_base(base) + eps * term, init={"eps": EPS_INIT},
                                      learnable=["eps"]), how


def activations() -> dict[str, tuple[spaces.Candidate, str]]:
    acts = {name: (spaces.parse(f"{name}(x)"), "plain base") for name in ("relu", "gelu", "silu", "elu", "tanh")}
    acts["crrelu"] = (spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": EPS_INIT}, learnable=["eps"]),
                      "Sun et al. 2025")
    acts["gelu+eafo"] = corrected("gelu")
    acts["silu+eafo"] = corrected("silu")
    return acts


def _mean_std(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _tau(a: list[float], b: list[float]) -> dict:
    """Kendall tau (tau-b) of two score lists over the same activations; NaNs are left out."""
    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return {"tau": None, "p": None, "n": len(pairs)}
    res = kendalltau([p[0] for p in pairs], [p[1] for p in pairs])
    tau, p = float(res.statistic), float(res.pvalue)
    return {"tau": tau if math.isfinite(tau) else None, "p": p if math.isfinite(p) else None, "n": len(pairs)}


def _fmt(m: float, s: float) -> str:
    return "n/a" if not math.isfinite(m) else f"{100 * m:.2f} ± {100 * s:.2f}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="Kendall tau of the proxy's ranking at B vs 4B epochs")
    ap.add_argument("--budget", type=int, default=2, help="B, in epochs (the long run is 4B)")
    ap.add_argument("--seeds", type=int, default=3)
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
    budgets = [args.budget, 4 * args.budget]
    acts = activations()
    rows, trials = {}, []
    t_start = time.perf_counter()
    for name, (cand, origin) in acts.items():
        zc = entropy_score(cand)
        gn = [grad_norm_score(cand, task, seed=s) for s in range(args.seeds)]
        row = {"formula": cand.formula, "origin": origin, "output_entropy": zc["output_entropy"],
               "wafbc_distance": zc["wafbc_distance"], "grad_norm": _mean_std(gn)[0]}
        for b in budgets:
            scores = []
            for seed in range(args.seeds):
                r = task.replace(epochs=b).evaluate(cand, seed=seed)
                scores.append(r.score)
                trials.append({"activation": name, "budget": b, **r.to_dict()})
                print(f"[{time.perf_counter() - t_start:7.1f}s] {name:10s} B={b:<3d} seed={seed} "
                      f"{r.status} {r.score}", file=sys.stderr, flush=True)
            m, s = _mean_std(scores)
            row[f"mean@{b}"], row[f"std@{b}"] = m, s
            row[f"failed@{b}"] = sum(x is None for x in scores)
        rows[name] = row

    names = list(rows)
    short, long_ = budgets
    long_means = [rows[n][f"mean@{long_}"] for n in names]
    out = {
        "budgets": budgets,
        "seeds": args.seeds,
        "activations": rows,
        "kendall_tau_B_vs_4B": _tau([rows[n][f"mean@{short}"] for n in names], long_means),
        "kendall_tau_zero_cost_vs_4B": {
            # EAFO lowers the output entropy to improve an activation: -entropy is the prediction.
            "neg_output_entropy": _tau([-rows[n]["output_entropy"] for n in names], long_means),
            "wafbc_distance": _tau([rows[n]["wafbc_distance"] for n in names], long_means),
            "grad_norm": _tau([rows[n]["grad_norm"] for n in names], long_means),
        },
        "task": task.to_dict(),
        "seconds": round(time.perf_counter() - t_start, 1),
        "device": str(task.resolve_device()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }

    lines = [f"| activation | acc % @{short} ep | acc % @{long_} ep | -H (nats) | WAFBC dist | grad-norm |",
             "| --- | --- | --- | --- | --- | --- |"]
    for n in sorted(names, key=lambda n: -rows[n][f"mean@{long_}"] if math.isfinite(rows[n][f"mean@{long_}"])
                    else math.inf):
        r = rows[n]
        lines.append(f"| {n} | {_fmt(r[f'mean@{short}'], r[f'std@{short}'])} | "
                     f"{_fmt(r[f'mean@{long_}'], r[f'std@{long_}'])} | {-r['output_entropy']:.3f} | "
                     f"{r['wafbc_distance']:.3f} | {r['grad_norm']:.3g} |")
    taus = out["kendall_tau_zero_cost_vs_4B"]
    lines.append("")
    lines.append(f"Kendall tau, {short} vs {long_} epochs: {out['kendall_tau_B_vs_4B']['tau']}; "
                 f"zero-cost vs {long_} epochs: " + ", ".join(f"{k} {v['tau']}" for k, v in taus.items()))
    print("\n".join(lines))
    print(json.dumps(_finite(out), indent=2, allow_nan=False))
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_finite({**out, "trials": trials}), indent=2, allow_nan=False))
        tmp.replace(path)  # atomic
    return out


def _finite(v):
    """NaN/inf -> None for strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


if __name__ == "__main__":
    main()
