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
from meters.unclaimed import Held, Taken, lagged_arrivals, take_back

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
# A tick's unclaimed engine work waits this many ticks before it is other traffic: a token the
# engine counted at a tick's end reaches the proxy a few milliseconds later, in the next tick.
GRACE_TICKS = 3
# Tokens seen this soon after a tick closed may be ones the engine counted in it: at least
# LAG_WINDOW_S, and up to half a tick on longer ticks (a loaded host's relay lags by tens of
# milliseconds, which a fixed 50 ms misses on a 0.25 s tick and then books as other traffic).
LAG_WINDOW_S = 0.05
LAG_WINDOW_TICKS = 0.5


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
        self._last_tick_s = 0.0  # the length of the last tick closed
        self._last_energy_j: float | None = None
        self._engine_weight: float | None = None  # cumulative engine weight at the last tick
        self._quiet = True  # nothing ran at the last tick's end (the engine or ours)
        self._idle_power_w: float | None = None
        self._held: deque[Held] = deque()
        self._grace: deque[Held] = deque()  # the last ticks' unclaimed work (relay lag)
        # (request id, weight) of the events that came just after the last tick closed
        self._arrivals: list[tuple[str, float]] = []
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
        return sum(h.energy_j for h in self._held) + sum(h.energy_j for h in self._grace)

    @property
    def in_flight(self) -> int:
        """Requests started and not yet settled."""
        return sum(1 for r in self._requests.values() if not r.totals.settled)

    def start(self, request_id: str, time_s: float) -> None:
        """A request was sent to the upstream at `time_s`."""
        if request_id in self._requests:
            raise ValueError(f"request {request_id!r} already started")
        self._requests[request_id] = _InFlight(RequestEnergy(request_id, start_s=time_s))

    def first_token(self, request_id: str, prompt_tokens: int, time_s: float | None = None) -> None:
        """The first output token arrived (at `time_s`): `prompt_tokens` were prefilled."""
        request = self._open_request(request_id)
        if request is not None and prompt_tokens > 0:
            request.prompt_tokens += prompt_tokens
            if self._early(time_s):
                self._arrivals.append((request_id, self.alpha * prompt_tokens))

    def output_tokens(self, request_id: str, count: int, time_s: float | None = None) -> None:
        """`count` more output tokens arrived (at `time_s`)."""
        request = self._open_request(request_id)
        if request is not None and count > 0:
            request.output_tokens += count
            if self._early(time_s):
                self._arrivals.append((request_id, float(count)))

    def _early(self, time_s: float | None) -> bool:
        """Whether an event came so soon after the last tick closed that the engine may have
        counted it in that tick (the relay's lag)."""
        last_s = self._last_time_s
        window_s = max(LAG_WINDOW_S, LAG_WINDOW_TICKS * self._last_tick_s)
        return time_s is not None and last_s is not None and time_s - last_s < window_s

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
        tail_s = self._quiet_tail_s(entries, activity, t1)
        if tail_s > 0.0:
            # Everything ended before the read and nothing runs now: the tail is idle too.
            tail_s = min(tail_s, (t1 - t0) - quiet_s)
            tail_j = arrival_split(
                delta_j - idle_j, (t1 - t0) - quiet_s, tail_s, self._idle_power_w
            )
            idle_j += tail_j
            quiet_s += tail_s
        rest_j, rest_s = delta_j - idle_j, (t1 - t0) - quiet_s
        split: TickSplit | EngineSplit
        if engine_w is not None:
            split = self._engine_tick(rest_j, rest_s, entries, engine_w, t0, t1)
        else:
            self._flush_grace()
            split = self._local_tick(rest_j, rest_s, entries, t1)
        self._book(split, t1)
        self._arrivals.clear()
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
        self._last_tick_s = time_s - self._last_time_s
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
        if not ours_running:
            self._flush_grace()  # nobody of ours in flight: no late token can claim it
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
        if not any(not r.totals.settled for r in self._requests.values()):
            self._flush_grace()  # nobody left whose late tokens could claim it
        self._release_held()
        return None if request is None else request.totals

    # -- one tick -------------------------------------------------------------------------

    def _baseline(self, time_s: float, energy_j: float, activity: ActivitySample | None) -> None:
        self._last_time_s, self._last_energy_j = time_s, energy_j
        self._engine_weight = None if activity is None else activity.weight(self.alpha)
        for request in self._requests.values():
            # Work reported before the baseline has no measured energy to share.
            request.prompt_tokens = request.output_tokens = 0.0

    @staticmethod
    def _quiet_tail_s(
        entries: list[tuple[_InFlight, float, float, float, float | None]],
        activity: ActivitySample | None,
        t1: float,
    ) -> float:
        """Time from the last end of ours in the tick to its read, when nothing runs after."""
        if not entries or (activity is not None and activity.running > 0):
            return 0.0
        last_end_s = 0.0
        for entry in entries:
            end_s = entry[0].totals.end_s
            if end_s is None or end_s > t1:
                return 0.0
            last_end_s = max(last_end_s, end_s)
        return t1 - last_end_s

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
        # Tokens seen just after the last tick closed were, as far as the engine's counter
        # goes, made in it: they take back that tick's unclaimed work first.
        early = self._lagged_arrivals(weights)
        lagged = self._claim_grace(early, newest_only=True) if early else {}
        for rid, (_energy_j, _seconds, weight) in lagged.items():
            weights[rid] = max(weights[rid] - weight, 0.0)
        split = attribute_engine_tick(energy_j, duration_s, weights, engine_w)
        local_w = sum(weights.values())
        if local_w > engine_w and self._grace:
            # More seen than the engine counted, even so: a longer lag; take back older work.
            excess_w = local_w - engine_w
            more = self._claim_grace({rid: w * excess_w / local_w for rid, w in weights.items()})
            for rid, claim in more.items():
                old = lagged.get(rid, (0.0, 0.0, 0.0))
                lagged[rid] = (old[0] + claim[0], old[1] + claim[1], old[2] + claim[2])
        for rid, (claimed_j, claimed_s, _weight) in lagged.items():
            split.shares_j[rid] += claimed_j
            split.hardware_s[rid] += claimed_s
        self.engine_ticks += 1
        for request, _overlap, prompt, output, _rate in entries:
            if prompt or output:
                self._mark_visible(request, output, t0)
        waiting = any(not e[0].visible_ever and not e[0].totals.settled for e in entries)
        unclaimed_w = max(engine_w - local_w, 0.0)
        self._grace.append(Held(t0, t1, unclaimed_w, split.other_j, split.other_s, waiting))
        while len(self._grace) > GRACE_TICKS:
            self._unclaimed(self._grace.popleft())
        return split

    def _lagged_arrivals(self, weights: dict[str, float]) -> dict[str, float]:
        """Lagged tokens of this tick that take back the last tick's unclaimed work."""
        newest = self._grace[-1] if self._grace else None
        if newest is None or self._waiting_on(newest, weights):
            return {}
        return lagged_arrivals(self._arrivals, newest.weight, weights)

    def _waiting_on(self, held: Held, weights: dict[str, float]) -> bool:
        """Whether a request whose tokens may show only at its end was in flight then."""
        return any(
            not r.visible_ever
            and not r.totals.settled
            and r.totals.start_s < held.end_s
            and r.totals.request_id not in weights  # its first tokens are here: not waiting
            for r in self._requests.values()
        )

    def _claim_grace(self, wanted: dict[str, float], *, newest_only: bool = False) -> Taken:
        """Take back up to Σ `wanted` weight of the last ticks' unclaimed work, newest first,
        never what a request whose tokens show at its end waits on."""
        return take_back(
            self._grace,
            wanted,
            skip=lambda held: self._waiting_on(held, wanted),
            newest_only=newest_only,
        )

    def _unclaimed(self, held: Held) -> None:
        """Unclaimed work past its grace: kept for a request that may claim it at its end,
        else other traffic."""
        if held.waiting and held.energy_j > 0.0:
            self._held.append(held)
        else:
            self.other_energy_j += held.energy_j
            self.other_s += held.hardware_s

    def _flush_grace(self) -> None:
        while self._grace:
            self._unclaimed(self._grace.popleft())

    def _local_tick(
        self,
        energy_j: float,
        duration_s: float,
        entries: list[tuple[_InFlight, float, float, float, float | None]],
        t1: float,
    ) -> TickSplit:
        rows: list[tuple[str, float, float, float, float | None]] = []
        for request, overlap_s, prompt, output, own_rate in entries:
            weight = self.alpha * prompt + output
            if weight > 0 and request.credit > 0:
                # Weight it was given ahead while it showed nothing is taken off its tokens.
                taken = min(request.credit, weight)
                request.credit -= taken
                rows.append((request.totals.request_id, overlap_s, 0.0, weight - taken, 0.0))
                continue
            rows.append((request.totals.request_id, overlap_s, prompt, output, own_rate))
        weights = local_weights(rows, self.alpha)
        for request, _overlap_s, prompt, output, _own_rate in entries:
            if prompt or output:
                self._mark_visible(request, output, t1 - duration_s)
            else:
                request.credit += weights.get(request.totals.request_id, 0.0)
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
        if not request.visible_ever and request.claim_weight > 0.0 and (self._held or self._grace):
            self._claim(request)

    def _claim(self, request: _InFlight) -> None:
        start_s = request.totals.start_s
        end_s = request.totals.end_s if request.totals.end_s is not None else start_s
        window = [h for h in (*self._held, *self._grace) if h.end_s > start_s and h.start_s < end_s]
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
