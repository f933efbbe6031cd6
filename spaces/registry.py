"""The activation registry: `get_activation(name)` -> an nn.Module class.

    >>> import spaces, timm
    >>> Act = spaces.get_activation("crrelu")        # class CRReLU, eps learnable (init 0.01)
    >>> model = timm.create_model("vit_tiny_patch16_224", act_layer=Act)

Where names come from, in this order:

1. every base of `spaces.bases` (`gelu`, `relu`, `leaky_relu`, ..., `identity`, and
   `prelu`, `squared_relu`, `star_relu`, whose own coefficients are learnable as in
   their papers: `spaces.bases.base_candidate`);
2. `crrelu`, the paper's CRReLU: relu(x) + eps*x*exp(-x**2/2), eps one learnable
   scalar per module, init 0.01 (`spaces.BASELINES["crrelu"]`);
3. activations written by `python -m search.export` into folders listed in the
   `EAFO_ACTIVATIONS_PATH` environment variable (os.pathsep-separated, read on
   every call) or added with `register_path(folder)`.

Built-in names return classes generated from their formulas by `spaces.codegen`,
not the torch.nn classes (`spaces.bases.torch_reference` gives those): so every
class the registry returns behaves alike, whatever its source: zero-argument
constructor, `inplace=` accepted, an autograd.Function that saves only its input,
`extra_repr` with the formula, `.candidate` (the `Candidate` it was generated
from) and its module's `use_compiled_kernels()`. Values and gradients equal the
torch.nn module's to 1e-6 (tests/test_registry.py).

Class names follow `class_name_for` (the same rule `search.export` uses):
`gelu` -> `GELU`, `leaky_relu` -> `LeakyReLU`, `crrelu` -> `CRReLU`, `trial_7` -> `Trial7`.

How exported activations are found, and what gets executed: an export is a pair
`<name>.py` + `<name>.json` (the sidecar). A folder is scanned for `*.json`
files carrying the key `"eafo_export"`; other files are ignored. The sidecar is
plain JSON (reading it executes nothing); its `name` must pass
`check_activation_name` and equal the file's stem, and its `sha256` must match
`<name>.py`. Only when `get_activation(name)` asks for that name are the file's
bytes read, checked against the hash again and executed (importing a module
runs its code). So only folders the user registers are ever imported from, and
only files exactly as export wrote them. A sidecar that fails these checks makes
its name unavailable, with the reason (a warning on scan, a ValueError on lookup).

One name, one function: the same name found twice with a different function
(formula, coefficient values or learnability) raises ValueError naming both
sources, never a silent overwrite. The same function twice is fine (the first
source found is used: built-ins, then the environment's folders, then the
registered ones).
"""
from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import os
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

from spaces.codegen import check_generated_names, load_module_source, module_source
from spaces.parse import check_name

ENV_VAR = "EAFO_ACTIVATIONS_PATH"
EXPORT_MARKER = "eafo_export"  # sidecar key; its value is the sidecar format version
EXPORT_FORMAT = 1
MAX_SIDECAR_BYTES = 1_000_000

# Parts of a name spelled as the literature (and torch.nn) spells them.
_SPELLINGS = {"relu": "ReLU", "crrelu": "CRReLU", "gelu": "GELU", "silu": "SiLU", "elu": "ELU",
              "celu": "CELU", "selu": "SELU", "prelu": "PReLU", "rrelu": "RReLU", "relu6": "ReLU6",
              "glu": "GLU", "geglu": "GEGLU", "swiglu": "SwiGLU", "eafo": "EAFO"}


def class_name_for(name: str) -> str:
    """The class name for activation (function) `name`.

    The name is split at underscores; each part is spelled as in `_SPELLINGS`
    (relu -> ReLU, gelu -> GELU, silu -> SiLU, crrelu -> CRReLU, ...) or else gets
    its first letter upper-cased; the parts are joined. If that equals `name`
    itself (a name already in CamelCase), "Module" is appended.
    """
    check_name(name, "activation name")
    cls = "".join(_SPELLINGS.get(p.lower(), p[:1].upper() + p[1:]) for p in name.split("_") if p)
    return cls + "Module" if cls == name else cls


def check_activation_name(name) -> str:
    """Return `name` if it can name an activation (file, function, class); else ValueError.

    An ASCII Python identifier of at most 32 characters, no leading underscore,
    no keyword, nor a name the generated module or the builtins use; the class
    name derived from it must be valid too.
    """
    if not isinstance(name, str) or not name.isascii():
        # ascii() shows confusables (Cyrillic 'а' looks like Latin 'a') as \u escapes
        raise ValueError(f"invalid activation name {ascii(name)}: must be an ASCII Python identifier")
    check_generated_names(name, class_name_for(name))
    return name


# ---- sources ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    name: str
    source: str          # where it came from, for messages
    candidate: object    # spaces.Candidate (the exported values as its inits)
    path: Path | None = None     # the exported module file (None: built-in)
    sha256: str | None = None
    class_name: str | None = None

    @property
    def identity(self) -> tuple:
        d = self.candidate.to_dict()
        return (d["formula"], tuple(sorted(d["init"].items())), tuple(sorted(d["learnable"])))


_builtin_entries: dict[str, _Entry] = {}
_registered: list[Path] = []
_classes: dict[tuple, type] = {}      # (name, source, sha256) -> class
_scans: dict[tuple, tuple] = {}       # (sidecar path, stats) -> (entry or None, reason or None)
_warned: set[tuple] = set()


def _builtins() -> dict[str, _Entry]:
    if not _builtin_entries:
        from spaces.bases import base_candidate, list_bases
        from spaces.space import BASELINES

        for base in list_bases():
            _builtin_entries[base] = _Entry(base, "built-in base", base_candidate(base))
        _builtin_entries["crrelu"] = _Entry("crrelu", "built-in (CRReLU, the paper's)",
                                            BASELINES["crrelu"])
    return _builtin_entries


def _env_paths() -> list[Path]:
    return [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p.strip()]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_sidecar(path: Path) -> tuple[_Entry | None, str | None]:
    """(entry, None) for a valid export sidecar, (None, reason) for a broken one,
    (None, None) for a JSON file that is not an export sidecar."""
    from spaces.candidate import Candidate

    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            return None, None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None, None  # not readable JSON: not one of ours
    if not isinstance(data, dict) or EXPORT_MARKER not in data:
        return None, None
    if data[EXPORT_MARKER] != EXPORT_FORMAT:
        return None, f"{path}: unsupported export format {data[EXPORT_MARKER]!r}"
    try:
        name = check_activation_name(data.get("name"))
    except ValueError as e:
        return None, f"{path}: {e}"
    if path.name != f"{name}.json":
        return None, f"{path}: names activation {name!r} but is not named {name}.json"
    if data.get("class") != class_name_for(name):
        return None, f"{path}: class {ascii(data.get('class'))} is not {class_name_for(name)!r}"
    module_path = path.with_suffix(".py")
    try:
        source = module_path.read_bytes()
    except OSError:
        return None, f"{path}: its module {module_path.name} is missing"
    if _sha256(source) != data.get("sha256"):
        return None, f"{module_path}: changed since export (sha256 differs from {path.name})"
    try:
        candidate = Candidate.from_dict(data["candidate"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return None, f"{path}: bad candidate: {e}"
    return _Entry(name, str(module_path), candidate, module_path, data["sha256"],
                  data["class"]), None


def _scan(folder: Path) -> tuple[dict[str, _Entry], dict[str, str]]:
    entries, broken = {}, {}
    try:
        sidecars = sorted(folder.glob("*.json"))
    except OSError:
        sidecars = []
    for path in sidecars:
        try:
            st, st_py = path.stat(), path.with_suffix(".py").stat()
            key = (str(path), st.st_mtime_ns, st.st_size, st_py.st_mtime_ns, st_py.st_size)
        except OSError:
            key = (str(path), None)
        if key not in _scans:
            _scans[key] = _read_sidecar(path)
        entry, reason = _scans[key]
        if entry is not None:
            entries[entry.name] = entry
        elif reason is not None:
            broken[path.stem] = reason
            if key not in _warned:
                _warned.add(key)
                warnings.warn(f"activation registry: skipping {reason}", stacklevel=3)
    return entries, broken


def _merge(into: dict[str, _Entry], new: dict[str, _Entry]) -> None:
    for name, e in new.items():
        old = into.get(name)
        if old is None:
            into[name] = e
        elif old.identity != e.identity:
            raise ValueError(
                f"activation {name!r} is defined twice with different functions: "
                f"{old.source} has {old.candidate.describe()} but {e.source} has "
                f"{e.candidate.describe()} (export one under another --name)")


def _entries() -> tuple[dict[str, _Entry], dict[str, str]]:
    entries = dict(_builtins())
    broken: dict[str, str] = {}
    seen = set()
    for folder in [*_env_paths(), *_registered]:
        resolved = folder.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        found, bad = _scan(folder)
        _merge(entries, found)
        for k, v in bad.items():
            broken.setdefault(k, v)
    return entries, broken


# ---- public API -------------------------------------------------------------------------

def register_path(folder) -> list[str]:
    """Add `folder` to the places exported activations are found; return the names found there.

    Raises ValueError if the folder does not exist, or if a name in it is already
    registered with a different function (then nothing of the folder is added).
    Registering a folder again is harmless.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"activation folder {str(folder)!r} does not exist or is not a folder")
    entries, _ = _entries()
    found, _ = _scan(folder)
    _merge(dict(entries), found)  # raises on a conflict before anything is registered
    if folder.resolve() not in {p.resolve() for p in _registered}:
        _registered.append(folder)
    return sorted(found)


def builtin_candidates() -> dict:
    """Every built-in activation by name, as a Candidate: the bases (with prelu's slope and
    star_relu's scale and bias learnable) and crrelu. Any of these names can serve as a
    baseline; `spaces.BASELINES` holds the default four."""
    return {name: e.candidate for name, e in _builtins().items()}


def list_activations(pattern: str | None = None) -> list[str]:
    """Every activation name, sorted; `pattern` filters with shell wildcards ("*relu*")."""
    names = sorted(_entries()[0])
    return names if pattern is None else [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def get_activation(name: str) -> type:
    """The nn.Module class registered as `name` (zero-argument constructible)."""
    if not isinstance(name, str):
        raise TypeError(f"activation name must be a string, got {type(name).__name__}")
    entries, broken = _entries()
    entry = entries.get(name)
    if entry is None:
        if name in broken:
            raise ValueError(f"activation {name!r} is unavailable: {broken[name]}")
        names = sorted(entries)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6) or \
            difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown activation {ascii(name)}{hint} (valid: {', '.join(names)})")
    key = (entry.name, entry.source, entry.sha256)
    if key not in _classes:
        _classes[key] = _load_builtin(entry) if entry.path is None else _load_exported(entry)
    return _classes[key]


def _load_builtin(entry: _Entry) -> type:
    c = entry.candidate
    cls_name = class_name_for(entry.name)
    source = module_source(c.code_expr(), c.learnable, class_name=cls_name, func_name=entry.name,
                           formula=c.formula,
                           docstring=f"{cls_name} activation ({entry.source}): {c.formula}")
    cls = getattr(load_module_source(source, f"eafo_activations.{entry.name}"), cls_name)
    cls.candidate = c
    return cls


def _load_exported(entry: _Entry) -> type:
    import torch

    source = entry.path.read_bytes()
    if _sha256(source) != entry.sha256:  # read once, checked, and these bytes are run
        raise ValueError(f"activation {entry.name!r}: {entry.path} changed since it was found")
    module = types.ModuleType(f"eafo_activations.{entry.name}")
    module.__file__ = str(entry.path)
    exec(compile(source, str(entry.path), "exec"), module.__dict__)  # noqa: S102 - see docstring
    sys.modules[module.__name__] = module  # (spaces.codegen.module_of finds it there)
    cls = getattr(module, entry.class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)) or \
            getattr(module, "FORMULA", None) != entry.candidate.formula:
        raise ValueError(f"activation {entry.name!r}: {entry.path} does not define "
                         f"{entry.class_name} for {entry.candidate.formula}")
    cls.candidate = entry.candidate
    return cls


__all__ = ["get_activation", "list_activations", "register_path", "builtin_candidates", "class_name_for",
           "check_activation_name", "ENV_VAR", "EXPORT_MARKER", "EXPORT_FORMAT"]
