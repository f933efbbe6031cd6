"""TrialResult: what one evaluation of one candidate produced, JSON-serialisable."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

# ok:       trained to the end; `score` is the task's metric on the evaluated split (accuracy for images).
# diverged: training ended early (NaN/inf or exploding loss); `reason` says how.
# rejected: never trained (failed spaces.sanity_check or could not be compiled).
# pruned:   stopped by the report callback (set by the backend that pruned it;
#           the task itself lets the callback's exception propagate).
STATUSES = ("ok", "diverged", "rejected", "pruned")


@dataclass
class TrialResult:
    status: str
    score: float | None                 # the task's metric (evaluators.metrics) when status == "ok", else None (never NaN)
    score_name: str = "val_acc"         # which metric `score` is: "<split>_<metric name>", e.g. "val_acc"
    seed: int = 0
    epochs_completed: int = 0
    metrics: dict = field(default_factory=dict)       # the last epoch's metrics
    history: list = field(default_factory=list)       # one metrics dict per completed epoch
    coefficients: dict = field(default_factory=dict)  # learnable name -> learned value per activation instance
    wall_seconds: float = 0.0
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None  # "cuda_max_allocated" or "process_max_rss" (whole process)
    reason: str | None = None            # why diverged / rejected / pruned
    resumed_from_epoch: int | None = None
    candidate: dict | None = None        # Candidate.to_dict() plus its fingerprint
    task: dict | None = None             # ProxyTask.to_dict() that produced this
    data: dict | None = None             # where the data came from (dataset, source; text: package, license, sha256)
    device: str | None = None
    versions: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; valid statuses: {', '.join(STATUSES)}")
        if self.status == "ok":
            if self.score is None or not math.isfinite(self.score):
                raise ValueError(f"an ok result needs a finite score, got {self.score!r}")
            self.score = float(self.score)
        elif self.score is not None:
            raise ValueError(f"a {self.status} result has no score (got {self.score!r})")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        """Plain JSON types only; non-finite floats become None (the reason says why)."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrialResult":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrialResult key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(names))}")
        return cls(**dict(d))


def _json_safe(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if hasattr(v, "item"):  # numpy / torch scalars
        return _json_safe(v.item())
    raise TypeError(f"cannot store {type(v).__name__} in a TrialResult")


__all__ = ["TrialResult", "STATUSES"]
