"""The routing decision, pure: candidates in priority order, as plain facts, ordered by a
policy into the order they will be tried in, with the reason in words.

Every policy tries, first, the candidates that can take a request now (circuit closed or a
half-open trial free, under `max_concurrency`), ordered by the policy; then the full ones, in
priority order; then those whose circuit is open, as a last resort.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from proxy.config import RoutingPolicy


class Candidate(NamedTuple):
    """One upstream that serves the model, as the decision sees it (a tuple: ten of them are
    made per request)."""

    name: str
    available: bool  # its circuit lets a request through now
    full: bool  # at its max_concurrency
    in_flight: int
    ttft_s: float | None  # observed time to first token, None until seen
    co2e_g: float | None = None  # lowest-carbon: expected gCO2e of this request there


@dataclass(frozen=True, slots=True)
class Ordering:
    """Indices into the candidates, in the order to try them, and why the first was chosen."""

    order: tuple[int, ...]
    reason: str


def priority_choice(candidates: Sequence[Candidate]) -> int:
    """The candidate `priority` would try first: the first ready one, else the first."""
    for i, c in enumerate(candidates):
        if c.available and not c.full:
            return i
    for i, c in enumerate(candidates):
        if c.available:
            return i
    return 0


def order_candidates(
    policy: RoutingPolicy,
    candidates: Sequence[Candidate],
    turn: int = 0,
    max_extra_ttft_s: float = 0.0,
) -> Ordering:
    """The order to try `candidates` in under `policy`; `turn` counts this model's earlier
    decisions (round-robin)."""
    ready = [i for i, c in enumerate(candidates) if c.available and not c.full]
    full = [i for i, c in enumerate(candidates) if c.available and c.full]
    shut = [i for i, c in enumerate(candidates) if not c.available]
    passed = [f"{candidates[i].name} (full)" for i in full]
    passed += [f"{candidates[i].name} (circuit open)" for i in shut]
    if policy == "round-robin" and ready:
        start = turn % len(ready)
        ready = ready[start:] + ready[:start]
        reason = "round-robin"
    elif policy == "least-busy":
        ready.sort(key=lambda i: candidates[i].in_flight)
        reason = "fewest requests in flight"
    elif policy == "lowest-carbon":
        ready, slow, reason = _greenest(candidates, ready, max_extra_ttft_s)
        passed += [f"{candidates[i].name} (slow)" for i in slow]
        ready += slow
    else:
        reason = "first in configuration order"
    if passed:
        reason += "; passed over " + ", ".join(passed)
    return Ordering(tuple(ready + full + shut), reason)


def _greenest(
    candidates: Sequence[Candidate], ready: list[int], max_extra_ttft_s: float
) -> tuple[list[int], list[int], str]:
    """Ready candidates by expected carbon (unknown last, in priority order), those past the
    latency guard apart (also by carbon)."""

    def carbon(i: int) -> float:
        value = candidates[i].co2e_g
        return math.inf if value is None else value

    by_carbon = sorted(ready, key=carbon)
    slow: list[int] = []
    if max_extra_ttft_s > 0:
        seen = [candidates[i].ttft_s for i in ready if candidates[i].ttft_s is not None]
        if seen:
            limit = min(t for t in seen if t is not None) + max_extra_ttft_s
            slow = [i for i in by_carbon if (t := candidates[i].ttft_s) is not None and t > limit]
            by_carbon = [i for i in by_carbon if i not in slow]
    if not by_carbon:
        return by_carbon, slow, "lowest expected carbon"
    best = candidates[by_carbon[0]].co2e_g
    worst = max((c for i in ready if (c := candidates[i].co2e_g) is not None), default=None)
    if best is None or worst is None:
        return by_carbon, slow, "lowest expected carbon (no estimate: configuration order)"
    return by_carbon, slow, f"lowest expected carbon ({best:.6g} g; worst {worst:.6g} g)"
