"""Safe parsing of user formulas into sympy expressions.

The string goes through Python's `ast.parse(mode="eval")` and then through a
walker that accepts a short whitelist of node types, operators and function
names, building the sympy expression node by node. Nothing here calls `eval`,
`exec`, `sympify` or `parse_expr` on user text (sympify executes code).
"""
from __future__ import annotations

import ast
import keyword
import math

import sympy as sp

from spaces.functions import ACTIVATION_FUNCTIONS, X

MAX_FORMULA_CHARS = 1_000
MAX_LITERAL = 1e6          # larger literals are almost always typos or attacks
MAX_EXPONENT = 16          # x**16 already explodes on [-5, 5]; the sanity filter says so
MAX_NAME_CHARS = 32
MAX_DEPTH = 64             # nesting depth of the expression tree

# Function names a formula may call, with their argument count.
_ELEMENTARY: dict[str, tuple[object, int]] = {
    "exp": (sp.exp, 1),
    "log": (sp.log, 1),
    "sqrt": (sp.sqrt, 1),
    "sin": (sp.sin, 1),
    "cos": (sp.cos, 1),
    "tanh": (sp.tanh, 1),
    "atan": (sp.atan, 1),
    "asinh": (sp.asinh, 1),
    "erf": (sp.erf, 1),
    "abs": (sp.Abs, 1),
    "Abs": (sp.Abs, 1),
    "max": (sp.Max, 2),
    "Max": (sp.Max, 2),
    "min": (sp.Min, 2),
    "Min": (sp.Min, 2),
    "identity": (lambda a: a, 1),
}
FUNCTIONS: dict[str, tuple[object, int]] = {
    **_ELEMENTARY,
    **{name: (cls, 1) for name, cls in ACTIVATION_FUNCTIONS.items()},
}
CONSTANTS = {"pi": sp.pi, "E": sp.E}

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def check_name(name: str, what: str = "name") -> str:
    """Validate a coefficient/activation name; return it or raise ValueError."""
    if not isinstance(name, str) or not name.isidentifier() or not name.isascii():
        raise ValueError(f"invalid {what} {name!r}: must be an ASCII Python identifier")
    if name.startswith("_"):
        raise ValueError(f"invalid {what} {name!r}: leading underscores are reserved")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ValueError(f"invalid {what} {name!r}: Python keyword")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"invalid {what} {name!r}: longer than {MAX_NAME_CHARS} characters")
    return name


def coefficient_symbol(name: str) -> sp.Symbol:
    """The sympy symbol used for coefficient `name` (real, like x)."""
    check_name(name, "coefficient name")
    if name == "x" or name in FUNCTIONS or name in CONSTANTS:
        raise ValueError(f"invalid coefficient name {name!r}: reserved")
    return sp.Symbol(name, real=True)


def parse_expression(formula: str) -> sp.Expr:
    """Parse `formula` into a sympy expression in x and coefficient symbols."""
    if not isinstance(formula, str):
        raise ValueError(f"formula must be a string, got {type(formula).__name__}")
    if len(formula) > MAX_FORMULA_CHARS:
        raise ValueError(f"formula longer than {MAX_FORMULA_CHARS} characters ({len(formula)})")
    if not formula.strip():
        raise ValueError("empty formula")
    try:
        tree = ast.parse(formula.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"formula is not valid syntax: {e.msg} in {formula!r}") from None
    return _Builder().build(tree.body, depth=0)


class _Builder:
    def build(self, node: ast.AST, depth: int) -> sp.Expr:
        if depth > MAX_DEPTH:
            raise ValueError(f"formula nested deeper than {MAX_DEPTH} levels")
        d = depth + 1
        if isinstance(node, ast.Constant):
            return self._number(node.value)
        if isinstance(node, ast.Name):
            return self._name(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.build(node.operand, d)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                return self._pow(self.build(node.left, d), self.build(node.right, d))
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise ValueError(f"operator {type(node.op).__name__} is not allowed")
            return op(self.build(node.left, d), self.build(node.right, d))
        if isinstance(node, ast.Call):
            return self._call(node, d)
        raise ValueError(f"{_describe(node)} is not allowed in a formula")

    def _number(self, value) -> sp.Expr:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"constant {value!r:.40} is not allowed (only numbers)")
        if not math.isfinite(value) or abs(value) > MAX_LITERAL:
            raise ValueError(f"number {value!r} is too large (limit {MAX_LITERAL:g})")
        if isinstance(value, int):
            return sp.Integer(value)
        return sp.nsimplify(value, rational=True) if float(value).is_integer() else sp.Float(repr(value))

    def _name(self, name: str) -> sp.Expr:
        if name.startswith("__") or name.startswith("_"):
            raise ValueError(f"name {name!r} is not allowed (leading underscore)")
        if name == "x":
            return X
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in FUNCTIONS:
            raise ValueError(f"function {name!r} used without a call")
        return coefficient_symbol(name)

    def _pow(self, base: sp.Expr, exponent: sp.Expr) -> sp.Expr:
        if exponent.is_Number:
            if abs(float(exponent)) > MAX_EXPONENT:
                raise ValueError(f"exponent {exponent} is too large (limit {MAX_EXPONENT})")
            if base.is_Number and base != 0:
                # Refuse before computing: 9**9**9 would take forever.
                if abs(float(exponent)) * math.log10(abs(float(base))) > math.log10(MAX_LITERAL):
                    raise ValueError(f"{base}**{exponent} is too large (limit {MAX_LITERAL:g})")
        return sp.Pow(base, exponent)

    def _call(self, node: ast.Call, depth: int) -> sp.Expr:
        if not isinstance(node.func, ast.Name):
            raise ValueError(f"{_describe(node.func)} cannot be called; only named functions")
        name = node.func.id
        if name not in FUNCTIONS:
            raise ValueError(
                f"unknown function {name!r}; allowed: {', '.join(sorted(FUNCTIONS))}")
        if node.keywords:
            raise ValueError(f"keyword arguments are not allowed (in {name}(...))")
        func, arity = FUNCTIONS[name]
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ValueError(f"starred arguments are not allowed (in {name}(...))")
        if len(node.args) != arity:
            raise ValueError(f"{name} takes {arity} argument(s), got {len(node.args)}")
        args = [self.build(a, depth) for a in node.args]
        return func(*args)


def _describe(node: ast.AST) -> str:
    """A short, safe description of an AST node for error messages."""
    kind = type(node).__name__
    try:
        text = ast.unparse(node)
    except Exception:  # unparse can fail on odd nodes; the kind is enough then
        return kind
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text!r}"
