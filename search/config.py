"""The one flat configuration of a search (nanoGPT style).

Every CLI option is one field here, with its unit and the reason for its
default. The resolved config is saved as `config.json` beside the results;
loading one rejects unknown keys, so a typo cannot be silently dropped.

The task's model and sizes depend on the kind of dataset: left unset (None),
they are filled from `track_defaults(dataset)` when the config is made, so
`--dataset shakespeare` alone gets the language-model track's gpt-nano and
sizes, and config.json always holds the values that ran.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from search.baselines import DEFAULT as DEFAULT_BASELINES
from search.exceptions import UsageError
from search.records import DictRecord


@dataclass
class SearchConfig(DictRecord):
    # ---- what is searched, on which task --------------------------------------
    space: str = "eafo_default"     # a name from spaces.list_spaces()
    dataset: str = "fashion_mnist"  # embedded default task: Debian's dataset-fashion-mnist;
                                    # shakespeare: the language-model track (evaluators.text)
    # model, epochs and the sizes: None takes track_defaults(dataset) (IMAGE_DEFAULTS or the
    # text track's evaluators.task.TEXT_DEFAULTS), filled in when the config is made
    model: str | None = None        # images: vit-nano; text: gpt-nano (evaluators.list_models())
    mlp: str = "plain"              # plain | glu: the candidate gates a gated MLP, act(x W) * (x V)
                                    # (transformers; SwiGLU with silu, GEGLU with gelu)
    epochs: int | None = None       # per trial (and per confirmation run)
    train_size: int | None = None   # images per trial (stratified subset); text: sequences per epoch
    val_size: int | None = None     # validation images carved from the training set: the search metric;
                                    # text: characters scored on the validation part
    test_size: int | None = None    # test images (text: characters) scoring confirmation (None for
                                    # images: all, 10,000 for Fashion-MNIST: 0.36 pp sampling error at 85 %)
    seed: int = 0                   # seeds the sampler and every search trial's training;
                                    # confirmation uses seed+1 .. seed+confirm_seeds
    sigma: float | str = "measured"  # std of the activation's input the EAFO corrections and zero-cost
                                    # scores assume (x ~ N(0, sigma^2)): "measured" on the proxy model at
                                    # init (evaluators.preactivation_std: vit-nano 0.158), or a number
                                    # (1 = the paper's); the resolved value is saved in preactivation.json
    # ---- how much search ------------------------------------------------------
    trials: int = 12                # evaluated trials the study should hold, the baselines included;
                                    # duplicates (free) do not count; a rerun only runs what is missing
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))  # trained first,
                                    # confirmed beside the best; names of spaces.list_activations();
                                    # gelu (the reference of the winner decision) must be one
    timeout: float | None = None    # seconds for the search phase (None: no limit); the running
                                    # trial finishes, confirmation is not limited
    sampler: str = "tpe"            # tpe (multivariate, grouped: the space is conditional) | gp | random
    prefilter: int = 1              # proposals the sampler draws per trained candidate; the zero-cost
                                    # surrogate (evaluators.prefilter) trains the most promising one.
                                    # 1: off (every proposal is trained)
    pruner: str = "none"            # none | median | hyperband; steps are epochs. With the default 3
                                    # epochs, median pruning after epoch 1 stopped 7 of 8 searched
                                    # candidates (measured), leaving too few to confirm for a saving
                                    # of ~1 min; use median/hyperband with 10+ epochs
    # ---- confirmation: one seed lies -------------------------------------------
    confirm_top: int = 2            # distinct best search candidates retrained, besides the baselines
    confirm_seeds: int = 3          # most fresh seeds per confirmed candidate, scored on the test split
    racing: bool = True             # seeds in rounds (3, 5, 8, 10, ...), only to candidates still ahead
                                    # of GELU (search.racing); False: every candidate on every seed
    transfer_to: str | None = None  # "DATASET:MODEL" (search.transfer): after confirmation, train the
                                    # confirmed candidates on this second task over the same seeds
    transfer_set: dict = field(default_factory=dict)  # ProxyTask settings of the transfer task over
                                    # its track's defaults, e.g. {"epochs": 2} (--transfer-set KEY=VALUE)
    # ---- where results go -------------------------------------------------------
    study: str | None = None        # study name (None: "<space>-<dataset>-<model>")
    runs_dir: str = "runs"          # results go to <runs_dir>/<study>/
    storage: str | None = None      # Optuna storage URL (None: sqlite:///<runs_dir>/<study>/study.db)
    heartbeat_interval: int = 10    # seconds between a running trial's heartbeats
    grace_period: int = 60          # seconds without a heartbeat before a trial counts as dead
                                    # and is retried (a killed run)
    # ---- hardware and data --------------------------------------------------------
    device: str = "auto"            # auto (cuda if available, else cpu) | cpu | cuda | cuda:N | mps
    data_root: str | None = None    # folder holding the dataset (None: EAFO_DATA_ROOT, Debian's copy, cache)
    download: bool = False          # let torchvision download a missing dataset
    # ---- backend --------------------------------------------------------------------
    backend: str = "optuna"         # optuna (embedded, SQLite) | ray (Ray Tune, search/ray_backend.py)
    ray_address: str | None = None  # Ray cluster to join, e.g. "auto" or "127.0.0.1:6379" (None: start one)
    cpus_per_trial: float = 1.0     # Ray resources reserved per trial
    gpus_per_trial: float = 0.0     # Ray resources reserved per trial (fractions share a GPU)
    max_concurrent: int | None = None  # Ray trials at once (None: as many as resources allow)

    # ------------------------------------------------------------------------------
    def __post_init__(self):
        unset = [k for k in TRACK_KEYS if getattr(self, k) is None]
        if unset:  # test_size None stays "all" for images, whose default it is
            defaults = track_defaults(self.dataset)
            for k in unset:
                setattr(self, k, defaults[k])

    @property
    def study_name(self) -> str:
        glu = "-glu" if self.mlp == "glu" else ""
        return self.study or f"{self.space}-{self.dataset}-{self.model}{glu}"

    @property
    def study_dir(self) -> Path:
        return Path(self.runs_dir) / self.study_name

    @property
    def storage_url(self) -> str:
        if self.storage is not None:
            return self.storage
        return "sqlite:///" + str((self.study_dir / "study.db").absolute())

    @property
    def confirmation_seeds(self) -> list[int]:
        """Fresh seeds for confirmation, never the search seed."""
        return [self.seed + 1 + i for i in range(self.confirm_seeds)]

    def validate(self) -> "SearchConfig":
        """Check values that need no I/O; raise UsageError naming the bad one."""
        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")

        for name in ("trials", "epochs", "train_size", "val_size", "confirm_top", "prefilter",
                     "heartbeat_interval", "grace_period"):
            positive_int(name)
        if isinstance(self.confirm_seeds, bool) or not isinstance(self.confirm_seeds, int) \
                or self.confirm_seeds < 2:
            raise UsageError(f"--confirm-seeds must be an integer >= 2 (a mean +- std needs two seeds), "
                             f"got {self.confirm_seeds!r}")
        if self.grace_period <= self.heartbeat_interval:
            raise UsageError(f"--grace-period ({self.grace_period} s) must be longer than "
                             f"--heartbeat-interval ({self.heartbeat_interval} s)")
        if self.test_size is not None and (isinstance(self.test_size, bool) or not isinstance(self.test_size, int)
                                           or self.test_size < 1):
            raise UsageError(f"--test-size must be a positive integer, got {self.test_size!r}")
        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise UsageError(f"--timeout must be a positive number of seconds, got {self.timeout!r}")
        if self.sigma != SIGMA_MEASURED and (isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float))
                                             or not math.isfinite(self.sigma) or self.sigma <= 0):
            raise UsageError(f"--sigma must be {SIGMA_MEASURED!r} or a positive number, got {self.sigma!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed!r}")
        for name, valid in (("sampler", SAMPLERS), ("pruner", PRUNERS), ("backend", BACKEND_NAMES),
                            ("mlp", MLPS)):
            if getattr(self, name) not in valid:
                raise UsageError(f"unknown {name} {getattr(self, name)!r}; valid: {', '.join(valid)}")
        if not (self.cpus_per_trial > 0 and math.isfinite(self.cpus_per_trial)):
            raise UsageError(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial!r}")
        if not (self.gpus_per_trial >= 0 and math.isfinite(self.gpus_per_trial)):
            raise UsageError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial!r}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UsageError(f"--max-concurrent must be a positive integer, got {self.max_concurrent!r}")
        if not _STUDY_NAME.fullmatch(self.study_name):
            raise UsageError(f"study name {self.study_name!r} must be letters, digits, '.', '_' or '-' "
                             "(it names a folder)")
        if not self.runs_dir:
            raise UsageError("--runs-dir must not be empty")
        if not isinstance(self.baselines, list) or not all(isinstance(b, str) for b in self.baselines):
            raise UsageError(f"--baselines must be a list of activation names, got {self.baselines!r}")
        if not isinstance(self.transfer_set, dict):
            raise UsageError(f"--transfer-set must be KEY=VALUE settings, got {self.transfer_set!r}")
        if self.transfer_to is not None:
            from search.transfer import parse

            parse(self.transfer_to)  # UsageError for a malformed DATASET:MODEL
        if self.transfer_set and not self.transfer_to:
            raise UsageError("--transfer-set sets the transfer task: it needs --transfer-to DATASET:MODEL")
        return self

    # ---- config.json (to_dict, from_dict: DictRecord) ---------------------------------
    @classmethod
    def unknown_keys_error(cls, unknown: list[str], known: set[str]) -> Exception:
        return UsageError(f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(known))}")

    @classmethod
    def load(cls, path: str | Path) -> "SearchConfig":
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{path} is not a readable config file ({e}); leaving it as it is") from e
        if not isinstance(d, dict):
            raise UsageError(f"{path} does not hold a JSON object; leaving it as it is")
        return cls.from_dict({**LEGACY, **d})

    def study_mismatch(self, saved: "SearchConfig") -> list[str]:
        """Settings that define a study's results and differ from those it was run with."""
        return [f"{k}={getattr(saved, k)!r} (now {getattr(self, k)!r})" for k in STUDY_KEYS
                if getattr(saved, k) != getattr(self, k)]


# The search's task settings for image datasets: a budget for 2 CPU cores (vit-nano, a 139k-
# parameter ViT, about 4 s per 10k images on 2 cores; 3 epochs are enough to separate
# activations on Fashion-MNIST). Text datasets take evaluators.task.TEXT_DEFAULTS'.
IMAGE_DEFAULTS = {"model": "vit-nano", "epochs": 3, "train_size": 5000, "val_size": 2000, "test_size": None}
TRACK_KEYS = tuple(IMAGE_DEFAULTS)


# The image datasets (evaluators.data.DATASETS, kept equal by tests/test_search_config.py):
# the default path knows them without importing evaluators, hence torch, so --help and a
# usage error stay instant. Any other name is looked up in evaluators (unknown: ValueError).
IMAGE_DATASETS = ("fashion_mnist", "cifar10", "cifar100")


def track_defaults(dataset: str) -> dict:
    """The search's model and sizes for `dataset` (its kind: image or text); ValueError
    naming the valid datasets for an unknown one."""
    if dataset in IMAGE_DATASETS:
        return dict(IMAGE_DEFAULTS)
    from evaluators.data import dataset_kind

    if dataset_kind(dataset) == "text":
        from evaluators.task import TEXT_DEFAULTS

        return {k: TEXT_DEFAULTS[k] for k in TRACK_KEYS}
    return dict(IMAGE_DEFAULTS)


# Fields whose change would make a study's earlier results incomparable with new ones
# (the dataset's kind comes with the dataset).
STUDY_KEYS = ("space", "dataset", "model", "mlp", "epochs", "train_size", "val_size", "test_size", "seed",
              "sigma")
# What a study saved before a key existed ran with: sigma 1, the paper's (before --sigma).
LEGACY = {"sigma": 1.0}
SIGMA_MEASURED = "measured"

SAMPLERS = ("tpe", "gp", "random")
MLPS = ("plain", "glu")  # evaluators.models.MLPS, spelled here so that validate imports no torch
PRUNERS = ("none", "median", "hyperband")
BACKEND_NAMES = ("optuna", "ray")
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
