"""A Ray head on loopback for the Ray tests, and small helpers to watch and kill trials.

CI starts a head itself and exports EAFO_RAY_ADDRESS=127.0.0.1:6379; without
it, `ray_address` starts a head on a free loopback port (its own temp folder,
so it does not touch /tmp/ray or another head) and stops it at the end, by
its own process group, never with a broad `ray stop`.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from evaluators import ProxyTask
from spaces.bases import get_base
from spaces.candidate import Candidate
from spaces.space import Space

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
HEAD_START_TIMEOUT = 120  # seconds; a 2-core machine shared with other jobs is slow to start Ray


def free_port() -> int:
    """A loopback port nothing listens on (bound and released at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(num_cpus: int = 2) -> tuple[subprocess.Popen, str, str]:
    """`ray start --head --block` on 127.0.0.1; returns (process, address, temp folder)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="eafo-ray-", dir="/tmp")  # short: Ray's socket paths must fit
    log = open(Path(temp_dir) / "head.log", "w")
    cmd = ["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
           f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={temp_dir}", "--block"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **LOOPBACK_ENV},
                            start_new_session=True)
    deadline = time.time() + HEAD_START_TIMEOUT
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}: "
                               f"{(Path(temp_dir) / 'head.log').read_text()[-2000:]}")
        if "Ray runtime started" in (Path(temp_dir) / "head.log").read_text():
            return proc, f"127.0.0.1:{port}", temp_dir
        time.sleep(0.5)
    stop_head(proc)
    raise RuntimeError(f"the Ray head did not start within {HEAD_START_TIMEOUT} s")


def stop_head(proc: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` stops its processes; anything left of its group is killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this fixture created (start_new_session)
    except ProcessLookupError:
        pass


def listening_addresses(pids: set[int]) -> set[str]:
    """Local addresses on which the given processes listen (from `ss -ltnp`)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and any(f"pid={p}," in line for p in pids):
            found.add(parts[3].rsplit(":", 1)[0])
    return found


def group_pids(pgid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True, check=True).stdout
    return {int(a) for a, b in (line.split() for line in out.splitlines() if line.strip()) if int(b) == pgid}


@pytest.fixture(scope="session")
def ray_address():
    """The address of a Ray head on loopback: CI's (EAFO_RAY_ADDRESS) or one started here."""
    os.environ.update(LOOPBACK_ENV)
    address = os.environ.get("EAFO_RAY_ADDRESS")
    if address:
        host = address.rsplit(":", 1)[0]
        assert host in ("127.0.0.1", "localhost"), f"EAFO_RAY_ADDRESS {address} is not a loopback address"
        yield address
        return
    proc, address, temp_dir = start_head()
    try:
        pids = group_pids(proc.pid)
        bound = listening_addresses(pids)
        assert bound and all(a in ("127.0.0.1", "[::ffff:127.0.0.1]") for a in bound), \
            f"the test head listens beyond loopback: {bound}"
        yield address
    finally:
        stop_head(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def read_events(path: Path) -> list[dict]:
    """The events in a study's events file (`path`: <study>/EVENTS_FILE), as the backend reads them."""
    from search.ray_backend import EVENTS_FILE
    from search.ray_backend import read_events as read_study_events
    assert path.name == EVENTS_FILE
    return read_study_events(path.parent)


def wait_for_event(path: Path, predicate, timeout: float, poll: float = 0.05, proc=None) -> dict:
    """The first event in the events file that satisfies `predicate`, waiting up to `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for e in read_events(path):
            if predicate(e):
                return e
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (code {proc.returncode}) before the awaited event")
        time.sleep(poll)
    raise AssertionError(f"no matching event in {path} within {timeout} s")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "search.run", *args]


class FewBases(Space):
    """A space whose relu and gelu are the baselines again (duplicates); tanh is new.

    Not registered; Ray workers get it by value (see `ship_by_value`).
    """

    name = "test_few_bases"
    CHOICES = ("relu", "gelu", "tanh")

    def suggest(self, trial) -> dict:
        return {"base": trial.suggest_categorical("base", list(self.CHOICES))}

    def build(self, params: dict) -> Candidate:
        return Candidate.from_expr(get_base(self._choice(params, "base", self.CHOICES)))


def ship_by_value() -> None:
    """Let Ray workers unpickle this module's classes without importing it (tests/ is
    not on their path): cloudpickle sends them by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class PausingTask(ProxyTask):
    """A task that stops for a while after one epoch of one candidate (its checkpoint
    already saved), so that a test can kill the worker mid-trial without racing the
    training. It pauses only when it trains that epoch: a trial resumed past it does not.
    With `pause_marker`, the pausing process writes its pid there first (who to kill);
    with `pause_seed`, only that seed pauses."""

    pause_after_epoch: int = 1
    pause_seconds: float = 0.0
    pause_formula: str = "gelu(x)"
    pause_marker: str | None = None
    pause_seed: int | None = None

    def evaluate(self, candidate, seed=0, report=None, split="val", checkpoint=None):
        def slow_report(epoch, metrics):
            if report is not None:
                report(epoch, metrics)
            if epoch == self.pause_after_epoch and candidate.formula == self.pause_formula \
                    and self.pause_seed in (None, seed):
                if self.pause_marker:
                    Path(self.pause_marker).write_text(json.dumps({"pid": os.getpid(), "seed": seed}))
                time.sleep(self.pause_seconds)

        return super().evaluate(candidate, seed=seed, report=slow_report, split=split, checkpoint=checkpoint)
