"""`python -m search.run` end to end on real Fashion-MNIST subsets (tiny budgets, CPU).

What is checked: the files a user gets, that a rerun does no work twice, that a
run killed with SIGKILL or stopped with Ctrl-C loses no finished trial, and that
bad input ends with one line on stderr and exit code 2 without touching files.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import evaluators
import spaces
from search import run
from search.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-size", "300", "--val-size", "200", "--test-size", "300", "--epochs", "1",
        "--trials", "6", "--confirm-top", "1", "--confirm-seeds", "2"]
STUDY = "eafo_default-fashion_mnist-vit-nano"
BEST_KEYS = {"study", "label", "candidate", "params", "fingerprint", "learned_coefficients", "confirmed",
             "vs_gelu", "task", "search", "versions", "created"}
ROW_KEYS = {"rank", "label", "candidate", "formula", "fingerprint", "n_seeds", "mean", "std", "per_seed",
            "mean_diff_vs_gelu", "ci_low", "ci_high", "search_score", "learned_coefficients"}


@pytest.fixture(autouse=True)
def _data(fashion_root, monkeypatch):
    monkeypatch.setenv("EAFO_DATA_ROOT", fashion_root)


def _load(study_dir: Path, name: str = STUDY):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


# ---------------------------------------------------------------------------
# The happy path, and a rerun that does nothing twice
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fashion_root):
    runs = tmp_path_factory.mktemp("runs")
    argv = TINY + ["--runs-dir", str(runs)]
    with pytest.MonkeyPatch.context() as mp:  # restored after: later test modules see the environment as it was
        mp.setenv("EAFO_DATA_ROOT", fashion_root)
        rc = run.main(argv)
    return rc, runs / STUDY, argv


def test_a_search_writes_the_leaderboard_best_json_and_plots_with_every_baseline(finished_run, capsys):
    rc, study_dir, _ = finished_run
    assert rc == 0
    for name in ("leaderboard.csv", "leaderboard.json", "best.json", "activations.png", "history.png",
                 "zero_cost.png", "config.json", "trials.json", "confirm.jsonl", "summary.txt", "study.db"):
        assert (study_dir / name).is_file(), name
    for png in ("activations.png", "history.png", "zero_cost.png"):
        assert (study_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = json.loads((study_dir / "leaderboard.json").read_text())
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(ROW_KEYS <= set(r) for r in rows)
    confirmed = {r["label"]: r for r in rows if r["confirmed"]}
    assert set(spaces.BASELINES) <= set(confirmed)
    assert all(r["n_seeds"] == 2 and len(r["per_seed"]) == 2 for r in confirmed.values())
    assert confirmed["gelu"]["mean_diff_vs_gelu"] == 0.0
    means = [r["mean"] for r in rows if r["confirmed"]]
    assert means == sorted(means, reverse=True)  # ranked on confirmed results
    header = (study_dir / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert {"rank", "label", "formula", "mean", "std", "ci_low", "ci_high"} <= set(header)

    best = json.loads((study_dir / "best.json").read_text())
    assert BEST_KEYS <= set(best)
    assert best["study"] == STUDY and best["label"] == rows[0]["label"]
    assert spaces.Candidate.from_dict(best["candidate"]).fingerprint == best["fingerprint"]
    assert best["confirmed"]["metric"] == "test_acc" and best["confirmed"]["n_seeds"] == 2
    # the resolved device and precision, never "auto", in best.json and in every record
    assert (best["task"]["device"], best["task"]["precision"]) == ("cpu", "fp32")
    assert best["hardware"]["devices"] == ["cpu"] and best["hardware"]["precisions"] == ["fp32"]
    assert best["confirmed"]["seeds"] == [1, 2]  # fresh seeds, never the search seed 0
    assert {"mean_diff", "ci_low", "ci_high", "p_holm", "beats_gelu", "decision"} <= set(best["vs_gelu"])
    assert best["task"]["epochs"] == 1 and best["task"]["train_size"] == 300
    assert best["search"] == {"backend": "optuna", "n_trials": 6, "sampler": "tpe"}
    assert {"python", "torch", "timm", "optuna", "sympy", "numpy"} <= set(best["versions"])

    lines = [json.loads(line) for line in (study_dir / "confirm.jsonl").read_text().splitlines()]
    n_top = sum(1 for r in confirmed.values() if r["label"] not in spaces.BASELINES)
    assert len(lines) == (n_top + 4) * 2
    assert all(r["pid"] and r["node"] and r["device"] == "cpu" and r["precision"] == "fp32" for r in lines)
    trials = json.loads((study_dir / "trials.json").read_text())
    assert all(t["device"] == "cpu" and t["precision"] == "fp32" for t in trials if t["duplicate_of"] is None)
    assert not (study_dir / "confirm_checkpoints").exists() or \
        not list((study_dir / "confirm_checkpoints").iterdir())  # finished runs leave no checkpoint
    assert SearchConfig.load(study_dir / "config.json").trials == 6
    # sigma: measured on vit-nano at init (0.02 sqrt(64) = 0.16), saved, used by the space and scores
    sigma = json.loads((study_dir / "sigma.json").read_text())
    assert sigma["setting"] == "measured" and sigma["sigma"] == pytest.approx(0.158, abs=0.005)
    assert sigma["preactivation"]["model"] == "vit-nano" and sigma["preactivation"]["mlp"] == "plain"
    assert best["sigma"] == sigma
    from evaluators import entropy_score
    assert rows[0]["negentropy"] == pytest.approx(entropy_score(
        spaces.Candidate.from_dict(rows[0]["candidate"]), sigma["sigma"])["negentropy"])


def test_running_the_same_command_again_trains_nothing(finished_run, monkeypatch, capsys):
    rc, study_dir, argv = finished_run
    assert rc == 0
    confirm_before = (study_dir / "confirm.jsonl").read_bytes()
    n_before = len(_load(study_dir).trials)

    def no_training(*a, **k):
        raise AssertionError("a rerun of a finished study must not train")

    monkeypatch.setattr(evaluators.ProxyTask, "evaluate", no_training)
    assert run.main(argv) == 0
    assert len(_load(study_dir).trials) == n_before
    assert (study_dir / "confirm.jsonl").read_bytes() == confirm_before
    out = capsys.readouterr().out
    assert "gelu" in out and "reference" in out and "vs GELU" in out


# ---------------------------------------------------------------------------
# Bad input: exit code 2, one line on stderr, nothing touched
# ---------------------------------------------------------------------------

def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def existing_runs(tmp_path):
    """A runs folder with an earlier study in it, and a corrupt one beside it."""
    runs = tmp_path / "runs"
    study_dir = runs / STUDY
    study_dir.mkdir(parents=True)
    config = SearchConfig(epochs=3, runs_dir=str(runs))
    (study_dir / "config.json").write_text(json.dumps(config.to_dict()))
    optuna.create_study(study_name=STUDY, storage=f"sqlite:///{study_dir / 'study.db'}", direction="maximize")
    (study_dir / "leaderboard.json").write_text("[]\n")
    (runs / "corrupt").mkdir()
    (runs / "corrupt" / "study.db").write_bytes(b"this is not a database" * 100)
    (runs / "notoptuna").mkdir()
    con = sqlite3.connect(runs / "notoptuna" / "study.db")
    con.execute("create table t (x)")
    con.commit()
    con.close()
    (runs / "badconfig").mkdir()
    (runs / "badconfig" / "config.json").write_text("{not json")
    return runs


BAD = {
    "unknown space": (["--space", "nope"], "unknown space"),
    "unknown dataset": (["--dataset", "mnist_typo"], "unknown dataset"),
    "unknown model": (["--model", "vit-huge"], "unknown model"),
    "zero trials": (["--trials", "0"], "--trials"),
    "negative trials": (["--trials", "-3"], "--trials"),
    "zero epochs": (["--epochs", "0"], "--epochs"),
    "zero timeout": (["--timeout", "0"], "--timeout"),
    "one confirmation seed": (["--confirm-seeds", "1"], "--confirm-seeds"),
    "train set larger than the data": (["--train-size", "70000"], "train_size"),
    "test set larger than the data": (["--test-size", "20000"], "test_size=20000"),
    "unknown sampler": (["--sampler", "cmaes"], "--sampler"),
    "unreachable storage folder": (["--storage", "sqlite:////nonexistent/dir/x.db"], "does not exist"),
    "not a storage url": (["--storage", "not a url"], "not a database URL"),
    "unreachable server": (["--storage", "postgresql://u@127.0.0.1:1/db"], "storage"),
    "corrupt database": (["--study", "corrupt"], "not a readable SQLite database"),
    "sqlite but not optuna": (["--study", "notoptuna"], "not an Optuna one"),
    "corrupt config.json": (["--study", "badconfig"], "not a readable config"),
    "other settings than the study's": (["--epochs", "1"], "was run with epochs=3"),
    "another sigma than the study's": (["--epochs", "3", "--sigma", "1"], "was run with sigma='measured' (now 1.0)"),
    "a sigma that is no width": (["--sigma", "0"], "--sigma"),
    "no proposal per trial": (["--prefilter", "0"], "--prefilter"),
    "missing data root": (["--data-root", "/nonexistent/data"], "Fashion-MNIST not found"),
    "unknown baseline": (["--baselines", "gelu,nope"], "valid names: " + ", ".join(spaces.list_activations())),
    "baselines without gelu": (["--baselines", "relu,silu"], "must include gelu"),
    "a baseline twice": (["--baselines", "gelu,relu,relu"], "relu named twice"),
    "gpus reserved for a cpu run": (["--device", "cpu", "--gpus-per-trial", "1"], "does not use"),
    "ray: cuda without a gpu per trial": (["--backend", "ray", "--device", "cuda"], "--gpus-per-trial > 0"),
    "ray: a numbered cuda device": (["--backend", "ray", "--device", "cuda:1", "--gpus-per-trial", "1"],
                                    "use --device cuda"),
    "ray options without --backend ray": (["--ray-address", "127.0.0.1:1", "--max-concurrent", "2"],
                                          "--ray-address, --max-concurrent are options of --backend ray"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input_exits_2_with_one_line_and_touches_nothing(case, existing_runs, capsys):
    args, expected = BAD[case]
    before = _snapshot(existing_runs)
    rc = run.main(["--runs-dir", str(existing_runs), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"{run.PROG}: error:") and expected in err and "Traceback" not in err
    assert _snapshot(existing_runs) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_missing_device_is_bad_input(existing_runs, capsys):
    before = _snapshot(existing_runs)
    assert run.main(["--runs-dir", str(existing_runs), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert _snapshot(existing_runs) == before


def test_bad_input_from_a_real_process_prints_no_traceback(tmp_path):
    for args in (["--trials", "0"], ["--space", "nope"]):
        p = subprocess.run([sys.executable, "-m", "search.run", "--runs-dir", str(tmp_path / "r"), *args],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------
# Nothing is lost: SIGKILL and Ctrl-C in the middle of a trial
# ---------------------------------------------------------------------------

def _states(db: Path) -> list[tuple[int, str, bool]]:
    """(number, state, has a heartbeat) of each trial, read-only."""
    if not db.exists():
        return []
    try:
        con = sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("select number, state, trial_id in (select trial_id from trial_heartbeats) "
                               "from trials order by number").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []


def _start_and_wait_mid_trial(argv, db: Path, min_complete: int, timeout: float = 150):
    """Start the CLI; return the process once a trial runs after `min_complete` finished ones."""
    proc = subprocess.Popen([sys.executable, "-m", "search.run", *argv], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = _states(db)
        # mid-trial: running, with its heartbeat thread started (so past study.ask())
        if sum(s == "COMPLETE" for _, s, _ in states) >= min_complete and \
                any(s == "RUNNING" and beat for _, s, beat in states):
            time.sleep(0.1)
            return proc, states
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no running trial seen; states {_states(db)}; stderr {proc.communicate()[1][-2000:]}")


def _assert_no_fingerprint_trained_twice(study):
    trained = [t.user_attrs["fingerprint"] for t in study.trials
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.user_attrs.get("duplicate_of") is None]
    assert len(trained) == len(set(trained))


def _search_only(argv):
    """What `main(argv)` does before confirmation: validate, then run the backend."""
    config = run.config_from_args(run.build_parser().parse_args(argv))
    space, task, backend = run.prepare(config)
    return backend.search(config, space, task, config.study_dir)


def test_a_run_killed_mid_trial_loses_nothing_and_its_trial_is_retried(tmp_path):
    study_dir = tmp_path / STUDY
    argv = TINY + ["--trials", "5", "--runs-dir", str(tmp_path), "--heartbeat-interval", "1",
                   "--grace-period", "2"]
    proc, _ = _start_and_wait_mid_trial(argv, study_dir / "study.db", min_complete=1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    study = _load(study_dir)
    done = {t.number: (t.value, t.user_attrs["fingerprint"]) for t in study.trials if t.state == TrialState.COMPLETE}
    killed = [t for t in study.trials if t.state == TrialState.RUNNING]
    assert done and len(killed) == 1
    killed = killed[0]
    time.sleep(2.5)  # let its heartbeat go stale (grace period 2 s)

    records = _search_only(argv)  # the rerun's search phase (confirmation is tested above)
    study = _load(study_dir)
    by_number = {t.number: t for t in study.trials}
    for number, (value, fp) in done.items():  # every finished trial kept as it was
        t = by_number[number]
        assert t.state == TrialState.COMPLETE and (t.value, t.user_attrs["fingerprint"]) == (value, fp)
    assert by_number[killed.number].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert retries[0].params == killed.params
    assert retries[0].user_attrs.get("baseline") == killed.user_attrs.get("baseline")
    _assert_no_fingerprint_trained_twice(study)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 5
    assert next(r for r in records if r.number == killed.number).status == "interrupted"


def test_ctrl_c_inside_a_storage_call_is_raised_after_it_returns():
    """A KeyboardInterrupt must not land inside a SQLite write: it can leave the write
    lock held, the interrupted trial's own bookkeeping then fails, and Optuna would take
    that for a trial error and go on searching. The search's handler defers a signal
    that arrives inside sqlalchemy/sqlite3/optuna.storages and sends it again, so the
    call completes and the interrupt is raised right after it."""
    ns = {"__name__": "sqlalchemy.engine.stand_in"}  # a function that runs as sqlalchemy code
    exec("import os, signal, time\n"
         "def write(done):\n"
         "    os.kill(os.getpid(), signal.SIGINT)\n"
         "    time.sleep(0.02)\n"
         "    done.append(True)\n", ns)
    done = []
    previous = signal.signal(signal.SIGINT, run._interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            ns["write"](done)
            assert done == [True]  # the signal arrived inside the call, which still finished
            time.sleep(2)  # the deferred signal: raised here, outside storage code
        assert done == [True]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_saves_the_partial_leaderboard_and_says_how_to_resume(tmp_path):
    study_dir = tmp_path / STUDY
    argv = TINY + ["--trials", "5", "--runs-dir", str(tmp_path)]
    proc, _ = _start_and_wait_mid_trial(argv, study_dir / "study.db", min_complete=1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with:" in err and "python -m search.run" in err and "Traceback" not in err
    rows = json.loads((study_dir / "leaderboard.json").read_text())
    study = _load(study_dir)
    complete = {t.user_attrs["fingerprint"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert complete and complete <= {r["fingerprint"] for r in rows}
    assert "gelu" in out  # the partial table
    assert not (study_dir / "best.json").exists()  # nothing is confirmed yet
    stopped = [t for t in study.trials if t.state == TrialState.FAIL]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(stopped) == 1 and stopped[0].user_attrs["status"] == "interrupted"
    assert any(t.system_attrs.get("retry_history") == [stopped[0].number] for t in waiting)


def test_a_study_that_is_running_elsewhere_is_not_run_twice(existing_runs, capsys):
    """The study lock is a filelock lock, held by another process here (the OS drops it when
    that process dies, even on SIGKILL)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from search import lock; held = lock.acquire(Path(sys.argv[1])); "
                               "print('held', flush=True); time.sleep(60)", str(existing_runs / STUDY)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _snapshot(existing_runs)
        assert run.main(["--runs-dir", str(existing_runs), "--epochs", "3"]) == 2
        err = capsys.readouterr().err
        assert "being run by another process" in err and f"pid {holder.pid}" in err
        assert len(err.strip().splitlines()) == 1
        assert _snapshot(existing_runs) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed): its lock went with it
    from search import lock
    assert lock.holder(existing_runs / STUDY) is None


def test_trials_that_only_hold_the_baselines_warn_that_nothing_is_searched(tmp_path, capsys):
    argv = ["--train-size", "64", "--val-size", "50", "--test-size", "100", "--epochs", "1", "--trials", "4",
            "--confirm-seeds", "2", "--runs-dir", str(tmp_path)]
    assert run.main(argv) == 0
    err = capsys.readouterr().err
    assert "--trials 4 holds only the 4 baselines: nothing will be searched" in err
    rows = json.loads((tmp_path / STUDY / "leaderboard.json").read_text())
    assert {r["label"] for r in rows} == set(spaces.BASELINES)
