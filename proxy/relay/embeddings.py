"""The energy of an embeddings request when nothing measured it.

EcoLogits models generation only: asked about a request with no output tokens, it answers 0 J,
which would record embeddings as free. An embedding is one forward pass over the input, the
same work as a prompt's prefill, and the project already states what a prefilled token costs
against an output token: α (methodology §2; `metering.alpha`, default 0.1, an assumption until
`bench/` measures it). So, derived: an embeddings request of N input tokens costs α·N output
tokens of the model's estimated energy (GPU, server share and hardware time alike), with the
basis saying so: `derived:embeddings(alpha=0.1 x ecologits)`. A model the estimator cannot
size stays `unavailable: …`, never a silent 0.
"""

from __future__ import annotations

import math
from dataclasses import replace

from meters import Measurement, MeterError
from meters.estimate import Estimator


def needs_derivation(measurement: Measurement) -> bool:
    """An estimate that found nothing to charge (no output tokens)."""
    return (
        measurement.method == "estimated"
        and measurement.gpu_energy_j == 0.0
        and not measurement.basis.startswith("unavailable")
    )


def embeddings_measurement(
    estimator: Estimator, model: str, input_tokens: int, latency_s: float, alpha: float
) -> Measurement:
    """α · `input_tokens` output tokens' worth of the model's estimated energy."""
    if input_tokens <= 0:
        return Measurement(0.0, 0.0, 0.0, "estimated", "unavailable: no input tokens")
    try:
        one = estimator.estimate(model, 0, 1, math.inf)
    except MeterError as exc:
        return Measurement(0.0, 0.0, 0.0, "estimated", f"unavailable: {exc}")
    basis = f"derived:embeddings(alpha={alpha:g} x {one.basis})"
    return _scaled(one, alpha * input_tokens, basis, latency_s)


def _scaled(one: Measurement, tokens: float, basis: str, latency_s: float) -> Measurement:
    """One output token's estimate times `tokens`: energy, server share, hardware time, and
    the low and high bounds alike; GPU count unchanged."""
    bounds = one.bounds
    return replace(
        one,
        gpu_energy_j=one.gpu_energy_j * tokens,
        server_energy_j=one.server_energy_j * tokens,
        hardware_s=one.hardware_s * tokens,
        basis=basis,
        duration_s=latency_s,
        bounds=None
        if bounds is None
        else (
            _scaled(bounds[0], tokens, basis, latency_s),
            _scaled(bounds[1], tokens, basis, latency_s),
        ),
    )
