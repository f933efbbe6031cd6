"""The search policy: what a search does, whichever library runs it.

Both backends (search/optuna_backend.py, search/ray_backend/) follow this
module and keep only the glue to their library:

- Baselines first: the `--baselines` (gelu, relu, silu, crrelu by default) are
  the first trials of a study, once, built from the registry, never pruned.
- Candidates: a trial is a baseline (by name) or a point of the space
  (`space.build(params)`); params the space cannot build are a "rejected"
  candidate, not an error (`build`).
- Deduplication by fingerprint (`Registry`): a candidate whose fingerprint an
  earlier trial evaluated is not trained again; the trial reuses that outcome
  and records `duplicate_of`. Duplicates are free: they do not count toward
  `--trials` (`counts`, `evaluated`), and the end-of-search note says so.
- Stopping (`StopRules`): MAX_CONSECUTIVE_ERRORS trials in a row that raised
  (a bug or the machine, not a candidate) stop the search; a sampler that
  proposes MAX_DUPLICATES_IN_A_ROW evaluated candidates in a row has exhausted
  the space and ends it.
- Pruning (`pruning`): per epoch on the task's validation metric, in its
  direction; none, median (against earlier trials, the baselines being the
  first) or Hyperband (resources 1..epochs, reduction factor 3). The last
  epoch is never a reason to stop (training is done).
- Outcomes (`Outcome`, `record`): ok (scored), pruned, rejected, diverged,
  error, interrupted; NaN is never a score. Every backend's trial becomes the
  same `TrialRecord`, so results, confirmation and export do not care which ran.
- Progress: one line per finished trial (`progress_line`) and the best so far
  (`Best`), in the metric's direction.
- Prefilter (`Prefilter`, --prefilter M > 1): each searched trial trains one of M
  proposals of the sampler, the one whose predicted score (evaluators.prefilter's
  surrogate, fitted to the trials finished so far) is highest; proposals that
  cannot be built or repeat an evaluated candidate are not chosen while another is
  left. The M - 1 others are told to the sampler as failed (never as scores).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from search.records import TrialRecord, finite_or_none, jsonable, result_fields, trial_label

MAX_CONSECUTIVE_ERRORS = 3
# A sampler that keeps proposing evaluated candidates has (nearly) exhausted the space.
MAX_DUPLICATES_IN_A_ROW = 25
# Finished outcomes of a candidate of its own: what --trials counts.
COUNTED = ("ok", "pruned", "rejected", "diverged")
# Pruning settings both libraries share (Optuna's HyperbandPruner and Ray's ASHA alike).
HYPERBAND_REDUCTION = 3


# ---------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------

def counts(record: TrialRecord) -> bool:
    """Whether a trial counts toward --trials: finished, with a candidate of its own."""
    return record.status in COUNTED and record.duplicate_of is None


def evaluated(records: list[TrialRecord]) -> int:
    return sum(counts(r) for r in records)


def search_note(records: list[TrialRecord], trials: int) -> str | None:
    """Why more trials were printed than --trials asked for (None when there were no duplicates)."""
    dups = sum(r.duplicate_of is not None for r in records)
    if not dups:
        return None
    return (f"{len(records)} trials in the study: {evaluated(records)} evaluated (--trials {trials}) and "
            f"{dups} duplicate(s), candidates the sampler proposed again (the same function: same "
            "fingerprint). A duplicate reuses the earlier result: it is not trained and does not count "
            "toward --trials.")


def already_done_note(study_name: str, records: list[TrialRecord], trials: int) -> str:
    """A rerun whose study already holds --trials evaluated trials: nothing to search."""
    return (f"study {study_name!r} already holds {evaluated(records)} evaluated trials (--trials {trials}): "
            "no new trials")


def stopped_note(reason: str, records: list[TrialRecord], trials: int) -> str:
    """A search that ended before --trials (space exhausted, --timeout)."""
    return f"search stopped early: {reason}; {evaluated(records)} of {trials} trials evaluated"


def baselines_warning(trials: int, n_baselines: int) -> str | None:
    if trials > n_baselines:
        return None
    return (f"warning: --trials {trials} holds only the {n_baselines} baselines: nothing will be searched "
            f"(use --trials {n_baselines + 8} or more to search)")


# ---------------------------------------------------------------------------
# Candidates and outcomes
# ---------------------------------------------------------------------------

@dataclass
class Built:
    """A trial's candidate, or why there is none (a rejected candidate)."""

    candidate: object | None      # spaces.Candidate
    fingerprint: str | None
    reason: str | None = None     # set when the params cannot be built


def build(space, baselines: dict, *, params: dict | None = None, baseline: str | None = None) -> Built:
    """The trial's candidate: `baselines[baseline]`, or `space.build(params)`."""
    try:
        candidate = baselines[baseline] if baseline else space.build(params)
        return Built(candidate, candidate.fingerprint)
    except (ValueError, TypeError, ArithmeticError, RuntimeError, KeyError) as e:
        return Built(None, None, f"cannot be built: {type(e).__name__}: {e}")


@dataclass
class Outcome:
    """How a trial ended, as both backends store and reuse it."""

    status: str                                  # one of COUNTED, or "error"
    score: float | None = None                   # the validation metric when status is "ok"
    reason: str | None = None
    history: list = field(default_factory=list)  # one metrics dict per epoch
    learned_coefficients: dict = field(default_factory=dict)  # name -> MEAN over layers
    learned_per_layer: dict = field(default_factory=dict)     # name -> value per layer
    wall_time: float | None = None
    device: str | None = None

    def __post_init__(self):
        self.score = finite_or_none(self.score) if self.status == "ok" else None
        if self.status == "ok" and self.score is None:  # NaN is an outcome, never a score
            self.status, self.reason = "diverged", "score is not a finite number"

    @classmethod
    def from_result(cls, result) -> "Outcome":
        f = result_fields(result)
        return cls(f["status"], f["score"], f["reason"], f["history"], f["learned_coefficients"],
                   f["learned_per_layer"], f["wall_time"], f["device"])

    @classmethod
    def from_dict(cls, d: dict) -> "Outcome":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    def reused_by_duplicate(self, owner: int) -> "Outcome":
        """What a duplicate of trial `owner` records: the same outcome, nothing trained."""
        reason = f"duplicate of trial {owner}: not trained again" if self.status == "ok" else \
            f"duplicate of trial {owner} ({self.status}): {self.reason}"
        return Outcome(self.status, self.score, reason, [], dict(self.learned_coefficients),
                       dict(self.learned_per_layer), 0.0, None)


def precision_of(task) -> str | None:
    """The precision a task trains in, resolved ("fp32", "bf16"; a task set to "auto" says which)."""
    resolve = getattr(task, "resolve_precision", None)
    return resolve() if resolve is not None else getattr(task, "precision", None)


def record(number: int, outcome: Outcome, *, baseline: str | None, params: dict | None, built: Built | None,
           duplicate_of: int | None = None, state: str | None = None, precision: str | None = None,
           history: list | None = None) -> TrialRecord:
    """The backend-neutral record of one trial."""
    candidate = built.candidate if built is not None else None
    return TrialRecord(
        number=number, status=outcome.status, label=trial_label(number, baseline), baseline=baseline,
        params=None if baseline or params is None else dict(params),
        candidate=candidate.to_dict() if candidate is not None else None,
        formula=candidate.formula if candidate is not None else None,
        fingerprint=built.fingerprint if built is not None else None,
        score=outcome.score, reason=outcome.reason, duplicate_of=duplicate_of,
        history=[jsonable(h) for h in (outcome.history or history or [])],
        learned_coefficients=dict(outcome.learned_coefficients),
        learned_per_layer=dict(outcome.learned_per_layer),
        wall_time=finite_or_none(outcome.wall_time), state=state,
        device=outcome.device, precision=precision)


# ---------------------------------------------------------------------------
# Deduplication
# ---------------------------------------------------------------------------

class Registry:
    """fingerprint -> the trial that owns it and, once finished, its outcome.

    An owner is the first trial of a fingerprint; while it runs its outcome is
    None. An owner that ends with an error gives the fingerprint up (the next
    proposal of it trains). Plain data: the Ray searcher pickles it with its state.
    """

    def __init__(self):
        self.owners: dict[str, dict] = {}  # fingerprint -> {"number": int, "outcome": dict | None}

    @classmethod
    def from_records(cls, records: list[TrialRecord]) -> "Registry":
        """The registry of a study's finished trials (earliest owner first)."""
        reg = cls()
        for r in sorted(records, key=lambda r: r.number):
            if r.fingerprint and r.duplicate_of is None and r.status in COUNTED \
                    and r.fingerprint not in reg.owners:
                reg.owners[r.fingerprint] = {"number": r.number, "outcome": Outcome(
                    r.status, r.score, r.reason, [], r.learned_coefficients, r.learned_per_layer).to_dict()}
        return reg

    def owner(self, fingerprint: str | None) -> tuple[int, Outcome | None] | None:
        """(owner's number, its outcome or None while it runs), or None for a new fingerprint."""
        o = self.owners.get(fingerprint) if fingerprint else None
        if o is None:
            return None
        return o["number"], (Outcome.from_dict(o["outcome"]) if o["outcome"] is not None else None)

    def claim(self, fingerprint: str | None, number: int) -> None:
        if fingerprint and fingerprint not in self.owners:
            self.owners[fingerprint] = {"number": number, "outcome": None}

    def finish(self, fingerprint: str | None, number: int, outcome: Outcome | None) -> None:
        """The owner `number` ended: with `outcome`, or with an error (None: the fingerprint is free)."""
        o = self.owners.get(fingerprint) if fingerprint else None
        if o is None or o["number"] != number:
            if fingerprint and o is None and outcome is not None:  # e.g. an errored owner resumed later
                self.owners[fingerprint] = {"number": number, "outcome": outcome.to_dict()}
            return
        if outcome is None:
            del self.owners[fingerprint]
        else:
            o["outcome"] = outcome.to_dict()

    def drop_running(self) -> None:
        """Forget owners that never finished (a new segment: nothing of the last one runs)."""
        self.owners = {fp: o for fp, o in self.owners.items() if o["outcome"] is not None}


# ---------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------

class StopRules:
    """Errors in a row and duplicates in a row, over finished trials in the order they end."""

    def __init__(self):
        self.errors = 0           # trials in a row that failed with an exception
        self.duplicates = 0       # trials in a row that proposed an evaluated candidate
        self.last_error: str | None = None
        self.stop_reason: str | None = None

    def observe(self, status: str, duplicate: bool, reason: str | None = None) -> None:
        if status == "error":
            self.errors += 1
            self.last_error = reason
            if self.errors >= MAX_CONSECUTIVE_ERRORS:
                self.stop_reason = f"{self.errors} trials in a row failed"
        elif status != "interrupted":
            self.errors = 0
            self.duplicates = self.duplicates + 1 if duplicate else 0
            if self.duplicates >= MAX_DUPLICATES_IN_A_ROW:
                self.stop_reason = (f"the sampler proposed {self.duplicates} evaluated candidates in a row "
                                    "(the space looks exhausted)")

    @property
    def too_many_errors(self) -> bool:
        return self.errors >= MAX_CONSECUTIVE_ERRORS

    def error_message(self) -> str:
        return (f"{self.errors} trials in a row failed with exceptions (last: {self.last_error}); see "
                "trials.json, fix, and run the same command again to continue")


# ---------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Pruning:
    """What a backend maps onto its library's pruner or scheduler."""

    kind: str               # none | median | hyperband
    metric: str             # the metrics key judged each epoch, e.g. "val_acc"
    direction: str          # maximize | minimize
    epochs: int             # the last epoch (never a reason to stop)
    min_resource: int = 1   # epochs before a trial may be stopped
    reduction_factor: int = HYPERBAND_REDUCTION
    n_startup: int = 4      # median: finished trials before any is stopped (the baselines come first)


def pruning(kind: str, task, epochs: int, n_baselines: int) -> Pruning:
    if kind not in ("none", "median", "hyperband"):
        raise ValueError(f"unknown pruner {kind!r}; valid: hyperband, median, none")
    metric = task.metric
    return Pruning(kind, metric.key("val"), metric.direction, max(int(epochs), 1), n_startup=n_baselines)


def may_prune(baseline: str | None, epoch: int, epochs: int) -> bool:
    """Baselines are never pruned (every leaderboard compares with them); nor a finished training."""
    return not baseline and int(epoch) < epochs


# ---------------------------------------------------------------------------
# Prefilter
# ---------------------------------------------------------------------------

class Prefilter:
    """--prefilter M: which of M proposals a trial trains (see the module docstring).

    Plain data (the Ray searcher pickles it with its state). `observe` each finished
    trial once (by number); `choose` among the proposals' Builts.
    """

    def __init__(self, m: int, sigma: float, direction: str):
        from evaluators.prefilter import Prefilter as Surrogate

        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"prefilter must be a positive integer, got {m!r}")
        self.m = m
        self.sign = 1.0 if direction == "maximize" else -1.0  # the surrogate ranks higher as better
        self.surrogate = Surrogate(sigma)
        self.seen: set[int] = set()

    @property
    def on(self) -> bool:
        return self.m > 1

    def observe(self, number: int, candidate, status: str, score: float | None,
                duplicate: bool = False) -> None:
        """A finished trial: ok with its score; pruned or diverged as the worst seen. Rejected,
        errored and duplicate trials teach nothing (no candidate, or no new one)."""
        if number in self.seen or candidate is None or duplicate or status not in COUNTED or status == "rejected":
            return
        self.seen.add(number)
        value = finite_or_none(score) if status == "ok" else None
        self.surrogate.observe(candidate, self.sign * value if value is not None else float("nan"))

    def observe_records(self, records: list[TrialRecord]) -> None:
        """Observe every finished record not seen yet (their candidates rebuilt from the records)."""
        import spaces

        for r in records:
            if r.number in self.seen or not r.candidate or r.status not in COUNTED:
                continue
            self.observe(r.number, spaces.Candidate.from_dict(r.candidate), r.status, r.score,
                         r.duplicate_of is not None)

    def choose(self, proposals: list[Built], evaluated: set[str] = frozenset()) -> int:
        """The index of the proposal to train: the surrogate's best of those that are built and
        new (fingerprint not in `evaluated`); else of those that are built; else 0."""
        for pool in ([i for i, b in enumerate(proposals) if b.candidate is not None
                      and b.fingerprint not in evaluated],
                     [i for i, b in enumerate(proposals) if b.candidate is not None]):
            if pool:
                return pool[self.surrogate.select([proposals[i].candidate for i in pool], 1)[0]]
        return 0


# ---------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------

def progress_line(number, status: str, score: float | None, what: str | None, duplicate_of: int | None = None,
                  reason: str | None = None) -> str:
    """One line per finished trial, the same on both backends."""
    shown = f"{score:.4f}" if score is not None else "-"
    dup = f" (= trial {duplicate_of}, free)" if duplicate_of is not None else ""
    why = "" if status == "ok" or not reason else f"  [{reason[:80]}]"
    return f"trial {number:>4}  {status:<9} {shown:>7}  {what or '?'}{dup}{why}"


class Best:
    """The best scored trial so far, in the metric's direction."""

    def __init__(self, metric):
        self.metric = metric
        self.value: float | None = None
        self.formula: str | None = None

    def offer(self, value: float | None, formula: str | None) -> None:
        value = finite_or_none(value)
        if value is not None and (self.value is None or self.metric.better(value, self.value)):
            self.value, self.formula = value, formula

    def text(self) -> str:
        return "" if self.value is None else f"best {self.value:.4f} {(self.formula or '?')[:40]}"


__all__ = ["MAX_CONSECUTIVE_ERRORS", "MAX_DUPLICATES_IN_A_ROW", "COUNTED", "counts", "evaluated",
           "search_note", "already_done_note", "stopped_note", "baselines_warning", "Built", "build", "Outcome",
           "precision_of", "record", "Registry", "StopRules", "Prefilter", "Pruning", "pruning", "may_prune",
           "progress_line", "Best"]
