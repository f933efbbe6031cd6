"""PNG plots of a study (matplotlib, Agg backend: no display needed).

activations.png  the top confirmed activations, with their learned coefficient
                 values, and their derivatives, beside GELU and ReLU
history.png      the optimisation history: each trial's validation accuracy,
                 the running best, and the trials that never got a score
zero_cost.png    each searched candidate's EAFO output entropy against its
                 search score: how far the zero-cost score could be trusted here
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from search.atomic import atomic_path
from search.records import TrialRecord

TOP_N = 4                      # activations drawn besides the references
X_RANGE = (-4.0, 4.0)          # where N(0,1) inputs live (EAFO's input model), and a bit more
REFERENCES = ("gelu", "relu")


def write_plots(study_dir: str | Path, rows: list[dict], records: list[TrialRecord]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    study_dir = Path(study_dir)
    plot_activations(study_dir / "activations.png", rows)
    plot_history(study_dir / "history.png", records)
    plot_zero_cost(study_dir / "zero_cost.png", rows)
    return ["activations.png", "history.png", "zero_cost.png"]


def _curves(candidate_dict: dict, values: dict, xs: np.ndarray):
    from spaces import Candidate

    c = Candidate.from_dict(candidate_dict)
    values = {k: v for k, v in (values or {}).items() if k in c.coefficients}
    with np.errstate(all="ignore"):
        return c.evaluate(xs, values=values or None), c.evaluate(xs, values=values or None, derivative=True)


def plot_activations(path: str | Path, rows: list[dict], top_n: int = TOP_N) -> None:
    import matplotlib.pyplot as plt
    import spaces

    xs = np.linspace(*X_RANGE, 401)
    ranked = [r for r in rows if r["mean"] is not None] or [r for r in rows if r["search_score"] is not None]
    chosen = [r for r in ranked if r["label"] not in REFERENCES][:top_n]
    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(12, 4.8))
    for label in REFERENCES:
        c = spaces.BASELINES[label].to_dict()
        f, d = _curves(c, {}, xs)
        style = dict(color="0.55" if label == "relu" else "0.2", lw=1.5, ls="--")
        ax_f.plot(xs, f, label=label, **style)
        ax_d.plot(xs, d, label=label, **style)
    for r in chosen:
        try:
            f, d = _curves(r["candidate"], r["learned_coefficients"], xs)
        except (ValueError, TypeError, RuntimeError) as e:  # drawn as missing, said in the legend
            ax_f.plot([], [], label=f"{r['label']}: cannot draw ({e})")
            continue
        coefs = ", ".join(f"{k}={v:.3g}" for k, v in sorted(r["learned_coefficients"].items()))
        acc = f"{100 * r['mean']:.2f}%" if r["mean"] is not None else f"search {100 * r['search_score']:.2f}%"
        formula = r["formula"] if len(r["formula"]) <= 45 else r["formula"][:42] + "..."
        text = f"#{r['rank']} {r['label']} ({acc}): {formula}" + (f" [{coefs}]" if coefs else "")
        ax_f.plot(xs, f, lw=2, label=text)
        ax_d.plot(xs, d, lw=2, label=f"#{r['rank']} {r['label']}")
    for ax, title in ((ax_f, "f(x)"), (ax_d, "f'(x)")):
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.axhline(0, color="0.85", lw=0.8, zorder=0)
        ax.axvline(0, color="0.85", lw=0.8, zorder=0)
        ax.grid(alpha=0.3)
    ax_f.set_ylim(-1.5, 4.5)
    ax_d.set_ylim(-0.6, 1.8)
    ax_f.legend(fontsize=7, loc="upper left")
    ax_d.legend(fontsize=7, loc="upper left")
    fig.suptitle("Top activations (learned coefficients) beside GELU and ReLU")
    fig.tight_layout()
    _save(fig, path)


def plot_history(path: str | Path, records: list[TrialRecord]) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    ok = [r for r in records if r.is_ok]
    searched = [r for r in ok if not r.baseline]
    base = [r for r in ok if r.baseline]
    if searched:
        ax.scatter([r.number for r in searched], [r.score for r in searched], s=22, label="trial (val acc)")
    if base:
        ax.scatter([r.number for r in base], [r.score for r in base], marker="s", s=36, color="k",
                   label="baseline")
        for r in base:
            ax.annotate(r.baseline, (r.number, r.score), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if ok:
        order = sorted(ok, key=lambda r: r.number)
        best = np.maximum.accumulate([r.score for r in order])
        ax.step([r.number for r in order], best, where="post", color="C3", label="best so far")
        floor = min(r.score for r in ok)
    else:
        floor = 0.0
    failed = [r for r in records if not r.is_ok and r.status != "running"]
    for status, marker in (("pruned", "v"), ("rejected", "x"), ("diverged", "x"), ("error", "x"),
                           ("interrupted", ".")):
        rs = [r for r in failed if r.status == status]
        if rs:
            ax.scatter([r.number for r in rs], [floor] * len(rs), marker=marker, s=28, alpha=0.6,
                       label=f"{status} (no score)")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"Optimisation history ({len(ok)} scored of {len(records)} trials)")
    ax.grid(alpha=0.3)
    if ok or failed:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path)


def plot_zero_cost(path: str | Path, rows: list[dict]) -> None:
    import matplotlib.pyplot as plt

    from search.results import zero_cost_agreement

    pts = [r for r in rows if r.get("output_entropy") is not None and r.get("search_score") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if pts:
        ax.scatter([r["output_entropy"] for r in pts], [r["search_score"] for r in pts], s=26)
        for r in pts:
            ax.annotate(r["label"], (r["output_entropy"], r["search_score"]), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
    agreement = zero_cost_agreement(rows)
    tau = (f"Kendall tau of -entropy vs score: {agreement['tau']:+.2f} (n = {agreement['n']})"
           if agreement else "too few candidates for a rank correlation")
    ax.set_title(f"Zero-cost EAFO score against training\n{tau}", fontsize=10)
    ax.set_xlabel("output entropy H[f(x)], x ~ N(0, 1) (nats; EAFO: lower is better)")
    ax.set_ylabel("search validation accuracy")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)


__all__ = ["write_plots", "plot_activations", "plot_history", "plot_zero_cost"]
