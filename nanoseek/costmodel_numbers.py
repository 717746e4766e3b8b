"""Numbers in and out of the cost model: counts such as ``"14.8T"``, range checks that name the
bad argument, and the markdown tables of the reports (``nanoseek.costmodel``).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

_SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


# -------------------------------------------------------------------- parsing and checks
def parse_count(text: str | int | float, name: str = "tokens") -> int:
    """``"14.8T"`` -> 14_800_000_000_000; suffixes K, M, B (or G), T; commas, ``_`` and
    ``1e9`` are fine. Negative or unreadable -> ValueError naming ``name``."""
    return int(_parse_decimal(text, name))


def parse_rate(text: str | int | float, name: str = "tokens_per_second") -> float:
    """Like ``parse_count`` but keeps fractions: ``"1.5K"`` -> 1500.0."""
    return float(_parse_decimal(text, name))


def _parse_decimal(text: str | int | float, name: str) -> Decimal:
    s = str(text).strip().replace(",", "").replace("_", "").upper()
    scale = _SUFFIXES.get(s[-1:], 1)
    try:
        value = Decimal(s[:-1] if scale != 1 else s) * scale
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite():
        raise ValueError(f"{name}: cannot read {text!r}; write a number with an optional "
                         "K, M, B or T suffix, e.g. 14.8T")
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {text!r}")
    return value


def check_positive(**values: float) -> None:
    """``ValueError`` naming the first keyword argument that is not > 0."""
    for name, v in values.items():
        if not v > 0:
            raise ValueError(f"{name}: must be > 0, got {v}")


def check_nonnegative(**values: float) -> None:
    """``ValueError`` naming the first keyword argument that is not >= 0."""
    for name, v in values.items():
        if not v >= 0:
            raise ValueError(f"{name}: must be >= 0, got {v}")


# -------------------------------------------------------------------- markdown (reports)
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned."""
    def align(i: int) -> str:
        return "---:" if rows and isinstance(rows[0][i], int | float) else "---"

    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join(align(i) for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(format_number(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def format_number(v: Any) -> str:
    """Human form of one figure: ints with commas, big floats in e-notation."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 1e12:
        return f"{v:.4g}"
    return f"{v:,.0f}" if v.is_integer() or abs(v) >= 1e4 else f"{v:,.4g}"
