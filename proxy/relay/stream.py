"""A streamed answer: the read loop that passes the upstream's SSE bytes on as they come (its
own bytes, never re-encoded), the meter told of each event's tokens, and the closing events
that carry the footprint. The counting itself is the pure `StreamTally`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import anyio
from starlette.responses import Response, StreamingResponse

from meters import RequestTrack
from proxy import sse
from proxy.budgets import Reservation
from proxy.errors import ProxyError, UpstreamTimeout, UpstreamUnavailable
from proxy.relay import send
from proxy.relay.call import Call
from proxy.relay.facts import StreamEnd
from proxy.relay.finish import Finisher, footprint_object
from proxy.relay.tally import StreamTally
from proxy.tokens import approx_tokens
from proxy.transport import UpstreamFailure, UpstreamRequest, UpstreamResponse, UpstreamTimedOut

log = logging.getLogger("footprint.relay")


async def relay_stream(
    finisher: Finisher,
    call: Call,
    track: RequestTrack,
    upstream_request: UpstreamRequest,
    reservation: Reservation,
) -> Response:
    upstream = call.need().upstream
    tally = call.tally
    response, sent = await finisher.send(call, track, reservation, upstream_request)
    tally.status = response.status_code
    if response.status_code >= 400:
        raw = await send.read_error(upstream, response)
        tally.upstream_s = time.perf_counter() - sent
        await finisher.upstream_error(call, track, reservation, response.status_code)
        return send.passed_on(upstream, response, raw, call.request_id)
    headers = {
        **send.passed_headers(upstream, response),
        "x-request-id": call.request_id,
        "x-footprint-method": "measured" if upstream.measuring else "estimated",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    }
    return StreamingResponse(
        _events(finisher, call, track, response, reservation),
        media_type="text/event-stream",
        headers=headers,
    )


class _Waited:
    """Time spent waiting on the upstream, for the proxy's own overhead."""

    __slots__ = ("s",)

    def __init__(self) -> None:
        self.s = 0.0


async def _events(
    finisher: Finisher,
    call: Call,
    track: RequestTrack,
    response: UpstreamResponse,
    reservation: Reservation,
) -> AsyncIterator[bytes]:
    counted = StreamTally(call.spec, call.tally)
    splitter = sse.SSESplitter(call.need().upstream.settings.max_response_bytes)
    waited = _Waited()
    tally = call.tally
    try:
        async with aclosing(_pass_on(call, track, response, counted, splitter, waited)) as events:
            async for out in events:
                yield out
        if counted.cut_off(splitter.rest()):
            tally.cancelled = True
            tally.error = tally.error or "upstream_cut_off"
    except UpstreamTimedOut as exc:
        # The upstream stopped sending for longer than the read timeout.
        tally.cancelled, tally.error = True, "upstream_timeout"
        log.warning("request %s: upstream stream timed out: %r", call.request_id, exc)
    except (UpstreamFailure, sse.EventTooLarge) as exc:
        # The upstream died mid-stream (or sent an event over the size limit): end the
        # client's stream cleanly, then record.
        tally.cancelled, tally.error = True, "upstream_cut_off"
        log.warning("request %s: upstream broke off the stream: %s", call.request_id, exc)
    except BaseException:
        # The client went away (the ASGI server cancels us): stop the upstream at once,
        # and still meter and record what was done.
        tally.cancelled, tally.status = True, 499
        tally.error = tally.error or "client_disconnected"
        with anyio.CancelScope(shield=True):
            await response.aclose()
            tally.upstream_s = waited.s
            finisher.spawn(finisher.finish(call, track, reservation))
        raise
    await response.aclose()
    tally.upstream_s = waited.s
    yield await _closing(finisher, call, track, reservation, counted)


async def _pass_on(
    call: Call,
    track: RequestTrack,
    response: UpstreamResponse,
    counted: StreamTally,
    splitter: sse.SSESplitter,
    waited: _Waited,
) -> AsyncGenerator[bytes, None]:
    """The upstream's events as they come; what one upstream read brought leaves in one
    write (one ASGI message)."""
    while True:
        wait_start = time.perf_counter()
        chunk = await response.next_chunk()  # decoded, should the upstream compress after all
        waited.s += time.perf_counter() - wait_start
        if not chunk:
            return
        out: list[bytes] = []
        for event in splitter.feed(chunk):
            step = counted.feed(event)
            if step.new_tokens:
                _tell_meter(call, track, step.new_tokens)
            if step.pass_on:
                out.append(event)
        if out:
            yield out[0] if len(out) == 1 else b"".join(out)


def _tell_meter(call: Call, track: RequestTrack, new_tokens: int) -> None:
    tally = call.tally
    if tally.first_chunk_s is None:
        tally.first_chunk_s = time.perf_counter() - call.started
        track.first_token(approx_tokens(call.need().prompt_text))
    track.output_tokens(new_tokens)


async def _closing(
    finisher: Finisher,
    call: Call,
    track: RequestTrack,
    reservation: Reservation,
    counted: StreamTally,
) -> bytes:
    """Finish the request, then the endpoint's closing events in one write."""
    asked, tally = call.need(), call.tally
    if not counted.usage_seen or tally.prompt_tokens == 0:
        if not counted.usage_seen:
            tally.tokens_counted = True
        await finisher.count_prompt(call)
    try:
        finished = await finisher.finish(call, track, reservation)
    except ProxyError as error:
        # Nothing was recorded (the ledger cannot write): the reservation is given back, and
        # the stream ends with the error instead of being cut.
        log.error("request %s: stream not recorded: %s", call.request_id, error)
        return call.spec.errors.event(error) + call.spec.errors.last
    broke_off: ProxyError | None = None
    if tally.error == "upstream_timeout":
        broke_off = UpstreamTimeout(f"upstream {asked.upstream.name} stopped sending in time")
    elif tally.cancelled:
        broke_off = UpstreamUnavailable(f"upstream {asked.upstream.name} broke off the stream")
    end = StreamEnd(
        request_id=call.request_id,
        model=tally.response_model or asked.model,
        created_s=int(call.received_at.timestamp()),
        held=tuple(counted.held),
        upstream_done=counted.done,
        client_wants_usage=asked.client_wants_usage,
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        usage=tally.usage,
        footprint=footprint_object(call, finished.footprint),
        broke_off=broke_off,
    )
    return b"".join(call.spec.close_stream(end))
