"""`footprint estimate` as a user runs it: impossible flag values are one line naming the flag,
exit 2, and nothing is printed on stdout (issue 14); good ones print the footprint object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
GOOD = ["--model", "gpt-4o-mini", "--input-tokens", "10", "--output-tokens", "20"]


def estimate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "estimate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )


def with_flag(flag: str, value: str) -> list[str]:
    args = list(GOOD)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--input-tokens", "-5"),  # a traceback before
        ("--output-tokens", "-1"),
        ("--output-tokens", "2.5"),
        ("--pue", "-1"),  # accepted before, printed "energy_j": -68.4971
        ("--pue", "0.5"),
        ("--pue", "nan"),
        ("--wue", "-0.1"),
        ("--params-b", "0"),
        ("--params-b", "-70"),
        ("--params-b", "inf"),
        ("--latency-s", "-2"),
        ("--server-w-per-gpu", "-150"),
        ("--accelerator", "TPUv5"),
    ],
)
def test_an_impossible_flag_value_is_one_line_naming_the_flag(flag: str, value: str) -> None:
    result = estimate(*with_flag(flag, value))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0] and "Traceback" not in result.stderr


def test_an_unknown_zone_is_one_line() -> None:
    result = estimate(*GOOD, "--zone", "ATLANTIS")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "ATLANTIS" in result.stderr


def test_good_flags_print_the_footprint_with_the_flags_applied() -> None:
    base = json.loads(estimate(*GOOD, "--zone", "FR").stdout)
    dearer = json.loads(
        estimate(*GOOD, "--zone", "FR", "--pue", "1.5", "--server-w-per-gpu", "300").stdout
    )
    assert base["pue"] == 1.2 and dearer["pue"] == 1.5
    assert dearer["gpu_energy_j"] == base["gpu_energy_j"]
    # more server power and a higher PUE: more facility energy than PUE alone explains
    assert dearer["energy_j"] > base["energy_j"] * 1.5 / 1.2
    assert base["intensity_source"] == "table" and base["water_source"] == "table"
