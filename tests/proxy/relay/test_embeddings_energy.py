"""Embeddings are not free: EcoLogits has no embeddings model, so their energy is derived from
input tokens (an input token costs α output tokens, methodology §2), or said unavailable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from meters.estimate import energy_per_output_token_j, gpu_count
from tests.proxy.conftest import proxy_settings
from tests.support.servers import ServerThread


def embed(proxy: ServerThread, model: str, inputs: list[str]) -> dict[str, Any]:
    sdk = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    raw = sdk.embeddings.with_raw_response.create(model=model, input=inputs)
    row = httpx.get(f"{proxy.url}/v1/footprint/requests/{raw.headers['x-request-id']}").json()
    assert float(raw.headers["x-footprint-gpu-energy-j"]) == pytest.approx(
        row["gpu_energy_j"], rel=1e-4
    )
    return row


def test_embeddings_energy_is_alpha_times_input_tokens_of_an_output_tokens_energy(
    proxy: ServerThread,
) -> None:
    row = embed(proxy, "echo", ["a b c", "d e f g"])  # 7 input tokens, by the upstream
    assert row["prompt_tokens"] == 7
    # The test upstream's settings: 8 B parameters, EcoLogits' batch of 64, α = 0.1.
    per_output_token_j = energy_per_output_token_j(8.0, 64) * gpu_count(8.0)
    assert row["gpu_energy_j"] == pytest.approx(0.1 * 7 * per_output_token_j, rel=1e-9)
    assert row["energy_j"] > row["gpu_energy_j"] > 0
    assert row["method"] == "estimated"
    assert row["basis"] == "derived:embeddings(alpha=0.1 x ecologits)"


def test_embeddings_of_a_model_of_unknown_size_say_unavailable(
    tmp_path: Path, start_proxy: Any, upstream: ServerThread
) -> None:
    settings = proxy_settings(tmp_path, upstream.url)
    unsized = settings.upstreams[0].model_copy(
        update={
            "hardware": settings.upstreams[0].hardware.model_copy(
                update={"active_params_b": None, "total_params_b": None}
            )
        }
    )
    proxy = start_proxy(settings.model_copy(update={"upstreams": [unsized]}))
    row = embed(proxy, "no-such-embedder", ["a b c"])
    assert row["gpu_energy_j"] == 0.0
    assert row["basis"].startswith("unavailable:")
    assert row["basis"] != "ecologits"


def test_an_energy_budget_holds_embeddings_back_before_the_upstream(
    tmp_path: Path, start_proxy: Any, upstream: ServerThread
) -> None:
    admin = {"authorization": "Bearer admin-secret"}
    proxy = start_proxy(
        proxy_settings(tmp_path, upstream.url), environ={"FOOTPRINT_ADMIN_KEY": "admin-secret"}
    )
    httpx.post(f"{proxy.url}/admin/teams", json={"name": "default"}, headers=admin)
    budget = {"team": "default", "metric": "energy_j", "limit": 0.001, "period": "day"}
    assert httpx.put(f"{proxy.url}/admin/budgets", json=budget, headers=admin).is_success
    refused = httpx.post(
        f"{proxy.url}/v1/embeddings", json={"model": "echo", "input": ["a b c " * 50]}
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "footprint_budget_exceeded"
