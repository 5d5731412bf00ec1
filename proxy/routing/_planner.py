"""The routing decision for one request: a model's candidates (every upstream that serves it,
exact names before patterns) put in the order to try them by the model's policy."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from meters import MeterError
from meters.intensity import GridIntensity
from proxy.config import RoutingPolicy, RoutingSettings
from proxy.routing._carbon import CarbonRates, Expected, RatesCache
from proxy.routing._policy import Candidate, order_candidates, priority_choice

if TYPE_CHECKING:
    from proxy.upstreams import Upstream

# Grid intensity per zone is read through the provider (its own cache and table fallback) at
# most this often by the decision: well inside any provider's cache period.
INTENSITY_MEMO_S = 1.0


class Weighed(NamedTuple):
    """An upstream's carbon rates for the model and its zone's intensity now."""

    rates: CarbonRates
    gco2e_per_kwh: float


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The upstreams to try, in order, and how they were chosen."""

    policy: RoutingPolicy
    upstreams: tuple[Upstream, ...]
    reason: str
    # lowest-carbon: each candidate's per-token rates and zone intensity now, by name.
    weighed: Mapping[str, Weighed] = field(default_factory=dict)
    # The upstream `priority` would have chosen (carbon avoided is counted against it).
    priority: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0

    def expected(self, upstream: str) -> Expected | None:
        """What this request was expected to cost on `upstream` (lowest-carbon only)."""
        found = self.weighed.get(upstream)
        if found is None:
            return None
        return Expected.of(found.rates, self.prompt_tokens, self.output_tokens, found.gco2e_per_kwh)

    def worst_co2e_g(self) -> float | None:
        """The worst candidate's expected gCO2e (lowest-carbon only)."""
        values = [
            w.rates.co2e_g(self.prompt_tokens, self.output_tokens, w.gco2e_per_kwh)
            for w in self.weighed.values()
        ]
        return max(values) if values else None

    @property
    def candidates(self) -> int:
        return len(self.upstreams)

    @property
    def chose(self) -> bool:
        """Whether a policy chose among several upstreams (the footprint's `route` member)."""
        return len(self.upstreams) > 1


class Planner:
    """Makes route plans; one per app (round-robin turns and the intensity memo live here)."""

    def __init__(
        self,
        settings: RoutingSettings,
        intensity: GridIntensity,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._intensity = intensity
        self._clock = clock
        self._max_extra_ttft_s = settings.max_extra_ttft_ms / 1000.0
        self._policies: dict[str, RoutingPolicy] = {}
        self._turns: dict[str, int] = {}
        self._zones: dict[str, tuple[float, float | None]] = {}
        self.rates = RatesCache(clock=clock)

    def policy_for(self, model: str) -> RoutingPolicy:
        policy = self._policies.get(model)
        if policy is None:
            policy = self.settings.policy_for(model)
            if len(self._policies) >= 4096:
                self._policies.clear()  # bounded: model names come from clients
            self._policies[model] = policy
        return policy

    async def plan(
        self, model: str, upstreams: Sequence[Upstream], prompt_tokens: int, output_tokens: int
    ) -> RoutePlan:
        """The order to try `upstreams` (the model's candidates, in priority order) in."""
        policy = self.policy_for(model)
        if len(upstreams) == 1:
            only = upstreams[0]
            return RoutePlan(policy, (only,), "the only upstream", priority=only.name)
        weighed: dict[str, Weighed] = {}
        lowest_carbon = policy == "lowest-carbon"
        candidates = []
        now = self._clock()
        for upstream in upstreams:
            name = upstream.settings.name
            health = upstream.health
            co2e_g = None
            if lowest_carbon:
                rates = self.rates.get(
                    name, model, upstream.estimator, upstream.site, upstream.hardware, now
                )
                memo = self._zones.get(upstream.site.zone)
                gco2e_per_kwh = (
                    memo[1]
                    if memo is not None and memo[0] > now
                    else await self.intensity_now(upstream.site.zone)
                )
                if rates is not None and gco2e_per_kwh is not None:
                    weighed[name] = Weighed(rates, gco2e_per_kwh)
                    co2e_g = rates.co2e_g(prompt_tokens, output_tokens, gco2e_per_kwh)
            candidates.append(
                Candidate(
                    name,
                    health.breaker.available(),
                    health.full,
                    health.in_flight,
                    health.expected_ttft_s,
                    co2e_g,
                )
            )
        turn = self._turns.get(model, 0)
        if policy == "round-robin":
            self._turns[model] = turn + 1
        ordering = order_candidates(policy, candidates, turn, self._max_extra_ttft_s)
        return RoutePlan(
            policy=policy,
            upstreams=tuple(upstreams[i] for i in ordering.order),
            reason=ordering.reason,
            weighed=weighed,
            priority=upstreams[priority_choice(candidates)].name,
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
        )

    async def intensity_now(self, zone: str) -> float | None:
        """The zone's grid intensity now (gCO2e/kWh) as the provider gives it, read at most
        once a second; None for a zone it cannot serve."""
        now = self._clock()
        found = self._zones.get(zone)
        if found is not None and found[0] > now:
            return found[1]
        try:
            value: float | None = (await self._intensity.get(zone)).gco2e_per_kwh
        except MeterError:
            value = None
        self._zones[zone] = (now + INTENSITY_MEMO_S, value)
        return value
