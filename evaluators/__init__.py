"""Evaluators: datasets, proxy models, the training loop and zero-cost scores.

    >>> from evaluators import ProxyTask
    >>> result = ProxyTask(epochs=2, train_size=2000).evaluate(candidate, seed=0)
    >>> result.status, result.score          # validation accuracy (higher is better)
    >>> lm = ProxyTask.for_dataset("shakespeare")   # gpt-nano, scored in bits per character
    >>> lm.evaluate(candidate, seed=0).score        # lower is better: lm.metric.direction

Knows nothing of Optuna or Ray: progress leaves a trial through
``report(epoch, metrics)``, which may raise to stop it.
"""
from evaluators.data import DeviceSplit, RawDataset, list_datasets, load_dataset, prepare_split, read_idx
from evaluators.exceptions import DataFormatError, DataNotFoundError, EvaluatorError
from evaluators.metrics import ACCURACY, BITS_PER_CHAR, Metric, get_metric
from evaluators.models import MLPS, build_model, list_models
from evaluators import gpt  # noqa: F401  (registers the gpt-* presets)
from evaluators.preactivation import PreactivationStats, preactivation_std
from evaluators.text import Corpus, TextSplit, load_corpus
from evaluators.result import STATUSES, TrialResult
from evaluators.task import Checkpoint, ProxyTask
from evaluators.zero_cost import entropy_score, grad_norm_score

__all__ = [
    "ProxyTask", "TrialResult", "STATUSES", "Checkpoint",
    "load_dataset", "prepare_split", "read_idx", "list_datasets", "RawDataset", "DeviceSplit",
    "build_model", "list_models", "MLPS",
    "load_corpus", "Corpus", "TextSplit",
    "Metric", "ACCURACY", "BITS_PER_CHAR", "get_metric",
    "entropy_score", "grad_norm_score", "preactivation_std", "PreactivationStats",
    "EvaluatorError", "DataNotFoundError", "DataFormatError",
]
