"""Attempts: the routing seam of one request. The route plan's first upstream is tried; a
failure before any byte reached the client (refused, timed out before its answer began, a 5xx
or a 429 from the upstream) moves the request to the next candidate, up to
`routing.max_attempts` tries, under the same request id, the same budget reservation and the
same ledger row. Each upstream's circuit breaker hears every outcome; its in-flight count
holds a slot from the decision until the request's meter closes.

A stream is never retried once its answer has begun: by then the response is the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from meters import Footprint, Measurement, MeterError, RequestTrack
from proxy.errors import ProxyError
from proxy.relay.send import read_error, send
from proxy.routing import RoutePlan, co2e_avoided_g
from proxy.telemetry import names as n
from proxy.transport import UpstreamRequest, UpstreamResponse
from proxy.upstreams import Upstream

log = logging.getLogger("footprint.relay")


def retryable_status(status: int) -> bool:
    return status == 429 or status >= 500


class Attempts:
    """Where one request is in its route plan; made once it is routed, kept on its `Call`."""

    __slots__ = ("_held", "_started", "max_attempts", "plan", "request_for", "tried", "upstream")

    def __init__(self, plan: RoutePlan, max_attempts: int) -> None:
        self.plan = plan
        self.max_attempts = min(max_attempts, plan.candidates)
        self.tried = 0
        self.upstream = plan.upstreams[0]
        self._held = False
        self._started = 0.0
        # Builds the upstream request for another candidate (set by the relay).
        self.request_for: Callable[[Upstream], UpstreamRequest] | None = None
        self.claim(self.upstream)

    def claim(self, upstream: Upstream) -> None:
        """Hold a slot on `upstream` from the decision on, so concurrent decisions see it."""
        self.release()
        self.upstream = upstream
        upstream.health.in_flight += 1
        self._held = True

    def release(self) -> None:
        """Give the in-flight slot back (idempotent): the request's meter has closed, or it
        failed before it could be sent."""
        if self._held:
            self.upstream.health.in_flight -= 1
            self._held = False

    def _next(self) -> Upstream | None:
        if self.tried >= self.max_attempts:
            return None
        return self.plan.upstreams[self.tried]

    def track(self, request_id: str, model: str) -> RoutedTrack:
        """The meter track of the request, which follows it from upstream to upstream."""
        return RoutedTrack(self, self.upstream.meter.open(request_id, model), request_id, model)

    async def send(self, track: RoutedTrack, request: UpstreamRequest) -> UpstreamResponse:
        """Send, moving on to the next candidate after a failure before the answer began.
        Returns the answer to pass on (perhaps the last candidate's error), or raises the last
        candidate's failure."""
        while True:
            upstream = self.upstream
            self.tried += 1
            upstream.health.breaker.attempt()
            self._started = time.perf_counter()
            try:
                response = await send(upstream, request)
            except asyncio.CancelledError:
                upstream.health.breaker.abandoned()
                raise
            except ProxyError as error:
                upstream.health.breaker.failed()
                following = self._next()
                if following is None or self.request_for is None:
                    raise
                log.warning(
                    "request %s: upstream %s failed (%s); trying %s",
                    track.request_id,
                    upstream.name,
                    error.code,
                    following.name,
                )
            else:
                if response.status_code >= 500:
                    upstream.health.breaker.failed()
                else:
                    upstream.health.breaker.succeeded()
                following = self._next()
                if (
                    not retryable_status(response.status_code)
                    or following is None
                    or self.request_for is None
                ):
                    return response
                await read_error(upstream, response)
                log.warning(
                    "request %s: upstream %s answered %d; trying %s",
                    track.request_id,
                    upstream.name,
                    response.status_code,
                    following.name,
                )
            await track.move_to(following)
            request = self.request_for(following)

    def first_token_s(self) -> float:
        """Seconds since the current attempt was sent."""
        return time.perf_counter() - self._started

    def record(self) -> dict[str, object] | None:
        """The route as the ledger keeps it (None when no policy chose): policy, upstream,
        candidates, attempts, reason, expected and worst gCO2e, the priority choice, and the
        carbon avoided against it (this request's carbon scaled by the two expectations)."""
        plan = self.plan
        if not plan.chose:
            return None
        out: dict[str, object] = {
            **self.member(),
            "reason": plan.reason,
            "priority_upstream": plan.priority,
        }
        if plan.weighed:
            chosen = plan.expected(self.upstream.name)
            baseline = plan.expected(plan.priority)
            out["expected_co2e_g"] = chosen.co2e_g if chosen is not None else None
            out["worst_co2e_g"] = plan.worst_co2e_g()
            out["priority_co2e_g"] = baseline.co2e_g if baseline is not None else None
        return out

    def co2e_avoided_g(self, footprint: Footprint) -> float | None:
        """Carbon avoided against the `priority` choice (None where nothing was weighed)."""
        plan = self.plan
        chosen = plan.expected(self.upstream.name)
        baseline = plan.expected(plan.priority)
        if not plan.chose or chosen is None or baseline is None:
            return None
        return co2e_avoided_g(
            footprint.energy_j, footprint.embodied_co2e_g, footprint.co2e_g, chosen, baseline
        )

    def span_attributes(self) -> dict[str, object]:
        """`footprint.route.*` span attributes (empty where no policy chose)."""
        plan = self.plan
        if not plan.chose:
            return {}
        out: dict[str, object] = {
            n.FOOTPRINT_ROUTE_POLICY: plan.policy,
            n.FOOTPRINT_ROUTE_CANDIDATES: plan.candidates,
            n.FOOTPRINT_ROUTE_ATTEMPTS: self.tried,
            n.FOOTPRINT_ROUTE_REASON: plan.reason,
        }
        chosen = plan.expected(self.upstream.name)
        if chosen is not None:
            out[n.FOOTPRINT_ROUTE_EXPECTED_CO2E_G] = chosen.co2e_g
            out[n.FOOTPRINT_ROUTE_WORST_CO2E_G] = plan.worst_co2e_g()
        return out

    def member(self) -> dict[str, object]:
        """The footprint object's `route` member."""
        return {
            "policy": self.plan.policy,
            "upstream": self.upstream.name,
            "candidates": self.plan.candidates,
            "attempts": self.tried,
        }


class RoutedTrack:
    """The request's meter track; it moves to the next upstream's meter when an attempt fails,
    and its close gives the in-flight slot back."""

    __slots__ = ("_attempts", "_track", "model", "request_id")

    def __init__(
        self, attempts: Attempts, track: RequestTrack, request_id: str, model: str
    ) -> None:
        self._attempts = attempts
        self._track = track
        self.request_id = request_id
        self.model = model

    async def move_to(self, upstream: Upstream) -> None:
        """Close the failed attempt's track (nothing of it is recorded: the request has one
        row, on the upstream that answered) and open one on `upstream`."""
        with contextlib.suppress(MeterError):  # a failed attempt has no figure to lose
            await self._track.close(prompt_tokens=0, output_tokens=0, cancelled=True, latency_s=0.0)
        self._attempts.claim(upstream)
        self._track = upstream.meter.open(self.request_id, self.model)

    def first_token(self, prompt_tokens: int) -> None:
        self._attempts.upstream.health.observe_ttft(self._attempts.first_token_s())
        self._track.first_token(prompt_tokens)

    def output_tokens(self, count: int) -> None:
        self._track.output_tokens(count)

    async def close(
        self, *, prompt_tokens: int, output_tokens: int, cancelled: bool, latency_s: float
    ) -> Measurement:
        try:
            return await self._track.close(
                prompt_tokens=prompt_tokens,
                output_tokens=output_tokens,
                cancelled=cancelled,
                latency_s=latency_s,
            )
        finally:
            self._attempts.release()
