"""spaces.parse: formulas become sympy trees through a whitelist, never eval."""
import pytest
import sympy as sp

import spaces
from spaces.functions import X
from spaces.parse import parse_expression

HOSTILE = [
    "__import__('os').system('true')",
    "().__class__",
    "x.__class__",
    "lambda: 1",
    "open('f')",
    "9**9**9",
    "x[0]",
    "relu(x, inplace=True)",
    "(x for x in y)",
    "'abc'",
    "x if x else 0",
    "eval('1')",
    "getattr(x, 'y')",
    "__builtins__",
    "_secret + x",
    "1e300*x",
    "x**100",
    "[x]",
    "x < 1",
    "x @ x",
    "exp(*x)",
    "x" + "+x" * 600,
]


@pytest.mark.parametrize("formula", HOSTILE)
def test_hostile_formulas_are_refused_with_value_error(formula):
    with pytest.raises(ValueError):
        spaces.parse(formula)


def test_refusal_names_the_offending_part():
    with pytest.raises(ValueError, match="Attribute"):
        spaces.parse("x.__class__")
    with pytest.raises(ValueError, match="unknown function 'open'"):
        spaces.parse("open('f')")
    with pytest.raises(ValueError, match="too large"):
        spaces.parse("9**9**9")
    with pytest.raises(ValueError, match="1,000|1000"):
        spaces.parse("x" * 1001)


def test_parse_never_calls_eval_or_sympify(monkeypatch):
    import builtins

    def forbidden(*a, **k):
        raise AssertionError("eval/exec/sympify called on user text")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(sp, "sympify", forbidden)
    monkeypatch.setattr(sp.parsing.sympy_parser, "parse_expr", forbidden)
    assert spaces.parse("relu(x) + eps*x*exp(-x**2/2)").formula


def test_crrelu_formula_parses_with_learnable_eps():
    c = spaces.parse("relu(x) + eps*x*exp(-x**2/2)", init={"eps": 0.01}, learnable=["eps"])
    assert c.coefficients == {"eps": (0.01, True)}
    assert c.formula == "eps*x*exp(-x**2/2) + relu(x)"


def test_missing_init_uses_documented_default():
    c = spaces.parse("a*x + relu(x)")
    assert c.coefficients == {"a": (spaces.DEFAULT_INIT, False)}


def test_unknown_init_or_learnable_names_are_errors():
    with pytest.raises(ValueError, match="not in formula"):
        spaces.parse("relu(x)", init={"eps": 1.0})
    with pytest.raises(ValueError, match="not in formula"):
        spaces.parse("relu(x)", learnable=["eps"])


def test_numbers_constants_and_unary_ops():
    e = parse_expression("-x/2 + pi*E + 0.5*x**2")
    assert sp.simplify(e - (-X / 2 + sp.pi * sp.E + sp.Rational(1, 2) * X**2)) == 0


def test_canonical_formula_reparses_to_the_same_candidate():
    c = spaces.parse("gelu(x)+ 0.1*x*exp(-x**2/2) - Max(x, 0)/3")
    assert spaces.parse(c.formula) == c
