"""Tune's trials -> the policy's TrialRecords, what only Ray knows, and the progress lines.

`collect` turns every trial of the study's experiments (`ray/`, `ray-2/`, ...)
into a `TrialRecord` in trial-number order, like the Optuna backend, so
`write_results`, confirmation, plots and export are the same.
`<study>/ray_trials.json` (`ray_info`) adds what only Ray knows per trial:
Tune id, pid, node, attempts, resumed epoch, start/end times.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ray import tune
from ray.tune.experiment import Trial

from search import policy
from search.policy import Outcome
from search.records import TrialRecord, finite_or_none, jsonable
from search.ray_backend.connection import error_line
from search.ray_backend.searcher import TIME_ATTR
from search.ray_backend.trainable import read_events

EXPERIMENT = "ray"           # Ray's experiment folder under the study folder (then ray-2, ray-3...)
TRIALS_FILE = "ray_trials.json"


def trial_outcome(result: dict, key: str) -> Outcome:
    """What a finished trial's last result says (a scheduler's stop: pruned).

    The outcome travels as JSON text: Tune flattens nested dicts in the results
    it hands a searcher, a string it leaves alone.
    """
    if result.get("final"):
        text = result.get("outcome")
        return Outcome.from_dict(json.loads(text)) if isinstance(text, str) else \
            Outcome("error", reason="the trial reported no outcome")
    epoch, value = result.get(TIME_ATTR), finite_or_none(result.get(key))
    at = f" at {key} {value:.4f}" if value is not None else ""
    return Outcome("pruned", reason=f"stopped by the scheduler after epoch {epoch}{at}",
                   history=list(result.get("history") or []))


def experiment_dirs(study_dir: Path) -> list[Path]:
    """The study's Ray experiments in order: ray/, ray-2/, ray-3/, ..."""
    out = []
    for i in range(1, 10_000):
        p = Path(study_dir) / (EXPERIMENT if i == 1 else f"{EXPERIMENT}-{i}")
        if not p.is_dir():
            break
        out.append(p)
    return out


def load_trials(segments: list[Path]):
    """([(trial, its experiment folder)], the last segment's ExperimentAnalysis)."""
    import logging

    trials = []
    analysis = None
    # A trial that never reported has no result files; its record says so, Tune need not warn.
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    for seg in segments:
        if not list(seg.glob("experiment_state*.json")):
            continue
        quiet.setLevel(logging.ERROR)
        try:
            analysis = tune.ExperimentAnalysis(str(seg))
        finally:
            quiet.setLevel(level)
        trials += [(t, seg) for t in analysis.trials if "number" in (t.config or {})]
    return trials, analysis


def collect(segments: list[Path], space, key: str):
    """(records in trial-number order, the last segment's ExperimentAnalysis)."""
    trials, analysis = load_trials(segments)
    records = [trial_record(t, space, key) for t, _ in trials]
    return sorted(records, key=lambda r: r.number), analysis


def trial_record(trial, space, key: str) -> TrialRecord:
    import spaces

    cfg, last = trial.config, trial.last_result or {}
    number, baseline = cfg["number"], cfg.get("baseline")
    baselines = {baseline: spaces.Candidate.from_dict(cfg["candidate"])} if baseline else {}
    built = policy.build(space, baselines, params=cfg.get("params"), baseline=baseline)
    if built.candidate is None:
        built = None
    if last.get("final") or (trial.status == Trial.TERMINATED and last):
        outcome = trial_outcome(last, key)  # finished, or stopped by the scheduler
    elif trial.status == Trial.ERROR:
        outcome = Outcome("error", reason=f"{error_line(trial.get_error())} "
                                          f"(after {trial.num_failures} failure(s))")
    else:  # Ctrl-C, or the driver died: resumed by the next run
        outcome = Outcome("interrupted" if trial.status != Trial.RUNNING else "running",
                          reason="stopped before it finished; the same command resumes it from its last epoch")
    history = outcome.history or list(last.get("history") or [])
    return policy.record(number, outcome, baseline=baseline, params=cfg.get("params"), built=built,
                         duplicate_of=cfg.get("duplicate_of"), state=trial.status,
                         precision=last.get("precision"), history=history)


def ray_info(study_dir: Path) -> list[dict]:
    """What only Ray knows per trial: ids, attempts, where and when it ran, the resumed epoch."""
    trials, _ = load_trials(experiment_dirs(study_dir))
    events = read_events(study_dir)
    out = []
    for t, seg in sorted(trials, key=lambda ts: ts[0].config["number"]):
        last = t.last_result or {}
        mine = [e for e in events if e.get("trial_id") == t.trial_id]
        out.append({
            "number": t.config["number"], "trial_id": t.trial_id, "status": t.status, "experiment": seg.name,
            "num_failures": t.num_failures, "resumed_from_epoch": last.get("resumed_from_epoch"),
            "started_at": min((e["time"] for e in mine if e["event"] in ("start", "duplicate")),
                              default=last.get("started_at")),
            "ended_at": last.get("ended_at") or last.get("reported_at"),  # a stopped trial: its last epoch
            "pid": last.get("pid"), "node_ip": last.get("node_ip"),
            "pids": list(dict.fromkeys(e["pid"] for e in mine)),  # worker processes, first one first
            "hosts": list(dict.fromkeys(e["host"] for e in mine)),
        })
    return jsonable(out)


class Progress(tune.Callback):
    """Tune callback: the policy's progress line for every finished trial, on stderr."""

    def __init__(self, key: str):
        self.key = key

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        o = trial_outcome(last, self.key)
        what = trial.config.get("baseline") or last.get("formula")
        print(policy.progress_line(trial.config.get("number", "?"), o.status, o.score, what,
                                   trial.config.get("duplicate_of"), o.reason), file=sys.stderr)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(policy.progress_line(trial.config.get("number", "?"), "error", None, None, None,
                                   error_line(trial.get_error())), file=sys.stderr)


__all__ = ["collect", "trial_record", "trial_outcome", "experiment_dirs", "load_trials", "ray_info", "Progress",
           "EXPERIMENT", "TRIALS_FILE"]
