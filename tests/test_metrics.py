"""evaluators.metrics: direction-aware comparison, the contract the search relies on."""
import math

import pytest

from evaluators import ACCURACY, BITS_PER_CHAR, ProxyTask, get_metric
from evaluators.metrics import Metric


def test_improvement_is_positive_when_better_in_either_direction():
    assert ACCURACY.improvement(0.82, 0.80) == pytest.approx(0.02)
    assert BITS_PER_CHAR.improvement(1.90, 2.00) == pytest.approx(0.10)   # lower bpc is better
    assert BITS_PER_CHAR.improvement(2.10, 2.00) == pytest.approx(-0.10)


def test_better_follows_the_direction_and_never_prefers_nan():
    assert ACCURACY.better(0.9, 0.8) and not ACCURACY.better(0.8, 0.9)
    assert BITS_PER_CHAR.better(1.5, 1.6) and not BITS_PER_CHAR.better(1.6, 1.5)
    assert not ACCURACY.better(math.nan, 0.1) and ACCURACY.better(0.1, math.nan)


def test_keys_name_the_split():
    assert ACCURACY.key("val") == "val_acc" and BITS_PER_CHAR.key("test") == "test_bpc"


def test_unknown_names_and_directions_are_rejected_with_the_valid_ones():
    with pytest.raises(ValueError, match="acc, bpc"):
        get_metric("loss")
    with pytest.raises(ValueError, match="maximize, minimize"):
        Metric(name="x", direction="max", title="x", scale=1.0, unit="x")


def test_image_tasks_score_accuracy():
    task = ProxyTask(epochs=1, train_size=100, val_size=100)
    assert task.metric is ACCURACY and task.metric.key("val") == "val_acc"
