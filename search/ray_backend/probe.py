"""Checking the data, and measuring sigma, where a cluster's trials run.

A driver that joins a cluster (`--ray-address`) trains nothing: its workers read
the dataset. So the check that the data is there and every size fits it, and the
measurement of the activation's input std (`--sigma measured`), run as one Ray
task with a trial's resources, on a worker, before anything is written. The
driver then needs no copy of the dataset, and a worker without one is a
one-line usage error before the search starts, not a failure of every trial.
"""
from __future__ import annotations

from search.exceptions import UsageError


def _probe(task, transfer_task, measure_sigma: bool) -> dict | None:
    """On a worker: raise ValueError unless both tasks' data is there; the measured sigma."""
    from search.run import measured_sigma

    task.check_data()
    if transfer_task is not None:
        transfer_task.check_data()
    return measured_sigma(task) if measure_sigma else None


def probe_on_cluster(config, task, transfer_task=None, measure_sigma: bool = True) -> dict | None:
    """Run the data check (and the sigma measurement) on a worker of `config.ray_address`.

    Returns the sigma dict of search.run.resolve_sigma when `measure_sigma`, else None.
    A ValueError on the worker (no data, a size too large) becomes a UsageError with
    its message. Joins and leaves the cluster: the search joins it again.
    """
    import ray

    from search.ray_backend.connection import check_resources, connect

    owned = connect(config.ray_address)
    try:
        check_resources(ray.cluster_resources(), config)  # else the probe would wait for ever
        remote = ray.remote(_probe).options(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial,
                                            max_retries=0)
        try:
            return ray.get(remote.remote(task, transfer_task, measure_sigma))
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
            if isinstance(cause, ValueError):
                message = " ".join(str(cause).split())
                raise UsageError(f"on the Ray cluster's workers: {message}") from None
            raise
    finally:
        if owned:
            ray.shutdown()


__all__ = ["probe_on_cluster"]
