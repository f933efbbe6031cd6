"""The policy's pruning on Tune schedulers: baselines are never stopped, nor a finished trial.

`--pruner hyperband` is ASHA (asynchronous successive halving, the Hyperband
variant that suits trials finishing at any time) with Optuna's HyperbandPruner
settings; `--pruner median` is the median stopping rule. Both judge the
task's validation metric in its direction, per epoch (time attribute
"epoch"), fed by the evaluator's `report` through `ray.tune.report`.
"""
from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule, TrialScheduler

from search import policy
from search.records import TrialRecord, finite_or_none
from search.ray_backend.searcher import TIME_ATTR


class _Protect:
    """Mixin for a Tune scheduler.

    - a baseline's epochs are recorded (they set the bar) but it always continues;
    - the last epoch is never a reason to stop (the training is done; stopping
      would only lose the trial's final report);
    - duplicates, results without a finite score and final reports are not
      ranked (a final report repeats the last epoch, recorded already).
    """

    final_epoch = 0
    key = "val_acc"

    def on_trial_result(self, tune_controller, trial, result):
        epoch = result.get(TIME_ATTR, 0)
        if self._not_ranked(trial, result) or not policy.may_prune(None, epoch, self.final_epoch):
            return TrialScheduler.CONTINUE
        action = super().on_trial_result(tune_controller, trial, result)
        return TrialScheduler.CONTINUE if not policy.may_prune(trial.config.get("baseline"), epoch,
                                                               self.final_epoch) else action

    def on_trial_complete(self, tune_controller, trial, result):
        if not self._not_ranked(trial, result or {}):
            super().on_trial_complete(tune_controller, trial, result)

    def prime(self, records: list[TrialRecord]) -> None:
        """Record earlier trials' per-epoch scores (from a previous segment)."""

    def _not_ranked(self, trial, result: dict) -> bool:
        return bool(result.get("final")) or "duplicate_of" in trial.config \
            or finite_or_none(result.get(self.key)) is None


class ProtectedASHA(_Protect, ASHAScheduler):
    def prime(self, records: list[TrialRecord]) -> None:
        class _Earlier:  # all a bracket reads of a trial
            def __init__(self, number):
                self.trial_id = f"earlier_{number}"

        for r in records:
            if r.duplicate_of is not None:
                continue
            for h in r.history:
                epoch, value = h.get(TIME_ATTR), finite_or_none(h.get(self.key))
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


def make_scheduler(plan: policy.Pruning):
    """The policy's pruning plan as a Tune scheduler."""
    mode = "max" if plan.direction == "maximize" else "min"
    if plan.kind == "hyperband":
        sched = ProtectedASHA(time_attr=TIME_ATTR, metric=plan.metric, mode=mode, max_t=plan.epochs,
                              grace_period=plan.min_resource, reduction_factor=plan.reduction_factor)
    elif plan.kind == "median":
        # The baselines are the first results: a candidate is compared with them.
        sched = ProtectedMedian(time_attr=TIME_ATTR, metric=plan.metric, mode=mode,
                                grace_period=plan.min_resource, min_samples_required=plan.n_startup)
    else:
        sched = ProtectedFIFO()
    sched.final_epoch, sched.key = plan.epochs, plan.metric
    return sched


__all__ = ["make_scheduler", "ProtectedASHA", "ProtectedMedian", "ProtectedFIFO"]
