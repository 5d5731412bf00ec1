"""The worked example of docs/methodology.md, computed from the code: its figures block, and the
README's example headers and footprint object, must be what the code gives for its inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from meters.constants import DEFAULT_SERVER_POWER_W_PER_GPU
from meters.footprint import compute_footprint, footprint_record
from meters.intensity import IntensityTable
from meters.numbers import format_decimal
from meters.types import Footprint, Hardware, Measurement, SiteFactors

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- worked-example: checked by tests/test_worked_example.py -->"

# The example's inputs, as docs/methodology.md §10 states them.
GPU_ENERGY_J = 41.7
HARDWARE_S = 0.12
ZONE = "KR"


def example(site: SiteFactors | None = None) -> Footprint:
    """41.7 J measured on one GPU in Korea, a 0.12 s hardware share, defaults elsewhere
    (`site`: the same with other site factors, e.g. contracts for market-based carbon)."""
    measurement = Measurement(
        gpu_energy_j=GPU_ENERGY_J,
        server_energy_j=DEFAULT_SERVER_POWER_W_PER_GPU * 1 * HARDWARE_S,
        hardware_s=HARDWARE_S,
        method="measured",
        basis="nvml",
        gpus=1,
    )
    table = IntensityTable.shipped()
    site = SiteFactors(zone=ZONE) if site is None else site
    return compute_footprint(measurement, site, Hardware(), table.lookup(ZONE))


def test_the_methodology_figures_block_is_what_the_code_gives() -> None:
    text = (ROOT / "docs" / "methodology.md").read_text()
    block = text.split(MARKER, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    written = dict(line.split(" = ") for line in block.strip().splitlines())
    fp = example()
    computed = {
        "server_energy_j": fp.server_energy_j,
        "energy_j": fp.energy_j,
        "operational_co2e_g": fp.co2e_g - fp.embodied_co2e_g,
        "embodied_co2e_g": fp.embodied_co2e_g,
        "co2e_g": fp.co2e_g,
        "water_ml": fp.water_ml,
        "grid_gco2e_per_kwh": fp.grid_gco2e_per_kwh,
    }
    assert written == {name: format_decimal(value) for name, value in computed.items()}


def test_the_readme_examples_are_the_worked_example() -> None:
    readme = (ROOT / "README.md").read_text()
    fp = example()
    headers = readme.split("```\n", 2)[1]
    for name, value in [
        ("gpu-energy-j", fp.gpu_energy_j),
        ("energy-j", fp.energy_j),
        ("co2e-g", fp.co2e_g),
        ("water-ml", fp.water_ml),
    ]:
        assert f"x-footprint-{name}: {format_decimal(value)}\n" in headers
    assert f"x-footprint-zone: {ZONE}\n" in headers
    json_block = re.search(r"```json\n(\{\"request_id\": \"req-….*?\})\n```", readme, re.S)
    assert json_block is not None
    shown = json.loads(json_block.group(1))
    record = footprint_record(fp, shown["request_id"], 120, 256)
    shown.pop("basis")
    assert shown == record
