"""The routing decision for one request: a model's candidates (every upstream that serves it,
exact names before patterns) put in the order to try them by the model's policy."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meters import MeterError
from meters.intensity import GridIntensity
from proxy.config import RoutingPolicy, RoutingSettings
from proxy.routing._carbon import Expected, RatesCache
from proxy.routing._policy import Candidate, order_candidates

if TYPE_CHECKING:
    from proxy.upstreams import Upstream

# Grid intensity per zone is read through the provider (its own cache and table fallback) at
# most this often by the decision: well inside any provider's cache period.
INTENSITY_MEMO_S = 1.0


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The upstreams to try, in order, and how they were chosen."""

    policy: RoutingPolicy
    upstreams: tuple[Upstream, ...]
    reason: str
    # lowest-carbon: what this request is expected to cost on each candidate, by name.
    expected: Mapping[str, Expected] = field(default_factory=dict)
    # The upstream `priority` would have chosen (carbon avoided is counted against it).
    priority: str = ""

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
        expected: dict[str, Expected] = {}
        if policy == "lowest-carbon":
            for upstream in upstreams:
                found = await self._expected(upstream, model, prompt_tokens, output_tokens)
                if found is not None:
                    expected[upstream.name] = found
        candidates = [
            Candidate(
                name=u.name,
                available=u.health.breaker.available(),
                full=u.health.full,
                in_flight=u.health.in_flight,
                ttft_s=u.health.expected_ttft_s,
                co2e_g=expected[u.name].co2e_g if u.name in expected else None,
            )
            for u in upstreams
        ]
        turn = self._turns.get(model, 0)
        if policy == "round-robin":
            self._turns[model] = turn + 1
        ordering = order_candidates(policy, candidates, turn, self._max_extra_ttft_s)
        priority = order_candidates("priority", candidates).order[0]
        return RoutePlan(
            policy=policy,
            upstreams=tuple(upstreams[i] for i in ordering.order),
            reason=ordering.reason,
            expected=expected,
            priority=upstreams[priority].name,
        )

    async def _expected(
        self, upstream: Upstream, model: str, prompt_tokens: int, output_tokens: int
    ) -> Expected | None:
        rates = self.rates.get(
            upstream.name, model, upstream.estimator, upstream.site, upstream.hardware
        )
        if rates is None:
            return None
        gco2e_per_kwh = await self.intensity_now(upstream.site.zone)
        if gco2e_per_kwh is None:
            return None
        return Expected.of(rates, prompt_tokens, output_tokens, gco2e_per_kwh)

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
