"""Intake: the client's body read within the size limit and parsed as one JSON object."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.requests import Request

from proxy.errors import InvalidRequest, RequestTooLarge


async def read_json(
    request: Request, limit: int, headers: Mapping[str, str] | None = None
) -> tuple[bytes, dict[str, Any]]:
    """The raw body (at most `limit` bytes) and the JSON object it holds; `headers`: the
    request's, when already read (else `request.headers`)."""
    declared = (request.headers if headers is None else headers).get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    # The ASGI messages read here rather than through `request.stream()`: an async generator
    # per request, which asyncio registers as it starts, cost more than the reading.
    receive = request.receive
    while True:
        message = await receive()
        if message["type"] != "http.request":  # "http.disconnect"
            raise InvalidRequest("the client went away before sending its body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return raw, body
