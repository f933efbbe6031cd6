"""search.export: a study's winner -> a standalone module file that imports only torch (by
default) and deploys by every route a user takes: training, torch.compile, both ONNX
exporters (run by onnxruntime), torch.export (loaded in a fresh process), TorchScript.

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
    doc = " ".join(mod.__doc__.split())  # (wrapped lines joined)
    for text in (WINNER.formula, "study: vit-fmnist, rank 1, label trial_7",
                 "test_acc (higher is better): 0.8712 +/- 0.0031", "3 seeds) (seeds 0, 1, 2)",
                 "beats GELU", "2026-05-09T10:00:00+00:00", "torch 2.14.1+cu130",
                 "coefficient b: fixed at -0.1", "exported: ", "Plain PyTorch: imports torch only",
                 "coefficient a: learnable, one per instance (layer), each starts at 0.3 (its initial value)",
                 # what the learned values are: a mean over layers, then over the confirmation seeds
                 "learned in the study; --learned starts there: a=0.4321 (each a mean: every activation "
                 "module, one per layer, learns its own value; this is their mean in each trained model, "
                 "then over the 3 confirmation seeds)"):
        assert text in doc, text
    side = json.loads(path.with_suffix(".json").read_text())
    assert side[EXPORT_MARKER] == 1 and side["name"] == "trial_7" and side["class"] == "Trial7"
    assert side["fingerprint"] == WINNER.fingerprint and side["confirmed"]["seeds"] == [0, 1, 2]
    assert side["task"]["dataset"] == "fashion_mnist" and side["learned"] is False and side["native"] is False
    assert "3 confirmation seeds" in side["learned_coefficients_are"]
    assert mod.kernel_info()["fused_cpu"] is None and not hasattr(mod, "use_native_kernels")


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module the file imports, at any depth of its code."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    return roots


def test_default_export_imports_only_torch_math_and_typing(exported):
    """The default export is plain PyTorch: its code imports torch (and may import math,
    typing, __future__), nothing else: no ctypes, subprocess or compiler, no cache folder."""
    _, path, _ = exported
    assert "torch" in imported_roots(path) and imported_roots(path) <= {"torch", "math", "typing", "__future__"}
    assert path.read_text().isascii()


def test_native_export_adds_the_c_kernels_and_says_what_they_need(tmp_path):
    """--native: the file also imports the standard library's tools to build its C kernels
    (never the project), says in its docstring what that needs, and runs them: float32 CPU
    training through our C kernels, with the same values as the default export."""
    study = write_study(tmp_path / "runs")
    assert main([str(study), "--out", str(tmp_path / "acts"), "--native"]) == 0
    path = tmp_path / "acts" / "trial_7.py"
    roots = imported_roots(path)
    assert {"ctypes", "subprocess"} <= roots and roots - {"torch"} <= set(sys.stdlib_module_names)
    assert not roots & {"spaces", "search", "evaluators"}
    doc = " ".join(load(path).__doc__.split())
    assert "needs a C compiler (gcc, or $CC) and a writable cache folder" in doc
    native, plain = load(path), load(export_activation(study, tmp_path / "plain"))
    assert native.kernel_info()["float32_cpu"] == "c" and json.loads(path.with_suffix(".json").read_text())["native"]
    x1, x2 = _points().requires_grad_(True), _points().requires_grad_(True)
    y1, y2 = native.Trial7()(x1), plain.Trial7()(x2)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-6)


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
    assert mod.COEFFICIENTS == {"a": LEARNED["a"]}
    assert "each starts at 0.4321 (the learned mean below)" in " ".join(mod.__doc__.split())
    x = _points(dtype=torch.float64)
    ref = WINNER.evaluate(x.numpy(), values=LEARNED)
    # the parameter is float32 (0.4321 to 7 digits), hence 1e-6
    np.testing.assert_allclose(mod.Trial7().double()(x).detach().numpy(), ref, atol=1e-6)


def test_a_language_model_winners_provenance_says_lower_is_better(tmp_path):
    confirmed = {"metric": "test_bpc", "direction": "minimize", "mean": 3.391, "std": 0.004, "n_seeds": 3}
    study = write_study(tmp_path / "runs", study="lm", confirmed=confirmed,
                        task={"dataset": "shakespeare", "model": "gpt-nano", "epochs": 4})
    path = export_activation(study, tmp_path / "acts")
    assert "confirmed test_bpc (lower is better): 3.3910" in " ".join(load(path).__doc__.split())
    assert json.loads(path.with_suffix(".json").read_text())["confirmed"]["direction"] == "minimize"
    bad = write_study(tmp_path / "runs", study="bad", confirmed={**confirmed, "direction": "down"})
    with pytest.raises(ValueError, match="maximize or minimize"):
        export_activation(bad, tmp_path / "acts2")


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


def test_existing_files_are_replaced_only_with_force_and_only_if_export_wrote_them(tmp_path, capsys):
    """A file export did not write is never replaced; an earlier export of the same name
    only with --force (without it: exit 2, one line saying so, nothing written); an export
    changed since it was written not even then."""
    study = write_study(tmp_path / "runs")
    out = tmp_path / "acts"
    out.mkdir()
    (out / "mine.py").write_text("print('hand-written')\n")
    assert main([str(study), "--out", str(out), "--name", "mine", "--force"]) == 2
    assert "not written by search.export; it is left as it is" in capsys.readouterr().err
    assert (out / "mine.py").read_text() == "print('hand-written')\n"
    assert main([str(study), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("wrote ")
    before = (out / "trial_7.py").read_bytes()
    assert main([str(study), "--out", str(out), "--learned"]) == 2
    err = capsys.readouterr().err
    assert "already holds an export" in err and "--force" in err and err.count("\n") == 1
    assert (out / "trial_7.py").read_bytes() == before
    assert main([str(study), "--out", str(out), "--learned", "--force"]) == 0  # same file, new values
    assert capsys.readouterr().out.startswith("replaced ")
    assert load(out / "trial_7.py").COEFFICIENTS == {"a": LEARNED["a"]}
    with open(out / "trial_7.py", "a") as f:
        f.write("# my change\n")
    assert main([str(study), "--out", str(out), "--force"]) == 2
    assert "changed since it was exported" in capsys.readouterr().err
    assert (out / "trial_7.py").read_text().endswith("# my change\n")


def test_a_folder_of_studies_lists_them_and_says_how_to_pick_one(tmp_path, capsys):
    """`python -m search.export runs/` (the runs folder, not a study): exit 2 with one line
    that names the studies found, says which have finished, and shows the command for one."""
    runs = tmp_path / "runs"
    write_study(runs, study="vit-a")
    write_study(runs, study="vit-b")
    (runs / "vit-b" / "best.json").unlink()  # still running: a leaderboard, no best.json yet
    (runs / "notes").mkdir()  # not a study
    _refused(capsys, [str(runs), "--out", str(tmp_path / "acts")], tmp_path / "acts",
             f"{runs} is a folder of 2 studies, not a study")
    assert main([str(runs), "--out", str(tmp_path / "acts")]) == 2
    err = capsys.readouterr().err
    assert f"python -m search.export {runs / 'vit-a'} --out DIR" in err
    assert f"{runs / 'vit-a'} (finished)" in err and f"{runs / 'vit-b'} (no best.json yet" in err
    assert "notes" not in err


# ---- deployment routes, on a timm ViT ------------------------------------------------------
# vit_tiny_patch16_224 (embed 192, 3 heads, 224x224 input: 197 tokens) with 2 of its 12
# blocks: each block is the same code, and a route's cost grows with the blocks
# (torch.compile of forward and backward took 116 s with 12 blocks, 22 s with 2, on 2
# shared CPU cores); two blocks still give two activation instances whose coefficients
# differ, so a coefficient baked in as a constant, or shared between layers, would show.

CRRELU_LEARNED = {"eps": -0.25}  # moved from the init (0.01) by training


def vit_with(act_layer):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, act_layer=act_layer, depth=2)
    acts = [m for m in model.modules() if isinstance(m, act_layer)]
    assert len(acts) == 2
    with torch.no_grad():
        for i, act in enumerate(acts):
            act.eps.add_(0.1 * i)  # -0.25 and -0.15: each layer its own value
    return model.eval()


@pytest.fixture(scope="module", params=[False, True], ids=["default", "native"])
def crrelu_vit(request, tmp_path_factory):
    """(exported module, ViT using its class, export example, another input, eager output
    on that input) for the paper's CRReLU exported with its learned eps."""
    root = tmp_path_factory.mktemp("routes")
    study = write_study(root / "runs", label="crrelu", candidate=RUNNER_UP, learned=CRRELU_LEARNED)
    mod = load(export_activation(study, root / "acts", learned=True, native=request.param))
    assert mod.CRReLU().eps.item() == pytest.approx(-0.25)
    model = vit_with(mod.CRReLU)
    torch.manual_seed(1)
    example, other = torch.randn(2, 3, 224, 224), torch.randn(2, 3, 224, 224) * 1.5
    with torch.no_grad():
        expected = model(other)
    return mod, model, example, other, expected


def max_error(a, b) -> float:
    a, b = (t.detach().numpy() if isinstance(t, torch.Tensor) else t for t in (a, b))
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_onnx_export_runs_in_onnxruntime_and_matches_eager_on_a_new_input(crrelu_vit, dynamo, tmp_path):
    """torch.onnx.export by either exporter (dynamo=False traces with TorchScript, the
    default exports with torch.export), run by onnxruntime on an input other than the
    export example: the eager model's output to 1e-4. (Before, the TorchScript exporter
    baked every MLP's activation output in as a constant read from the example: 0.8 off;
    the dynamo one failed on the custom op.) The graph holds no custom op."""
    ort = pytest.importorskip("onnxruntime")
    _, model, example, other, expected = crrelu_vit
    path = tmp_path / "vit.onnx"
    if dynamo:
        torch.onnx.export(model, (example,), dynamo=True).save(str(path))
    else:
        torch.onnx.export(model, (example,), str(path), dynamo=False)
    onnx = pytest.importorskip("onnx")
    assert not [n.op_type for n in onnx.load(str(path)).graph.node if n.domain not in ("", "ai.onnx")]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: other.numpy()})
    assert max_error(out, expected) <= 1e-4


@pytest.mark.slow
def test_torch_export_loads_and_runs_in_a_fresh_process_that_never_imports_the_activation(crrelu_vit, tmp_path):
    """torch.export.export, torch.export.save, then torch.export.load and run in a fresh
    interpreter that has only torch on its path (never the exported file, the project or
    timm): the eager output to 1e-5, and no activation module among its modules."""
    mod, model, example, other, expected = crrelu_vit
    program = torch.export.export(model, (example,))
    torch.export.save(program, tmp_path / "vit.pt2")
    torch.save(other, tmp_path / "input.pt")
    code = ("import sys, torch\n"
            "program = torch.export.load(sys.argv[1])\n"
            "with torch.no_grad():\n"
            "    torch.save(program.module()(torch.load(sys.argv[2])), sys.argv[3])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('crrelu', 'spaces', 'search', 'evaluators', 'timm', 'eafo_activations')))\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    torch_site = str(Path(torch.__file__).resolve().parents[1])
    run = subprocess.run([sys.executable, "-S", "-P", "-c", code, str(tmp_path / "vit.pt2"),
                          str(tmp_path / "input.pt"), str(tmp_path / "output.pt")],
                         capture_output=True, text=True, timeout=300, cwd=empty,
                         env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": torch_site})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"
    assert max_error(torch.load(tmp_path / "output.pt"), expected) <= 1e-5


@pytest.mark.slow
def test_torch_jit_script_matches_eager(crrelu_vit):
    """torch.jit.script of the whole ViT (the activation's forward scripts its plain-ops
    branch): the eager output to 1e-5 on a new input, and on another batch size."""
    _, model, _, other, expected = crrelu_vit
    scripted = torch.jit.script(model)
    assert max_error(scripted(other), expected) <= 1e-5
    with torch.no_grad():
        assert max_error(scripted(other[:1]), model(other[:1])) <= 1e-5


def plain_function_twin(mod, model):
    """A copy of the model whose activations compute the exported plain function with the
    same eps parameters, differentiated op by op by autograd: the reference gradients."""
    import copy

    class PlainCRReLU(torch.nn.Module):
        def __init__(self, act):
            super().__init__()
            self.eps = act.eps

        def forward(self, x):
            return mod.crrelu(x, eps=self.eps)

    twin = copy.deepcopy(model)
    for block in twin.blocks:
        block.mlp.act = PlainCRReLU(block.mlp.act)
    return twin


def step_gradients(model, x, run=None):
    """(loss, gradient of every named parameter) of one step; `run`: the callable to step
    through instead of the model itself (its torch.compile'd form)."""
    model.zero_grad(set_to_none=True)
    loss = (model if run is None else run)(x).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_training_gradients_equal_the_plain_functions_eager_and_compiled(crrelu_vit):
    """A training step through the memory-efficient autograd.Function (eager), and through
    torch.compile(fullgraph=True) of the whole model, gives the loss and every parameter's
    gradient (each layer's eps included) that autograd gives through the plain function's
    torch ops: the sympy backward changes nothing beyond float32 rounding (each gradient
    within 1e-5 of its largest element; 2.2e-6 measured)."""
    mod, model, _, other, _ = crrelu_vit
    model.train()
    try:
        ref_loss, ref = step_gradients(plain_function_twin(mod, model), other)
        loss, grads = step_gradients(model, other)
        compiled_loss, compiled = step_gradients(model, other, torch.compile(model, fullgraph=True))
    finally:
        model.eval()
    assert [n for n in grads if n.endswith("act.eps")] == ["blocks.0.mlp.act.eps", "blocks.1.mlp.act.eps"]
    for got_loss, got in ((loss, grads), (compiled_loss, compiled)):
        torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=1e-7)
        for name, g in ref.items():
            assert (got[name] - g).abs().max() <= 1e-5 * g.abs().max(), name
