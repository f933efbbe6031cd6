"""Datasets for proxy training: decoded once, held as tensors on the device.

Fashion-MNIST is the embedded default task. It is looked for, in this order:

1. ``root`` (the ``--data-root`` flag) or the ``EAFO_DATA_ROOT`` environment
   variable: a folder holding the four IDX files (``.gz`` or not), directly or in
   ``fashion-mnist/`` or torchvision's ``FashionMNIST/raw/`` below it. A root that
   was named explicitly is the only place looked at (a typo should not silently
   fall back to another copy).
2. Debian's ``/usr/share/datasets/fashion-mnist/`` (``apt-get install dataset-fashion-mnist``).
3. ``~/.cache/eafo-search/`` where an earlier ``download=True`` put it, or a new
   torchvision download there when ``download=True``.

CIFAR-10/100 come through torchvision's own loader (its on-disk format and
checksums) from ``root``/``EAFO_DATA_ROOT`` or the same cache folder.

Text corpora for the language-model track (``shakespeare``) live in
``evaluators.text``; ``list_datasets()`` names both kinds.

Batches follow airbench: the whole split lives on the device as one float
tensor; a batch is an index slice of a seeded ``randperm``; augmentation is done
on whole batches at once. No DataLoader, no worker processes.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from evaluators.exceptions import DataFormatError, DataNotFoundError
from evaluators.text import TEXT_DATASETS

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path(os.path.expanduser("~/.cache/eafo-search"))
ENV_ROOT = "EAFO_DATA_ROOT"

# The validation split and the training subset are drawn with these fixed seeds,
# never the trial seed: every trial (every candidate, every seed) is trained and
# scored on the same images, so differences between trials are the candidates'.
VAL_SPLIT_SEED = 20250124
TRAIN_SUBSET_SEED = 20250125

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# name -> (number of classes, default augmentation). Short proxy runs on
# Fashion-MNIST learn faster without augmentation; CIFAR follows airbench.
DATASETS = {
    "fashion_mnist": (10, "none"),
    "cifar10": (10, "crop_flip"),
    "cifar100": (100, "crop_flip"),
}
AUGMENTATIONS = ("none", "crop", "flip", "crop_flip")


def list_datasets() -> list[str]:
    """Every dataset name, image and text."""
    return sorted([*DATASETS, *TEXT_DATASETS])


def check_dataset(name: str) -> str:
    if name not in DATASETS and name not in TEXT_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(list_datasets())}")
    return name


def dataset_kind(name: str) -> str:
    """"image" or "text" (the kind of model preset that trains on it)."""
    return "text" if check_dataset(name) in TEXT_DATASETS else "image"


@dataclass(eq=False)
class RawDataset:
    """Decoded images (uint8, N x C x H x W) and labels (int64) of one dataset."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    source: str  # the folder it was read from
    _stats: tuple | None = field(default=None, repr=False)

    @property
    def in_chans(self) -> int:
        return self.train_images.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_images.shape[2]

    def channel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and std of the official training images, in [0, 1] units (cached)."""
        if self._stats is None:
            x = self.train_images
            s1 = np.zeros(x.shape[1])
            s2 = np.zeros(x.shape[1])
            for i in range(0, x.shape[0], 4096):  # chunks: no float copy of the whole set
                chunk = x[i:i + 4096].astype(np.float32) / 255.0
                s1 += chunk.sum(axis=(0, 2, 3), dtype=np.float64)
                s2 += np.square(chunk).sum(axis=(0, 2, 3), dtype=np.float64)
            n = x.shape[0] * x.shape[2] * x.shape[3]
            mean = s1 / n
            std = np.sqrt(np.maximum(s2 / n - mean ** 2, 1e-12))
            self._stats = (mean.astype(np.float32), std.astype(np.float32))
        return self._stats


# ---------------------------------------------------------------------------
# IDX files (Fashion-MNIST)
# ---------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) into a numpy array.

    Format (LeCun's MNIST page): a 4-byte magic ``0x00 0x00 <dtype> <ndim>``,
    then ``ndim`` big-endian uint32 sizes, then the data, row-major.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError
        raise DataFormatError(f"{path}: cannot be read as {'gzip' if opener is gzip.open else 'IDX'}: {e}") from e
    if len(data) < 4:
        raise DataFormatError(f"{path}: too short to be an IDX file ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_DTYPES or not 1 <= ndim <= 4:
        raise DataFormatError(f"{path}: bad IDX magic number 0x{data[:4].hex()} "
                              f"(expected 0x0000 <type code> <1..4 dims>, e.g. 0x00000803 for images)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFormatError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataFormatError(f"{path}: IDX header says {dims} x {dtype.itemsize} bytes = {expected} "
                              f"bytes of data, file has {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx_folder(folder: Path) -> Path | None:
    """The folder under `folder` holding all four Fashion-MNIST IDX files, if any."""
    for cand in (folder, folder / "fashion-mnist", folder / "fashion_mnist", folder / "FashionMNIST" / "raw"):
        if all(_idx_file(cand, stem) is not None for stem in FASHION_FILES.values()):
            return cand
    return None


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _missing_fashion(looked: list[str]) -> DataNotFoundError:
    return DataNotFoundError(
        "Fashion-MNIST not found (looked in: " + "; ".join(looked) + "). Provide it one of three ways:\n"
        f"  1. --data-root DIR (or data_root=DIR, or the {ENV_ROOT} environment variable): a folder with "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz\n"
        "  2. sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu; installs "
        f"{DEBIAN_FASHION_MNIST}/)\n"
        f"  3. --download (download=True): torchvision downloads it into {CACHE_DIR}/")


def _download_fashion(root: Path) -> Path:
    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
    found = _find_idx_folder(root)
    if found is None:
        raise DataNotFoundError(f"torchvision downloaded Fashion-MNIST into {root} but the IDX files are not there")
    return found


def _load_fashion_mnist(root: str | None, download: bool, origin: str) -> RawDataset:
    if root is not None:
        places = [Path(root).expanduser()]
    else:
        places = [DEBIAN_FASHION_MNIST, CACHE_DIR]
    folder = next((f for f in map(_find_idx_folder, places) if f is not None), None)
    if folder is None and download:
        folder = _download_fashion(places[0] if root is not None else CACHE_DIR)
    if folder is None:
        looked = [str(p) for p in places]
        if root is not None:
            looked[0] += f" (from {origin})"
        raise _missing_fashion(looked)
    arrays = {k: read_idx(_idx_file(folder, stem)) for k, stem in FASHION_FILES.items()}
    for part in ("train", "test"):
        imgs, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if imgs.ndim != 3 or labels.ndim != 1 or imgs.shape[0] != labels.shape[0]:
            raise DataFormatError(f"{folder}: {part} images {imgs.shape} do not match labels {labels.shape}")
        if labels.max(initial=0) >= 10:
            raise DataFormatError(f"{folder}: {part} labels go up to {labels.max()}, Fashion-MNIST has 10 classes")
    return RawDataset("fashion_mnist",
                      arrays["train_images"][:, None], arrays["train_labels"].astype(np.int64),
                      arrays["test_images"][:, None], arrays["test_labels"].astype(np.int64),
                      10, str(folder))


# ---------------------------------------------------------------------------
# CIFAR (torchvision's loader and on-disk format)
# ---------------------------------------------------------------------------

def _cifar_class(name: str, verify_checksums: bool):
    import torchvision

    base = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    if verify_checksums:
        return base
    # torchvision's check_integrity(path, md5=None) checks only that the file
    # exists: the one relaxation its API offers. The file lists are class
    # attributes, overridden the way torchvision's own CIFAR100 overrides CIFAR10's.
    return type(f"Unverified{base.__name__}", (base,), {
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def _load_cifar(name: str, root: str | None, download: bool, verify_checksums: bool) -> RawDataset:
    cls = _cifar_class(name, verify_checksums)
    folder = Path(root).expanduser() if root is not None else CACHE_DIR
    if download:
        folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for train in (True, False):
        try:
            ds = cls(str(folder), train=train, download=download)
        except RuntimeError as e:  # torchvision: "Dataset not found or corrupted..."
            raise DataNotFoundError(
                f"{name} not found or corrupted in {folder / cls.base_folder} ({e}). Provide it with "
                f"--data-root DIR (data_root=DIR, or {ENV_ROOT}) naming the folder that holds "
                f"{cls.base_folder}/, or with --download (download=True) to let torchvision fetch it "
                f"into {folder}/") from e
        images = np.ascontiguousarray(np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2))
        parts += [images, np.asarray(ds.targets, dtype=np.int64)]
    num_classes = DATASETS[name][0]
    for labels in (parts[1], parts[3]):
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataFormatError(f"{folder}: {name} labels outside [0, {num_classes})")
    return RawDataset(name, *parts, num_classes=num_classes, source=str(folder / cls.base_folder))


# ---------------------------------------------------------------------------
# Loading, cached in-process
# ---------------------------------------------------------------------------

_CACHE: dict[tuple, RawDataset] = {}


def load_dataset(name: str = "fashion_mnist", root: str | os.PathLike | None = None,
                 download: bool = False, verify_checksums: bool = True) -> RawDataset:
    """Decoded arrays of dataset `name`, read once per process (cached by name and root).

    root: a folder to read from (None: ``EAFO_DATA_ROOT``, then the defaults above).
    download: let torchvision download the dataset when it is not found.
    verify_checksums: CIFAR only; False accepts files whose md5 differs from
    torchvision's (a re-packed or generated copy), checking only that they exist.
    """
    if dataset_kind(name) != "image":
        raise ValueError(f"{name} is a text corpus: load it with evaluators.text.load_corpus")
    origin = "data_root"
    if root is None:
        root, origin = os.environ.get(ENV_ROOT) or None, ENV_ROOT
    root = None if root is None else str(root)
    key = (name, root, verify_checksums)
    ds = _CACHE.get(key)
    if ds is None:
        if name == "fashion_mnist":
            ds = _load_fashion_mnist(root, download, origin)
        else:
            ds = _load_cifar(name, root, download, verify_checksums)
        _CACHE[key] = ds
    return ds


def clear_cache() -> None:
    """Forget every decoded dataset (tests; freeing memory)."""
    _CACHE.clear()


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------

def stratified_subset(labels: np.ndarray, n: int, seed: int, num_classes: int | None = None) -> np.ndarray:
    """Indices of `n` items, as equal per class as the class sizes allow, sorted.

    Each class gives its first k items of a seeded permutation, so a smaller `n`
    gives a subset of a larger one (same seed).
    """
    labels = np.asarray(labels)
    if n > labels.size:
        raise ValueError(f"cannot take {n} items from {labels.size}")
    num_classes = int(labels.max(initial=-1)) + 1 if num_classes is None else num_classes
    rng = np.random.default_rng(seed)
    order = rng.permutation(labels.size)
    by_class = [order[labels[order] == c] for c in range(num_classes)]
    avail = np.array([len(b) for b in by_class])
    take = np.zeros(num_classes, dtype=np.int64)
    left = n
    while left > 0:  # water-filling: equal shares, classes that run out give theirs to the rest
        open_ = np.flatnonzero(take < avail)
        if open_.size == 0:
            raise ValueError(f"labels outside [0, {num_classes}): cannot take {n} items by class")
        share = max(left // len(open_), 1)
        for c in open_:
            k = min(share, avail[c] - take[c], left)
            take[c] += k
            left -= k
            if left == 0:
                break
    return np.sort(np.concatenate([b[:k] for b, k in zip(by_class, take)]))


@dataclass(frozen=True, eq=False)
class DeviceSplit:
    """What one trial trains and evaluates on, as normalised float tensors on one device."""

    train_x: torch.Tensor  # (N, C, H, W) float32
    train_y: torch.Tensor  # (N,) int64
    eval_x: torch.Tensor   # validation split, or the official test set
    eval_y: torch.Tensor
    eval_split: str        # "val" or "test"
    num_classes: int
    default_augment: str
    provenance: dict = field(default_factory=dict)  # where the images came from: saved with every result

    @property
    def in_chans(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[2]

    # The training loop asks any split (this one, or evaluators.text.TextSplit) for these two.
    def n_steps(self, batch_size: int) -> int:
        return steps_per_epoch(self.train_x.shape[0], batch_size)

    def batches(self, batch_size: int, generator: torch.Generator, augment_mode: str = "none"):
        return epoch_batches(self.train_x, self.train_y, batch_size, generator, augment_mode)


def prepare_split(name: str = "fashion_mnist", *, split: str = "val", train_size: int | None = None,
                  val_size: int = 5000, test_size: int | None = None, image_size: int | None = None,
                  device: str | torch.device = "cpu", root=None, download: bool = False,
                  verify_checksums: bool = True) -> DeviceSplit:
    """Tensors for one trial.

    A validation split of `val_size` images is carved from the official training
    set (stratified, fixed seed); `train_size` images are taken from the rest
    (stratified, fixed seed; None: all of the rest). split="val" evaluates on the
    validation split; split="test" trains on the same images and evaluates on the
    official test set (`test_size` stratified images of it; None: all of it).
    image_size pads (zeros, centred) up to that size, e.g. 28 -> 32.
    """
    if split not in ("val", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits: val, test")
    raw = load_dataset(name, root, download, verify_checksums)
    n = raw.train_labels.size
    if not 0 < val_size < n:
        raise ValueError(f"val_size={val_size} must be in [1, {n - 1}] for {name} ({n} training images)")
    val_idx = stratified_subset(raw.train_labels, val_size, VAL_SPLIT_SEED, raw.num_classes)
    rest = np.setdiff1d(np.arange(n), val_idx, assume_unique=True)
    if train_size is None:
        train_idx = rest
    elif 0 < train_size <= rest.size:
        train_idx = rest[stratified_subset(raw.train_labels[rest], train_size, TRAIN_SUBSET_SEED, raw.num_classes)]
    else:
        raise ValueError(f"train_size={train_size} must be in [1, {rest.size}] for {name} "
                         f"({n} training images less val_size={val_size})")
    if split == "val":
        eval_images, eval_labels = raw.train_images[val_idx], raw.train_labels[val_idx]
    else:
        m = raw.test_labels.size
        if test_size is None:
            test_idx = np.arange(m)
        elif 0 < test_size <= m:
            test_idx = stratified_subset(raw.test_labels, test_size, VAL_SPLIT_SEED, raw.num_classes)
        else:
            raise ValueError(f"test_size={test_size} must be in [1, {m}] for {name}")
        eval_images, eval_labels = raw.test_images[test_idx], raw.test_labels[test_idx]
    mean, std = raw.channel_stats()
    device = torch.device(device)

    def to_device(images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)  # uint8: 4x less to copy
        if image_size is not None and image_size != x.shape[-1]:
            if image_size < x.shape[-1]:
                raise ValueError(f"image_size={image_size} is smaller than {name}'s {x.shape[-1]}")
            lo = (image_size - x.shape[-1]) // 2
            hi = image_size - x.shape[-1] - lo
            x = F.pad(x, (lo, hi, lo, hi))  # black border, as the images' own background
        m = torch.as_tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, device=device).view(1, -1, 1, 1)
        return (x.float().div_(255.0) - m).div_(s)

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y)).to(device)

    return DeviceSplit(to_device(raw.train_images[train_idx]), labels(raw.train_labels[train_idx]),
                       to_device(eval_images), labels(eval_labels), split, raw.num_classes,
                       DATASETS[name][1], {"dataset": name, "source": raw.source})


# ---------------------------------------------------------------------------
# Batches and whole-batch augmentation
# ---------------------------------------------------------------------------

def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each image shifted by its own random offset in [-pad, pad] (reflect padding)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    cols = dx[:, None] + torch.arange(w, device=x.device)
    return xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image flipped left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, mode: str, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    if mode in ("crop", "crop_flip"):
        x = random_crop(x, pad, generator)
    if mode in ("flip", "crop_flip"):
        x = random_flip(x, generator)
    return x


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Full batches only (the last partial batch is dropped: equal steps, stable schedule);
    a set smaller than one batch is one batch."""
    return max(n // batch_size, 1)


def epoch_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator,
                  augment_mode: str = "none") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled (and augmented) training batches."""
    n = x.shape[0]
    perm = torch.randperm(n, generator=generator, device=x.device)
    for i in range(steps_per_epoch(n, batch_size)):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        xb = x[idx]
        if augment_mode != "none":
            xb = augment(xb, augment_mode, generator)
        yield xb, y[idx]


__all__ = ["RawDataset", "DeviceSplit", "load_dataset", "prepare_split", "read_idx", "stratified_subset",
           "list_datasets", "check_dataset", "dataset_kind", "epoch_batches", "augment", "random_crop",
           "random_flip", "steps_per_epoch",
           "clear_cache", "DATASETS", "AUGMENTATIONS", "CACHE_DIR", "DEBIAN_FASHION_MNIST", "ENV_ROOT"]
