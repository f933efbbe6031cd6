"""Export a search's winner as a standalone Python module.

    python -m search.export runs/<study> --out my_acts/ [--rank N] [--name NAME] [--learned] [--native] [--force]

writes `my_acts/<name>.py`, which imports only torch (plain PyTorch) and defines:

- `<name>(x, **coefficients, inplace=False)`: the formula as plain torch ops;
- `<Class>Function`: a torch.autograd.Function that saves only its input (backward
  is the sympy derivative), run op by op with in-place ops, or fused by torch.compile
  after `use_compiled_kernels()`;
- `<Class>`: the nn.Module (zero-argument constructible, `inplace=` accepted, one
  scalar nn.Parameter per learnable coefficient, the formula in its repr), ready
  for timm's `act_layer=`. It trains through the autograd.Function; wherever it is
  traced, scripted, exported or compiled (torch.jit, ONNX, torch.export,
  torch.compile) or runs without gradients, it computes the formula as plain torch
  ops, so those tools see real operators;
- `kernel_info()`: which kernels it runs;

with a docstring recording where it came from (formula, study, confirmed scores,
what the learned coefficients are, dates, library versions), and `my_acts/<name>.json`,
the same provenance as JSON plus the sha256 of the module (`spaces.get_activation`
finds exports through it: set EAFO_ACTIVATIONS_PATH=my_acts or call
`spaces.register_path("my_acts")`).

`--native` adds the engine's fused float32 CPU kernels: C source the module compiles
with the system's C compiler on first use (it then also imports the standard library's
ctypes, subprocess, ...), caching the library under ~/.cache/eafo-search/kernels; under
torch.compile of a model they run as two custom ops. Where no compiler works it warns
once and runs as a plain export does.

Rank 1 is the study's `best.json` (the confirmed winner); rank N is row N of
`leaderboard.json`. Coefficients start at the candidate's initial values, or with
`--learned` at the values training learned (`learned_coefficients`: one value per
activation module, i.e. per layer, in each trained model; the study keeps their mean,
averaged over the confirmation seeds where there are some, and every instance of the
exported class starts at that mean).

Names: by default the function is named after the leaderboard label (`crrelu`,
`trial_12`) and the class follows `spaces.registry.class_name_for`: split at
underscores, known parts spelled as in the literature (relu -> ReLU, gelu -> GELU,
silu -> SiLU, crrelu -> CRReLU), others capitalised, joined: `crrelu` -> `CRReLU`,
`trial_12` -> `Trial12`, `gelu_tanh` -> `GELUTanh`. `--name` overrides. A name must
be an ASCII identifier of at most 32 characters, without a leading underscore, not
a keyword, builtin, or the name of a standard-library or project module (the file
is `<name>.py` and must not shadow `os` or `torch` on sys.path).

Nothing of the input is copied into the module as text: the formula is re-parsed
with the safe parser (`Candidate.from_dict`) and the code printed from the parsed
tree; it must reproduce the fingerprint recorded with it, or the file is refused
as tampered. Provenance strings (study, label, dates, versions) must consist of
letters, digits and ` ._+-:/,=()@`; numbers must be finite. Any bad input is
one line on stderr and exit code 2, with nothing written: a folder of studies
(`runs/`) rather than a study, which the message lists; an existing export of the
same name, which only `--force` replaces (a file that export did not write, or
that changed since, is never replaced).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import platform
import re
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

from search.exceptions import UsageError

MAX_JSON_BYTES = 64 * 1024 * 1024
_SAFE_TEXT = re.compile(r"[A-Za-z0-9 ._+\-:/,=()@]{0,160}")
_FINGERPRINT = re.compile(r"[0-9a-f]{8,64}")
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,40}")
# The file is <name>.py: a name that is also an importable module the project or
# Python relies on would shadow it for anyone who puts the output folder on sys.path.
_SHADOWED = set(sys.stdlib_module_names) | {
    "torch", "torchvision", "timm", "numpy", "sympy", "scipy", "optuna", "ray", "spaces",
    "search", "evaluators", "bench", "tests", "conftest", "setup"}


# ---- validation of what the study folder holds ------------------------------------------

def _text(value, where: str) -> str:
    if not isinstance(value, str) or not _SAFE_TEXT.fullmatch(value):
        raise UsageError(f"{where}: {ascii(value)[:60]} is not plain text (letters, digits, "
                         "' ._+-:/,=()@', at most 160); refusing a tampered or foreign file")
    return value


def _number(value, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UsageError(f"{where}: expected a finite number, got {ascii(value)[:40]}")
    return float(value)


def _int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**63:
        raise UsageError(f"{where}: expected an integer, got {ascii(value)[:40]}")
    return value


def _dict(value, where: str, *, optional: bool = False) -> dict:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise UsageError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _read_json(path: Path):
    import json

    def no_constants(name):  # NaN / Infinity are no JSON and no score
        raise ValueError(f"non-finite number {name}")

    if not path.is_file():
        raise UsageError(f"{path} does not exist (has the search finished?)")
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise UsageError(f"{path} is larger than {MAX_JSON_BYTES // 2**20} MiB")
        return json.loads(path.read_text(encoding="utf-8"), parse_constant=no_constants)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"{path} is not valid JSON: {str(e).splitlines()[0][:120]}") from None


def _candidate(entry: dict, where: str):
    """The candidate, re-parsed safely, checked against the recorded fingerprint."""
    from spaces.candidate import Candidate

    d = _dict(entry.get("candidate"), f"{where}.candidate")
    if not isinstance(d.get("formula"), str):
        raise UsageError(f"{where}.candidate.formula: expected a string")
    init = _dict(d.get("init"), f"{where}.candidate.init", optional=True)
    for k, v in init.items():
        _number(v, f"{where}.candidate.init[{ascii(k)[:40]}]")
    learnable = d.get("learnable", [])
    if not isinstance(learnable, list) or not all(isinstance(n, str) for n in learnable):
        raise UsageError(f"{where}.candidate.learnable: expected a list of names")
    try:
        candidate = Candidate.from_dict({"formula": d["formula"], "init": init, "learnable": learnable})
        fingerprint = candidate.fingerprint
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError) as e:
        raise UsageError(f"{where}: refusing the candidate, its formula does not parse safely: "
                         f"{str(e).splitlines()[0][:160]}") from None
    recorded = entry.get("fingerprint")
    if not isinstance(recorded, str) or not _FINGERPRINT.fullmatch(recorded):
        raise UsageError(f"{where}.fingerprint: missing or not a hex fingerprint")
    if fingerprint != recorded:
        raise UsageError(f"{where}: refusing a tampered candidate: the formula re-parses to "
                         f"fingerprint {fingerprint}, the file records {recorded}")
    return candidate


def _learned(value, candidate, where: str) -> dict[str, float]:
    learned = _dict(value, where, optional=True)
    names = {c.name for c in candidate.coefficient_specs}
    out = {}
    for k, v in learned.items():
        if k not in names:
            raise UsageError(f"{where}: {ascii(k)[:40]} is not a coefficient of the candidate")
        out[k] = _number(v, f"{where}[{k}]")
    return out


def _scores(d: dict | None, where: str) -> dict | None:
    """The confirmed scores, validated: metric, mean, std, n_seeds, seeds, per_seed."""
    if d is None:
        return None
    d = _dict(d, where)
    direction = d.get("direction", "maximize")  # a best.json from before the LM track: accuracy
    if direction not in ("maximize", "minimize"):
        raise UsageError(f"{where}.direction: {ascii(direction)[:40]} is not maximize or minimize")
    out = {"metric": _text(d.get("metric", "score"), f"{where}.metric"), "direction": direction,
           "mean": _number(d.get("mean"), f"{where}.mean", optional=True),
           "std": _number(d.get("std"), f"{where}.std", optional=True),
           "n_seeds": _int(d.get("n_seeds", 0), f"{where}.n_seeds")}
    for key, check in (("seeds", _int), ("per_seed", _number)):
        values = d.get(key)
        if values is None:
            continue
        if not isinstance(values, list):
            raise UsageError(f"{where}.{key}: expected a list")
        out[key] = [check(v, f"{where}.{key}") for v in values]
    return out


def _vs_gelu(d, where: str) -> dict | None:
    if d is None:
        return None
    d = _dict(d, where)
    out = {k: _number(d.get(k), f"{where}.{k}", optional=True)
           for k in ("mean_diff", "ci_low", "ci_high")}
    beats = d.get("beats_gelu")
    if beats is not None and not isinstance(beats, bool):
        raise UsageError(f"{where}.beats_gelu: expected true or false")
    out["beats_gelu"] = beats
    return out


def _versions(d, where: str) -> dict[str, str]:
    d = _dict(d, where, optional=True)
    out = {}
    for k, v in d.items():
        if not isinstance(k, str) or not _KEY.fullmatch(k):
            raise UsageError(f"{where}: key {ascii(k)[:40]} is not a plain name")
        out[k] = "unknown" if v is None else _text(v, f"{where}.{k}")
    return out


def _summary(d, where: str) -> str:
    """`key=value, ...` of a dict's plain scalar fields (the rest stays in the JSON sidecar)."""
    if not isinstance(d, dict):
        return ""
    parts = []
    for k, v in d.items():
        if isinstance(k, str) and _KEY.fullmatch(k) and isinstance(v, (str, int, float)) \
                and not isinstance(v, bool):
            text = v if isinstance(v, str) else f"{v:g}" if isinstance(v, float) else str(v)
            if _SAFE_TEXT.fullmatch(text) and len(text) <= 40:
                parts.append(f"{k}={text}")
    return ", ".join(parts)


# ---- what gets exported ------------------------------------------------------------------

_STUDY_FILES = ("best.json", "leaderboard.json", "study.db", "config.json")


def _check_is_a_study(study_dir: Path) -> None:
    """A folder that holds studies rather than being one (`runs/`): say which it holds."""
    if any((study_dir / f).exists() for f in _STUDY_FILES):
        return
    try:
        studies = sorted(d for d in study_dir.iterdir() if d.is_dir() and any((d / f).exists() for f in _STUDY_FILES))
    except OSError:
        studies = []
    if not studies:
        return  # the message about a missing best.json (or leaderboard.json) says the rest
    listed = [f"{d} ({'finished' if (d / 'best.json').is_file() else 'no best.json yet: not finished'})"
              for d in studies[:8]]
    more = f" and {len(studies) - 8} more" if len(studies) > 8 else ""
    many = f"{len(studies)} studies" if len(studies) > 1 else "1 study"
    raise UsageError(f"{study_dir} is a folder of {many}, not a study; export one of them, "
                     f"e.g. python -m search.export {studies[0]} --out DIR. Studies: {'; '.join(listed)}{more}")


def _load_entry(study_dir: Path, rank: int) -> dict:
    """The chosen candidate and its provenance, every field validated."""
    if not study_dir.is_dir():
        raise UsageError(f"study folder {str(study_dir)!r} does not exist")
    _check_is_a_study(study_dir)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise UsageError(f"--rank must be a positive integer, got {rank!r}")
    best_path = study_dir / "best.json"
    best = _read_json(best_path) if rank == 1 or best_path.is_file() else None
    if best is not None and not isinstance(best, dict):
        raise UsageError(f"{best_path}: expected a JSON object")
    if rank == 1:
        entry, where = best, "best.json"
        scores = _scores(best.get("confirmed"), "best.json.confirmed")
    else:
        board = _read_json(study_dir / "leaderboard.json")
        if not isinstance(board, list):
            raise UsageError("leaderboard.json: expected a list of rows")
        if rank > len(board):
            raise UsageError(f"--rank {rank} is out of range: the leaderboard has {len(board)} rows")
        entry, where = _dict(board[rank - 1], f"leaderboard.json row {rank}"), f"leaderboard.json row {rank}"
        if entry.get("rank", rank) != rank:
            raise UsageError(f"{where} says rank {ascii(entry.get('rank'))[:20]}: rows are out of order")
        scores = _scores({"metric": entry.get("metric", "score"), **{k: entry.get(k) for k in
                          ("mean", "std", "n_seeds", "seeds", "per_seed")}}, where)
    candidate = _candidate(entry, where)
    confirmed_seeds = (scores or {}).get("n_seeds", 0) if (rank == 1 or entry.get("confirmed")) else 0
    study_default = study_dir.resolve().name
    prov = best or {}
    return {
        "candidate": candidate,
        "fingerprint": entry["fingerprint"],
        "label": _text(entry.get("label"), f"{where}.label"),
        "learned_coefficients": _learned(entry.get("learned_coefficients"), candidate,
                                         f"{where}.learned_coefficients"),
        "learned_over_seeds": confirmed_seeds,  # 0: one search trial's values
        "rank": rank,
        "confirmed": scores,
        "vs_gelu": _vs_gelu(entry.get("vs_gelu"), f"{where}.vs_gelu") if rank == 1 else None,
        "study": _text(prov.get("study", study_default), "best.json.study"),
        "created": _text(prov.get("created", "unknown"), "best.json.created"),
        "versions": _versions(prov.get("versions"), "best.json.versions"),
        "task": prov.get("task"),
        "search": prov.get("search"),
        "params": entry.get("params"),
    }


def _check_name(name: str) -> tuple[str, str]:
    from spaces.registry import check_activation_name, class_name_for

    try:
        check_activation_name(name)
        cls = class_name_for(name)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if name in _SHADOWED:
        raise UsageError(f"invalid name {name!r}: {name}.py would shadow the module {name!r}")
    return name, cls


def _export_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("eafo-search", "torch", "sympy", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return {k: v if _SAFE_TEXT.fullmatch(v) else "unknown" for k, v in out.items()}


def _fmt(v: float | None, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def _learned_text(e: dict) -> str:
    """What the study's learned coefficients are: means, over layers and seeds."""
    n = e["learned_over_seeds"]
    over = f"then over the {n} confirmation seeds" if n else "in the one search trial (not confirmed)"
    return (", ".join(f"{k}={v:.6g}" for k, v in e["learned_coefficients"].items()) +
            f" (each a mean: every activation module, one per layer, learns its own value; this is "
            f"their mean in each trained model, {over})")


def _docstring(e: dict, name: str, cls: str, values: dict, learned: bool, exported: str,
               export_versions: dict, native: bool) -> str:
    c = e["candidate"]
    lines = [f"{cls} activation, exported by eafo-search (python -m search.export).", "",
             f"formula: {c.formula}"]
    for spec in c.coefficient_specs:
        if spec.learnable:
            how = "the learned mean below" if learned else "its initial value"
            lines.append(f"coefficient {spec.name}: learnable, one per instance (layer), each starts at "
                         f"{values[spec.name]!r} ({how})")
        else:
            lines.append(f"coefficient {spec.name}: fixed at {spec.init!r}")
    if e["learned_coefficients"]:
        hint = "" if learned else "; --learned starts there"
        lines.append(f"learned in the study{hint}: {_learned_text(e)}")
    lines += ["", f"study: {e['study']}, rank {e['rank']}, label {e['label']}, "
                  f"fingerprint {e['fingerprint']}"]
    s = e["confirmed"]
    if s is None:
        lines.append("confirmed: not confirmed")
    else:
        seeds = f" (seeds {', '.join(map(str, s['seeds']))})" if s.get("seeds") else ""
        better = "lower" if s.get("direction") == "minimize" else "higher"
        lines.append(f"confirmed {s['metric']} ({better} is better): {_fmt(s['mean'])} +/- {_fmt(s['std'])} "
                     f"(mean +/- std over {s['n_seeds']} seeds){seeds}")
        if s.get("per_seed"):
            lines.append("per seed: " + ", ".join(_fmt(v) for v in s["per_seed"]))
    g = e["vs_gelu"]
    if g:
        verdict = {True: "beats GELU", False: "does not beat GELU", None: "n/a"}[g["beats_gelu"]]
        lines.append(f"vs GELU: mean improvement {_fmt(g['mean_diff'], '+.4f')} (+ is better), Holm CI "
                     f"[{_fmt(g['ci_low'], '+.4f')}, {_fmt(g['ci_high'], '+.4f')}]: {verdict}")
    for title, d in (("task", e["task"]), ("search", e["search"])):
        summary = _summary(d, title)
        if summary:
            lines.append(f"{title}: {summary}")
    lines.append(f"search run: {e['created']}; versions: " +
                 (", ".join(f"{k} {v}" for k, v in e["versions"].items()) or "unknown"))
    lines.append(f"exported: {exported}; versions: " +
                 ", ".join(f"{k} {v}" for k, v in export_versions.items()))
    lines += ["", "Usage:", f"    from {name} import {cls}, {name}",
              f"    model = timm.create_model('vit_tiny_patch16_224', act_layer={cls})",
              f"    y = {name}(x)  # plain function; {cls}Function is the memory-efficient form", ""]
    if native:
        lines += ["Built with --native: float32 CPU tensors run fused C kernels, compiled from the C source",
                  "below on first use. That needs a C compiler (gcc, or $CC) and a writable cache folder",
                  "(~/.cache/eafo-search/kernels, or $EAFO_KERNEL_CACHE); without them it warns once and",
                  "runs the torch kernels. Under torch.compile the C kernels run as two custom ops."]
    else:
        lines += ["Plain PyTorch: imports torch only. Training runs a memory-efficient autograd.Function",
                  "(saves only the input); traced, scripted, exported (ONNX, torch.export), compiled or",
                  "without gradients, forward computes the formula as plain torch ops."]
    # long lines (the learned coefficients' explanation) wrapped, continuations indented
    return "\n".join(wrapped for line in lines
                     for wrapped in (textwrap.wrap(line, 96, subsequent_indent="    ") or [""]))


def export_activation(study_dir, out_dir, rank: int = 1, name: str | None = None,
                      learned: bool = False, native: bool = False, force: bool = False) -> Path:
    """Write `<out_dir>/<name>.py` (and `<name>.json`) for the study's rank-`rank` candidate.

    native: with the fused float32 CPU kernels (C, built on first use); else plain PyTorch.
    force: replace an earlier export of the same name (never a file export did not write).
    Returns the path of the module. Raises `UsageError` (a ValueError) for bad or
    tampered input, or a file in the way, before writing anything.
    """
    return _export(study_dir, out_dir, rank, name, learned, native, force)[0]


def _export(study_dir, out_dir, rank: int = 1, name: str | None = None, learned: bool = False,
            native: bool = False, force: bool = False) -> tuple[Path, bool]:
    """export_activation, and whether it replaced an earlier export."""
    from search.atomic import write_json, write_text
    from spaces.candidate import Candidate
    from spaces.codegen import module_source
    from spaces.registry import EXPORT_FORMAT, EXPORT_MARKER

    study_dir, out_dir = Path(study_dir), Path(out_dir)
    e = _load_entry(study_dir, rank)
    if name is None:
        try:
            name, cls = _check_name(e["label"])
        except UsageError as err:
            raise UsageError(f"the label {e['label']!r} cannot name a module ({err}); "
                             "pass --name") from None
    else:
        name, cls = _check_name(name)
    c = e["candidate"]
    learnable = [s.name for s in c.coefficient_specs if s.learnable]
    if learned:
        missing = [n for n in learnable if n not in e["learned_coefficients"]]
        if missing:
            raise UsageError(f"--learned: no learned value for {', '.join(missing)} in the study")
        values = {s.name: e["learned_coefficients"][s.name] if s.learnable else s.init
                  for s in c.coefficient_specs}
        exported = Candidate.from_expr(c.expr, init=values, learnable=learnable)
    else:
        exported = c
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    versions = _export_versions()
    doc = _docstring(e, name, cls, {s.name: s.init for s in exported.coefficient_specs},
                     learned, now, versions, native)
    try:
        source = module_source(exported.code_expr(), exported.learnable, class_name=cls,
                               func_name=name, formula=exported.formula, docstring=doc, native=native)
        compile(source, f"{name}.py", "exec")  # a generator bug must not reach the disk
    except (ValueError, SyntaxError) as err:
        raise UsageError(f"cannot generate a module for {c.formula}: {err}") from None

    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {str(out_dir)!r} exists and is not a folder")
    py, sidecar = out_dir / f"{name}.py", out_dir / f"{name}.json"
    _check_replaceable(py, sidecar, force)
    replacing = py.exists() or sidecar.exists()
    info = {
        EXPORT_MARKER: EXPORT_FORMAT,
        "name": name, "class": cls, "function": name, "module": py.name,
        "sha256": hashlib.sha256(source.encode("utf-8")).hexdigest(),
        "formula": exported.formula,
        "candidate": exported.to_dict(),          # what the module computes (its inits)
        "searched_candidate": c.to_dict(),        # as the search ran it
        "fingerprint": e["fingerprint"],          # of the searched candidate
        "learned": bool(learned),
        "learned_coefficients": e["learned_coefficients"],
        "learned_coefficients_are": "means over each model's activation modules (layers), then over "
                                    f"{e['learned_over_seeds']} confirmation seeds" if e["learned_over_seeds"]
                                    else "means over the activation modules (layers) of one search trial",
        "native": bool(native),
        "study": e["study"], "study_dir": str(study_dir.resolve()), "rank": rank,
        "label": e["label"], "params": e["params"],
        "confirmed": e["confirmed"], "vs_gelu": e["vs_gelu"],
        "task": e["task"], "search": e["search"],
        "created": e["created"], "versions": e["versions"],
        "exported": now, "export_versions": versions,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(py, source)
    write_json(sidecar, info)
    return py, replacing


def _check_replaceable(py: Path, sidecar: Path, force: bool) -> None:
    """Refuse to write over anything but an earlier, unchanged export of the same name, and
    over that too unless `force`: never silently lose a user's file."""
    if not (py.exists() or sidecar.exists()):
        return
    data = _our_sidecar(sidecar)
    if data is None:
        what = py if py.exists() else sidecar
        raise UsageError(f"{what} exists and was not written by search.export; it is left as it is: "
                         "remove it, or choose another --name or --out")
    if py.exists() and hashlib.sha256(py.read_bytes()).hexdigest() != data.get("sha256"):
        raise UsageError(f"{py} was changed since it was exported; it is left as it is (even with --force): "
                         "remove it yourself, or choose another --name or --out")
    if not force:
        formula = data.get("formula") if isinstance(data.get("formula"), str) else "?"
        raise UsageError(f"{py} already holds an export ({ascii(formula)[1:-1][:80]}); nothing was written: "
                         "pass --force to replace it, or choose another --name or --out")


def _our_sidecar(sidecar: Path) -> dict | None:
    from spaces.registry import EXPORT_MARKER

    try:
        data = _read_json(sidecar)
    except UsageError:
        return None
    return data if isinstance(data, dict) and EXPORT_MARKER in data else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m search.export",
        description="Export a study's best (or rank-N) activation as a standalone torch module.")
    p.add_argument("study_dir", help="the study's results folder, <runs-dir>/<study>")
    p.add_argument("--out", required=True, help="folder to write <name>.py and <name>.json into")
    p.add_argument("--rank", type=int, default=1,
                   help="1: best.json (the confirmed winner); N: row N of leaderboard.json")
    p.add_argument("--name", default=None,
                   help="function name (default: the label); the class name is derived from it")
    p.add_argument("--learned", action="store_true",
                   help="start learnable coefficients at the values training learned (their mean over "
                        "layers and seeds)")
    p.add_argument("--native", action="store_true",
                   help="add the fused float32 CPU kernels (C, built on first use: needs a C compiler "
                        "and a cache folder); default: plain PyTorch")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier export of the same name in --out")
    args = p.parse_args(argv)
    try:
        path, replaced = _export(args.study_dir, args.out, rank=args.rank, name=args.name,
                                 learned=args.learned, native=args.native, force=args.force)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write to {args.out!r}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"{'replaced' if replaced else 'wrote'} {path} and {path.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
