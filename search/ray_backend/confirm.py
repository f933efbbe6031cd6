"""Confirmation on the cluster: each (candidate, seed) run is a Ray task on a worker.

The same terms as a search trial: `--cpus-per-trial` and `--gpus-per-trial`
reserved per run, at most `--max-concurrent` at once, a per-epoch checkpoint
(search.confirm.FileCheckpoint, in the study folder, which on several nodes
must be storage every node reaches), a worker that dies is retried
(`max_retries=MAX_FAILURES`) and resumes from that checkpoint, and a rerun of
the command resumes unfinished runs from theirs. The driver only waits and
appends each finished run's record (pid, node, device of the worker that
trained it) to confirm.jsonl, as search.confirm does for in-process runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from search.confirm import Entry, FileCheckpoint, checkpoint_path, run_one
from search.records import ConfirmRecord

MAX_FAILURES = 3   # retries of a run whose worker died (as for search trials); then it is an error


def _confirm_run(task, entry: Entry, seed: int, checkpoint: str, cpus: float) -> dict:
    """On a worker: train and score one run (a dict: plain data crosses process boundaries)."""
    from search.ray_backend.trainable import cached_task

    return run_one(cached_task(task, cpus), entry, seed, FileCheckpoint(checkpoint)).to_dict()


class RayRunner:
    """Runs a round's (entry, seed) pairs as Ray tasks; yields each record as it finishes."""

    def __init__(self, config, task, study_dir: str | Path):
        import ray

        self.study_dir = Path(study_dir).absolute()  # workers do not share the driver's working folder
        self.cpus, self.limit = config.cpus_per_trial, config.max_concurrent
        self.task = task
        self.remote = ray.remote(_confirm_run).options(
            num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial, max_retries=MAX_FAILURES,
            retry_exceptions=False)  # a Python exception is a result (an error record), not a dead worker

    def run(self, pairs: list[tuple[Entry, int]]) -> Iterator[ConfirmRecord]:
        import ray
        from ray.exceptions import RayError

        task_ref = ray.put(self.task)  # sent once, not once per run
        pending = list(pairs)
        inflight: dict = {}
        limit = self.limit or len(pending)
        try:
            while pending or inflight:
                while pending and len(inflight) < limit:
                    entry, seed = pending.pop(0)
                    ckpt = str(checkpoint_path(self.study_dir, entry.fingerprint, seed))
                    inflight[self.remote.remote(task_ref, entry, seed, ckpt, self.cpus)] = (entry, seed)
                done, _ = ray.wait(list(inflight), num_returns=1)
                for ref in done:
                    entry, seed = inflight.pop(ref)
                    try:
                        yield ConfirmRecord.from_dict(ray.get(ref))
                    except RayError as e:  # its worker died MAX_FAILURES + 1 times, or the task was lost
                        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                        yield ConfirmRecord(label=entry.label, fingerprint=entry.fingerprint,
                                            candidate=entry.candidate, seed=seed, status="error",
                                            reason=f"{type(e).__name__}: {lines[0] if lines else ''}"[:300])
        finally:  # Ctrl-C or an error: stop what runs; its checkpoint stays for the rerun
            for ref in inflight:
                ray.cancel(ref, force=True)


__all__ = ["RayRunner", "MAX_FAILURES"]
