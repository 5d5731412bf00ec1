"""Routing: which of a model's upstreams serves a request (priority, round-robin, least-busy,
lowest-carbon), each upstream's health (circuit breaker, in-flight count, time to first
token), and the active health checks.

- `_policy`: the decision, pure over plain facts (`order_candidates`).
- `_carbon`: a request's expected gCO2e on an upstream, from per-token rates.
- `_planner`: `Planner.plan`, the decision for one request (`RoutePlan`).
- `_health`: `CircuitBreaker`, `UpstreamHealth`.
- `_checks`: `HealthChecks`, the active checker.
"""

from proxy.routing._carbon import (
    CarbonRates,
    Expected,
    RatesCache,
    carbon_rates,
    co2e_avoided_g,
)
from proxy.routing._checks import HealthChecks
from proxy.routing._health import CircuitBreaker, CircuitState, UpstreamHealth
from proxy.routing._planner import Planner, RoutePlan
from proxy.routing._policy import Candidate, Ordering, order_candidates

__all__ = [
    "Candidate",
    "CarbonRates",
    "CircuitBreaker",
    "CircuitState",
    "Expected",
    "HealthChecks",
    "Ordering",
    "Planner",
    "RatesCache",
    "RoutePlan",
    "UpstreamHealth",
    "carbon_rates",
    "co2e_avoided_g",
    "order_candidates",
]
