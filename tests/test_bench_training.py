"""bench/activation_in_training.py runs and reports every activation against nn.GELU
(timings themselves are not asserted: they belong to the benchmark, not the tests)."""
import importlib.util
from pathlib import Path

from spaces.codegen import module_of

BENCH = Path(__file__).resolve().parents[1] / "bench" / "activation_in_training.py"


def test_a_short_run_reports_ms_per_step_and_the_ratio_to_gelu(capsys):
    spec = importlib.util.spec_from_file_location("bench_activation_in_training", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--rounds", "1", "--batch-size", "4", "--device", "cpu", "--malloc", "default"])
    names = set(bench.activations())
    assert set(out["ms_per_step"]) == names == set(out["ratio_vs_gelu"])
    assert out["ratio_vs_gelu"]["nn.GELU"] == 1.0
    assert all(v > 0 for v in out["ms_per_step"].values())
    assert set(out["page_faults_per_step"]) == names and out["allocator"] == "default"
    # what ran, as each generated module's kernel_info() says: float32 CPU, our C kernels
    assert out["kernels"] == {n: "c" for n in names if n.startswith("generated")}
    assert '"ratio_vs_gelu"' in capsys.readouterr().out  # the JSON went to stdout


def test_fused_run_compiles_generated_kernels_and_switches_them_back(capsys):
    spec = importlib.util.spec_from_file_location("bench_activation_in_training", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = bench.main(["--rounds", "1", "--batch-size", "2", "--device", "cpu", "--fused", "--malloc", "default"])
    assert out["fused"] is True and out["ratio_vs_gelu"]["nn.GELU"] == 1.0
    for name, cls in bench.activations().items():
        if name.startswith("generated"):  # the shared classes are left as they were found
            assert module_of(cls).kernel_info()["compiled"] is False
