"""Splitting measured energy across the requests a GPU served at once (methodology §2).

Pure: no clock, no I/O, no threads. `attribute_tick` splits one tick; `Attributor` keeps the
requests in flight on one upstream, turns their events into per-tick activity, and closes a
tick for every cumulative energy sample it is given.

Per tick k with energy ΔE_k and requests A_k in flight:

- weight w_ik = α · (prompt tokens prefilled in the tick) + (output tokens produced in the tick);
- a request with no visible progress in the tick (waiting for its first token, or behind a
  non-streaming upstream) weighs its overlap with the tick × the visible requests' rate (their
  output tokens over their time in the tick, see `tick_weights`), or its plain overlap when
  none is visible;
- share_ik = ΔE_k · w_ik / Σ_j w_jk; with no weight at all, ΔE_k goes to the idle account.

So Σ shares + idle = ΔE at every tick, up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
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
    prompt_tokens: int = 0
    output_tokens: int = 0

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


@dataclass(slots=True)
class RequestEnergy:
    """A request's attributed totals so far (final once `settled`)."""

    request_id: str
    start_s: float
    end_s: float | None = None
    energy_j: float = 0.0
    hardware_s: float = 0.0
    ticks: int = 0
    settled: bool = False

    @property
    def duration_s(self) -> float:
        """Time in flight (0 until the request ends)."""
        return 0.0 if self.end_s is None else self.end_s - self.start_s


@dataclass(slots=True)
class _InFlight:
    totals: RequestEnergy
    prompt_tokens: int = 0  # visible since the last tick closed
    output_tokens: int = 0


class Attributor:
    """Per-upstream state: requests in flight, closed ticks, the idle account.

    Not thread-safe; the sampler serialises access. Events carry times on the same monotonic
    clock as the samples. Token events count in the tick that is open when they are reported.
    A request ends at `end(…, time_s)`; its figure is final (settled) once a sample at or after
    that time has been consumed, which is why the meter takes one at the request's end.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        if alpha < 0.0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.alpha = alpha
        self._requests: dict[str, _InFlight] = {}
        self._last_time_s: float | None = None
        self._last_energy_j: float | None = None
        self.idle_energy_j = 0.0
        self.measured_energy_j = 0.0  # Σ ΔE over every closed tick
        self.ticks = 0

    @property
    def last_sample_s(self) -> float | None:
        """Time of the last consumed sample (None before the first)."""
        return self._last_time_s

    @property
    def in_flight(self) -> int:
        """Requests started and not yet settled."""
        return sum(1 for r in self._requests.values() if not r.totals.settled)

    def start(self, request_id: str, time_s: float) -> None:
        """A request was sent to the upstream at `time_s`."""
        if request_id in self._requests:
            raise ValueError(f"request {request_id!r} already started")
        self._requests[request_id] = _InFlight(RequestEnergy(request_id, start_s=time_s))

    def first_token(self, request_id: str, prompt_tokens: int) -> None:
        """The first output token arrived: `prompt_tokens` were prefilled."""
        request = self._open_request(request_id)
        if request is not None and prompt_tokens > 0:
            request.prompt_tokens += prompt_tokens

    def output_tokens(self, request_id: str, count: int) -> None:
        """`count` more output tokens arrived."""
        request = self._open_request(request_id)
        if request is not None and count > 0:
            request.output_tokens += count

    def end(self, request_id: str, time_s: float) -> None:
        """The request finished (or was cut off) at `time_s`."""
        request = self._open_request(request_id)
        if request is None:
            return
        request.totals.end_s = max(time_s, request.totals.start_s)
        if self._last_time_s is not None and self._last_time_s >= request.totals.end_s:
            self._settle(request)  # a sample already covers its end

    def sample(self, time_s: float, energy_j: float) -> TickSplit | None:
        """Consume a cumulative energy sample; close the tick since the previous one.

        The first sample is the baseline (returns None). Samples not newer than the last one
        are ignored (returns None): two threads may read the source out of order.
        """
        if self._last_time_s is None or self._last_energy_j is None:
            self._last_time_s, self._last_energy_j = time_s, energy_j
            for request in self._requests.values():
                # Work reported before the baseline has no measured energy to share.
                request.prompt_tokens = request.output_tokens = 0
            return None
        if time_s <= self._last_time_s:
            return None
        delta_j = energy_j - self._last_energy_j
        if delta_j < 0.0:
            raise ValueError(
                f"cumulative energy went backwards ({self._last_energy_j} -> {energy_j}); "
                "sources must absorb counter resets"
            )
        tick_start_s, tick_end_s = self._last_time_s, time_s
        activity = []
        for request in self._requests.values():
            totals = request.totals
            if totals.settled:
                continue
            if totals.start_s > tick_end_s:
                continue  # started after this tick's sample was read: not in flight yet
            # min/max written out: this loop runs for every request in flight at every read
            end_s = totals.end_s
            if end_s is None or end_s > tick_end_s:
                end_s = tick_end_s
            from_s = totals.start_s if totals.start_s > tick_start_s else tick_start_s
            overlap_s = end_s - from_s if end_s > from_s else 0.0
            activity.append(
                TickActivity(
                    totals.request_id, overlap_s, request.prompt_tokens, request.output_tokens
                )
            )
        split = attribute_tick(delta_j, tick_end_s - tick_start_s, activity, self.alpha)
        for request_id, share_j in split.shares_j.items():
            request = self._requests[request_id]
            request.totals.energy_j += share_j
            request.totals.hardware_s += split.hardware_s[request_id]
            request.totals.ticks += 1
            request.prompt_tokens = request.output_tokens = 0
            if request.totals.end_s is not None and request.totals.end_s <= tick_end_s:
                self._settle(request)
        self.idle_energy_j += split.idle_j
        self.measured_energy_j += delta_j
        self.ticks += 1
        self._last_time_s, self._last_energy_j = time_s, energy_j
        return split

    def totals(self, request_id: str) -> RequestEnergy | None:
        """A request's totals so far, without removing it."""
        request = self._requests.get(request_id)
        return None if request is None else request.totals

    def pop(self, request_id: str) -> RequestEnergy | None:
        """Remove a request and return its totals (settled or not).

        A request removed before it settled takes no further share; its unsettled energy
        stays attributed to it (it is in these totals), so conservation still holds.
        """
        request = self._requests.pop(request_id, None)
        return None if request is None else request.totals

    def attributed_energy_j(self) -> float:
        """Σ energy of the requests still held (settled or not)."""
        return sum(r.totals.energy_j for r in self._requests.values())

    def _open_request(self, request_id: str) -> _InFlight | None:
        request = self._requests.get(request_id)
        if request is None or request.totals.end_s is not None:
            return None  # unknown, or events after its end: nothing left to weigh
        return request

    @staticmethod
    def _settle(request: _InFlight) -> None:
        request.totals.settled = True
        request.prompt_tokens = request.output_tokens = 0
