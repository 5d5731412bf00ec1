"""Grid carbon intensity and off-site water factor per zone (methodology §5–6).

The shipped table (`meters/data/zones.csv`, built by `meters/data/build_zones.py` from ecologits
0.11.3's yearly electricity mixes) always answers; a live provider (Electricity Maps) may give
the current intensity instead, and falls back to the table on any failure, saying so in the
figure's `source`. The water factor (EWIF) always comes from the table: no live source has it.

Zones are Electricity Maps zone ids: ISO 3166-1 alpha-2 for a country (`KR`), sub-national
ones like `US-CAL-CISO`, and `WORLD` for the world average. A sub-national zone the table does
not have falls back to its country (`US`).
"""

from __future__ import annotations

import asyncio
import csv
import difflib
import io
import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Protocol

from meters.constants import INTENSITY_DATA_YEAR
from meters.types import FactorSource, Intensity, MeterError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "TABLE_LABEL",
    "ElectricityMapsProvider",
    "GridIntensity",
    "IntensityTable",
    "TableIntensity",
    "UnknownZone",
    "ZoneRow",
]

log = logging.getLogger(__name__)

# What the shipped table's figures say they are when its rows do not say: EcoLogits' electricity
# mixes (Our World in Data yearly intensities, CC-BY; WRI water factors). The shipped table's
# label is read from its own source column (`ecologits-<version> …`, the release it was built
# from by build_zones.py), not from whichever ecologits is installed.
TABLE_LABEL = "table:ecologits"
WORLD_ZONE = "WORLD"
# Zone ids people write that Electricity Maps spells otherwise (ISO 3166-1 has GB, not UK).
_ZONE_ALIASES = {"UK": "GB", "EN": "GB", "EL": "GR"}
# A row's source names the ISO alpha-3 code it was built from ("…electricity_mixes.json KOR: …").
_ALPHA3_IN_SOURCE = re.compile(r"electricity_mixes\.json ([A-Z]{3}):")
# zones.csv's note on a row whose water factor is EcoLogits' world average (build_zones.py).
WORLD_WATER_NOTE = "EWIF world average"


class UnknownZone(MeterError, LookupError):
    """A zone the shipped table has no figures for (and no country prefix it has)."""


@dataclass(frozen=True, slots=True)
class ZoneRow:
    """One row of the table: a zone's yearly grid intensity and water factor, and their source."""

    zone: str
    gco2e_per_kwh: float
    ewif_l_per_kwh: float
    source: str

    @property
    def world_water(self) -> bool:
        """Whether this zone's water factor is the world average (no figure of its own)."""
        return WORLD_WATER_NOTE in self.source and self.zone != WORLD_ZONE


class IntensityTable:
    """Yearly grid factors per zone (data year `year`). Immutable once built."""

    def __init__(
        self, rows: Iterable[ZoneRow], label: str = TABLE_LABEL, year: str = INTENSITY_DATA_YEAR
    ) -> None:
        self._rows = {row.zone.upper(): row for row in rows}
        self.label = label
        self.year = year

    @classmethod
    def from_csv(cls, text: str, label: str | None = None) -> IntensityTable:
        """A table from CSV text with columns zone, gco2e_per_kwh, ewif_l_per_kwh, source."""
        rows = []
        for line in csv.DictReader(io.StringIO(text)):
            row = ZoneRow(
                zone=line["zone"].strip().upper(),
                gco2e_per_kwh=float(line["gco2e_per_kwh"]),
                ewif_l_per_kwh=float(line["ewif_l_per_kwh"]),
                source=line["source"],
            )
            if not row.source or not (row.gco2e_per_kwh >= 0 and row.ewif_l_per_kwh >= 0):
                raise ValueError(f"zones table: bad row for {row.zone!r}")
            rows.append(row)
        if label is None:
            # "ecologits-0.11.3 data/electricity_mixes.json …" → "table:ecologits-0.11.3"
            first = rows[0].source.split()[0] if rows and rows[0].source.strip() else ""
            label = f"table:{first}" if first.startswith("ecologits-") else TABLE_LABEL
        return cls(rows, label)

    @classmethod
    def shipped(cls) -> IntensityTable:
        """The table that ships with Footprint (`meters/data/zones.csv`)."""
        text = (resources.files("meters") / "data" / "zones.csv").read_text(encoding="utf-8")
        return cls.from_csv(text)

    def zones(self) -> list[str]:
        """Every zone the table has, sorted."""
        return sorted(self._rows)

    def nearest_zones(self, zone: str, limit: int = 3) -> list[str]:
        """Known zone ids a user may have meant by `zone`, best first (for error messages):
        the zone of an ISO alpha-3 code (`KOR` → `KR`) or a common alias (`UK` → `GB`), then
        the closest spellings. Empty when nothing is close."""
        wanted = zone.strip().upper()
        found: list[str] = []
        alias = _ZONE_ALIASES.get(wanted)
        if alias in self._rows:
            found.append(alias)
        for row in self._rows.values():
            match = _ALPHA3_IN_SOURCE.search(row.source)
            if match is not None and match.group(1) == wanted:
                found.append(row.zone)
        matcher = difflib.SequenceMatcher(b=wanted)
        scored = []
        for known in self._rows:
            matcher.set_seq1(known)
            ratio = matcher.ratio()
            if ratio >= 0.5 and known not in found:
                other_start = known[:1] != wanted[:1]
                scored.append((-ratio, other_start, known))  # closest, then same start, then A-Z
        found.extend(known for _, _, known in sorted(scored))
        return found[:limit]

    def row(self, zone: str) -> ZoneRow:
        """The table row that serves `zone`: its own, or its country's for a sub-national zone."""
        wanted = zone.strip().upper()
        parts = wanted.split("-")
        for end in range(len(parts), 0, -1):
            found = self._rows.get("-".join(parts[:end]))
            if found is not None:
                return found
        nearest = self.nearest_zones(zone)
        hint = f" (nearest known: {', '.join(nearest)})" if nearest else ""
        raise UnknownZone(
            f"unknown grid zone {zone!r}{hint}: use an Electricity Maps zone id (for a country "
            f"its ISO 3166-1 alpha-2 code, e.g. 'KR', 'DE', 'US-CAL-CISO') or 'WORLD'; the "
            f"{len(self._rows)} zones with figures are in meters/data/zones.csv"
        )

    def lookup(self, zone: str, *, note: str | None = None) -> Intensity:
        """The table's intensity for `zone`; `note` (e.g. why a live value is missing) is added
        to the source. Raises `UnknownZone` for a zone the table cannot serve."""
        row = self.row(zone)
        wanted = zone.strip().upper()
        notes = []
        if row.zone != wanted:
            notes.append(f"{row.zone} average for {wanted}")
        if note:
            notes.append(note)
        source = self.label + (f" ({'; '.join(notes)})" if notes else "")
        return Intensity(
            zone=wanted,
            gco2e_per_kwh=row.gco2e_per_kwh,
            ewif_l_per_kwh=row.ewif_l_per_kwh,
            source=source,
            intensity_source=self.intensity_kind(zone),
            water_source=self.water_kind(zone),
            observed_at=self.year,
        )

    def intensity_kind(self, zone: str) -> FactorSource:
        """`table`, or `table:country` when a sub-national zone takes its country's row."""
        return "table" if self.row(zone).zone == zone.strip().upper() else "table:country"

    def water_kind(self, zone: str) -> FactorSource:
        """`table`, `table:country` (the country's row) or `table:world` (the zone's water
        factor is the world average: 164 of the shipped zones)."""
        row = self.row(zone)
        if row.world_water:
            return "table:world"
        return "table" if row.zone == zone.strip().upper() else "table:country"


class GridIntensity(Protocol):
    """Where a figure's grid intensity comes from."""

    async def get(self, zone: str) -> Intensity:
        """The intensity to use for `zone` now. Raises `UnknownZone` for an unknown zone."""
        ...


class TableIntensity:
    """The shipped table alone: no network."""

    def __init__(self, table: IntensityTable) -> None:
        self.table = table

    async def get(self, zone: str) -> Intensity:
        """The table's yearly figure for `zone`."""
        return self.table.lookup(zone)

    async def aclose(self) -> None:
        """Nothing to release."""


class _BadAnswer(Exception):
    pass


class ElectricityMapsProvider:
    """Live intensity from Electricity Maps (`GET /carbon-intensity/latest?zone=…`, header
    `auth-token`), cached per zone for `ttl_s`. Concurrent callers for one zone share one
    request. On any failure (unreachable, slower than `timeout_s`, non-2xx, an answer without a
    usable `carbonIntensity`) the table's figure is used, its source saying why, and the live
    source is not asked again for that zone for `retry_after_error_s`."""

    def __init__(
        self,
        api_key: str,
        table: IntensityTable,
        *,
        base_url: str = "https://api.electricitymap.org/v3",
        ttl_s: float = 900.0,
        timeout_s: float = 2.0,
        retry_after_error_s: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or timeout_s <= 0 or retry_after_error_s < 0:
            raise ValueError("ttl_s and timeout_s must be positive, retry_after_error_s >= 0")
        import httpx  # here, not at the top: 6 MB a one-machine serve never needs

        self.table = table
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._retry_after_error_s = min(retry_after_error_s, ttl_s)
        self._clock = clock
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"auth-token": api_key},
            timeout=timeout_s,
            transport=transport,
        )
        self._cache: dict[str, tuple[float, Intensity]] = {}
        self._inflight: dict[str, asyncio.Task[Intensity]] = {}

    async def get(self, zone: str) -> Intensity:
        """The live intensity for `zone` if Electricity Maps gives one, else the table's."""
        fallback = self.table.lookup(zone)  # unknown zones fail here, whatever the live side
        if fallback.zone == WORLD_ZONE:
            return fallback  # Electricity Maps has no world zone
        key = fallback.zone
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refresh(key))
            self._inflight[key] = task

            def forget(done: asyncio.Task[Intensity], key: str = key) -> None:
                if self._inflight.get(key) is done:
                    del self._inflight[key]

            task.add_done_callback(forget)
        return await asyncio.shield(task)

    async def _refresh(self, zone: str) -> Intensity:
        import httpx

        try:
            async with asyncio.timeout(self._timeout_s):
                gco2e_per_kwh, detail, observed_at = await self._fetch(zone)
        except (TimeoutError, httpx.TimeoutException):
            reason = "timeout"
        except httpx.HTTPError as exc:
            reason = f"unreachable: {type(exc).__name__}"
        except _BadAnswer as exc:
            reason = str(exc)
        else:
            live = Intensity(
                zone=zone,
                gco2e_per_kwh=gco2e_per_kwh,
                ewif_l_per_kwh=self.table.row(zone).ewif_l_per_kwh,
                source=f"electricitymaps ({detail})",
                intensity_source="live",
                water_source=self.table.water_kind(zone),
                observed_at=observed_at,
            )
            self._cache[zone] = (self._clock() + self._ttl_s, live)
            return live
        log.warning("electricitymaps unavailable for zone %s (%s); using the table", zone, reason)
        fallback = self.table.lookup(zone, note=f"electricitymaps unavailable: {reason}")
        self._cache[zone] = (self._clock() + self._retry_after_error_s, fallback)
        return fallback

    async def _fetch(self, zone: str) -> tuple[float, str, str]:
        response = await self._client.get("/carbon-intensity/latest", params={"zone": zone})
        if not response.is_success:
            raise _BadAnswer(f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise _BadAnswer("answer is not JSON") from None
        value = body.get("carbonIntensity") if isinstance(body, dict) else None
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise _BadAnswer("answer has no usable carbonIntensity")
        assert isinstance(body, dict)
        details = [str(body.get(k)) for k in ("emissionFactorType", "datetime") if body.get(k)]
        if body.get("isEstimated") is True:
            details.append("estimated")
        observed_at = body.get("datetime")
        return (
            float(value),
            ", ".join(details) or "latest",
            observed_at if isinstance(observed_at, str) else "",
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
