"""Engine work no visible request claimed in its tick, and who may take it back (§2b).

Pure helpers of `meters.attribution`: a tick's unclaimed work (`Held`) waits a few ticks for
the relay's lagged tokens (`lagged_arrivals`, `take_back`), and longer for a request whose
tokens show only at its end (the window claim). No clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

# per request: (energy J, hardware s, weight) taken back
Taken = dict[str, tuple[float, float, float]]


@dataclass(slots=True)
class Held:
    """Engine work of one tick that no visible request claimed: its weight, energy and
    hardware seconds, and the tick's span."""

    start_s: float
    end_s: float
    weight: float
    energy_j: float
    hardware_s: float
    waiting: bool = True  # a request whose tokens may show at its end was in flight


def lagged_arrivals(
    arrivals: Iterable[tuple[str, float]], unclaimed_w: float, weights: Mapping[str, float]
) -> dict[str, float]:
    """The first arrivals after a tick closed, in their order, up to the weight that tick left
    unclaimed: the tokens the engine had already counted.

    Only when those arrivals cover all of it: unclaimed work beyond them is someone else's
    (another replica's requests, bypass traffic), and taking it in part would hand their work
    to whichever request of ours happened to arrive first.
    """
    if unclaimed_w <= 0.0:
        return {}
    early: dict[str, float] = {}
    available_w = unclaimed_w
    for request_id, weight in arrivals:
        if available_w <= 0.0:
            break
        room = weights.get(request_id, 0.0) - early.get(request_id, 0.0)
        take = min(weight, available_w, room)
        if take > 0.0:
            early[request_id] = early.get(request_id, 0.0) + take
            available_w -= take
    if available_w > 1e-9 * unclaimed_w:
        return {}
    return early


def take_back(
    helds: Sequence[Held],
    wanted: Mapping[str, float],
    *,
    skip: Callable[[Held], bool],
    newest_only: bool = False,
) -> Taken:
    """Take up to Σ `wanted` weight out of `helds`, newest first (they shrink in place).

    Returns per request (energy J, hardware s, weight) in proportion to what it wanted.
    """
    total_w = sum(wanted.values())
    remaining_w = total_w
    claimed_j = claimed_s = claimed_w = 0.0
    for index in range(len(helds) - 1, -1, -1):
        held = helds[index]
        if remaining_w <= 0.0 or (newest_only and index != len(helds) - 1):
            break
        if held.weight <= 0.0 or skip(held):
            continue
        fraction = min(1.0, remaining_w / held.weight)
        taken_w = held.weight * fraction
        remaining_w -= taken_w
        claimed_w += taken_w
        claimed_j += held.energy_j * fraction
        claimed_s += held.hardware_s * fraction
        held.energy_j -= held.energy_j * fraction
        held.hardware_s -= held.hardware_s * fraction
        held.weight -= taken_w
    if total_w <= 0.0 or claimed_w <= 0.0:
        return {}
    return {
        rid: (claimed_j * w / total_w, claimed_s * w / total_w, claimed_w * w / total_w)
        for rid, w in wanted.items()
    }
