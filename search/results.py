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
    zero_cost.png      EAFO output entropy against search score, per candidate

Ranking is on confirmed results: mean test accuracy over the confirmation
seeds. Candidates that were searched but not confirmed follow, ranked by their
(single-seed) search score, marked `confirmed: false`.

Every row also carries the candidate's zero-cost EAFO scores (output entropy,
distance from the WAFBC; milliseconds, no data), and the summary says how well
the entropy ranked this study's candidates against their search scores, so a
user sees on their own task how far the cheap score can be trusted
(bench/proxy_fidelity.py measures it against longer training).

Every candidate is compared with GELU on the same seeds: the mean paired
difference with a 95 % percentile-bootstrap interval (search.stats). A
candidate "beats GELU" only when the interval lies above 0 and rests on at
least MIN_PAIRS_FOR_CLAIM paired seeds (with two seeds the interval is just
the two differences, and agreeing twice is no evidence).
"""
from __future__ import annotations

import csv
import io
import json
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from search.atomic import write_json, write_text
from search.records import ConfirmRecord, TrialRecord, finite_or_none, jsonable
from search.stats import mean_std, paired_bootstrap_ci

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
MIN_PAIRS_FOR_CLAIM = 3
REFERENCE = "gelu"
CSV_COLUMNS = ["rank", "label", "formula", "fingerprint", "confirmed", "n_seeds", "mean", "std",
               "seeds", "per_seed", "mean_diff_vs_gelu", "ci_low", "ci_high", "n_pairs", "beats_gelu",
               "search_score", "search_trial", "output_entropy", "wafbc_distance",
               "learned_coefficients", "failures"]
MIN_ROWS_FOR_TAU = 4  # below this a rank correlation says nothing


@dataclass
class Summary:
    rows: list[dict]        # leaderboard rows in rank order
    best: dict | None       # best.json's content (None until confirmation is complete)
    text: str               # the table and the verdict
    files: list[str]        # files written


# ---------------------------------------------------------------------------
# The leaderboard
# ---------------------------------------------------------------------------

def build_leaderboard(records: list[TrialRecord], confirmations: list[ConfirmRecord]) -> list[dict]:
    """Rows in rank order (see the module docstring)."""
    from spaces import BASELINES

    baseline_labels = set(BASELINES)
    search = _search_scores(records)
    by_fp: dict[str, list[ConfirmRecord]] = {}
    for c in confirmations:
        by_fp.setdefault(c.fingerprint, []).append(c)

    rows = []
    for fp, recs in by_fp.items():
        recs = sorted(recs, key=lambda r: r.seed)
        ok = [r for r in recs if r.status == "ok"]
        mean, std = mean_std(r.score for r in ok)
        label = next((r.label for r in recs if r.label in baseline_labels), recs[0].label)
        s = search.get(fp, {})
        rows.append({
            "label": label, "candidate": recs[0].candidate, "formula": recs[0].candidate.get("formula"),
            "fingerprint": fp, "confirmed": True, "metric": "test_acc", "n_seeds": len(ok),
            "mean": mean, "std": std, "seeds": [r.seed for r in ok], "per_seed": [r.score for r in ok],
            "search_score": s.get("score"), "search_trial": s.get("number"), "params": s.get("params"),
            "learned_coefficients": _mean_dicts([r.learned_coefficients for r in ok]),
            "failures": [f"seed {r.seed}: {r.status}: {r.reason}" for r in recs if r.status != "ok"],
        })
    reference = next((r for r in rows if r["label"] == REFERENCE), None)
    for row in rows:
        row.update(_vs_reference(row, reference))

    confirmed = sorted(rows, key=lambda r: (r["mean"] is None, -(r["mean"] or 0.0),
                                            -(r["search_score"] or 0.0), r["label"]))
    unconfirmed = []
    for fp, s in sorted(search.items(), key=lambda kv: (-kv[1]["score"], kv[1]["number"])):
        if fp in by_fp:
            continue
        unconfirmed.append({
            "label": s["label"], "candidate": s["candidate"], "formula": s["formula"], "fingerprint": fp,
            "confirmed": False, "metric": "test_acc", "n_seeds": 0, "mean": None, "std": None, "seeds": [], "per_seed": [],
            "search_score": s["score"], "search_trial": s["number"], "params": s["params"],
            "learned_coefficients": s["learned_coefficients"], "failures": [],
            "mean_diff_vs_gelu": None, "ci_low": None, "ci_high": None, "n_pairs": 0, "beats_gelu": False,
        })
    ranked = confirmed + unconfirmed
    for i, row in enumerate(ranked, 1):
        row["rank"] = i
        row.update(_zero_cost(row["candidate"]))
    return [{"rank": r.pop("rank"), **r} for r in ranked]


def _zero_cost(candidate: dict | None) -> dict:
    """EAFO zero-cost scores of a row's candidate at its initial coefficients (None: no theory)."""
    if not candidate:
        return {"output_entropy": None, "wafbc_distance": None}
    scores = _entropy_score(json.dumps(candidate, sort_keys=True))
    return {k: finite_or_none(scores.get(k)) for k in ("output_entropy", "wafbc_distance")}


@lru_cache(maxsize=4096)
def _entropy_score(candidate_json: str) -> dict:
    # cached: the leaderboard is rebuilt after every confirmation run
    import spaces
    from evaluators import entropy_score

    try:
        return entropy_score(spaces.Candidate.from_dict(json.loads(candidate_json)))
    except Exception:  # noqa: BLE001 - a side score must never cost a study its results files
        return {}


def zero_cost_agreement(rows: list[dict]) -> dict | None:
    """Kendall tau between -output entropy (EAFO: lower entropy predicted better) and the
    search score, over the rows that have both; None with fewer than MIN_ROWS_FOR_TAU."""
    from scipy.stats import kendalltau

    pairs = [(-r["output_entropy"], r["search_score"]) for r in rows
             if r.get("output_entropy") is not None and r.get("search_score") is not None]
    if len(pairs) < MIN_ROWS_FOR_TAU:
        return None
    res = kendalltau([p[0] for p in pairs], [p[1] for p in pairs])
    tau, p = float(res.statistic), float(res.pvalue)
    if tau != tau:  # NaN: all scores tied
        return None
    return {"tau": tau, "p": p, "n": len(pairs)}


def _search_scores(records: list[TrialRecord]) -> dict[str, dict]:
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


def _vs_reference(row: dict, reference: dict | None) -> dict:
    """Paired difference to GELU on the seeds both have, with its bootstrap CI."""
    none = {"mean_diff_vs_gelu": None, "ci_low": None, "ci_high": None, "n_pairs": 0, "beats_gelu": False}
    if reference is None or not row["seeds"]:
        return none
    ref = dict(zip(reference["seeds"], reference["per_seed"]))
    diffs = [score - ref[seed] for seed, score in zip(row["seeds"], row["per_seed"]) if seed in ref]
    ci = paired_bootstrap_ci(diffs, confidence=CONFIDENCE, n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED)
    if ci is None:
        return none
    return {"mean_diff_vs_gelu": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "n_pairs": ci.n,
            "beats_gelu": bool(ci.low > 0 and ci.n >= MIN_PAIRS_FOR_CLAIM)}


def _mean_dicts(dicts: list[dict]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for d in dicts:
        for k, v in (d or {}).items():
            sums.setdefault(k, []).append(float(v))
    return {k: sum(v) / len(v) for k, v in sums.items()}


# ---------------------------------------------------------------------------
# The table and the verdict
# ---------------------------------------------------------------------------

def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def format_table(rows: list[dict], max_formula: int = 48, max_unconfirmed: int = 5) -> str:
    """Rank, label, formula, test acc mean +- std (n seeds), delta vs GELU [CI], search val acc.

    Every confirmed row, then at most `max_unconfirmed` searched-only rows.
    """
    head = ["#", "label", "formula", "test acc % (seeds)", "vs GELU, pp [95% CI]", "search val %"]
    lines = []
    shown_unconfirmed = 0
    for r in rows:
        if not r["confirmed"]:
            if shown_unconfirmed == max_unconfirmed:
                continue
            shown_unconfirmed += 1
        formula = r["formula"] or "?"
        if len(formula) > max_formula:
            formula = formula[:max_formula - 3] + "..."
        acc = ("not confirmed" if not r["confirmed"] else "-") if r["mean"] is None else \
            f"{_pct(r['mean'])} ± {_pct(r['std']) if r['std'] is not None else '-'} ({r['n_seeds']})"
        if r["label"] == REFERENCE:
            diff = "reference"
        elif r["mean_diff_vs_gelu"] is None:
            diff = "-"
        else:
            diff = (f"{_pct(r['mean_diff_vs_gelu'], True)} [{_pct(r['ci_low'], True)}, "
                    f"{_pct(r['ci_high'], True)}]" + (" *" if r["beats_gelu"] else ""))
        lines.append([str(r["rank"]), r["label"], formula, acc, diff, _pct(r["search_score"])])
    if not lines:
        return "(no scored candidates yet)"
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    n_more = sum(not r["confirmed"] for r in rows) - shown_unconfirmed
    if n_more:
        out.append(f"(+ {n_more} more searched, unconfirmed candidate(s) in leaderboard.csv)")
    return "\n".join(out)


def verdict(rows: list[dict], complete: bool) -> str:
    confirmed = [r for r in rows if r["confirmed"] and r["mean"] is not None]
    if not confirmed:
        return "No confirmed result yet" + (": this ranking is partial, on single-seed search scores."
                                            if not complete else ".")
    lines = []
    best = confirmed[0]
    n = best["n_seeds"]
    lines.append(f"Best confirmed: {best['label']} = {best['formula']}: test accuracy "
                 f"{_pct(best['mean'])} ± {_pct(best['std']) if best['std'] is not None else '-'} % "
                 f"over {n} seed(s).")
    gelu = next((r for r in confirmed if r["label"] == REFERENCE), None)
    winners = [r for r in confirmed if r["beats_gelu"] and r["label"] != REFERENCE]
    if gelu is None:
        lines.append("GELU has no confirmed result, so nothing is compared with it.")
    elif not winners:
        lines.append("No candidate beats GELU beyond noise: every 95% CI of the paired difference "
                     "includes 0 (or rests on too few seeds).")
    else:
        for r in winners:
            lines.append(f"{r['label']} beats GELU by {_pct(r['mean_diff_vs_gelu'], True)} pp "
                         f"(95% CI [{_pct(r['ci_low'], True)}, {_pct(r['ci_high'], True)}], "
                         f"{r['n_pairs']} paired seeds).")
    n_pairs = max((r["n_pairs"] for r in confirmed), default=0)
    if 0 < n_pairs <= 5:
        lines.append(f"With {n_pairs} seeds the bootstrap interval is wide (it is close to the range of the "
                     f"per-seed differences); use --confirm-seeds 10 or more for a useful one.")
    if not complete:
        lines.append("Confirmation is incomplete (interrupted): this ranking is partial.")
    agreement = zero_cost_agreement(rows)
    if agreement:
        lines.append(f"Zero-cost check: over the {agreement['n']} searched candidates, the ranking by EAFO "
                     f"output entropy (lower first) and the ranking by search score have Kendall tau "
                     f"{agreement['tau']:+.2f} (p = {agreement['p']:.2g}).")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Writing everything
# ---------------------------------------------------------------------------

def write_results(study_dir: str | Path, records: list[TrialRecord], confirmations: list[ConfirmRecord],
                  config, *, task=None, complete: bool = True, plots: bool = True) -> Summary:
    """Write every result file (atomically) into `study_dir`; return the summary.

    records: all trial records of the study (any backend), in trial order.
    confirmations: the confirmation records for the current seeds.
    config: the SearchConfig the run used (for best.json's provenance).
    task: the evaluator task (its to_dict() goes into best.json), or None.
    complete: False while confirmation is unfinished (interrupted): best.json is
      then not written (an earlier one stays), and the verdict says the ranking is partial.
    """
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    rows = build_leaderboard(records, confirmations)
    files = []

    write_json(study_dir / "trials.json", [r.to_dict() for r in records])
    write_json(study_dir / "leaderboard.json", rows)
    write_text(study_dir / "leaderboard.csv", _csv(rows))
    files += ["trials.json", "leaderboard.json", "leaderboard.csv"]

    best = None
    confirmed = [r for r in rows if r["confirmed"] and r["mean"] is not None]
    if complete and confirmed:
        best = _best_json(confirmed[0], records, config, task)
        write_json(study_dir / "best.json", best)
        files.append("best.json")

    text = format_table(rows) + "\n\n" + verdict(rows, complete)
    write_text(study_dir / "summary.txt", text + "\n")
    files.append("summary.txt")
    if plots:
        from search import plots as plots_mod

        files += plots_mod.write_plots(study_dir, rows, records)
    return Summary(rows, best, text, files)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        flat = dict(r)
        for k in ("seeds", "per_seed", "failures"):
            flat[k] = ";".join(str(x) for x in r[k])
        flat["learned_coefficients"] = json.dumps(jsonable(r["learned_coefficients"]), sort_keys=True)
        w.writerow(jsonable(flat))
    return buf.getvalue()


def _best_json(row: dict, records: list[TrialRecord], config, task) -> dict:
    # what --trials counts: finished trials that evaluated a candidate of their own
    n_finished = sum(r.status not in ("running", "interrupted", "error") and r.duplicate_of is None
                     for r in records)
    return {
        "study": config.study_name,
        "label": row["label"],
        "candidate": row["candidate"],
        "params": row["params"],
        "fingerprint": row["fingerprint"],
        "learned_coefficients": row["learned_coefficients"],
        "confirmed": {"metric": "test_acc", "mean": row["mean"], "std": row["std"],
                      "n_seeds": row["n_seeds"], "seeds": row["seeds"], "per_seed": row["per_seed"]},
        "vs_gelu": {"mean_diff": row["mean_diff_vs_gelu"], "ci_low": row["ci_low"],
                    "ci_high": row["ci_high"], "beats_gelu": row["beats_gelu"]},
        "task": task.to_dict() if task is not None else None,
        "search": {"backend": config.backend, "n_trials": n_finished, "sampler": config.sampler},
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hardware": hardware(_device(task)),
    }


def _device(task) -> str | None:
    """The device the task ran on ("cuda", "cpu"), resolved from "auto" where possible."""
    if task is None:
        return None
    try:
        return str(task.resolve_device())
    except (AttributeError, ValueError, RuntimeError):
        return getattr(task, "device", None)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("torch", "timm", "optuna", "sympy", "numpy", "scipy", "matplotlib", "ray", "eafo-search"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def hardware(device: str | None = None) -> dict:
    import os

    out = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
           "device": device}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["cuda_device"] = torch.cuda.get_device_name(0)
    return out


__all__ = ["write_results", "build_leaderboard", "format_table", "verdict", "Summary", "versions",
           "CONFIDENCE", "N_RESAMPLES", "MIN_PAIRS_FOR_CLAIM"]
