"""The trainable: one search trial on a Ray worker.

- Candidates: built by search.policy.build from the trial's config (a
  baseline's candidate travels in its config, a point of the space as params).
- Reporting: every epoch the task's validation metric (and a checkpoint of the
  evaluator's state: model with its learnable coefficients, optimiser, lr
  schedule, RNG, epoch, history) goes to `ray.tune.report`; the last report
  carries the policy's Outcome ("final": True).
- Resuming: a trial whose worker dies is retried (FailureConfig) and resumes
  from `ray.tune.get_checkpoint()`; its result records `resumed_from_epoch`.
- Events: workers append start/epoch/end lines to `<study>/ray_events.jsonl`
  (pid, host), a log of who trained what.
- Data: one loaded task per worker process (`cached_task`): Tune reuses a
  worker for the next trial, so the data is read once per worker.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from ray import tune

from search import policy
from search.policy import Outcome
from search.records import finite_or_none, jsonable
from search.ray_backend.searcher import TIME_ATTR

EVENTS_FILE = "ray_events.jsonl"
STATE_FILE = "state.pt"      # the evaluator's training state inside a Tune checkpoint


def make_trainable(config, task, space, events_path: Path):
    fn = tune.with_parameters(train_trial, task=task, space=space, seed=config.seed,
                              cpus=config.cpus_per_trial, events=str(events_path))
    return tune.with_resources(fn, {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})


def train_trial(trial_config: dict, *, task, space, seed: int, cpus: float, events: str) -> None:
    """Build the trial's candidate, train it (resuming from a checkpoint), report every epoch."""
    import spaces

    number = trial_config["number"]
    key = task.metric.key("val")
    log = Events(events, number, tune.get_context().get_trial_id())
    t0 = time.time()
    if "duplicate_of" in trial_config:
        owner = trial_config["duplicate_of"]
        log("duplicate", duplicate_of=owner)
        outcome = Outcome.from_dict(trial_config["reuse"]).reused_by_duplicate(owner)
        built = policy.build(space, {}, params=trial_config.get("params"))
        tune.report(final_report(outcome, key, t0, None, duplicate_of=owner,
                                 formula=built.candidate.formula if built.candidate is not None else None))
        return
    baseline = trial_config.get("baseline")
    baselines = {baseline: spaces.Candidate.from_dict(trial_config["candidate"])} if baseline else {}
    built = policy.build(space, baselines, params=trial_config.get("params"), baseline=baseline)
    if built.candidate is None:
        log("end", status="rejected")
        tune.report(final_report(Outcome("rejected", reason=built.reason, wall_time=time.time() - t0), key, t0,
                                 None))
        return
    candidate = built.candidate
    task = cached_task(task, cpus)
    ckpt = _TuneCheckpoint()
    log("start", resumed=tune.get_checkpoint() is not None)
    history: list[dict] = []

    def report(epoch: int, metrics: dict) -> None:
        history.append(jsonable(metrics))
        value = finite_or_none(metrics.get(key))
        checkpoint = ckpt.take()
        try:
            tune.report({TIME_ATTR: int(epoch), key: value if value is not None else math.nan,
                         "train_loss": finite_or_none(metrics.get("train_loss")), "history": history,
                         "formula": candidate.formula, "final": False, "started_at": t0,
                         "reported_at": time.time()},
                        checkpoint=checkpoint)
        finally:
            ckpt.cleanup()
        log("epoch", epoch=int(epoch))

    result = task.evaluate(candidate, seed=seed, report=report, split="val", checkpoint=ckpt)
    outcome = Outcome.from_result(result)
    log("end", status=outcome.status, resumed_from_epoch=result.resumed_from_epoch)
    tune.report(final_report(outcome, key, t0, result.resumed_from_epoch, formula=candidate.formula,
                             epoch=result.epochs_completed, precision=policy.precision_of(task)))


_TASKS: dict = {}


def cached_task(task, cpus: float):
    """The worker's earlier task object of the same configuration, with its data already loaded,
    and one torch thread per reserved CPU (not one per core of the node).

    Tune reuses a worker for the next trial (reuse_actors=True), and Ray a
    worker process for the next task, so the data is read once per worker, not
    once per run (about 5 s for Fashion-MNIST).
    """
    if task.num_threads is None:
        task = task.replace(num_threads=max(1, int(cpus)))
    key = (type(task).__module__, type(task).__qualname__, json.dumps(jsonable(task.to_dict()), sort_keys=True))
    if key not in _TASKS:
        _TASKS.clear()  # one task's data per worker
        _TASKS[key] = task
    return _TASKS[key]


def final_report(outcome: Outcome, key: str, t0: float, resumed_from, *, duplicate_of=None, formula=None,
                 epoch: int = 0, precision: str | None = None) -> dict:
    """The trial's last report: everything its record needs (the outcome as JSON text: Tune
    would flatten a nested dict before a searcher sees it)."""
    out = {TIME_ATTR: int(epoch), key: outcome.score if outcome.score is not None else math.nan, "final": True,
           "outcome": json.dumps(outcome.to_dict()), "resumed_from_epoch": resumed_from, "started_at": t0,
           "ended_at": time.time(), "formula": formula, "precision": precision}
    if duplicate_of is not None:
        out["duplicate_of"] = duplicate_of
    return out


class _TuneCheckpoint:
    """The evaluator's checkpoint hook on Tune checkpoints.

    save(state) writes the state to a temporary folder; the next report passes
    it to `ray.tune.report(..., checkpoint=...)`, which copies it to the
    experiment's storage. load() reads the trial's latest one back.
    """

    def __init__(self):
        self._pending: str | None = None

    def load(self) -> dict | None:
        import torch

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)

    def save(self, state: dict) -> None:
        import tempfile

        import torch

        self.cleanup()
        self._pending = tempfile.mkdtemp(prefix="eafo-checkpoint-")
        torch.save(state, Path(self._pending) / STATE_FILE)

    def take(self):
        return tune.Checkpoint.from_directory(self._pending) if self._pending else None

    def cleanup(self) -> None:
        import shutil

        if self._pending:
            shutil.rmtree(self._pending, ignore_errors=True)
            self._pending = None


class Events:
    """Appends one JSON line per trial event (start, epoch, end) to the study's events file."""

    def __init__(self, path: str, number: int, trial_id: str):
        import platform

        self.path, self.base = path, {"number": number, "trial_id": trial_id, "pid": os.getpid(),
                                      "host": platform.node()}

    def __call__(self, event: str, **fields) -> None:
        line = json.dumps(jsonable({"time": time.time(), "event": event, **self.base, **fields}))
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass  # a node without the study folder: the events are a log, not a result


def read_events(study_dir: Path) -> list[dict]:
    path = Path(study_dir) / EVENTS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a killed worker
    return out


__all__ = ["make_trainable", "train_trial", "cached_task", "final_report", "read_events", "Events",
           "EVENTS_FILE", "STATE_FILE"]
