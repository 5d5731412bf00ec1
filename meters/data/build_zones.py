"""Builds `meters/data/zones.csv`, the shipped per-zone grid table, from the `ecologits`
package's electricity mixes (methodology §5), so its provenance can be re-run and checked.

    .venv/bin/python meters/data/build_zones.py           # rewrite zones.csv
    .venv/bin/python meters/data/build_zones.py --check   # exit 1 if zones.csv is out of date

EcoLogits keys its mixes by ISO 3166-1 alpha-3 (`KOR`) with `WOR` for the world; Footprint's
zones are Electricity Maps zone ids, which for a country are ISO 3166-1 alpha-2 (`KR`), and
`WORLD`. The alpha-3 → alpha-2 mapping comes from the `pycountry` package when installed, else
from Debian's `iso-codes` data (`/usr/share/iso-codes/json/iso_3166-1.json`). Mixes with no
country code (`EEE`) are left out. Figures are copied as published: `gwp` kgCO2e/kWh becomes
gCO2e/kWh (× 1000); `wue`, the water consumed to generate the electricity, is the EWIF in L/kWh.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from decimal import Decimal
from importlib import metadata, resources
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "zones.csv"
ISO_CODES_JSON = Path("/usr/share/iso-codes/json/iso_3166-1.json")
WORLD_ALPHA3 = "WOR"
WORLD_ZONE = "WORLD"
# EcoLogits' warning that a zone's water factor is the world average (ecologits status_messages).
WUE_WORLD_WARNING = "electricity-mix-wue-world"


def alpha3_to_alpha2() -> dict[str, str]:
    """ISO 3166-1 alpha-3 → alpha-2 for every country."""
    try:
        import pycountry
    except ImportError:
        if not ISO_CODES_JSON.exists():
            raise SystemExit(
                "need ISO 3166-1 codes: install pycountry, or Debian's iso-codes "
                f"({ISO_CODES_JSON})"
            ) from None
        countries = json.loads(ISO_CODES_JSON.read_text())["3166-1"]
        return {c["alpha_3"]: c["alpha_2"] for c in countries}
    return {c.alpha_3: c.alpha_2 for c in pycountry.countries}


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def build_csv() -> str:
    """The text of zones.csv as the installed ecologits release gives it."""
    version = metadata.version("ecologits")
    mixes_path = resources.files("ecologits") / "data" / "electricity_mixes.json"
    mixes = json.loads(mixes_path.read_text())["electricity_mixes"]
    to_alpha2 = alpha3_to_alpha2()
    rows: list[tuple[str, str, str, str]] = []
    for mix in mixes:
        alpha3 = mix["name"]
        zone = WORLD_ZONE if alpha3 == WORLD_ALPHA3 else to_alpha2.get(alpha3)
        if zone is None:
            print(f"build_zones: {alpha3} is not an ISO 3166-1 country; left out", file=sys.stderr)
            continue
        gco2e = Decimal(str(mix["gwp"])) * 1000
        ewif = Decimal(str(mix["wue"]))
        water_note = (
            "EWIF world average (WRI)"
            if WUE_WORLD_WARNING in (mix.get("warnings") or [])
            else "EWIF (WRI)"
        )
        source = (
            f"ecologits-{version} data/electricity_mixes.json {alpha3}: "
            f"gwp (Ember / Our World in Data, CC-BY); {water_note}"
        )
        rows.append((zone, _plain(gco2e), _plain(ewif), source))
    rows.sort(key=lambda row: (row[0] != WORLD_ZONE, row[0]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["zone", "gco2e_per_kwh", "ewif_l_per_kwh", "source"])
    writer.writerows(rows)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with zones.csv")
    args = parser.parse_args(argv)
    text = build_csv()
    if args.check:
        if OUTPUT.read_text() != text:
            print(f"build_zones: {OUTPUT} is out of date; re-run without --check", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"build_zones: wrote {text.count(chr(10)) - 1} zones to {OUTPUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
