"""bench/proxy_fidelity.py: its activations, its rank statistics and a resumable smoke run
(the 40-minute measurement itself belongs to the benchmark, not the tests)."""
import importlib.util
import json
from pathlib import Path

import pytest

import spaces
from spaces import eafo

BENCH = Path(__file__).resolve().parents[1] / "bench" / "proxy_fidelity.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_proxy_fidelity", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_twelve_distinct_activations_and_descent_steps_lower_the_entropy(bench):
    acts = {n: bench.activation(n, 0.158)[0] for n in bench.ACTIVATIONS}
    assert len(acts) >= 12 and {"prelu", "squared_relu", "gelu-eafo", "silu-eafo"} <= set(acts)
    assert len({c.fingerprint for c in acts.values()}) == len(acts)
    for base in ("gelu", "silu"):
        step = acts[f"{base}-eafo"]
        assert step.coefficients == {"eps": (bench.DESCENT_EPS, False)} and bench.DESCENT_EPS < 0
        assert eafo.output_entropy(step, 0.158) < eafo.output_entropy(base, 0.158)
    with pytest.raises(SystemExit, match="unknown activation"):
        bench.activation("gleu", 1.0)


def test_rank_agreement_has_tau_p_and_a_bootstrap_interval(bench):
    ref = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    same = bench.rank_agreement([1, 2, 3, 4, 5, 6, 7, 8], ref)
    assert same["tau"] == pytest.approx(1.0) and same["p"] < 1e-3 and same["n"] == 8
    assert same["ci95"] == [pytest.approx(1.0), pytest.approx(1.0)]
    noisy = bench.rank_agreement([2, 1, 4, 3, 6, 5, float("nan"), 7], ref)
    assert noisy["n"] == 7 and 0 < noisy["tau"] < 1
    assert noisy["ci95"][0] <= noisy["tau"] <= noisy["ci95"][1]
    assert bench.rank_agreement([1, 2], [1, 2])["tau"] is None


def test_a_finished_trial_is_read_back_not_trained_again(bench, tmp_path):
    from evaluators import ProxyTask

    task = ProxyTask(train_size=200, val_size=200, epochs=1, device="cpu", num_threads=1)
    relu = spaces.parse("relu(x)")
    first = bench.run_trial(task, "relu", relu, 1, 0, tmp_path)
    assert first["status"] == "ok" and "resumed" not in first
    (saved,) = tmp_path.iterdir()
    assert saved.name == "relu__B1__s0.json"
    again = bench.run_trial(task, "relu", relu, 1, 0, tmp_path)
    assert again["resumed"] and again["score"] == first["score"]
    # Other settings under the same name (here: the formula) are trained, not read back.
    data = json.loads(saved.read_text())
    data["settings"]["formula"] = "tanh(x)"
    saved.write_text(json.dumps(data))
    assert "resumed" not in bench.run_trial(task, "relu", relu, 1, 0, tmp_path)


def test_the_lm_track_measures_sigma_and_gradient_norm_on_the_gpt(bench):
    from evaluators import ProxyTask

    task = ProxyTask.for_dataset("shakespeare", train_size=64, val_size=1024, test_size=1024, device="cpu",
                                 num_threads=1)
    pre = bench.text_preactivation_sigma(task, batches=1)
    assert pre["layers"] == 4 and 0.01 < pre["sigma"] < 10  # one MLP activation per gpt-nano block
    relu = spaces.get_activation("relu").candidate
    g = bench.text_grad_norm(relu, task, seed=0)
    assert g > 0 and g == bench.text_grad_norm(relu, task, seed=0)  # seeded: the same batch and init


def test_the_lm_ranking_is_compared_with_the_image_one_in_each_metrics_direction(bench, tmp_path):
    from evaluators.metrics import BITS_PER_CHAR

    # image run: accuracy, higher is better; a < b < c < d
    image = {"budgets": [2, 8], "task": {"dataset": "fashion_mnist", "model": "vit-nano"},
             "activations": {n: {"mean@8": acc} for n, acc in zip("abcd", (0.80, 0.81, 0.82, 0.83))}}
    path = tmp_path / "image.json"
    path.write_text(json.dumps(image))
    # the same order in bits per character (lower is better) is tau +1, not -1
    same = {n: {"mean@8": bpc} for n, bpc in zip("abcde", (3.5, 3.4, 3.3, 3.2, 3.0))}
    cmp = bench.compare_tracks(same, BITS_PER_CHAR, 8, path)
    assert cmp["activations"] == list("abcd") and cmp["tau"] == pytest.approx(1.0)
    reversed_ = {n: {"mean@8": bpc} for n, bpc in zip("abcd", (3.2, 3.3, 3.4, 3.5))}
    assert bench.compare_tracks(reversed_, BITS_PER_CHAR, 8, path)["tau"] == pytest.approx(-1.0)
    assert bench.compare_tracks(same, BITS_PER_CHAR, 8, tmp_path / "missing.json") is None


def test_long_sets_the_reference_budget_and_must_exceed_b(bench, tmp_path, capsys):
    out = bench.main(["--budget", "1", "--long", "2", "--seeds", "1", "--train-size", "200", "--val-size", "200",
                      "--activations", "relu,tanh", "--threads", "1", "--out", str(tmp_path / "pf.json")])
    assert out["budgets"] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "pf.trials").iterdir()) == \
        ["relu__B1__s0.json", "relu__B2__s0.json", "tanh__B1__s0.json", "tanh__B2__s0.json"]
    with pytest.raises(SystemExit):
        bench.main(["--budget", "3", "--long", "3"])
    assert "must be more epochs than --budget 3" in capsys.readouterr().err
