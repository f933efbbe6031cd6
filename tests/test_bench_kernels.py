"""bench/activation_kernels.py: the memory claims it reports hold (timings are not asserted:
this machine is shared; the script reports them against nn.GELU from the same run)."""
import importlib.util
import json
from pathlib import Path

import pytest

from spaces import registry

BENCH = Path(__file__).resolve().parents[1] / "bench" / "activation_kernels.py"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.setattr(registry, "_registered", [])  # the script registers a temp folder
    spec = importlib.util.spec_from_file_location("activation_kernels", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_reports_saved_memory_and_ratios(bench, capsys):
    assert bench.main(["--quick", "--device", "cpu", "--shape", "2x64x96", "--repeats", "1",
                       "--markdown"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out[:out.index("\n\ncpu")])
    rows = {(r["activation"], r["mode"]): r for r in result["rows"]}
    assert rows[("nn.GELU", "eager")]["ratio_vs_gelu"] == 1.0
    for name in ("crrelu", "gelu_cr", "silu_hermite2", "ub_mix_gelu_tanh", "crrelu_exported"):
        assert result["targets"][name]["saved_one_input"], name      # the autograd.Function
        assert rows[(name, "naive")]["saved_inputs"] >= 3, name       # op-by-op autograd
        assert rows[(name, "eager")]["time_ms"] > 0
    # the naive CRReLU saves x several times over (7 saves, 4 distinct buffers)
    assert rows[("crrelu", "naive")]["saved_inputs_counting_repeats"] >= 6
    assert "| crrelu | eager |" in out
