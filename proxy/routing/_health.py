"""Health of one upstream: a circuit breaker fed by passive outcomes (connect errors, time-outs,
5xx) and active checks, its in-flight count against `max_concurrency`, and its observed time
to first token. Pure state with an injected clock; the request path only reads and bumps it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

CircuitState = Literal["closed", "open", "half-open"]

# Weight of a new observation in the time-to-first-token average.
_TTFT_WEIGHT = 0.2


class CircuitBreaker:
    """closed → (failure_threshold failures in a row) → open → (open_s later) → half-open: one
    trial request at a time; its success closes the circuit, its failure opens it again."""

    __slots__ = ("_clock", "_failures", "_open_s", "_opened_at", "_threshold", "_trial", "opens")

    def __init__(
        self,
        failure_threshold: int = 3,
        open_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or open_s <= 0:
            raise ValueError("failure_threshold must be >= 1 and open_s > 0")
        self._threshold = failure_threshold
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False  # a half-open trial is in flight
        self.opens = 0  # how many times the circuit has opened

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self._open_s:
            return "half-open"
        return "open"

    @property
    def failures(self) -> int:
        """Failures in a row since the last success."""
        return self._failures

    def available(self) -> bool:
        """Whether a request may be sent now: closed, or half-open with no trial in flight."""
        state = self.state
        return state == "closed" or (state == "half-open" and not self._trial)

    def attempt(self) -> None:
        """A request is being sent: in half-open it is the trial."""
        if self._opened_at is not None and self.state == "half-open":
            self._trial = True

    def abandoned(self) -> None:
        """The attempt ended with no outcome (the client went away): a half-open circuit may
        try again."""
        self._trial = False

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial = False

    def failed(self) -> None:
        self._failures += 1
        state = self.state
        if state == "half-open" or (state == "closed" and self._failures >= self._threshold):
            self._opened_at = self._clock()
            self.opens += 1
        self._trial = False


class UpstreamHealth:
    """What routing knows about one upstream right now."""

    __slots__ = ("breaker", "in_flight", "max_concurrency", "probe_s", "ttft_s")

    def __init__(self, breaker: CircuitBreaker | None = None, max_concurrency: int = 0) -> None:
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        self.ttft_s: float | None = None  # streams' time to first token, averaged
        self.probe_s: float | None = None  # active checks' round trip, averaged

    @property
    def full(self) -> bool:
        return 0 < self.max_concurrency <= self.in_flight

    @property
    def expected_ttft_s(self) -> float | None:
        """Observed time to first token; the health check's round trip until a stream says."""
        return self.ttft_s if self.ttft_s is not None else self.probe_s

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_s = _average(self.ttft_s, seconds)

    def observe_probe(self, seconds: float) -> None:
        self.probe_s = _average(self.probe_s, seconds)

    def as_json(self) -> dict[str, object]:
        """Health as the admin API and /readyz show it."""
        return {
            "circuit": self.breaker.state,
            "consecutive_failures": self.breaker.failures,
            "in_flight": self.in_flight,
            "max_concurrency": self.max_concurrency,
            "ttft_ms": None if self.ttft_s is None else round(self.ttft_s * 1000.0, 3),
            "probe_ms": None if self.probe_s is None else round(self.probe_s * 1000.0, 3),
        }


def _average(previous: float | None, value: float) -> float:
    if previous is None:
        return value
    return previous + _TTFT_WEIGHT * (value - previous)
