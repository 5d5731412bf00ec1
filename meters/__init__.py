"""Footprint's metering library: per-request GPU energy, measured or estimated, and its carbon
and water. Knows nothing of HTTP or the proxy; usable on its own (`from meters import ...`)."""

from meters.types import (
    Footprint,
    Hardware,
    Intensity,
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
    "Measurement",
    "MeterError",
    "Method",
    "RequestMeter",
    "RequestTrack",
    "SiteFactors",
]
