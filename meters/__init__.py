"""Footprint's metering library: per-request GPU energy, measured or estimated, and its carbon
and water. Knows nothing of HTTP or the proxy; usable on its own (`from meters import ...`)."""

from meters.types import (
    Footprint,
    Hardware,
    Intensity,
    MarketContracts,
    Measurement,
    MeterError,
    Method,
    RequestMeter,
    RequestTrack,
    SiteFactors,
)

__all__ = [
    "Footprint",
    "Hardware",
    "Intensity",
    "MarketContracts",
    "Measurement",
    "MeterError",
    "Method",
    "RequestMeter",
    "RequestTrack",
    "SiteFactors",
]

# Estimation, calibration, footprint arithmetic and grid intensity (methodology §3-6).
from meters.calibration import Calibration, Calibrations
from meters.estimate import Estimator, ModelCatalog, ModelSpec, UnknownModel
from meters.footprint import compute_footprint, footprint_json, format_decimal
from meters.intensity import (
    ElectricityMapsProvider,
    GridIntensity,
    IntensityTable,
    TableIntensity,
    UnknownZone,
)

# isort: split
# Measured energy: sources, sampling, per-tick attribution, meters, agent (methodology §1-2).
from meters.agent import EnergyAgent, run_agent
from meters.attribution import Attributor, RequestEnergy, TickActivity, TickSplit, attribute_tick
from meters.meter import EstimatedMeter, MeasuredMeter, TelemetryMeter, build_meter
from meters.sampler import Sampler
from meters.sources.base import EnergySample, EnergySource, GpuReading
from meters.sources.nvml import NvmlSource
from meters.sources.prometheus import PrometheusSource

__all__ += [
    "Calibration",
    "Calibrations",
    "ElectricityMapsProvider",
    "Estimator",
    "GridIntensity",
    "IntensityTable",
    "ModelCatalog",
    "ModelSpec",
    "TableIntensity",
    "UnknownModel",
    "UnknownZone",
    "compute_footprint",
    "footprint_json",
    "format_decimal",
]

__all__ += [
    "Attributor",
    "EnergyAgent",
    "EnergySample",
    "EnergySource",
    "EstimatedMeter",
    "GpuReading",
    "MeasuredMeter",
    "NvmlSource",
    "PrometheusSource",
    "RequestEnergy",
    "Sampler",
    "TelemetryMeter",
    "TickActivity",
    "TickSplit",
    "attribute_tick",
    "build_meter",
    "run_agent",
]
