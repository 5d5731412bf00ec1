"""The README's market-based example, computed from the code: the worked example's request
(docs/methodology.md §10) on an upstream with contracts gives two figures, and a month of such
requests, some on an upstream without contracts, gives `footprint report`'s two totals."""

from __future__ import annotations

from pathlib import Path

from meters.footprint import footprint_record
from meters.types import Footprint, MarketContracts, SiteFactors
from proxy.admin_cli import carbon_totals
from proxy.ledger import usage_totals
from tests.test_worked_example import ZONE, example

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- market-example: checked by tests/test_market_example.py -->"
# A wind PPA covering 80 % of the electricity at 0 g; the rest at an illustrative residual mix.
CONTRACTS = MarketContracts(0.8, 0.0, 500.0, "illustrative residual mix")
COVERED, UNCOVERED = 600, 400  # requests in the month on each upstream


def with_contracts() -> Footprint:
    return example(SiteFactors(zone=ZONE, contracts=CONTRACTS))


def month_rows() -> list[dict[str, object]]:
    """`/v1/footprint/usage` rows grouped by upstream: 600 requests like the example on the
    contracted upstream, 400 on one without contracts."""
    covered, plain = with_contracts(), example()
    assert covered.co2e_market_g is not None
    return [
        {
            "upstream": "gpu-wind",
            "requests": COVERED,
            "energy_j": COVERED * covered.energy_j,
            "co2e_g": COVERED * covered.co2e_g,
            "embodied_co2e_g": COVERED * covered.embodied_co2e_g,
            "co2e_market_g": COVERED * covered.co2e_market_g,
            "market_energy_j": COVERED * covered.energy_j,
        },
        {
            "upstream": "gpu-grid",
            "requests": UNCOVERED,
            "energy_j": UNCOVERED * plain.energy_j,
            "co2e_g": UNCOVERED * plain.co2e_g,
            "embodied_co2e_g": UNCOVERED * plain.embodied_co2e_g,
            "co2e_market_g": None,
            "market_energy_j": 0.0,
        },
    ]


def example_text() -> str:
    record = footprint_record(with_contracts(), "req-…", 120, 256)
    lines = [f"{name} = {record[name]}" for name in ("energy_j", "co2e_g", "co2e_market_g")]
    lines.append(f"embodied_co2e_g = {record['embodied_co2e_g']}")
    lines.append("")
    lines.extend(carbon_totals(usage_totals(month_rows())))
    return "\n".join(lines) + "\n"


def test_the_readme_market_example_is_what_the_code_gives() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split(MARKER, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    assert block == example_text()


if __name__ == "__main__":
    print(example_text(), end="")
