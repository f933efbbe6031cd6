"""The distributed backend: Ray Tune on a Ray cluster (or a local instance).

    python -m search.run --backend ray --ray-address 127.0.0.1:6379 --max-concurrent 4

The search policy (search.policy) is the same as the Optuna backend's; what
differs is who runs the trials (Ray actors, `--cpus-per-trial`/`--gpus-per-trial`
each, fractions share a GPU) and who decides (a driver-side Tune searcher).
The parts, one concern per module:

- connection.py  a local instance on loopback, or a cluster by address
- searcher.py    the policy on Tune's Searcher: baselines first, then
                 OptunaSearch; deduplication and counting in the driver
- schedulers.py  the policy's pruning on ASHA / the median stopping rule
- trainable.py   one trial on a worker: per-epoch reports and checkpoints
- results.py     Tune's trials -> TrialRecords, ray_trials.json, progress lines
- confirm.py     confirmation runs as Ray tasks on the workers
- probe.py       the data check and the sigma measurement on a worker (the driver needs no data)

This module runs them: `session` connects once for the search and the
confirmation, `run_ray` runs the search, `confirm_runner` gives confirmation
its Ray runner.

- Restore: Ray's experiment lives in `<study_dir>/ray/`. Running the same
  command again restores it (`Tuner.restore`, errored trials resumed from their
  checkpoints): finished trials are kept, running ones resume from their last
  epoch. A rerun with a larger --trials, once the experiment is complete, adds
  a new segment (`ray-2/`, ...) whose searcher starts from the last one's state
  (sampler history, registry, trial numbers), so trials are never repeated.
- Timeout: after --timeout seconds no new trial starts; running ones finish
  (as under Optuna), then the run ends and a rerun continues.

On a multi-node cluster the study folder (--runs-dir) must be on storage every
node can reach (NFS): Tune's workers and the confirmation runs write their
checkpoints into it directly.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

from search import policy
from search.exceptions import SearchInterrupted, TooManyErrors
from search.records import TrialRecord
from search.ray_backend.connection import check_resources, connect
from search.ray_backend.results import (EXPERIMENT, TRIALS_FILE, Progress, collect, experiment_dirs, ray_info,
                                        trial_outcome, trial_record)
from search.ray_backend.schedulers import make_scheduler
from search.ray_backend.searcher import RUN, TIME_ATTR, BaselinesFirstSearcher
from search.ray_backend.trainable import EVENTS_FILE, make_trainable, read_events, train_trial

MAX_FAILURES = 3             # retries of a trial whose worker died (then it is an error)

# Driver-side Tune settings (a value already in the environment wins):
_TUNE_ENV = {
    # Result files: JSON and CSV only (TensorBoard cannot log a trial's history list).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Tune snapshots the experiment after every checkpoint here (num_to_keep is set),
    # which is what makes a restore lose nothing; it need not warn about it.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


@contextlib.contextmanager
def session(config):
    """Connected to Ray (and its resources checked) for the search and the confirmation;
    a local instance this started is stopped at the end, a cluster keeps running."""
    owned = connect(config.ray_address)
    import ray

    try:
        check_resources(ray.cluster_resources(), config)
        yield
    finally:
        if owned:
            ray.shutdown()


def confirm_runner(config, task, study_dir: Path):
    from search.ray_backend.confirm import RayRunner

    return RayRunner(config, task, study_dir)


def run_ray(config, space, task, study_dir: Path, progress: bool = True) -> list[TrialRecord]:
    """Run the search on Ray Tune until the study holds `config.trials` evaluated trials."""
    with session(config):  # already connected by the CLI's session: used as it is
        return _search(config, space, task, Path(study_dir).absolute(), progress)


def _search(config, space, task, study_dir: Path, progress: bool) -> list[TrialRecord]:
    """Restore the last segment if it has work left, then add a segment if trials are missing."""
    from search.baselines import resolve

    for name, value in _TUNE_ENV.items():
        os.environ.setdefault(name, value)
    RUN["deadline"] = None if config.timeout is None else time.time() + config.timeout
    key = task.metric.key("val")
    study_dir.mkdir(parents=True, exist_ok=True)
    trainable = make_trainable(config, task, space, study_dir / EVENTS_FILE)
    segments = experiment_dirs(study_dir)
    if segments and tune.Tuner.can_restore(str(segments[-1])):
        records, analysis = collect(segments, space, key)
        unfinished = any(t.status != Trial.TERMINATED for t in analysis.trials) if analysis else False
        if unfinished or policy.evaluated(records) < config.trials:
            print(f"restoring Ray experiment {segments[-1]}: {policy.evaluated(records)} evaluated trials "
                  f"kept", file=sys.stderr)
            tuner = tune.Tuner.restore(str(segments[-1]), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True, restart_errored=False)
            _fit(tuner)
    elif segments:  # killed before Tune saved any state: start that segment again
        segments = segments[:-1]

    records = collect(segments, space, key)[0] if segments else []
    _raise_if_stopped(records)
    remaining = config.trials - policy.evaluated(records)
    if remaining <= 0:
        if segments:
            print(policy.already_done_note(config.study_name, records, config.trials), file=sys.stderr)
        return _finish(records, study_dir)
    if RUN["deadline"] is not None and time.time() >= RUN["deadline"]:
        return _finish(records, study_dir)

    name = EXPERIMENT if not segments else f"{EXPERIMENT}-{len(segments) + 1}"
    searcher = BaselinesFirstSearcher(space, config.sampler, config.seed, config.max_concurrent,
                                      baselines=resolve(config.baselines), metric=task.metric, target=remaining,
                                      prefilter=getattr(config, "prefilter", 1))
    if segments:
        searcher.restore_from_dir(str(segments[-1]))
        searcher.new_segment(config.max_concurrent, remaining)
    scheduler = make_scheduler(policy.pruning(config.pruner, task, config.epochs, len(config.baselines)))
    scheduler.prime(records)
    if segments:
        print(f"adding {remaining} trials to study {config.study_name!r} ({name}/)", file=sys.stderr)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=-1,  # the searcher ends the experiment (policy.counts)
                                    reuse_actors=True,  # imports and data once per worker
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=name, storage_path=str(study_dir), verbose=0,
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES),
            # 2, not 1: Tune deletes the older checkpoint when it registers a new one, then
            # snapshots the experiment; a driver killed in between left a snapshot naming a
            # deleted checkpoint, and that trial failed to restore (seen in the kill test)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[JsonLoggerCallback(), CSVLoggerCallback()] + ([Progress(key)] if progress else [])))
    _fit(tuner)
    segments = experiment_dirs(study_dir)
    records = collect(segments, space, key)[0]
    _raise_if_stopped(records)
    stopped = _stop_reason(segments)
    if stopped:
        print(policy.stopped_note(stopped, records, config.trials), file=sys.stderr)
    return _finish(records, study_dir)


def _fit(tuner) -> None:
    """Tuner.fit, with Tune's own banner on stderr: stdout is for the results table."""
    with contextlib.redirect_stdout(sys.stderr):
        tuner.fit()


def _stop_reason(segments: list[Path]) -> str | None:
    """Why the last segment's searcher ended early (the space looks exhausted), from its saved state."""
    if not segments:
        return None
    searcher = BaselinesFirstSearcher.__new__(BaselinesFirstSearcher)
    try:
        searcher.restore_from_dir(str(segments[-1]))
    except (OSError, RuntimeError, ValueError, EOFError):
        return None
    rules = getattr(searcher, "rules", None)
    return rules.stop_reason if rules is not None and not rules.too_many_errors else None


def _raise_if_stopped(records: list[TrialRecord]) -> None:
    """Ctrl-C (Tune saved the state and returned) or too many errors in a row."""
    if any(r.status in ("interrupted", "running") for r in records):
        raise SearchInterrupted("interrupted", records)
    rules = policy.StopRules()
    for r in records:
        rules.observe(r.status, r.duplicate_of is not None, r.reason)
        if rules.too_many_errors:
            raise TooManyErrors(rules.error_message(), records)


def _finish(records: list[TrialRecord], study_dir: Path) -> list[TrialRecord]:
    """Write what only Ray knows (ray_trials.json) beside the records; return the records."""
    from search.atomic import write_json

    write_json(study_dir / TRIALS_FILE, ray_info(study_dir))
    return records


def _trial_name(trial) -> str:
    return f"trial_{trial.config.get('number', 0):04d}_{trial.trial_id}"


__all__ = ["run_ray", "session", "confirm_runner", "connect", "BaselinesFirstSearcher", "make_scheduler",
           "train_trial", "trial_record", "trial_outcome", "collect", "experiment_dirs", "read_events", "ray_info",
           "MAX_FAILURES", "EVENTS_FILE", "TRIALS_FILE", "EXPERIMENT", "TIME_ATTR", "RUN"]
