"""Finish: once per request that reached an upstream, whatever its outcome: the meter closes →
the footprint → the ledger row is durable → the budget is settled → telemetry ends. Also the
footprint as the client sees it (the JSON object, the headers)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from meters import Footprint, Measurement, MeterError, RequestTrack
from meters.footprint import compute_footprint, footprint_json, format_decimal
from meters.numbers import dumps_plain
from proxy.budgets import Reservation, Usage, remaining_headers
from proxy.errors import ProxyError
from proxy.ledger import LedgerRecord, figure_columns
from proxy.relay.attempts import RoutedTrack
from proxy.relay.call import Call
from proxy.relay.embeddings import embeddings_measurement, needs_derivation
from proxy.relay.send import send
from proxy.relay.stored import ResponseOwners
from proxy.services import Services
from proxy.tokens import PromptTokenizer
from proxy.transport import UpstreamRequest, UpstreamResponse
from proxy.upstreams import Upstream

log = logging.getLogger("footprint.relay")


@dataclass(frozen=True, slots=True)
class Finished:
    """A finished request's footprint and what is left of the team's budgets."""

    footprint: Footprint
    remaining: Mapping[str, float]


class Finisher:
    """The closing steps, shared by whole and streamed answers."""

    def __init__(self, services: Services, owners: ResponseOwners) -> None:
        self.services = services
        self.owners = owners
        self._background: set[asyncio.Task[None]] = set()
        self._tokenizers: dict[str, PromptTokenizer] = {}  # per upstream, its shape learnt

    async def footprint(self, upstream: Upstream, measurement: Measurement) -> Footprint:
        intensity = await self.services.intensity.get(upstream.site.zone)
        return compute_footprint(measurement, upstream.site, upstream.hardware, intensity)

    async def count_prompt(self, call: Call) -> None:
        """Prompt tokens by the upstream's tokenizer (or the rule of thumb), for an answer
        that did not say."""
        asked = call.need()
        tokenizer = self._tokenizers.get(asked.upstream.name)
        if tokenizer is None:
            settings = asked.upstream.settings
            tokenizer = PromptTokenizer(
                asked.upstream.client, settings.tokenize_url, settings.tokenize_format
            )
            self._tokenizers[asked.upstream.name] = tokenizer
        call.tally.tokens_counted = True
        call.tally.prompt_tokens, _how = await tokenizer.count(asked.model, asked.prompt_text)

    async def finish(self, call: Call, track: RequestTrack, reservation: Reservation) -> Finished:
        """Close the meter, compute the footprint, make the ledger row durable, settle the
        budget, end telemetry."""
        upstream = call.need().upstream
        measurement = await self._close_meter(call, track)
        footprint = await self.footprint(upstream, measurement)
        duration_s = time.perf_counter() - call.started
        call.tally.overhead_ms = max(0.0, (duration_s - call.tally.upstream_s) * 1000.0)
        budgets = self.services.budgets
        try:
            await self.services.ledger.record(ledger_record(call, footprint, duration_s))
        except BaseException:
            # Not recorded, so not charged: the reservation goes back at once (a stream's
            # would otherwise be held until it expired).
            await budgets.release(reservation)
            call.settled = True
            raise
        finally:
            await self.unclaim(call)
        call.settled = True
        if call.tally.response_id is not None:
            self.owners.remember(call.tally.response_id, upstream.name, call.team)
        remaining = await self.services.budgets.settle(reservation, spent(call, footprint))
        telemetry = self.services.telemetry
        if telemetry is not None and call.telemetry is not None:
            telemetry.end(call.telemetry, call, footprint)
        return Finished(footprint, remaining)

    async def send(
        self,
        call: Call,
        track: RequestTrack,
        reservation: Reservation,
        upstream_request: UpstreamRequest,
    ) -> tuple[UpstreamResponse, float]:
        """Send to the upstream (the response and when it was sent); a request that cannot
        be sent is finished, and its error raised."""
        sent = time.perf_counter()
        try:
            if call.attempts is not None and isinstance(track, RoutedTrack):
                # Routing's seam: fallbacks to the next candidate before the answer begins.
                return await call.attempts.send(track, upstream_request), sent
            return await send(call.need().upstream, upstream_request), sent
        except ProxyError as error:
            call.tally.upstream_s = time.perf_counter() - sent
            await self.refused(call, track, reservation, error)
            raise

    async def refused(
        self, call: Call, track: RequestTrack, reservation: Reservation, error: ProxyError
    ) -> None:
        """Finish a request whose upstream failed (`error` is raised to the client after)."""
        call.tally.status, call.tally.error = error.status_code, error.code
        await self.finish(call, track, reservation)

    async def upstream_error(
        self, call: Call, track: RequestTrack, reservation: Reservation, status: int
    ) -> None:
        """Finish a request the upstream answered with its own error (passed on unchanged)."""
        call.tally.status, call.tally.error = status, f"upstream_{status}"
        await self.finish(call, track, reservation)

    async def unclaim(self, call: Call) -> None:
        """Let the client's request id go (its row is durable, or the request failed)."""
        if call.claimed:
            call.claimed = False
            await self.services.budgets.unclaim(call.request_id)

    async def abandon(self, call: Call, track: RequestTrack) -> None:
        """Close the meter of a request that will not be finished (an error escaped), so its
        track never stays open (idle energy would stop being booked)."""
        if not call.meter_closed:
            call.tally.cancelled = True
            await self._close_meter(call, track)

    async def _close_meter(self, call: Call, track: RequestTrack) -> Measurement:
        tally = call.tally
        latency_s = time.perf_counter() - call.started
        call.meter_closed = True
        try:
            measurement = await track.close(
                prompt_tokens=tally.prompt_tokens,
                output_tokens=tally.completion_tokens,
                cancelled=tally.cancelled,
                latency_s=latency_s,
            )
        except MeterError as exc:
            # Nothing measured it and nothing knows enough to estimate it (a model of unknown
            # size): say so instead of inventing a figure, and still serve the request.
            log.warning("request %s: no footprint: %s", call.request_id, exc)
            return Measurement(0.0, 0.0, 0.0, "estimated", f"unavailable: {exc}")
        if call.spec.generates or not needs_derivation(measurement):
            return measurement
        asked = call.need()
        return embeddings_measurement(
            asked.upstream.estimator,
            asked.model,
            tally.prompt_tokens,
            latency_s,
            self.services.settings.metering.alpha,
        )

    def spawn(self, work: Coroutine[Any, Any, object]) -> None:
        """Run `work` (a cut-off request's finish) past the request's own task."""
        task = asyncio.get_running_loop().create_task(_discard(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for records of cut-off requests still being written (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


async def _discard(work: Coroutine[Any, Any, object]) -> None:
    await work


def spent(call: Call, footprint: Footprint) -> Usage:
    """What the request cost, on every budget metric. It counts as a request when it
    succeeded or used anything: the rule the ledger's sums apply when budgets are rebuilt from
    it (`Store.spent`), so the two always agree."""
    tokens = call.tally.prompt_tokens + call.tally.completion_tokens
    counted = call.tally.status < 400 or tokens > 0 or footprint.energy_j > 0
    return Usage(
        energy_j=footprint.energy_j,
        co2e_g=footprint.co2e_g,
        water_ml=footprint.water_ml,
        tokens=tokens,
        requests=1 if counted else 0,
        co2e_market_g=footprint.co2e_market_g,
    )


def ledger_record(call: Call, footprint: Footprint, duration_s: float) -> LedgerRecord:
    """The ledger row of a finished request."""
    asked, tally = call.need(), call.tally
    return LedgerRecord(
        request_id=call.request_id,
        created_at=call.received_at,
        team=call.team,
        key_id=call.key_id,
        model=asked.model,
        upstream=asked.upstream.name,
        endpoint=call.spec.name,
        stream=asked.stream,
        status=tally.status,
        cancelled=tally.cancelled,
        error=tally.error,
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        tokens_counted=tally.tokens_counted,
        **figure_columns(footprint),
        trace_id=call.trace_id,
        duration_ms=duration_s * 1000.0,
        overhead_ms=tally.overhead_ms,
        **route_columns(call, footprint),
    )


def route_columns(call: Call, footprint: Footprint) -> dict[str, Any]:
    """The routing decision's columns (revision 0006): its record as JSON, and the carbon it
    avoided against the `priority` choice; empty where no policy chose."""
    attempts = call.attempts
    record = attempts.record() if attempts is not None else None
    if attempts is None or record is None:
        return {}
    return {
        "route": dumps_plain(record),
        "co2e_avoided_g": attempts.co2e_avoided_g(footprint),
    }


def footprint_object(call: Call, footprint: Footprint) -> dict[str, object]:
    """The contract's `footprint` object of a request."""
    tally = call.tally
    obj = footprint_json(footprint, call.request_id, tally.prompt_tokens, tally.completion_tokens)
    obj["basis"] = footprint.basis
    if footprint.attribution:
        obj["attribution"] = footprint.attribution
    if tally.tokens_counted:
        obj["tokens_counted"] = True
    if tally.cancelled:
        obj["cancelled"] = True
    if call.attempts is not None and call.attempts.plan.chose:
        obj["route"] = call.attempts.member()
    return obj


def _market_header(footprint: Footprint) -> dict[str, str]:
    # Only where the upstream has contracts: absent, never a copy of the location-based figure.
    if footprint.co2e_market_g is None:
        return {}
    return {"x-footprint-co2e-market-g": format_decimal(footprint.co2e_market_g)}


def footprint_headers(
    call: Call, footprint: Footprint, remaining: Mapping[str, float]
) -> dict[str, str]:
    """The contract's `x-footprint-*` headers of a whole answer."""
    headers = {
        "x-request-id": call.request_id,
        "x-footprint-method": footprint.method,
        "x-footprint-gpu-energy-j": format_decimal(footprint.gpu_energy_j),
        "x-footprint-energy-j": format_decimal(footprint.energy_j),
        "x-footprint-co2e-g": format_decimal(footprint.co2e_g),
        **_market_header(footprint),
        "x-footprint-water-ml": format_decimal(footprint.water_ml),
        "x-footprint-zone": footprint.zone,
        "x-footprint-grid-gco2e-per-kwh": format_decimal(footprint.grid_gco2e_per_kwh),
        "x-footprint-overhead-ms": format_decimal(call.tally.overhead_ms),
    }
    headers.update(remaining_headers(remaining))
    return headers
