"""The Ray backend against a real Ray head on loopback (CI's, or one started here).

Tiny models and data: each test runs in well under two minutes on 2 CPU cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback only
pytest.importorskip("ray.tune")

import spaces  # noqa: E402
from evaluators import ACCURACY, ProxyTask  # noqa: E402
from ray_helpers import (FewBases, PausingTask, cli, free_port, listening_addresses,  # noqa: E402,F401
                         ray_address, read_events, ship_by_value, wait_for_event)
from search import confirm as cm  # noqa: E402
from search import policy  # noqa: E402
from search import ray_backend as rb  # noqa: E402
from search.config import SearchConfig  # noqa: E402
from search.optuna_backend import run_optuna  # noqa: E402
from search.ray_backend.confirm import RayRunner  # noqa: E402
from search.results import write_results  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}
TINY = dict(epochs=3, train_size=256, val_size=256)


def _config(tmp_path, address, **kw) -> SearchConfig:
    return SearchConfig(space="eafo_default", runs_dir=str(tmp_path), backend="ray", ray_address=address,
                        max_concurrent=2, cpus_per_trial=1.0, **{**TINY, **kw}).validate()


N_TRIALS = 7  # asked for; FewBases has relu and gelu (the baselines again) and tanh (new):
N_EVALUATED = 5  # only 4 baselines + tanh exist, so the sampler exhausts the space


@pytest.fixture(scope="module")
def killed_worker_search(ray_address, tmp_path_factory):
    """A 7-trial search, 2 at a time, whose gelu trial's worker is SIGKILLed after epoch 1.

    The space (FewBases) proposes relu, gelu and tanh: only tanh is new, so the study
    ends when the sampler has proposed only evaluated candidates for a while. The gelu trial pauses after epoch 1 (its checkpoint
    already reported) so that the kill lands mid-trial without racing the training.
    """
    ship_by_value()  # workers get FewBases and PausingTask without importing tests/
    tmp = tmp_path_factory.mktemp("ray_fault")
    config = _config(tmp, ray_address, trials=N_TRIALS, study="fault", sampler="random")
    task = PausingTask(epochs=config.epochs, train_size=config.train_size, val_size=config.val_size,
                       device="cpu", pause_after_epoch=1, pause_seconds=30.0)
    events = config.study_dir / rb.EVENTS_FILE
    seen = {}

    def kill_gelu_after_epoch_1():
        e = wait_for_event(events, lambda e: e["event"] == "epoch" and e["number"] == 0 and e["epoch"] == 1,
                           timeout=240)
        seen["bound"] = listening_addresses({e["pid"], os.getpid()})
        # The worker persisted the checkpoint before writing the event; give the driver
        # time to register it (it polls results every 0.1 s; the trial waits 30 s).
        time.sleep(5)
        seen["killed"] = e
        os.kill(e["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_gelu_after_epoch_1, daemon=True)
    killer.start()
    t0 = time.time()
    records = rb.run_ray(config, FewBases(), task, config.study_dir, progress=False)
    killer.join(timeout=5)
    summary = write_results(config.study_dir, records, [], config, task=task, plots=False)
    info = json.loads((config.study_dir / rb.TRIALS_FILE).read_text())
    return {"config": config, "records": records, "info": info, "seen": seen, "summary": summary,
            "events": read_events(events), "wall": time.time() - t0}


def test_distributed_search_runs_trials_concurrently_and_makes_the_leaderboard(killed_worker_search):
    run = killed_worker_search
    records, info = run["records"], run["info"]
    assert [r.number for r in records] == list(range(len(records)))
    assert all(r.status in ("ok", "pruned", "rejected", "diverged") for r in records), \
        [(r.number, r.status, r.reason) for r in records]
    assert [r.baseline for r in records[:4]] == ["gelu", "relu", "silu", "crrelu"]  # baselines first
    # duplicates do not count: every candidate there is was evaluated once, then the space ran dry
    assert policy.evaluated(records) == N_EVALUATED
    assert sum(r.duplicate_of is not None for r in records) >= policy.MAX_DUPLICATES_IN_A_ROW
    # Two trials overlapped in time (Ray ran them at once), on different workers.
    spans = [(t["started_at"], t["ended_at"], t["pids"]) for t in info]
    overlaps = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    assert overlaps, spans
    assert any(a[2][0] != b[2][0] for a, b in overlaps), spans  # first attempts: different workers
    # The same results files as the Optuna backend, with every baseline on the leaderboard.
    leaderboard = json.loads((run["config"].study_dir / "leaderboard.json").read_text())
    assert {"gelu", "relu", "silu", "crrelu"} <= {row["label"] for row in leaderboard}
    trials_json = json.loads((run["config"].study_dir / "trials.json").read_text())
    assert [t["number"] for t in trials_json] == list(range(len(records)))
    # Ray's experiment lives under the study folder; everything it bound was loopback.
    assert (run["config"].study_dir / rb.EXPERIMENT).is_dir()
    assert run["seen"]["bound"] and run["seen"]["bound"] <= LOOPBACK, run["seen"]["bound"]


def test_a_fingerprint_is_trained_once(killed_worker_search):
    run = killed_worker_search
    records = run["records"]
    duplicates = [r for r in records if r.duplicate_of is not None]
    assert len(duplicates) >= 2, [(r.number, r.formula) for r in records]
    by_number = {r.number: r for r in records}
    for d in duplicates:
        owner = by_number[d.duplicate_of]
        assert owner.fingerprint == d.fingerprint and owner.duplicate_of is None
        assert (d.status, d.score) == (owner.status, owner.score)
    # Only the owners trained: one "start" per fingerprint (the killed gelu's restart aside).
    trained = {e["number"] for e in run["events"] if e["event"] == "start"}
    fingerprints = [by_number[n].fingerprint for n in trained]
    assert len(fingerprints) == len(set(fingerprints))
    assert not trained & {d.number for d in duplicates}


def test_killed_worker_resumes_from_its_last_checkpoint(killed_worker_search):
    run = killed_worker_search
    gelu = run["records"][0]
    killed = run["seen"]["killed"]
    info = run["info"][0]
    assert gelu.baseline == "gelu" and gelu.status == "ok" and gelu.score is not None
    assert info["num_failures"] == 1 and killed["pid"] in info["pids"] and len(info["pids"]) == 2
    assert info["resumed_from_epoch"] is not None and info["resumed_from_epoch"] >= 1
    # Nothing lost: every epoch once in the history, and after the restart only epochs after the checkpoint.
    assert [h["epoch"] for h in gelu.history] == [1, 2, 3]
    after = [e["epoch"] for e in run["events"] if e["number"] == 0 and e["event"] == "epoch"
             and e["pid"] != killed["pid"]]
    assert after and min(after) == info["resumed_from_epoch"] + 1


def test_rerunning_the_command_restores_a_killed_driver(ray_address, tmp_path):
    """SIGKILL the CLI after two trials finished; the same command finishes the study
    without training those two again, then confirms and writes the results."""
    args = cli("--backend", "ray", "--ray-address", ray_address, "--space", "eafo_default",
               "--epochs", "2", "--train-size", "512", "--val-size", "128", "--test-size", "200",
               "--trials", "5", "--max-concurrent", "2", "--confirm-top", "1", "--confirm-seeds", "2",
               "--runs-dir", str(tmp_path), "--study", "restore", "--device", "cpu")
    study = tmp_path / "restore"
    events = study / rb.EVENTS_FILE
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    first = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 150
        while len({e["number"] for e in read_events(events) if e["event"] == "end"}) < 2:
            assert first.poll() is None, f"the first run ended early: {first.stderr.read()[-2000:]}"
            assert time.time() < deadline, "two trials did not finish in time"
            time.sleep(0.1)
        # The trials that ended by now, and a second for the driver to record them (a worker
        # writes "end" before the driver has the result: a trial that ended just before the
        # kill may rightly be resumed from its last checkpoint).
        done_before = {e["number"] for e in read_events(events) if e["event"] == "end"}
        time.sleep(1.0)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and nothing else: its own session
        first.wait()
        first.stderr.close()
    killed_at = time.time()

    second = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "restoring Ray experiment" in second.stderr
    trials = json.loads((study / "trials.json").read_text())
    assert [t["number"] for t in trials] == list(range(5))
    assert all(t["status"] in ("ok", "pruned", "rejected", "diverged") for t in trials), trials
    # Trials finished before the kill were kept: not one epoch of them was trained again.
    retrained = {e["number"] for e in read_events(events) if e["event"] == "epoch" and e["time"] > killed_at}
    assert not retrained & done_before, (done_before, retrained)
    leaderboard = json.loads((study / "leaderboard.json").read_text())
    assert {"gelu", "relu", "silu", "crrelu"} <= {r["label"] for r in leaderboard if r["confirmed"]}
    # confirmation ran on the cluster: Ray workers (two at a time), not the driver, trained it
    confirmed = [json.loads(line) for line in (study / cm.CONFIRM_FILE).read_text().splitlines()]
    assert len({c["pid"] for c in confirmed}) >= 2 and all(c["device"] == "cpu" for c in confirmed)
    assert "confirm round 1" in second.stderr


def test_unreachable_address_is_a_one_line_usage_error(tmp_path):
    port = free_port()  # nothing listens there: refused at once, on loopback
    t0 = time.time()
    r = subprocess.run(cli("--backend", "ray", "--ray-address", f"127.0.0.1:{port}", "--epochs", "1",
                           "--train-size", "64", "--val-size", "64", "--runs-dir", str(tmp_path),
                           "--study", "unreachable", "--device", "cpu"),
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "unreachable").exists()  # nothing left behind
    assert time.time() - t0 < 60


def test_local_instance_listens_on_loopback_only():
    import psutil
    import ray

    assert not ray.is_initialized()
    assert rb.connect(None) is True
    try:
        me = psutil.Process()
        pids = {me.pid} | {p.pid for p in me.children(recursive=True)}
        bound = listening_addresses(pids)
        assert bound and bound <= LOOPBACK, bound
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    finally:
        ray.shutdown()


def test_both_backends_count_deduplicate_and_record_alike(ray_address, tmp_path, fashion_root, capsys):
    """The same search (FewBases: relu and gelu are the baselines again, tanh is new; so only 5
    distinct candidates exist) asked for 6 trials, on each backend: both hold the same 5
    evaluated candidates, record the duplicates alike, and stop on the same rule.
    The Ray driver trains nothing, so it loads no data: its dataset cache stays empty."""
    from evaluators import data as data_mod

    ship_by_value()
    task = ProxyTask(epochs=1, train_size=64, val_size=64, device="cpu", data_root=fashion_root)
    common = dict(space="eafo_default", runs_dir=str(tmp_path), trials=6, sampler="random", epochs=1,
                  train_size=64, val_size=64, heartbeat_interval=1, grace_period=2)
    results = {}
    data_mod.clear_cache()  # Ray first: nothing in this process may have loaded the data yet
    for backend in ("ray", "optuna"):
        config = SearchConfig(backend=backend, study=backend, ray_address=ray_address, max_concurrent=1,
                              **common).validate()
        config.study_dir.mkdir(parents=True, exist_ok=True)
        run = run_optuna if backend == "optuna" else rb.run_ray
        records = run(config, FewBases(), task, config.study_dir, progress=False)
        results[backend] = (records, capsys.readouterr().err)
        if backend == "ray":  # the workers trained; the driver never decoded an image
            assert data_mod._CACHE == {} and task._splits == {}
    assert data_mod._CACHE  # the check means something: the Optuna backend trains here, and loads
    fingerprints = {}
    for backend, (records, err) in results.items():
        assert [r.baseline for r in records[:4]] == ["gelu", "relu", "silu", "crrelu"], backend
        counted = [r for r in records if policy.counts(r)]
        assert len(counted) == policy.evaluated(records) == 5, backend  # duplicates did not count
        # the same words on both: the policy's note, counting what --trials counts
        assert "search stopped early: the sampler proposed" in err and "5 of 6 trials evaluated" in err, \
            (backend, err[-500:])
        duplicates = [r for r in records if r.duplicate_of is not None]
        assert len(duplicates) >= policy.MAX_DUPLICATES_IN_A_ROW, backend
        by_number = {r.number: r for r in records}
        for d in duplicates:
            owner = by_number[d.duplicate_of]
            assert owner.fingerprint == d.fingerprint and owner.duplicate_of is None, backend
            assert (d.status, d.score) == (owner.status, owner.score), backend
            assert "not trained again" in d.reason and d.device is None, backend
        for r in counted:
            assert r.status == "ok" and (r.device, r.precision) == ("cpu", "fp32") and len(r.history) == 1, backend
        crrelu = next(r for r in counted if r.baseline == "crrelu")
        assert set(crrelu.learned_per_layer) == {"eps"} and len(crrelu.learned_per_layer["eps"]) > 1
        assert crrelu.learned_coefficients["eps"] == pytest.approx(
            sum(crrelu.learned_per_layer["eps"]) / len(crrelu.learned_per_layer["eps"]))
        fingerprints[backend] = {r.fingerprint for r in counted}
    assert fingerprints["optuna"] == fingerprints["ray"]
    assert set(results["optuna"][0][0].to_dict()) == set(results["ray"][0][0].to_dict())


@pytest.fixture(scope="module")
def killed_confirmation(ray_address, tmp_path_factory):
    """Confirmation of gelu and relu on 2 seeds as Ray tasks, 2 at a time; the worker training
    relu seed 1 is SIGKILLed after its first epoch (checkpoint saved)."""
    ship_by_value()
    tmp = tmp_path_factory.mktemp("ray_confirm")
    config = _config(tmp, ray_address, study="confirm", trials=4)
    config.study_dir.mkdir(parents=True)
    marker = tmp / "paused.json"
    task = PausingTask(epochs=2, train_size=256, val_size=128, test_size=300, device="cpu", precision="fp32",
                       pause_after_epoch=1, pause_seconds=30.0, pause_formula="relu(x)", pause_seed=1,
                       pause_marker=str(marker))
    entries, _ = cm.select([], 0, {k: spaces.BASELINES[k] for k in ("gelu", "relu")}, ACCURACY)
    seen = {}

    def kill_when_paused():
        deadline = time.time() + 240
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.1)
        seen.update(json.loads(marker.read_text()))
        seen["checkpoint"] = cm.checkpoint_path(config.study_dir.absolute(), entries[1].fingerprint, 1).exists()
        os.kill(seen["pid"], signal.SIGKILL)

    killer = threading.Thread(target=kill_when_paused, daemon=True)
    killer.start()
    t0 = time.time()
    with rb.session(config):
        done = cm.confirm(entries, [1, 2], config.study_dir, RayRunner(config, task, config.study_dir), ACCURACY,
                          progress=False)
    killer.join(timeout=5)
    return {"done": done, "seen": seen, "wall": time.time() - t0, "config": config}


def test_confirmation_runs_on_ray_workers_and_records_who_trained_it(killed_confirmation):
    import platform

    done = killed_confirmation["done"]
    assert done.complete and done.runs == 4
    records = done.records
    assert all(r.status == "ok" and r.device == "cpu" and r.precision == "fp32" for r in records)
    assert all(r.node == platform.node() and r.pid != os.getpid() for r in records)  # workers, not the driver
    # Runs went to two worker processes. The finished runs may all come from one of them:
    # the other was killed mid-run, and Ray may hand its retry to the survivor.
    assert len({r.pid for r in records} | {killed_confirmation["seen"]["pid"]}) >= 2
    lines = (killed_confirmation["config"].study_dir / cm.CONFIRM_FILE).read_text().splitlines()
    assert len(lines) == 4 and all({"pid", "node", "device"} <= set(json.loads(x)) for x in lines)


def test_a_killed_confirmation_worker_is_retried_from_its_checkpoint(killed_confirmation):
    seen = killed_confirmation["seen"]
    assert seen["checkpoint"]  # epoch 1 was saved before the kill
    relu1 = next(r for r in killed_confirmation["done"].records if r.label == "relu" and r.seed == 1)
    assert relu1.pid != seen["pid"]  # another worker finished it
    assert relu1.resumed_from_epoch == 1  # from the checkpoint, not from scratch
    assert killed_confirmation["wall"] < 30 + 120  # it did not wait out the pause


def test_a_language_model_study_and_its_transfer_check_run_on_ray_workers(ray_address, tmp_path, fashion_root,
                                                                          monkeypatch):
    """The LM track on the Ray backend: Tune minimises bits per character, the leaderboard
    ranks lowest first, and the transfer runs are trained by workers and saved by the driver."""
    from search import run

    monkeypatch.setenv("EAFO_DATA_ROOT", fashion_root)
    argv = ["--dataset", "shakespeare", "--train-size", "32", "--val-size", "1024", "--test-size", "1024",
            "--epochs", "1", "--trials", "5", "--confirm-top", "1", "--confirm-seeds", "2", "--backend", "ray",
            "--ray-address", ray_address, "--max-concurrent", "2", "--runs-dir", str(tmp_path), "--study", "lm",
            "--transfer-to", "fashion_mnist:vit-nano", "--transfer-set", "train_size=128", "--transfer-set",
            "val_size=128", "--transfer-set", "test_size=128", "--transfer-set", "epochs=1"]
    assert run.main(argv) == 0
    study_dir = tmp_path / "lm"
    rows = [r for r in json.loads((study_dir / "leaderboard.json").read_text()) if r["confirmed"]]
    assert [r["mean"] for r in rows] == sorted(r["mean"] for r in rows)
    assert all(r["direction"] == "minimize" for r in rows)
    trials = json.loads((study_dir / "trials.json").read_text())
    assert all("val_bpc" in t["history"][-1] for t in trials if t["status"] == "ok")
    moved = [json.loads(x) for x in (study_dir / "transfer-fashion_mnist-vit-nano" / "confirm.jsonl")
             .read_text().splitlines()]
    assert len(moved) == 2 * len(rows) and all(r["pid"] != os.getpid() for r in moved)
    rep = json.loads((study_dir / "transfer.json").read_text())
    assert rep["second"]["direction"] == "maximize" and rep["n"] == len(rows)


def test_ray_workers_build_the_drivers_candidates_at_its_sigma_and_prefilter(ray_address, tmp_path, fashion_root):
    """--sigma and --prefilter on Ray: the space travels with its sigma, so every trial a
    worker trained is the candidate the driver's space (sigma 0.16) builds from the trial's
    params; with --prefilter 3 the study holds only the trials that trained."""
    task = ProxyTask(epochs=1, train_size=64, val_size=64, device="cpu", data_root=fashion_root)
    config = SearchConfig(space="eafo_default", runs_dir=str(tmp_path), trials=7, epochs=1, train_size=64,
                          val_size=64, backend="ray", ray_address=ray_address, max_concurrent=1, study="pf",
                          prefilter=3, sigma=0.16).validate()
    config.study_dir.mkdir(parents=True, exist_ok=True)
    space = spaces.get_space("eafo_default", sigma=0.16)
    records = rb.run_ray(config, space, task, config.study_dir, progress=False)
    assert policy.evaluated(records) == 7 and [r.baseline for r in records[:4]] == list(spaces.BASELINES)
    searched = [r for r in records if r.params is not None and r.duplicate_of is None]
    assert len(searched) == 3 and all(r.status == "ok" for r in searched)
    for r in searched:
        assert r.fingerprint == space.build(r.params).fingerprint
        assert r.candidate == space.build(r.params).to_dict()


def test_a_driver_without_the_data_searches_on_workers_that_have_it(ray_address, tmp_path, monkeypatch, capsys):
    """On a cluster the data check and the sigma measurement run on a worker: a driver whose
    EAFO_DATA_ROOT is an empty folder (the workers do not see the variable, and find Debian's
    copy) searches and confirms, and sigma.json holds the worker's measurement."""
    from search import run

    empty = tmp_path / "no-data"
    empty.mkdir()
    monkeypatch.setenv("EAFO_DATA_ROOT", str(empty))
    with pytest.raises(ValueError):  # this process has no data
        ProxyTask(train_size=64, val_size=64).check_data()
    argv = ["--trials", "4", "--epochs", "1", "--train-size", "64", "--val-size", "64", "--test-size", "100",
            "--confirm-seeds", "2", "--baselines", "gelu,relu", "--backend", "ray", "--ray-address", ray_address,
            "--max-concurrent", "2", "--runs-dir", str(tmp_path / "runs"), "--study", "nodata"]
    assert run.main(argv) == 0, capsys.readouterr().err
    study_dir = tmp_path / "runs" / "nodata"
    sigma = json.loads((study_dir / "sigma.json").read_text())
    assert sigma["setting"] == "measured" and sigma["sigma"] == pytest.approx(0.158, abs=0.005)
    assert any(r["confirmed"] for r in json.loads((study_dir / "leaderboard.json").read_text()))


def test_workers_without_the_data_are_a_one_line_error_before_anything_is_written(ray_address, tmp_path, capsys):
    from search import run

    argv = ["--trials", "4", "--epochs", "1", "--train-size", "64", "--val-size", "64", "--backend", "ray",
            "--ray-address", ray_address, "--data-root", str(tmp_path / "missing"),
            "--runs-dir", str(tmp_path / "runs"), "--study", "nodata"]
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "on the Ray cluster's workers" in err[0] and str(tmp_path / "missing") in err[0]
    assert not (tmp_path / "runs" / "nodata").exists()
