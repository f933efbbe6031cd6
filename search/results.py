"""What the user gets: the leaderboard, best.json, plots, and the table on the terminal.

`write_results` is the one function both backends' results go through: it takes
backend-neutral trial records (search.records.TrialRecord) and confirmation
records (search.records.ConfirmRecord) and writes, in the study folder,

    trials.json        every trial record
    leaderboard.csv    one row per distinct candidate, in rank order
    leaderboard.json   the same rows as JSON
    best.json          the confirmed winner (only once confirmation is complete)
    summary.txt        the table and the verdict printed on the terminal
    activations.png    the top activations and their derivatives beside GELU and ReLU
    history.png        the optimisation history
    zero_cost.png      EAFO negentropy against search score, per candidate

The score is the task's metric (`task.metric`, evaluators.metrics): accuracy
(higher is better) for the image tasks, bits per character (lower is better)
for a language model. Nothing here assumes a direction: ranks, differences
and the decision go through the metric.

Ranking is on confirmed results: the mean test score over the confirmation
seeds. Candidates that were searched but not confirmed follow, ranked by their
(single-seed) search score, marked `confirmed: false`.

Every candidate is compared with GELU on the seeds both have: its mean paired
improvement (positive: better, whatever the metric's direction) and the winner
decision of `search.stats` (one-sided paired t-test, Holm-corrected over every
confirmed candidate, familywise error <= 5 %), with the same test's interval.

Coefficients: each row shows its candidate's coefficients, fixed ones as
`eps=0.31`, learnable ones as `eps 0.01->0.12` (initial value -> the value
training learned, as a MEAN over every activation layer of the model and
every confirmation seed). `learned_coefficients_per_seed` holds the values
behind that mean: per seed, per layer.

Every row also carries the candidate's zero-cost EAFO scores (evaluators.entropy_score
at the study's sigma, from sigma.json: negentropy, distance from the WAFBC, atom mass,
and the paper's raw output entropy; milliseconds, no data), and the summary says how
well the negentropy (scale-free and bin-free, unlike the raw entropy) ranked this
study's candidates against their search scores.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import re
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from evaluators.metrics import ACCURACY, Metric
from search.atomic import write_json, write_text
from search.baselines import REFERENCE, display_name, reference_name
from search.records import ConfirmRecord, TrialRecord, finite_or_none, jsonable
from search.stats import ALPHA, compare, mean_std

CSV_COLUMNS = ["rank", "label", "formula", "coefficients", "fingerprint", "confirmed", "metric", "n_seeds",
               "mean", "std", "seeds", "per_seed", "stopped_after", "mean_diff_vs_gelu", "ci_low", "ci_high",
               "ci_level", "p_value", "p_holm", "n_pairs", "beats_gelu", "search_score", "search_trial",
               "negentropy", "wafbc_distance", "atom_mass", "output_entropy", "learned_coefficients_mean",
               "failures"]
ZERO_COST_KEYS = ("negentropy", "wafbc_distance", "atom_mass", "output_entropy")  # evaluators.entropy_score's
MIN_ROWS_FOR_TAU = 4  # below this a rank correlation says nothing
POWER_EFFECT = 1.5    # the effect (in sd of the paired differences) whose simulated power the verdict quotes
SIM_STUDIES = 4_000   # simulated studies behind the numbers the verdict quotes (0.3 pp standard error at 5 %)


@dataclass
class Summary:
    rows: list[dict]        # leaderboard rows in rank order
    best: dict | None       # best.json's content (None until confirmation is complete)
    text: str               # the table and the verdict
    files: list[str]        # files written


# ---------------------------------------------------------------------------
# The leaderboard
# ---------------------------------------------------------------------------

def build_leaderboard(records: list[TrialRecord], confirmations: list[ConfirmRecord],
                      metric: Metric = ACCURACY, stopped: dict[str, int] | None = None,
                      sigma: float = 1.0) -> list[dict]:
    """Rows in rank order (see the module docstring).

    stopped: label -> seeds a racing confirmation stopped it at (search.racing).
    sigma: the input std the zero-cost scores assume (the study's).
    """
    search = _search_scores(records, metric)
    by_fp: dict[str, list[ConfirmRecord]] = {}
    for c in confirmations:
        by_fp.setdefault(c.fingerprint, []).append(c)
    stopped = stopped or {}

    rows = []
    for fp, recs in by_fp.items():
        recs = sorted(recs, key=lambda r: r.seed)
        ok = [r for r in recs if r.status == "ok"]
        mean, std = mean_std(r.score for r in ok)
        label = next((r.label for r in recs if not _is_trial_label(r.label)), recs[0].label)
        s = search.get(fp, {})
        learned = _mean_dicts([r.learned_coefficients for r in ok])
        rows.append({
            "label": label, "candidate": recs[0].candidate, "formula": recs[0].candidate.get("formula"),
            "coefficients": coefficient_text(recs[0].candidate, learned),
            "fingerprint": fp, "confirmed": True, "metric": metric.key("test"), "direction": metric.direction,
            "n_seeds": len(ok), "mean": mean, "std": std, "seeds": [r.seed for r in ok],
            "per_seed": [r.score for r in ok], "stopped_after": stopped.get(label),
            "search_score": s.get("score"), "search_trial": s.get("number"), "params": s.get("params"),
            "learned_coefficients": learned,
            "learned_coefficients_per_seed": {str(r.seed): r.learned_per_layer for r in ok if r.learned_per_layer},
            "failures": [f"seed {r.seed}: {r.status}: {r.reason}" for r in recs if r.status != "ok"],
        })
    _decide(rows, metric)

    sign = metric.sign
    confirmed = sorted(rows, key=lambda r: (r["mean"] is None, -sign * (r["mean"] or 0.0),
                                            -sign * (r["search_score"] or 0.0), r["label"]))
    unconfirmed = []
    for fp, s in sorted(search.items(), key=lambda kv: (-sign * kv[1]["score"], kv[1]["number"])):
        if fp in by_fp:
            continue
        unconfirmed.append({
            "label": s["label"], "candidate": s["candidate"], "formula": s["formula"],
            "coefficients": coefficient_text(s["candidate"], s["learned_coefficients"]), "fingerprint": fp,
            "confirmed": False, "metric": metric.key("test"), "direction": metric.direction, "n_seeds": 0,
            "mean": None, "std": None, "seeds": [], "per_seed": [], "stopped_after": None,
            "search_score": s["score"], "search_trial": s["number"], "params": s["params"],
            "learned_coefficients": s["learned_coefficients"], "learned_coefficients_per_seed": {},
            "failures": [], **_NO_COMPARISON,
        })
    ranked = confirmed + unconfirmed
    for i, row in enumerate(ranked, 1):
        row["rank"] = i
        row.update(_zero_cost(row["candidate"], sigma))
    return [{"rank": r.pop("rank"), **r} for r in ranked]


_NO_COMPARISON = {"mean_diff_vs_gelu": None, "ci_low": None, "ci_high": None, "ci_level": None,
                  "p_value": None, "p_holm": None, "n_pairs": 0, "beats_gelu": False}


def _decide(rows: list[dict], metric: Metric) -> None:
    """Each row's paired improvement over GELU and the winner decision over all of them (search.stats)."""
    reference = next((r for r in rows if r["label"] == REFERENCE), None)
    for row in rows:
        row.update(_NO_COMPARISON)
    if reference is None:
        return
    ref = dict(zip(reference["seeds"], reference["per_seed"]))
    diffs = {row["label"]: [metric.improvement(score, ref[seed])
                            for seed, score in zip(row["seeds"], row["per_seed"]) if seed in ref]
             for row in rows if row is not reference}
    reference["mean_diff_vs_gelu"], reference["n_pairs"] = 0.0, len(ref)
    decided = compare(diffs)
    for row in rows:
        c = decided.get(row["label"]) if row is not reference else None
        if c is not None:
            row.update({"mean_diff_vs_gelu": c.mean, "ci_low": c.low, "ci_high": c.high, "ci_level": c.level,
                        "p_value": c.p, "p_holm": c.p_holm, "n_pairs": c.n, "beats_gelu": c.claimed})


def _is_trial_label(label: str) -> bool:
    return label.startswith("trial_") and label[6:].isdigit()


# What a learned coefficient in the table, the plots and best.json is: each activation module
# (one per layer) learns its own value, so one number is a mean.
LEARNED_ARE = ("fixed ones as name=value, learnable ones as name initial->learned, where learned is the MEAN over "
               "the model's activation layers and over the confirmation seeds (an unconfirmed row: its one "
               "search trial)")


def coefficient_text(candidate: dict | None, learned: dict | None) -> str:
    """'eps=0.31' for a fixed coefficient, 'eps 0.01->0.124' for a learnable one (init -> learned mean)."""
    if not candidate:
        return ""
    learned = learned or {}
    parts = []
    for name, init in sorted((candidate.get("init") or {}).items()):
        if name in (candidate.get("learnable") or []):
            end = f"{learned[name]:.3g}" if learned.get(name) is not None else "?"
            parts.append(f"{name} {init:.3g}->{end}")
        else:
            parts.append(f"{name}={init:.3g}")
    return ", ".join(parts)


def _zero_cost(candidate: dict | None, sigma: float = 1.0) -> dict:
    """EAFO zero-cost scores of a row's candidate at its initial coefficients, inputs
    N(0, sigma^2) (None: no theory)."""
    if not candidate:
        return dict.fromkeys(ZERO_COST_KEYS)
    scores = _entropy_score(json.dumps(candidate, sort_keys=True), float(sigma))
    return {k: finite_or_none(scores.get(k)) for k in ZERO_COST_KEYS}


@lru_cache(maxsize=4096)
def _entropy_score(candidate_json: str, sigma: float) -> dict:
    # cached: the leaderboard is rebuilt after every confirmation run
    import spaces
    from evaluators import entropy_score

    try:
        return entropy_score(spaces.Candidate.from_dict(json.loads(candidate_json)), sigma)
    except Exception:  # noqa: BLE001 - a side score must never cost a study its results files
        return {}


def zero_cost_agreement(rows: list[dict]) -> dict | None:
    """Kendall tau between the negentropy (EAFO's "lower output entropy is better" made
    scale-free and bin-free: higher predicted better) and the search score oriented so that
    higher is better, over the rows that have both; None with fewer than MIN_ROWS_FOR_TAU.
    `x` and `y` are those two quantities, as zero_cost.png plots them."""
    from scipy.stats import kendalltau

    pts = [r for r in rows if r.get("negentropy") is not None and r.get("search_score") is not None]
    if len(pts) < MIN_ROWS_FOR_TAU:
        return None
    sign = -1.0 if pts[0].get("direction") == "minimize" else 1.0
    x = [r["negentropy"] for r in pts]
    y = [sign * r["search_score"] for r in pts]
    res = kendalltau(x, y)
    tau, p = float(res.statistic), float(res.pvalue)
    if tau != tau:  # NaN: all scores tied
        return None
    return {"tau": tau, "p": p, "n": len(pts), "x": x, "y": y, "labels": [r["label"] for r in pts]}


def _search_scores(records: list[TrialRecord], metric: Metric) -> dict[str, dict]:
    """fingerprint -> the search's first ok (non-duplicate) trial of it; baselines keep their name."""
    out: dict[str, dict] = {}
    for r in sorted(records, key=lambda r: r.number):
        if not r.is_ok or not r.fingerprint:
            continue
        if r.fingerprint in out:
            if r.baseline:  # a baseline trial names the row even if a search trial came first
                out[r.fingerprint]["label"] = r.baseline
            continue
        if r.duplicate_of is not None:
            continue
        out[r.fingerprint] = {"number": r.number, "score": r.score, "label": r.label,
                              "candidate": r.candidate, "formula": r.formula, "params": r.params,
                              "learned_coefficients": dict(r.learned_coefficients)}
    return out


def _mean_dicts(dicts: list[dict]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for d in dicts:
        for k, v in (d or {}).items():
            sums.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}


# ---------------------------------------------------------------------------
# The table and the verdict
# ---------------------------------------------------------------------------

def fmt(v: float | None, metric: Metric, signed: bool = False) -> str:
    """A stored value in printed units (accuracy in %, 2 decimals; bits per character, 3)."""
    if v is None:
        return "-"
    digits = 2 if metric.scale >= 100 else 3
    return f"{metric.scale * v:+.{digits}f}" if signed else f"{metric.scale * v:.{digits}f}"


_LONG_NUMBER = re.compile(r"\d+\.\d{5,}(?:e[-+]?\d+)?")


def short_numbers(formula: str) -> str:
    """The formula as tables print it: constants with 4 significant digits
    (exp(-20.0812507814035*x**2) -> exp(-20.08*x**2), the correction at sigma 0.158);
    the files keep the exact formula."""
    return _LONG_NUMBER.sub(lambda m: f"{float(m.group()):.4g}", formula)


def format_table(rows: list[dict], metric: Metric = ACCURACY, max_formula: int = 44,
                 max_unconfirmed: int = 5, reference: str = "GELU") -> str:
    """Rank, label, formula, coefficients, test score mean +- std (n seeds), improvement over
    GELU [Holm interval], search score. Every confirmed row, then at most `max_unconfirmed`
    searched-only rows. Rows are named by their "name" (search.baselines.display_name) if
    they have one; `reference` is what the reference is called (GEGLU in a gated MLP)."""
    arrow = "lower" if metric.sign < 0 else "higher"
    head = ["#", "label", "formula", "coefficients", f"test {metric.title} (seeds)",
            f"vs {reference}, {metric.unit}, + is better [Holm CI]", f"search {metric.title}"]
    lines = []
    shown_unconfirmed = 0
    for r in rows:
        if not r["confirmed"]:
            if shown_unconfirmed == max_unconfirmed:
                continue
            shown_unconfirmed += 1
        formula = short_numbers(r["formula"] or "?")
        if len(formula) > max_formula:
            formula = formula[:max_formula - 3] + "..."
        seeds = f"{r['n_seeds']}" + (", stopped" if r.get("stopped_after") else "")
        score = ("not confirmed" if not r["confirmed"] else "-") if r["mean"] is None else \
            f"{fmt(r['mean'], metric)} ± {fmt(r['std'], metric)} ({seeds})"
        if r["label"] == REFERENCE:
            diff = "reference"
        elif r["mean_diff_vs_gelu"] is None:
            diff = "-"
        else:
            diff = fmt(r["mean_diff_vs_gelu"], metric, True) + (
                f" [{fmt(r['ci_low'], metric, True)}, {fmt(r['ci_high'], metric, True)}]"
                if r["ci_low"] is not None else " [n/a]") + (" *" if r["beats_gelu"] else "")
        lines.append([str(r["rank"]), r.get("name", r["label"]), formula, r.get("coefficients") or "-", score, diff,
                      fmt(r["search_score"], metric)])
    if not lines:
        return "(no scored candidates yet)"
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    row_fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [row_fmt.format(*head), row_fmt.format(*("-" * w for w in widths))]
    out += [row_fmt.format(*line) for line in lines]
    n_more = sum(not r["confirmed"] for r in rows) - shown_unconfirmed
    if n_more:
        out.append(f"(+ {n_more} more searched, unconfirmed candidate(s) in leaderboard.csv)")
    if any("->" in line[3] for line in lines):  # a learned value is a mean: say of what
        out += textwrap.wrap(f"(coefficients: {LEARNED_ARE}; per seed and per layer in leaderboard.json)", 110)
    out.append(f"({metric.title}: {arrow} is better; ranked best first)")
    return "\n".join(out)


@lru_cache(maxsize=64)
def simulated_error_and_power(n_candidates: int, n_seeds: int) -> tuple[float, float]:
    """(familywise false-claim rate with no real winner, power for a POWER_EFFECT sd improvement)
    of the decision for this many candidates and seeds, simulated (search.racing.simulate)."""
    from search.racing import simulate

    null = simulate(n_candidates, n_seeds, n_studies=SIM_STUDIES, seed=1)
    real = simulate(n_candidates, n_seeds, effects=(POWER_EFFECT,), n_studies=SIM_STUDIES, seed=2)
    return null["fwer"], real["power"][0]


def verdict(rows: list[dict], complete: bool, metric: Metric = ACCURACY, reference: str = "GELU") -> str:
    """The best confirmed candidate, the winner decision against the reference (named
    `reference`: GEGLU in a gated MLP), racing, and the zero-cost check, in words."""
    name = (lambda r: r.get("name", r["label"]))
    confirmed = [r for r in rows if r["confirmed"] and r["mean"] is not None]
    if not confirmed:
        return "No confirmed result yet" + (": this ranking is partial, on single-seed search scores."
                                            if not complete else ".")
    lines = []
    best = confirmed[0]
    lines.append(f"Best confirmed: {name(best)} = {short_numbers(best['formula'])}"
                 + (f" [{best['coefficients']}]" if best.get("coefficients") else "")
                 + f": test {metric.title} {fmt(best['mean'], metric)} ± {fmt(best['std'], metric)} "
                 f"over {best['n_seeds']} seed(s).")
    gelu = next((r for r in confirmed if r["label"] == REFERENCE), None)
    compared = [r for r in rows if r["confirmed"] and r["label"] != REFERENCE]
    winners = [r for r in compared if r["beats_gelu"]]
    if gelu is None:
        lines.append(f"{reference} has no confirmed result, so nothing is compared with it.")
    else:
        m = len(compared)
        n = max((r["n_pairs"] for r in compared), default=0)
        if not winners:
            lines.append(f"No candidate beats {reference}: none of the {m} one-sided paired t-tests against {reference} "
                         f"rejects \"no better\" once Holm-corrected ({ALPHA:.0%} familywise).")
        for r in winners:
            lines.append(f"{name(r)} beats {reference} by {fmt(r['mean_diff_vs_gelu'], metric, True)} {metric.unit} "
                         f"({'lower' if metric.sign < 0 else 'higher'} {metric.title}; Holm CI [{fmt(r['ci_low'], metric, True)}, {fmt(r['ci_high'], metric, True)}], "
                         f"p = {r['p_holm']:.2g} Holm-adjusted, {r['n_pairs']} paired seeds).")
        if m and n >= 2:
            fwer, power = simulated_error_and_power(m, n)
            lines.append(f"What this decision means: with {m} candidates on {n} seeds, a study with no real "
                         f"winner names one {fwer:.1%} of the time, and a candidate {POWER_EFFECT:g} sd better "
                         f"than {reference} (sd: the seed-to-seed spread of the paired difference) is found "
                         f"{power:.0%} of the time (simulated). CI: the same test's interval at its Holm level; "
                         "a claim is a lower end above 0.")
            if n < 10:
                lines.append(f"With {n} seeds real improvements are mostly missed: use --confirm-seeds 10.")
    stopped = [r for r in confirmed if r.get("stopped_after")]
    if stopped:
        lines.append("Racing stopped " + ", ".join(f"{name(r)} after {r['stopped_after']} seeds"
                                                   for r in stopped)
                     + f" (behind {reference}: they cannot be claimed, so they got no more seeds).")
    if not complete:
        lines.append("Confirmation is incomplete (interrupted): this ranking is partial.")
    agreement = zero_cost_agreement(rows)
    if agreement:
        lines.append(f"Zero-cost check: over the {agreement['n']} searched candidates, the ranking by EAFO "
                     f"negentropy (higher first) and the ranking by search score have Kendall tau "
                     f"{agreement['tau']:+.2f} (p = {agreement['p']:.2g}).")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Writing everything
# ---------------------------------------------------------------------------

def write_results(study_dir: str | Path, records: list[TrialRecord], confirmations: list[ConfirmRecord],
                  config, *, task=None, complete: bool = True, plots: bool = True,
                  stopped: dict[str, int] | None = None, metric: Metric | None = None) -> Summary:
    """Write every result file (atomically) into `study_dir`; return the summary.

    records: all trial records of the study (any backend), in trial order.
    confirmations: the confirmation records for the current seeds.
    config: the SearchConfig the run used (for best.json's provenance).
    task: the evaluator task (its to_dict() goes into best.json; its metric scores the rows), or None.
    complete: False while confirmation is unfinished (interrupted): best.json is
      then not written (an earlier one stays), and the verdict says the ranking is partial.
    stopped: label -> seeds at which racing stopped it (search.racing).
    metric: the score's metric (default: the task's, else accuracy).
    """
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    metric = metric or getattr(task, "metric", None) or ACCURACY
    mlp = getattr(config, "mlp", "plain")
    # the study's sigma (search.run writes sigma.json); a study from before --sigma used the paper's 1
    sigma = read_sigma(study_dir) or {"setting": 1.0, "sigma": 1.0, "preactivation": None}
    rows = build_leaderboard(records, confirmations, metric, stopped, sigma["sigma"])
    for row in rows:  # what tables, verdicts and plots call it (GEGLU, SwiGLU in a gated MLP)
        row["name"] = display_name(row["label"], mlp)
    files = []

    write_json(study_dir / "trials.json", [r.to_dict() for r in records])
    write_json(study_dir / "leaderboard.json", rows)
    write_text(study_dir / "leaderboard.csv", _csv(rows))
    files += ["trials.json", "leaderboard.json", "leaderboard.csv"]

    best = None
    confirmed = [r for r in rows if r["confirmed"] and r["mean"] is not None]
    if complete and confirmed:
        best = _best_json(confirmed[0], rows, records, confirmations, config, task, metric)
        best["sigma"] = sigma
        write_json(study_dir / "best.json", best)
        files.append("best.json")

    text = format_table(rows, metric, reference=reference_name(mlp)) + "\n\n" + verdict(
        rows, complete, metric, reference=reference_name(mlp))
    write_text(study_dir / "summary.txt", text + "\n")
    files.append("summary.txt")
    if plots:
        from search import plots as plots_mod

        files += plots_mod.write_plots(study_dir, rows, records, metric, sigma["sigma"], mlp=mlp)
    return Summary(rows, best, text, files)


SIGMA_FILE = "sigma.json"  # search.run writes it: {"setting", "sigma", "preactivation"}


def read_sigma(study_dir: Path) -> dict | None:
    """A study's sigma.json (None before it has one); UsageError if it is unreadable."""
    from search.exceptions import UsageError

    path = Path(study_dir) / SIGMA_FILE
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
        sigma = float(d["sigma"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path} is not a readable sigma file ({e}); leaving it as it is") from e
    return {**d, "sigma": sigma}


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        flat = dict(r)
        for k in ("seeds", "per_seed", "failures"):
            flat[k] = ";".join(str(x) for x in r[k])
        # a column named for what it holds: the mean over layers and seeds (the values behind it
        # are in leaderboard.json, which a flat file cannot hold)
        flat["learned_coefficients_mean"] = json.dumps(jsonable(r["learned_coefficients"]), sort_keys=True)
        w.writerow(jsonable(flat))
    return buf.getvalue()


def _best_json(row: dict, rows: list[dict], records: list[TrialRecord], confirmations: list[ConfirmRecord],
               config, task, metric: Metric) -> dict:
    from search.policy import evaluated

    mine = [c for c in confirmations if c.fingerprint == row["fingerprint"] and c.status == "ok"]
    compared = [r for r in rows if r["confirmed"] and r["label"] != REFERENCE]
    return {
        "study": config.study_name,
        "label": row["label"],
        "candidate": row["candidate"],
        "coefficients": row["coefficients"],
        "params": row["params"],
        "fingerprint": row["fingerprint"],
        # the MEAN over every activation layer and every confirmation seed; the values
        # behind it, per seed and per layer, in learned_coefficients_per_seed
        "learned_coefficients": row["learned_coefficients"],
        "learned_coefficients_per_seed": row["learned_coefficients_per_seed"],
        "learned_coefficients_are": f"means over the activation layers of each trained model, then over the "
                                    f"{row['n_seeds']} confirmation seeds; learned_coefficients_per_seed: seed "
                                    "-> coefficient -> one value per layer",
        "confirmed": {"metric": metric.key("test"), "direction": metric.direction, "mean": row["mean"],
                      "std": row["std"], "n_seeds": row["n_seeds"], "seeds": row["seeds"],
                      "per_seed": row["per_seed"]},
        "vs_gelu": {"mean_diff": row["mean_diff_vs_gelu"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                    "ci_level": row["ci_level"], "p": row["p_value"], "p_holm": row["p_holm"],
                    "beats_gelu": row["beats_gelu"],
                    "decision": f"one-sided paired t-test of the improvement over {REFERENCE}, Holm-corrected "
                                f"over {len(compared)} candidates, familywise alpha {ALPHA}"},
        "task": task.to_dict() if task is not None else None,
        "search": {"backend": config.backend, "n_trials": evaluated(records), "sampler": config.sampler},
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # where the confirmation runs of this candidate trained (Ray: the workers, not this process)
        "hardware": {**hardware(), "devices": sorted({c.device for c in mine if c.device}),
                     "precisions": sorted({c.precision for c in mine if c.precision}),
                     "nodes": sorted({c.node for c in mine if c.node})},
    }


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "timm", "optuna", "sympy", "numpy", "scipy", "matplotlib", "ray", "eafo-search"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware() -> dict:
    """This process's machine (the driver's; the records name where each run trained)."""
    import os

    out = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
    return out


__all__ = ["write_results", "build_leaderboard", "format_table", "verdict", "Summary", "versions",
           "coefficient_text", "zero_cost_agreement", "fmt"]
