"""Reads an energy source on a fixed tick and feeds the attribution (methodology §1–2).

The source is read on the sampler's own daemon thread (NVML and scrapes block), and on demand
through `sample_now` to close a request's last tick early; async code calls that through
`asyncio.to_thread`. Request events come from the event loop and only take a short lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from meters.attribution import Attributor, RequestEnergy
from meters.sources.base import EnergySample, EnergySource
from meters.types import MeterError

logger = logging.getLogger(__name__)

DEFAULT_TICK_S = 0.1  # the GPU counter moves about every 100 ms; shorter buys nothing (§1)


class Sampler:
    """Samples `source` every `tick_s` seconds into `attributor`, and keeps its health."""

    def __init__(
        self,
        source: EnergySource,
        attributor: Attributor,
        *,
        tick_s: float = DEFAULT_TICK_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tick_s <= 0.0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        self.source = source
        self.tick_s = tick_s
        self._attributor = attributor
        self._clock = clock
        self._lock = threading.Lock()  # guards the attributor and the health fields
        self._read_lock = threading.Lock()  # one source read (and its feed) at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sample: EnergySample | None = None
        self._previous_sample: EnergySample | None = None
        self.last_error: str | None = None
        self.consecutive_failures = 0
        self.failures_total = 0
        self.reads_total = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sampling thread (idempotent). The first read happens on that thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"footprint-sampler-{self.source.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (blocking: call it off the event loop)."""
        self._stop.set()
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
            with self._lock:
                self._attributor.sample(sample.time_s, sample.total_energy_j)
                self._previous_sample, self._last_sample = self._last_sample, sample
                self.consecutive_failures = 0
                self.reads_total += 1

    def _run(self) -> None:
        next_s = self._clock()
        while not self._stop.is_set():
            try:
                self.sample_now()
            except MeterError as exc:
                logger.warning("energy source %s failed: %s", self.source.name, exc)
            except Exception as exc:
                # A bug in a source must not kill metering silently: log it, count it, go on.
                logger.exception("energy source %s raised unexpectedly", self.source.name)
                self._record_failure(f"{type(exc).__name__}: {exc}")
            next_s += self.tick_s
            delay_s = next_s - self._clock()
            if delay_s < 0.0:
                next_s = self._clock()  # fell behind: skip the missed ticks
                delay_s = 0.0
            self._stop.wait(delay_s)

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
        with self._lock:
            self._attributor.first_token(request_id, prompt_tokens)

    def output_tokens(self, request_id: str, count: int) -> None:
        """More output tokens of the request arrived."""
        with self._lock:
            self._attributor.output_tokens(request_id, count)

    def request_ended(self, request_id: str, time_s: float) -> None:
        """The request ended at `time_s`."""
        with self._lock:
            self._attributor.end(request_id, time_s)

    def pop(self, request_id: str) -> RequestEnergy | None:
        """Remove the request and return its totals (check `settled`)."""
        with self._lock:
            return self._attributor.pop(request_id)
