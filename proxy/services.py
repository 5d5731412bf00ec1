"""The live services a request passes through, built once at start and held on `app.state`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from proxy.budgets import Usage
from proxy.config import Settings
from proxy.routing import Planner

if TYPE_CHECKING:
    from meters.intensity import GridIntensity
    from proxy.auth import Authenticator
    from proxy.budgets import Budgets, RateLimits
    from proxy.ledger import Ledger
    from proxy.telemetry import Telemetry
    from proxy.upstreams import UpstreamRouter

__all__ = ["Services", "Usage"]


@dataclass(eq=False)
class Services:
    settings: Settings
    router: UpstreamRouter
    auth: Authenticator
    budgets: Budgets
    ledger: Ledger
    intensity: GridIntensity
    telemetry: Telemetry | None = None  # None when telemetry is off
    limits: RateLimits | None = None  # None: counted in-process, limits from the ledger
    planner: Planner = field(init=False)
    rate_limits: RateLimits = field(init=False)

    def __post_init__(self) -> None:
        self.planner = Planner(self.settings.routing, self.intensity)
        if self.limits is None:
            from proxy.budgets import LocalCounter, RateLimits

            self.limits = RateLimits(self.ledger, LocalCounter())
        self.rate_limits = self.limits
