"""Backend-neutral records of what a search did: one per trial, one per confirmation run.

Both backends (Optuna, Ray Tune) turn their trials into `TrialRecord`s, and
`search.results.write_results` makes every file from those records alone, so
the files on disk do not depend on which backend ran.

A backend is a module, found by name in `search.run.BACKENDS`, with three functions::

    def run_<backend>(config: SearchConfig, space: spaces.Space, task: evaluators.ProxyTask,
                      study_dir: pathlib.Path) -> list[TrialRecord]
    def session(config) -> context manager   # around the search and the confirmation (Ray: connected)
    def confirm_runner(config, task, study_dir) -> a runner for search.confirm.confirm

The search follows `search.policy` (baselines first, candidates, deduplication,
what counts toward --trials, when to stop, pruning, progress, these records);
a backend keeps only the glue to its library. It must
- on Ctrl-C, raise `search.exceptions.SearchInterrupted(message, records)` with
  the records that finished, so the CLI can save a partial leaderboard;
- return one record per trial (any status), in trial-number order.
`search.run` then confirms the best candidates with the backend's runner and
calls `write_results`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

class DictRecord:
    """to_dict / from_dict for a dataclass whose files must round-trip exactly: from_dict
    refuses unknown keys (a typo or a newer file), missing ones take their defaults."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise cls.unknown_keys_error(unknown, known)
        return cls(**d)

    @classmethod
    def unknown_keys_error(cls, unknown: list[str], known: set[str]) -> Exception:
        return ValueError(f"unknown {cls.__name__} key(s) {unknown}")


# status: what happened to the candidate (not the backend's trial state)
STATUSES = (
    "ok",           # trained; `score` is its validation accuracy
    "rejected",     # refused before training (sanity filter, compile error); see `reason`
    "diverged",     # training produced NaN/inf (or the score was not finite); see `reason`
    "pruned",       # stopped early by the pruner; `history` holds the epochs it ran
    "error",        # an unexpected exception (a bug or the machine); see `reason`
    "interrupted",  # stopped by Ctrl-C; retried on the next run
    "running",      # not finished (still running, or killed; retried once found stale)
)


@dataclass
class TrialRecord(DictRecord):
    """One search trial, as every backend reports it.

    A duplicate (a candidate whose fingerprint an earlier finished trial already
    evaluated) is not trained again: it carries the earlier trial's status and
    score, and `duplicate_of` names that trial.
    """

    number: int                      # the trial's number in its study (0-based, the backend's)
    status: str                      # one of STATUSES
    label: str                       # a baseline's name (gelu, relu, ...), else "trial_<number>"
    baseline: str | None = None      # the baseline's name (one of --baselines), or None
    params: dict | None = None       # the space's params (None for baselines: built directly)
    candidate: dict | None = None    # Candidate.to_dict(); None when params could not be built
    formula: str | None = None       # the candidate's canonical formula
    fingerprint: str | None = None   # Candidate.fingerprint: equal functions share it
    score: float | None = None       # search metric (validation accuracy, 0..1) when status is "ok"
    reason: str | None = None        # why it was rejected / diverged / pruned / failed
    duplicate_of: int | None = None  # number of the trial whose result this one reuses
    history: list[dict] = field(default_factory=list)  # one metrics dict per epoch, as reported
    learned_coefficients: dict[str, float] = field(default_factory=dict)  # name -> value after
                                     # training, the MEAN over the model's activation modules (layers)
    learned_per_layer: dict[str, list[float]] = field(default_factory=dict)  # name -> the value in each
                                     # activation module, in model order (the mean's inputs)
    wall_time: float | None = None   # seconds the trial took (training and evaluation)
    state: str | None = None         # the backend's own trial state (Optuna: COMPLETE, PRUNED, ...)
    device: str | None = None        # where it trained, resolved ("cpu", "cuda:0"), never "auto"
    precision: str | None = None     # "fp32" or "bf16" (autocast), resolved, never "auto"

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown trial status {self.status!r}; valid: {', '.join(STATUSES)}")
        if self.score is not None:
            self.score = float(self.score)
            if not math.isfinite(self.score):  # NaN is an outcome, never a score
                raise ValueError(f"trial {self.number}: score must be finite or None, got {self.score}")
            if self.status != "ok":
                raise ValueError(f"trial {self.number}: a {self.status} trial has no score")

    @property
    def is_ok(self) -> bool:
        return self.status == "ok" and self.score is not None



@dataclass
class ConfirmRecord(DictRecord):
    """One (candidate, seed) confirmation run, scored on the held-out test split."""

    label: str                      # the leaderboard label (see TrialRecord.label)
    fingerprint: str
    candidate: dict                 # Candidate.to_dict()
    seed: int
    status: str                     # ok | rejected | diverged | error
    score: float | None = None      # test accuracy (0..1) when status is "ok"
    reason: str | None = None
    learned_coefficients: dict[str, float] = field(default_factory=dict)  # name -> MEAN over layers
    learned_per_layer: dict[str, list[float]] = field(default_factory=dict)  # name -> value per layer
    wall_time: float | None = None  # seconds
    metrics: dict = field(default_factory=dict)  # the evaluator's final metrics (losses, speed)
    device: str | None = None       # where it trained, resolved ("cpu", "cuda:0"), never "auto"
    precision: str | None = None    # "fp32" or "bf16", resolved
    pid: int | None = None          # the process that trained it (a Ray worker's, or the CLI's)
    node: str | None = None         # the machine that trained it (its host name)
    resumed_from_epoch: int | None = None  # the epoch a checkpoint resumed it from (a killed worker)

    def __post_init__(self):
        if self.score is not None:
            self.score = float(self.score)
            if not math.isfinite(self.score) or self.status != "ok":
                raise ValueError(f"confirmation {self.label} seed {self.seed}: bad score {self.score} "
                                 f"for status {self.status}")

    @property
    def key(self) -> tuple[str, int]:
        return (self.fingerprint, self.seed)



def finite_or_none(value: Any) -> float | None:
    """float(value) when it is a finite number, else None (NaN is never a score)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def mean_coefficients(learned: Any) -> dict[str, float]:
    """{name: float} from an evaluator's learned coefficients.

    Accepts {name: value} or {name: [value per activation module]} (averaged);
    non-finite values are left out (a diverged coefficient is no value).
    """
    out: dict[str, float] = {}
    for name, v in dict(learned or {}).items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        vals = [f for f in (finite_or_none(x) for x in vals) if f is not None]
        if vals:
            out[str(name)] = sum(vals) / len(vals)
    return out


def result_fields(result) -> dict:
    """status/score/reason/history/learned_coefficients/wall_time from an evaluator TrialResult.

    A result whose status is "ok" but whose score is not a finite number is
    recorded as diverged: NaN and +-inf are outcomes, never scores.
    """
    status = str(result.status)
    score = finite_or_none(getattr(result, "score", None))
    reason = getattr(result, "reason", None)
    if status == "ok" and score is None:
        status, reason = "diverged", f"score is not a finite number ({getattr(result, 'score', None)!r})"
    if status != "ok":
        score = None
    if status not in STATUSES:
        status, reason = "error", f"unknown evaluator status {result.status!r}: {reason}"
    learned = getattr(result, "coefficients", None)  # name -> [value per activation module]
    if learned is None:
        learned = getattr(result, "learned_coefficients", None)
    wall = getattr(result, "wall_seconds", None)
    if wall is None:
        wall = getattr(result, "wall_time", None)
    return {"status": status, "score": score, "reason": reason,
            "history": [jsonable(h) for h in (getattr(result, "history", None) or [])],
            "learned_coefficients": mean_coefficients(learned),
            "learned_per_layer": per_layer(learned),
            "wall_time": finite_or_none(wall),
            "device": getattr(result, "device", None)}


def per_layer(learned: Any) -> dict[str, list[float]]:
    """{name: [value per activation module]} (non-finite values as None, JSON-safe)."""
    return {str(k): [finite_or_none(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
            for k, v in dict(learned or {}).items()}


def jsonable(obj):
    """Plain JSON types: non-finite floats become None, numpy/torch scalars plain numbers."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return jsonable(obj.item())
    return str(obj)


def trial_label(number: int, baseline: str | None) -> str:
    return baseline if baseline else f"trial_{number}"


__all__ = ["DictRecord", "TrialRecord", "ConfirmRecord", "STATUSES", "finite_or_none", "mean_coefficients", "per_layer",
           "result_fields", "trial_label", "jsonable"]
