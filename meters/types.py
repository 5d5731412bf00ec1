"""Plain value objects shared by every part of `meters`, and by its users.

Units are in every name: joules (`_j`), seconds (`_s`), grams CO2e (`_g`), millilitres (`_ml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from meters.constants import DEFAULT_ACCELERATOR, DEFAULT_PUE, DEFAULT_WUE_L_PER_KWH

Method = Literal["measured", "estimated"]
# Where a figure's grid intensity or water factor came from (contract.md, second wave): the live
# provider, the shipped table for the zone itself, its country's row (a sub-national zone the
# table lacks), or the world average (the table has no figure of its own for the zone).
FactorSource = Literal["live", "table", "table:country", "table:world"]


class MeterError(Exception):
    """An energy source could not give a reading (GPU gone, scrape failed, counter unreadable)."""


@dataclass(frozen=True, slots=True)
class Hardware:
    """What an upstream runs on; the estimator and embodied carbon need it."""

    accelerator: str = DEFAULT_ACCELERATOR
    gpus: int = 1
    active_params_b: float | None = None
    total_params_b: float | None = None


@dataclass(frozen=True, slots=True)
class MarketContracts:
    """An upstream's contractual instruments for market-based Scope 2 carbon (GHG Protocol).

    `coverage` (0–1) is the share of the upstream's electricity the contracts (PPAs,
    certificates, a supplier's tariff) cover, at `market_gco2e_per_kwh`, their emission
    factor; the rest is at `residual_gco2e_per_kwh`, the residual mix, whose source
    `residual_source` names (it goes on every ledger row)."""

    coverage: float
    market_gco2e_per_kwh: float
    residual_gco2e_per_kwh: float
    residual_source: str = ""


@dataclass(frozen=True, slots=True)
class SiteFactors:
    """Where an upstream's electricity and water come from. `contracts`: the operator's
    contractual instruments for market-based carbon; None where none are configured (then no
    market-based figure is made)."""

    zone: str = "WORLD"
    pue: float = DEFAULT_PUE
    wue_l_per_kwh: float = DEFAULT_WUE_L_PER_KWH
    contracts: MarketContracts | None = None


@dataclass(frozen=True, slots=True)
class Intensity:
    """Grid factors used for one figure, and where they came from.

    `source` is the detail (which table or provider, and any note such as why a live value is
    missing); `intensity_source` / `water_source` say in one word which kind of figure each
    factor is; `observed_at` is the intensity's own time: the live provider's timestamp, or
    the table's data year."""

    zone: str
    gco2e_per_kwh: float
    ewif_l_per_kwh: float
    source: str  # e.g. "table:ecologits-0.11.3", "electricitymaps (…)", "table:… (… unavailable)"
    intensity_source: FactorSource = "table"
    water_source: FactorSource = "table"
    observed_at: str = ""


@dataclass(frozen=True, slots=True)
class Measurement:
    """The energy one request took, as the meter attributed or estimated it.

    `server_energy_j` is the non-GPU server share (CPU, memory, fans) over the same time.
    `hardware_s` is the request's share of hardware occupancy in seconds (its fraction of each
    tick's weight times the tick's duration), from which embodied carbon follows; `gpus` is how
    many GPUs that occupancy is of (None: the upstream's configured `Hardware.gpus`).
    `bounds` holds the low and the high measurement where the inputs are a range (EcoLogits'
    parameter ranges); the central figures above are then their mean, as EcoLogits reports.
    """

    gpu_energy_j: float
    server_energy_j: float
    hardware_s: float
    method: Method
    basis: str  # "nvml", "prometheus", "ecologits", "calibrated:<model>@<accelerator>", …
    duration_s: float = 0.0
    gpus: int | None = None
    bounds: tuple[Measurement, Measurement] | None = None
    # How a measured figure was split (methodology §2b): "engine" (the model server's own
    # token counters) or "local" (the requests this replica saw); "" when estimated.
    attribution: str = ""


@dataclass(frozen=True, slots=True)
class Footprint:
    """Everything the contract reports for one request. Field names are the contract's."""

    method: Method
    gpu_energy_j: float
    energy_j: float
    co2e_g: float
    embodied_co2e_g: float
    water_ml: float
    zone: str
    grid_gco2e_per_kwh: float
    pue: float
    intensity_source: FactorSource | str = ""
    basis: str = ""
    extras: dict[str, object] = field(default_factory=dict)
    # Second wave (issue 13): where the water factor came from, the intensity's detail and own
    # time, the low/high figures of a ranged estimate, the methodology version, and the inputs
    # the figures were computed from (so a stored row can be recomputed and audited).
    water_source: FactorSource | str = ""
    intensity_detail: str = ""
    intensity_at: str = ""
    ranges: dict[str, tuple[float, float]] | None = None
    methodology_version: str = ""
    server_energy_j: float = 0.0
    hardware_s: float = 0.0
    gpus: int = 0
    wue_l_per_kwh: float = 0.0
    ewif_l_per_kwh: float = 0.0
    # Issue 18: market-based carbon (operational by the contracts and the residual mix, plus
    # the same embodied carbon as `co2e_g`), and the contracts it came from; None where the
    # upstream has no contract data (no market-based figure, not a copy of the location one).
    co2e_market_g: float | None = None
    contracts: MarketContracts | None = None
    attribution: str = ""  # "engine" | "local" for a measured figure (methodology §2b)


class RequestTrack(Protocol):
    """What the proxy tells the meter about one request while it runs.

    The proxy calls these from the event loop; implementations must be cheap (no I/O, no locks
    held long). Token counts are those seen so far in the relayed response.
    """

    def first_token(self, prompt_tokens: int) -> None:
        """The first output token arrived; the prompt has been prefilled."""

    def output_tokens(self, count: int) -> None:
        """`count` more output tokens arrived."""

    async def close(
        self, *, prompt_tokens: int, output_tokens: int, cancelled: bool, latency_s: float
    ) -> Measurement:
        """The request ended (or was cut off). Returns its final measurement without waiting
        for the next sampler tick."""


class RequestMeter(Protocol):
    """One per upstream: opens a track for every request the proxy relays there."""

    def open(self, request_id: str, model: str) -> RequestTrack: ...

    def start(self) -> None:
        """Start background sampling (if any). Idempotent."""

    async def aclose(self) -> None:
        """Stop background sampling and release the energy source."""
