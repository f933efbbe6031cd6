"""The baselines every study trains first and confirms beside its best candidates.

`--baselines gelu,relu,silu,crrelu,prelu` names them. Any activation the
`spaces` registry offers is valid (`spaces.list_activations()`: every built-in
base, `crrelu`, whatever later versions of `spaces` add, and activations you
exported into a folder on `EAFO_ACTIVATIONS_PATH`), so nothing here lists them.
GELU is always one of them: it is the reference of the winner decision.
"""
from __future__ import annotations

from search.exceptions import UsageError

DEFAULT = ("gelu", "relu", "silu", "crrelu")
REFERENCE = "gelu"  # every candidate's improvement is measured against it
# A gated MLP is named after its gate's activation (Shazeer 2020, "GLU Variants Improve
# Transformer"): GLU is the sigmoid gate, Bilinear the identity.
GLU_NAMES = {"gelu": "GEGLU", "silu": "SwiGLU", "relu": "ReGLU", "sigmoid": "GLU", "identity": "Bilinear"}


def parse_names(text: str) -> list[str]:
    """'gelu, relu,silu' -> ['gelu', 'relu', 'silu'] (the command line's form)."""
    return [n.strip() for n in str(text).split(",") if n.strip()]


def valid_names() -> list[str]:
    import spaces

    return spaces.list_activations()


def check(names) -> list[str]:
    """The names, checked: known to the registry, no repeats, GELU among them; else UsageError."""
    names = list(names)
    valid = valid_names()
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        what = f"unknown baseline(s) {', '.join(map(repr, unknown))}" if unknown else "no baselines given"
        raise UsageError(f"--baselines: {what}; valid names: {', '.join(valid)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"--baselines: {', '.join(repeated)} named twice")
    if REFERENCE not in names:
        raise UsageError(f"--baselines must include {REFERENCE}: every candidate is compared with it")
    return names


def display_name(label: str, mlp: str = "plain") -> str:
    """What a leaderboard row is called in a model whose MLPs are `mlp`: its label in a plain
    MLP; in a gated one (mlp "glu"), a baseline takes Shazeer's name (GEGLU, SwiGLU, ReGLU)
    or `<label>-glu`. Searched candidates (`trial_<n>`) keep their label: the whole study is gated."""
    if mlp != "glu" or (label.startswith("trial_") and label[6:].isdigit()):
        return label
    return GLU_NAMES.get(label, f"{label}-glu")


def reference_name(mlp: str = "plain") -> str:
    """The reference as tables and verdicts name it: GELU, or GEGLU in a gated MLP."""
    return GLU_NAMES[REFERENCE] if mlp == "glu" else REFERENCE.upper()


def resolve(names) -> dict:
    """{name: spaces.Candidate} in the given order (checked first)."""
    import spaces

    return {n: spaces.get_activation(n).candidate for n in check(names)}


__all__ = ["DEFAULT", "REFERENCE", "GLU_NAMES", "parse_names", "valid_names", "check", "resolve", "display_name",
           "reference_name"]
