"""Ledger records for tests: realistic values, every field set."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from proxy.ledger import LedgerRecord

BASE = LedgerRecord(
    request_id="req-0",
    created_at=datetime(2025, 3, 14, 12, 0, tzinfo=UTC),
    team="search",
    key_id="key_0123456789abcdef",
    model="llama-3.1-8b",
    upstream="local-vllm",
    endpoint="chat.completions",
    stream=True,
    status=200,
    cancelled=False,
    error=None,
    prompt_tokens=120,
    completion_tokens=256,
    tokens_counted=False,
    method="measured",
    basis="nvml",
    gpu_energy_j=41.7,
    energy_j=62.1,
    co2e_g=0.0069,
    embodied_co2e_g=0.0004,
    water_ml=0.094,
    zone="KR",
    grid_gco2e_per_kwh=400.0,
    pue=1.2,
    intensity_source="table:ember-2024",
    trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
    duration_ms=812.5,
    overhead_ms=0.31,
    attribution="engine",
)


def record(**changes: Any) -> LedgerRecord:
    return replace(BASE, **changes)
