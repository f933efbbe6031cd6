"""Confirmation: one seed lies, so the best candidates are trained again.

The top-K distinct (by fingerprint) ok candidates of the search and the four
baselines are retrained with fresh seeds (never the search seed) at the full
budget, and scored on the held-out test split, which the search never saw.
Each finished (candidate, seed) run is appended to `confirm.jsonl` at once
(flushed and fsynced), so an interrupted confirmation resumes without
retraining any finished pair. Runs that failed with an exception are not
saved, so the next run tries them again.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import spaces
from search.records import ConfirmRecord, TrialRecord, jsonable, result_fields

CONFIRM_FILE = "confirm.jsonl"


@dataclass(frozen=True)
class Entry:
    """A candidate chosen for confirmation."""

    label: str                   # leaderboard label: a baseline's name, or "trial_<n>"
    candidate: dict              # Candidate.to_dict()
    fingerprint: str
    search_score: float | None   # its validation accuracy in the search (None: not searched)


def select(records: list[TrialRecord], top_k: int) -> list[Entry]:
    """The top-K distinct ok search candidates that are not baselines, then the 4 baselines.

    Ranked by search score (ties: the earlier trial); duplicates are skipped.
    """
    baseline_fps = {c.fingerprint: label for label, c in spaces.BASELINES.items()}
    scores = {}
    for r in records:
        if r.baseline and r.is_ok:
            scores.setdefault(r.fingerprint, r.score)
    chosen: list[Entry] = []
    seen = set(baseline_fps)
    for r in sorted((r for r in records if r.is_ok and r.duplicate_of is None and r.fingerprint),
                    key=lambda r: (-r.score, r.number)):
        if r.fingerprint in seen:
            continue
        seen.add(r.fingerprint)
        chosen.append(Entry(r.label, r.candidate, r.fingerprint, r.score))
        if len(chosen) == top_k:
            break
    for label, c in spaces.BASELINES.items():
        chosen.append(Entry(label, c.to_dict(), c.fingerprint, scores.get(c.fingerprint)))
    return chosen


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


def pending(entries: list[Entry], seeds: list[int], done: list[ConfirmRecord]) -> list[tuple[Entry, int]]:
    """(entry, seed) pairs still to run, seed by seed: an interrupted confirmation
    leaves every candidate with the same seeds done, as far as it got."""
    have = {r.key for r in done}
    return [(e, s) for s in seeds for e in entries if (e.fingerprint, s) not in have]


def confirm(task, entries: list[Entry], seeds: list[int], study_dir: str | Path,
            progress: bool = True) -> list[ConfirmRecord]:
    """Run every pending (entry, seed) on split="test"; return all records for these seeds.

    KeyboardInterrupt propagates; everything finished before it is already on disk.
    """
    from tqdm import tqdm

    path = Path(study_dir) / CONFIRM_FILE
    done = load(path)
    todo = pending(entries, seeds, done)
    errors: list[ConfirmRecord] = []
    if todo:
        bar = tqdm(total=len(todo), desc="confirm", unit="run", disable=None if progress else True,
                   file=sys.stderr, dynamic_ncols=True)
        try:
            with open(path, "a") as f:
                for entry, seed in todo:
                    bar.set_postfix_str(f"{entry.label} seed {seed}")
                    rec = run_one(task, entry, seed)
                    if rec.status == "error":
                        errors.append(rec)
                    else:
                        f.write(json.dumps(rec.to_dict(), allow_nan=False) + "\n")
                        f.flush()
                        os.fsync(f.fileno())
                        done.append(rec)
                    score = f"{rec.score:.4f}" if rec.score is not None else "-"
                    tqdm.write(f"confirm  {entry.label:<12} seed {seed:<4} {rec.status:<9} {score:>7}"
                               + (f"  [{(rec.reason or '')[:80]}]" if rec.status != "ok" else ""),
                               file=sys.stderr)
                    bar.update(1)
        finally:
            bar.close()
    wanted = set(seeds)
    return [r for r in done if r.seed in wanted] + errors


def run_one(task, entry: Entry, seed: int) -> ConfirmRecord:
    """Train `entry` with `seed` and score it on the test split."""
    base = dict(label=entry.label, fingerprint=entry.fingerprint, candidate=entry.candidate, seed=seed)
    try:
        candidate = spaces.BASELINES[entry.label] if entry.label in spaces.BASELINES \
            else spaces.Candidate.from_dict(entry.candidate)
        result = task.evaluate(candidate, seed=seed, split="test")
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
                         wall_time=fields["wall_time"],
                         metrics=jsonable(metrics))


__all__ = ["Entry", "select", "confirm", "run_one", "load", "pending", "CONFIRM_FILE"]
