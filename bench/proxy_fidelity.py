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

The language-model track (issue 21): `--dataset shakespeare --model gpt-nano` trains the
same 12 activations on the character GPT with the text recipe (evaluators.task.TEXT_DEFAULTS:
2,048 sequences of 64 characters per epoch, batch 32, lr 5e-3), scored by validation bits
per character, lower is better. Every ranking is then read in the metric's direction (the
means enter the taus multiplied by -1), the measured sigma and the gradient norm are taken
on the GPT (text batches), and `--compare-with` (default: bench/results/proxy_fidelity_cpu.json,
the image track's result) adds the Kendall tau between the LM ranking and the image one over
the activations both measured:

    PYTHONPATH=. python bench/proxy_fidelity.py --dataset shakespeare --model gpt-nano --budget 2 \\
        --out bench/out/proxy_fidelity_lm.json                   # 12 x 3 seeds x (2 + 8) epochs

`--long N` sets the long run's epochs when they are not a multiple of B: `--budget 3 --long 4`
(with the 4-epoch trainings of the run above read back) asks whether the search's 3-epoch
text trials rank like 4-epoch ones.

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
from evaluators.data import dataset_kind  # noqa: E402
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


def text_preactivation_sigma(task: ProxyTask, seed: int = 0, batches: int = 4) -> dict:
    """The GPT's pre-activation std at init, as evaluators.preactivation_std measures a ViT's
    (which reads images only): GELU in every MLP, the model seeded with `seed`, `batches`
    training batches in train mode without gradients, the root mean square over the
    activation inputs of every layer. {"sigma", "mean", "model", "dataset", "n_sequences"}."""
    gelu = spaces.get_activation("gelu")
    data = task.load_split("val", task.resolve_device())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = task.build(gelu.candidate, data)
    act_type = type(next(m for m in net.modules() if type(m).__name__ == gelu.candidate.module_class().__name__))
    sums = [0.0, 0.0, 0.0]

    def record(module, inputs):
        x = inputs[0].detach().double()
        sums[0] += x.numel()
        sums[1] += float(x.sum())
        sums[2] += float((x * x).sum())

    handles = [m.register_forward_pre_hook(record) for m in net.modules() if isinstance(m, act_type)]
    net.train()
    gen = torch.Generator(device=data.train.device).manual_seed(seed)
    try:
        with torch.no_grad():
            for i, (xb, _) in enumerate(data.batches(task.batch_size, gen)):
                if i == batches:
                    break
                net(xb)
    finally:
        for h in handles:
            h.remove()
    n, total, squares = sums
    return {"sigma": math.sqrt(squares / n), "mean": total / n, "model": task.model, "dataset": task.dataset,
            "n_sequences": batches * task.batch_size, "layers": len(handles)}


def text_grad_norm(cand, task: ProxyTask, seed: int = 0) -> float:
    """evaluators.grad_norm_score for a language model: the sum of the per-tensor gradient
    norms at init on the seed's first training batch (next-character cross-entropy)."""
    import torch.nn.functional as F

    if task.sanity and spaces.sanity_check(cand) is not None:
        return math.nan
    data = task.load_split("val", task.resolve_device())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = task.build(cand, data)
        model.train()
        gen = torch.Generator(device=data.train.device).manual_seed(seed * 1_000_003)  # epoch 0's order
        xb, yb = next(data.batches(task.batch_size, gen))
        logits = model(xb)
        F.cross_entropy(logits.flatten(0, -2).float(), yb.flatten()).backward()
        score = sum(float(p.grad.detach().float().norm()) for p in model.parameters() if p.grad is not None)
    return score


def compare_tracks(rows: dict, metric, long_: int, path: Path) -> dict | None:
    """Kendall tau between this run's ranking (at its long budget, in its metric's direction)
    and another run's (its own long budget and direction), over the activations both have.
    None when `path` does not exist."""
    if not path.is_file():
        return None
    other = json.loads(path.read_text())
    o_long = max(other["budgets"])
    o_sign = -1.0 if other.get("metric", {}).get("direction") == "minimize" else 1.0
    common = [n for n in rows if n in other["activations"]]
    mine = [metric.sign * rows[n][f"mean@{long_}"] for n in common]
    theirs = [o_sign * (other["activations"][n].get(f"mean@{o_long}") or math.nan) for n in common]
    task = other.get("task", {})
    return {"path": str(path), "other": f"{task.get('dataset')}/{task.get('model')} at {o_long} epochs",
            "activations": common, **rank_agreement(mine, theirs)}


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
    ap.add_argument("--long", type=int, default=None,
                    help="the long run's epochs, when not a multiple of B (e.g. --budget 3 --long 4: "
                         "does a 3-epoch proxy rank like the 4-epoch one?); default factor * B")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--activations", default=",".join(ACTIVATIONS),
                    help=f"comma-separated (default: the 12); extras: {', '.join(EXTRAS)}")
    ap.add_argument("--correction-sigma", default="measured",
                    help="input std the EAFO corrections assume: 'measured' (the model's "
                         "pre-activation std at init) or a number (1 is the paper's)")
    # None: the track's default (images: 10,000 / 5,000 / 128 / vit-nano; text: TEXT_DEFAULTS)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--val-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--compare-with", default="bench/results/proxy_fidelity_cpu.json",
                    help="text track: another run's JSON (the image track's) to compare rankings with")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default="bench/out/proxy_fidelity.json")
    args = ap.parse_args(argv)
    if args.long is not None and args.long <= args.budget:
        ap.error(f"--long {args.long} must be more epochs than --budget {args.budget}")

    text = dataset_kind(args.dataset) == "text"
    if text:  # the text recipe, with what was given on the command line over it
        given = {k: v for k, v in (("model", args.model), ("train_size", args.train_size),
                                   ("val_size", args.val_size), ("batch_size", args.batch_size)) if v is not None}
        task = ProxyTask.for_dataset(args.dataset, **given, epochs=args.budget, device=args.device,
                                     num_threads=args.threads, data_root=args.data_root)
        pre = text_preactivation_sigma(task)
        pre_sigma, pre_dict = pre["sigma"], pre
    else:  # the image track exactly as it always ran (its per-trial files stay valid)
        args.model = args.model or "vit-nano"
        task = ProxyTask(dataset=args.dataset, model=args.model, epochs=args.budget,
                         train_size=args.train_size or 10_000, val_size=args.val_size or 5_000,
                         batch_size=args.batch_size or 128, device=args.device,
                         num_threads=args.threads, data_root=args.data_root)
        pre = preactivation_std(args.model, args.dataset, data_root=args.data_root)
        pre_sigma, pre_dict = pre.sigma, pre.to_dict()
    args.model = task.model
    metric = task.metric
    sigma = pre_sigma if args.correction_sigma == "measured" else float(args.correction_sigma)
    budgets = sorted({args.budget, args.long or args.factor * args.budget})
    short, long_ = budgets[0], budgets[-1]
    names = [n.strip() for n in args.activations.split(",") if n.strip()]
    acts = {n: activation(n, sigma) for n in names}
    out_path = Path(args.out) if args.out else Path("bench/out/proxy_fidelity.json")
    trials_dir = out_path.with_suffix(".trials")
    print(f"sigma: measured {pre_sigma:.4f} on {args.model}; corrections at {sigma:.4g}",
          file=sys.stderr, flush=True)

    rows, trials = {}, []
    t_start = time.perf_counter()
    for name, (cand, origin) in acts.items():
        row = {"formula": cand.describe(), "origin": origin}
        for s_label, s in (("1", 1.0), ("measured", pre_sigma)):
            zc = entropy_score(cand, s)
            for key in ("negentropy", "wafbc_distance", "atom_mass", "output_entropy"):
                row[f"{key}@{s_label}"] = zc[key]
        grad_norm = text_grad_norm if text else grad_norm_score
        row["grad_norm"] = _mean_std([grad_norm(cand, task, seed=s) for s in range(args.seeds)])[0]
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
    # the scores in "higher is better" orientation (bits per character: negated), so that every
    # tau below reads the same way whatever the metric
    sign = metric.sign
    reference = [sign * rows[n][f"mean@{long_}"] for n in order]
    short_name = f"accuracy at {short} epochs" if sign > 0 else f"-{metric.title} at {short} epochs"
    features = {  # each read as "higher predicts better"
        short_name: [sign * rows[n][f"mean@{short}"] for n in order],
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
        "sigma": {"measured": pre_dict, "corrections": sigma},
        "metric": {"key": metric.key("val"), "direction": metric.direction, "title": metric.title},
        "activations": rows,
        "kendall_tau_vs_long": agreement,
        "task": task.to_dict(),
        "seconds": round(time.perf_counter() - t_start, 1),
        "device": str(task.resolve_device()),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }

    if text and short != long_:
        out["vs_other_track"] = compare_tracks(rows, metric, long_, Path(args.compare_with))
    unit, scale = ("acc %", 100) if sign > 0 else ("bpc", 1)
    lines = [f"| activation | {unit} @{short} ep | {unit} @{long_} ep | negentropy (sigma {pre_sigma:.3f}) "
             "| negentropy (sigma 1) | WAFBC dist (1) | atom mass | -H (1) | grad-norm |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in sorted(order, key=lambda n: -sign * rows[n][f"mean@{long_}"] if math.isfinite(rows[n][f"mean@{long_}"])
                    else math.inf):  # best first, in the metric's direction
        r = rows[n]
        lines.append(f"| {n} | {_fmt(r[f'mean@{short}'], r[f'std@{short}'], scale)} | "
                     f"{_fmt(r[f'mean@{long_}'], r[f'std@{long_}'], scale)} | {r['negentropy@measured']:.3f} | "
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
    other = out.get("vs_other_track")
    if other and other["tau"] is not None:
        lines += ["", f"Ranking at {long_} epochs ({metric.title}) vs {other['other']} ({other['path']}): "
                      f"Kendall tau {other['tau']:+.2f} (p = {other['p']:.3f}, 95% bootstrap CI "
                      + ("n/a" if other["ci95"] is None else f"[{other['ci95'][0]:+.2f}, {other['ci95'][1]:+.2f}]")
                      + f", n = {other['n']})"]
    print("\n".join(lines))
    print(json.dumps(_finite(out), indent=2, allow_nan=False))
    if args.out:
        _write_json(out_path, {**out, "trials": trials})
    return out


def _fmt(m: float, s: float, scale: float = 100) -> str:
    digits = 2 if scale >= 100 else 3
    return "n/a" if not math.isfinite(m) else f"{scale * m:.{digits}f} ± {scale * s:.{digits}f}"


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
