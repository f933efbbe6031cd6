"""evaluators.data on real Fashion-MNIST and on CIFAR-10 files in torchvision's genuine format."""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from evaluators import DataFormatError, DataNotFoundError, ProxyTask, load_dataset, prepare_split, read_idx
from evaluators import data as data_mod

FASHION = data_mod.DEBIAN_FASHION_MNIST
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def _write_idx(path, array: np.ndarray, gz: bool):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


# ---- Fashion-MNIST ----------------------------------------------------------------

@needs_fashion
def test_fashion_mnist_decodes_to_the_official_shapes_and_class_balance():
    ds = load_dataset("fashion_mnist")
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.test_labels).tolist() == [1000] * 10
    assert load_dataset("fashion_mnist") is ds  # decoded once per process


@needs_fashion
def test_raw_uncompressed_idx_files_in_a_data_root_are_read(tmp_path):
    ds = load_dataset("fashion_mnist")
    for stem, arr in [("train-images-idx3-ubyte", ds.train_images[:300, 0]),
                      ("train-labels-idx1-ubyte", ds.train_labels[:300]),
                      ("t10k-images-idx3-ubyte", ds.test_images[:50, 0]),
                      ("t10k-labels-idx1-ubyte", ds.test_labels[:50])]:
        _write_idx(tmp_path / stem, arr, gz=False)
    small = load_dataset("fashion_mnist", root=tmp_path)
    assert small.source == str(tmp_path)
    np.testing.assert_array_equal(small.train_images, ds.train_images[:300])
    np.testing.assert_array_equal(small.test_labels, ds.test_labels[:50])


def test_bad_idx_magic_is_a_clear_error(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">I", 0x12345678) + b"\0" * 64)
    with pytest.raises(DataFormatError, match="bad IDX magic number 0x12345678"):
        read_idx(bad)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(struct.pack(">HBBI", 0, 0x08, 1, 100) + b"\0" * 10)
    with pytest.raises(DataFormatError, match="says .100.* file has 10"):
        read_idx(path)


def test_missing_fashion_mnist_error_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv(data_mod.ENV_ROOT, str(tmp_path))  # an empty folder, named explicitly
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion_mnist")
    msg = str(info.value)
    assert "--data-root" in msg and "EAFO_DATA_ROOT" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--download" in msg and "download=True" in msg
    assert str(tmp_path) in msg
    assert isinstance(info.value, ValueError)


@needs_fashion
def test_validation_split_is_fixed_stratified_and_disjoint_from_training():
    a = prepare_split("fashion_mnist", train_size=2000, val_size=1000)
    b = prepare_split("fashion_mnist", train_size=1000, val_size=1000)
    assert torch.equal(a.eval_x, b.eval_x)  # the same validation images whatever the train size
    assert a.eval_y.bincount().tolist() == [100] * 10
    assert a.train_y.bincount().tolist() == [200] * 10
    # no validation image is also a training image
    train_rows = {r.numpy().tobytes() for r in a.train_x.flatten(1)}
    assert not any(r.numpy().tobytes() in train_rows for r in a.eval_x.flatten(1))
    # normalised with the training set's statistics
    assert abs(a.train_x.mean().item()) < 0.1 and abs(a.train_x.std().item() - 1) < 0.1


@needs_fashion
def test_test_split_keeps_the_training_images_and_scores_on_the_official_test_set():
    val = prepare_split("fashion_mnist", train_size=1000, val_size=1000)
    test = prepare_split("fashion_mnist", split="test", train_size=1000, val_size=1000, test_size=500)
    assert torch.equal(val.train_x, test.train_x)
    raw = load_dataset("fashion_mnist")
    mean, std = raw.channel_stats()
    first = torch.from_numpy((raw.test_images[:2000].astype(np.float32) / 255 - mean[0]) / std[0])
    assert test.eval_split == "test" and test.eval_x.shape[0] == 500
    assert any(torch.allclose(test.eval_x[0], f, atol=1e-5) for f in first)


@needs_fashion
def test_image_size_pads_28_to_32_with_background():
    s = prepare_split("fashion_mnist", train_size=100, val_size=100, image_size=32)
    assert s.train_x.shape[1:] == (1, 32, 32)
    border = torch.cat([s.train_x[:, :, :2].flatten(), s.train_x[:, :, -2:].flatten()])
    mean, std = load_dataset("fashion_mnist").channel_stats()
    assert torch.allclose(border, torch.tensor(-mean[0] / std[0]))  # raw 0: black, as the background


def test_stratified_subset_is_balanced_nested_and_fills_from_larger_classes():
    labels = np.array([0] * 50 + [1] * 50 + [2] * 5)
    idx = data_mod.stratified_subset(labels, 15, seed=1)
    assert np.bincount(labels[idx]).tolist() == [5, 5, 5]
    idx = data_mod.stratified_subset(labels, 30, seed=1)
    assert np.bincount(labels[idx]).tolist() == [13, 12, 5]  # class 2 runs out; the others give more
    small = data_mod.stratified_subset(labels, 15, seed=1)
    assert set(small) <= set(data_mod.stratified_subset(labels, 30, seed=1))


def test_batches_are_seeded_slices_and_augmentation_keeps_shapes():
    x = torch.arange(64 * 3 * 8 * 8, dtype=torch.float32).view(64, 3, 8, 8)
    y = torch.arange(64)
    def run(seed, mode):
        g = torch.Generator().manual_seed(seed)
        return list(data_mod.epoch_batches(x, y, 16, g, mode))
    a, b = run(0, "crop_flip"), run(0, "crop_flip")
    assert len(a) == 4 and all(xb.shape == (16, 3, 8, 8) for xb, _ in a)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    assert sorted(torch.cat([yb for _, yb in a]).tolist()) == list(range(64))  # a permutation
    plain = run(0, "none")
    assert torch.equal(plain[0][0], x[plain[0][1]])  # index slices of the data
    assert not torch.equal(a[0][0], plain[0][0])    # augmentation changed something


def test_random_crop_is_a_shift_of_the_image():
    x = torch.randn(5, 2, 10, 10)
    g = torch.Generator().manual_seed(3)
    out = data_mod.random_crop(x, 2, g)
    for i in range(5):  # each output is a 10x10 window of the reflect-padded image
        padded = torch.nn.functional.pad(x[i:i + 1], (2, 2, 2, 2), mode="reflect")[0]
        assert any(torch.equal(out[i], padded[:, dy:dy + 10, dx:dx + 10]) for dy in range(5) for dx in range(5))


# ---- CIFAR-10 through torchvision's loader --------------------------------------------

def _write_cifar10(root, per_batch=20, seed=0):
    """The genuine on-disk format: pickled dicts (protocol 2, as the originals),
    `data` rows of 3072 uint8 (1024 red, 1024 green, 1024 blue, row-major)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"img_{i}.png" for i in range(per_batch)]}, f, protocol=2)
        written[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"], "num_cases_per_batch": per_batch,
                     "num_vis": 3072}, f, protocol=2)
    return written


def test_cifar10_loads_through_torchvision_from_a_local_root_without_download(tmp_path):
    written = _write_cifar10(tmp_path)
    ds = load_dataset("cifar10", root=tmp_path, verify_checksums=False)
    assert ds.train_images.shape == (100, 3, 32, 32) and ds.test_images.shape == (20, 3, 32, 32)
    assert ds.num_classes == 10 and ds.in_chans == 3
    data, labels = written["data_batch_1"]
    np.testing.assert_array_equal(ds.train_images[0], data[0].reshape(3, 32, 32))  # channels first
    assert ds.train_labels[:20].tolist() == labels
    np.testing.assert_array_equal(ds.test_images.reshape(20, -1), written["test_batch"][0])


def test_cifar10_checksums_are_verified_by_default(tmp_path):
    _write_cifar10(tmp_path)  # generated files cannot match torchvision's md5s of the real ones
    with pytest.raises(DataNotFoundError, match="not found or corrupted.*--data-root.*--download"):
        load_dataset("cifar10", root=tmp_path)


def test_missing_cifar10_names_data_root_and_download(tmp_path):
    with pytest.raises(DataNotFoundError, match="--data-root.*--download"):
        load_dataset("cifar10", root=tmp_path / "nothing-here")


def test_cifar10_split_is_augmented_with_crop_and_flip_by_default(tmp_path):
    _write_cifar10(tmp_path)
    task = ProxyTask(dataset="cifar10", data_root=str(tmp_path), verify_checksums=False, device="cpu",
                     train_size=60, val_size=20, batch_size=20)
    split = task.load_split("val")
    assert split.train_x.shape == (60, 3, 32, 32) and split.eval_x.shape == (20, 3, 32, 32)
    assert split.default_augment == "crop_flip"


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid datasets: cifar10, cifar100, fashion_mnist"):
        load_dataset("mnist")
