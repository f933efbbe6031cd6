"""bench/prefilter_vs_tpe.py: a tiny run on real Fashion-MNIST, and its arithmetic checked
from the scores it saved (which arm is better is the benchmark's to say, not the tests')."""
import importlib.util
import json
import math
import statistics
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "prefilter_vs_tpe.py"


def test_a_tiny_run_counts_trainings_to_a_candidate_within_noise_of_the_best(tmp_path, fashion_root, monkeypatch):
    monkeypatch.setenv("EAFO_DATA_ROOT", fashion_root)
    spec = importlib.util.spec_from_file_location("bench_prefilter_vs_tpe", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out_path = tmp_path / "out.json"
    out = bench.main(["--repeats", "2", "--trials", "6", "--prefilter", "3", "--train-size", "64",
                      "--val-size", "50", "--out", str(out_path)])
    assert json.loads(out_path.read_text())["summary"] == out["summary"]
    arms = ("tpe", "prefilter_3")
    assert set(out["summary"]) == set(arms)
    # each arm of each repeat trained the 4 baselines and 2 searched candidates, at most 2 + 2 apart
    assert 2 * 4 + 2 <= out["trainings"] <= 2 * (4 + 2 + 2)
    assert out["noise_sd"] >= 0 and out["sigma"] > 0
    for row in out["per_repeat"]:
        best = max(row[a]["final_best"] for a in arms)
        assert row["best"] == best and row["target"] == best - out["noise_sd"]
        for a in arms:
            so_far = row[a]["best_so_far"]
            assert len(so_far) == 6 and so_far == sorted(so_far)  # a running maximum
            hit = next((i + 1 for i, v in enumerate(so_far) if v >= row["target"]), None)
            assert row[a]["trainings_to_target"] == hit
    for a in arms:
        hits = [r[a]["trainings_to_target"] or 7 for r in out["per_repeat"]]
        assert out["summary"][a]["mean_trainings_to_target"] == statistics.mean(hits)
        assert math.isclose(out["summary"][a]["mean_final_best"],
                            statistics.mean(r[a]["final_best"] for r in out["per_repeat"]))
