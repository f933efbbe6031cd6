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


def resolve(names) -> dict:
    """{name: spaces.Candidate} in the given order (checked first)."""
    import spaces

    return {n: spaces.get_activation(n).candidate for n in check(names)}


__all__ = ["DEFAULT", "REFERENCE", "parse_names", "valid_names", "check", "resolve"]
