"""search.export: a study's winner -> a standalone module file that imports only torch and the standard library.

The study folders are written here in the results format (best.json,
leaderboard.json) rather than produced by a search, so these tests stay fast.
"""
import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import spaces
from search.export import export_activation, main
from spaces.registry import EXPORT_MARKER

# A winner with one learnable and one fixed coefficient, on a non-monotone base.
WINNER = spaces.parse("gelu(x) + a*x*exp(-x**2/2) + b*tanh(x)", init={"a": 0.3, "b": -0.1},
                      learnable=["a"])
RUNNER_UP = spaces.BASELINES["crrelu"]
LEARNED = {"a": 0.4321}


def _row(rank, label, candidate, fingerprint, learned, mean):
    return {"rank": rank, "label": label, "candidate": candidate.to_dict(),
            "formula": candidate.formula, "fingerprint": fingerprint, "n_seeds": 3,
            "mean": mean, "std": 0.002, "per_seed": [mean - 0.002, mean, mean + 0.002],
            "learned_coefficients": learned}


def write_study(root: Path, study="vit-fmnist", label="trial_7", candidate=WINNER,
                learned=None, **overrides) -> Path:
    """A study folder in the search's results format; `overrides` replace best.json keys."""
    learned = LEARNED if learned is None else learned
    d = root / study
    d.mkdir(parents=True, exist_ok=True)
    best = {
        "study": study, "label": label, "candidate": candidate.to_dict(), "params": {"k": 1},
        "fingerprint": overrides.pop("fingerprint", None) or candidate.fingerprint,
        "learned_coefficients": learned,
        "confirmed": {"metric": "test_acc", "mean": 0.8712, "std": 0.0031, "n_seeds": 3,
                      "seeds": [0, 1, 2], "per_seed": [0.8690, 0.8712, 0.8734]},
        "vs_gelu": {"mean_diff": 0.0041, "ci_low": 0.0012, "ci_high": 0.0070, "beats_gelu": True},
        "task": {"dataset": "fashion_mnist", "model": "vit_proxy", "epochs": 3},
        "search": {"space": "eafo_default", "backend": "optuna", "trials": 12},
        "versions": {"torch": "2.14.1+cu130", "timm": "1.0.31", "python": "3.11.7"},
        "created": "2026-05-09T10:00:00+00:00",
    }
    best.update(overrides)
    (d / "best.json").write_text(json.dumps(best))
    board = [_row(1, label, candidate, best["fingerprint"], learned, 0.8712),
             _row(2, "crrelu", RUNNER_UP, RUNNER_UP.fingerprint, {"eps": -0.25}, 0.8650)]
    (d / "leaderboard.json").write_text(json.dumps(board))
    return d


def load(path: Path):
    """Import an exported file by path (as a user's `import` would)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"exported_{path.stem}_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    study = write_study(root / "runs")
    path = export_activation(study, root / "acts")
    return study, path, load(path)


def _points(n=2001, dtype=torch.float32):
    return torch.linspace(-6, 6, n, dtype=dtype)


# ---- round trip ---------------------------------------------------------------------------

def test_outputs_and_gradients_equal_the_search_module(exported):
    _, path, mod = exported
    ours, searched = mod.Trial7(), WINNER.to_module()
    assert [n for n, _ in ours.named_parameters()] == ["a"]
    x1 = _points().requires_grad_(True)
    x2 = _points().requires_grad_(True)
    g = torch.cos(3 * _points())  # a non-uniform upstream gradient
    y1, y2 = ours(x1), searched(x2)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=0)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.a.grad, searched.a.grad, atol=1e-6, rtol=1e-6)
    # the plain function (autograd through torch ops) agrees with the autograd.Function
    x3 = _points().requires_grad_(True)
    y3 = mod.trial_7(x3, a=0.3)
    (y3 * g).sum().backward()
    torch.testing.assert_close(y3, y1.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(x3.grad, x1.grad, atol=1e-6, rtol=0)


def test_gradcheck_float64_input_and_coefficient(exported):
    _, _, mod = exported
    m = mod.Trial7().double()
    x = torch.linspace(-4.9, 5.1, 41, dtype=torch.float64, requires_grad=True)
    a = m.a.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(mod.Trial7Function.apply, (x, a), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_module_api_repr_and_provenance_docstring(exported):
    study, path, mod = exported
    m = mod.Trial7(inplace=True)  # accepted, ignored
    assert mod.Trial7Function is m.function
    assert "formula=" + WINNER.formula in repr(m)
    assert mod.FORMULA == WINNER.formula and mod.COEFFICIENTS == {"a": 0.3}
    doc = mod.__doc__
    for text in (WINNER.formula, "study: vit-fmnist, rank 1, label trial_7",
                 "test_acc: 0.8712 +/- 0.0031", "3 seeds) (seeds 0, 1, 2)",
                 "beats GELU", "2026-05-09T10:00:00+00:00", "torch 2.14.1+cu130",
                 "coefficient b: fixed at -0.1", "a=0.4321", "exported: "):
        assert text in doc, text
    side = json.loads(path.with_suffix(".json").read_text())
    assert side[EXPORT_MARKER] == 1 and side["name"] == "trial_7" and side["class"] == "Trial7"
    assert side["fingerprint"] == WINNER.fingerprint and side["confirmed"]["seeds"] == [0, 1, 2]
    assert side["task"]["dataset"] == "fashion_mnist" and side["learned"] is False


def test_source_imports_only_torch_and_the_standard_library(exported):
    _, path, _ = exported
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    # torch (torch._inductor: which vector width the kernels use) and the standard
    # library (ctypes, subprocess, ...: building and loading the C kernels)
    roots = {m.split(".")[0] for m in imported}
    assert "torch" in roots and roots - {"torch"} <= set(sys.stdlib_module_names)
    assert not roots & {"spaces", "search", "evaluators"}
    assert path.read_text().isascii()


def test_cli_export_then_fresh_interpreter_without_the_project(tmp_path):
    study = write_study(tmp_path / "runs", label="crrelu", candidate=RUNNER_UP,
                        learned={"eps": -0.25})
    out = tmp_path / "acts"
    env_common = {"PATH": os.environ.get("PATH", "")}
    r = subprocess.run([sys.executable, "-m", "search.export", str(study), "--out", str(out),
                        "--learned"], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert (out / "crrelu.py").is_file() and (out / "crrelu.json").is_file()
    # A fresh interpreter where the project is not importable: -S skips site's .pth
    # processing (the editable install's finder lives there), so sys.path is just
    # PYTHONPATH (the out dir, plus torch's site-packages folder so torch imports) and
    # the stdlib; -P drops the cwd (an empty folder anyway).
    torch_site = str(Path(torch.__file__).resolve().parents[1])
    code = (
        "import sys\n"
        "for project in ('spaces', 'search', 'evaluators'):\n"
        "    try:\n"
        "        __import__(project)\n"
        "        raise SystemExit(project + ' is importable')\n"
        "    except ImportError:\n"
        "        pass\n"
        "import torch\n"
        "from crrelu import CRReLU, crrelu\n"
        "m = CRReLU()\n"
        "x = torch.linspace(-3, 3, 7, requires_grad=True)\n"
        "y = m(x)\n"
        "y.sum().backward()\n"
        "ref = torch.relu(x) - 0.25 * x * torch.exp(-x ** 2 / 2)\n"
        "assert torch.allclose(y, ref, atol=1e-6), (y, ref)\n"
        "assert torch.allclose(crrelu(x, eps=-0.25), ref, atol=1e-6)\n"
        "assert abs(m.eps.item() + 0.25) < 1e-7 and m.eps.grad is not None\n"
        "print('ok', sorted(k for k in sys.modules if k in ('spaces', 'search', 'evaluators')))\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-S", "-P", "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=empty,
                       env={**env_common, "PYTHONPATH": os.pathsep.join([str(out), torch_site])})
    assert r.returncode == 0, r.stderr + r.stdout
    assert r.stdout.strip() == "ok []"


def test_timm_vit_forward_backward(exported):
    timm = pytest.importorskip("timm")
    _, _, mod = exported
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, act_layer=mod.Trial7)
    acts = [m for m in model.modules() if isinstance(m, mod.Trial7)]
    assert len(acts) == 12  # one per transformer block's MLP
    out = model(torch.randn(1, 3, 224, 224))
    out.sum().backward()
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert all(a.a.grad is not None and torch.isfinite(a.a.grad) for a in acts)


def test_torch_compile_fullgraph_matches_eager(exported):
    _, _, mod = exported
    m = mod.Trial7()
    compiled = torch.compile(m, fullgraph=True)
    x1 = torch.randn(4, 33).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = m(x1), compiled(x2)
    y1.square().sum().backward()
    a_eager = m.a.grad.clone()
    m.a.grad = None
    y2.square().sum().backward()
    torch.testing.assert_close(y2, y1, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m.a.grad, a_eager, atol=1e-5, rtol=1e-5)


def test_state_dict_round_trips_the_coefficients(exported):
    _, _, mod = exported
    m = mod.Trial7()
    with torch.no_grad():
        m.a.fill_(-0.77)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = mod.Trial7()
    assert fresh.a.item() == pytest.approx(0.3)
    fresh.load_state_dict(torch.load(buf))
    assert fresh.a.item() == pytest.approx(-0.77)
    assert list(fresh.state_dict()) == ["a"]


def test_learned_starts_at_the_learned_values(tmp_path):
    study = write_study(tmp_path / "runs")
    mod = load(export_activation(study, tmp_path / "acts", learned=True))
    assert mod.Trial7().a.item() == pytest.approx(LEARNED["a"])
    assert mod.COEFFICIENTS == {"a": LEARNED["a"]} and "(learned value)" in mod.__doc__
    x = _points(dtype=torch.float64)
    ref = WINNER.evaluate(x.numpy(), values=LEARNED)
    # the parameter is float32 (0.4321 to 7 digits), hence 1e-6
    np.testing.assert_allclose(mod.Trial7().double()(x).detach().numpy(), ref, atol=1e-6)


def test_rank_n_reads_the_leaderboard_row_and_name_overrides(tmp_path):
    study = write_study(tmp_path / "runs")
    assert main([str(study), "--out", str(tmp_path / "acts"), "--rank", "2", "--name",
                 "my_act"]) == 0
    mod = load(tmp_path / "acts" / "my_act.py")
    assert mod.FORMULA == RUNNER_UP.formula and hasattr(mod, "MyAct") and hasattr(mod, "my_act")
    assert "rank 2, label crrelu" in mod.__doc__ and "0.8650 +/- 0.0020" in mod.__doc__


# ---- refusals: exit 2, one line, nothing written --------------------------------------------

def _refused(capsys, argv, out: Path, match: str):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert match in err, err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("name,match", [
    ("x; import os", "ASCII Python identifier"),
    ("__init__", "leading underscore"),
    ("class", "keyword"),
    ("gel\u0443", "gel\\u0443"),      # Cyrillic 'u' (U+0443), shown escaped
    ("\u0430ct", "ASCII"),            # Cyrillic 'a' (U+0430)
    ("os", "shadow"),                 # os.py on sys.path would shadow the stdlib
    ("float", "reserved"),            # would shadow the builtin inside the module
    ("Exception", "reserved"),
])
def test_hostile_names_refused(tmp_path, capsys, name, match):
    study = write_study(tmp_path / "runs")
    _refused(capsys, [str(study), "--out", str(tmp_path / "acts"), "--name", name],
             tmp_path / "acts", match)


def test_label_that_is_no_identifier_needs_a_name(tmp_path, capsys):
    study = write_study(tmp_path / "runs", label="trial-7")
    _refused(capsys, [str(study), "--out", str(tmp_path / "acts")], tmp_path / "acts", "--name")


def _tampered(best: dict, key, value):
    best = json.loads(json.dumps(best))
    if key == "formula":
        best["candidate"]["formula"] = value
    else:
        best[key] = value
    return best


@pytest.mark.parametrize("key,value,match", [
    ("formula", "__import__('os').system('true')", "does not parse safely"),
    ("formula", "gelu(x) + a*x*exp(-x**2/2) + b*tanh(x) + 0*open('f')", "does not parse safely"),
    ("formula", "gelu(x) + a*x + b*tanh(x)", "tampered"),          # parses; fingerprint differs
    ("fingerprint", "0123456789abcdef", "tampered"),
    ("fingerprint", "x'; import os", "fingerprint"),
    ("study", 'vit"""\nimport os', "not plain text"),
    ("created", "2026\\n", "not plain text"),
    ("versions", {"torch": "2.14\"\"\"; import os"}, "not plain text"),
    ("versions", {"to rch\n": "2"}, "plain name"),
    ("label", "trial_7\"", "not plain text"),
    ("learned_coefficients", {"os": 1.0}, "not a coefficient"),
    ("confirmed", {"metric": "test_acc", "mean": "0.9", "std": 0.0, "n_seeds": 1}, "finite number"),
])
def test_tampered_best_json_refused(tmp_path, capsys, key, value, match):
    study = write_study(tmp_path / "runs")
    best = json.loads((study / "best.json").read_text())
    (study / "best.json").write_text(json.dumps(_tampered(best, key, value)))
    _refused(capsys, [str(study), "--out", str(tmp_path / "acts")], tmp_path / "acts", match)


def test_coefficient_names_that_would_shadow_generated_code(tmp_path, capsys):
    # `self` would collide with the module's methods' own argument: refused when parsed,
    # so no candidate (and no best.json of a real search) can carry it.
    with pytest.raises(ValueError, match="reserved"):
        spaces.parse("relu(x) + self*x", init={"self": 0.5}, learnable=["self"])
    # `t0` used to collide with codegen's temporaries (wrong values); now it is just a name.
    ok = spaces.parse("relu(x) + t0*x*exp(-x**2/2)", init={"t0": 0.3}, learnable=["t0"])
    study = write_study(tmp_path / "runs2", candidate=ok, learned={})
    mod = load(export_activation(study, tmp_path / "acts2"))
    x = _points(dtype=torch.float64)
    ref = torch.relu(x) + 0.3 * x * torch.exp(-x**2 / 2)
    torch.testing.assert_close(mod.Trial7().double()(x), ref, atol=1e-6, rtol=0)  # float32 t0


@pytest.mark.parametrize("setup,argv_extra,match", [
    ("missing_dir", [], "does not exist"),
    ("no_best", [], "best.json does not exist"),
    ("bad_json", [], "not valid JSON"),
    ("nan_json", [], "non-finite"),
    ("not_object", [], "expected a JSON object"),
    ("ok", ["--rank", "3"], "out of range"),
    ("ok", ["--rank", "0"], "positive integer"),
    ("ok", ["--learned"], "no learned value"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, setup, argv_extra, match):
    study = tmp_path / "runs" / "s"
    if setup != "missing_dir":
        write_study(tmp_path / "runs", study="s", learned={} if "--learned" in argv_extra else None)
    texts = {"bad_json": "{bad", "nan_json": '{"mean": NaN}', "not_object": "[1, 2]"}
    if setup == "no_best":
        (study / "best.json").unlink()
    elif setup in texts:
        (study / "best.json").write_text(texts[setup])
    _refused(capsys, [str(study), "--out", str(tmp_path / "acts"), *argv_extra],
             tmp_path / "acts", match)


def test_foreign_file_is_not_overwritten_but_a_reexport_is(tmp_path, capsys):
    study = write_study(tmp_path / "runs")
    out = tmp_path / "acts"
    out.mkdir()
    (out / "mine.py").write_text("print('hand-written')\n")
    assert main([str(study), "--out", str(out), "--name", "mine"]) == 2
    assert "not written by search.export" in capsys.readouterr().err
    assert (out / "mine.py").read_text() == "print('hand-written')\n"
    assert main([str(study), "--out", str(out)]) == 0
    assert main([str(study), "--out", str(out), "--learned"]) == 0  # same file, new values
    assert load(out / "trial_7.py").COEFFICIENTS == {"a": LEARNED["a"]}
