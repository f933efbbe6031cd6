"""spaces.kernels.inline, and the shape of the code generator: the runtime is ordinary
modules whose text a generated module holds, not Python source inside strings."""
import ast
import re
from pathlib import Path

import pytest

import spaces
from spaces.codegen import check_generated_names, module_source
from spaces.kernels import inline

SPACES = Path(spaces.__file__).resolve().parent


@pytest.mark.parametrize("native", [False, True], ids=["plain", "native"])
def test_generated_module_holds_each_runtime_part_verbatim_after_its_imports(native):
    """Every part's code (its docstring as a comment, its top-level imports hoisted to the
    module's head, its imports from spaces.kernels dropped) is in the module's text, in
    order, after the hoisted imports; the module imports nothing from spaces."""
    c = spaces.BASELINES["crrelu"]
    src = module_source(c.code_expr(), c.learnable, class_name="C", func_name="c", formula=c.formula,
                        docstring="d", native=native)
    imports, runtime = inline.runtime_source(native)
    assert src.index(imports) < src.index(runtime)
    parts = inline.NATIVE_PARTS if native else inline.PLAIN_PARTS
    positions = [src.index(inline._part(name)[1]) for name in parts]
    assert positions == sorted(positions)
    tree = ast.parse(src)
    imported = {(a.name if isinstance(n, ast.Import) else n.module) for n in ast.walk(tree)
                if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not any(m.startswith("spaces") for m in imported)
    assert src.isascii() and "from __future__" not in src


def test_runtime_names_cannot_be_shadowed_by_a_user_name():
    """Every top-level name the runtime defines starts with an underscore (or is an import
    the kernels use), and names that start with one are refused for activations and
    coefficients: a user's name can never shadow the runtime's."""
    names = inline.runtime_names(native=True)
    assert names and all(n.startswith("_") or n in ("torch", "math") for n in names)
    for n in ("_Kernels", "_CKernels"):
        assert n in names
        with pytest.raises(ValueError):
            check_generated_names(n.lower(), "Act")


def test_a_part_with_a_public_name_or_a_future_import_is_refused(tmp_path, monkeypatch):
    """inline refuses a runtime part that defines a name without an underscore, or that has
    a __future__ import (it would apply to the whole generated module)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "eafo_part_public.py").write_text('"""doc"""\nimport torch\n\n\ndef visible():\n    pass\n')
    (tmp_path / "eafo_part_future.py").write_text('"""doc"""\nfrom __future__ import annotations\n')
    with pytest.raises(ValueError, match="underscore"):
        inline._part("eafo_part_public")
    with pytest.raises(ValueError, match="__future__"):
        inline._part("eafo_part_future")


def _strings(tree):
    """(line, text) of every string literal that is not a docstring, with an f-string's
    placeholders and a str.format template's `{name}` fields read as code would fill
    them: nothing where one starts a line (whole lines of code) or follows a name or a
    bracket (`x{coef_args}`: more arguments), else a name, `X0`."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            text = re.sub(r"(?m)(^[ \t]*|[\w)\]])\{[A-Za-z_]\w*(![rsa])?\}", r"\1", n.value)
            text = re.sub(r"\{[A-Za-z_]\w*(![rsa])?\}", "X0", text).replace("{{", "{").replace("}}", "}")
            yield n.lineno, text
        elif isinstance(n, ast.JoinedStr):
            yield n.lineno, "".join(v.value if isinstance(v, ast.Constant) else "X0" for v in n.values)


def test_no_file_in_spaces_holds_python_source_in_a_string_longer_than_20_lines():
    """The runtime of generated modules is ordinary modules (spaces/kernels/), pasted in
    from their own source: no string literal in spaces/ longer than 20 lines is Python
    (the C kernels' text, C, may be)."""
    found = []
    for path in SPACES.rglob("*.py"):
        for line, text in _strings(ast.parse(path.read_text())):
            if text.count("\n") >= 20:
                try:
                    ast.parse(text.strip("\n"))
                except SyntaxError:
                    continue
                found.append(f"{path.relative_to(SPACES)}:{line}")
    assert not found, found


def test_codegen_stays_small_and_spaces_modules_import_no_cycle():
    """spaces/codegen.py is under 600 lines (the kernels, their printers and the runtime
    live in spaces/kernels/), and no module of spaces imports itself through others (the
    code generator and the C printer used to import each other)."""
    assert len((SPACES / "codegen.py").read_text().splitlines()) < 600
    edges = {}
    for path in SPACES.rglob("*.py"):
        mod = ".".join(path.relative_to(SPACES.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("spaces"):
                for a in n.names:
                    sub = f"{n.module}.{a.name}"
                    deps.add(sub if (SPACES.parent / (sub.replace(".", "/") + ".py")).exists() else n.module)
            elif isinstance(n, ast.Import):
                deps |= {a.name for a in n.names if a.name.startswith("spaces")}
        edges[mod] = deps - {mod, "spaces"}  # (the package's __init__ imports everything on purpose)
    for start in edges:
        seen, todo = set(), [start]
        while todo:
            for dep in edges.get(todo.pop(), ()):
                assert dep != start, f"{start} imports itself through {sorted(seen)}"
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
