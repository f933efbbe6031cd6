"""spaces.get_activation / list_activations / register_path: built-ins and exported modules."""
import json

import pytest
import torch

import spaces
from search.export import export_activation
from spaces import registry
from spaces.bases import torch_reference
from test_export import RUNNER_UP, WINNER, write_study  # the results-format helper

BUILTINS = spaces.list_bases() + ["crrelu"]


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """Each test starts with no registered folders and no EAFO_ACTIVATIONS_PATH."""
    monkeypatch.setattr(registry, "_registered", [])
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


def _points():
    # off the kinks of piecewise bases (0, +-3), where one-sided derivatives differ
    xs = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    for kink in (0.0, 3.0, -3.0):
        xs = xs[(xs - kink).abs() > 1e-3]
    return xs


@pytest.mark.parametrize("base", spaces.list_bases())
def test_every_base_matches_its_torch_nn_module(base):
    cls = spaces.get_activation(base)
    ours, ref = cls(inplace=False).double(), torch_reference(base).double()
    x1, x2 = _points().requires_grad_(True), _points().requires_grad_(True)
    y1, y2 = ours(x1), ref(x2)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-6)
    assert cls.__name__ == registry.class_name_for(base)
    # prelu's slope and star_relu's scale and bias are parameters, as in the reference
    assert len(list(ours.parameters())) == len([p for p in ref.parameters() if p.requires_grad])
    assert spaces.get_activation(base) is cls  # generated once


def test_class_names_follow_the_rule():
    assert {n: spaces.get_activation(n).__name__ for n in
            ("gelu", "silu", "relu", "leaky_relu", "gelu_tanh", "crrelu", "tanh", "identity",
             "prelu", "squared_relu", "star_relu")} == {
        "gelu": "GELU", "silu": "SiLU", "relu": "ReLU", "leaky_relu": "LeakyReLU",
        "gelu_tanh": "GELUTanh", "crrelu": "CRReLU", "tanh": "Tanh", "identity": "Identity",
        "prelu": "PReLU", "squared_relu": "SquaredReLU", "star_relu": "StarReLU"}
    assert registry.class_name_for("trial_12") == "Trial12"
    assert registry.class_name_for("MyAct") == "MyActModule"  # never equal to the function


def test_crrelu_is_the_papers():
    cls = spaces.get_activation("crrelu")
    m = cls()
    assert [(n, p.item(), p.requires_grad) for n, p in m.named_parameters()] == \
        [("eps", pytest.approx(0.01), True)]
    assert cls.candidate == spaces.BASELINES["crrelu"]
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(m(x), torch.relu(x) + 0.01 * x * torch.exp(-x**2 / 2))
    assert "formula=" in repr(m)


def test_builtin_candidates_are_every_builtin_name_with_its_own_coefficients():
    """What a --baselines list may name: every base (PReLU, squared ReLU and StarReLU
    included) and crrelu, each the Candidate its class was generated from."""
    built = spaces.builtin_candidates()
    assert sorted(built) == sorted(BUILTINS)
    assert {"prelu", "squared_relu", "star_relu"} <= set(built)
    assert built["prelu"].learnable == {"slope": 0.25}
    assert built["crrelu"] == spaces.BASELINES["crrelu"]
    for name, c in built.items():
        assert spaces.get_activation(name).candidate == c


def test_list_and_unknown_names():
    names = spaces.list_activations()
    assert names == sorted(BUILTINS)
    assert spaces.list_activations("*elu*") == ["celu", "crrelu", "elu", "gelu", "gelu_tanh",
                                                "leaky_relu", "prelu", "relu", "selu",
                                                "squared_relu", "star_relu"]
    with pytest.raises(ValueError, match=r"unknown activation 'gleu'; did you mean 'gelu'"):
        spaces.get_activation("gleu")
    with pytest.raises(ValueError, match=r"did you mean 'crrelu'.*valid: celu, crrelu"):
        spaces.get_activation("crelu")
    with pytest.raises(TypeError):
        spaces.get_activation(torch.nn.GELU)


def _export(root, name=None, **study_kwargs):
    study = write_study(root / "runs", **study_kwargs)
    return export_activation(study, root / "acts", name=name)


def test_registered_folder_is_found(tmp_path):
    path = _export(tmp_path)
    assert spaces.register_path(path.parent) == ["trial_7"]
    assert spaces.register_path(path.parent) == ["trial_7"]  # again: harmless
    assert "trial_7" in spaces.list_activations()
    cls = spaces.get_activation("trial_7")
    assert cls.__name__ == "Trial7" and cls.candidate.formula == WINNER.formula
    x = torch.linspace(-5, 5, 501)
    torch.testing.assert_close(cls()(x), WINNER.to_module()(x), atol=1e-6, rtol=0)


def test_environment_variable_folders(tmp_path, monkeypatch):
    path = _export(tmp_path)
    other = tmp_path / "empty"
    other.mkdir()
    assert "trial_7" not in spaces.list_activations()
    monkeypatch.setenv(registry.ENV_VAR, f"{other}{registry.os.pathsep}{path.parent}")
    assert spaces.get_activation("trial_7").__name__ == "Trial7"
    monkeypatch.delenv(registry.ENV_VAR)
    assert "trial_7" not in spaces.list_activations()  # read on every call


def test_same_name_different_formula_is_an_error_naming_both(tmp_path):
    a = _export(tmp_path / "a", name="act")
    b = _export(tmp_path / "b", name="act", label="crrelu", candidate=RUNNER_UP,
                learned={"eps": -0.2})
    same = _export(tmp_path / "c", name="act")  # the same function again: fine
    spaces.register_path(a.parent)
    spaces.register_path(same.parent)
    with pytest.raises(ValueError, match="defined twice") as info:
        spaces.register_path(b.parent)
    assert str(a) in str(info.value) and str(b) in str(info.value)
    assert registry._registered == [a.parent, same.parent]  # the conflicting folder was not added
    assert spaces.get_activation("act").candidate.formula == WINNER.formula


def test_exported_crrelu_agrees_with_the_builtin_unless_learned_values_differ(tmp_path):
    study = write_study(tmp_path / "runs", label="crrelu", candidate=RUNNER_UP,
                        learned={"eps": -0.2})
    plain = export_activation(study, tmp_path / "plain")
    assert spaces.register_path(plain.parent) == ["crrelu"]  # the same function as the built-in
    learned = export_activation(study, tmp_path / "learned", learned=True)
    with pytest.raises(ValueError, match=r"built-in.*eps=0.01.*eps=-0.2"):
        spaces.register_path(learned.parent)


def test_changed_or_foreign_files_are_never_executed(tmp_path):
    path = _export(tmp_path)
    folder = path.parent
    marker = tmp_path / "executed"
    payload = f"\nopen({str(marker)!r}, 'w').close()\n"
    # a module without a sidecar: ignored
    (folder / "evil.py").write_text(payload)
    # an export whose module was edited after export: refused by its hash
    path.write_text(path.read_text() + payload)
    # a JSON file that is not a sidecar: ignored
    (folder / "notes.json").write_text(json.dumps({"name": "notes"}))
    with pytest.warns(UserWarning, match="changed since export"):
        assert spaces.register_path(folder) == []
    with pytest.raises(ValueError, match="trial_7.*unavailable.*changed since export"):
        spaces.get_activation("trial_7")
    with pytest.raises(ValueError, match="unknown activation 'evil'"):
        spaces.get_activation("evil")
    assert not marker.exists()


def test_sidecar_with_a_hostile_name_is_refused(tmp_path):
    path = _export(tmp_path)
    side = json.loads(path.with_suffix(".json").read_text())
    side["name"] = "x; import os"
    bad = path.parent / "x; import os.json"
    bad.write_text(json.dumps(side))
    path.with_suffix(".json").unlink()
    with pytest.warns(UserWarning, match="ASCII Python identifier"):
        assert spaces.register_path(path.parent) == []


def test_register_path_needs_a_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        spaces.register_path(tmp_path / "nope")
