"""Send: the request the upstream gets, sending it, reading a whole answer back, and the
upstream's failures as the proxy's errors (504 when too slow, 502 for the rest)."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from starlette.responses import Response

from proxy.errors import UpstreamTimeout, UpstreamUnavailable
from proxy.upstreams import Upstream

# Request headers carried on to the upstream. Authorization is never among them: the
# upstream gets the proxy's own credential, from its client.
FORWARDED_HEADERS = ("traceparent", "tracestate", "baggage", "user-agent", "accept-language")


def upstream_headers(
    incoming: Mapping[str, str], upstream: Upstream, request_id: str
) -> dict[str, str]:
    """The headers the upstream gets from the client's request: the one place they are made
    (the trace headers are written after this, by telemetry)."""
    headers = {"content-type": "application/json"}
    if upstream.settings.forward_request_id:
        headers["x-request-id"] = request_id
    for name in FORWARDED_HEADERS:
        value = incoming.get(name)
        if value is not None:
            headers[name] = value
    return headers


async def send(upstream: Upstream, request: httpx.Request) -> httpx.Response:
    """Send `request`; the response's body is left to stream."""
    try:
        return await upstream.client.send(request, stream=True)
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(
            f"upstream {upstream.name} did not answer in time ({type(exc).__name__})"
        ) from None
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(
            f"upstream {upstream.name} is unreachable ({type(exc).__name__})"
        ) from None


async def read_whole(upstream: Upstream, response: httpx.Response) -> bytes:
    """The whole body of `response`, which is closed after."""
    try:
        return await response.aread()
    except httpx.TimeoutException:
        raise UpstreamTimeout(f"upstream {upstream.name} did not finish in time") from None
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(
            f"upstream {upstream.name} broke off its answer ({type(exc).__name__})"
        ) from None
    finally:
        await response.aclose()


async def read_error(response: httpx.Response) -> bytes:
    """An upstream error's body, as much of it as arrives."""
    try:
        return await response.aread()
    except httpx.HTTPError:
        return b""
    finally:
        await response.aclose()


def passed_error(response: httpx.Response, raw: bytes, request_id: str) -> Response:
    """The upstream's own error, passed back with its status and body unchanged."""
    return Response(
        raw,
        status_code=response.status_code,
        media_type=response.headers.get("content-type", "application/json"),
        headers={"x-request-id": request_id},
    )
