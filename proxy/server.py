"""The HTTP server's own limits, enforced where the bytes arrive (uvicorn's httptools
protocol), before any of it reaches the app; and its own refusals in OpenAI's error shape
(uvicorn answers an unparseable request with plain text):

- `server.max_header_bytes`: the request line and headers together. httptools buffers
  headers without bound (a 30 MB `x-request-id` was accepted, echoed, forwarded and stored);
  past the limit the connection gets a 431 in OpenAI's error shape and is closed.
- `server.body_read_timeout_s`: from the end of the headers to the end of the body. Without it
  a client sending its body a byte at a time held its connection (and a request task) for as
  long as it liked; past the limit it gets a 408 (if nothing was answered yet) and is closed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.config import ServerSettings
from proxy.errors import InvalidRequest

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
}


class _HeadersTooLarge(Exception):
    pass


def _error_response(status: int, message: str, code: str) -> bytes:
    body = orjson.dumps(InvalidRequest(message, code=code).body())
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
    )
    return head + body


def limited_protocol(settings: ServerSettings) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `settings`' header size and body time limits."""
    max_header_bytes = settings.max_header_bytes
    body_timeout_s = settings.body_read_timeout_s

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_bytes = 0
            self._headers_too_large = False
            self._body_deadline: asyncio.TimerHandle | None = None

        def _count(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > max_header_bytes:
                self._headers_too_large = True
                raise _HeadersTooLarge  # httptools stops parsing: see send_400_response

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def send_400_response(self, msg: str) -> None:
            # uvicorn's own answer is plain text; every error is in OpenAI's shape.
            if self._headers_too_large:
                response = _error_response(
                    431,
                    f"request headers are over the limit of {max_header_bytes} bytes",
                    "headers_too_large",
                )
            else:
                response = _error_response(400, f"not a valid HTTP request: {msg}", "bad_request")
            self.transport.write(response)
            self.transport.close()

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._cancel_deadline()
            self._body_deadline = self.loop.call_later(body_timeout_s, self._body_too_slow)

        def on_message_complete(self) -> None:
            self._cancel_deadline()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            super().connection_lost(exc)

        def _cancel_deadline(self) -> None:
            if self._body_deadline is not None:
                self._body_deadline.cancel()
                self._body_deadline = None

        def _body_too_slow(self) -> None:
            self._body_deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is None or not cycle.response_started:
                self.transport.write(
                    _error_response(
                        408,
                        f"the request body did not arrive within {body_timeout_s:g} s",
                        "request_timeout",
                    )
                )
            self.transport.close()

    return LimitedHttpToolsProtocol
