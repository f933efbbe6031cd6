"""The distributed backend: Ray Tune on a Ray cluster (or a local instance).

    python -m search.run --backend ray --ray-address 127.0.0.1:6379 --max-concurrent 4

Same space, same evaluator, same records as the Optuna backend; what differs
is who runs the trials (Ray actors, `--cpus-per-trial`/`--gpus-per-trial`
each, fractions share a GPU) and who decides (a driver-side Tune searcher).

How each part is done, and why:

- Sampling: Ray Tune's `OptunaSearch` drives the space's `suggest` define-by-run,
  with the same seeded sampler as the Optuna backend (`make_sampler`).
- Baselines first: `points_to_evaluate` can only fix values of the space's own
  params, and a baseline is not a point of every space. So the searcher is
  wrapped (`BaselinesFirstSearcher` below): its first four suggestions are
  {"baseline": label} for gelu, relu, silu, crrelu, which the trainable builds
  from `spaces.BASELINES`; only then is `OptunaSearch` asked. Baselines are
  reference points: the scheduler records their accuracies (they set the bar)
  but never stops them.
- Pruning: ASHA (`--pruner hyperband`; asynchronous successive halving, the
  Hyperband variant that suits trials finishing at any time) or the median
  stopping rule, fed by the evaluator's per-epoch `report` through
  `ray.tune.report`; time attribute = epoch, metric val_acc, mode max.
- Deduplication: in the driver, inside the same searcher wrapper, not in the
  workers. It builds every suggested candidate and keeps fingerprint -> the
  trial that owns it and, once that finished, its outcome. A suggestion whose
  fingerprint has a finished owner becomes a trial that only reports the
  owner's outcome ("duplicate_of"; not trained again, as under Optuna). One
  whose owner is still running is held back (no slot is spent waiting) and
  released once the owner finishes; if the owner fails, the held one trains.
  The registry is part of the searcher's state, which Tune saves with the
  experiment, so it survives a restore; no actor or shared file is needed.
- Checkpoints: after every epoch the evaluator's state (model with its
  learnable coefficients, optimiser, lr schedule, RNG, epoch, history) goes
  into a Tune checkpoint reported with that epoch's metrics. A trial whose
  worker dies is retried (`FailureConfig(max_failures=MAX_FAILURES)`) and
  resumes from `ray.tune.get_checkpoint()`; its result records
  `resumed_from_epoch`.
- Restore: Ray's experiment lives in `<study_dir>/ray/`. Running the same
  command again restores it (`Tuner.restore`, errored trials resumed from their
  checkpoints): finished trials are kept, running ones resume from their last
  epoch. A rerun with a larger --trials, once the experiment is complete, adds
  a new segment (`ray-2/`, ...) whose searcher starts from the last one's state
  (sampler history, registry, trial numbers), so trials are never repeated.
- Timeout: after --timeout seconds no new trial starts; running ones finish
  (as under Optuna), then the run ends and a rerun continues.
- Loopback: a local instance (no --ray-address) is started with
  RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 and node address 127.0.0.1, so every
  Ray socket listens on 127.0.0.1 only (shared/DESIGN.md); joining a loopback
  address sets the same variable (else Ray swaps 127.0.0.1 for the machine's
  outward address). An address that does not answer within CONNECT_TIMEOUT
  seconds is a UsageError (exit code 2), before Ray is started.
- Results: `TrialRecord`s in trial-number order, like the Optuna backend, so
  `write_results`, confirmation (in the driver), plots and export are the
  same. `<study_dir>/ray_trials.json` adds what only Ray knows per trial
  (Tune id, pid, node, attempts, resumed epoch, start/end times), and workers
  append start/epoch/end events to `<study_dir>/ray_events.jsonl`.

On a multi-node cluster the study folder (--runs-dir) must be on storage every
node can reach (NFS): Tune's workers write checkpoints into it directly.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import socket
import sys
import time
from pathlib import Path

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

import spaces
from search.exceptions import SearchInterrupted, TooManyErrors, UsageError
from search.records import TrialRecord, finite_or_none, jsonable, result_fields, trial_label

METRIC, MODE, TIME_ATTR = "val_acc", "max", "epoch"
MAX_FAILURES = 3             # retries of a trial whose worker died (then it is an error)
MAX_CONSECUTIVE_ERRORS = 3   # errored trials in a row that stop the search (a bug, not a candidate)
CONNECT_TIMEOUT = 5.0        # seconds to wait for a cluster address to answer
EXPERIMENT = "ray"           # Ray's experiment folder under the study folder (then ray-2, ray-3...)
EVENTS_FILE = "ray_events.jsonl"
TRIALS_FILE = "ray_trials.json"
STATE_FILE = "state.pt"      # the evaluator's training state inside a Tune checkpoint
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
MAX_HELD = 8                 # duplicates of running trials held back at once
MAX_ASKS = 16                # suggestions asked of Optuna per call before giving up for now

# Driver-side Tune settings (a value already in the environment wins):
_TUNE_ENV = {
    # Result files: JSON and CSV only (TensorBoard cannot log a trial's history list).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Tune snapshots the experiment after every checkpoint here (num_to_keep=1),
    # which is what makes a restore lose nothing; it need not warn about it.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}

# The driver-side run state that must not travel with a restored experiment:
# the searcher reads it, `run_ray` sets it for each run.
_RUN = {"deadline": None}


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------

def run_ray(config, space, task, study_dir: Path, progress: bool = True) -> list[TrialRecord]:
    """Run the search on Ray Tune until the study holds `config.trials` finished trials."""
    study_dir = Path(study_dir).absolute()
    for key, value in _TUNE_ENV.items():
        os.environ.setdefault(key, value)
    _RUN["deadline"] = None if config.timeout is None else time.time() + config.timeout
    owned = connect(config.ray_address)
    import ray

    try:
        _check_resources(ray.cluster_resources(), config)
        return _search(config, space, task, study_dir, progress)
    finally:
        if owned:  # stops a local instance; leaves a cluster (it keeps running)
            ray.shutdown()


def _search(config, space, task, study_dir: Path, progress: bool) -> list[TrialRecord]:
    """Restore the last segment if it has work left, then add a segment if trials are missing."""
    study_dir.mkdir(parents=True, exist_ok=True)
    trainable = make_trainable(config, task, space, study_dir / EVENTS_FILE)
    segments = experiment_dirs(study_dir)
    if segments and tune.Tuner.can_restore(str(segments[-1])):
        records, analysis = collect(segments, space)
        if _unfinished(analysis) or len(_finished(records)) < config.trials:
            print(f"restoring Ray experiment {segments[-1]}: {len(_finished(records))} finished trials "
                  f"kept", file=sys.stderr)
            tuner = tune.Tuner.restore(str(segments[-1]), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, restart_errored=False)
            _fit(tuner)
    elif segments:  # killed before Tune saved any state: start that segment again
        segments = segments[:-1]

    records = collect(segments, space)[0] if segments else []
    _raise_if_stopped(records)
    remaining = config.trials - len(_finished(records))
    if remaining <= 0:
        if segments:
            print(f"study {config.study_name!r} already holds {len(_finished(records))} finished trials "
                  f"(--trials {config.trials}): no new trials", file=sys.stderr)
        return _finish(records, study_dir)
    if _RUN["deadline"] is not None and time.time() >= _RUN["deadline"]:
        return _finish(records, study_dir)

    name = EXPERIMENT if not segments else f"{EXPERIMENT}-{len(segments) + 1}"
    searcher = BaselinesFirstSearcher(space, config.sampler, config.seed, config.max_concurrent)
    if segments:
        searcher.restore_from_dir(str(segments[-1]))
        searcher.new_segment(config.max_concurrent)
    scheduler = make_scheduler(config.pruner, config.epochs)
    scheduler.prime(records)
    if segments:
        print(f"adding {remaining} trials to study {config.study_name!r} ({name}/)", file=sys.stderr)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                    reuse_actors=True,  # imports and data once per worker
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=name, storage_path=str(study_dir), verbose=0,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback()] + ([_Progress()] if progress else [])))
    _fit(tuner)
    records = collect(experiment_dirs(study_dir), space)[0]
    _raise_if_stopped(records)
    return _finish(records, study_dir)


def _fit(tuner) -> None:
    """Tuner.fit, with Tune's own banner on stderr: stdout is for the results table."""
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):
        tuner.fit()


def _finished(records: list[TrialRecord]) -> list[TrialRecord]:
    """Trials that count towards --trials (the Optuna backend's COMPLETE and PRUNED)."""
    return [r for r in records if r.status not in ("error", "interrupted", "running")]


def _unfinished(analysis) -> bool:
    return any(t.status != Trial.TERMINATED for t in analysis.trials) if analysis else False


def _raise_if_stopped(records: list[TrialRecord]) -> None:
    """Ctrl-C (Tune saved the state and returned) or too many errors in a row."""
    if any(r.status in ("interrupted", "running") for r in records):
        raise SearchInterrupted("interrupted", records)
    run = 0
    for r in records:
        run = run + 1 if r.status == "error" else 0
        if run >= MAX_CONSECUTIVE_ERRORS:
            raise TooManyErrors(f"{run} trials in a row failed with exceptions (last: {r.reason}); see "
                                "trials.json, fix, and run the same command again to continue", records)


def _finish(records: list[TrialRecord], study_dir: Path) -> list[TrialRecord]:
    """Write what only Ray knows (ray_trials.json) beside the records; return the records."""
    from search.atomic import write_json

    write_json(study_dir / TRIALS_FILE, ray_info(study_dir))
    return records


# ---------------------------------------------------------------------------
# Connecting: a local loopback instance, or a cluster by address
# ---------------------------------------------------------------------------

def connect(address: str | None):
    """Start a local Ray instance on loopback (address None) or join `address`.

    Returns True when this call initialised Ray (the caller calls ray.shutdown()
    at the end), False when Ray was already initialised in this process (it is
    used as it is). Raises UsageError, quickly, for an address that cannot be
    reached.
    """
    if address is not None and address.startswith("ray://"):
        raise UsageError(f"--ray-address {address}: Ray Client addresses are not supported; run the "
                         "search on a cluster node with --ray-address auto or HOST:PORT")
    host_port = None
    if address not in (None, "auto", "local"):
        host_port = _parse_address(address)
        _check_reachable(*host_port)
    loopback = address in (None, "local") or (host_port is not None and _is_loopback(host_port[0]))
    if address == "auto":
        loopback = _auto_is_loopback()
    _loopback_mode(loopback)
    import logging

    import ray

    if ray.is_initialized():
        return False
    if host_port is not None and loopback:
        _local_token_auth()
    kwargs = dict(include_dashboard=False, configure_logging=True, logging_level=logging.WARNING,
                  log_to_driver=False)
    if address in (None, "local"):
        # address="local": a new instance even if RAY_ADDRESS is set in the environment.
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
        return True
    try:
        ray.init(address=address, **{k: v for k, v in kwargs.items() if k != "include_dashboard"})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"cannot join the Ray cluster at {address}: {_first_line(e)}"
                         + _auth_hint(e)) from None
    except Exception as e:  # ray.exceptions.AuthenticationError and kin are not ConnectionErrors
        if type(e).__module__.startswith("ray"):
            raise UsageError(f"cannot join the Ray cluster at {address}: {_first_line(e)}"
                             + _auth_hint(e)) from None
        raise
    return True


def _parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--ray-address {address!r} is not HOST:PORT (e.g. 127.0.0.1:6379) or auto")
    return host, int(port)


def _check_reachable(host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        raise UsageError(f"cannot reach a Ray cluster at {host}:{port} ({why} within "
                         f"{CONNECT_TIMEOUT:g} s); start one with `ray start --head` or fix "
                         "--ray-address") from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auto_is_loopback() -> bool:
    """Whether --ray-address auto finds a cluster on a loopback address (read from Ray's own files)."""
    _loopback_mode(True)  # finding the address sends nothing; decide below
    from ray._private import services

    try:
        found = services.get_ray_address_from_environment("auto", None)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"--ray-address auto: {_first_line(e)}") from None
    if not found or found == "auto":
        raise UsageError("--ray-address auto found no running Ray cluster on this machine; "
                         "start one with `ray start --head` or give HOST:PORT")
    host, port = _parse_address(found)
    _check_reachable(host, port)
    return _is_loopback(host)


def _loopback_mode(on: bool) -> None:
    """Keep Ray on 127.0.0.1 (on) or let it use the machine's address (off).

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported, and
    the processes it starts read it from their environment; if Ray was imported
    before this call, its module constant is set to match.
    """
    if on:
        os.environ[LOOPBACK_ENV] = "0"
    elif os.environ.get(LOOPBACK_ENV) == "0":
        del os.environ[LOOPBACK_ENV]
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = not on


def _local_token_auth() -> None:
    """Use this machine's Ray token for a cluster on this machine, as Ray does for address "auto".

    `ray start --head` enables token authentication by default and keeps the
    token in ~/.ray/auth_token; Ray only picks it up by itself for "auto", not
    for an explicit address, so a loopback address gets the same treatment.
    An explicit RAY_AUTH_MODE is respected.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available)
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _auth_hint(e: BaseException) -> str:
    if "token" in str(e).lower() or "Authentication" in type(e).__name__:
        return (" (the cluster uses token authentication: set RAY_AUTH_MODE=token so that Ray reads "
                "its token from ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
    return ""


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _error_line(e: BaseException | None) -> str:
    """The last line of a trial's error (Tune's text is a traceback: the exception comes last)."""
    lines = [ln.strip() for ln in str(e or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "the trial failed"


def _check_resources(total: dict, config) -> None:
    """A trial that asks for more than the whole cluster has would wait for ever."""
    for key, want in (("CPU", config.cpus_per_trial), ("GPU", config.gpus_per_trial)):
        have = total.get(key, 0.0)
        if want > have:
            flag = f"--{key.lower()}s-per-trial"
            raise UsageError(f"{flag} {want:g} is more than the Ray cluster has ({have:g} {key}s)")


# ---------------------------------------------------------------------------
# The searcher: baselines first, then Optuna; duplicates resolved in the driver
# ---------------------------------------------------------------------------

class BaselinesFirstSearcher(Searcher):
    """A Tune `Searcher`: the 4 baselines, then `OptunaSearch` over `space.suggest`.

    Every suggestion is a config {"number": n, ...} with one of
      {"baseline": label}                               a baseline, built directly;
      {"params": p}                                     a new candidate, trained;
      {"params": p, "duplicate_of": m, "reuse": o}      a fingerprint trial m owns:
                                                        the trainable reports o.
    State (sampler, registry, numbers) is pickled by Tune with the experiment.
    """

    def __init__(self, space, sampler: str, seed: int, max_concurrent: int | None):
        from search.optuna_backend import make_sampler

        import optuna

        super().__init__(metric=METRIC, mode=MODE)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._space = space
        self._optuna = OptunaSearch(space=space.suggest, metric=METRIC, mode=MODE,
                                    sampler=make_sampler(sampler, seed))
        self._max_concurrent = max_concurrent
        self._baselines = list(spaces.BASELINES)  # still to suggest, in order
        self._number = 0                          # the next trial's number
        self._asks = 0                            # suggestions asked of Optuna so far (their ids)
        self._trials: dict[str, dict] = {}        # Tune trial id -> {number, inner, fp, done, epochs}
        self._owners: dict[str, dict] = {}        # fingerprint -> {number, outcome (None: running)}
        self._held: list[dict] = []               # duplicates of running trials: {inner, params, fp}
        self._live: set[str] = set()              # suggested, not yet complete
        self._errors = 0                          # errored trials in a row

    # -- what Tune calls --
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return False  # the space is the define-by-run function; metric and mode are fixed

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self._max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str):
        deadline = _RUN["deadline"]
        if self._errors >= MAX_CONSECUTIVE_ERRORS:
            return self.FINISHED
        if deadline is not None and time.time() >= deadline:
            # No new trial; the running ones finish, then this experiment ends
            # (FINISHED: Tune would otherwise wait for a suggestion). A rerun
            # continues the study in a new segment.
            return None if self._live else self.FINISHED
        if self._max_concurrent and len(self._live) >= self._max_concurrent:
            return None
        if self._baselines:
            label = self._baselines.pop(0)
            return self._emit(trial_id, {"baseline": label}, None, spaces.BASELINES[label].fingerprint)
        for h in list(self._held):
            owner = self._owners.get(h["fp"])
            if owner is None or owner["outcome"] is not None:
                self._held.remove(h)
                return self._emit(trial_id, {"params": h["params"]}, h["inner"], h["fp"])
        for _ in range(MAX_ASKS):
            if len(self._held) >= MAX_HELD:
                return None
            inner = f"ask_{self._asks}"
            self._asks += 1
            params = dict(self._optuna.suggest(inner))
            fp = self._fingerprint(params)
            owner = self._owners.get(fp) if fp else None
            if owner is None or owner["outcome"] is not None:
                return self._emit(trial_id, {"params": params}, inner, fp)
            self._held.append({"inner": inner, "params": params, "fp": fp})
        return None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        info = self._trials.get(trial_id)
        if info is None or info["inner"] is None or result.get("final") or "duplicate_of" in info:
            return
        value, epoch = finite_or_none(result.get(METRIC)), result.get(TIME_ATTR)
        if value is None or not isinstance(epoch, int) or epoch in info["epochs"]:
            return
        info["epochs"].append(epoch)
        self._optuna.on_trial_result(info["inner"], {METRIC: value, "training_iteration": epoch})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        info = self._trials.get(trial_id)
        self._live.discard(trial_id)
        if info is None:
            return
        outcome = None if error else trial_outcome(result or {})
        owner = self._owners.get(info["fp"]) if info["fp"] else None
        owns = owner is not None and owner["number"] == info["number"]
        if info["done"]:  # an errored trial resumed by a restore, finished now
            if outcome is not None and info["fp"] and (owner is None or (owns and owner["outcome"] is None)):
                self._owners[info["fp"]] = {"number": info["number"], "outcome": outcome}
            return
        info["done"] = True
        if error:
            self._errors += 1
            if owns:
                del self._owners[info["fp"]]  # a held duplicate trains it instead
        else:
            self._errors = 0
            if owns:
                owner["outcome"] = outcome
        if info["inner"] is None:
            return
        if outcome is not None and outcome["status"] == "ok":
            self._optuna.on_trial_complete(info["inner"], result={METRIC: outcome["score"]})
        else:  # pruned, rejected, diverged: PRUNED without a value, as under Optuna; errors FAIL
            self._optuna.on_trial_complete(info["inner"], result=None, error=error)

    # -- state --
    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    def new_segment(self, max_concurrent: int | None) -> None:
        """Continue in a new experiment: nothing of the last one is still running."""
        self._live = set()
        self._max_concurrent = max_concurrent
        self._errors = 0
        for fp, owner in list(self._owners.items()):
            if owner["outcome"] is None:
                del self._owners[fp]

    # -- helpers --
    def _emit(self, trial_id: str, config: dict, inner: str | None, fp: str | None) -> dict:
        number = self._number
        self._number += 1
        owner = self._owners.get(fp) if fp else None
        if owner is not None and owner["outcome"] is not None:
            config["duplicate_of"] = owner["number"]
            config["reuse"] = owner["outcome"]
        elif fp:
            self._owners[fp] = {"number": number, "outcome": None}
        self._trials[trial_id] = {"number": number, "inner": inner, "fp": fp, "done": False, "epochs": []}
        if "duplicate_of" in config:
            self._trials[trial_id]["duplicate_of"] = config["duplicate_of"]
        self._live.add(trial_id)
        return {"number": number, **config}

    def _fingerprint(self, params: dict) -> str | None:
        try:
            return self._space.build(params).fingerprint
        except (ValueError, TypeError, ArithmeticError, RuntimeError):
            return None  # the trainable records it as rejected


def trial_outcome(result: dict) -> dict:
    """What a finished trial's last result says: status, score, reason, coefficients."""
    if result.get("final"):
        status = result.get("status", "error")
        score = finite_or_none(result.get("score")) if status == "ok" else None
        if status == "ok" and score is None:
            status = "diverged"
        return {"status": status, "score": score, "reason": result.get("reason"),
                "learned_coefficients": dict(result.get("learned_coefficients") or {})}
    epoch, value = result.get(TIME_ATTR), finite_or_none(result.get(METRIC))
    acc = f" at val_acc {value:.4f}" if value is not None else ""
    return {"status": "pruned", "score": None, "learned_coefficients": {},
            "reason": f"stopped by the scheduler after epoch {epoch}{acc}"}


# ---------------------------------------------------------------------------
# Schedulers: baselines are never stopped, and a finished trial is not pruned
# ---------------------------------------------------------------------------

class _Protect:
    """Mixin for a Tune scheduler.

    - a baseline's epochs are recorded (they set the bar) but it always continues;
    - the last epoch is never a reason to stop (the training is done; stopping
      would only lose the trial's final report);
    - duplicates, results without a finite score and final reports are not
      ranked (a final report repeats the last epoch, recorded already).
    """

    final_epoch = 0

    def on_trial_result(self, tune_controller, trial, result):
        if _not_ranked(trial, result) or result.get(TIME_ATTR, 0) >= self.final_epoch:
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if trial.config.get("baseline") else action

    def on_trial_complete(self, tune_controller, trial, result):
        if not _not_ranked(trial, result or {}):
            super().on_trial_complete(tune_controller, trial, result)

    def prime(self, records: list[TrialRecord]) -> None:
        """Record earlier trials' per-epoch accuracies (from a previous segment)."""


def _not_ranked(trial, result: dict) -> bool:
    return bool(result.get("final")) or "duplicate_of" in trial.config \
        or finite_or_none(result.get(METRIC)) is None


class ProtectedASHA(_Protect, ASHAScheduler):
    def prime(self, records: list[TrialRecord]) -> None:
        class _Earlier:  # all a bracket reads of a trial
            def __init__(self, number):
                self.trial_id = f"earlier_{number}"

        for r in records:
            if r.duplicate_of is not None:
                continue
            for h in r.history:
                epoch, value = h.get(TIME_ATTR), finite_or_none(h.get(METRIC))
                if isinstance(epoch, int) and value is not None and epoch < self.final_epoch:
                    self._brackets[0].on_result(_Earlier(r.number), epoch, self._metric_op * value)


class ProtectedMedian(_Protect, MedianStoppingRule):
    def _on_insufficient_samples(self, tune_controller, trial, time):
        # Tune would PAUSE a trial (checkpoint, stop its worker, queue it) while
        # other trials wait and too few have results to compare with; that only
        # costs time here, so it continues, as Optuna's MedianPruner does.
        return TrialScheduler.CONTINUE


class ProtectedFIFO(_Protect, FIFOScheduler):
    pass


def make_scheduler(name: str, epochs: int):
    if name == "hyperband":
        # Optuna's HyperbandPruner settings: resources 1..epochs, reduction factor 3.
        sched = ProtectedASHA(time_attr=TIME_ATTR, metric=METRIC, mode=MODE, max_t=max(epochs, 1),
                              grace_period=1, reduction_factor=3)
    elif name == "median":
        # The 4 baselines are the first results: a candidate is compared with them.
        sched = ProtectedMedian(time_attr=TIME_ATTR, metric=METRIC, mode=MODE, grace_period=1,
                                min_samples_required=4)
    elif name == "none":
        sched = ProtectedFIFO()
    else:
        raise ValueError(f"unknown pruner {name!r}; valid: hyperband, median, none")
    sched.final_epoch = epochs
    return sched


# ---------------------------------------------------------------------------
# The trainable: one trial on a Ray worker
# ---------------------------------------------------------------------------

def make_trainable(config, task, space, events_path: Path):
    fn = tune.with_parameters(train_trial, task=task, space=space, seed=config.seed,
                              cpus=config.cpus_per_trial, events=str(events_path))
    return tune.with_resources(fn, {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})


def train_trial(trial_config: dict, *, task, space, seed: int, cpus: float, events: str) -> None:
    """Build the trial's candidate, train it (resuming from a checkpoint), report every epoch."""
    number = trial_config["number"]
    log = _Events(events, number, tune.get_context().get_trial_id())
    t0 = time.time()
    if "duplicate_of" in trial_config:
        reuse = trial_config["reuse"]
        owner, status = trial_config["duplicate_of"], reuse["status"]
        reason = f"duplicate of trial {owner}: not trained again" if status == "ok" else \
            f"duplicate of trial {owner} ({status}): {reuse.get('reason')}"
        log("duplicate", duplicate_of=owner)
        tune.report(_final(status, reuse.get("score"), reason, [], reuse.get("learned_coefficients"),
                           0.0, None, t0, duplicate_of=owner))
        return
    baseline = trial_config.get("baseline")
    try:
        candidate = spaces.BASELINES[baseline] if baseline else space.build(trial_config["params"])
    except (ValueError, TypeError, ArithmeticError, RuntimeError) as e:
        log("end", status="rejected")
        tune.report(_final("rejected", None, f"cannot be built: {type(e).__name__}: {e}", [], {},
                           time.time() - t0, None, t0))
        return
    if task.num_threads is None:  # one torch thread per reserved CPU, not one per core of the node
        task = task.replace(num_threads=max(1, int(cpus)))
    task = _cached_task(task)
    ckpt = _TuneCheckpoint()
    log("start", resumed=tune.get_checkpoint() is not None)
    history: list[dict] = []

    def report(epoch: int, metrics: dict) -> None:
        history.append(jsonable(metrics))
        value = finite_or_none(metrics.get(METRIC))
        checkpoint = ckpt.take()
        try:
            tune.report({TIME_ATTR: int(epoch), METRIC: value if value is not None else math.nan,
                         "train_loss": finite_or_none(metrics.get("train_loss")), "history": history,
                         "formula": candidate.formula, "final": False, "started_at": t0,
                         "reported_at": time.time()},
                        checkpoint=checkpoint)
        finally:
            ckpt.cleanup()
        log("epoch", epoch=int(epoch))

    result = task.evaluate(candidate, seed=seed, report=report, split="val", checkpoint=ckpt)
    fields = result_fields(result)
    log("end", status=fields["status"], resumed_from_epoch=result.resumed_from_epoch)
    tune.report(_final(fields["status"], fields["score"], fields["reason"], fields["history"],
                       fields["learned_coefficients"], fields["wall_time"], result.resumed_from_epoch,
                       t0, formula=candidate.formula, epoch=result.epochs_completed))


_TASKS: dict = {}


def _cached_task(task):
    """The worker's earlier task object of the same configuration, with its data already loaded.

    Tune reuses a worker for the next trial (reuse_actors=True), so the data
    is read once per worker, not once per trial (about 5 s for Fashion-MNIST).
    """
    key = (type(task).__module__, type(task).__qualname__,
           json.dumps(jsonable(task.to_dict()), sort_keys=True))
    if key not in _TASKS:
        _TASKS.clear()  # one task's data per worker
        _TASKS[key] = task
    return _TASKS[key]


def _final(status, score, reason, history, learned, wall_time, resumed_from, t0, *, duplicate_of=None,
           formula=None, epoch=0) -> dict:
    """The trial's last report: everything its record needs."""
    score = finite_or_none(score) if status == "ok" else None
    out = {TIME_ATTR: int(epoch), METRIC: score if score is not None else math.nan, "final": True,
           "status": status, "score": score, "reason": reason, "history": history,
           "learned_coefficients": dict(learned or {}), "wall_time": wall_time,
           "resumed_from_epoch": resumed_from, "started_at": t0, "ended_at": time.time(),
           "formula": formula}
    if duplicate_of is not None:
        out["duplicate_of"] = duplicate_of
    return out


class _TuneCheckpoint:
    """The evaluator's checkpoint hook on Tune checkpoints.

    save(state) writes the state to a temporary folder; the next report passes
    it to `ray.tune.report(..., checkpoint=...)`, which copies it to the
    experiment's storage. load() reads the trial's latest one back.
    """

    def __init__(self):
        self._pending: str | None = None

    def load(self) -> dict | None:
        import torch

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            return torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)

    def save(self, state: dict) -> None:
        import tempfile

        import torch

        self.cleanup()
        self._pending = tempfile.mkdtemp(prefix="eafo-checkpoint-")
        torch.save(state, Path(self._pending) / STATE_FILE)

    def take(self):
        return tune.Checkpoint.from_directory(self._pending) if self._pending else None

    def cleanup(self) -> None:
        import shutil

        if self._pending:
            shutil.rmtree(self._pending, ignore_errors=True)
            self._pending = None


class _Events:
    """Appends one JSON line per trial event (start, epoch, end) to the study's events file."""

    def __init__(self, path: str, number: int, trial_id: str):
        import platform

        self.path, self.base = path, {"number": number, "trial_id": trial_id, "pid": os.getpid(),
                                      "host": platform.node()}

    def __call__(self, event: str, **fields) -> None:
        line = json.dumps(jsonable({"time": time.time(), "event": event, **self.base, **fields}))
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass  # a node without the study folder: the events are a log, not a result


def read_events(study_dir: Path) -> list[dict]:
    path = Path(study_dir) / EVENTS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a killed worker
    return out


# ---------------------------------------------------------------------------
# Results: Tune's trials -> TrialRecords
# ---------------------------------------------------------------------------

def experiment_dirs(study_dir: Path) -> list[Path]:
    """The study's Ray experiments in order: ray/, ray-2/, ray-3/, ..."""
    out = []
    for i in range(1, 10_000):
        p = Path(study_dir) / (EXPERIMENT if i == 1 else f"{EXPERIMENT}-{i}")
        if not p.is_dir():
            break
        out.append(p)
    return out


def _load_trials(segments: list[Path]):
    """([(trial, its experiment folder)], the last segment's ExperimentAnalysis)."""
    import logging

    trials = []
    analysis = None
    # A trial that never reported has no result files; its record says so, Tune need not warn.
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    for seg in segments:
        if not list(seg.glob("experiment_state*.json")):
            continue
        quiet.setLevel(logging.ERROR)
        try:
            analysis = tune.ExperimentAnalysis(str(seg))
        finally:
            quiet.setLevel(level)
        trials += [(t, seg) for t in analysis.trials if "number" in (t.config or {})]
    return trials, analysis


def collect(segments: list[Path], space):
    """(records in trial-number order, the last segment's ExperimentAnalysis)."""
    trials, analysis = _load_trials(segments)
    records = [trial_record(t, space) for t, _ in trials]
    return sorted(records, key=lambda r: r.number), analysis


def trial_record(trial, space) -> TrialRecord:
    cfg, last = trial.config, trial.last_result or {}
    number, baseline, params = cfg["number"], cfg.get("baseline"), cfg.get("params")
    candidate = None
    try:
        candidate = spaces.BASELINES[baseline] if baseline else space.build(params)
        fingerprint = candidate.fingerprint
    except (ValueError, TypeError, ArithmeticError, RuntimeError, KeyError):
        candidate, fingerprint = None, None
    history = list(last.get("history") or [])
    learned, wall = {}, None
    if last.get("final"):
        o = trial_outcome(last)
        learned, wall = o["learned_coefficients"], finite_or_none(last.get("wall_time"))
    elif trial.status == Trial.TERMINATED and last:
        o = trial_outcome(last)  # stopped by the scheduler
    elif trial.status == Trial.ERROR:
        o = {"status": "error", "score": None,
             "reason": f"{_error_line(trial.get_error())} (after {trial.num_failures} failure(s))"}
    else:  # Ctrl-C, or the driver died: resumed by the next run
        o = {"status": "interrupted" if trial.status != Trial.RUNNING else "running", "score": None,
             "reason": "stopped before it finished; the same command resumes it from its last epoch"}
    return TrialRecord(
        number=number, status=o["status"], label=trial_label(number, baseline), baseline=baseline,
        params=dict(params) if params is not None and not baseline else None,
        candidate=candidate.to_dict() if candidate is not None else None,
        formula=candidate.formula if candidate is not None else None, fingerprint=fingerprint,
        score=o["score"], reason=o.get("reason"), duplicate_of=cfg.get("duplicate_of"),
        history=[jsonable(h) for h in history], learned_coefficients=learned, wall_time=wall,
        state=trial.status)


def ray_info(study_dir: Path) -> list[dict]:
    """What only Ray knows per trial: ids, attempts, where and when it ran, the resumed epoch."""
    trials, _ = _load_trials(experiment_dirs(study_dir))
    events = read_events(study_dir)
    out = []
    for t, seg in sorted(trials, key=lambda ts: ts[0].config["number"]):
        last = t.last_result or {}
        mine = [e for e in events if e.get("trial_id") == t.trial_id]
        out.append({
            "number": t.config["number"], "trial_id": t.trial_id, "status": t.status, "experiment": seg.name,
            "num_failures": t.num_failures, "resumed_from_epoch": last.get("resumed_from_epoch"),
            "started_at": min((e["time"] for e in mine if e["event"] in ("start", "duplicate")),
                              default=last.get("started_at")),
            "ended_at": last.get("ended_at") or last.get("reported_at"),  # a stopped trial: its last epoch
            "pid": last.get("pid"), "node_ip": last.get("node_ip"),
            "pids": list(dict.fromkeys(e["pid"] for e in mine)),  # worker processes, first one first
        })
    return jsonable(out)


class _Progress(tune.Callback):
    """Tune callback: one line per finished trial on stderr, like the Optuna backend."""

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        o = trial_outcome(last)
        score = f"{o['score']:.4f}" if o["score"] is not None else "-"
        dup = f" (= trial {trial.config['duplicate_of']})" if "duplicate_of" in trial.config else ""
        why = "" if o["status"] == "ok" else f"  [{(o['reason'] or '')[:80]}]"
        label = trial.config.get("baseline") or last.get("formula") or "?"
        print(f"trial {trial.config.get('number', '?'):>4}  {o['status']:<9} {score:>7}  {label}{dup}{why}",
              file=sys.stderr)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"trial {trial.config.get('number', '?'):>4}  error     -        "
              f"{_error_line(trial.get_error())}", file=sys.stderr)


def _trial_name(trial) -> str:
    return f"trial_{trial.config.get('number', 0):04d}_{trial.trial_id}"


__all__ = ["run_ray", "connect", "BaselinesFirstSearcher", "make_scheduler", "train_trial", "trial_record",
           "collect", "experiment_dirs", "read_events", "ray_info", "MAX_FAILURES", "EVENTS_FILE",
           "TRIALS_FILE"]
