"""`python -m search.run`: search for activation functions, confirm the best, report.

Three phases, each resumable: the search (Optuna study in SQLite, or Ray Tune),
the confirmation of the best candidates and the baselines over fresh seeds on
the test split (confirm.jsonl), and the results (leaderboard, best.json, plots).
Running the same command again continues where the last run stopped.

Everything the user can get wrong is checked before any file is created or
opened for writing: bad input ends with one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

from search.config import BACKEND_NAMES, PRUNERS, SAMPLERS, SearchConfig
from search.exceptions import BackendUnavailable, SearchInterrupted, TooManyErrors, UsageError

PROG = "python -m search.run"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT


# ---------------------------------------------------------------------------
# Backends: name -> import function (Ray Tune's pattern), so that --help and the
# default path never import an optional library.
# ---------------------------------------------------------------------------

def _import_optuna_backend():
    from search.optuna_backend import run_optuna

    return run_optuna


def _import_ray_backend():
    try:
        from search.ray_backend import run_ray
    except ModuleNotFoundError as e:
        if e.name == "ray" or (e.name or "").startswith("ray."):
            raise BackendUnavailable("the ray backend needs Ray Tune: pip install 'ray[tune]'") from None
        if e.name == "search.ray_backend":
            raise BackendUnavailable("the ray backend is not available in this installation "
                                         "(search/ray_backend.py is missing); use --backend optuna") from None
        raise
    except ImportError as e:
        raise BackendUnavailable(f"the ray backend cannot be imported ({e}); "
                                     "use --backend optuna") from None
    return run_ray


BACKENDS = {"optuna": _import_optuna_backend, "ray": _import_ray_backend}


def get_backend(name: str):
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    return BACKENDS[name]()


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2), never the usage block."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _bounded(kind: type, positive: bool):
    """An argparse type: text -> int or finite float, > 0 (positive) or >= 0, else a
    one-line error that names the bound."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (v > 0 if positive else v >= 0) or v == float("inf"):
            bound = f"a positive {what.split()[1]}" if positive else f"{what} >= 0"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return v

    return parse


_positive_int, _nonneg_int = _bounded(int, positive=True), _bounded(int, positive=False)
_positive_float, _nonneg_float = _bounded(float, positive=True), _bounded(float, positive=False)


EPILOG = """\
defaults: the bare command (vit-nano on 5,000 Fashion-MNIST images, 12 trials of
3 epochs including the 4 baselines, then the top 2 candidates and the 4
baselines retrained on 3 fresh seeds and scored on the 10,000 test images)
took 8 min 20 s on 2 CPU cores shared with other work (about 2.7 min search,
5.5 min confirmation); expect about 5 minutes on 2 idle cores.

on a GPU (--device cuda, or auto), scale the task up, e.g.:
  --train-size 50000 --val-size 10000 --epochs 15 --trials 100 \\
  --pruner hyperband --confirm-top 5 --confirm-seeds 10
or --model vit-tiny --dataset cifar10 for the paper's ViT-T on CIFAR-10.

results go to <runs-dir>/<study>/: leaderboard.csv/.json, best.json,
activations.png, history.png, zero_cost.png, summary.txt, trials.json, config.json,
confirm.jsonl and (default storage) study.db. Watch a running search with
  optuna-dashboard sqlite:///runs/<study>/study.db

resume: run the same command again. Finished trials and confirmation runs are
kept; a trial whose process was killed is retried once it has had no heartbeat
for --grace-period seconds; Ctrl-C saves what finished and says how to resume.
To search longer, rerun with a larger --trials.

exit codes: 0 done, 1 the search stopped on repeated errors, 2 bad input
(nothing was written), 130 interrupted (partial results saved).
"""


def build_parser() -> argparse.ArgumentParser:
    d = SearchConfig()
    p = _Parser(prog=PROG, description="Search for neural-network activation functions (EAFO/CRReLU "
                "families, Sun et al. ICLR 2025), confirm the best over fresh seeds, and report.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to search, on which task")
    g.add_argument("--space", default=d.space,
                   help=f"search space, see spaces.list_spaces() (default: {d.space})")
    g.add_argument("--dataset", default=d.dataset,
                   help=f"fashion_mnist | cifar10 | cifar100 (default: {d.dataset})")
    g.add_argument("--model", default=d.model,
                   help=f"proxy model: vit-nano | vit-tiny | deit-tiny | resnet-tiny (default: {d.model})")
    g.add_argument("--epochs", type=_positive_int, default=d.epochs,
                   help=f"training epochs per trial and per confirmation run (default: {d.epochs})")
    g.add_argument("--train-size", type=_positive_int, default=d.train_size,
                   help=f"training images per trial, stratified (default: {d.train_size})")
    g.add_argument("--val-size", type=_positive_int, default=d.val_size,
                   help=f"validation images carved from the training set; the search metric "
                        f"(default: {d.val_size})")
    g.add_argument("--test-size", type=_positive_int, default=d.test_size,
                   help="official test images scoring the confirmation runs (default: all of them)")
    g.add_argument("--seed", type=_nonneg_int, default=d.seed,
                   help=f"seeds the sampler and the search's training; confirmation uses seed+1.. "
                        f"(default: {d.seed})")
    g = p.add_argument_group("how much search")
    g.add_argument("--trials", type=_positive_int, default=d.trials,
                   help=f"evaluated trials the study should hold, the 4 baselines included; duplicates "
                        f"of an evaluated candidate are free and do not count; a rerun runs only the "
                        f"missing ones (default: {d.trials})")
    g.add_argument("--timeout", type=_positive_float, default=d.timeout, metavar="SECONDS",
                   help="stop starting new search trials after this many seconds (default: no limit)")
    g.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                   help=f"tpe (multivariate, grouped), gp or random (default: {d.sampler})")
    g.add_argument("--pruner", choices=PRUNERS, default=d.pruner,
                   help=f"stop poor trials early, judged per epoch: median (against earlier trials, "
                        f"baselines included) or hyperband; worth it from about 10 epochs (default: {d.pruner})")
    g = p.add_argument_group("confirmation (one seed lies)")
    g.add_argument("--confirm-top", type=_positive_int, default=d.confirm_top, metavar="K",
                   help=f"distinct best candidates retrained besides the 4 baselines (default: {d.confirm_top})")
    g.add_argument("--confirm-seeds", type=_positive_int, default=d.confirm_seeds, metavar="S",
                   help=f"fresh seeds per confirmed candidate, scored on the test split; at least 2 "
                        f"(default: {d.confirm_seeds})")
    g = p.add_argument_group("where results go")
    g.add_argument("--study", default=d.study,
                   help="study name (default: <space>-<dataset>-<model>)")
    g.add_argument("--runs-dir", default=d.runs_dir, help=f"results folder (default: {d.runs_dir}/)")
    g.add_argument("--storage", default=d.storage, metavar="URL",
                   help="Optuna storage URL (default: sqlite:///<runs-dir>/<study>/study.db)")
    g.add_argument("--heartbeat-interval", type=_positive_int, default=d.heartbeat_interval, metavar="SECONDS",
                   help=f"seconds between a running trial's heartbeats (default: {d.heartbeat_interval})")
    g.add_argument("--grace-period", type=_positive_int, default=d.grace_period, metavar="SECONDS",
                   help=f"seconds without heartbeat after which a killed trial is retried "
                        f"(default: {d.grace_period})")
    g = p.add_argument_group("hardware and data")
    g.add_argument("--device", default=d.device,
                   help=f"auto | cpu | cuda | cuda:N | mps (default: {d.device}: cuda if available)")
    g.add_argument("--data-root", default=d.data_root, metavar="DIR",
                   help="folder holding the dataset (default: $EAFO_DATA_ROOT, then "
                        "/usr/share/datasets/fashion-mnist, then ~/.cache/eafo-search)")
    g.add_argument("--download", action="store_true", default=d.download,
                   help="let torchvision download a missing dataset")
    g = p.add_argument_group("backend")
    g.add_argument("--backend", choices=BACKEND_NAMES, default=d.backend,
                   help=f"optuna: embedded, SQLite; ray: Ray Tune on a cluster (default: {d.backend})")
    g.add_argument("--ray-address", default=d.ray_address, metavar="ADDRESS",
                   help="ray: cluster to join, e.g. auto or 127.0.0.1:6379 (default: start a local one)")
    g.add_argument("--cpus-per-trial", type=_positive_float, default=d.cpus_per_trial,
                   help=f"ray: CPUs reserved per trial (default: {d.cpus_per_trial:g})")
    g.add_argument("--gpus-per-trial", type=_nonneg_float, default=d.gpus_per_trial,
                   help=f"ray: GPUs reserved per trial, fractions share one (default: {d.gpus_per_trial:g})")
    g.add_argument("--max-concurrent", type=_positive_int, default=d.max_concurrent, metavar="N",
                   help="ray: trials at once (default: as many as resources allow)")
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    names = {f.name for f in fields(SearchConfig)}
    return SearchConfig.from_dict({k: v for k, v in vars(args).items() if k in names})


# ---------------------------------------------------------------------------
# Checking everything before anything is written
# ---------------------------------------------------------------------------

def prepare(config: SearchConfig):
    """Validate the whole run and build its parts; raise UsageError (or a ValueError).

    Reads only: creates no folder and opens no storage for writing.
    Returns (space, task, backend function).
    """
    import spaces
    from evaluators import ProxyTask

    config.validate()
    space = spaces.get_space(config.space)
    task = ProxyTask(dataset=config.dataset, model=config.model, epochs=config.epochs,
                     train_size=config.train_size, val_size=config.val_size, test_size=config.test_size,
                     device=config.device,
                     data_root=config.data_root, download=config.download)
    task.load_split("val")  # the data exists, the sizes fit it, the device is there
    if config.test_size is not None:
        from evaluators import load_dataset

        n_test = load_dataset(config.dataset, config.data_root, config.download).test_labels.size
        if config.test_size > n_test:
            raise UsageError(f"--test-size {config.test_size} is larger than {config.dataset}'s "
                             f"test set ({n_test} images)")
    backend = get_backend(config.backend)
    _check_study_dir(config)
    from search.storage import check_storage

    check_storage(config.storage_url, will_create=config.study_dir if config.storage is None else None)
    return space, task, backend


def _check_study_dir(config: SearchConfig) -> None:
    runs, study_dir = Path(config.runs_dir), config.study_dir
    if runs.exists() and not runs.is_dir():
        raise UsageError(f"--runs-dir {runs} exists and is not a folder")
    if study_dir.exists() and not study_dir.is_dir():
        raise UsageError(f"{study_dir} exists and is not a folder")
    existing = next((p for p in [study_dir, *study_dir.absolute().parents] if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create {study_dir}: {existing} is not writable")
    holder = _lock_holder(study_dir / LOCK_FILE)
    if holder is not None:
        raise UsageError(f"study {config.study_name!r} is being run by another process ({holder}); "
                         "wait for it, or stop it and run this command again to resume")
    saved_path = study_dir / "config.json"
    if saved_path.exists():
        saved = SearchConfig.load(saved_path)
        diff = config.study_mismatch(saved)
        if diff:
            raise UsageError(f"study {config.study_name!r} was run with {', '.join(diff)}; rerun with "
                             f"those settings, or choose a new --study")


# ---------------------------------------------------------------------------
# One run per study folder at a time
# ---------------------------------------------------------------------------

LOCK_FILE = ".lock"


def _lock_holder(path: Path) -> str | None:
    """'pid N' if another process holds the study's lock, else None (reads only)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    if not path.exists():
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return f"pid {f.read().strip() or '?'}"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _acquire_lock(study_dir: Path):
    """Hold the study's lock for this process's life (the OS drops it even on SIGKILL).

    Two runs of one study at once would train the same seeded suggestions twice.
    """
    try:
        import fcntl
    except ImportError:
        return None
    f = open(study_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UsageError(f"study folder {study_dir} is being run by another process") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


# Modules whose calls a KeyboardInterrupt must not land in: one raised inside a SQLite
# write can leave that connection holding the database's write lock, and every later
# write (the interrupted trial's status, its retry) then fails after SQLite's timeout;
# Optuna records such a failure as an ordinary trial error and the search goes on.
_STORAGE_MODULES = ("sqlalchemy", "sqlite3", "optuna.storages")
_INTERRUPT_RETRY_S = 0.05


def _in_storage_call(frame) -> bool:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_STORAGE_MODULES):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum, frame):
    """Ctrl-C and `kill PID`: KeyboardInterrupt (save, then stop), but never in the middle
    of a storage call; there the same signal is sent again 50 ms later."""
    if _in_storage_call(frame):
        threading.Timer(_INTERRUPT_RETRY_S, os.kill, (os.getpid(), signum)).start()
        return
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def _one_line(e: BaseException) -> str:
    text = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
    return text or type(e).__name__


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, one line already printed)
        return int(e.code or 0)
    try:
        config = config_from_args(args)
        space, task, backend = prepare(config)
    except ValueError as e:  # UsageError, evaluators' errors (DataNotFoundError...), spaces' errors
        _error(_one_line(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before the search started; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    resume = f"{PROG} {shlex.join(argv)}".rstrip()
    signals = (signal.SIGINT, signal.SIGTERM)
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = [signal.getsignal(s) for s in signals]
    if main_thread:
        for s in signals:
            signal.signal(s, _interrupt)
    try:
        return _run(config, space, task, backend, resume)
    except UsageError as e:  # found only once the study folder exists (a race for its lock)
        _error(_one_line(e))
        return EXIT_USAGE
    finally:
        if main_thread:
            for s, handler in zip(signals, previous):
                signal.signal(s, handler)


def _run(config: SearchConfig, space, task, backend, resume: str) -> int:
    study_dir = config.study_dir
    created = not study_dir.exists()
    study_dir.mkdir(parents=True, exist_ok=True)
    lock = _acquire_lock(study_dir)
    try:
        return _run_locked(config, space, task, backend, resume)
    finally:
        if lock is not None:
            lock.close()
        left = list(study_dir.iterdir()) if study_dir.is_dir() else []
        if created and [p.name for p in left] == [LOCK_FILE]:  # nothing was run: leave no trace
            left[0].unlink()
            study_dir.rmdir()


def _run_locked(config: SearchConfig, space, task, backend, resume: str) -> int:
    import spaces
    from search import confirm as confirm_mod
    from search.atomic import write_json
    from search.results import write_results

    study_dir = config.study_dir
    config_path = study_dir / "config.json"
    had_config = config_path.exists()
    write_json(config_path, config.to_dict())  # before the search: a killed run keeps it
    t0 = time.perf_counter()
    print(f"study {config.study_name!r} in {study_dir}/ ({config.backend}, {config.sampler}, "
          f"{config.trials} trials of {config.epochs} epochs on {config.train_size} {config.dataset} "
          f"images, {config.model})", file=sys.stderr)
    records = []
    try:
        try:
            records = backend(config, space, task, study_dir)
        except UsageError as e:  # found only once the storage was open (a study of other settings)
            _error(_one_line(e))
            if not had_config:
                config_path.unlink()
            return EXIT_USAGE
        entries = confirm_mod.select(records, config.confirm_top)
        n_runs = len(entries) * config.confirm_seeds
        n_base = len(spaces.BASELINES)
        print(f"confirming {len(entries)} candidates (top {len(entries) - n_base} + {n_base} baselines) on "
              f"{config.confirm_seeds} seeds {config.confirmation_seeds}: up to {n_runs} runs on the "
              "test split", file=sys.stderr)
        confirmations = confirm_mod.confirm(task, entries, config.confirmation_seeds, study_dir)
    except SearchInterrupted as e:
        return _partial(config, e.records, task, resume, "the search was interrupted", t0)
    except TooManyErrors as e:
        _partial(config, e.records, task, resume, "the search stopped on errors", t0)
        _error(_one_line(e))
        return 1
    except KeyboardInterrupt:
        return _partial(config, records, task, resume, "confirmation was interrupted", t0)

    complete = not any(c.status == "error" for c in confirmations)
    summary = write_results(study_dir, records, confirmations, config, task=task, complete=complete)
    print()
    print(summary.text)
    print(f"\nresults in {study_dir}/ ({', '.join(summary.files)}); took {time.perf_counter() - t0:.0f} s")
    if not complete:
        print(f"some confirmation runs failed with errors; rerun to retry them:\n  {resume}", file=sys.stderr)
        return 1
    return 0


def _partial(config: SearchConfig, records, task, resume: str, what: str, t0: float) -> int:
    """Save what finished, print it, and say how to resume."""
    from search import confirm as confirm_mod
    from search.results import write_results

    study_dir = config.study_dir
    seeds = set(config.confirmation_seeds)
    confirmations = [c for c in confirm_mod.load(study_dir / confirm_mod.CONFIRM_FILE) if c.seed in seeds]
    summary = write_results(study_dir, records, confirmations, config, task=task, complete=False)
    n_ok = sum(r.is_ok for r in records)
    print()
    print(summary.text)
    print(f"\n{what} after {time.perf_counter() - t0:.0f} s: {len(records)} trial(s) recorded, {n_ok} scored, "
          f"{len(confirmations)} confirmation run(s) saved in {study_dir}/.", file=sys.stderr)
    print(f"resume with:\n  {resume}", file=sys.stderr)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
