"""The one number formatter: plain decimals, 6 significant digits at every magnitude, a floor."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meters.constants import FIGURE_FLOOR, SIGNIFICANT_DIGITS
from meters.numbers import dumps_plain, format_decimal


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0069, "0.0069"),
        (41.7, "41.7"),
        (400.0, "400"),
        (1.2, "1.2"),
        (0.1 + 0.2, "0.3"),
        (1.23456789e-7, "0.000000123457"),
        (62.123456789, "62.1235"),
        (-3.5, "-3.5"),
        (0.0, "0"),
        (-0.0, "0"),
        # the audit's cases: 6 significant digits above 1e6 too, and no 326-character header
        (1234567891.2, "1234570000"),
        (1234567.891, "1234570"),
        (999999.5, "1000000"),
        (5e-324, "0"),
        (2.5e-20, "0"),
        (-1e-13, "0"),
        (1e-12, "0.000000000001"),
        (1e12, "1000000000000"),
        (0.0000123456, "0.0000123456"),
        (0.000012345649, "0.0000123456"),
    ],
)
def test_known_values(value: float, text: str) -> None:
    assert format_decimal(value) == text


@pytest.mark.parametrize("power", range(-300, 13))
@pytest.mark.parametrize("mantissa", [1.0, 1.23456789, 9.9999996, 5.55555555])
def test_every_magnitude_from_1e_300_to_1e12(power: int, mantissa: float) -> None:
    value = float(f"{mantissa}e{power}")
    text = format_decimal(value)
    assert "e" not in text.lower()
    if abs(value) < FIGURE_FLOOR:
        assert text == "0"
        return
    # The figure reads back as the value rounded to 6 significant digits, and no longer.
    expected = float(f"{value:.{SIGNIFICANT_DIGITS - 1}e}")
    assert float(text) == pytest.approx(expected, rel=1e-12)
    digits = text.replace("-", "").replace(".", "").lstrip("0").rstrip("0")
    assert len(digits) <= SIGNIFICANT_DIGITS
    assert len(text) <= 19  # the longest: 0.00000000000123457 (1.23457e-12)


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False))
def test_agrees_with_decimal_rounding_half_even(value: float) -> None:
    text = format_decimal(value)
    if abs(value) < FIGURE_FLOOR:
        assert text == "0"
        return
    exact = Decimal(repr(value))
    quantum = Decimal(1).scaleb(exact.adjusted() - (SIGNIFICANT_DIGITS - 1))
    assert Decimal(text) == exact.quantize(quantum, rounding="ROUND_HALF_EVEN")


def test_refuses_non_numbers() -> None:
    with pytest.raises(ValueError):
        format_decimal(float("inf"))
    with pytest.raises(ValueError):
        format_decimal(float("nan"))


def test_plain_dump_writes_nested_floats_with_the_formatter() -> None:
    text = dumps_plain({"a": [1, 2.5e-9, None, "x"], "b": {"c": 1234567891.2}})
    assert "e-" not in text and "e+" not in text
    assert json.loads(text) == {"a": [1, 2.5e-9, None, "x"], "b": {"c": 1234570000}}
