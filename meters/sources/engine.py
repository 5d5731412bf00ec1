"""The model server's own activity counters: what its engine did, from its Prometheus page.

vLLM publishes engine-wide token counters on `/metrics` (verified in vLLM's source,
`vllm/v1/metrics/loggers.py`, `PrometheusStatLogger`): `vllm:prompt_tokens` and
`vllm:generation_tokens` are prometheus_client Counters, so the page shows them as
`vllm:prompt_tokens_total` / `vllm:generation_tokens_total`, labelled `model_name` (and, since
data-parallel support, `engine`); `vllm:num_requests_running` is a Gauge with the same labels.
`record()` increments the counters once per engine step with that step's `IterationStats`
(a request's prompt tokens count in the step that produced its first token), and sets the gauge
from the step's `SchedulerStats`. So the counters move every step, on the same clock as the
tokens the proxy relays.

A real page is tens of KB (a histogram per model and engine); only the three names above are
read, by searching the text for their line starts rather than parsing every family
(`bench/meter_cost.py` measures it). Label sets are summed: several models or data-parallel
engines on one GPU set are one engine here. A counter that goes backwards (server restart)
starts again from its new value.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from meters.types import MeterError

if TYPE_CHECKING:
    import httpx

PROMPT_TOKENS = "vllm:prompt_tokens_total"
GENERATION_TOKENS = "vllm:generation_tokens_total"
REQUESTS_RUNNING = "vllm:num_requests_running"

DEFAULT_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """One page's values: cumulative tokens (summed over label sets) and requests running."""

    prompt_tokens: float
    generation_tokens: float
    running: float


@dataclass(frozen=True, slots=True)
class ActivitySample:
    """Cumulative engine work at `time_s` (the meter's monotonic clock), resets absorbed."""

    time_s: float
    prompt_tokens: float
    generation_tokens: float
    running: float

    def weight(self, alpha: float) -> float:
        """α · prompt tokens + generation tokens: the engine's cumulative attribution weight."""
        return alpha * self.prompt_tokens + self.generation_tokens


def _sum_metric(text: str, name: str) -> float | None:
    """Σ of the samples of `name` on a Prometheus text page; None when it has none.

    Finds `name` at line starts with `str.find` and reads only those lines: a 100 KB page
    costs a few searches, not a parse of every family.
    """
    total = 0.0
    found = False
    start = 0 if text.startswith(name) else text.find("\n" + name)
    while start != -1:
        line_start = start if start == 0 and text.startswith(name) else start + 1
        after = line_start + len(name)
        line_end = text.find("\n", after)
        if line_end == -1:
            line_end = len(text)
        following = text[after] if after < len(text) else ""
        if following in ("{", " "):
            line = text[after:line_end]
            rest = line[line.rindex("}") + 1 :] if following == "{" else line
            fields = rest.split()
            if not fields:
                raise MeterError(f"engine metrics: {name} line has no value")
            try:
                value = float(fields[0])
            except ValueError as exc:
                raise MeterError(f"engine metrics: {name} value {fields[0]!r}") from exc
            if value != value:  # NaN: not a reading
                raise MeterError(f"engine metrics: {name} is NaN")
            total += value
            found = True
        start = text.find("\n" + name, line_end)
    return total if found else None


def parse_engine_page(text: str) -> EngineCounters | None:
    """The engine's three values from a page; None when it publishes no token counters."""
    generation = _sum_metric(text, GENERATION_TOKENS)
    if generation is None:
        return None
    prompt = _sum_metric(text, PROMPT_TOKENS) or 0.0
    running = _sum_metric(text, REQUESTS_RUNNING) or 0.0
    return EngineCounters(prompt, generation, running)


class NoEngineCounters(MeterError):
    """The page answered but carries no engine token counters (not vLLM, or too old)."""


class EngineActivitySource:
    """Reads an engine's counters from its Prometheus endpoint (blocking; sampler thread)."""

    def __init__(
        self,
        url: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import httpx  # here, not at the top: 6 MB a one-machine serve never needs

        self.url = url
        self._client = httpx.Client(transport=transport, timeout=timeout_s)
        self._clock = clock
        self._raw: EngineCounters | None = None
        self._prompt = 0.0
        self._generation = 0.0
        self.resets = 0

    def read(self) -> ActivitySample:
        """Scrape once. Raises `NoEngineCounters` when the page has none, `MeterError` on any
        other failure."""
        import httpx

        try:
            response = self._client.get(self.url, headers={"accept": "text/plain"})
        except httpx.HTTPError as exc:
            raise MeterError(
                f"engine metrics: {self.url} unreachable ({type(exc).__name__})"
            ) from exc
        if response.status_code != 200:
            raise MeterError(f"engine metrics: {self.url} answered HTTP {response.status_code}")
        counters = parse_engine_page(response.text)
        now_s = self._clock()
        if counters is None:
            raise NoEngineCounters(f"engine metrics: {self.url} has no {GENERATION_TOKENS}")
        self._absorb(counters)
        return ActivitySample(now_s, self._prompt, self._generation, counters.running)

    def _absorb(self, counters: EngineCounters) -> None:
        raw = self._raw
        if raw is None:
            self._prompt, self._generation = counters.prompt_tokens, counters.generation_tokens
        else:
            restarted = (
                counters.prompt_tokens < raw.prompt_tokens
                or counters.generation_tokens < raw.generation_tokens
            )
            if restarted:
                self.resets += 1
                self._prompt += counters.prompt_tokens
                self._generation += counters.generation_tokens
            else:
                self._prompt += counters.prompt_tokens - raw.prompt_tokens
                self._generation += counters.generation_tokens - raw.generation_tokens
        self._raw = counters

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()
