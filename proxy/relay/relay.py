"""The relay's entry point: a request authenticated, read, checked against its endpoint's
entry, routed, its worst case reserved, then relayed whole or streamed."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from meters import MeterError, RequestTrack
from proxy.budgets import Usage
from proxy.errors import (
    DuplicateRequestId,
    ModelNotFound,
    PermissionDenied,
    ProxyError,
    ServiceUnavailable,
)
from proxy.ledger import unavailable as ledger_unavailable
from proxy.relay import checks, send
from proxy.relay.attempts import Attempts
from proxy.relay.call import Asked, Call
from proxy.relay.embeddings import embeddings_measurement
from proxy.relay.endpoints import ENDPOINTS
from proxy.relay.finish import Finisher
from proxy.relay.intake import read_json
from proxy.relay.stored import ResponseOwners, StoredResponses
from proxy.relay.stream import relay_stream
from proxy.relay.whole import relay_whole
from proxy.services import Services
from proxy.tokens import approx_tokens
from proxy.transport import UpstreamRequest
from proxy.upstreams import Upstream

log = logging.getLogger("footprint.relay")


def first_values(request: Request) -> dict[str, str]:
    """The request's headers as one dict, read once (Starlette's `Headers` scans its list on
    every look-up): lower-case names, as ASGI gives them; a name sent twice keeps its first
    value, as `Headers.get` does."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in reversed(request.headers.raw)
    }


def _new_id() -> str:
    return f"req-{uuid.uuid4().hex}"


class Relay:
    """Relays requests to upstreams; one instance per app, held on `app.state`."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.owners = ResponseOwners()
        self.finisher = Finisher(services, self.owners)
        self.stored = StoredResponses(services, self.owners)

    async def handle(self, request: Request, endpoint: str) -> Response:
        """Relay one request to `endpoint` (a key of `ENDPOINTS`); every outcome is an answer,
        and every answer carries the request's id."""
        headers = first_values(request)
        own_id = headers.get("x-request-id")
        call = Call(
            request_id=own_id if own_id and checks.valid_request_id(own_id) else _new_id(),
            spec=ENDPOINTS[endpoint],
            started=time.perf_counter(),
            received_at=datetime.now(UTC),
        )
        call.client_id = call.request_id == own_id
        telemetry = self.services.telemetry
        if telemetry is not None:
            call.telemetry = telemetry.begin(headers, call)
        try:
            if own_id and not call.client_id:
                checks.check_request_id(own_id)  # raises: say why the id was refused
            response = await self._handle(request, call, headers)
        except ProxyError as error:
            response = self._refusal(call, error)
        except Exception as exc:
            if ledger_unavailable(exc):
                log.error("request %s: ledger unavailable: %r", call.request_id, exc)
                response = self._refusal(call, ServiceUnavailable("the ledger is unavailable"))
            else:
                log.exception("request %s: unexpected error", call.request_id)
                response = self._refusal(call, ProxyError("internal error in the proxy"))
        if call.rate is not None:
            # A limited key's every answer says where it stands (OpenAI's x-ratelimit-*).
            response.headers.update(call.rate.headers())
        return response

    def _refusal(self, call: Call, error: ProxyError) -> Response:
        call.tally.status = error.status_code
        call.tally.error = error.code or error.error_type
        telemetry = self.services.telemetry
        if telemetry is not None and call.telemetry is not None:
            telemetry.fail(call.telemetry, call, error)
        return call.spec.errors.response(error, {"x-request-id": call.request_id})

    async def _handle(self, request: Request, call: Call, headers: dict[str, str]) -> Response:
        body = await self._admit(request, call, headers)
        asked = call.need()
        budgets = self.services.budgets
        try:
            call.rate = await self.services.rate_limits.admit(
                call.team, call.key_id, approx_tokens(asked.prompt_text) + asked.max_tokens
            )
            if call.client_id:
                await self._claim(call)
            reservation = await budgets.reserve(
                call.team, await self._worst_case(call), call.request_id
            )
        except BaseException:
            if call.attempts is not None:
                call.attempts.release()
            await self.finisher.unclaim(call)
            raise
        track: RequestTrack | None = None
        try:
            # What was checked is what is sent: the parsed body, serialized again (a body
            # with a key twice was checked by its last value; its raw bytes could say
            # otherwise to an upstream that reads the first).
            content = orjson.dumps(body)
            upstream_request = self._upstream_request(headers, call, content)
            track = self._track(headers, call, content)
            relay = relay_stream if asked.stream else relay_whole
            return await relay(self.finisher, call, track, upstream_request, reservation)
        except BaseException:
            if track is not None:
                await self.finisher.abandon(call, track)
            if call.attempts is not None and not call.settled:
                call.attempts.release()
            if not call.settled:
                await budgets.release(reservation)
            await self.finisher.unclaim(call)
            raise

    def _track(self, headers: dict[str, str], call: Call, content: bytes) -> RequestTrack:
        """The request's meter track; with several candidates, one that follows the request
        to the next candidate when an attempt fails before the answer begins."""
        attempts, asked = call.attempts, call.need()
        if attempts is None:
            return asked.upstream.meter.open(call.request_id, asked.model)

        def request_for(upstream: Upstream) -> UpstreamRequest:
            call.asked = dataclasses.replace(call.need(), upstream=upstream)
            return self._upstream_request(headers, call, content)

        attempts.request_for = request_for
        return attempts.track(call.request_id, asked.model)

    async def _claim(self, call: Call) -> None:
        """The client's own request id, unique: not in flight on any replica, not recorded."""
        duplicate = DuplicateRequestId(
            f"a request with x-request-id {call.request_id!r} is in flight or already "
            "recorded; send a new id",
            param="x-request-id",
        )
        if not await self.services.budgets.claim(call.request_id, call.team):
            raise duplicate
        call.claimed = True
        if await self.services.ledger.has_request(call.request_id):
            raise duplicate

    async def _admit(self, request: Request, call: Call, headers: dict[str, str]) -> dict[str, Any]:
        """Authenticate, read, check, route: `call.asked` is set, or an error is raised."""
        services, spec = self.services, call.spec
        principal = await services.auth.authenticate(spec.credential(headers))
        call.team, call.key_id = principal.team, principal.key_id
        _raw, body = await read_json(request, self.settings.server.max_body_bytes, headers)
        model = checks.require_model(body)
        spec.check(body)
        call.model = model
        if not principal.may_use(model):
            raise PermissionDenied(f"this key may not use model {model!r}", param="model")
        candidates = self._route(model, body, call.team)
        if not candidates:
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        stream = spec.streams and body.get("stream") is True
        default_cap = self.settings.budgets.default_max_tokens
        prompt_text = spec.prompt_text(body)
        max_tokens = checks.max_tokens(body, default_cap, *spec.cap_fields) if spec.generates else 0
        plan = None
        upstream = candidates[0]
        if len(candidates) > 1:
            plan = await services.planner.plan(
                model, candidates, approx_tokens(prompt_text), max_tokens
            )
            upstream = plan.upstreams[0]
        call.asked = Asked(
            model=model,
            upstream=upstream,
            stream=stream,
            client_wants_usage=spec.prepare_stream(body) if stream else False,
            prompt_text=prompt_text,
            max_tokens=max_tokens,
            choices=checks.choices(body),
        )
        if plan is not None:
            # Holds an in-flight slot on the chosen upstream from here on.
            call.attempts = Attempts(plan, self.settings.routing.max_attempts)
        return body

    def _route(self, model: str, body: dict[str, Any], team: str) -> Sequence[Upstream]:
        """The candidates for `model`, in priority order; for a response that continues
        another, only the upstream that holds the earlier one, if it serves the model."""
        previous = body.get("previous_response_id")
        candidates = self.services.router.candidates(model)
        if isinstance(previous, str):
            holder = self.stored.upstream_of(previous, team)
            if holder is not None and holder in candidates:
                return (holder,)
        return candidates

    def _upstream_request(
        self, incoming: dict[str, str], call: Call, content: bytes
    ) -> UpstreamRequest:
        asked = call.need()
        headers = send.upstream_headers(incoming, call.spec, asked.upstream, call.request_id)
        telemetry = self.services.telemetry
        if telemetry is not None and call.telemetry is not None:
            telemetry.inject(call.telemetry, headers)
        return asked.upstream.post_request(call.spec.path, content, headers)

    async def _worst_case(self, call: Call) -> Usage:
        """What the request could cost at most, for the budget reservation."""
        asked = call.need()
        prompt_tokens = approx_tokens(asked.prompt_text)
        # Every choice (n, best_of) may run to the cap.
        output_tokens = asked.max_tokens * asked.choices
        tokens = prompt_tokens + output_tokens
        if self.services.budgets.holds_nothing_for(call.team):
            # No budget to hold it against: its energy, carbon and water would be worked
            # out for nothing.
            return Usage(tokens=tokens, requests=1)
        try:
            measurement = asked.upstream.estimator.estimate(
                asked.model, prompt_tokens, output_tokens, math.inf
            )
        except MeterError:
            # A model of unknown size: only token and request budgets can be held for it.
            return Usage(tokens=tokens, requests=1)
        if not call.spec.generates:  # what finishing will charge it (embeddings.py)
            alpha = self.settings.metering.alpha
            measurement = embeddings_measurement(
                asked.upstream.estimator, asked.model, prompt_tokens, 0.0, alpha
            )
        footprint = await self.finisher.footprint(asked.upstream, measurement)
        return Usage(
            energy_j=footprint.energy_j,
            co2e_g=footprint.co2e_g,
            water_ml=footprint.water_ml,
            tokens=tokens,
            requests=1,
            co2e_market_g=footprint.co2e_market_g,
        )

    async def drain(self) -> None:
        """Wait for records of cut-off requests still being written (at shutdown)."""
        await self.finisher.drain()
