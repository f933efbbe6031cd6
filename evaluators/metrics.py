"""What a task's score is: its name per split, whether higher or lower is better.

The search engine never assumes "higher is better": it asks the task for its
metric and compares through it. Image classification scores accuracy
(maximise); the language-model track scores bits per character (minimise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

DIRECTIONS = ("maximize", "minimize")  # Optuna's spelling


@dataclass(frozen=True)
class Metric:
    name: str        # suffix of the metric keys: "<split>_<name>", e.g. "val_acc"
    direction: str   # "maximize" or "minimize"
    title: str       # for tables and plot axes, e.g. "accuracy %"
    scale: float     # printed value = stored value * scale (accuracy is stored in [0, 1], printed in %)
    unit: str        # unit of a printed difference, e.g. "pp"

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {self.direction!r}; valid: {', '.join(DIRECTIONS)}")

    def key(self, split: str) -> str:
        """The metrics key of this metric on `split` ("val" or "test")."""
        return f"{split}_{self.name}"

    @property
    def sign(self) -> float:
        """+1 when higher is better, -1 when lower is: sign * value is always "higher is better"."""
        return 1.0 if self.direction == "maximize" else -1.0

    def improvement(self, value: float, reference: float) -> float:
        """How much better `value` is than `reference` (positive: better), in stored units."""
        return self.sign * (value - reference)

    def better(self, a: float, b: float) -> bool:
        """True when a is strictly better than b; NaN is never better."""
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.isfinite(a) and not math.isfinite(b)
        return self.sign * a > self.sign * b


ACCURACY = Metric(name="acc", direction="maximize", title="accuracy %", scale=100.0, unit="pp")
BITS_PER_CHAR = Metric(name="bpc", direction="minimize", title="bits per character", scale=1.0, unit="bpc")

METRICS = {m.name: m for m in (ACCURACY, BITS_PER_CHAR)}


def get_metric(name: str) -> Metric:
    """The metric called `name` ("acc", "bpc"); ValueError lists the valid names."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid metrics: {', '.join(sorted(METRICS))}")
    return METRICS[name]


__all__ = ["Metric", "ACCURACY", "BITS_PER_CHAR", "METRICS", "DIRECTIONS", "get_metric"]
