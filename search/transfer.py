"""The transfer check: does a ranking found on one task hold on another?

`--transfer-to DATASET:MODEL` (e.g. `shakespeare:gpt-nano` after an image study,
`fashion_mnist:vit-nano` after a text one): once confirmation is complete, the
confirmed candidates and the baselines are trained on the second task over the
same confirmation seeds, with the study's MLP kind, and scored on its test split.

It reuses the confirmation machinery (search.confirm) with every candidate on
every seed (no racing: a rank correlation needs every candidate's mean), so it
runs on the study's backend (Ray workers included), and its runs are saved one
by one in `<study>/transfer-<dataset>-<model>/confirm.jsonl`: a rerun resumes.

The first task's column is the study's confirmation as it stands: a candidate
that racing stopped has its mean over the seeds it got (3 at least), and `n`
says how many. The report puts the two tasks' results side by side and gives the Kendall tau
(scipy.stats.kendalltau, tau-b, with its two-sided p-value) between the two
rankings, each ranked in its own metric's direction (accuracy: higher is better;
bits per character: lower). It is printed and written as `transfer.json` and
`transfer.txt` in the study folder.
"""
from __future__ import annotations

import math
from pathlib import Path

from search.baselines import REFERENCE, display_name
from search.exceptions import UsageError
from search.stats import mean_std

REPORT_JSON, REPORT_TEXT = "transfer.json", "transfer.txt"
TASK_FILE = "task.json"  # the transfer task's settings, checked on a rerun


def parse(text: str) -> tuple[str, str]:
    """"DATASET:MODEL" -> (dataset, model); UsageError naming the valid names otherwise."""
    from evaluators import list_models
    from evaluators.data import check_dataset

    dataset, sep, model = (text or "").partition(":")
    dataset, model = dataset.strip(), model.strip()
    if not sep or not dataset or not model or ":" in model:
        raise UsageError(f"--transfer-to must be DATASET:MODEL, e.g. shakespeare:gpt-nano, got {text!r}")
    try:
        check_dataset(dataset)
    except ValueError as e:
        raise UsageError(f"--transfer-to {text}: {e}") from None
    if model not in list_models():
        raise UsageError(f"--transfer-to {text}: unknown model {model!r}; valid models: {', '.join(list_models())}")
    return dataset, model


def transfer_task(config, task):
    """The second task: its track's search defaults (search.config.track_defaults), then
    config.transfer_set, on the study's device and precision, with the study's MLP kind."""
    from evaluators import ProxyTask
    from search.config import track_defaults

    dataset, model = parse(config.transfer_to)
    sizes = {k: v for k, v in track_defaults(dataset).items() if k != "model"}
    settings = {**sizes, "model": model, "mlp": config.mlp, "device": task.device, "precision": task.precision,
                "data_root": config.data_root, **config.transfer_set}
    try:
        second = ProxyTask.for_dataset(dataset, **settings)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--transfer-to {config.transfer_to}: {e}") from None
    saved = folder(config) / TASK_FILE
    if saved.exists():
        import json

        before = json.loads(saved.read_text())
        diff = [f"{k}={before.get(k)!r} (now {v!r})" for k, v in second.to_dict().items() if before.get(k) != v]
        if diff:
            raise UsageError(f"the transfer task in {saved.parent} was run with {', '.join(diff)}; rerun with "
                             "those settings, or remove that folder")
    return second


def folder(config) -> Path:
    dataset, model = parse(config.transfer_to)
    return config.study_dir / f"transfer-{dataset}-{model}"


def run(config, task, entries, runner_for, progress: bool = True):
    """Train `entries` (search.confirm.Entry) on the transfer task over the confirmation
    seeds; return (the second task, search.confirm.Confirmation).

    runner_for: (task, folder) -> a confirmation runner (the backend's confirm_runner).
    """
    from search import confirm as confirm_mod
    from search.atomic import write_json

    second = transfer_task(config, task)
    where = folder(config)
    where.mkdir(parents=True, exist_ok=True)
    write_json(where / TASK_FILE, second.to_dict())
    result = confirm_mod.confirm(entries, config.confirmation_seeds, where, runner_for(second, where),
                                 second.metric, adaptive=False, progress=progress)
    return second, result


def report(entries, first_records, first_task, second_records, second_task, mlp: str = "plain") -> dict:
    """Per candidate, both tasks' mean +- std over the seeds, the ranks, and the Kendall
    tau between the two rankings (each in its metric's direction)."""
    from scipy.stats import kendalltau

    rows = []
    for e in entries:
        one = _scores(first_records, e.fingerprint)
        two = _scores(second_records, e.fingerprint)
        m1, s1 = mean_std(one)
        m2, s2 = mean_std(two)
        rows.append({"label": e.label, "name": display_name(e.label, mlp), "fingerprint": e.fingerprint,
                     "formula": e.candidate.get("formula"), "first": {"mean": m1, "std": s1, "n": len(one)},
                     "second": {"mean": m2, "std": s2, "n": len(two)}})
    for key, t in (("first", first_task), ("second", second_task)):
        ranked = sorted((r for r in rows if r[key]["mean"] is not None), key=lambda r: -t.metric.sign * r[key]["mean"])
        for i, r in enumerate(ranked, 1):
            r[key]["rank"] = i
    both = [r for r in rows if r["first"]["mean"] is not None and r["second"]["mean"] is not None]
    tau = p = None
    if len(both) >= 3:
        res = kendalltau([first_task.metric.sign * r["first"]["mean"] for r in both],
                         [second_task.metric.sign * r["second"]["mean"] for r in both])
        if math.isfinite(res.statistic):
            tau, p = float(res.statistic), float(res.pvalue)
    return {"first": _task_info(first_task), "second": _task_info(second_task), "mlp": mlp,
            "reference": REFERENCE, "rows": rows, "kendall_tau": tau, "p": p, "n": len(both)}


def _scores(records, fingerprint: str) -> list[float]:
    return [r.score for r in sorted(records, key=lambda r: r.seed)
            if r.fingerprint == fingerprint and r.status == "ok" and r.score is not None]


def _task_info(task) -> dict:
    m = task.metric
    return {"dataset": task.dataset, "model": task.model, "metric": m.key("test"), "direction": m.direction,
            "title": m.title, "scale": m.scale, "task": task.to_dict()}


def format_report(rep: dict) -> str:
    """The side-by-side table and the tau, as printed and written to transfer.txt."""
    def cell(side: dict, info: dict) -> str:
        if side["mean"] is None:
            return "-"
        d = 2 if info["scale"] >= 100 else 3
        sd = "" if side["std"] is None else f" ± {info['scale'] * side['std']:.{d}f}"
        return f"{info['scale'] * side['mean']:.{d}f}{sd} ({side['n']}) #{side.get('rank', '-')}"

    a, b = rep["first"], rep["second"]
    head = ["label", f"{a['dataset']}/{a['model']}: test {a['title']}",
            f"{b['dataset']}/{b['model']}: test {b['title']}"]
    lines = [[r["name"], cell(r["first"], a), cell(r["second"], b)] for r in rep["rows"]]
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*x) for x in lines)]
    arrow = {"maximize": "higher", "minimize": "lower"}
    out.append(f"(mean ± std over seeds (n) #rank; {a['title']}: {arrow[a['direction']]} is better, "
               f"{b['title']}: {arrow[b['direction']]} is better)")
    if rep["kendall_tau"] is None:
        out.append(f"Transfer: Kendall tau not defined ({rep['n']} candidates scored on both tasks, or all tied).")
    else:
        out.append(f"Transfer: the rankings on the two tasks have Kendall tau {rep['kendall_tau']:+.2f} "
                   f"(p = {rep['p']:.2g}, two-sided, {rep['n']} candidates): +1 the same order, 0 unrelated, "
                   "-1 reversed.")
    return "\n".join(out)


def write_report(study_dir: str | Path, rep: dict) -> str:
    from search.atomic import write_json, write_text
    from search.records import jsonable

    text = format_report(rep)
    write_json(Path(study_dir) / REPORT_JSON, jsonable(rep))
    write_text(Path(study_dir) / REPORT_TEXT, text + "\n")
    return text


__all__ = [
    "REPORT_JSON",
    "REPORT_TEXT",
    "folder",
    "format_report",
    "parse",
    "report",
    "run",
    "transfer_task",
    "write_report",
]
