"""PNG plots of a study (matplotlib, Agg backend: no display needed).

activations.png  the top confirmed activations and their derivatives, beside
                 GELU and ReLU. Each curve has its own line style and markers
                 (two rows of one formula often lie on top of each other), the
                 legend gives each coefficient (fixed `eps=0.31`, learnable
                 `eps 0.01->0.12`: initial value -> learned, the mean over
                 layers and seeds), and where a curve leaves the axes it is
                 marked by a triangle on the edge ("clipped").
history.png      the optimisation history: each trial's validation score, the
                 running best (in the metric's direction), and the trials that
                 never got a score; a duplicate (its owner's score, not trained
                 again) is drawn hollow
zero_cost.png    each searched candidate's negentropy (EAFO's output entropy
                 made scale-free and bin-free, at the study's sigma: EAFO
                 predicts higher is better) against its search score,
                 oriented so that up is better: the two quantities whose
                 Kendall tau the title (and the summary) prints
Point labels are placed where they overlap no other label and no legend; one that fits
nowhere is listed under the plot instead of printed over another.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from evaluators.metrics import ACCURACY, Metric
from search.atomic import atomic_path
from search.baselines import display_name
from search.records import TrialRecord

TOP_N = 4                      # activations drawn besides the references
X_RANGE = (-4.0, 4.0)          # where N(0,1) inputs live (EAFO's input model), and a bit more
F_LIM, D_LIM = (-1.5, 4.5), (-0.6, 1.8)
REFERENCES = ("gelu", "relu")
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P")
LEGEND_WIDTH = 72              # characters per legend line: about the width of one panel at fontsize 7
# label offsets tried in turn, in points from the point: near first, then farther
_OFFSETS = [(dx * r, dy * r) for r in (5, 12) for dx, dy in ((1, 1), (1, -1.6), (-1, 1), (-1, -1.6),
                                                           (0, 1.4), (0, -2), (1.4, 0), (-1.4, 0))]


def write_plots(study_dir: str | Path, rows: list[dict], records: list[TrialRecord],
                metric: Metric = ACCURACY, sigma: float = 1.0, mlp: str = "plain") -> list[str]:
    """mlp "glu": the study's activations gate gated MLPs, so the references are drawn
    as GEGLU and ReGLU and every row under its display name (search.baselines)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    study_dir = Path(study_dir)
    plot_activations(study_dir / "activations.png", rows, metric, mlp=mlp)
    plot_history(study_dir / "history.png", records, metric, mlp=mlp)
    plot_zero_cost(study_dir / "zero_cost.png", rows, metric, sigma)
    return ["activations.png", "history.png", "zero_cost.png"]


def _curves(candidate_dict: dict, values: dict, xs: np.ndarray):
    from spaces import Candidate

    c = Candidate.from_dict(candidate_dict)
    values = {k: v for k, v in (values or {}).items() if k in c.coefficients}
    with np.errstate(all="ignore"):
        return c.evaluate(xs, values=values or None), c.evaluate(xs, values=values or None, derivative=True)


def _score_text(r: dict, metric: Metric) -> str:
    from search.results import fmt

    if r["mean"] is not None:
        return f"{fmt(r['mean'], metric)}"
    return f"search {fmt(r['search_score'], metric)}"


def plot_activations(path: str | Path, rows: list[dict], metric: Metric = ACCURACY, top_n: int = TOP_N,
                     mlp: str = "plain") -> dict:
    """Draw the plot; return {label: {"style": (color, linestyle, marker), "clipped": [axes titles],
    "name": the legend's name}}."""
    import matplotlib.pyplot as plt
    import spaces

    xs = np.linspace(*X_RANGE, 401)
    ranked = [r for r in rows if r["mean"] is not None] or [r for r in rows if r["search_score"] is not None]
    chosen = [r for r in ranked if r["label"] not in REFERENCES][:top_n]
    fig, (ax_f, ax_d) = plt.subplots(1, 2, figsize=(12, 5.6))
    drawn: dict[str, dict] = {}
    curves = []
    for label in REFERENCES:
        f, d = _curves(spaces.BASELINES[label].to_dict(), {}, xs)
        curves.append((label, display_name(label, mlp), f, d, dict(color="0.55" if label == "relu" else "0.2", lw=1.4,
                                                ls=":" if label == "relu" else "--")))
    for i, r in enumerate(chosen):
        try:
            f, d = _curves(r["candidate"], r["learned_coefficients"], xs)
        except (ValueError, TypeError, RuntimeError) as e:  # drawn as missing, said in the legend
            ax_f.plot([], [], label=f"{r['label']}: cannot draw ({e})")
            continue
        coefs = f"[{r['coefficients']}]" if r.get("coefficients") else ""
        formula = r["formula"] if len(r["formula"]) <= 45 else r["formula"][:42] + "..."
        text = f"#{r['rank']} {r.get('name', r['label'])} ({_score_text(r, metric)}): {formula}"
        # wrapped, not one long line: a legend wider than its panel squeezes both plots
        text = "\n    ".join([text, *textwrap.wrap(coefs, LEGEND_WIDTH)]) \
            if len(text) + len(coefs) >= LEGEND_WIDTH else f"{text} {coefs}".rstrip()
        # own line style and marker, markers offset along x: coinciding curves stay visible
        style = dict(color=f"C{i}", lw=1.8, ls=LINE_STYLES[i % len(LINE_STYLES)],
                     marker=MARKERS[i % len(MARKERS)], markersize=5, markevery=(5 + 9 * i, 40))
        curves.append((r["label"], text, f, d, style))
    for label, text, f, d, style in curves:
        drawn[label] = {"style": (style["color"], style["ls"], style.get("marker")), "clipped": [],
                        "name": display_name(label, mlp)}
        for ax, ys, lim, name in ((ax_f, f, F_LIM, "f(x)"), (ax_d, d, D_LIM, "f'(x)")):
            ax.plot(xs, ys, label=text if ax is ax_f else display_name(label, mlp), **style)
            if _mark_clipped(ax, xs, np.asarray(ys, dtype=float), lim, style["color"]):
                drawn[label]["clipped"].append(name)
    for ax, title, lim in ((ax_f, "f(x)", F_LIM), (ax_d, "f'(x)", D_LIM)):
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylim(*lim)
        ax.axhline(0, color="0.85", lw=0.8, zorder=0)
        ax.axvline(0, color="0.85", lw=0.8, zorder=0)
        ax.grid(alpha=0.3)
    for ax, name in ((ax_f, "f(x)"), (ax_d, "f'(x)")):  # the key to the triangles, beside each panel that has them
        if any(name in v["clipped"] for v in drawn.values()):
            ax.plot([], [], ls="none", marker="^", color="0.3", label="clipped: the curve leaves the axes")
    # legends under the axes: they never cover a curve
    ax_f.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.13), frameon=False)
    ax_d.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.13), frameon=False, ncol=2)
    refs = " and ".join(display_name(r, mlp) for r in REFERENCES) if mlp == "glu" else "GELU and ReLU"
    gate = "; each is the gate of a gated MLP" if mlp == "glu" else ""
    fig.suptitle(f"Top activations beside {refs} ({metric.key('test')} in brackets, {better(metric)}{gate}); "
                 "learnable coefficients: initial -> learned, mean over layers and seeds", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return drawn


def _mark_clipped(ax, xs: np.ndarray, ys: np.ndarray, lim: tuple[float, float], color) -> bool:
    """Triangles on the edge where the curve leaves the axes (one per stretch outside)."""
    low, high = lim
    found = False
    for outside, edge, marker in ((ys > high, high, "^"), (ys < low, low, "v")):
        starts = np.flatnonzero(outside & ~np.concatenate([[False], outside[:-1]]))
        if starts.size:
            found = True
            ax.plot(xs[starts], np.full(starts.size, edge), ls="none", marker=marker, color=color,
                    markersize=8, clip_on=False, zorder=5)
    return found


def better(metric: Metric) -> str:
    return f"{'lower' if metric.sign < 0 else 'higher'} is better"


def plot_history(path: str | Path, records: list[TrialRecord], metric: Metric = ACCURACY,
                 mlp: str = "plain") -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    ok = [r for r in records if r.is_ok]
    searched = [r for r in ok if not r.baseline and r.duplicate_of is None]
    # a duplicate repeats its owner's score without training: hollow, so it is not read as a new result
    duplicates = [r for r in ok if not r.baseline and r.duplicate_of is not None]
    base = [r for r in ok if r.baseline]
    y = lambda rs: [metric.scale * r.score for r in rs]  # noqa: E731 - printed units (accuracy in %)
    if searched:
        ax.scatter([r.number for r in searched], y(searched), s=22, label="trial")
    if duplicates:
        ax.scatter([r.number for r in duplicates], y(duplicates), s=22, facecolors="none", edgecolors="C0",
                   label="duplicate (earlier score, not trained)")
    if base:
        ax.scatter([r.number for r in base], y(base), marker="s", s=36, color="k", label="baseline")
    if ok:
        order = sorted(ok, key=lambda r: r.number)
        acc = np.maximum.accumulate if metric.direction == "maximize" else np.minimum.accumulate
        ax.step([r.number for r in order], acc(y(order)), where="post", color="C3", label="best so far")
        floor = min(y(ok)) if metric.direction == "maximize" else max(y(ok))
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
    ax.set_ylabel(f"validation {metric.title} ({better(metric)})")
    n_dup = len(duplicates)
    dup_text = f"; {n_dup} duplicate{'s' if n_dup > 1 else ''}, not trained" if n_dup else ""
    ax.set_title(f"Optimisation history ({len(ok)} scored of {len(records)} trials{dup_text})")
    ax.grid(alpha=0.3)
    if ok or failed:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    if base:
        place_labels(ax, [r.number for r in base], y(base), [display_name(r.baseline, mlp) for r in base])
    _save(fig, path)


def plot_zero_cost(path: str | Path, rows: list[dict], metric: Metric = ACCURACY,
                   sigma: float = 1.0) -> dict | None:
    """Plot what the printed tau is computed on; return that agreement (for tests)."""
    import matplotlib.pyplot as plt

    from search.results import zero_cost_agreement

    agreement = zero_cost_agreement(rows)
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    ys = [metric.scale * v for v in agreement["y"]] if agreement else []  # printed units; tau is unchanged
    if agreement:
        ax.scatter(agreement["x"], ys, s=26)
        tau = f"Kendall tau of these two: {agreement['tau']:+.2f} (p = {agreement['p']:.2g}, n = {agreement['n']})"
    else:
        tau = "too few candidates for a rank correlation"
    ax.set_title(f"Zero-cost EAFO score against training\n{tau}", fontsize=10)
    ax.set_xlabel(f"negentropy of f(x), x ~ N(0, {sigma:.3g}²), nats (EAFO predicts: higher is better)")
    flip = "-" if metric.direction == "minimize" else ""
    ax.set_ylabel(f"{flip}search {metric.title} (up is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if agreement:
        place_labels(ax, agreement["x"], ys, agreement["labels"])
    _save(fig, path)
    return agreement


def place_labels(ax, xs, ys, labels, fontsize: int = 7) -> list:
    """Annotate each point where its text overlaps no other label; list the ones that fit nowhere
    under the axes. Returns the annotations placed."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    placed, unplaced = [], []
    legend = ax.get_legend()
    boxes = [legend.get_window_extent(renderer)] if legend is not None else []  # nor over the legend
    for x, y, text in zip(xs, ys, labels):
        for dx, dy in _OFFSETS:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=fontsize,
                              ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top")
            box = ann.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in boxes) and _inside(box, ax, renderer):
                placed.append(ann)
                boxes.append(box)
                break
            ann.remove()
        else:
            unplaced.append(text)
    if unplaced:  # under everything, in room made for it: printed over nothing
        fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.06)
        fig.text(0.01, 0.01, "not labelled (no room): " + ", ".join(unplaced), fontsize=fontsize, va="bottom",
                 wrap=True)
    return placed


def _inside(box, ax, renderer) -> bool:
    frame = ax.get_window_extent(renderer)
    return box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0 and box.y1 <= frame.y1


def _save(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)


__all__ = ["write_plots", "plot_activations", "plot_history", "plot_zero_cost", "place_labels"]
