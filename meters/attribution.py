"""Splitting measured energy across the requests a GPU served at once (methodology §2, §2b).

`Attributor` keeps the requests in flight on one upstream, turns their events into per-tick
weights and closes a tick for every cumulative energy sample it is given; the arithmetic of one
tick is in `meters.split` (pure, re-exported here). No clock, no I/O, no threads.

With an engine activity sample beside the energy sample (the model server's own token
counters), a tick is split over the engine's work: Σ shares + other traffic + idle = ΔE.
Without one, over the requests this replica saw (the local rule): Σ shares + idle = ΔE. Also:

- the tick in which something arrives on a quiet GPU is split at the arrival: the time before
  it is idle, at the idle power last measured;
- a counter that did not move over a tick (DCGM's exporter steps about once a second) is no
  tick: the next sample that moves closes one step over the whole time, so the figure is spread
  over the counter's own steps;
- a request whose tokens showed only at its end (non-streaming) is credited, in engine mode,
  with its tokens' part of the engine work left unclaimed over its window;
- locally, a stalled stream weighs its own rate, not its neighbours'.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from meters.sources.engine import ActivitySample
from meters.split import (
    DEFAULT_ALPHA,
    EngineSplit,
    TickActivity,
    TickSplit,
    arrival_split,
    attribute_engine_tick,
    attribute_tick,
    local_weights,
    split_by_weights,
    tick_weights,
    window_claim,
)

__all__ = [
    "DEFAULT_ALPHA",
    "Attributor",
    "EngineSplit",
    "RequestEnergy",
    "TickActivity",
    "TickSplit",
    "attribute_engine_tick",
    "attribute_tick",
    "tick_weights",
]

# A tick the engine spent on work no token shows yet (a long prefill) joins the next one, but
# never for longer than this: then it counts as other traffic.
MAX_DEFERRED_S = 2.0


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
    local_ticks: int = 0  # ticks split by the local rule (no engine counters then)

    @property
    def duration_s(self) -> float:
        """Time in flight (0 until the request ends)."""
        return 0.0 if self.end_s is None else self.end_s - self.start_s

    @property
    def attribution(self) -> str:
        """`engine` when every tick it took part in was split by the engine's counters."""
        return "local" if self.local_ticks else "engine"


@dataclass(slots=True)
class _InFlight:
    totals: RequestEnergy
    prompt_tokens: float = 0.0  # visible since the last tick closed
    output_tokens: float = 0.0
    seen_output: float = 0.0  # output tokens in closed ticks
    first_visible_s: float | None = None
    credit: float = 0.0  # local rule: weight credited ahead to it while it stalled
    claim_weight: float = 0.0  # α·prompt + output given at its end, for a window claim

    @property
    def visible_ever(self) -> bool:
        return self.first_visible_s is not None


@dataclass(slots=True)
class _Held:
    """Engine work of one tick that no visible request claimed, kept while a request whose
    tokens may show only at its end was in flight."""

    start_s: float
    end_s: float
    weight: float
    energy_j: float
    hardware_s: float


class Attributor:
    """Per-upstream state: requests in flight, closed ticks, the idle and other accounts.

    Not thread-safe; the sampler serialises access. Events carry times on the same monotonic
    clock as the samples. Token events count in the tick that is open when they are reported.
    A request ends at `end(…, time_s)`; its figure is final (settled) once a sample at or after
    that time has been consumed, which is why the meter takes one at the request's end.
    Conservation: Σ request energy + idle + other + held = measured, at every sample.
    """

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        if alpha < 0.0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.alpha = alpha
        self._requests: dict[str, _InFlight] = {}
        self._last_time_s: float | None = None
        self._last_energy_j: float | None = None
        self._engine_weight: float | None = None  # cumulative engine weight at the last tick
        self._quiet = True  # nothing ran at the last tick's end (the engine or ours)
        self._idle_power_w: float | None = None
        self._held: deque[_Held] = deque()
        self.idle_energy_j = 0.0
        self.idle_s = 0.0
        self.other_energy_j = 0.0
        self.other_s = 0.0
        self.measured_energy_j = 0.0  # Σ ΔE over every closed tick
        self.measured_s = 0.0
        self.ticks = 0
        self.engine_ticks = 0
        self.deferred = False  # the last sample closed nothing (counter did not step, prefill)

    @property
    def last_sample_s(self) -> float | None:
        """Time of the last consumed sample (None before the first)."""
        return self._last_time_s

    @property
    def held_energy_j(self) -> float:
        """Unclaimed engine work kept for requests whose tokens show only at their end."""
        return sum(h.energy_j for h in self._held)

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

    def end(
        self, request_id: str, time_s: float, *, prompt_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """The request finished (or was cut off) at `time_s`, with these totals.

        The totals matter for a request whose tokens never showed while it ran: in engine
        mode it claims their part of the engine's unclaimed work over its window.
        """
        request = self._open_request(request_id)
        if request is None:
            return
        request.totals.end_s = max(time_s, request.totals.start_s)
        request.claim_weight = self.alpha * max(prompt_tokens, 0) + max(output_tokens, 0)
        if self._last_time_s is not None and self._last_time_s >= request.totals.end_s:
            self._settle(request)  # a sample already covers its end

    def sample(
        self,
        time_s: float,
        energy_j: float,
        activity: ActivitySample | None = None,
        *,
        moved: bool = True,
    ) -> TickSplit | EngineSplit | None:
        """Consume a cumulative energy sample (and the engine's counters, when read on the same
        tick); close the tick since the previous one.

        The first sample is the baseline (returns None). Samples not newer than the last one
        are ignored (returns None): two threads may read the source out of order. A sample
        whose counter did not move (`moved=False` and no energy) closes nothing: the next one
        that moves closes the whole step.
        """
        if self._last_time_s is None or self._last_energy_j is None:
            self._baseline(time_s, energy_j, activity)
            return None
        if time_s <= self._last_time_s:
            return None
        delta_j = energy_j - self._last_energy_j
        if delta_j < 0.0:
            raise ValueError(
                f"cumulative energy went backwards ({self._last_energy_j} -> {energy_j}); "
                "sources must absorb counter resets"
            )
        if not moved and delta_j == 0.0:
            self.deferred = True
            return None  # the counter has not stepped since the last tick: one step, later
        self.deferred = False
        t0, t1 = self._last_time_s, time_s
        engine_w: float | None = None
        if activity is not None and self._engine_weight is not None:
            engine_w = max(0.0, activity.weight(self.alpha) - self._engine_weight)
        entries, first_arrival_s = self._tick_entries(t0, t1)
        if self._prefill_pending(engine_w, activity, entries, t0, t1):
            self.deferred = True
            return None  # engine busy, no token yet (a prefill): the next tick has it
        idle_j = 0.0
        quiet_s = 0.0
        if self._quiet and first_arrival_s is not None:
            quiet_s = first_arrival_s - t0
            idle_j = arrival_split(delta_j, t1 - t0, quiet_s, self._idle_power_w)
        rest_j, rest_s = delta_j - idle_j, (t1 - t0) - quiet_s
        split: TickSplit | EngineSplit
        if engine_w is not None:
            split = self._engine_tick(rest_j, rest_s, entries, engine_w, t0, t1)
        else:
            split = self._local_tick(rest_j, rest_s, entries, t1)
        self._book(split, t1)
        if rest_j > 0.0:
            tick_idle_s = quiet_s + rest_s * split.idle_j / rest_j
            if split.idle_j == rest_j and quiet_s == 0.0 and rest_s > 0.0:
                self._idle_power_w = rest_j / rest_s  # a whole tick of nothing: idle power
        else:
            tick_idle_s = quiet_s + (rest_s if not any(split.shares_j.values()) else 0.0)
        self.idle_energy_j += idle_j + split.idle_j
        self.idle_s += tick_idle_s
        self.measured_energy_j += delta_j
        self.measured_s += t1 - t0
        self.ticks += 1
        self._last_time_s, self._last_energy_j = time_s, energy_j
        if activity is not None:
            self._engine_weight = activity.weight(self.alpha)
        else:
            self._engine_weight = None
        ours_running = any(not r.totals.settled for r in self._requests.values())
        engine_ran = engine_w is not None and (
            engine_w > 0.0 or (activity is not None and activity.running > 0)
        )
        self._quiet = not ours_running and not engine_ran
        self._release_held()
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
        self._release_held()
        return None if request is None else request.totals

    def attributed_energy_j(self) -> float:
        """Σ energy of the requests still held (settled or not)."""
        return sum(r.totals.energy_j for r in self._requests.values())

    # -- one tick -------------------------------------------------------------------------

    def _baseline(self, time_s: float, energy_j: float, activity: ActivitySample | None) -> None:
        self._last_time_s, self._last_energy_j = time_s, energy_j
        self._engine_weight = None if activity is None else activity.weight(self.alpha)
        for request in self._requests.values():
            # Work reported before the baseline has no measured energy to share.
            request.prompt_tokens = request.output_tokens = 0.0

    def _prefill_pending(
        self,
        engine_w: float | None,
        activity: ActivitySample | None,
        entries: list[tuple[_InFlight, float, float, float, float | None]],
        t0: float,
        t1: float,
    ) -> bool:
        """The engine ran something that no token shows yet, and nothing of ours ended."""
        if engine_w is None or activity is None or engine_w > 0.0 or activity.running <= 0:
            return False
        if any(e[2] or e[3] for e in entries) or t1 - t0 >= MAX_DEFERRED_S:
            return False
        return not any(
            r.totals.end_s is not None and r.totals.end_s <= t1
            for r in self._requests.values()
            if not r.totals.settled
        )

    def _tick_entries(
        self, t0: float, t1: float
    ) -> tuple[list[tuple[_InFlight, float, float, float, float | None]], float | None]:
        """(request, overlap s, prompt, output, own rate if stalled) for every request in flight
        in [t0, t1], and the earliest arrival inside the tick."""
        entries = []
        first_arrival_s: float | None = None
        for request in self._requests.values():
            totals = request.totals
            if totals.settled or totals.start_s > t1:
                continue  # settled, or started after this tick's sample was read
            end_s = totals.end_s
            if end_s is None or end_s > t1:
                end_s = t1
            from_s = totals.start_s if totals.start_s > t0 else t0
            if totals.start_s > t0 and (
                first_arrival_s is None or totals.start_s < first_arrival_s
            ):
                first_arrival_s = totals.start_s
            overlap_s = end_s - from_s if end_s > from_s else 0.0
            own_rate: float | None = None
            if request.first_visible_s is not None and request.seen_output > 0:
                elapsed_s = t0 - request.first_visible_s
                own_rate = request.seen_output / elapsed_s if elapsed_s > 0 else None
            entries.append(
                (request, overlap_s, request.prompt_tokens, request.output_tokens, own_rate)
            )
        if first_arrival_s is not None and any(e[0].totals.start_s <= t0 for e in entries):
            first_arrival_s = None  # something of ours was already running: not a quiet start
        return entries, first_arrival_s

    def _engine_tick(
        self,
        energy_j: float,
        duration_s: float,
        entries: list[tuple[_InFlight, float, float, float, float | None]],
        engine_w: float,
        t0: float,
        t1: float,
    ) -> EngineSplit:
        weights = {
            e[0].totals.request_id: self.alpha * e[2] + e[3] for e in entries if e[2] or e[3]
        }
        split = attribute_engine_tick(energy_j, duration_s, weights, engine_w)
        self.engine_ticks += 1
        for request, _overlap, prompt, output, _rate in entries:
            if prompt or output:
                self._mark_visible(request, output, t0)
        unclaimed_w = max(engine_w - sum(weights.values()), 0.0)
        waiting = any(not e[0].visible_ever and not e[0].totals.settled for e in entries)
        if waiting and split.other_j > 0.0:
            self._held.append(_Held(t0, t1, unclaimed_w, split.other_j, split.other_s))
        else:
            self.other_energy_j += split.other_j
            self.other_s += split.other_s
        return split

    def _local_tick(
        self,
        energy_j: float,
        duration_s: float,
        entries: list[tuple[_InFlight, float, float, float, float | None]],
        t1: float,
    ) -> TickSplit:
        rows: list[tuple[str, float, float, float, float | None]] = []
        for request, overlap_s, prompt, output, own_rate in entries:
            if output > 0 and request.credit > 0:
                taken = min(request.credit, output)
                request.credit -= taken
                output -= taken
                if output <= 0 and prompt <= 0:
                    rows.append((request.totals.request_id, overlap_s, 0.0, 0.0, 0.0))
                    continue
            rows.append((request.totals.request_id, overlap_s, prompt, output, own_rate))
        weights = local_weights(rows, self.alpha)
        for request, overlap_s, prompt, output, own_rate in entries:
            if prompt or output:
                self._mark_visible(request, output, t1 - duration_s)
            elif own_rate is not None:
                request.credit += own_rate * overlap_s
            request.totals.local_ticks += 1
        return split_by_weights(energy_j, duration_s, weights)

    def _mark_visible(self, request: _InFlight, output: float, t0: float) -> None:
        if request.first_visible_s is None:
            request.first_visible_s = t0
        request.seen_output += output

    def _book(self, split: TickSplit | EngineSplit, t1: float) -> None:
        for request_id, share_j in split.shares_j.items():
            request = self._requests[request_id]
            request.totals.energy_j += share_j
            request.totals.hardware_s += split.hardware_s[request_id]
            request.totals.ticks += 1
        for request in list(self._requests.values()):
            if request.totals.settled:
                continue
            request.prompt_tokens = request.output_tokens = 0.0
            if request.totals.end_s is not None and request.totals.end_s <= t1:
                self._settle(request)

    # -- requests whose tokens show at their end ------------------------------------------

    def _settle(self, request: _InFlight) -> None:
        request.totals.settled = True
        request.prompt_tokens = request.output_tokens = 0.0
        if not request.visible_ever and request.claim_weight > 0.0 and self._held:
            self._claim(request)

    def _claim(self, request: _InFlight) -> None:
        start_s = request.totals.start_s
        end_s = request.totals.end_s if request.totals.end_s is not None else start_s
        window = [h for h in self._held if h.end_s > start_s and h.start_s < end_s]
        fraction = window_claim(request.claim_weight, [h.weight for h in window])
        if fraction <= 0.0:
            return
        for held in window:
            energy_j, hardware_s = held.energy_j * fraction, held.hardware_s * fraction
            request.totals.energy_j += energy_j
            request.totals.hardware_s += hardware_s
            held.energy_j -= energy_j
            held.hardware_s -= hardware_s
            held.weight -= held.weight * fraction
        request.totals.ticks += 1

    def _release_held(self) -> None:
        """Unclaimed work no request that may still claim it overlaps goes to other traffic."""
        if not self._held:
            return
        waiting = [
            r.totals for r in self._requests.values() if not r.visible_ever and not r.totals.settled
        ]
        while self._held:
            held = self._held[0]
            if any(t.start_s < held.end_s for t in waiting):
                break
            self._held.popleft()
            self.other_energy_j += held.energy_j
            self.other_s += held.hardware_s

    def _open_request(self, request_id: str) -> _InFlight | None:
        request = self._requests.get(request_id)
        if request is None or request.totals.end_s is not None:
            return None  # unknown, or events after its end: nothing left to weigh
        return request
