"""Every exception the evaluators raise on purpose, under one root class.

A diverged or rejected candidate is *not* an exception: it is a normal outcome,
returned as a `TrialResult` with that status. These classes are for a task that
cannot run at all (missing data, a corrupt file, a bad configuration).
"""
from __future__ import annotations


class EvaluatorError(Exception):
    """Root of the evaluators' exceptions."""


class DataNotFoundError(EvaluatorError, ValueError):
    """A dataset was found in none of the places it may come from.

    The message names every way to provide it (see `evaluators.data`).
    """


class DataFormatError(EvaluatorError, ValueError):
    """A dataset file exists but is not what it claims to be (bad magic, truncated)."""


__all__ = ["EvaluatorError", "DataNotFoundError", "DataFormatError"]
