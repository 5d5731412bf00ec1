"""Forwarding: one client request relayed to its upstream, metered, recorded and settled.

The path: authenticate → parse and check → route → reserve budget → relay (streamed or not)
→ meter closes → footprint → ledger row durable → budget settled → the last bytes leave.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from meters import Footprint, Measurement, MeterError, RequestTrack
from meters.footprint import compute_footprint, footprint_json, format_decimal
from proxy import sse
from proxy.errors import (
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    ProxyError,
    RequestTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from proxy.ledger import LedgerRecord
from proxy.services import Services, Usage
from proxy.tokens import approx_tokens, chunk_output_tokens, count_prompt_tokens, prompt_text
from proxy.upstreams import Upstream

log = logging.getLogger("footprint.forward")

ENDPOINTS: dict[str, tuple[str, str]] = {
    # endpoint → (upstream path, GenAI operation name)
    "chat.completions": ("/chat/completions", "chat"),
    "completions": ("/completions", "text_completion"),
    "embeddings": ("/embeddings", "embeddings"),
}

# Request headers carried on to the upstream. Authorization is never among them: the
# upstream gets the proxy's own credential, from its client.
_FORWARDED_HEADERS = ("traceparent", "tracestate", "baggage", "user-agent", "accept-language")


@dataclass(slots=True)
class Call:
    """Everything known about one relayed request while it runs."""

    request_id: str
    endpoint: str
    started: float
    received_at: datetime
    team: str = "default"
    key_id: str | None = None
    model: str = ""
    upstream: Upstream | None = None
    stream: bool = False
    client_wants_usage: bool = False
    prompt_text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_counted: bool = False
    status: int = 200
    cancelled: bool = False
    error: str | None = None
    upstream_s: float = 0.0
    first_chunk_s: float | None = None
    trace_id: str | None = None
    max_tokens: int = 0
    response_model: str | None = None
    finish_reasons: list[str] = field(default_factory=list)
    overhead_ms: float = 0.0
    settled: bool = False
    telemetry: Any = None  # the telemetry's per-request handle, if any


class Relay:
    """Relays OpenAI requests to upstreams; one instance per app, held on `app.state`."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self._background: set[asyncio.Task[None]] = set()

    # ---- entry point -------------------------------------------------------------------

    async def handle(self, request: Request, endpoint: str) -> Response:
        call = Call(
            request_id=request.headers.get("x-request-id") or f"req-{uuid.uuid4().hex}",
            endpoint=endpoint,
            started=time.perf_counter(),
            received_at=datetime.now(UTC),
        )
        telemetry = self.services.telemetry
        call.telemetry = telemetry.begin(request.headers, call) if telemetry else None
        try:
            return await self._handle(request, call)
        except ProxyError as error:
            call.status = error.status_code
            call.error = error.code or error.error_type
            if call.telemetry is not None:
                telemetry.fail(call.telemetry, call, error)
            return error.to_response({"x-request-id": call.request_id})

    async def _handle(self, request: Request, call: Call) -> Response:
        services = self.services
        principal = await services.auth.authenticate(request.headers.get("authorization"))
        call.team, call.key_id = principal.team, principal.key_id

        body = await self._read_json(request)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequest("you must provide a model parameter", param="model")
        self._check_fields(call.endpoint, body)
        call.model = model
        if not principal.may_use(model):
            raise PermissionDenied(f"this key may not use model {model!r}", param="model")
        upstream = services.router.route(model)
        if upstream is None:
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        call.upstream = upstream
        call.stream = call.endpoint != "embeddings" and body.get("stream") is True
        call.prompt_text = prompt_text(body)
        call.max_tokens = _max_tokens(body, self.settings.budgets.default_max_tokens)

        reservation = await services.budgets.reserve(
            call.team, await self._worst_case(call), call.request_id
        )
        try:
            if call.stream:
                options = body.get("stream_options")
                call.client_wants_usage = isinstance(options, dict) and bool(
                    options.get("include_usage")
                )
                body["stream_options"] = {**(options or {}), "include_usage": True}
                content = orjson.dumps(body)
                return await self._relay_stream(request, call, content, reservation)
            return await self._relay_whole(request, call, reservation)
        except BaseException:
            if not call.settled:
                await services.budgets.release(reservation)
            raise

    # ---- request checks ----------------------------------------------------------------

    async def _read_json(self, request: Request) -> dict[str, Any]:
        limit = self.settings.server.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise InvalidRequest("the client went away before sending its body") from None
        raw = b"".join(chunks)
        request.state.raw_body = raw
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        return body

    @staticmethod
    def _check_fields(endpoint: str, body: Mapping[str, Any]) -> None:
        required = {"chat.completions": "messages", "completions": "prompt", "embeddings": "input"}
        name = required[endpoint]
        value = body.get(name)
        if value is None:
            raise InvalidRequest(f"missing required parameter: {name!r}", param=name)
        if endpoint == "chat.completions":
            if not isinstance(value, list) or not value:
                raise InvalidRequest("'messages' must be a non-empty array", param="messages")
            if not all(isinstance(m, dict) for m in value):
                raise InvalidRequest("each message must be an object", param="messages")
        elif not isinstance(value, str | list):
            raise InvalidRequest(f"{name!r} must be a string or an array", param=name)
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean", param="stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options")
        for key in ("max_tokens", "max_completion_tokens", "n"):
            count = body.get(key)
            if count is not None and (
                not isinstance(count, int) or isinstance(count, bool) or count < 0
            ):
                raise InvalidRequest(f"{key!r} must be a non-negative integer", param=key)

    async def _worst_case(self, call: Call) -> Usage:
        """What the request could cost at most, for the budget reservation."""
        upstream = call.upstream
        assert upstream is not None
        prompt_tokens = approx_tokens(call.prompt_text)
        output_tokens = 0 if call.endpoint == "embeddings" else call.max_tokens
        try:
            measurement = upstream.estimator.estimate(
                call.model, prompt_tokens, output_tokens, math.inf
            )
        except MeterError:
            # A model of unknown size: only token and request budgets can be held for it.
            return Usage(
                energy_j=0.0,
                co2e_g=0.0,
                water_ml=0.0,
                tokens=prompt_tokens + output_tokens,
                requests=1,
            )
        footprint = await self._footprint(upstream, measurement)
        return Usage(
            energy_j=footprint.energy_j,
            co2e_g=footprint.co2e_g,
            water_ml=footprint.water_ml,
            tokens=prompt_tokens + output_tokens,
            requests=1,
        )

    # ---- upstream call -----------------------------------------------------------------

    def _upstream_request(self, request: Request, call: Call, content: bytes) -> httpx.Request:
        assert call.upstream is not None
        headers = {"content-type": "application/json"}
        if call.upstream.settings.forward_request_id:
            headers["x-request-id"] = call.request_id
        for name in _FORWARDED_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                headers[name] = value
        if call.telemetry is not None:
            self.services.telemetry.inject(call.telemetry, headers)
        return call.upstream.post_request(ENDPOINTS[call.endpoint][0], content, headers)

    async def _send(self, call: Call, upstream_request: httpx.Request) -> httpx.Response:
        assert call.upstream is not None
        try:
            return await call.upstream.client.send(upstream_request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(
                f"upstream {call.upstream.name} did not answer in time ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"upstream {call.upstream.name} is unreachable ({type(exc).__name__})"
            ) from None

    async def _relay_whole(self, request: Request, call: Call, reservation: Any) -> Response:
        upstream = call.upstream
        assert upstream is not None
        track = upstream.meter.open(call.request_id, call.model)
        upstream_request = self._upstream_request(request, call, request.state.raw_body)
        sent = time.perf_counter()
        try:
            response = await self._send(call, upstream_request)
            try:
                raw = await response.aread()
            except httpx.TimeoutException:
                raise UpstreamTimeout(f"upstream {upstream.name} did not finish in time") from None
            except httpx.HTTPError as exc:
                raise UpstreamUnavailable(
                    f"upstream {upstream.name} broke off its answer ({type(exc).__name__})"
                ) from None
            finally:
                await response.aclose()
        except ProxyError as error:
            call.upstream_s = time.perf_counter() - sent
            call.status, call.error = error.status_code, error.code
            await self._close_and_record(call, track, reservation)
            raise
        call.upstream_s = time.perf_counter() - sent
        call.status = response.status_code

        if response.status_code >= 400:
            # The upstream's own error goes back unchanged, status and body.
            call.error = f"upstream_{response.status_code}"
            await self._close_and_record(call, track, reservation)
            return Response(
                raw,
                status_code=response.status_code,
                media_type=response.headers.get("content-type", "application/json"),
                headers={"x-request-id": call.request_id},
            )
        try:
            answer = orjson.loads(raw)
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except (orjson.JSONDecodeError, ValueError):
            call.status, call.error = 502, "upstream_unavailable"
            await self._close_and_record(call, track, reservation)
            raise UpstreamUnavailable(
                f"upstream {upstream.name} answered something that is not JSON"
            ) from None
        self._take_usage(call, answer.get("usage"))
        call.response_model = answer.get("model") if isinstance(answer.get("model"), str) else None
        call.finish_reasons = _finish_reasons(answer)
        if call.completion_tokens == 0 and call.endpoint != "embeddings":
            call.completion_tokens = _count_whole_output(answer)
        if call.prompt_tokens == 0:
            await self._count_prompt(call)
        # No progress was visible while it ran, so the meter gives it the time share of each
        # tick (methodology §2); the totals go to close() only.
        footprint, remaining = await self._close_and_record(call, track, reservation)

        headers = self._footprint_headers(call, footprint, remaining)
        if self.settings.server.footprint_in_body and raw.rstrip().endswith(b"}"):
            member = orjson.dumps(self._footprint_object(call, footprint))
            body = raw.rstrip()
            joiner = b"," if body[:-1].rstrip() not in (b"{",) else b""
            raw = body[:-1] + joiner + b'"footprint":' + member + b"}"
        return Response(
            raw, status_code=response.status_code, media_type="application/json", headers=headers
        )

    async def _relay_stream(
        self, request: Request, call: Call, content: bytes, reservation: Any
    ) -> Response:
        upstream = call.upstream
        assert upstream is not None
        track = upstream.meter.open(call.request_id, call.model)
        upstream_request = self._upstream_request(request, call, content)
        sent = time.perf_counter()
        try:
            response = await self._send(call, upstream_request)
        except ProxyError as error:
            call.upstream_s = time.perf_counter() - sent
            call.status, call.error = error.status_code, error.code
            await self._close_and_record(call, track, reservation)
            raise
        call.status = response.status_code
        if response.status_code >= 400:
            try:
                raw = await response.aread()
            except httpx.HTTPError:
                raw = b""
            finally:
                await response.aclose()
            call.upstream_s = time.perf_counter() - sent
            call.error = f"upstream_{response.status_code}"
            await self._close_and_record(call, track, reservation)
            return Response(
                raw,
                status_code=response.status_code,
                media_type=response.headers.get("content-type", "application/json"),
                headers={"x-request-id": call.request_id},
            )
        method = "measured" if upstream.measuring else "estimated"
        headers = {
            "x-request-id": call.request_id,
            "x-footprint-method": method,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
        }
        return StreamingResponse(
            self._stream_events(call, track, response, sent, reservation),
            media_type="text/event-stream",
            headers=headers,
        )

    async def _stream_events(
        self,
        call: Call,
        track: RequestTrack,
        response: httpx.Response,
        sent: float,
        reservation: Any,
    ) -> AsyncIterator[bytes]:
        splitter = sse.SSESplitter()
        usage_seen = False
        finished = False
        held_usage_chunk: dict[str, Any] | None = None
        waited = 0.0  # time spent waiting on the upstream, for the proxy's own overhead
        try:
            chunks = response.aiter_raw()
            while True:
                wait_start = time.perf_counter()
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    waited += time.perf_counter() - wait_start
                    break
                waited += time.perf_counter() - wait_start
                # What one upstream read brought leaves in one write (one ASGI message).
                out: list[bytes] = []
                for event in splitter.feed(chunk):
                    data = sse.event_data(event)
                    if data is None:
                        out.append(event)  # upstream comments and pings pass through
                        continue
                    if data == sse.DONE:
                        finished = True
                        continue
                    try:
                        payload = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        out.append(event)
                        continue
                    if not isinstance(payload, dict):
                        out.append(event)
                        continue
                    if "error" in payload and "choices" not in payload:
                        call.error = "upstream_stream_error"
                        out.append(event)
                        continue
                    tokens = chunk_output_tokens(payload)
                    if tokens:
                        if call.first_chunk_s is None:
                            call.first_chunk_s = time.perf_counter() - call.started
                            track.first_token(approx_tokens(call.prompt_text))
                        call.completion_tokens += tokens
                        track.output_tokens(tokens)
                    _collect_finish(call, payload)
                    if call.response_model is None and isinstance(payload.get("model"), str):
                        call.response_model = payload["model"]
                    usage = payload.get("usage")
                    if isinstance(usage, dict) and usage:
                        usage_seen = True
                        counted = call.completion_tokens
                        self._take_usage(call, usage)
                        if not call.completion_tokens:
                            call.completion_tokens = counted
                        if not payload.get("choices"):
                            # The usage-only chunk: held until the footprint is known.
                            held_usage_chunk = payload
                            continue
                    out.append(event)
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
            if splitter.rest().strip():
                finished = False
            if not finished:
                call.cancelled = True
                call.error = call.error or "upstream_cut_off"
        except httpx.HTTPError as exc:
            # The upstream died mid-stream: end the client's stream cleanly, then record.
            call.cancelled = True
            call.error = "upstream_cut_off"
            finished = False
            log.warning("request %s: upstream broke off the stream: %s", call.request_id, exc)
        except BaseException:
            # The client went away (the ASGI server cancels us): stop the upstream at once,
            # and still meter and record what was done.
            call.cancelled = True
            call.error = call.error or "client_disconnected"
            call.status = 499
            with anyio.CancelScope(shield=True):
                await response.aclose()
                call.upstream_s = waited
                self._spawn(self._close_and_record(call, track, reservation))
            raise
        await response.aclose()
        call.upstream_s = waited

        if not usage_seen or call.prompt_tokens == 0:
            if not usage_seen:
                call.tokens_counted = True
            await self._count_prompt(call)
        footprint, _ = await self._close_and_record(call, track, reservation)
        footprint_object = self._footprint_object(call, footprint)

        tail: list[bytes] = []  # the closing events, in one write
        if call.cancelled:
            error = UpstreamUnavailable(
                f"upstream {call.upstream.name if call.upstream else ''} broke off the stream"
            )
            tail.append(error.sse_event())
        if call.client_wants_usage:
            final = held_usage_chunk or {
                "id": call.request_id,
                "object": "chat.completion.chunk"
                if call.endpoint == "chat.completions"
                else "text_completion",
                "created": int(call.received_at.timestamp()),
                "model": call.response_model or call.model,
                "choices": [],
            }
            final["usage"] = {
                "prompt_tokens": call.prompt_tokens,
                "completion_tokens": call.completion_tokens,
                "total_tokens": call.prompt_tokens + call.completion_tokens,
            }
            final["footprint"] = footprint_object
            tail.append(sse.data_event(final))
        tail.append(sse.comment_event("footprint", footprint_object))
        tail.append(sse.DONE_EVENT)
        yield b"".join(tail)

    # ---- finishing ---------------------------------------------------------------------

    async def _count_prompt(self, call: Call) -> None:
        upstream = call.upstream
        assert upstream is not None
        call.tokens_counted = True
        call.prompt_tokens, _how = await count_prompt_tokens(
            upstream.client, upstream.settings.tokenize_url, call.model, call.prompt_text
        )

    @staticmethod
    def _take_usage(call: Call, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt >= 0:
            call.prompt_tokens = prompt
        if isinstance(completion, int) and completion >= 0:
            call.completion_tokens = completion

    async def _footprint(self, upstream: Upstream, measurement: Measurement) -> Footprint:
        intensity = await self.services.intensity.get(upstream.site.zone)
        return compute_footprint(measurement, upstream.site, upstream.hardware, intensity)

    async def _close_and_record(
        self, call: Call, track: RequestTrack, reservation: Any
    ) -> tuple[Footprint, dict[str, float]]:
        """Close the meter, compute the footprint, make the ledger row durable, settle the
        budget. Runs once per request that reached an upstream, whatever its outcome."""
        upstream = call.upstream
        assert upstream is not None
        try:
            measurement = await track.close(
                prompt_tokens=call.prompt_tokens,
                output_tokens=call.completion_tokens,
                cancelled=call.cancelled,
                latency_s=time.perf_counter() - call.started,
            )
        except MeterError as exc:
            # Nothing measured it and nothing knows enough to estimate it (a model of unknown
            # size): say so instead of inventing a figure, and still serve the request.
            log.warning("request %s: no footprint: %s", call.request_id, exc)
            measurement = Measurement(0.0, 0.0, 0.0, "estimated", f"unavailable: {exc}")
        footprint = await self._footprint(upstream, measurement)
        duration_s = time.perf_counter() - call.started
        overhead_ms = max(0.0, (duration_s - call.upstream_s) * 1000.0)
        record = LedgerRecord(
            request_id=call.request_id,
            created_at=call.received_at,
            team=call.team,
            key_id=call.key_id,
            model=call.model,
            upstream=upstream.name,
            endpoint=call.endpoint,
            stream=call.stream,
            status=call.status,
            cancelled=call.cancelled,
            error=call.error,
            prompt_tokens=call.prompt_tokens,
            completion_tokens=call.completion_tokens,
            tokens_counted=call.tokens_counted,
            method=footprint.method,
            basis=footprint.basis,
            gpu_energy_j=footprint.gpu_energy_j,
            energy_j=footprint.energy_j,
            co2e_g=footprint.co2e_g,
            embodied_co2e_g=footprint.embodied_co2e_g,
            water_ml=footprint.water_ml,
            zone=footprint.zone,
            grid_gco2e_per_kwh=footprint.grid_gco2e_per_kwh,
            pue=footprint.pue,
            intensity_source=footprint.intensity_source,
            trace_id=call.trace_id,
            duration_ms=duration_s * 1000.0,
            overhead_ms=overhead_ms,
        )
        call.overhead_ms = overhead_ms
        await self.services.ledger.record(record)
        call.settled = True
        remaining = await self.services.budgets.settle(
            reservation,
            Usage(
                energy_j=footprint.energy_j,
                co2e_g=footprint.co2e_g,
                water_ml=footprint.water_ml,
                tokens=call.prompt_tokens + call.completion_tokens,
                requests=1,
            ),
        )
        if call.telemetry is not None:
            self.services.telemetry.end(call.telemetry, call, footprint)
        return footprint, remaining

    def _footprint_object(self, call: Call, footprint: Footprint) -> dict[str, Any]:
        obj = footprint_json(footprint, call.request_id, call.prompt_tokens, call.completion_tokens)
        obj["basis"] = footprint.basis
        if call.tokens_counted:
            obj["tokens_counted"] = True
        if call.cancelled:
            obj["cancelled"] = True
        return obj

    def _footprint_headers(
        self, call: Call, footprint: Footprint, remaining: Mapping[str, float]
    ) -> dict[str, str]:
        headers = {
            "x-request-id": call.request_id,
            "x-footprint-method": footprint.method,
            "x-footprint-gpu-energy-j": format_decimal(footprint.gpu_energy_j),
            "x-footprint-energy-j": format_decimal(footprint.energy_j),
            "x-footprint-co2e-g": format_decimal(footprint.co2e_g),
            "x-footprint-water-ml": format_decimal(footprint.water_ml),
            "x-footprint-zone": footprint.zone,
            "x-footprint-grid-gco2e-per-kwh": format_decimal(footprint.grid_gco2e_per_kwh),
            "x-footprint-overhead-ms": format_decimal(call.overhead_ms),
        }
        for metric, value in remaining.items():
            headers[f"x-footprint-budget-remaining-{metric}"] = format_decimal(value)
        return headers

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for records of cut-off requests still being written (at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)


def _max_tokens(body: Mapping[str, Any], default: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _finish_reasons(answer: Mapping[str, Any]) -> list[str]:
    reasons: list[str] = []
    choices = answer.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict) and isinstance(choice.get("finish_reason"), str):
                reasons.append(choice["finish_reason"])
    return reasons


def _collect_finish(call: Call, chunk: Mapping[str, Any]) -> None:
    call.finish_reasons.extend(_finish_reasons(chunk))


def _count_whole_output(answer: Mapping[str, Any]) -> int:
    text_parts: list[str] = []
    choices = answer.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            message = choice.get("message")
            if isinstance(message, dict) and isinstance(message.get("content"), str):
                text_parts.append(message["content"])
            elif isinstance(choice.get("text"), str):
                text_parts.append(choice["text"])
    return approx_tokens("".join(text_parts))
