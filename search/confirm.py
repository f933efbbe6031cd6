"""Confirmation: one seed lies, so the best candidates are trained again.

The top-K distinct ok candidates of the search and the baselines are retrained
with fresh seeds (never the search seed) at the full budget, and scored on the
held-out test split, which the search never saw.

- Which: `select` ranks by search score in the metric's direction, skips
  duplicates (same fingerprint) and near-duplicates (the same formula whose
  coefficients differ by at most NEAR_TOLERANCE from a chosen candidate or a
  baseline: a search around a good region proposes many of those, and
  confirming three copies of one candidate would spend the slots of three
  different ones).
- How many seeds: racing (search.racing) by default; `--no-racing` runs every
  candidate on every seed.
- Where: a runner. `LocalRunner` trains in this process (the Optuna backend);
  the Ray backend's runner sends each (candidate, seed) run to a Ray worker.
  Either way each run keeps a per-epoch checkpoint in
  `<study>/confirm_checkpoints/`, so a killed run resumes at its last epoch.
- Saved: each finished run is appended to `confirm.jsonl` at once (flushed and
  fsynced) by this process, whichever worker trained it, with the process,
  machine, device and precision that trained it. An interrupted confirmation
  resumes without retraining any finished pair. Runs that failed with an
  exception are not saved, so the next run tries them again.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from search import racing
from search.atomic import atomic_path
from search.baselines import REFERENCE
from search.policy import precision_of
from search.records import ConfirmRecord, TrialRecord, jsonable, result_fields

CONFIRM_FILE = "confirm.jsonl"
CHECKPOINT_DIR = "confirm_checkpoints"
STATE_FILE_SUFFIX = ".pt"
# Coefficients this close (absolute) make two candidates of the same formula one candidate
# for confirmation: eps inits span [-0.6, 0.5] in eafo_default, and 0.05 is under 5 % of it.
NEAR_TOLERANCE = 0.05


@dataclass(frozen=True)
class Entry:
    """A candidate chosen for confirmation."""

    label: str                   # leaderboard label: a baseline's name, or "trial_<n>"
    candidate: dict              # Candidate.to_dict()
    fingerprint: str
    search_score: float | None   # its validation score in the search (None: not searched)


def near(a: dict, b: dict, tolerance: float = NEAR_TOLERANCE) -> bool:
    """The same formula, the same learnable coefficients, and every coefficient within `tolerance`."""
    ia, ib = a.get("init") or {}, b.get("init") or {}
    return (a.get("formula") == b.get("formula") and sorted(a.get("learnable") or []) == sorted(
        b.get("learnable") or []) and set(ia) == set(ib) and all(abs(ia[k] - ib[k]) <= tolerance for k in ia))


def select(records: list[TrialRecord], top_k: int, baselines: dict, metric) -> tuple[list[Entry], list[tuple]]:
    """(the top-K distinct ok search candidates that are not baselines, then the baselines;
    the near-duplicates skipped, as (label, label of the chosen one it is near)).

    baselines: {name: spaces.Candidate}. Ranked by search score in the metric's
    direction (ties: the earlier trial).
    """
    scores = {}
    for r in records:
        if r.baseline and r.is_ok:
            scores.setdefault(r.fingerprint, r.score)
    chosen: list[Entry] = []
    skipped: list[tuple[str, str]] = []
    # The baselines are confirmed whatever happens: a candidate near one of them (CRReLU with
    # eps 0.03 instead of 0.01) would spend a slot on what is confirmed anyway.
    base = [Entry(label, c.to_dict(), c.fingerprint, scores.get(c.fingerprint)) for label, c in baselines.items()]
    seen = {e.fingerprint for e in base}
    for r in sorted((r for r in records if r.is_ok and r.duplicate_of is None and r.fingerprint),
                    key=lambda r: (-metric.sign * r.score, r.number)):
        if r.fingerprint in seen or len(chosen) == top_k:
            continue
        seen.add(r.fingerprint)
        like = next((e for e in chosen + base if near(e.candidate, r.candidate)), None)
        if like is not None:
            skipped.append((r.label, like.label))
            continue
        chosen.append(Entry(r.label, r.candidate, r.fingerprint, r.score))
    return chosen + base, skipped


# ---------------------------------------------------------------------------
# confirm.jsonl and the per-run checkpoints
# ---------------------------------------------------------------------------

def load(path: str | Path) -> list[ConfirmRecord]:
    """Records saved so far; a torn last line (a killed run) is skipped with a note."""
    path = Path(path)
    if not path.exists():
        return []
    out, seen = [], set()
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = ConfirmRecord.from_dict(json.loads(line))
        except (ValueError, TypeError) as e:
            print(f"note: {path}:{i} skipped (unreadable: {e}); that run will be repeated", file=sys.stderr)
            continue
        if rec.key not in seen:  # the first result of a (candidate, seed) pair stands
            seen.add(rec.key)
            out.append(rec)
    return out


def checkpoint_path(study_dir: str | Path, fingerprint: str, seed: int) -> Path:
    return Path(study_dir) / CHECKPOINT_DIR / f"{fingerprint}-{seed}{STATE_FILE_SUFFIX}"


class FileCheckpoint:
    """The evaluator's checkpoint hook on one file: the state after the last finished epoch.

    Written atomically (a killed run leaves the previous epoch's file, never half
    of one). On a cluster the study folder must be storage every node reaches.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> dict | None:
        import torch

        if not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def save(self, state: dict) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


def run_one(task, entry: Entry, seed: int, checkpoint=None) -> ConfirmRecord:
    """Train `entry` with `seed` and score it on the test split (resuming from `checkpoint`)."""
    import spaces

    base = dict(label=entry.label, fingerprint=entry.fingerprint, candidate=entry.candidate, seed=seed,
                pid=os.getpid(), node=platform.node(), precision=precision_of(task))
    try:
        candidate = spaces.Candidate.from_dict(entry.candidate)
        result = task.evaluate(candidate, seed=seed, split="test", checkpoint=checkpoint)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # recorded and shown, not saved: the next run tries it again
        return ConfirmRecord(**base, status="error", reason=f"{type(e).__name__}: {e}")
    fields = result_fields(result)
    status = fields["status"] if fields["status"] in ("ok", "rejected", "diverged") else "error"
    final = dict(getattr(result, "metrics", None) or {})
    metrics = {k: v for k, v in final.items() if not k.startswith("coef/")}
    return ConfirmRecord(**base, status=status, score=fields["score"] if status == "ok" else None,
                         reason=fields["reason"], learned_coefficients=fields["learned_coefficients"],
                         learned_per_layer=fields["learned_per_layer"], wall_time=fields["wall_time"],
                         metrics=jsonable(metrics), device=fields["device"],
                         resumed_from_epoch=getattr(result, "resumed_from_epoch", None))


class LocalRunner:
    """Runs confirmation in this process, one run after another."""

    def __init__(self, task, study_dir: str | Path):
        self.task, self.study_dir = task, Path(study_dir)

    def run(self, pairs: list[tuple[Entry, int]]) -> Iterator[ConfirmRecord]:
        for entry, seed in pairs:
            ckpt = FileCheckpoint(checkpoint_path(self.study_dir, entry.fingerprint, seed))
            yield run_one(self.task, entry, seed, ckpt)


# ---------------------------------------------------------------------------
# The confirmation loop: rounds of runs, each saved as it finishes
# ---------------------------------------------------------------------------

@dataclass
class Confirmation:
    records: list[ConfirmRecord]                       # saved records of these entries and seeds, then errors
    race: racing.RaceState
    runs: int = 0                                      # runs of these entries and seeds that have a record
    fixed_runs: int = 0                                # what every entry on every seed would cost
    stopped: dict[str, int] = field(default_factory=dict)  # label -> seeds it stopped at

    @property
    def complete(self) -> bool:
        return self.race.finished and not any(r.status == "error" for r in self.records)


def confirm(entries: list[Entry], seeds: list[int], study_dir: str | Path, runner, metric,
            adaptive: bool = True, progress: bool = True) -> Confirmation:
    """Run the confirmation rounds (search.racing) with `runner`; return what is saved.

    A round with a failed run (an exception) ends the confirmation after that
    round: the rerun tries the failed runs again. KeyboardInterrupt propagates;
    everything finished before it is already on disk.
    """
    from tqdm import tqdm

    study_dir = Path(study_dir)
    path = study_dir / CONFIRM_FILE
    by_key = {e.fingerprint: e for e in entries}
    reference = next(e for e in entries if e.label == REFERENCE)
    done = load(path)
    errors: list[ConfirmRecord] = []
    while True:
        state = racing.plan(list(by_key), reference.fingerprint, seeds, _results(done, by_key, seeds, metric),
                            adaptive)
        if state.finished or errors:
            break
        racing_now = [by_key[k].label for k in state.active]
        print(f"confirm round {state.round}: {len(racing_now)} candidates to {state.seeds} seeds "
              f"({len(state.todo)} runs)", file=sys.stderr)
        bar = tqdm(total=len(state.todo), desc=f"confirm round {state.round}", unit="run",
                   disable=None if progress else True, file=sys.stderr, dynamic_ncols=True)
        runs = runner.run([(by_key[k], s) for k, s in state.todo])
        try:
            with open(path, "a") as f:
                for rec in runs:
                    if rec.status == "error":
                        errors.append(rec)
                    else:
                        f.write(json.dumps(rec.to_dict(), allow_nan=False) + "\n")
                        f.flush()
                        os.fsync(f.fileno())
                        done.append(rec)
                        checkpoint_path(study_dir, rec.fingerprint, rec.seed).unlink(missing_ok=True)
                    tqdm.write(_line(rec), file=sys.stderr)
                    bar.update(1)
        finally:
            runs.close()  # a Ray runner cancels what still runs (Ctrl-C); checkpoints stay for the rerun
            bar.close()
    wanted = set(seeds)
    mine = [r for r in done if r.seed in wanted and r.fingerprint in by_key]
    return Confirmation(mine + errors, state, runs=len(mine), fixed_runs=len(entries) * len(seeds),
                        stopped={by_key[k].label: n for k, n in state.out.items()})


def _results(done: Iterable[ConfirmRecord], by_key: dict, seeds: list[int], metric) -> dict:
    """(fingerprint, seed) -> score oriented so that higher is better (None: no score)."""
    wanted = set(seeds)
    return {(r.fingerprint, r.seed): (metric.sign * r.score if r.status == "ok" else None)
            for r in done if r.fingerprint in by_key and r.seed in wanted}


def _line(rec: ConfirmRecord) -> str:
    score = f"{rec.score:.4f}" if rec.score is not None else "-"
    where = f"  ({rec.node} pid {rec.pid}, {rec.device})" if rec.device else ""
    why = f"  [{(rec.reason or '')[:80]}]" if rec.status != "ok" else ""
    return f"confirm  {rec.label:<12} seed {rec.seed:<4} {rec.status:<9} {score:>7}{where}{why}"


__all__ = ["Entry", "select", "near", "confirm", "Confirmation", "run_one", "load", "LocalRunner",
           "FileCheckpoint", "checkpoint_path", "CONFIRM_FILE", "CHECKPOINT_DIR", "NEAR_TOLERANCE"]
