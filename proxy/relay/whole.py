"""A whole (non-streamed) answer: sent, read, metered, recorded, and passed back with the
footprint in its headers and as a `footprint` member of the answer object."""

from __future__ import annotations

import time

import orjson
from starlette.responses import Response

from meters import RequestTrack
from proxy.budgets import Reservation
from proxy.errors import ProxyError, UpstreamUnavailable
from proxy.relay import send
from proxy.relay.attach import with_member
from proxy.relay.call import Call
from proxy.relay.finish import Finisher, footprint_headers, footprint_object
from proxy.transport import UpstreamRequest


async def relay_whole(
    finisher: Finisher,
    call: Call,
    track: RequestTrack,
    upstream_request: UpstreamRequest,
    reservation: Reservation,
) -> Response:
    upstream = call.need().upstream
    tally = call.tally
    response, sent = await finisher.send(call, track, reservation, upstream_request)
    try:
        raw = await send.read_whole(upstream, response)
    except ProxyError as error:
        tally.upstream_s = time.perf_counter() - sent
        await finisher.refused(call, track, reservation, error)
        raise
    tally.upstream_s = time.perf_counter() - sent
    tally.status = response.status_code
    if response.status_code >= 400:
        await finisher.upstream_error(call, track, reservation, response.status_code)
        return send.passed_on(upstream, response, raw, call.request_id)
    answer = _json_object(raw)
    if answer is None:
        not_json = UpstreamUnavailable(f"upstream {upstream.name} answered something not JSON")
        await finisher.refused(call, track, reservation, not_json)
        raise not_json
    await _take_answer(finisher, call, answer)
    # No progress was visible while it ran, so the meter gives it the time share of each
    # tick (methodology §2); the totals go to close() only.
    finished = await finisher.finish(call, track, reservation)
    headers = {
        **send.passed_headers(upstream, response),
        **footprint_headers(call, finished.footprint, finished.remaining),
    }
    if finisher.services.settings.server.footprint_in_body:
        raw = with_member(
            raw, b"footprint", orjson.dumps(footprint_object(call, finished.footprint))
        )
    return Response(
        raw, status_code=response.status_code, media_type="application/json", headers=headers
    )


def _json_object(raw: bytes) -> dict[str, object] | None:
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


async def _take_answer(finisher: Finisher, call: Call, answer: dict[str, object]) -> None:
    """Usage, model, finish reasons from the answer; tokens counted where it did not say."""
    tally = call.tally
    facts = call.spec.read_answer(answer)
    if facts.usage is not None:
        tally.usage = dict(facts.usage.whole)
        tally.prompt_tokens = facts.usage.prompt_tokens or 0
        tally.completion_tokens = facts.usage.completion_tokens or 0
    tally.response_model = facts.model
    tally.response_id = facts.response_id
    tally.finish_reasons = list(facts.finish_reasons)
    if tally.completion_tokens == 0 and call.spec.generates:
        tally.completion_tokens = facts.output_tokens
    if tally.prompt_tokens == 0:
        await finisher.count_prompt(call)
