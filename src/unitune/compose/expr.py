"""Parsing module-arithmetic expressions: ``0.5*math + 0.5*code``, ``chat - 0.6*toxic``,
``cls_yelp + lm_amazon - lm_yelp``, ``λ*cls + (1-λ)*(lm_b - lm_a)``.

The grammar is ordinary arithmetic (``+``, ``-``, ``*``, parentheses, unary minus) over
numbers, module names and parameters (``λ`` or ``lambda``, and any name declared with
``--lambda NAME=...`` / ``--sweep NAME=...``). The result must be a weighted sum of modules:
a product of two modules, or a bare number added to modules, is an error pointing at its
column. Coefficients are polynomials in the parameters; like terms are collected, so
``a + a`` is ``2*a`` and ``x + y - y`` is ``x``. A module name may contain ``-`` when a run of
that name exists (``my-run - 0.5*other``); otherwise ``-`` is subtraction (``a-0.6*b``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass

from unitune.errors import UserError

LAMBDA = "λ"
_ALIASES = {"lambda": LAMBDA}
_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|"
                    r"(?P<name>[^\W\d][\w./~-]*|[~./][\w./~-]*)|(?P<op>[-+*()]))")

Poly = dict[tuple[str, ...], float]  # monomial (sorted parameter names) -> coefficient


def _canonical(name: str) -> str:
    return _ALIASES.get(name, name)


@dataclass(frozen=True)
class Expression:
    """``terms``: module name -> coefficient polynomial, in order of first appearance;
    ``params``: the parameters the text mentions (even where they cancel out)."""

    text: str
    terms: dict[str, Poly]
    params: frozenset[str]

    def bind(self, values: dict[str, float] | None = None) -> list[tuple[float, str]]:
        """(coefficient, module) for every module, with the parameters set to ``values``
        (an error if a parameter the expression uses has no value)."""
        values = {_canonical(k): v for k, v in (values or {}).items()}
        missing = sorted(self.params - set(values))
        if missing:
            raise UserError(f"the expression uses {', '.join(missing)}; give --lambda "
                            f"{missing[0]}=VALUE or --sweep '{missing[0]}=start:stop:step'")
        unused = sorted(set(values) - self.params)
        if unused:
            raise UserError(f"{', '.join(unused)} is set but the expression {self.text!r} "
                            "does not use it")
        out = []
        for name, poly in self.terms.items():
            coef = 0.0
            for mono, c in poly.items():
                for p in mono:
                    c *= values[p]
                coef += c
            out.append((coef, name))
        return out


def _fail(expr: str, col: int, what: str):
    raise UserError(f"expression {expr!r}, column {col + 1}: {what}")


def _tokens(expr: str, params: set[str], is_module: Callable[[str], bool]
            ) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while expr[pos:].strip():
        m = _TOKEN.match(expr, pos)
        if not m:
            col = pos + len(expr[pos:]) - len(expr[pos:].lstrip())
            _fail(expr, col, f"unexpected character {expr[col]!r}")
        kind = m.lastgroup
        text, start = m.group(kind), m.start(kind)
        if kind == "name" and "-" in text:
            # the longest hyphenated prefix that names an existing run, else up to the first '-'
            cuts = [i for i, ch in enumerate(text) if ch == "-"]
            keep = next((c for c in reversed([*cuts, len(text)]) if is_module(text[:c])),
                        cuts[0])
            text = text[:keep]
        pos = start + len(text)
        if kind == "name" and _canonical(text) in params:
            kind, text = "param", _canonical(text)
        out.append((kind, text, start))
    return out


class _Parser:
    """Recursive descent; a value is {module or None (a number): Poly}."""

    def __init__(self, expr: str, toks: list[tuple[str, str, int]]):
        self.expr, self.toks, self.i = expr, toks, 0

    def peek(self) -> tuple[str, str, int]:
        return self.toks[self.i] if self.i < len(self.toks) else ("end", "", len(self.expr))

    def sum(self) -> dict:
        value = self.product()
        while self.peek()[1] in ("+", "-") and self.peek()[0] == "op":
            sign = -1.0 if self.toks[self.i][1] == "-" else 1.0
            self.i += 1
            value = _add(value, _scale(self.product(), sign))
        return value

    def product(self) -> dict:
        value = self.unary()
        while self.peek()[:2] == ("op", "*"):
            col = self.peek()[2]
            self.i += 1
            value = _multiply(value, self.unary(), self.expr, col)
        return value

    def unary(self) -> dict:
        kind, text, col = self.peek()
        if kind == "op" and text in "+-":
            self.i += 1
            return _scale(self.unary(), -1.0 if text == "-" else 1.0)
        if kind == "op" and text == "(":
            self.i += 1
            value = self.sum()
            if self.peek()[:2] != ("op", ")"):
                _fail(self.expr, self.peek()[2], "expected ')'")
            self.i += 1
            return value
        self.i += 1
        if kind == "num":
            return {None: {(): float(text)}}
        if kind == "param":
            return {None: {(text,): 1.0}}
        if kind == "name":
            return {text: {(): 1.0}}
        if kind == "end":
            _fail(self.expr, col, "the expression ends with an operator")
        _fail(self.expr, col, f"expected a number, a parameter or a module name, found {text!r}")


def _add_poly(p: Poly, q: Poly) -> Poly:
    out = dict(p)
    for mono, c in q.items():
        out[mono] = out.get(mono, 0.0) + c
    return {m: c for m, c in out.items() if c != 0.0}


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, poly in b.items():
        out[key] = _add_poly(out.get(key, {}), poly)
    return out


def _scale(a: dict, factor: float) -> dict:
    return {k: {m: c * factor for m, c in poly.items()} for k, poly in a.items()}


def _multiply(a: dict, b: dict, expr: str, col: int) -> dict:
    if any(k is not None for k in a) and any(k is not None for k in b):
        _fail(expr, col, "a product of two modules is not defined; scale a module by a number "
              "or a parameter")
    scalar, other = (a, b) if set(a) <= {None} else (b, a)
    factor = scalar.get(None, {})
    out: dict = {}
    for key, poly in other.items():
        prod: Poly = {}
        for (m1, c1), (m2, c2) in itertools.product(factor.items(), poly.items()):
            prod = _add_poly(prod, {tuple(sorted(m1 + m2)): c1 * c2})
        out[key] = prod
    return out


def parse(expr: str, params: set[str] | frozenset[str] = frozenset(),
          is_module: Callable[[str], bool] = lambda name: False) -> Expression:
    """The expression as a weighted sum of modules. ``params``: parameter names besides λ;
    ``is_module(name)``: whether a run of that name exists (for names containing '-')."""
    params = {LAMBDA, *(_canonical(p) for p in params)}
    toks = _tokens(expr, params, is_module)
    if not toks:
        raise UserError("empty expression")
    parser = _Parser(expr, toks)
    value = parser.sum()
    if parser.i < len(toks):
        _fail(expr, toks[parser.i][2], f"expected an operator, found {toks[parser.i][1]!r}")
    if value.get(None):
        raise UserError(f"expression {expr!r}: a number or parameter stands alone, outside a "
                        "product with a module (e.g. write 'λ*a + (1-λ)*b', not 'a + λ')")
    terms = {k: poly for k, poly in value.items() if k is not None}
    if not terms:
        raise UserError(f"expression {expr!r} names no module")
    return Expression(expr, terms, frozenset(t[1] for t in toks if t[0] == "param"))


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (NAME, VALUE); a bare value is λ's."""
    name, sep, value = text.partition("=")
    if not sep:
        return LAMBDA, text.strip()
    name = _canonical(name.strip())
    if not re.fullmatch(r"[^\W\d]\w*", name):
        raise UserError(f"{option} {text!r}: a parameter name is a word (λ, lambda, mu, ...)")
    return name, value.strip()


def parse_lambda(text: str) -> tuple[str, float]:
    """``--lambda 0.3`` or ``--lambda mu=0.3``."""
    name, value = parse_assignment(text, "--lambda")
    try:
        return name, float(value)
    except ValueError:
        raise UserError(f"--lambda {text!r}: expected a number, e.g. --lambda 0.3 or "
                        "--lambda mu=0.3") from None


def parse_sweep(text: str) -> tuple[str, list[float]]:
    """``λ=0:1:0.1`` (or ``lambda=...``, ``mu=...``) -> (name, [0.0, 0.1, ..., 1.0])."""
    name, value = parse_assignment(text, "--sweep")
    m = re.fullmatch(r"([-+.\deE]+):([-+.\deE]+):([-+.\deE]+)", value)
    if "=" not in text or not m:
        raise UserError(f"--sweep {text!r}: expected 'λ=start:stop:step', e.g. λ=0:1:0.02")
    start, stop, step = (float(x) for x in m.groups())
    if step <= 0 or stop < start:
        raise UserError(f"--sweep {text!r}: need step > 0 and stop >= start")
    n = int(round((stop - start) / step))
    return name, [round(start + k * step, 10) for k in range(n + 1)]
