"""One run per study folder at a time: a `filelock` lock on `<study>/.lock`.

Two runs of one study at once would train the same seeded suggestions twice
and append the same confirmation runs. The OS drops the lock when the process
ends, even on SIGKILL, so a killed run never blocks the next one. The holder
writes its pid beside the lock (`.lock.pid`) so that the refusal can name it.
"""
from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout

from search.exceptions import UsageError

LOCK_FILE = ".lock"
PID_FILE = ".lock.pid"


def holder(study_dir: Path) -> str | None:
    """'pid N' if another process holds the study's lock, else None (creates nothing)."""
    path = Path(study_dir) / LOCK_FILE
    if not path.exists():
        return None
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        pid = Path(study_dir) / PID_FILE
        return f"pid {pid.read_text().strip() if pid.exists() else '?'}"
    lock.release()
    return None


def acquire(study_dir: Path) -> FileLock:
    """Hold the study's lock until `.release()` (or this process ends); UsageError if another holds it."""
    lock = FileLock(Path(study_dir) / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"study folder {study_dir} is being run by another process") from None
    (Path(study_dir) / PID_FILE).write_text(f"{os.getpid()}\n")
    return lock


__all__ = ["LOCK_FILE", "PID_FILE", "holder", "acquire"]
