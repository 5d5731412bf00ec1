"""Grid intensity: the shipped table, and the Electricity Maps provider against a real local
HTTP server that answers in Electricity Maps' documented format, or fails in the ways a live
service does (down, slow, garbage, 5xx)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from ecologits.electricity_mix_repository import electricity_mixes

from meters.intensity import (
    ElectricityMapsProvider,
    IntensityTable,
    TableIntensity,
    UnknownZone,
)

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "em-secret-key-123"


# ---- the shipped table --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "alpha3"),
    [("KR", "KOR"), ("DE", "DEU"), ("FR", "FRA"), ("US", "USA"), ("SE", "SWE"), ("WORLD", "WOR")],
)
def test_shipped_table_carries_ecologits_mixes(zone: str, alpha3: str) -> None:
    mix = electricity_mixes.find_electricity_mix(alpha3)
    assert mix is not None
    intensity = IntensityTable.shipped().lookup(zone)
    assert intensity.zone == zone
    assert intensity.gco2e_per_kwh == pytest.approx(mix.gwp * 1000, rel=1e-12)
    assert intensity.ewif_l_per_kwh == pytest.approx(mix.wue, rel=1e-12)
    assert intensity.source == "table:ecologits-0.11.3"


def test_methodology_figures() -> None:
    table = IntensityTable.shipped()
    assert table.lookup("WORLD").gco2e_per_kwh == pytest.approx(458, abs=1)
    assert table.lookup("KR").gco2e_per_kwh == pytest.approx(417, abs=1)
    assert table.lookup("US").ewif_l_per_kwh == pytest.approx(3.13, abs=0.01)
    assert table.lookup("DE").ewif_l_per_kwh == pytest.approx(1.95, abs=0.01)


def test_every_row_names_its_source() -> None:
    text = (ROOT / "meters" / "data" / "zones.csv").read_text()
    table = IntensityTable.from_csv(text)
    assert len(table.zones()) > 200
    for zone in table.zones():
        assert table.row(zone).source.startswith("ecologits-0.11.3 data/electricity_mixes.json")


@pytest.mark.skipif(
    importlib.util.find_spec("pycountry") is None
    and not Path("/usr/share/iso-codes/json/iso_3166-1.json").exists(),
    reason="neither pycountry nor Debian's iso-codes gives ISO 3166-1 codes here",
)
def test_zones_csv_is_what_build_zones_makes() -> None:
    script = ROOT / "meters" / "data" / "build_zones.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_sub_national_zone_falls_back_to_its_country_and_says_so() -> None:
    table = IntensityTable.shipped()
    intensity = table.lookup("US-CAL-CISO")
    assert intensity.zone == "US-CAL-CISO"
    assert intensity.gco2e_per_kwh == table.lookup("US").gco2e_per_kwh
    assert intensity.source == "table:ecologits-0.11.3 (US average for US-CAL-CISO)"


def test_zone_case_does_not_matter() -> None:
    assert IntensityTable.shipped().lookup("kr").zone == "KR"


def test_unknown_zone_says_where_valid_ones_are() -> None:
    with pytest.raises(UnknownZone, match=r"zones\.csv") as raised:
        IntensityTable.shipped().lookup("XX-NOWHERE")
    assert "WORLD" in str(raised.value)
    assert isinstance(raised.value, LookupError)


def test_unknown_zone_suggests_the_zones_meant() -> None:
    table = IntensityTable.shipped()
    # An alpha-3 code finds its country, a common alias its ISO spelling, a typo its neighbours.
    assert table.nearest_zones("KOR")[0] == "KR"
    assert table.nearest_zones("uk")[0] == "GB"
    assert "DE" in table.nearest_zones("DF")
    assert all(zone in table.zones() for zone in table.nearest_zones("ZZ"))
    with pytest.raises(UnknownZone, match=r"unknown grid zone 'KOR' \(nearest known: KR"):
        table.lookup("KOR")


async def test_table_intensity_answers_from_the_table() -> None:
    provider = TableIntensity(IntensityTable.shipped())
    intensity = await provider.get("FR")
    assert intensity.gco2e_per_kwh == pytest.approx(41.44)
    await provider.aclose()


# ---- a local Electricity Maps ---------------------------------------------------------------


@dataclass
class FakeElectricityMaps:
    """What the local server answers, and what it was asked."""

    mode: str = "ok"  # ok | slow | garbage | null | 500
    intensity: float = 123.0
    requests: list[tuple[str, dict[str, list[str]], str | None]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""


def _handler(state: FakeElectricityMaps) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            state.requests.append((parts.path, parse_qs(parts.query), self.headers["auth-token"]))
            zone = parse_qs(parts.query).get("zone", ["?"])[0]
            if state.mode == "slow":
                state.release.wait(30)
            if state.mode == "500":
                self._send(500, b'{"error": "internal"}')
            elif state.mode == "garbage":
                self._send(200, b"<html>maintenance</html>")
            elif state.mode == "null":
                self._send(200, json.dumps({"zone": zone, "carbonIntensity": None}).encode())
            else:
                body = {
                    "zone": zone,
                    "carbonIntensity": state.intensity,
                    "datetime": "2026-11-28T01:00:00.000Z",
                    "updatedAt": "2026-11-28T00:55:21.002Z",
                    "createdAt": "2026-11-25T01:55:24.702Z",
                    "emissionFactorType": "lifecycle",
                    "isEstimated": False,
                    "estimationMethod": None,
                    "temporalGranularity": "hourly",
                }
                self._send(200, json.dumps(body).encode())

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def electricity_maps() -> Iterator[FakeElectricityMaps]:
    state = FakeElectricityMaps()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v3"
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider_for(
    url: str, *, clock: FakeClock | None = None, timeout_s: float = 10.0
) -> ElectricityMapsProvider:
    return ElectricityMapsProvider(
        API_KEY,
        IntensityTable.shipped(),
        base_url=url,
        ttl_s=900.0,
        timeout_s=timeout_s,
        retry_after_error_s=60.0,
        # An explicit transport: the test must reach 127.0.0.1 even where proxies are set.
        transport=httpx.AsyncHTTPTransport(),
        clock=clock or FakeClock(),
    )


async def test_live_value_is_used_with_the_tables_water_factor(
    electricity_maps: FakeElectricityMaps,
) -> None:
    provider = provider_for(electricity_maps.url)
    try:
        intensity = await provider.get("DE")
    finally:
        await provider.aclose()
    assert intensity.zone == "DE"
    assert intensity.gco2e_per_kwh == 123.0
    assert intensity.ewif_l_per_kwh == IntensityTable.shipped().lookup("DE").ewif_l_per_kwh
    assert intensity.source == "electricitymaps (lifecycle, 2026-11-28T01:00:00.000Z)"
    assert electricity_maps.requests == [("/v3/carbon-intensity/latest", {"zone": ["DE"]}, API_KEY)]


async def test_sub_national_zone_is_asked_for_as_is(electricity_maps: FakeElectricityMaps) -> None:
    provider = provider_for(electricity_maps.url)
    try:
        intensity = await provider.get("US-CAL-CISO")
    finally:
        await provider.aclose()
    assert (intensity.zone, intensity.gco2e_per_kwh) == ("US-CAL-CISO", 123.0)
    assert electricity_maps.requests[0][1] == {"zone": ["US-CAL-CISO"]}


async def test_value_is_cached_for_the_ttl_and_shared_by_concurrent_callers(
    electricity_maps: FakeElectricityMaps,
) -> None:
    clock = FakeClock()
    provider = provider_for(electricity_maps.url, clock=clock)
    try:
        together = await asyncio.gather(*(provider.get("KR") for _ in range(20)))
        one_by_one = [await provider.get("KR") for _ in range(10)]
        assert len(electricity_maps.requests) == 1
        assert {i.gco2e_per_kwh for i in together + one_by_one} == {123.0}

        clock.now += 899.0
        await provider.get("KR")
        assert len(electricity_maps.requests) == 1

        electricity_maps.intensity = 321.0
        clock.now += 2.0  # past the 900 s TTL
        refreshed = await provider.get("KR")
        assert len(electricity_maps.requests) == 2
        assert refreshed.gco2e_per_kwh == 321.0

        await provider.get("FR")  # another zone is another entry
        assert len(electricity_maps.requests) == 3
    finally:
        await provider.aclose()


async def test_server_down_uses_the_table(electricity_maps: FakeElectricityMaps) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there now
    provider = provider_for(f"http://127.0.0.1:{port}/v3")
    try:
        intensity = await provider.get("KR")
    finally:
        await provider.aclose()
    table = IntensityTable.shipped().lookup("KR")
    assert intensity.gco2e_per_kwh == table.gco2e_per_kwh
    assert intensity.source.startswith(
        "table:ecologits-0.11.3 (electricitymaps unavailable: unreachable"
    )


async def test_slow_server_times_out_to_the_table(electricity_maps: FakeElectricityMaps) -> None:
    electricity_maps.mode = "slow"
    provider = provider_for(electricity_maps.url, timeout_s=0.2)
    try:
        intensity = await provider.get("KR")
    finally:
        await provider.aclose()
    assert intensity.gco2e_per_kwh == IntensityTable.shipped().lookup("KR").gco2e_per_kwh
    assert intensity.source == "table:ecologits-0.11.3 (electricitymaps unavailable: timeout)"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("500", "HTTP 500"),
        ("garbage", "answer is not JSON"),
        ("null", "answer has no usable carbonIntensity"),
    ],
)
async def test_bad_answers_use_the_table(
    electricity_maps: FakeElectricityMaps, mode: str, reason: str
) -> None:
    electricity_maps.mode = mode
    provider = provider_for(electricity_maps.url)
    try:
        intensity = await provider.get("US-CAL-CISO")
    finally:
        await provider.aclose()
    assert intensity.gco2e_per_kwh == IntensityTable.shipped().lookup("US").gco2e_per_kwh
    assert intensity.source == (
        "table:ecologits-0.11.3 "
        f"(US average for US-CAL-CISO; electricitymaps unavailable: {reason})"
    )
    assert API_KEY not in intensity.source


async def test_after_a_failure_the_live_source_is_retried_later_not_per_request(
    electricity_maps: FakeElectricityMaps,
) -> None:
    clock = FakeClock()
    electricity_maps.mode = "500"
    provider = provider_for(electricity_maps.url, clock=clock)
    try:
        first = await provider.get("DE")
        for _ in range(5):
            await provider.get("DE")
        assert len(electricity_maps.requests) == 1
        assert first.source.startswith("table:")

        electricity_maps.mode = "ok"
        clock.now += 61.0
        recovered = await provider.get("DE")
        assert len(electricity_maps.requests) == 2
        assert recovered.source.startswith("electricitymaps")
    finally:
        await provider.aclose()


async def test_world_and_unknown_zones_never_reach_the_network(
    electricity_maps: FakeElectricityMaps,
) -> None:
    provider = provider_for(electricity_maps.url)
    try:
        world = await provider.get("WORLD")
        with pytest.raises(UnknownZone):
            await provider.get("NOT-A-ZONE")
    finally:
        await provider.aclose()
    assert world.source == "table:ecologits-0.11.3"
    assert electricity_maps.requests == []
