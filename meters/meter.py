"""Per-upstream request meters: measured (a sampled energy source) or estimated.

`build_meter` picks one from the upstream's `meter.kind`. A measured meter never fails a
request: when its source fails at any point while a request is in flight, that request's figure
comes from the estimator (`fallback`) and says `estimated`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from meters.accounts import AccountBook, Bucket
from meters.attribution import DEFAULT_ALPHA, Attributor
from meters.constants import DEFAULT_SERVER_POWER_W_PER_GPU
from meters.sampler import DEFAULT_TICK_S, Sampler
from meters.sources.base import EnergySource, GpuReading
from meters.sources.engine import EngineActivitySource
from meters.types import Hardware, Measurement, MeterError, RequestMeter, RequestTrack

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

# model, prompt tokens, output tokens, latency (s) -> an estimated Measurement
Fallback = Callable[[str, int, int, float], Measurement]
# model, prompt tokens, output tokens, measured GPU energy (J): lets the estimator calibrate
Observe = Callable[[str, int, int, float], None]

# A counter slower than the tick (DCGM's exporter steps about once a second) settles a request
# only when it next steps; close() waits for that, up to this long, then estimates.
SETTLE_TIMEOUT_S = 3.0
# The engine's /metrics is read on the sampler thread beside the energy: keep a read short.
ACTIVITY_TIMEOUT_S = 0.5


class TelemetryMeter(RequestMeter, Protocol):
    """A request meter that also reports what telemetry shows per upstream."""

    @property
    def idle_energy_j(self) -> float: ...

    @property
    def healthy(self) -> bool: ...

    def gpu_readings(self) -> list[GpuReading]: ...


class EstimatedMeter:
    """Nothing measured: every request's figure comes from the estimator."""

    def __init__(self, fallback: Fallback, *, hardware: Hardware | None = None) -> None:
        self._fallback = fallback
        self.hardware = hardware

    def open(self, request_id: str, model: str) -> RequestTrack:
        """Open a track whose close() asks the estimator."""
        return _EstimatedTrack(model, self._fallback)

    def start(self) -> None:
        """Nothing to sample."""

    async def aclose(self) -> None:
        """Nothing to release."""

    @property
    def idle_energy_j(self) -> float:
        """No GPU is read, so no idle energy is known."""
        return 0.0

    @property
    def healthy(self) -> bool:
        """An estimate is always available."""
        return True

    def gpu_readings(self) -> list[GpuReading]:
        """No GPU is read."""
        return []


class _EstimatedTrack:
    def __init__(self, model: str, fallback: Fallback) -> None:
        self._model = model
        self._fallback = fallback

    def first_token(self, prompt_tokens: int) -> None:
        """Nothing to do: the estimate needs only the totals given to close()."""

    def output_tokens(self, count: int) -> None:
        """Nothing to do: the estimate needs only the totals given to close()."""

    async def close(
        self, *, prompt_tokens: int, output_tokens: int, cancelled: bool, latency_s: float
    ) -> Measurement:
        """Estimate from the request's totals."""
        return self._fallback(self._model, prompt_tokens, output_tokens, latency_s)


class MeasuredMeter:
    """Attributes a sampled energy source's joules to the requests of one upstream."""

    def __init__(
        self,
        source: EnergySource,
        *,
        fallback: Fallback,
        observe: Observe | None = None,
        hardware: Hardware | None = None,
        gpu_count: int = 1,
        tick_s: float = DEFAULT_TICK_S,
        alpha: float = DEFAULT_ALPHA,
        server_power_w_per_gpu: float = DEFAULT_SERVER_POWER_W_PER_GPU,
        clock: Callable[[], float] = time.monotonic,
        activity: EngineActivitySource | None = None,
        activity_required: bool = False,
        meter_key: str = "",
        on_local: Callable[[str], None] | None = None,
        settle_timeout_s: float = SETTLE_TIMEOUT_S,
    ) -> None:
        self.source = source
        self.hardware = hardware
        self._fallback = fallback
        self._observe = observe
        self._clock = clock
        self._server_power_w = server_power_w_per_gpu * gpu_count
        self.server_power_w = self._server_power_w
        self.meter_key = meter_key or source.name
        self._settle_timeout_s = settle_timeout_s
        self._sampler = Sampler(
            source,
            Attributor(alpha),
            tick_s=tick_s,
            clock=clock,
            activity=activity,
            activity_required=activity_required,
            accounts=AccountBook(),
            on_local=on_local,
        )

    def open(self, request_id: str, model: str) -> RequestTrack:
        """Register a request in flight from now; returns its track."""
        return _MeasuredTrack(self, request_id, model)

    def start(self) -> None:
        """Start the sampling thread (idempotent)."""
        self._sampler.start()

    async def aclose(self) -> None:
        """Stop sampling and release the source (both off the event loop)."""
        await asyncio.to_thread(self._sampler.stop)
        await asyncio.to_thread(self.source.close)

    @property
    def healthy(self) -> bool:
        """The source's last read succeeded."""
        return self._sampler.healthy

    @property
    def last_error(self) -> str | None:
        """The source's last failure, for logs and `/readyz`."""
        return self._sampler.last_error

    @property
    def idle_energy_j(self) -> float:
        """Cumulative GPU energy measured with no request in flight (J)."""
        return self._sampler.idle_energy_j

    @property
    def measured_energy_j(self) -> float:
        """Cumulative GPU energy over every closed tick (J): Σ requests + other + idle."""
        return self._sampler.measured_energy_j

    @property
    def other_energy_j(self) -> float:
        """Cumulative engine work no request of this replica accounts for (J)."""
        return self._sampler.other_energy_j

    @property
    def attribution(self) -> str:
        """`engine` while the model server's counters answer, else `local`."""
        return "engine" if self._sampler.engine_attribution else "local"

    def take_accounts(self, now_wall_s: float | None = None) -> list[Bucket]:
        """Closed wall-clock buckets of measured, idle and other energy (all with None)."""
        return self._sampler.accounts.take(now_wall_s)

    def give_back_accounts(self, buckets: list[Bucket]) -> None:
        """Return buckets the ledger could not take; they go out with the next ones."""
        self._sampler.accounts.give_back(buckets)

    def gpu_readings(self) -> list[GpuReading]:
        """Each GPU's last known cumulative energy and power draw."""
        sample = self._sampler.last_sample
        if sample is None:
            return []
        previous = self._sampler.previous_sample
        readings = []
        for gpu_id, energy_j in sample.energy_j.items():
            power_w = sample.power_w.get(gpu_id)
            if power_w is None and previous is not None and sample.time_s > previous.time_s:
                power_w = (energy_j - previous.energy_j.get(gpu_id, energy_j)) / (
                    sample.time_s - previous.time_s
                )
            readings.append(GpuReading(gpu_id, energy_j, power_w or 0.0))
        return readings


class _MeasuredTrack:
    def __init__(self, meter: MeasuredMeter, request_id: str, model: str) -> None:
        self._meter = meter
        self._sampler = meter._sampler
        self._request_id = request_id
        self._model = model
        self._failures_at_open = self._sampler.failures_total
        self._start_s = meter._clock()
        self._last_token_s: float | None = None
        self._sampler.request_started(request_id, self._start_s)

    def first_token(self, prompt_tokens: int) -> None:
        """The prompt was prefilled; its tokens weigh α each in the current tick."""
        self._sampler.first_token(self._request_id, prompt_tokens)

    def output_tokens(self, count: int) -> None:
        """More output tokens: they weigh 1 each in the current tick."""
        self._last_token_s = self._meter._clock()
        self._sampler.output_tokens(self._request_id, count)

    async def close(
        self, *, prompt_tokens: int, output_tokens: int, cancelled: bool, latency_s: float
    ) -> Measurement:
        """Close the request's last tick now and return its share; the estimate if the
        source failed while it was in flight. Never raises for a source failure."""
        # A stream's work on the GPU ended with its last token; what the relay does after it
        # (the closing events, counting the prompt, the ledger) is none of the GPU's, and on
        # a busy host it can take tens of milliseconds of idle power a lone request would
        # otherwise carry. Without token events (a whole answer) the end is now.
        now_s = self._meter._clock()
        end_s = now_s if self._last_token_s is None else min(self._last_token_s, now_s)
        self._sampler.request_ended(
            self._request_id, end_s, prompt_tokens=prompt_tokens, output_tokens=output_tokens
        )
        failed: str | None = None
        try:
            await self._sampler.read_early()
            await self._wait_for_step()
        except MeterError as exc:
            failed = str(exc)
        finally:
            totals = self._sampler.pop(self._request_id)
        if failed is None and self._sampler.failures_total != self._failures_at_open:
            failed = self._sampler.last_error or "energy source failed during the request"
        if failed is None and (totals is None or not totals.settled):
            failed = "no reading covered the request"
        if failed is not None or totals is None:
            logger.warning("request %s: %s; falling back to an estimate", self._request_id, failed)
            return self._meter._fallback(self._model, prompt_tokens, output_tokens, latency_s)
        measurement = Measurement(
            gpu_energy_j=totals.energy_j,
            server_energy_j=self._meter._server_power_w * totals.hardware_s,
            hardware_s=totals.hardware_s,
            method="measured",
            basis=self._meter.source.name,
            duration_s=totals.duration_s,
            attribution="local"
            if totals.local_ticks or self._sampler.activity is None
            else "engine",
        )
        if self._meter._observe is not None and not cancelled:
            try:
                self._meter._observe(self._model, prompt_tokens, output_tokens, totals.energy_j)
            except Exception:
                # Calibration is a side line: a bug there must not lose the measured figure.
                logger.exception("request %s: calibration observer failed", self._request_id)
        return measurement

    async def _wait_for_step(self) -> None:
        """While the counter has not stepped since the request ended, read again each tick."""
        sampler = self._sampler
        tries = int(self._meter._settle_timeout_s / sampler.tick_s)
        while tries > 0 and sampler.deferred and not sampler.settled(self._request_id):
            tries -= 1
            await asyncio.sleep(sampler.tick_s)
            await sampler.read_early()


def build_meter(
    kind: str,
    *,
    hardware: Hardware,
    gpus: Sequence[int] = (0,),
    url: str = "",
    tick_s: float = DEFAULT_TICK_S,
    alpha: float = DEFAULT_ALPHA,
    server_power_w_per_gpu: float = DEFAULT_SERVER_POWER_W_PER_GPU,
    fallback: Fallback,
    observe: Observe | None = None,
    nvml: ModuleType | None = None,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.monotonic,
    activity: str = "auto",
    activity_url: str = "",
    on_local: Callable[[str], None] | None = None,
) -> TelemetryMeter:
    """The meter for an upstream's `meter.kind`: "nvml", "prometheus" or "estimate".

    `activity` ("engine", "local" or "auto") and `activity_url` choose the denominator of the
    split (methodology §2b): the model server's own token counters at `activity_url`, or the
    requests this replica saw. `on_local` is told once when a measured meter settles on the
    local rule. Nothing blocking happens here: NVML initialises and the first scrape runs on
    the sampler's thread after `start()`.
    """
    if activity not in ("engine", "local", "auto"):
        raise ValueError(f"unknown activity {activity!r} (engine, local or auto)")
    if kind == "estimate":
        return EstimatedMeter(fallback, hardware=hardware)
    source: EnergySource
    if kind == "nvml":
        from meters.sources.nvml import NvmlSource

        source = NvmlSource(gpus, nvml=nvml, clock=clock)
    elif kind == "prometheus":
        from meters.sources.prometheus import PrometheusSource

        if not url:
            raise ValueError("a prometheus meter needs the exporter's url")
        source = PrometheusSource(
            url, gpus=[str(g) for g in gpus], transport=transport, clock=clock
        )
    else:
        raise ValueError(f"unknown meter kind {kind!r} (nvml, prometheus or estimate)")
    engine: EngineActivitySource | None = None
    if activity != "local" and activity_url:
        engine = EngineActivitySource(
            activity_url, transport=transport, clock=clock, timeout_s=ACTIVITY_TIMEOUT_S
        )
    gpu_list = ",".join(str(g) for g in gpus)
    where = url if kind == "prometheus" else socket.gethostname()
    return MeasuredMeter(
        source,
        fallback=fallback,
        observe=observe,
        hardware=hardware,
        gpu_count=len(gpus),
        tick_s=tick_s,
        alpha=alpha,
        server_power_w_per_gpu=server_power_w_per_gpu,
        clock=clock,
        activity=engine,
        activity_required=activity == "engine",
        meter_key=f"{kind}:{where}:{gpu_list}",
        on_local=on_local,
    )
