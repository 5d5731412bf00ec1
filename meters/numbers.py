"""How every figure is written: one formatter for headers, JSON, CSV and the terminal.

`contract.md`: numbers are plain decimals (no exponent). Here they also have one precision
everywhere: 6 significant digits at every magnitude (`SIGNIFICANT_DIGITS`), and anything smaller
in magnitude than `FIGURE_FLOOR` is written 0, so no figure is longer than the number it carries
(5e-324 once became a 326-character header).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping

from meters.constants import FIGURE_FLOOR, SIGNIFICANT_DIGITS

__all__ = ["dumps_plain", "format_decimal"]


# The same figures come back request after request (a zone's grid intensity, a PUE, the
# energy of requests alike): each is worked out once.
@functools.lru_cache(maxsize=4096)
def format_decimal(
    value: float, significant: int = SIGNIFICANT_DIGITS, floor: float = FIGURE_FLOOR
) -> str:
    """`value` as a plain decimal (never an exponent), rounded half-even to `significant`
    digits at any magnitude; `|value| < floor` is "0". 0.0000123456789 → "0.0000123457",
    400.0 → "400", 1234567891.2 → "1234570000", 1e-300 → "0"."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value}")
    if significant < 1:
        raise ValueError(f"significant must be at least 1: {significant}")
    if value == 0 or abs(value) < floor:
        return "0"
    # The shortest decimal that reads back as `value` (its repr), as coefficient · 10^exponent,
    # rounded half-even at the last significant digit kept: integer arithmetic, exact.
    text = repr(abs(float(value)))
    mantissa, _, exp_text = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    coefficient = int(whole + fraction)
    exponent = (int(exp_text) if exp_text else 0) - len(fraction)
    keep = len(str(coefficient)) - 1 + exponent - (significant - 1)
    if exponent < keep:
        unit = 10 ** (keep - exponent)
        coefficient, rest = divmod(coefficient, unit)
        if rest * 2 > unit or (rest * 2 == unit and coefficient % 2):
            coefficient += 1
        exponent = keep
    if coefficient == 0:
        return "0"
    sign = "-" if value < 0 else ""
    if exponent >= 0:
        return sign + str(coefficient) + "0" * exponent
    digits = str(coefficient).rjust(1 - exponent, "0")
    fraction = digits[exponent:].rstrip("0")
    return sign + digits[:exponent] + ("." + fraction if fraction else "")


def dumps_plain(value: object, indent: int | None = None) -> str:
    """JSON text of dicts, lists, strings, numbers, booleans and None, with every float written
    by `format_decimal`. For the CLI and anything not using orjson."""
    return _dump(value, indent, 0)


def _dump(value: object, indent: int | None, depth: int) -> str:
    if value is None or isinstance(value, bool | str):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_decimal(value)
    if isinstance(value, Mapping):
        items = [f"{json.dumps(str(k))}: {_dump(v, indent, depth + 1)}" for k, v in value.items()]
        return _join("{", items, "}", indent, depth)
    if isinstance(value, list | tuple):
        return _join("[", [_dump(v, indent, depth + 1) for v in value], "]", indent, depth)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def _join(open_: str, items: list[str], close: str, indent: int | None, depth: int) -> str:
    if not items:
        return open_ + close
    if indent is None:
        return open_ + ", ".join(items) + close
    inner = "\n" + " " * (indent * (depth + 1))
    return open_ + inner + ("," + inner).join(items) + "\n" + " " * (indent * depth) + close
