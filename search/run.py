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
import importlib
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from search import lock
from search.config import BACKEND_NAMES, IMAGE_DEFAULTS, MLPS, PRUNERS, SAMPLERS, SIGMA_MEASURED, SearchConfig
from search.exceptions import BackendUnavailable, SearchInterrupted, TooManyErrors, UsageError

PROG = "python -m search.run"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT
# The bare command's wall time, as measured and recorded in the README (one set of timings:
# the README's table and this line say the same).
DEFAULT_RUN_TIME = "6 min"
DEFAULT_LM_RUN_TIME = "10 min"  # the same for --dataset shakespeare


# ---------------------------------------------------------------------------
# Backends: name -> import function (Ray Tune's pattern), so that --help and the
# default path never import an optional library.
# ---------------------------------------------------------------------------

def _import_optuna_backend():
    return importlib.import_module("search.optuna_backend")


def _import_ray_backend():
    try:
        ray_backend = importlib.import_module("search.ray_backend")
    except ModuleNotFoundError as e:
        if e.name == "ray" or (e.name or "").startswith("ray."):
            raise BackendUnavailable("the ray backend needs Ray Tune: pip install 'ray[tune]'") from None
        if (e.name or "").startswith("search.ray_backend"):
            raise BackendUnavailable("the ray backend is not available in this installation "
                                     "(search/ray_backend/ is missing); use --backend optuna") from None
        raise
    except ImportError as e:
        raise BackendUnavailable(f"the ray backend cannot be imported ({e}); "
                                 "use --backend optuna") from None
    return ray_backend


BACKENDS = {"optuna": _import_optuna_backend, "ray": _import_ray_backend}


@dataclass(frozen=True)
class Backend:
    """What a backend module gives the CLI (see search.records for the contract)."""

    search: Callable      # (config, space, task, study_dir) -> list[TrialRecord]
    session: Callable     # (config) -> context manager around search and confirmation (Ray: connected)
    confirm_runner: Callable  # (config, task, study_dir) -> a runner for search.confirm.confirm


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; valid backends: {', '.join(BACKENDS)}")
    module = BACKENDS[name]()
    return Backend(getattr(module, f"run_{name}"), module.session, module.confirm_runner)


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit code 2), never the usage block;
    --help ends with the spaces and baselines that exist (imported only for --help)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")

    def format_help(self) -> str:
        import spaces

        from search.baselines import valid_names

        lines = ["", "spaces (--space):"]
        for name in spaces.list_spaces():
            lines.append(f"  {name:<14} {spaces.get_space(name).description}")
        lines += ["", "activations --baselines accepts (spaces.list_activations()):",
                  "  " + ", ".join(valid_names())]
        return super().format_help() + "\n".join(lines) + "\n"


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


def _sigma(text: str):
    """--sigma: "measured", or a positive finite number."""
    if text == SIGMA_MEASURED:
        return text
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither {SIGMA_MEASURED!r} nor a positive number") from None


def _baseline_list(text: str) -> list[str]:
    from search.baselines import parse_names

    names = parse_names(text)
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no activation")
    return names


EPILOG = """\
defaults: vit-nano on 5,000 Fashion-MNIST images, 12 trials of 3 epochs (the 4
baselines included), then the top 2 candidates and the 4 baselines retrained on
3 fresh seeds and scored on the 10,000 test images: about {minutes} on 2
idle CPU cores (measured: README, "What a search prints and writes").

a winner is claimed only when a one-sided paired t-test against GELU, Holm-
corrected over every confirmed candidate, says so at 5 % familywise error; with
3 seeds that finds real improvements rarely: use --confirm-seeds 10 for a claim
(racing, on by default, stops candidates that trail GELU after 3 seeds).

language models: --dataset shakespeare takes gpt-nano, 3 epochs of 2,048
sequences of 64 characters, and scores validation bits per character (lower
is better; tables, "vs GELU" and the decision follow the direction): about
{lm_minutes} on 2 idle CPU cores. --mlp glu makes the candidate the gate of a gated
MLP (gelu is then shown as GEGLU, silu as SwiGLU). --transfer-to
shakespeare:gpt-nano (or fashion_mnist:vit-nano) retrains the confirmed
candidates on a second task and prints the Kendall tau between the rankings.

on a GPU (--device cuda, or auto), scale the task up, e.g.:
  --train-size 50000 --val-size 10000 --epochs 15 --trials 100 \\
  --pruner hyperband --confirm-top 5 --confirm-seeds 10
or --model vit-tiny --dataset cifar10 for the paper's ViT-T on CIFAR-10.

results go to <runs-dir>/<study>/: leaderboard.csv/.json, best.json,
activations.png, history.png, zero_cost.png, summary.txt, trials.json, config.json,
sigma.json, confirm.jsonl, (--transfer-to) transfer.json/.txt and (default storage) study.db. Watch a running search with
  optuna-dashboard sqlite:///runs/<study>/study.db

resume: run the same command again. Finished trials and confirmation runs are
kept; a trial whose process was killed is retried once it has had no heartbeat
for --grace-period seconds; Ctrl-C saves what finished and says how to resume.
To search longer, rerun with a larger --trials.

exit codes: 0 done, 1 the search stopped on repeated errors, 2 bad input
(nothing was written), 130 interrupted (partial results saved).
""".format(minutes=DEFAULT_RUN_TIME, lm_minutes=DEFAULT_LM_RUN_TIME)


def build_parser() -> argparse.ArgumentParser:
    d = SearchConfig()
    p = _Parser(prog=PROG, description="Search for neural-network activation functions (EAFO/CRReLU "
                "families, Sun et al. ICLR 2025), confirm the best over fresh seeds, and report.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to search, on which task")
    g.add_argument("--space", default=d.space,
                   help=f"search space; the list is at the end of --help (default: {d.space})")
    # model, epochs and sizes default to None: the config fills them per track (images or text)
    g.add_argument("--dataset", default=d.dataset,
                   help=f"fashion_mnist | cifar10 | cifar100, or shakespeare for the language-model track "
                        f"(default: {d.dataset})")
    g.add_argument("--model", default=None,
                   help=f"proxy model: vit-nano | vit-tiny | deit-tiny | resnet-tiny; text: gpt-nano | gpt-small "
                        f"(default: {IMAGE_DEFAULTS['model']}; text: gpt-nano)")
    g.add_argument("--mlp", choices=MLPS, default=d.mlp,
                   help="plain, or glu: the candidate gates a gated MLP, act(xW) * (xV), at matched parameters; "
                        f"silu is then shown as SwiGLU and gelu as GEGLU (default: {d.mlp})")
    g.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"training epochs per trial and per confirmation run (default: {IMAGE_DEFAULTS['epochs']}; "
                        "text: 3)")
    g.add_argument("--train-size", type=_positive_int, default=None,
                   help=f"training images per trial, stratified; text: sequences per epoch "
                        f"(default: {IMAGE_DEFAULTS['train_size']}; text: 2048)")
    g.add_argument("--val-size", type=_positive_int, default=None,
                   help=f"validation images carved from the training set (text: characters of the validation "
                        f"part); the search metric (default: {IMAGE_DEFAULTS['val_size']}; text: "
                        "32768)")
    g.add_argument("--test-size", type=_positive_int, default=None,
                   help="test images (text: characters) scoring the confirmation runs (default: all of them; "
                        "text: 65536)")
    g.add_argument("--seed", type=_nonneg_int, default=d.seed,
                   help=f"seeds the sampler and the search's training; confirmation uses seed+1.. "
                        f"(default: {d.seed})")
    g.add_argument("--sigma", type=_sigma, default=d.sigma, metavar="measured|S",
                   help="std of the activation's input that the space's EAFO corrections and the zero-cost "
                        "scores assume (x ~ N(0, S^2)). measured: the std of every MLP activation's input in "
                        "the proxy model at init, on 512 training samples (vit-nano 0.158, vit-tiny 0.277, "
                        "resnet-tiny 0.97); 1 is the paper's. Saved in <study>/sigma.json; a study keeps the "
                        f"sigma it started with (default: {d.sigma})")
    g = p.add_argument_group("how much search")
    g.add_argument("--trials", type=_positive_int, default=d.trials,
                   help=f"evaluated trials the study should hold, the baselines included; duplicates "
                        f"of an evaluated candidate are free and do not count; a rerun runs only the "
                        f"missing ones (default: {d.trials})")
    g.add_argument("--baselines", type=_baseline_list, default=d.baselines, metavar="A,B,...",
                   help=f"activations trained first and confirmed beside the best candidates; gelu, the "
                        f"reference, must be one; valid names at the end of --help "
                        f"(default: {','.join(d.baselines)})")
    g.add_argument("--timeout", type=_positive_float, default=d.timeout, metavar="SECONDS",
                   help="stop starting new search trials after this many seconds (default: no limit)")
    g.add_argument("--sampler", choices=SAMPLERS, default=d.sampler,
                   help=f"tpe (multivariate, grouped), gp or random (default: {d.sampler})")
    g.add_argument("--prefilter", type=_positive_int, default=d.prefilter, metavar="M",
                   help="draw M proposals from the sampler per trial and train only the one a zero-cost "
                        "surrogate predicts best (a Gaussian process on each function's response to "
                        "N(0, sigma^2) and its EAFO scores, fitted to the trials trained so far; "
                        "evaluators.prefilter, after AQuaSurF). Baselines are always trained; 1 trains every "
                        "proposal (bench/prefilter_vs_tpe.py measures what it buys; README) "
                        f"(default: {d.prefilter})")
    g.add_argument("--pruner", choices=PRUNERS, default=d.pruner,
                   help=f"stop poor trials early, judged per epoch: median (against earlier trials, "
                        f"baselines included) or hyperband; worth it from about 10 epochs (default: {d.pruner})")
    g = p.add_argument_group("confirmation (one seed lies)")
    g.add_argument("--confirm-top", type=_positive_int, default=d.confirm_top, metavar="K",
                   help=f"distinct best candidates retrained besides the baselines; candidates of the same "
                        f"formula whose coefficients differ by <= 0.05 count as one (default: {d.confirm_top})")
    g.add_argument("--confirm-seeds", type=_positive_int, default=d.confirm_seeds, metavar="S",
                   help=f"most fresh seeds per confirmed candidate, scored on the test split; at least 2 "
                        f"(default: {d.confirm_seeds})")
    g.add_argument("--racing", action=argparse.BooleanOptionalAction, default=d.racing,
                   help="add seeds in rounds (3, 5, 8, 10, ...) only to candidates still ahead of GELU; "
                        "--no-racing gives every candidate every seed (default: racing)")
    g.add_argument("--transfer-to", default=d.transfer_to, metavar="DATASET:MODEL",
                   help="after confirmation, train the confirmed candidates and baselines on this second task "
                        "over the same seeds and compare the two rankings (Kendall tau), e.g. "
                        "shakespeare:gpt-nano or fashion_mnist:vit-nano (default: none)")
    g.add_argument("--transfer-set", type=_setting, action="append", default=None, metavar="KEY=VALUE",
                   help="a setting of the transfer task over its track's defaults, e.g. epochs=2 "
                        "(repeatable; keys: evaluators.ProxyTask's fields)")
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
                   help=f"auto | cpu | cuda | cuda:N | mps (default: {d.device}: cuda if available; with "
                        f"--backend ray: cuda when --gpus-per-trial > 0, else cpu)")
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


def _setting(text: str) -> tuple[str, object]:
    """KEY=VALUE -> (key, value); the value is read as JSON when it parses (2, 0.5, null), else text."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    names = {f.name for f in fields(SearchConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["transfer_set"] = dict(values.get("transfer_set") or [])
    return SearchConfig.from_dict(values)


# ---------------------------------------------------------------------------
# Checking everything before anything is written
# ---------------------------------------------------------------------------

def prepare(config: SearchConfig):
    """Validate the whole run and build its parts; raise UsageError (or a ValueError).

    Reads only: creates no folder and opens no storage for writing.
    Returns (space, task, backend); the task's device and precision are resolved
    (never "auto"), so every record and best.json name what was used.
    """
    import spaces
    from evaluators import ProxyTask

    from search.baselines import check as check_baselines

    config.validate()
    spaces.get_space(config.space)  # the name, before any data is read
    check_baselines(config.baselines)
    # for_dataset: the recipe sized for the dataset's track (text: TEXT_DEFAULTS' batch and lr)
    task = ProxyTask.for_dataset(config.dataset, model=config.model, mlp=config.mlp, epochs=config.epochs,
                                 train_size=config.train_size, val_size=config.val_size,
                                 test_size=config.test_size, device=config.device, data_root=config.data_root,
                                 download=config.download)
    task = resolve_hardware(config, task)
    _check_ray_only(config)
    backend = get_backend(config.backend)  # before the probe below, which needs Ray
    transfer_task = None
    if config.transfer_to:
        from search import transfer

        transfer_task = transfer.transfer_task(config, task)
    # The data is there and every size fits it. Nothing stays loaded here: under Optuna the
    # first trial loads its split on the device; under Ray the driver trains nothing.
    if config.backend == "ray" and config.ray_address not in (None, "local"):
        # A cluster's workers read the data, and the driver may hold none: check it there,
        # and measure sigma there while at it.
        from search.ray_backend.probe import probe_on_cluster

        measure = config.sigma == SIGMA_MEASURED and _saved_sigma(config) is None
        measured = probe_on_cluster(config, task, transfer_task, measure_sigma=measure)
        if measured is not None:
            _SIGMA[config.study_dir] = measured
    else:
        task.check_data()
        if transfer_task is not None:
            transfer_task.check_data()
    _check_study_dir(config)
    from search.storage import check_storage

    check_storage(config.storage_url, will_create=config.study_dir if config.storage is None else None)
    # Last: measuring sigma costs seconds, and a refused run should not wait for it.
    space = spaces.get_space(config.space, sigma=resolve_sigma(config, task)["sigma"])
    return space, task, backend


def resolve_hardware(config: SearchConfig, task):
    """The task with its device and precision resolved, checked against --gpus-per-trial.

    Optuna trains in this process: "auto" is what this machine has (cuda, mps,
    cpu), and a named device must be here. Ray trains on workers, which see
    only the GPUs a trial reserves: "auto" is cuda exactly when
    --gpus-per-trial > 0, and the driver (which may have no GPU) checks only
    that the two flags agree; the cluster's GPU count is checked on connecting.
    """
    import torch

    gpus = config.gpus_per_trial
    if config.backend == "ray":
        device = torch.device(("cuda" if gpus > 0 else "cpu") if config.device == "auto" else config.device)
        if device.type == "cuda" and device.index is not None:
            raise UsageError(f"--device {config.device}: with --backend ray each trial gets the GPUs Ray "
                             "assigns it; use --device cuda")
        if device.type == "cuda" and gpus == 0:
            raise UsageError(f"--device {config.device} with --backend ray needs --gpus-per-trial > 0 "
                             "(Ray hides every GPU from a trial that reserves none)")
    else:
        device = task.resolve_device()  # ValueError if CUDA/MPS is not here
    if gpus > 0 and device.type != "cuda":
        raise UsageError(f"--gpus-per-trial {gpus:g} reserves GPUs that --device {config.device} "
                         f"({device}) does not use")
    return task.replace(device=str(device), precision=task.resolve_precision(device))


# Sigma measured on a cluster's worker by prepare(), by study folder: the driver may have no data.
_SIGMA: dict = {}


def resolve_sigma(config: SearchConfig, task) -> dict:
    """The input std the study's space and scores use: {"setting", "sigma", "preactivation"}.

    A number is used as given. "measured" is what the study measured when it started
    (its sigma.json), else what prepare() measured on a cluster's worker, else
    `measured_sigma(task)` here.
    """
    if config.sigma != SIGMA_MEASURED:
        return {"setting": config.sigma, "sigma": float(config.sigma), "preactivation": None}
    return _saved_sigma(config) or _SIGMA.get(config.study_dir) or measured_sigma(task)


def _saved_sigma(config: SearchConfig) -> dict | None:
    """The measured sigma in the study's sigma.json, if the study has one (None for a number)."""
    from search.results import read_sigma

    if config.sigma != SIGMA_MEASURED:
        return None
    saved = read_sigma(config.study_dir)
    return saved if saved is not None and saved.get("setting") == SIGMA_MEASURED else None


def measured_sigma(task) -> dict:
    """evaluators.preactivation_std of the task's model, dataset and MLP kind at init, on the
    CPU (the same number on any machine; no data stays loaded), as resolve_sigma returns it."""
    from evaluators import preactivation_std

    stats = preactivation_std(task.model, task.dataset, mlp=getattr(task, "mlp", "plain"),
                              data_root=task.data_root, device="cpu")
    return {"setting": SIGMA_MEASURED, "sigma": stats.sigma, "preactivation": stats.to_dict()}


def _check_ray_only(config: SearchConfig) -> None:
    """The Ray backend's options are an error elsewhere: `--ray-address HOST` without
    `--backend ray` would otherwise search on this machine without a word."""
    if config.backend == "ray":
        return
    default = SearchConfig()
    given = [f"--{k.replace('_', '-')}" for k in ("ray_address", "cpus_per_trial", "gpus_per_trial", "max_concurrent")
             if getattr(config, k) != getattr(default, k)]
    if given:
        raise UsageError(f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of "
                         f"--backend ray; add --backend ray (--backend {config.backend} trains in this process)")


def _check_study_dir(config: SearchConfig) -> None:
    runs, study_dir = Path(config.runs_dir), config.study_dir
    if runs.exists() and not runs.is_dir():
        raise UsageError(f"--runs-dir {runs} exists and is not a folder")
    if study_dir.exists() and not study_dir.is_dir():
        raise UsageError(f"{study_dir} exists and is not a folder")
    existing = next((p for p in [study_dir, *study_dir.absolute().parents] if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot create {study_dir}: {existing} is not writable")
    holder = lock.holder(study_dir)
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
    held = lock.acquire(study_dir)
    try:
        return _run_locked(config, space, task, backend, resume)
    finally:
        held.release()
        left = sorted(p.name for p in study_dir.iterdir()) if study_dir.is_dir() else []
        if created and set(left) <= {lock.LOCK_FILE, lock.PID_FILE}:  # nothing was run: leave no trace
            for name in left:
                (study_dir / name).unlink()
            study_dir.rmdir()


def _run_locked(config: SearchConfig, space, task, backend: Backend, resume: str) -> int:
    from search import confirm as confirm_mod
    from search import policy
    from search.atomic import write_json
    from search.baselines import resolve
    from search.results import SIGMA_FILE, write_results

    study_dir = config.study_dir
    config_path = study_dir / "config.json"
    had_config = config_path.exists()
    write_json(config_path, config.to_dict())  # before the search: a killed run keeps it
    sigma = resolve_sigma(config, task)
    write_json(study_dir / SIGMA_FILE, sigma)
    t0 = time.perf_counter()
    how = "measured on the model at init" if sigma["setting"] == SIGMA_MEASURED else "given"
    print(f"sigma {sigma['sigma']:.4g} ({how}): the EAFO corrections and zero-cost scores assume inputs "
          f"N(0, sigma^2)", file=sys.stderr)
    print(f"study {config.study_name!r} in {study_dir}/ ({config.backend}, {config.sampler}, "
          f"{config.trials} trials of {config.epochs} epochs on {config.train_size} {config.dataset} "
          f"{'sequences' if task.kind == 'text' else 'images'}, {config.model}"
          f"{', gated MLP' if config.mlp == 'glu' else ''}, {task.device} {task.precision}; "
          f"score: validation {task.metric.title}, {'lower' if task.metric.sign < 0 else 'higher'} is better)", file=sys.stderr)
    warning = policy.baselines_warning(config.trials, len(config.baselines))
    if warning:
        print(warning, file=sys.stderr)
    records, confirmation, moved = [], None, None  # moved: (transfer task, its Confirmation)
    try:
        with backend.session(config):
            records = backend.search(config, space, task, study_dir)
            note = policy.search_note(records, config.trials)
            if note:
                print(note, file=sys.stderr)
            entries, skipped = confirm_mod.select(records, config.confirm_top, resolve(config.baselines),
                                                  task.metric)
            for label, like in skipped:
                print(f"not confirmed: {label} (the formula of {like}, coefficients within "
                      f"{confirm_mod.NEAR_TOLERANCE:g})", file=sys.stderr)
            n_base = len(config.baselines)
            print(f"confirming {len(entries)} candidates (top {len(entries) - n_base} + {n_base} baselines) on "
                  f"up to {config.confirm_seeds} seeds {config.confirmation_seeds}"
                  f"{', racing' if config.racing else ''}: at most {len(entries) * config.confirm_seeds} runs "
                  "on the test split", file=sys.stderr)
            runner = backend.confirm_runner(config, task, study_dir)
            confirmation = confirm_mod.confirm(entries, config.confirmation_seeds, study_dir, runner, task.metric,
                                               adaptive=config.racing)
            if config.transfer_to and confirmation.complete:
                from search import transfer

                print(f"transfer check: {len(entries)} candidates on {config.transfer_to}, seeds "
                      f"{config.confirmation_seeds}: {len(entries) * config.confirm_seeds} runs", file=sys.stderr)
                moved = transfer.run(config, task, entries,
                                     lambda t, where: backend.confirm_runner(config, t, where))
    except UsageError as e:  # found only once connected: a storage of other settings, a cluster out of reach
        _error(_one_line(e))
        if not had_config:
            config_path.unlink()
            (study_dir / SIGMA_FILE).unlink(missing_ok=True)
        return EXIT_USAGE
    except SearchInterrupted as e:
        return _partial(config, e.records, task, resume, "the search was interrupted", t0)
    except TooManyErrors as e:
        _partial(config, e.records, task, resume, "the search stopped on errors", t0)
        _error(_one_line(e))
        return 1
    except KeyboardInterrupt:
        return _partial(config, records, task, resume, "confirmation (or the transfer check) was interrupted", t0)

    summary = write_results(study_dir, records, confirmation.records, config, task=task,
                            complete=confirmation.complete, stopped=confirmation.stopped)
    print()
    print(summary.text)
    if config.racing and confirmation.runs < confirmation.fixed_runs:
        print(f"\nracing: {confirmation.runs} confirmation runs instead of {confirmation.fixed_runs} "
              f"(every candidate on every seed)")
    files = list(summary.files)
    if moved is not None:
        from search import transfer

        second, runs = moved
        report = transfer.report(entries, confirmation.records, task, runs.records, second, config.mlp)
        print()
        print(transfer.write_report(study_dir, report))
        files += [transfer.REPORT_JSON, transfer.REPORT_TEXT]
    print(f"\nresults in {study_dir}/ ({', '.join(files)}); took {time.perf_counter() - t0:.0f} s")
    if not confirmation.complete or (moved is not None and not moved[1].complete):
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
