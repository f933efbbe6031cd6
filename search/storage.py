"""The study's storage: checked before anything is created, then opened with heartbeats.

`check_storage` only reads: an existing SQLite file is opened read-only and
must be an Optuna database (or empty); a missing one needs a folder to go in;
a server URL must accept a connection. Nothing is ever created over a file
that fails the check.

`open_storage` gives Optuna's RDB storage with heartbeats: a trial whose
process was killed stops beating, is found stale after `grace_period` seconds
by the next run, and `RetryHeartbeatStaleTrialCallback` enqueues it again with
the same params.
"""
from __future__ import annotations

import sqlite3
import warnings
from pathlib import Path

from search.exceptions import StorageError

# A trial that kills its process every time (out of memory, say) must not be
# retried for ever: the original run plus this many retries.
MAX_RETRY = 3
# Seconds a SQLite writer waits for the lock (the heartbeat thread writes too).
SQLITE_TIMEOUT = 30.0


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite:/// URL; None for other URLs. Raises StorageError if malformed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise StorageError(f"--storage {url!r} is not a database URL ({e}); "
                           "e.g. sqlite:///runs/study.db or postgresql://user@host/db") from None
    if not u.drivername.startswith("sqlite"):
        return None
    if not u.database or u.database == ":memory:" or u.database.startswith("file::memory:"):
        raise StorageError(f"--storage {url!r} is an in-memory database: a search could not be "
                           "resumed from it; name a file, e.g. sqlite:///runs/study.db")
    return Path(u.database)


def check_storage(url: str, will_create: Path | None = None) -> None:
    """Raise StorageError unless `url` can hold a study; reads only, creates nothing.

    will_create: a folder this run will create (the study folder), so a new
    SQLite file may go there although it does not exist yet.
    """
    path = sqlite_path(url)
    if path is None:
        _check_server(url)
        return
    if path.exists():
        if not path.is_file():
            raise StorageError(f"storage {path} exists but is not a file")
        check_sqlite_file(path)
        return
    parent = path.absolute().parent
    if will_create is not None and _is_within(parent, will_create.absolute()):
        return
    if not parent.is_dir():
        raise StorageError(f"storage {url!r}: folder {parent} does not exist")


def check_sqlite_file(path: Path) -> None:
    """An existing SQLite file must be an Optuna database, or hold no tables at all."""
    try:
        con = sqlite3.connect(Path(path).absolute().as_uri() + "?mode=ro", uri=True, timeout=SQLITE_TIMEOUT)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            ok = con.execute("PRAGMA quick_check").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise StorageError(f"storage {path} is not a readable SQLite database ({e}); it was left "
                           "untouched: move it away or choose another --study/--storage") from None
    if ok is None or ok[0] != "ok":
        raise StorageError(f"storage {path} is corrupt (sqlite quick_check: {ok and ok[0]}); it was left "
                           "untouched: move it away or choose another --study/--storage")
    if tables and not {"studies", "trials", "alembic_version"} <= tables:
        raise StorageError(f"storage {path} is a SQLite database but not an Optuna one "
                           f"(tables: {', '.join(sorted(tables))}); it was left untouched")


def _check_server(url: str) -> None:
    import sqlalchemy
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        engine = sqlalchemy.create_engine(url)
    except (ImportError, ModuleNotFoundError) as e:
        raise StorageError(f"--storage {url!r}: its database driver is not installed ({e})") from None
    except (ArgumentError, ValueError) as e:
        raise StorageError(f"--storage {url!r} is not a usable database URL ({e})") from None
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StorageError(f"cannot reach storage {url!r}: {first}") from None
    finally:
        engine.dispose()


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def open_storage(url: str, heartbeat_interval: int, grace_period: int):
    """Optuna RDB storage with heartbeats and retry of stale trials."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if sqlite_path(url) else {}
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5; we rely on them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs,
                              heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                  max_retry=MAX_RETRY))
        except RuntimeError as e:  # schema of another Optuna version
            raise StorageError(f"storage {url!r}: {e}") from None
