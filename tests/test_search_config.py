"""SearchConfig, the record types and the backend seam: no training, milliseconds."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from search import run
from search.config import STUDY_KEYS, SearchConfig
from search.exceptions import BackendUnavailable, UsageError
from search.records import ConfirmRecord, TrialRecord, mean_coefficients, result_fields

ROOT = Path(__file__).resolve().parents[1]


def test_every_cli_option_is_one_config_field_and_back():
    args = run.build_parser().parse_args([])
    config = run.config_from_args(args)
    assert config == SearchConfig()
    assert set(vars(args)) == set(config.to_dict())
    assert SearchConfig.from_dict(config.to_dict()) == config


def test_unknown_config_keys_are_rejected_by_name():
    with pytest.raises(UsageError, match="epoch"):
        SearchConfig.from_dict({"epoch": 3})


@pytest.mark.parametrize("field,value", [("trials", 0), ("epochs", -1), ("train_size", 0), ("confirm_seeds", 1),
                                         ("confirm_top", 0), ("timeout", 0.0), ("timeout", math.inf),
                                         ("grace_period", 5), ("sampler", "cmaes"), ("study", "../escape"),
                                         ("gpus_per_trial", -1.0), ("test_size", 0)])
def test_bad_values_are_refused_naming_the_option(field, value):
    with pytest.raises(UsageError):
        SearchConfig(**{field: value, "heartbeat_interval": 10}).validate()


def test_confirmation_seeds_never_include_the_search_seed():
    c = SearchConfig(seed=7, confirm_seeds=4)
    assert c.confirmation_seeds == [8, 9, 10, 11]
    assert c.study_name == "eafo_default-fashion_mnist-vit-nano"
    assert c.storage_url.startswith("sqlite:///") and c.storage_url.endswith("/study.db")


def test_a_study_remembers_the_settings_its_results_depend_on():
    saved = SearchConfig(epochs=3)
    assert SearchConfig(epochs=3, trials=50, confirm_seeds=10).study_mismatch(saved) == []
    assert SearchConfig(epochs=1).study_mismatch(saved) == ["epochs=3 (now 1)"]
    assert "trials" not in STUDY_KEYS


@pytest.mark.parametrize("field,value", [("sigma", 0.0), ("sigma", -1.0), ("sigma", math.nan), ("sigma", "1"),
                                         ("sigma", True), ("prefilter", 0), ("prefilter", 2.5)])
def test_bad_sigma_and_prefilter_are_refused_naming_the_option(field, value):
    with pytest.raises(UsageError, match=f"--{field}"):
        SearchConfig(**{field: value}).validate()


def test_sigma_is_measured_or_a_positive_number_on_the_command_line(capsys):
    parse = run.build_parser().parse_args
    assert run.config_from_args(parse([])).sigma == "measured"
    assert run.config_from_args(parse(["--sigma", "1"])).sigma == 1.0
    assert run.config_from_args(parse(["--sigma", "0.158", "--prefilter", "8"])).prefilter == 8
    with pytest.raises(SystemExit) as e:
        parse(["--sigma", "auto"])
    assert e.value.code == run.EXIT_USAGE
    assert "'auto' is neither 'measured' nor a positive number" in capsys.readouterr().err
    text = run.build_parser().format_help()
    for words in ("--sigma", "measured", "vit-nano 0.158", "1 is the paper's", "--prefilter", "surrogate"):
        assert words in text


def test_a_study_keeps_its_sigma_and_one_from_before_sigma_ran_at_one(tmp_path):
    """sigma decides which candidate a point of the space is: a study resumed with another
    one is refused; a config.json saved before --sigma existed ran at the paper's sigma = 1."""
    assert "sigma" in STUDY_KEYS and "prefilter" not in STUDY_KEYS
    assert SearchConfig().study_mismatch(SearchConfig(sigma=1.0)) == ["sigma=1.0 (now 'measured')"]
    assert SearchConfig(prefilter=8).study_mismatch(SearchConfig()) == []
    old = SearchConfig().to_dict()
    del old["sigma"], old["prefilter"]
    (tmp_path / "config.json").write_text(__import__("json").dumps(old))
    loaded = SearchConfig.load(tmp_path / "config.json")
    assert loaded.sigma == 1.0 and loaded.prefilter == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_score_is_an_outcome_not_a_number(bad):
    result = SimpleNamespace(status="ok", score=bad, reason=None, history=[{"val_acc": bad}],
                             coefficients={"eps": [bad, 0.5]}, wall_seconds=1.0)
    f = result_fields(result)
    assert f["status"] == "diverged" and f["score"] is None and "finite" in f["reason"]
    assert f["history"] == [{"val_acc": None}]  # JSON-safe
    assert f["learned_coefficients"] == {"eps": 0.5}
    with pytest.raises(ValueError, match="finite"):
        TrialRecord(number=0, status="ok", label="x", score=bad)
    with pytest.raises(ValueError):
        ConfirmRecord(label="x", fingerprint="f", candidate={}, seed=1, status="ok", score=bad)


def test_records_round_trip_and_refuse_unknown_fields():
    r = TrialRecord(number=3, status="pruned", label="trial_3", reason="pruned after epoch 1")
    assert TrialRecord.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError):
        TrialRecord.from_dict({**r.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match="status"):
        TrialRecord(number=0, status="weird", label="x")
    with pytest.raises(ValueError, match="no score"):
        TrialRecord(number=0, status="pruned", label="x", score=0.5)
    assert mean_coefficients({"a": [1.0, 3.0], "b": 2, "c": [math.nan]}) == {"a": 2.0, "b": 2.0}


def test_help_and_the_default_path_import_no_backend_library():
    # --help imports spaces (torch) to list the spaces and activations; never a backend library
    code = ("import sys; from search import run; rc = run.main(['--help']); "
            "print(rc, sorted(m for m in ('ray', 'optuna') if m in sys.modules)); "
            "import spaces; print('|'.join(spaces.list_spaces()))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    *help_lines, outcome, space_names = p.stdout.strip().splitlines()
    assert outcome == "0 []"
    for option in ("--trials", "--timeout", "--dataset", "--model", "--epochs", "--train-size", "--val-size",
                   "--seed", "--study", "--runs-dir", "--storage", "--sampler", "--pruner", "--confirm-top",
                   "--confirm-seeds", "--racing", "--baselines", "--device", "--data-root", "--download",
                   "--backend", "--ray-address", "--cpus-per-trial", "--gpus-per-trial", "--max-concurrent"):
        assert option in p.stdout
    # the spaces and the valid baseline names, as a fresh process lists them (this
    # process also holds the spaces other tests registered)
    import spaces

    for name in space_names.split("|"):
        assert f"  {name} " in p.stdout
    assert ", ".join(spaces.list_activations()) in p.stdout
    # the text track's defaults, spelled in the help without importing evaluators, are its real ones
    from evaluators.task import TEXT_DEFAULTS

    for key in ("model", "epochs", "train_size", "val_size", "test_size"):
        assert f"text: {TEXT_DEFAULTS[key]})" in p.stdout, key
    # one set of timings: the epilog's is the README's
    readme = (ROOT / "README.md").read_text()
    assert f"about {run.DEFAULT_RUN_TIME} on 2" in p.stdout and run.DEFAULT_RUN_TIME in readme
    assert f"about {run.DEFAULT_LM_RUN_TIME} on 2" in " ".join(p.stdout.split())
    assert run.DEFAULT_LM_RUN_TIME in readme


def test_usage_errors_import_no_backend_library():
    code = ("import sys; from search import run; rc = run.main(['--trials', '0']); "
            "print(rc, sorted(m for m in ('ray', 'torch', 'optuna') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout.strip().splitlines()[-1] == "2 []"


def test_a_backend_whose_module_is_missing_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "search.ray_backend", None)  # as if the file were absent
    with pytest.raises(BackendUnavailable, match="ray backend"):
        run.get_backend("ray")
    with pytest.raises(UsageError, match="valid backends"):
        run.get_backend("dask")
    assert callable(run.get_backend("optuna").search)


def test_the_text_track_gets_its_own_model_and_sizes_and_explicit_values_stay():
    from evaluators.task import TEXT_DEFAULTS

    text = SearchConfig(dataset="shakespeare")
    assert (text.model, text.epochs, text.train_size, text.val_size, text.test_size) == tuple(
        TEXT_DEFAULTS[k] for k in ("model", "epochs", "train_size", "val_size", "test_size"))
    assert text.study_name == "eafo_default-shakespeare-gpt-nano"
    assert SearchConfig(dataset="shakespeare", epochs=1, model="gpt-small").to_dict()["epochs"] == 1
    image = SearchConfig()
    assert (image.model, image.epochs, image.train_size, image.test_size) == ("vit-nano", 3, 5000, None)
    # the CLI's None defaults resolve the same way, and config.json holds what ran
    args = run.build_parser().parse_args(["--dataset", "shakespeare"])
    assert run.config_from_args(args) == text
    with pytest.raises(ValueError, match="valid datasets"):
        SearchConfig(dataset="shakespear")


def test_the_image_datasets_the_config_knows_without_torch_are_evaluators_image_datasets():
    from evaluators.data import DATASETS
    from evaluators.models import MLPS as EVALUATOR_MLPS
    from search.config import IMAGE_DATASETS, MLPS

    assert set(IMAGE_DATASETS) == set(DATASETS)
    assert tuple(MLPS) == tuple(EVALUATOR_MLPS)


def test_a_gated_study_has_its_own_name_and_its_mlp_is_a_study_setting():
    glu = SearchConfig(mlp="glu")
    assert glu.study_name == "eafo_default-fashion_mnist-vit-nano-glu" != SearchConfig().study_name
    assert glu.study_mismatch(SearchConfig()) == ["mlp='plain' (now 'glu')"]
    with pytest.raises(UsageError, match="unknown mlp 'gated'"):
        SearchConfig(mlp="gated").validate()


@pytest.mark.parametrize("value,message", [("shakespeare", "DATASET:MODEL"), ("shakespeare:", "DATASET:MODEL"),
                                           (":gpt-nano", "DATASET:MODEL"), ("a:b:c", "DATASET:MODEL"),
                                           ("tinystories:gpt-nano", "valid datasets"),
                                           ("shakespeare:gpt-huge", "valid models")])
def test_a_malformed_transfer_target_is_one_clear_error(value, message):
    with pytest.raises(UsageError, match=message):
        SearchConfig(transfer_to=value).validate()
    with pytest.raises(UsageError, match="needs --transfer-to"):
        SearchConfig(transfer_set={"epochs": 1}).validate()


def test_transfer_settings_are_parsed_from_key_value_pairs():
    args = run.build_parser().parse_args(["--transfer-to", "shakespeare:gpt-nano", "--transfer-set", "epochs=1",
                                          "--transfer-set", "test_size=null"])
    config = run.config_from_args(args)
    assert config.transfer_set == {"epochs": 1, "test_size": None}
    assert SearchConfig.from_dict(config.to_dict()) == config


def test_sigma_resolves_to_the_number_given_or_the_one_the_study_measured_when_it_started(tmp_path, monkeypatch,
                                                                                        fashion_root):
    """A number is used as given; "measured" measures the task's model at init (vit-nano:
    0.02 sqrt(64) = 0.16) unless the study's sigma.json holds a measurement, which a
    resumed study reuses without measuring again (another machine would round differently)."""
    import json

    import evaluators
    from evaluators import ProxyTask

    task = ProxyTask(data_root=fashion_root)
    given = run.resolve_sigma(SearchConfig(sigma=1.0, runs_dir=str(tmp_path)), task)
    assert given == {"setting": 1.0, "sigma": 1.0, "preactivation": None}
    fresh = run.resolve_sigma(SearchConfig(runs_dir=str(tmp_path)), task)
    assert fresh["setting"] == "measured" and abs(fresh["sigma"] - 0.16) < 0.01
    assert fresh["preactivation"]["model"] == "vit-nano" and len(fresh["preactivation"]["per_layer"]) == 4
    config = SearchConfig(runs_dir=str(tmp_path))
    config.study_dir.mkdir(parents=True)
    (config.study_dir / "sigma.json").write_text(json.dumps({**fresh, "sigma": 0.2}))

    def no_measuring(*a, **k):
        raise AssertionError("a study that measured sigma must not measure it again")

    monkeypatch.setattr(evaluators, "preactivation_std", no_measuring)
    assert run.resolve_sigma(config, task)["sigma"] == 0.2
