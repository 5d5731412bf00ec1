"""`[upstreams.carbon]`: the operator's contracts for market-based carbon (issue 18). Impossible
or incomplete contracts stop `footprint serve` with one line naming the key, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from meters.types import MarketContracts
from proxy.config import ConfigError, load_settings
from tests.support.refusal import serve_refusal

UPSTREAM = '[[upstreams]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n[upstreams.carbon]\n'
RESIDUAL = 'residual_gco2e_per_kwh = 600\nresidual_source = "AIB 2024, Germany"\n'


@pytest.mark.parametrize(
    ("carbon", "key", "says"),
    [
        ("market_coverage = 1.5\n", "upstreams.0.carbon.market_coverage", "less than or equal"),
        ("market_coverage = -0.1\n", "upstreams.0.carbon.market_coverage", "greater than"),
        ("market_gco2e_per_kwh = 0\n", "upstreams.0.carbon.market_coverage", "required when"),
        (
            "market_coverage = 1\nmarket_gco2e_per_kwh = -5\n",
            "upstreams.0.carbon.market_gco2e_per_kwh",
            "greater than",
        ),
        (
            "market_coverage = 0.5\nmarket_gco2e_per_kwh = 0\nresidual_gco2e_per_kwh = -1\n"
            'residual_source = "x"\n',
            "upstreams.0.carbon.residual_gco2e_per_kwh",
            "greater than",
        ),
        (
            "market_coverage = 0.5\nmarket_gco2e_per_kwh = 0\n",
            "upstreams.0.carbon.market_coverage",
            "needs residual_gco2e_per_kwh",
        ),
        (
            "market_coverage = 0.5\nmarket_gco2e_per_kwh = 0\nresidual_gco2e_per_kwh = 600\n",
            "upstreams.0.carbon.residual_source",
            "required when residual_gco2e_per_kwh",
        ),
        (
            "market_coverage = 0.5\n" + RESIDUAL,
            "upstreams.0.carbon.market_coverage",
            "needs market_gco2e_per_kwh",
        ),
        (
            "market_coverage = 1\nmarket_gco2e_per_kwh = 0\nmarket_factor = 0\n",
            "upstreams.0.carbon.market_factor",
            "unknown key",
        ),
    ],
)
def test_impossible_contracts_stop_the_start_with_one_line_naming_the_key(
    tmp_path: Path, carbon: str, key: str, says: str
) -> None:
    path = tmp_path / "footprint.toml"
    path.write_text(UPSTREAM + carbon)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(path, environ={})
    line = serve_refusal(path)
    assert f"configuration error: {key}: " in line and says in line


@pytest.mark.parametrize(
    ("carbon", "contracts"),
    [
        ("", None),
        ("market_coverage = 1\nmarket_gco2e_per_kwh = 0\n", MarketContracts(1.0, 0.0, 0.0, "")),
        (
            "market_coverage = 0.8\nmarket_gco2e_per_kwh = 10\n" + RESIDUAL,
            MarketContracts(0.8, 10.0, 600.0, "AIB 2024, Germany"),
        ),
        # No instruments at all: the market method takes the residual mix for everything.
        ("market_coverage = 0\n" + RESIDUAL, MarketContracts(0.0, 0.0, 600.0, "AIB 2024, Germany")),
    ],
)
def test_complete_contracts_reach_the_meters_as_given(
    tmp_path: Path, carbon: str, contracts: MarketContracts | None
) -> None:
    path = tmp_path / "footprint.toml"
    path.write_text(UPSTREAM + carbon)
    assert load_settings(path, environ={}).upstreams[0].carbon.contracts() == contracts


def test_the_environment_overrides_the_coverage_and_is_checked_the_same(tmp_path: Path) -> None:
    path = tmp_path / "footprint.toml"
    path.write_text(UPSTREAM + "market_coverage = 1\nmarket_gco2e_per_kwh = 0\n" + RESIDUAL)
    env = "FOOTPRINT_UPSTREAMS__0__CARBON__MARKET_COVERAGE"
    settings = load_settings(path, environ={env: "0.25"})
    assert settings.upstreams[0].carbon.market_coverage == 0.25
    with pytest.raises(ConfigError, match=r"upstreams\.0\.carbon\.market_coverage"):
        load_settings(path, environ={env: "2"})
