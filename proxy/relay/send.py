"""Send: the request the upstream gets, sending it, reading a whole answer back, and the
upstream's failures as the proxy's errors (504 when too slow, 502 for the rest)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from proxy.errors import UpstreamTimeout, UpstreamUnavailable
from proxy.relay.facts import Endpoint
from proxy.transport import UpstreamFailure, UpstreamRequest, UpstreamResponse, UpstreamTimedOut
from proxy.upstreams import Upstream

# Request headers carried on to the upstream. Authorization is never among them: the
# upstream gets the proxy's own credential, from its client.
FORWARDED_HEADERS = ("traceparent", "tracestate", "baggage", "user-agent", "accept-language")

# Upstream response headers not passed back: hop-by-hop ones (RFC 9110 §7.6.1), those that
# describe the bytes as the upstream sent them (the proxy decodes and may add a member), the
# ones the ASGI server writes itself, cookies of the proxy's own upstream session, and the
# ones Footprint owns (`x-request-id`, `x-footprint-*`).
_NOT_PASSED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "content-type",
        "date",
        "server",
        "set-cookie",
        "x-request-id",
    }
)


def upstream_headers(
    incoming: Mapping[str, str], spec: Endpoint, upstream: Upstream, request_id: str
) -> dict[str, str]:
    """The headers the upstream gets from the client's request: the one place they are made
    (the trace headers are written after this, by telemetry)."""
    # identity: the answer is parsed on the way, so it must not come compressed (one that
    # does anyway is decoded as it is read).
    headers = {"content-type": "application/json", "accept-encoding": "identity"}
    if upstream.settings.forward_request_id:
        headers["x-request-id"] = request_id
    for name in (*FORWARDED_HEADERS, *spec.forwarded_headers):
        value = incoming.get(name)
        # Only what can be sent as it came: a value with bytes outside visible ASCII (which
        # the upstream client would refuse to encode) is not carried on.
        if value is not None and value.isascii() and value.isprintable():
            headers[name] = value
    return headers


async def send(upstream: Upstream, request: UpstreamRequest) -> UpstreamResponse:
    """Send `request`; the response's body is left to stream."""
    try:
        return await upstream.client.send(request)
    except UpstreamTimedOut as exc:
        raise UpstreamTimeout(
            f"upstream {upstream.name} did not answer in time ({exc.kind})"
        ) from None
    except UpstreamFailure as exc:
        raise UpstreamUnavailable(f"upstream {upstream.name} is unreachable ({exc.kind})") from None


async def read_whole(upstream: Upstream, response: UpstreamResponse) -> bytes:
    """The whole body of `response` (at most `max_response_bytes`), which is closed after."""
    limit = upstream.settings.max_response_bytes
    too_large = UpstreamUnavailable(
        f"upstream {upstream.name} answered more than the limit of {limit} bytes "
        "(upstreams.max_response_bytes)"
    )
    declared = response.headers.get("content-length", "")
    try:
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while chunk := await response.next_chunk():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except UpstreamTimedOut:
        raise UpstreamTimeout(f"upstream {upstream.name} did not finish in time") from None
    except UpstreamFailure as exc:
        raise UpstreamUnavailable(
            f"upstream {upstream.name} broke off its answer ({exc.kind})"
        ) from None
    finally:
        await response.aclose()


async def read_error(upstream: Upstream, response: UpstreamResponse) -> bytes:
    """An upstream error's body, as much of it as arrives (up to `max_response_bytes`)."""
    limit = upstream.settings.max_response_bytes
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await response.next_chunk():
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except UpstreamFailure:
        pass
    finally:
        await response.aclose()
    return b"".join(chunks)[:limit]


def passed_headers(upstream: Upstream, response: UpstreamResponse) -> dict[str, str]:
    """The upstream's response headers the client gets too (`retry-after`, `x-ratelimit-*`,
    `openai-processing-ms`, `x-should-retry`, …): all but `_NOT_PASSED`, those the upstream's
    `Connection` header names, and `x-footprint-*`; any that echoes the upstream's credential
    has it cut out."""
    named = {token.strip().lower() for token in response.headers.get("connection", "").split(",")}
    return {
        name: upstream.redact_text(value)
        for name, value in response.headers.items()
        if name not in _NOT_PASSED and name not in named and not name.startswith("x-footprint-")
    }


def passed_on(
    upstream: Upstream, response: UpstreamResponse, raw: bytes, request_id: str
) -> Response:
    """The upstream's answer (its own error, or a stored response), passed back with its
    status, headers and (decoded) body unchanged, less the upstream's credential should the
    body or a header echo it."""
    return Response(
        upstream.redact(raw),
        status_code=response.status_code,
        media_type=response.headers.get("content-type", "application/json"),
        headers={**passed_headers(upstream, response), "x-request-id": request_id},
    )
