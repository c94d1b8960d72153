"""Parsing module-arithmetic expressions: ``0.5*math + 0.5*code``, ``chat - 0.6*toxic``,
``cls_yelp + lm_amazon - lm_yelp``, ``λ*a + (1-λ)*b``, with ``λ`` (or ``lambda``) set later.

The result is a list of terms whose coefficients are linear in λ; a negative coefficient
means the negation operator scaled by its magnitude. Errors point at the column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unitune.errors import UserError

_TOKEN = re.compile(r"\s*(?:(?P<comp>\(\s*(?:\d+(?:\.\d*)?|\.\d+)\s*-\s*(?:λ|lambda)\s*\))|"
                    r"(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)|(?P<lam>λ|lambda)(?![\w])|"
                    r"(?P<name>[A-Za-z_~./][\w./~-]*)|(?P<op>[-+*()]))")


@dataclass(frozen=True)
class Term:
    const: float  # the coefficient is const + lam * λ
    lam: float
    name: str


def _fail(expr: str, col: int, what: str):
    raise UserError(f"expression {expr!r}, column {col + 1}: {what}")


def _tokens(expr: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            _fail(expr, pos + (len(expr[pos:]) - len(expr[pos:].lstrip())),
                  f"unexpected character {expr[pos:].lstrip()[:1]!r}")
        kind = m.lastgroup
        start = m.start(kind)
        out.append((kind, m.group(kind), start))
        pos = m.end()
    return out


def parse(expr: str) -> list[Term]:
    """Terms of a sum of (optionally scaled, optionally negated) module names."""
    toks = _tokens(expr)
    if not toks:
        raise UserError("empty expression")
    terms: list[Term] = []
    i = 0
    sign = 1.0
    expect_term = True
    while i < len(toks):
        kind, text, col = toks[i]
        if expect_term:
            if kind == "op" and text in "+-":
                sign = -sign if text == "-" else sign
                i += 1
                continue
            const, lam = 1.0, 0.0  # the coefficient const + lam*λ built from its factors
            while kind in ("num", "lam", "comp"):
                if kind == "num":
                    const, lam = const * float(text), lam * float(text)
                elif kind == "lam":
                    if lam:
                        _fail(expr, col, "λ may appear once per term (the result must be "
                              "linear in λ)")
                    const, lam = 0.0, const
                else:  # (a - λ)
                    a = float(text.strip("() ").split("-")[0])
                    if lam:
                        _fail(expr, col, "λ may appear once per term")
                    const, lam = const * a, -const
                if i + 1 >= len(toks) or toks[i + 1][1] != "*":
                    _fail(expr, col + len(text), "expected '*' and a module name after a "
                          "coefficient")
                i += 2
                if i >= len(toks):
                    _fail(expr, len(expr), "expected a module name")
                kind, text, col = toks[i]
            if kind != "name":
                _fail(expr, col, f"expected a module name, found {text!r}")
            terms.append(Term(const * sign, lam * sign, text))
            sign = 1.0
            expect_term = False
            i += 1
        else:
            if kind != "op" or text not in "+-":
                _fail(expr, col, f"expected '+' or '-', found {text!r}")
            sign = -1.0 if text == "-" else 1.0
            expect_term = True
            i += 1
    if expect_term:
        _fail(expr, len(expr), "the expression ends with an operator")
    return terms


def bind(terms: list[Term], lam: float | None) -> list[tuple[float, str]]:
    """Numeric coefficients, with ``λ`` set to ``lam`` (an error if λ is used but unset)."""
    if lam is None and any(t.lam for t in terms):
        raise UserError("the expression uses λ; give --lambda VALUE or --sweep "
                        "'λ=start:stop:step'")
    if lam is not None and not 0 <= lam <= 1:
        raise UserError(f"λ={lam:g} is outside [0, 1]; write a coefficient instead of λ for "
                        "other scales (e.g. '1.5*a')")
    return [(t.const + t.lam * (lam or 0.0), t.name) for t in terms]


def parse_sweep(text: str) -> list[float]:
    """``λ=0:1:0.1`` (or ``lambda=...``) -> [0.0, 0.1, ..., 1.0]."""
    m = re.fullmatch(r"\s*(?:λ|lambda)\s*=\s*([-+.\de]+):([-+.\de]+):([-+.\de]+)\s*", text)
    if not m:
        raise UserError(f"--sweep {text!r}: expected 'λ=start:stop:step', e.g. λ=0:1:0.02")
    start, stop, step = (float(x) for x in m.groups())
    if step <= 0 or stop < start:
        raise UserError(f"--sweep {text!r}: need step > 0 and stop >= start")
    if start < 0 or stop > 1:
        raise UserError(f"--sweep {text!r}: λ is a mixing weight in [0, 1] (the paper's range); "
                        f"got {start:g}..{stop:g}")
    n = int(round((stop - start) / step))
    return [round(start + k * step, 10) for k in range(n + 1)]
