"""Countdown answers checked by a small exact-arithmetic parser (never ``eval``).

``expr := term (('+'|'-') term)*``, ``term := atom (('*'|'/') atom)*``,
``atom := INT | '(' expr ')'``, evaluated with ``Fraction``; every given number used exactly once.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

MAX_PAREN_DEPTH = 50


class CountdownError(ValueError):
    """The expression is not a valid Countdown answer (syntax, numbers used, division by 0)."""


_UNICODE_OPS = str.maketrans({"×": "*", "÷": "/", "−": "-", "·": "*"})


def _tokenize(expr: str) -> list[str]:
    """ASCII integers, ``+ - * / ( )``; anything else (``**``'s second star is caught later)."""
    tokens = []
    for m in re.finditer(r"\s*(?:([0-9]+)|([-+*/()])|(\S))", expr):
        if m.group(3) is not None:
            raise CountdownError(f"unexpected character {m.group(3)!r}")
        tokens.append(m.group(1) or m.group(2))
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := atom (('*'|'/') atom)* ; atom := INT | '(' expr ')'
    evaluated exactly with Fractions; no unary minus, no exponent."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens, self.pos = tokens, 0

    def _next(self) -> str | None:
        tok = self.tokens[self.pos] if self.pos < len(self.tokens) else None
        self.pos += 1
        return tok

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> Fraction:
        value = self._expr(0)
        if self.pos != len(self.tokens):
            raise CountdownError(f"unexpected {self.tokens[self.pos]!r}")
        return value

    def _expr(self, depth: int) -> Fraction:
        value = self._term(depth)
        while self._peek() in ("+", "-"):
            op, rhs = self._next(), self._term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    def _term(self, depth: int) -> Fraction:
        value = self._atom(depth)
        while self._peek() in ("*", "/"):
            op, rhs = self._next(), self._atom(depth)
            if op == "/" and rhs == 0:
                raise CountdownError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def _atom(self, depth: int) -> Fraction:
        tok = self._next()
        if tok == "(":
            if depth >= MAX_PAREN_DEPTH:
                raise CountdownError(f"parentheses nested deeper than {MAX_PAREN_DEPTH}")
            value = self._expr(depth + 1)
            if self._next() != ")":
                raise CountdownError("unbalanced parentheses")
            return value
        if tok is not None and tok.isdigit():
            return Fraction(int(tok))
        raise CountdownError(f"expected a number or '(', got {tok!r}")


def countdown_value(expr: str, numbers: Sequence[int]) -> Fraction:
    """Exact value of ``expr`` after checking it uses each of ``numbers`` exactly once.

    Fractional intermediates are allowed (``(8/3)*3`` is 8; TinyZero's float eval allows them
    too); unary minus, ``**``, decimals, other characters and division by zero raise
    CountdownError. An ``expr = value`` form is accepted and only ``expr`` is evaluated.
    """
    expr = expr.translate(_UNICODE_OPS).partition("=")[0]
    tokens = _tokenize(expr)
    literals = [t for t in tokens if t.isdigit()]
    if any(len(t) > 18 or (len(t) > 1 and t[0] == "0") for t in literals):
        raise CountdownError("numbers must be written plainly (no leading zeros, < 19 digits)")
    if Counter(int(t) for t in literals) != Counter(int(n) for n in numbers):
        raise CountdownError(f"uses {sorted(map(int, literals))}, must use {sorted(numbers)} once")
    return _Parser(tokens).parse()


def check_countdown(expr: str, numbers: Sequence[int], target: int) -> bool:
    """True when ``expr`` uses each of ``numbers`` once and equals ``target`` exactly."""
    try:
        return countdown_value(expr, numbers) == target
    except CountdownError:
        return False
