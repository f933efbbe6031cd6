"""The runtime parts' source text, as a generated module holds it.

A generated activation module (spaces.codegen) is one file that imports only what its
parts import: the runtime modules of this package are pasted into it from their own
source. Pasting a part turns its docstring into a comment under the file's name,
hoists its top-level imports to the module's head (once each), and drops its imports
from `spaces.kernels`, whose names an earlier part defines in the same namespace. Checked here, for every part: ASCII, no `__future__` import (custom ops read
their annotations), and every top-level name starts with an underscore, so that no
user-given name (which never does) can shadow one.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from functools import lru_cache

# The parts in order (each may use the names of those before it).
PLAIN_PARTS = ("spaces.kernels.runtime",)
NATIVE_PARTS = PLAIN_PARTS + ("spaces.kernels.float32_ops", "spaces.kernels.c_loader",
                              "spaces.kernels.fused_cpu")


def _top_level_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = node.targets if isinstance(node, ast.Assign) else \
        [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
    return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]


def _import_names(node: ast.Import | ast.ImportFrom) -> list[str]:
    return [(a.asname or a.name).split(".")[0] for a in node.names]


@lru_cache(maxsize=None)
def _part(module_name: str) -> tuple[tuple[str, ...], str, frozenset, frozenset]:
    """(hoisted import lines, body text, names it defines, names it takes from earlier parts)."""
    source = inspect.getsource(importlib.import_module(module_name))
    if not source.isascii():
        raise ValueError(f"{module_name}: not ASCII")
    tree = ast.parse(source)
    lines = source.splitlines()
    drop, imports, defined, taken = set(), [], set(), set()
    for i, node in enumerate(tree.body):
        span = set(range(node.lineno - 1, node.end_lineno))
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            drop |= span  # the docstring
        elif isinstance(node, ast.ImportFrom) and node.module == "__future__":
            raise ValueError(f"{module_name}: a __future__ import would apply to the whole generated module")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spaces."):
            drop |= span
            taken |= {a.name for a in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            drop |= span
            imports.append("\n".join(lines[node.lineno - 1:node.end_lineno]))
            defined |= set(_import_names(node))
        else:
            defined |= set(_top_level_names(node))
    public = sorted(n for n in defined - {"torch", "math"} if not n.startswith("_"))
    if public:
        raise ValueError(f"{module_name}: top-level names {public} do not start with an underscore")
    doc = [f"# {line}".rstrip() for line in (ast.get_docstring(tree) or "").split("\n")]
    kept = "\n".join(line for i, line in enumerate(lines) if i not in drop)
    body = "\n".join([f"# ---- {module_name.replace('.', '/')}.py ----", *doc, "", "", ""]) + \
        re.sub(r"\n{4,}", "\n\n\n", kept).strip("\n")
    return tuple(imports), body + "\n", frozenset(defined), frozenset(taken)


@lru_cache(maxsize=None)
def runtime_source(native: bool) -> tuple[str, str]:
    """(import lines, runtime text) of a generated module: the plain runtime, and with
    `native` the fused float32 CPU kernels' parts too."""
    imports, bodies, defined = [], [], set()
    for name in NATIVE_PARTS if native else PLAIN_PARTS:
        part_imports, body, names, taken = _part(name)
        missing = taken - defined
        if missing:
            raise ValueError(f"{name} takes {sorted(missing)} from a part that is not pasted before it")
        imports += [line for line in part_imports if line not in imports]
        bodies.append(body)
        defined |= names
    return "\n".join(imports) + "\n", "\n\n".join(bodies)


def runtime_names(native: bool) -> frozenset:
    """Every top-level name the runtime text defines (imports included)."""
    return frozenset().union(*(_part(n)[2] for n in (NATIVE_PARTS if native else PLAIN_PARTS)))
