"""Every exception the search raises on purpose, under one root class.

A rejected, diverged or pruned candidate is not an exception here either: it is
a normal outcome, recorded in the trial's record with its reason.
"""
from __future__ import annotations


class SearchError(Exception):
    """Root of the search's exceptions."""


class UsageError(SearchError, ValueError):
    """Bad input (an unknown name, a bad budget, unusable storage or results).

    The CLI prints the message as one line on stderr and exits with code 2,
    before it has created or changed any file.
    """


class StorageError(UsageError):
    """The study storage is unreachable, corrupt, or not an Optuna database."""


class BackendUnavailable(UsageError):
    """A backend's module or library is not installed; the message says how to get it."""


class SearchInterrupted(SearchError):
    """Ctrl-C during the search, raised after the finished trials were saved.

    `records` holds the trial records that finished before the interrupt.
    """

    def __init__(self, message: str, records: list | None = None):
        super().__init__(message)
        self.records = list(records or [])


class TooManyErrors(SearchError):
    """Several trials in a row failed with unexpected exceptions (a bug, not a candidate)."""

    def __init__(self, message: str, records: list | None = None):
        super().__init__(message)
        self.records = list(records or [])


__all__ = ["SearchError", "UsageError", "StorageError", "BackendUnavailable",
           "SearchInterrupted", "TooManyErrors"]
