"""The embedded backend: an Optuna study in RDB storage (SQLite by default).

The search policy (baselines first, candidates, deduplication, counting,
stopping, pruning, progress, records) is search.policy's; this module maps it
onto Optuna: the study's direction is the task metric's, trials carry the
policy's outcome in user attrs, and the trials table is the dedup registry.

How outcomes become Optuna states (the sampler must learn from every outcome,
and NaN must never be scored as a number):

- ok                 -> COMPLETE, value = validation accuracy
- rejected, diverged -> PRUNED with no value: `raise optuna.TrialPruned`. TPE
  ranks a pruned trial without intermediate values below every completed one,
  so it learns to avoid such candidates, and a pruned trial can never be
  `study.best_trial`. A FAIL state would hide them from the sampler, which
  would propose them again; returning 0.0 would score an outcome as a number.
  The user attrs `status` and `reason` tell these apart from a pruned trial.
- pruned             -> PRUNED with its intermediate values (one per epoch)
- an exception       -> FAIL, user attr status "error" (a bug, not a candidate);
                        three in a row stop the search (TooManyErrors)
- Ctrl-C             -> FAIL, status "interrupted", and the trial is enqueued
                        again (same params), so the next run retries it
- killed (SIGKILL)   -> stays RUNNING without heartbeats; the next run finds it
                        stale and `RetryHeartbeatStaleTrialCallback` enqueues it again

Duplicates (search.policy.Registry, rebuilt from the study's finished
trials): the trial reuses the owner's outcome (returns its value, or is pruned
again) and records `duplicate_of`; duplicates do not count toward --trials.
Confirmation runs in this process (search.confirm.LocalRunner).
"""
from __future__ import annotations

import contextlib
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

from search import policy
from search.config import LEGACY, STUDY_KEYS
from search.exceptions import SearchInterrupted, TooManyErrors, UsageError
from search.policy import MAX_CONSECUTIVE_ERRORS, MAX_DUPLICATES_IN_A_ROW, Outcome
from search.records import TrialRecord, finite_or_none, jsonable, trial_label
from search.storage import open_storage


def make_sampler(name: str, seed: int):
    import optuna

    if name == "tpe":
        # multivariate + group: the space is conditional (hermite_k only with hermite,
        # eps only with a correction), so each group of params that occur together is
        # modelled jointly.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if name == "gp":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; valid: tpe, gp, random")


def make_pruner(plan: policy.Pruning):
    """The policy's pruning on Optuna (steps are 1-based epochs)."""
    import optuna

    if plan.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=plan.min_resource, max_resource=plan.epochs,
                                              reduction_factor=plan.reduction_factor)
    if plan.kind == "median":
        # The baselines are the first finished trials: a candidate is compared with them
        # (and later ones) epoch by epoch, from the first epoch on: in the default 3-epoch
        # budget that is where pruning saves most, and a candidate far below every
        # baseline after one epoch rarely catches up.
        return optuna.pruners.MedianPruner(n_startup_trials=plan.n_startup, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


class _Interrupt(BaseException):
    """Ctrl-C inside the objective, carried past Optuna's own handling.

    Optuna logs a KeyboardInterrupt raised in the objective as a failed trial
    with a traceback; this passes through untouched and `run_optuna` records
    the trial as interrupted and enqueues it again.
    """


class Objective:
    """Optuna objective: build the trial's candidate, reuse a duplicate's outcome, or train it."""

    def __init__(self, space, task, seed: int, epochs: int, baselines: dict):
        self.space, self.task, self.seed, self.epochs, self.baselines = space, task, seed, epochs, baselines
        self.metric = task.metric
        self.current: int | None = None  # number of the trial being run (for Ctrl-C)

    def __call__(self, trial) -> float:
        import optuna

        self.current = trial.number
        try:
            return self._run(trial)
        except KeyboardInterrupt:
            try:
                trial.set_user_attr("status", "interrupted")
                trial.set_user_attr("reason", "stopped by Ctrl-C; enqueued again")
            except Exception:  # noqa: BLE001 - the storage failing must not turn Ctrl-C into a trial error
                pass  # (Optuna would catch it and go on); run_optuna records the interruption
            raise _Interrupt() from None
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("status", "error")
            trial.set_user_attr("reason", f"{type(e).__name__}: {e}")
            raise

    def _run(self, trial) -> float:
        import optuna

        # Few writes: each user attr is one SQLite commit. A retried trial starts with
        # its killed original's attrs, which are all overwritten below.
        baseline = trial.user_attrs.get("baseline")
        params = None if baseline else self.space.suggest(trial)
        built = policy.build(self.space, self.baselines, params=params, baseline=baseline)
        if built.candidate is None:
            return self._finish(trial, Outcome("rejected", reason=built.reason))
        candidate = built.candidate
        trial.set_user_attr("formula", candidate.formula)
        trial.set_user_attr("candidate", candidate.to_dict())
        trial.set_user_attr("fingerprint", built.fingerprint)

        owner = policy.Registry.from_records(records_from_study(trial.study)).owner(built.fingerprint)
        if owner is not None:
            number, outcome = owner
            trial.set_user_attr("duplicate_of", number)
            return self._finish(trial, outcome.reused_by_duplicate(number))

        history: list[dict] = []
        key = self.metric.key("val")

        def report(epoch: int, metrics: dict) -> None:
            history.append(jsonable(metrics))
            value = finite_or_none(metrics.get(key))
            if value is None:  # a NaN score is the evaluator's to call diverged
                return
            trial.report(value, step=int(epoch))
            if policy.may_prune(baseline, epoch, self.epochs) and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} at {key} {value:.4f}")

        try:
            result = self.task.evaluate(candidate, seed=self.seed, report=report, split="val")
        except optuna.TrialPruned as e:
            partial = getattr(e, "partial_result", None)
            wall = finite_or_none(getattr(partial, "wall_seconds", None)) if partial is not None else None
            return self._finish(trial, Outcome("pruned", reason=str(e), history=history, wall_time=wall,
                                               device=getattr(partial, "device", None)))
        outcome = Outcome.from_result(result)
        outcome.history = outcome.history or history
        return self._finish(trial, outcome)

    def _finish(self, trial, outcome: Outcome):
        """Record the outcome; return the score of an ok one, end any other as PRUNED (never scored)."""
        import optuna

        for name in ("status", "reason", "history", "learned_coefficients", "learned_per_layer", "wall_time",
                     "device"):
            trial.set_user_attr(name, jsonable(getattr(outcome, name)))
        if outcome.device:
            trial.set_user_attr("precision", policy.precision_of(self.task))
        if outcome.status == "ok":
            return outcome.score
        raise optuna.TrialPruned(f"{outcome.status}: {outcome.reason}")


def enqueue_baselines(study, labels) -> list[str]:
    """Enqueue each baseline that the study does not hold yet (waiting, running or finished).

    Optuna's `skip_if_exists` compares params, and every baseline has params {},
    so the check is on the `baseline` user attr instead.
    """
    from optuna.trial import TrialState

    present = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.FAIL}
    added = []
    for label in labels:
        if label not in present:
            study.enqueue_trial(params={}, user_attrs={"baseline": label})
            added.append(label)
    return added


def open_study(config, task, storage=None):
    """Create or load the study `config.study_name` (load_if_exists: a rerun continues it),
    in the direction of the task's metric."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage or open_storage(config.storage_url, config.heartbeat_interval, config.grace_period)
    n_baselines = len(config.baselines)
    study = optuna.create_study(storage=storage, study_name=config.study_name, direction=task.metric.direction,
                                sampler=make_sampler(config.sampler, config.seed),
                                pruner=make_pruner(policy.pruning(config.pruner, task, config.epochs, n_baselines)),
                                load_if_exists=True)
    n = len(study.get_trials(deepcopy=False))
    if n:
        # A resumed study gets a sampler seeded by how far it got, so its random
        # start-up draws do not repeat the first run's (they would all be duplicates).
        study.sampler = make_sampler(config.sampler, config.seed * 1_000_003 + n)
    return study


def run_optuna(config, space, task, study_dir: Path, progress: bool = True) -> list[TrialRecord]:
    """Run until the study holds `config.trials` evaluated trials; return every trial's record.

    Evaluated (search.policy.counts): finished with a candidate of its own;
    duplicates, which reuse an earlier result for free, do not count.
    """
    import optuna

    from search.baselines import resolve

    baselines = resolve(config.baselines)
    storage = open_storage(config.storage_url, config.heartbeat_interval, config.grace_period)
    study = open_study(config, task, storage)
    settings = {k: getattr(config, k) for k in STUDY_KEYS}
    saved = study.user_attrs.get("settings")
    saved = None if saved is None else {k: saved.get(k, LEGACY.get(k)) for k in STUDY_KEYS}
    if saved is not None and saved != settings:
        diff = [f"{k}={saved.get(k)!r} (now {settings[k]!r})" for k in STUDY_KEYS if saved.get(k) != settings[k]]
        raise UsageError(f"study {config.study_name!r} in {config.storage_url} was run with "
                         f"{', '.join(diff)}; rerun with those settings or choose a new --study")
    if saved is None:
        study.set_user_attr("settings", settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a killed run's trial: FAIL + enqueued again
    _fail_orphans(study, storage, config.grace_period)
    enqueue_baselines(study, baselines)
    _warn_running(study, config.grace_period)

    done = _evaluated(study)
    remaining = config.trials - done
    if remaining <= 0:
        records = records_from_study(study)
        print(policy.already_done_note(config.study_name, records, config.trials), file=sys.stderr)
        return records
    if done:
        print(f"resuming study {config.study_name!r}: {done} evaluated trials kept, "
              f"{remaining} to run", file=sys.stderr)

    objective = Objective(space, task, config.seed, config.epochs, baselines)
    tracker = _Tracker(study, task.metric, remaining, progress)
    rules = tracker.rules
    deadline = None if config.timeout is None else time.monotonic() + config.timeout
    prefilter = policy.Prefilter(getattr(config, "prefilter", 1), getattr(space, "sigma", 1.0),
                                 task.metric.direction)
    try:
        # Duplicates cost nothing and do not count, so one optimize() call may fall
        # short of the budget: call again for what is missing. With --prefilter, one
        # trial per call, each given the proposal the prefilter chose (enqueued).
        while remaining > 0 and rules.stop_reason is None:
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                rules.stop_reason = f"--timeout {config.timeout:g} s reached"
                break
            n = remaining
            if prefilter.on:
                n = 1
                if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
                    study.enqueue_trial(prefiltered_params(study, space, prefilter, config))
            study.optimize(objective, n_trials=n, timeout=timeout, catch=(Exception,),
                           callbacks=[tracker])
            remaining = config.trials - _evaluated(study)
    except (KeyboardInterrupt, _Interrupt):
        tracker.close()
        _requeue_interrupted(study, objective.current)
        raise SearchInterrupted("interrupted by Ctrl-C", records_from_study(study)) from None
    finally:
        tracker.close()
    if rules.too_many_errors:
        raise TooManyErrors(rules.error_message(), records_from_study(study))
    records = records_from_study(study)
    if rules.stop_reason is not None:
        print(policy.stopped_note(rules.stop_reason, records, config.trials), file=sys.stderr)
    return records


def prefiltered_params(study, space, prefilter: policy.Prefilter, config) -> dict:
    """The params of the next trial under --prefilter: prefilter.m proposals of the study's
    sampler, the one search.policy.Prefilter chooses.

    The proposals come from a scratch in-memory study holding the study's finished
    trials and a sampler of the same kind, seeded by the trial count: each ask draws
    from the same history, and is told FAIL there (a failed trial teaches TPE nothing),
    so the real study holds only the trials that trained.
    """
    import optuna
    from optuna.trial import TrialState

    records = records_from_study(study)
    prefilter.observe_records(records)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    scratch = optuna.create_study(direction=study.direction,
                                  sampler=make_sampler(config.sampler, config.seed * 1_000_003 + len(records)))
    scratch.add_trials(finished)
    proposals = []
    for _ in range(prefilter.m):
        trial = scratch.ask()
        proposals.append(space.suggest(trial))
        scratch.tell(trial, state=TrialState.FAIL)
    evaluated = set(policy.Registry.from_records(records).owners)
    built = [policy.build(space, {}, params=p) for p in proposals]
    return proposals[prefilter.choose(built, evaluated)]


def _evaluated(study) -> int:
    """What --trials counts (search.policy.counts)."""
    return policy.evaluated(records_from_study(study))


def _fail_orphans(study, storage, grace_period: int) -> None:
    """Retry RUNNING trials that never recorded a heartbeat, started over `grace_period` s ago.

    Optuna's stale-trial check skips a trial without any heartbeat, so a process
    killed between `study.ask()` and its trial's first heartbeat would leave that
    trial RUNNING for ever. The heartbeat table is read directly (no public API).
    """
    import sqlalchemy
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running or not hasattr(storage, "engine"):
        return
    try:
        with storage.engine.connect() as con:
            beating = {r[0] for r in con.execute(sqlalchemy.text("SELECT trial_id FROM trial_heartbeats"))}
    except sqlalchemy.exc.SQLAlchemyError:
        return
    now = datetime.now()  # Optuna stores naive local times
    callback = storage.get_heartbeat_stale_trial_callback()
    for t in running:
        if t._trial_id in beating or t.datetime_start is None:
            continue
        if (now - t.datetime_start).total_seconds() > grace_period:
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL) and callback:
                callback(study, study._storage.get_trial(t._trial_id))


def _requeue_interrupted(study, number: int | None) -> None:
    """Mark the trial that Ctrl-C stopped as FAIL and enqueue it again (same params)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    if number is None:
        return
    trial = next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
    if trial is None or trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return
    if trial.state == TrialState.RUNNING:
        study._storage.set_trial_user_attr(trial._trial_id, "status", "interrupted")
        study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    if any(number in t.system_attrs.get("retry_history", []) for t in study.get_trials(deepcopy=False)):
        return
    frozen = study._storage.get_trial(trial._trial_id)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        RetryHeartbeatStaleTrialCallback()(study, frozen)


def _warn_running(study, grace_period: int) -> None:
    from optuna.trial import TrialState

    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        print(f"note: trial {t.number} is marked running (started {now - started:.0f} s ago): another "
              f"process runs this study, or it was killed and will be retried once it has had no "
              f"heartbeat for {grace_period} s", file=sys.stderr)


class _Tracker:
    """Optuna callback: the policy's progress line and stop rules, and a tqdm bar with the best so far."""

    def __init__(self, study, metric, total: int, enabled: bool):
        from optuna.trial import TrialState
        from tqdm import tqdm

        self.rules = policy.StopRules()
        self.bar = tqdm(total=total, desc="search", unit="trial", disable=None if enabled else True,
                        file=sys.stderr, dynamic_ncols=True)
        self.best = policy.Best(metric)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self.best.offer(t.value, t.user_attrs.get("formula"))
        self.bar.set_postfix_str(self.best.text())

    def __call__(self, study, trial) -> None:
        from tqdm import tqdm

        a = trial.user_attrs
        status = a.get("status") or trial.state.name.lower()
        if trial.state.name == "FAIL" and status != "error":
            status = "interrupted"
        duplicate = a.get("duplicate_of") is not None
        self.rules.observe(status, duplicate, a.get("reason"))
        if self.rules.stop_reason is not None:
            study.stop()
        score = trial.value if trial.state.name == "COMPLETE" else None
        if score is not None:
            self.best.offer(score, a.get("formula"))
        what = a.get("baseline") or a.get("formula")
        tqdm.write(policy.progress_line(trial.number, status, score, what, a.get("duplicate_of"), a.get("reason")),
                   file=sys.stderr)
        if trial.state.name in ("COMPLETE", "PRUNED") and not duplicate:
            self.bar.update(1)  # the bar counts what --trials counts
        self.bar.set_postfix_str(self.best.text())

    def close(self):
        self.bar.close()


def records_from_study(study) -> list[TrialRecord]:
    """Every trial but the waiting ones, as backend-neutral records, in trial order."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried_as = {}
    for t in trials:
        for n in t.system_attrs.get("retry_history", []):
            retried_as[n] = t.number
    records = []
    for t in trials:
        if t.state == TrialState.WAITING:
            continue
        a = t.user_attrs
        status = a.get("status")
        reason = a.get("reason")
        score = None
        if t.state == TrialState.COMPLETE:
            score = finite_or_none(t.value)
            status = "ok" if score is not None else "diverged"
        elif t.state == TrialState.PRUNED:
            status = status if status in ("rejected", "diverged", "pruned") else "pruned"
        elif t.state == TrialState.FAIL:
            if status in (None, "running", "interrupted"):
                status = "interrupted"
                reason = reason if a.get("status") == "interrupted" else \
                    "its process stopped (no heartbeat)"
            else:
                status = "error"
            if t.number in retried_as:
                reason = f"{reason}; retried as trial {retried_as[t.number]}"
        else:  # RUNNING
            status, reason = "running", None
        baseline = a.get("baseline")
        records.append(TrialRecord(
            number=t.number, status=status, label=trial_label(t.number, baseline),
            baseline=baseline, params=None if baseline else dict(t.params),
            candidate=a.get("candidate"), formula=a.get("formula"), fingerprint=a.get("fingerprint"),
            score=score, reason=reason, duplicate_of=a.get("duplicate_of"),
            history=list(a.get("history") or []),
            learned_coefficients=dict(a.get("learned_coefficients") or {}),
            learned_per_layer=dict(a.get("learned_per_layer") or {}),
            wall_time=finite_or_none(a.get("wall_time")), state=t.state.name,
            device=a.get("device"), precision=a.get("precision")))
    return records


@contextlib.contextmanager
def session(config):
    """Nothing to connect to: the study is a file (or a database URL opened per call)."""
    yield


def confirm_runner(config, task, study_dir: Path):
    """Confirmation runs in this process, one after another."""
    from search.confirm import LocalRunner

    return LocalRunner(task, study_dir)


__all__ = ["run_optuna", "open_study", "prefiltered_params", "records_from_study", "enqueue_baselines", "make_sampler",
           "make_pruner", "Objective", "MAX_CONSECUTIVE_ERRORS", "MAX_DUPLICATES_IN_A_ROW", "session",
           "confirm_runner"]
