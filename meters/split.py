"""Pure arithmetic of one tick's split (methodology §2 and §2b): no state, no clock, no I/O.

Two rules share this module:

- local (§2): each request's weight w_ik = α · (prompt tokens prefilled in the tick) + (output
  tokens produced in the tick), over Σ_j w_jk of the requests this replica saw; requests whose
  progress is not visible get a time share (`tick_weights`);
- engine (§2b): the same w_ik over the model server's own α·Δprompt + Δgeneration for the tick
  (`attribute_engine_tick`); what the engine did that no request here accounts for is the
  other-traffic remainder.

And two helpers the stateful `Attributor` uses: the idle part of a tick before the first arrival
on a quiet GPU (`arrival_split`), and the credit of a request whose tokens showed only at its
end, from the engine work left unclaimed over its window (`window_claim`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

DEFAULT_ALPHA = 0.1  # prompt token cost against an output token: an assumption (README), §2


class TickActivity(NamedTuple):
    """What one request did during one tick.

    `overlap_s` is the time it was in flight within the tick; token counts are those that
    became visible in the tick (prompt tokens count when the first output token arrives).
    A tuple, not a dataclass: a tick builds one per request in flight, and a tuple is several
    times cheaper to make.
    """

    request_id: str
    overlap_s: float
    prompt_tokens: float = 0
    output_tokens: float = 0

    @property
    def visible(self) -> bool:
        """Whether the request's progress showed in the tick."""
        return self.prompt_tokens > 0 or self.output_tokens > 0


@dataclass(frozen=True, slots=True)
class TickSplit:
    """One tick's energy, split. `hardware_s` is each request's weight fraction × tick length."""

    shares_j: dict[str, float]
    hardware_s: dict[str, float]
    idle_j: float


def tick_weights(requests: Iterable[TickActivity], alpha: float) -> dict[str, float]:
    """Each request's weight in a tick, with the time-share rule for invisible progress.

    The rate an invisible request is credited with is the visible requests' output tokens per
    second in flight (pooled): their decode rate. Prompt weight is left out of that rate because
    a prefill is a one-off that the prefilling request is charged for; counting it would bill
    every waiting request for its neighbours' prompts. Only when the visible requests produced
    no output token in the tick does their prompt weight set the rate.
    """
    activity = list(requests)
    weights: dict[str, float] = {}
    visible_weight = visible_output = visible_overlap_s = 0.0
    invisible = []
    for request_id, overlap_s, prompt_tokens, output_tokens in activity:
        if prompt_tokens > 0 or output_tokens > 0:  # TickActivity.visible, inlined: hot loop
            weight = alpha * prompt_tokens + output_tokens
            weights[request_id] = weights.get(request_id, 0.0) + weight
            visible_weight += weight
            visible_output += output_tokens
            visible_overlap_s += overlap_s
        else:
            invisible.append((request_id, overlap_s))
    rate_weight = visible_output if visible_output > 0.0 else visible_weight
    for request_id, overlap_s in invisible:
        if rate_weight > 0.0 and visible_overlap_s > 0.0:
            weight = overlap_s * rate_weight / visible_overlap_s
        elif rate_weight > 0.0:
            weight = 0.0  # visible work with no time in flight: nothing to compare against
        else:
            weight = overlap_s  # nobody visible: plain time share
        weights[request_id] = weights.get(request_id, 0.0) + weight
    return weights


def attribute_tick(
    energy_j: float,
    duration_s: float,
    requests: Iterable[TickActivity],
    alpha: float = DEFAULT_ALPHA,
) -> TickSplit:
    """Split one tick's measured energy across the requests in flight during it.

    Returns every request's share of `energy_j` and of `duration_s` (hardware seconds), and
    what went to idle. Conservation: sum(shares) + idle == energy_j, up to float rounding.
    """
    if energy_j < 0.0 or not math.isfinite(energy_j):
        raise ValueError(f"tick energy must be a finite non-negative number, got {energy_j}")
    if duration_s < 0.0:
        raise ValueError(f"tick duration must be non-negative, got {duration_s}")
    if alpha < 0.0:
        raise ValueError(f"alpha must be non-negative, got {alpha}")
    weights = tick_weights(requests, alpha)
    total_weight = sum(weights.values())
    if total_weight <= 0.0:
        return TickSplit(
            shares_j={rid: 0.0 for rid in weights},
            hardware_s={rid: 0.0 for rid in weights},
            idle_j=energy_j,
        )
    # The fraction first: with tiny weights, energy × w would lose precision before dividing.
    fractions = {rid: w / total_weight for rid, w in weights.items()}
    return TickSplit(
        shares_j={rid: energy_j * f for rid, f in fractions.items()},
        hardware_s={rid: duration_s * f for rid, f in fractions.items()},
        idle_j=0.0,
    )


@dataclass(frozen=True, slots=True)
class EngineSplit:
    """One tick split against the engine's own work.

    `shares_j` / `hardware_s`: each visible request's part; `other_j` / `other_s`: the engine
    work no request of this replica accounts for; `idle_j`: energy of a tick the engine ran
    nothing in. shares + other + idle = the tick's energy.
    """

    shares_j: dict[str, float]
    hardware_s: dict[str, float]
    other_j: float
    other_s: float
    idle_j: float


def attribute_engine_tick(
    energy_j: float,
    duration_s: float,
    weights: Mapping[str, float],
    engine_weight: float,
) -> EngineSplit:
    """Split a tick by each request's weight over the engine's weight for the same tick.

    `weights` are this replica's requests' α·prompt + output tokens seen in the tick;
    `engine_weight` is α·Δprompt + Δgeneration from the engine's counters. The denominator is
    the larger of the engine's weight and Σ weights: the two are read a few milliseconds
    apart, so a token can show here a moment before the engine's counter, and no share may
    exceed the tick. With no weight at all the tick is idle.
    """
    if energy_j < 0.0 or not math.isfinite(energy_j):
        raise ValueError(f"tick energy must be a finite non-negative number, got {energy_j}")
    if duration_s < 0.0:
        raise ValueError(f"tick duration must be non-negative, got {duration_s}")
    if engine_weight < 0.0 or not math.isfinite(engine_weight):
        raise ValueError(f"engine weight must be finite and non-negative, got {engine_weight}")
    local_weight = 0.0
    for weight in weights.values():
        if weight < 0.0:
            raise ValueError(f"request weights must be non-negative, got {weight}")
        local_weight += weight
    denominator = max(engine_weight, local_weight)
    if denominator <= 0.0:
        return EngineSplit(
            {rid: 0.0 for rid in weights}, {rid: 0.0 for rid in weights}, 0.0, 0.0, energy_j
        )
    shares_j: dict[str, float] = {}
    hardware_s: dict[str, float] = {}
    claimed_j = claimed_s = 0.0
    for rid, weight in weights.items():
        fraction = weight / denominator
        shares_j[rid] = share = energy_j * fraction
        hardware_s[rid] = seconds = duration_s * fraction
        claimed_j += share
        claimed_s += seconds
    other_j = energy_j - claimed_j if claimed_j < energy_j else 0.0
    other_s = duration_s - claimed_s if claimed_s < duration_s else 0.0
    return EngineSplit(shares_j, hardware_s, other_j, other_s, 0.0)


def arrival_split(
    energy_j: float, duration_s: float, quiet_s: float, idle_power_w: float | None
) -> float:
    """The idle part of a tick whose first `quiet_s` seconds passed before anything arrived.

    At the GPU's idle power where it is known (the last idle tick's), else by time; never more
    than the tick's energy.
    """
    if quiet_s <= 0.0 or duration_s <= 0.0 or energy_j <= 0.0:
        return 0.0
    quiet_s = min(quiet_s, duration_s)
    if idle_power_w is not None and idle_power_w >= 0.0:
        return min(energy_j, idle_power_w * quiet_s)
    return min(energy_j, energy_j * quiet_s / duration_s)


def window_claim(claim_weight: float, unclaimed_weights: Sequence[float]) -> float:
    """The fraction of each unclaimed tick a request whose tokens showed only at its end takes.

    A non-streaming answer's tokens are known when it ends; the engine counted them as they
    were made. So the request takes `claim_weight` (α·prompt + output) out of the engine work
    no visible request claimed over its window, in proportion to that work tick by tick
    (when it made its tokens, the engine's unclaimed work rose). Never more than all of it.
    """
    total = math.fsum(unclaimed_weights)
    if claim_weight <= 0.0 or total <= 0.0:
        return 0.0
    return min(1.0, claim_weight / total)


def split_by_weights(energy_j: float, duration_s: float, weights: Mapping[str, float]) -> TickSplit:
    """Local rule with precomputed weights: share = ΔE · w / Σw; no weight means idle."""
    total_weight = sum(weights.values())
    if total_weight <= 0.0:
        return TickSplit({rid: 0.0 for rid in weights}, {rid: 0.0 for rid in weights}, energy_j)
    fractions = {rid: w / total_weight for rid, w in weights.items()}
    return TickSplit(
        shares_j={rid: energy_j * f for rid, f in fractions.items()},
        hardware_s={rid: duration_s * f for rid, f in fractions.items()},
        idle_j=0.0,
    )


def local_weights(
    requests: Iterable[tuple[str, float, float, float, float | None]], alpha: float
) -> dict[str, float]:
    """Local-rule weights: (request id, overlap s, prompt, output, own rate or None).

    A request with tokens in the tick weighs α·prompt + output. A stalled stream (no token in
    the tick, but tokens before: `own rate` is its output tokens per second so far) weighs its
    own rate × overlap, not its neighbours' rate. Requests that never showed progress get the
    time-share rule of `tick_weights`.
    """
    stalled: dict[str, float] = {}
    rest = []
    overlaps: dict[str, float] = {}
    for rid, overlap_s, prompt, output, own_rate in requests:
        overlaps[rid] = overlaps.get(rid, 0.0) + overlap_s
        if prompt <= 0 and output <= 0 and own_rate is not None:
            stalled[rid] = stalled.get(rid, 0.0) + own_rate * overlap_s
        else:
            rest.append(TickActivity(rid, overlap_s, prompt, output))
    weights = tick_weights(rest, alpha)
    for rid, weight in stalled.items():
        weights[rid] = weights.get(rid, 0.0) + weight
    if not any(weights.values()):
        return overlaps  # in flight, and no weight anywhere: plain time share
    return weights
