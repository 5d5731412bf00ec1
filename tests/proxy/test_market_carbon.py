"""Market-based carbon through the real path (issue 18): openai SDK → proxy (uvicorn) → test
upstream. An upstream with `[upstreams.carbon]` contracts gives `co2e_market_g` in the footprint
object, the `x-footprint-co2e-market-g` header and the ledger row; one without gives none of
them (absent, not a copy of the location-based figure)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.proxy.conftest import proxy_settings
from tests.support.servers import ServerThread

MESSAGES = [{"role": "user", "content": "hello there"}]
J_PER_KWH = 3_600_000.0
# A wind PPA covering 70 % at 0 g, the rest at a residual mix of 620 g (an operator's figure).
CONTRACTS = {
    "market_coverage": 0.7,
    "market_gco2e_per_kwh": 0.0,
    "residual_gco2e_per_kwh": 620.0,
    "residual_source": "AIB European Residual Mixes 2024, Germany (operator's copy)",
}


def upstream_entry(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": f"{url}/v1",
        "models": [name],
        "zone": "DE",
        "meter": {"kind": "estimate"},
        "hardware": {"active_params_b": 8.0, "total_params_b": 8.0},
        **extra,
    }


@pytest.fixture
def market_proxy(
    start_proxy: Callable[..., ServerThread], tmp_path: Path, upstream: ServerThread
) -> ServerThread:
    settings = proxy_settings(
        tmp_path,
        upstream.url,
        upstreams=[
            upstream_entry("green", upstream.url, carbon=CONTRACTS),
            upstream_entry("grid", upstream.url),
        ],
    )
    return start_proxy(settings)


def client(proxy: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)


def ledger_row(proxy: ServerThread, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{proxy.url}/v1/footprint/requests/{request_id}")
    assert response.status_code == 200, response.text
    return response.json()


def hand_market_g(energy_j: float, embodied_g: float) -> float:
    factor = 0.7 * 0.0 + 0.3 * 620.0
    return energy_j / J_PER_KWH * factor + embodied_g


def ask(proxy: ServerThread, model: str, request_id: str) -> tuple[Any, dict[str, Any]]:
    """One chat request through the SDK: the response headers and the footprint member."""
    raw = client(proxy).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, extra_headers={"x-request-id": request_id}
    )
    return raw.headers, raw.parse().model_extra["footprint"]  # type: ignore[index]


def test_a_request_to_an_upstream_with_contracts_carries_both_figures(
    market_proxy: ServerThread,
) -> None:
    headers, footprint = ask(market_proxy, "green", "green-1")
    assert footprint["energy_j"] > 0 and footprint["embodied_co2e_g"] > 0
    expected = hand_market_g(footprint["energy_j"], footprint["embodied_co2e_g"])
    assert footprint["co2e_market_g"] == pytest.approx(expected, rel=1e-5)
    # Location-based stays the header figure; the market one has its own header.
    assert float(headers["x-footprint-co2e-g"]) == pytest.approx(footprint["co2e_g"])
    assert float(headers["x-footprint-co2e-market-g"]) == footprint["co2e_market_g"]
    assert footprint["co2e_market_g"] != footprint["co2e_g"]

    row = ledger_row(market_proxy, "green-1")
    assert row["co2e_market_g"] == pytest.approx(expected, rel=1e-5)
    assert row["co2e_g"] == pytest.approx(footprint["co2e_g"], rel=1e-5)
    assert row["market_coverage"] == 0.7 and row["market_gco2e_per_kwh"] == 0.0
    assert row["residual_gco2e_per_kwh"] == 620.0
    assert row["residual_source"] == CONTRACTS["residual_source"]


def test_a_request_to_an_upstream_without_contracts_has_no_market_figure(
    market_proxy: ServerThread,
) -> None:
    headers, footprint = ask(market_proxy, "grid", "grid-1")
    assert footprint["co2e_g"] > 0
    assert "co2e_market_g" not in footprint
    assert "x-footprint-co2e-market-g" not in headers
    row = ledger_row(market_proxy, "grid-1")
    assert row["co2e_market_g"] is None and row["market_coverage"] is None
    assert row["residual_source"] is None


def test_a_stream_ends_with_the_market_figure_in_its_footprint_comment(
    market_proxy: ServerThread,
) -> None:
    with httpx.stream(
        "POST",
        f"{market_proxy.url}/v1/chat/completions",
        json={"model": "green", "messages": MESSAGES, "stream": True},
        headers={"x-request-id": "green-stream"},
        timeout=30,
    ) as response:
        body = response.read().decode()
    comment = next(line for line in body.splitlines() if line.startswith(": footprint "))
    footprint = json.loads(comment.removeprefix(": footprint "))
    expected = hand_market_g(footprint["energy_j"], footprint["embodied_co2e_g"])
    assert footprint["co2e_market_g"] == pytest.approx(expected, rel=1e-5)
    assert ledger_row(market_proxy, "green-stream")["co2e_market_g"] == pytest.approx(
        expected, rel=1e-5
    )
