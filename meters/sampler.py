"""Reads an energy source on a fixed tick and feeds the attribution (methodology §1–2).

The source is read on the sampler's own daemon thread (NVML and scrapes block): on its tick,
and early when a request ends, so its last tick closes without waiting for the next one
(`read_early`, awaited on the event loop). Early reads coalesce: the thread takes every request
that asked since its last read, reads the source once for all of them, and wakes each asking
event loop with one `call_soon_threadsafe`. No request pays a thread-pool hop, and a burst of
ends costs one read. Request events come from the event loop and only take a short lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from meters.accounts import AccountBook
from meters.attribution import Attributor, RequestEnergy
from meters.outage_log import OutageLog
from meters.sources.base import EnergySample, EnergySource
from meters.sources.engine import ActivitySample, EngineActivitySource, NoEngineCounters
from meters.types import MeterError

logger = logging.getLogger(__name__)

DEFAULT_TICK_S = 0.1  # the GPU counter moves about every 100 ms; shorter buys nothing (§1)
# After a failed read of the engine's counters, the ticks of this long are split locally
# before it is tried again: a server that does not answer must not slow the energy reads.
ACTIVITY_RETRY_S = 2.0

# Requests waiting for an early read: the event loop each awaits on, and its future.
_Waiters = list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]


class Sampler:
    """Samples `source` every `tick_s` seconds into `attributor`, and keeps its health."""

    def __init__(
        self,
        source: EnergySource,
        attributor: Attributor,
        *,
        tick_s: float = DEFAULT_TICK_S,
        clock: Callable[[], float] = time.monotonic,
        activity: EngineActivitySource | None = None,
        activity_required: bool = False,
        accounts: AccountBook | None = None,
        wall_clock: Callable[[], float] = time.time,
        on_local: Callable[[str], None] | None = None,
    ) -> None:
        if tick_s <= 0.0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        self.source = source
        self.tick_s = tick_s
        self._attributor = attributor
        self._clock = clock
        self._lock = threading.Lock()  # guards the attributor and the health fields
        self._read_lock = threading.Lock()  # one source read (and its feed) at a time
        # Guards the waiting early reads and whether the thread takes more; wakes the thread.
        self._wake = threading.Condition(threading.Lock())
        self._waiters: _Waiters = []
        self._accepting = False  # the thread is running and will serve new waiters
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_sample: EnergySample | None = None
        self._previous_sample: EnergySample | None = None
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.failures_total = 0
        self.reads_total = 0
        self.early_reads_total = 0  # reads the thread took for waiting requests
        self.early_waiters_total = 0  # requests those reads served
        # The engine's own counters, read on the same tick as the energy (methodology §2b).
        self.activity = activity
        self._activity_required = activity_required  # `engine`: say so loudly when absent
        self.activity_healthy = False
        self.activity_error: str | None = None
        self.activity_failures_total = 0
        self.accounts = accounts if accounts is not None else AccountBook()
        self._wall_clock = wall_clock
        self._booked = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        self._activity_seen = False  # the engine's counters answered at least once
        self._activity_retry_at_s = float("-inf")
        self._on_local = on_local  # told once when the upstream settles on the local rule
        if activity is None and on_local is not None:
            on_local("no engine activity source")
        # A source failing on every tick is logged once a minute, not ten times a second.
        self._outage_log = OutageLog(logger, f"energy source {source.name}", clock=clock)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sampling thread (idempotent). The first read happens on that thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        with self._wake:
            self._stopping = False
            self._accepting = True
        self._thread = threading.Thread(
            target=self._run, name=f"footprint-sampler-{self.source.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (blocking: call it off the event loop).

        Early reads still waiting are served by one last read before the thread ends.
        """
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # -- reading --------------------------------------------------------------------------

    def sample_now(self, *, not_before_s: float | None = None) -> None:
        """Read the source now and close the tick (blocking; off the event loop).

        With `not_before_s`, skip the read when a sample at or after that time was already
        consumed. Raises `MeterError` when the source fails.
        """
        with self._read_lock:
            if not_before_s is not None:
                with self._lock:
                    last_s = self._attributor.last_sample_s
                if last_s is not None and last_s >= not_before_s:
                    return
            try:
                sample = self.source.read()
            except MeterError as exc:
                self._record_failure(str(exc))
                raise
            activity = self._read_activity()
            with self._lock:
                self._attributor.sample(
                    sample.time_s, sample.total_energy_j, activity, moved=sample.moved
                )
                self._previous_sample, self._last_sample = self._last_sample, sample
                self.consecutive_failures = 0
                self.reads_total += 1
                self._book_accounts()

    def _read_activity(self) -> ActivitySample | None:
        """The engine's counters now, or None (then this tick is split by the local rule).

        A lost endpoint never fails a request: the upstream's figures say `local` until it
        answers again, and the change is logged once each way.
        """
        source = self.activity
        if source is None:
            return None
        now_s = self._clock()
        if now_s < self._activity_retry_at_s:
            return None  # it failed a moment ago: do not hold the energy reads up retrying
        try:
            activity = source.read()
        except MeterError as exc:
            self._activity_retry_at_s = now_s + ACTIVITY_RETRY_S
            if not self._activity_seen and not self._activity_required:
                if isinstance(exc, NoEngineCounters) or "HTTP 404" in str(exc):
                    # `auto`, and the server publishes no counters: the local rule, for good.
                    logger.info("%s; attribution is local for this upstream", exc)
                    self.activity = None
                    if self._on_local is not None:
                        self._on_local(str(exc))
                    return None
                logger.debug("engine metrics not answering yet: %s", exc)
                self.activity_error = str(exc)
                return None
            self._activity_lost(str(exc))
            return None
        self._activity_seen = True
        if not self.activity_healthy:
            if self.activity_error is not None:
                logger.warning("engine metrics %s answer again: attribution engine", source.url)
            self.activity_healthy, self.activity_error = True, None
        return activity

    def _activity_lost(self, message: str) -> None:
        self.activity_failures_total += 1
        if self.activity_healthy or self.activity_error is None:
            logger.warning("%s: attribution falls back to local until it answers", message)
        self.activity_healthy, self.activity_error = False, message
        return None

    def _book_accounts(self) -> None:
        """Book what the last tick added to idle, other and measured into its time bucket."""
        a = self._attributor
        now = (
            a.measured_energy_j,
            a.measured_s,
            a.idle_energy_j,
            a.idle_s,
            a.other_energy_j,
            a.other_s,
        )
        deltas = [x - y for x, y in zip(now, self._booked, strict=True)]
        if any(deltas):
            self.accounts.book(self._wall_clock(), *deltas)
        self._booked = now

    async def read_early(self) -> None:
        """Have the source read and the tick closed now, without waiting for the next tick.

        Call it after `request_ended`: the read happens after this call, so it covers the end.
        The sampler thread reads once for every request that asked since its last read; the
        event loop never blocks. Raises `MeterError` when that read failed, whatever the cause.
        When the thread is not running, the read runs in a worker thread instead.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._wake:
            accepted = self._accepting
            if accepted:
                self._waiters.append((loop, future))
                self._wake.notify()
        if not accepted:
            await asyncio.to_thread(self._read_for_waiters)
            return
        await future

    def _run(self) -> None:
        next_s = self._clock()
        try:
            while True:
                with self._wake:
                    while not self._stopping and not self._waiters:
                        delay_s = next_s - self._clock()
                        if delay_s <= 0.0:
                            break
                        self._wake.wait(delay_s)
                    stopping = self._stopping
                    if stopping:
                        self._accepting = False  # what is waiting now is the last batch
                    waiters, self._waiters = self._waiters, []
                if stopping and not waiters:
                    return
                tick_due = self._clock() >= next_s
                error = self._read_logged()
                if waiters:
                    self.early_reads_total += 1
                    self.early_waiters_total += len(waiters)
                    _answer(waiters, error)
                if stopping:
                    return
                if tick_due:
                    next_s += self.tick_s
                    if next_s < self._clock():
                        next_s = self._clock()  # fell behind: skip the missed ticks
        finally:
            with self._wake:
                self._accepting = False
                waiters, self._waiters = self._waiters, []
            _answer(waiters, "the sampler stopped before reading")

    def _read_for_waiters(self) -> None:
        error = self._read_logged()
        if error is not None:
            raise MeterError(error)

    def _read_logged(self) -> str | None:
        """One read; what failed, or None. Never raises: the thread must go on."""
        try:
            self.sample_now()
        except MeterError as exc:
            self._outage_log.failed(str(exc))
            return str(exc)
        except Exception as exc:
            # A bug in a source must not kill metering silently: log it, count it, go on.
            message = f"{type(exc).__name__}: {exc}"
            self._outage_log.failed(message, exc_info=True)
            self._record_failure(message)
            return message
        self._outage_log.succeeded()
        return None

    def _record_failure(self, message: str) -> None:
        with self._lock:
            self.last_error = message
            self.consecutive_failures += 1
            self.failures_total += 1

    # -- health and readings --------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """The last read succeeded (False before any read)."""
        with self._lock:
            return self._last_sample is not None and self.consecutive_failures == 0

    @property
    def last_sample(self) -> EnergySample | None:
        """The newest successful reading."""
        with self._lock:
            return self._last_sample

    @property
    def previous_sample(self) -> EnergySample | None:
        """The reading before the newest one (for power where the source gives none)."""
        with self._lock:
            return self._previous_sample

    @property
    def idle_energy_j(self) -> float:
        """Energy measured while no request was in flight."""
        with self._lock:
            return self._attributor.idle_energy_j

    @property
    def other_energy_j(self) -> float:
        """Engine work no request of this replica accounts for (engine attribution only)."""
        with self._lock:
            return self._attributor.other_energy_j

    @property
    def engine_attribution(self) -> bool:
        """Whether the last tick was split by the engine's counters."""
        return self.activity is not None and self.activity_healthy

    @property
    def measured_energy_j(self) -> float:
        """Σ energy over every tick closed so far (since the first reading)."""
        with self._lock:
            return self._attributor.measured_energy_j

    # -- request events (cheap; called from the event loop) ------------------------------

    def request_started(self, request_id: str, time_s: float) -> None:
        """Register a request in flight from `time_s`."""
        with self._lock:
            self._attributor.start(request_id, time_s)

    def first_token(self, request_id: str, prompt_tokens: int) -> None:
        """The request's first output token arrived."""
        now_s = self._clock()  # the relay's lag behind the engine is judged by it
        with self._lock:
            self._attributor.first_token(request_id, prompt_tokens, now_s)

    def output_tokens(self, request_id: str, count: int) -> None:
        """More output tokens of the request arrived."""
        now_s = self._clock()
        with self._lock:
            self._attributor.output_tokens(request_id, count, now_s)

    def request_ended(
        self, request_id: str, time_s: float, *, prompt_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """The request ended at `time_s` with these totals."""
        with self._lock:
            self._attributor.end(
                request_id, time_s, prompt_tokens=prompt_tokens, output_tokens=output_tokens
            )

    @property
    def deferred(self) -> bool:
        """Whether the last read closed no tick (a counter slower than the tick, a prefill)."""
        with self._lock:
            return self._attributor.deferred

    def settled(self, request_id: str) -> bool:
        """Whether a closed tick covers the request's end."""
        with self._lock:
            totals = self._attributor.totals(request_id)
            return totals is not None and totals.settled

    def pop(self, request_id: str) -> RequestEnergy | None:
        """Remove the request and return its totals (check `settled`)."""
        with self._lock:
            return self._attributor.pop(request_id)


def _answer(waiters: _Waiters, error: str | None) -> None:
    """Wake every waiting request with the read's outcome: one callback per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for loop, future in waiters:
        by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_futures, futures, error)
        except RuntimeError:
            # That loop is closed: nobody is left to wake, and the read itself counted.
            logger.debug("an early read's event loop closed before it was answered")


def _settle_futures(futures: list[asyncio.Future[None]], error: str | None) -> None:
    for future in futures:
        if future.done():
            continue  # the request was cancelled while it waited
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(MeterError(error))
