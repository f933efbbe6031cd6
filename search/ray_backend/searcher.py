"""The driver-side Tune searcher: search.policy on Ray Tune's Searcher interface.

- Baselines first: `points_to_evaluate` can only fix values of the space's own
  params, and a baseline is not a point of every space, so the first
  suggestions are {"baseline": label, "candidate": ...}, built from the
  registry in the driver; only then is `OptunaSearch` asked (define-by-run,
  the same seeded sampler as the Optuna backend).
- Deduplication (policy.Registry), in the driver: a suggestion whose
  fingerprint has a finished owner becomes a trial that only reports the
  owner's outcome ("duplicate_of"; not trained). One whose owner still runs is
  held back (no slot is spent waiting) and released once the owner finishes;
  if the owner fails, the held one trains. The registry is part of the
  searcher's state, which Tune saves with the experiment.
- Counting (policy.counts): duplicates and errored trials do not count toward
  the trials this experiment must add; the searcher suggests until that many
  counted trials exist, then ends the experiment (Tune's num_samples is -1).
- Stopping (policy.StopRules): errors in a row, or a sampler that proposes
  only evaluated candidates, end the experiment (`stop_reason` says why).
"""
from __future__ import annotations

import pickle
import time

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search import policy
from search.records import finite_or_none

TIME_ATTR = "epoch"
MAX_HELD = 8                 # duplicates of running trials held back at once
MAX_ASKS = 16                # suggestions asked of Optuna per call before giving up for now

# The driver-side run state that must not travel with a restored experiment:
# the searcher reads it, `run_ray` sets it for each run.
RUN = {"deadline": None}


def mode(metric) -> str:
    """Tune's spelling of a metric's direction."""
    return "max" if metric.direction == "maximize" else "min"


class BaselinesFirstSearcher(Searcher):
    """A Tune `Searcher`: the baselines, then `OptunaSearch` over `space.suggest`.

    Every suggestion is a config {"number": n, ...} with one of
      {"baseline": label, "candidate": c}               a baseline, built from c;
      {"params": p}                                     a new candidate, trained;
      {"params": p, "duplicate_of": m, "reuse": o}      a fingerprint trial m owns:
                                                        the trainable reports o.
    State (sampler, registry, numbers, counts) is pickled by Tune with the experiment.
    """

    def __init__(self, space, sampler: str, seed: int, max_concurrent: int | None, *, baselines: dict,
                 metric, target: int, prefilter: int = 1):
        from search.optuna_backend import make_sampler

        import optuna

        key = metric.key("val")
        super().__init__(metric=key, mode=mode(metric))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._space = space
        self._key = key
        self._optuna = OptunaSearch(space=space.suggest, metric=key, mode=mode(metric),
                                    sampler=make_sampler(sampler, seed))
        self._max_concurrent = max_concurrent
        self._baselines = [(label, c.to_dict(), c.fingerprint) for label, c in baselines.items()]  # to suggest
        self._target = target                     # counted trials this experiment adds
        self._counted: set[str] = set()           # Tune ids of trials that count (live or finished, no error)
        self._number = 0                          # the next trial's number
        self._asks = 0                            # suggestions asked of Optuna so far (their ids)
        self._trials: dict[str, dict] = {}        # Tune trial id -> {number, inner, fp, done, epochs, dup}
        self._registry = policy.Registry()
        self._held: list[dict] = []               # duplicates of running trials: {inner, params, fp}
        self._live: set[str] = set()              # suggested, not yet complete
        self.rules = policy.StopRules()
        self._prefilter = policy.Prefilter(prefilter, getattr(space, "sigma", 1.0), metric.direction)  # --prefilter M
        self._candidates: dict[int, object] = {}  # number -> Candidate of a trial that trains (prefilter)

    @property
    def stop_reason(self) -> str | None:
        return self.rules.stop_reason

    # -- what Tune calls --
    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return False  # the space is the define-by-run function; metric and mode are fixed

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self._max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str):
        deadline = RUN["deadline"]
        # FINISHED once nothing runs: Tune would otherwise wait for a suggestion.
        # A rerun continues the study in a new experiment.
        end = None if self._live else self.FINISHED
        if self.rules.stop_reason is not None:
            return end
        if deadline is not None and time.time() >= deadline:
            return end
        if len(self._counted) >= self._target:
            return end
        if self._max_concurrent and len(self._live) >= self._max_concurrent:
            return None
        if self._baselines:
            label, candidate, fp = self._baselines.pop(0)
            return self._emit(trial_id, {"baseline": label, "candidate": candidate}, None, fp)
        for h in list(self._held):
            owner = self._registry.owner(h["fp"])
            if owner is None or owner[1] is not None:
                self._held.remove(h)
                return self._emit(trial_id, {"params": h["params"]}, h["inner"], h["fp"])
        for _ in range(MAX_ASKS):
            if len(self._held) >= MAX_HELD:
                return None
            inner, params, fp = self._ask()
            owner = self._registry.owner(fp)
            if owner is None or owner[1] is not None:
                return self._emit(trial_id, {"params": params}, inner, fp)
            self._held.append({"inner": inner, "params": params, "fp": fp})
        return None

    def _ask(self) -> tuple[str, dict, str | None]:
        """One proposal of OptunaSearch (inner id, params, fingerprint); under --prefilter M, the
        one of M that policy.Prefilter chooses, the M - 1 others told to Optuna as failed."""
        asked = []
        for _ in range(self._prefilter.m):
            inner = f"ask_{self._asks}"
            self._asks += 1
            params = dict(self._optuna.suggest(inner))
            asked.append((inner, params, policy.build(self._space, {}, params=params)))
        pick = 0
        if self._prefilter.on:
            finished = {fp for fp, o in self._registry.owners.items() if o["outcome"] is not None}
            pick = self._prefilter.choose([b for _, _, b in asked], finished)
            for i, (inner, _, _) in enumerate(asked):
                if i != pick:
                    self._optuna.on_trial_complete(inner, result=None, error=True)
        inner, params, built = asked[pick]
        return inner, params, built.fingerprint

    def _observe(self, info: dict, outcome) -> None:
        """Teach the prefilter a finished trial that trained its own candidate."""
        if not self._prefilter.on or info["dup"] or outcome is None:
            return
        candidate = self._candidates.pop(info["number"], None)
        self._prefilter.observe(info["number"], candidate, outcome.status, outcome.score)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        info = self._trials.get(trial_id)
        if info is None or info["inner"] is None or result.get("final") or info["dup"]:
            return
        value, epoch = finite_or_none(result.get(self._key)), result.get(TIME_ATTR)
        if value is None or not isinstance(epoch, int) or epoch in info["epochs"]:
            return
        info["epochs"].append(epoch)
        self._optuna.on_trial_result(info["inner"], {self._key: value, "training_iteration": epoch})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from search.ray_backend.results import trial_outcome

        info = self._trials.get(trial_id)
        self._live.discard(trial_id)
        if info is None:
            return
        outcome = None if error else trial_outcome(result or {}, self._key)
        if info["done"]:  # an errored trial resumed by a restore, finished now: it counts after all
            if outcome is not None and not info["dup"]:
                self._registry.finish(info["fp"], info["number"], outcome)
                self._counted.add(trial_id)
            return
        info["done"] = True
        self._observe(info, outcome)
        self.rules.observe("error" if error else outcome.status, info["dup"],
                           "the trial failed" if error else outcome.reason)
        if error:
            self._counted.discard(trial_id)  # errors do not count: another trial takes its place
        if not info["dup"]:
            self._registry.finish(info["fp"], info["number"], outcome)
        if info["inner"] is None:
            return
        if outcome is not None and outcome.status == "ok":
            self._optuna.on_trial_complete(info["inner"], result={self._key: outcome.score})
        else:  # pruned, rejected, diverged: PRUNED without a value, as under Optuna; errors FAIL
            self._optuna.on_trial_complete(info["inner"], result=None, error=error)

    # -- state --
    def save(self, checkpoint_path: str):
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))

    def new_segment(self, max_concurrent: int | None, target: int) -> None:
        """Continue in a new experiment: nothing of the last one is still running."""
        self._live = set()
        self._counted = set()
        self._target = target
        self._max_concurrent = max_concurrent
        self.rules = policy.StopRules()
        self._registry.drop_running()

    # -- helpers --
    def _emit(self, trial_id: str, config: dict, inner: str | None, fp: str | None) -> dict:
        c = config
        number = self._number
        self._number += 1
        owner = self._registry.owner(fp)
        dup = owner is not None and owner[1] is not None
        if dup:
            config["duplicate_of"] = owner[0]
            config["reuse"] = owner[1].to_dict()
        else:
            self._registry.claim(fp, number)
            self._counted.add(trial_id)
            if self._prefilter.on:  # what the prefilter learns from once the trial ends
                built = policy.build(self._space, {c["baseline"]: _from_dict(c["candidate"])} if "baseline" in c
                                     else {}, params=c.get("params"), baseline=c.get("baseline"))
                self._candidates[number] = built.candidate
        self._trials[trial_id] = {"number": number, "inner": inner, "fp": fp, "done": False, "epochs": [],
                                  "dup": dup}
        self._live.add(trial_id)
        return {"number": number, **config}


def _from_dict(d: dict):
    import spaces

    return spaces.Candidate.from_dict(d)


__all__ = ["BaselinesFirstSearcher", "RUN", "TIME_ATTR", "mode", "MAX_HELD", "MAX_ASKS"]
