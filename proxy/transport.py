"""httpx over aiohttp's connection pool: the one module that imports aiohttp.

httpx's own pool (httpcore) walks every pooled connection and polls its socket on each
request that enters or leaves the pool; at 32 connections that was the largest single cost
of a relayed request (bench/README.md). aiohttp's `TCPConnector` keeps idle connections in
a per-host list and hands one out without a syscall. httpx stays the relay's API: this
transport only moves bytes, and every aiohttp failure leaves as the httpx exception httpcore
would have raised for it, so the relay's answers (504 on a timeout, 502 on the rest, a clean
error event for a stream cut off) are unchanged.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx
import yarl

__all__ = ["AiohttpTransport"]

# aiohttp failure → the httpx exception httpcore raises for the same event. Most specific
# first: the first entry the exception is an instance of wins.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    # Waiting for a pooled connection or opening one took too long.
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    # No byte from the upstream within the read timeout (headers or body).
    (aiohttp.SocketTimeoutError, httpx.ReadTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    # Refused, unreachable, name not resolved, TLS handshake failed.
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    # The upstream closed the connection before or while answering.
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    # Reset by peer while sending the request.
    (aiohttp.ClientConnectionResetError, httpx.WriteError),
    (aiohttp.ClientOSError, httpx.ReadError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ClientError, httpx.NetworkError),
    # A bare timeout from aiohttp's own timers, should one escape unwrapped.
    (TimeoutError, httpx.ReadTimeout),
)

# aiohttp would add its own Accept, Accept-Encoding, User-Agent and Content-Type where httpx
# set none; httpx's request already says exactly what to send.
_MAX_HEADER_BYTES = 64 * 1024

_NO_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


def translate_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception standing for aiohttp's `exc` (see `_ERRORS`)."""
    for source, target in _ERRORS:
        if isinstance(exc, source):
            return target(str(exc) or type(exc).__name__, request=request)
    return httpx.TransportError(str(exc) or type(exc).__name__, request=request)


class _ResponseBody(httpx.AsyncByteStream):
    """An aiohttp response body as httpx reads it: each chunk as soon as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            # iter_any(): whatever bytes have arrived, without waiting for a size or a line,
            # so a server-sent event is relayed the moment it lands.
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate_error(exc, self._request) from exc

    async def aclose(self) -> None:
        # Read to the end: the connection goes back to the pool. Cut short (the client went
        # away, an error): close the connection, so the upstream sees the cancel at once.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request on aiohttp's connection pool.

    `limits.max_connections` bounds the pool (None: unbounded) and `limits.keepalive_expiry`
    is how long an idle connection is kept. Timeouts are httpx's, per request (the client's
    `Timeout` or a call's own): `connect` for opening a connection, `pool` for waiting for
    one, `read` between two reads. Response bodies are not decompressed here (httpx does it
    when asked, as with its own transport). The aiohttp session is built on the first
    request, inside the event loop that will use it.
    """

    def __init__(
        self,
        limits: httpx.Limits | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limits = limits or httpx.Limits()
        # The same verification as httpx's own transport (certifi, SSL_CERT_FILE); made here,
        # at start, rather than on the first request (loading the CA bundle takes a while).
        self._ssl_context = ssl_context or httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        expiry_s = self._limits.keepalive_expiry
        connector = (
            # No keep-alive at all: a new connection per request, closed after it.
            aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0, force_close=True, ssl=self._ssl_context
            )
            if expiry_s == 0
            else aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=expiry_s,  # None: kept until the upstream closes it
                ssl=self._ssl_context,
            )
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            # Cookies would leak state from one client's request into another's.
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            # Header lines as long as httpcore (h11) takes; aiohttp's default is 8 KiB.
            max_line_size=_MAX_HEADER_BYTES,
            max_field_size=_MAX_HEADER_BYTES,
        )

    def _timeout(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        given = request.extensions.get("timeout") or {}
        connect, pool, read = given.get("connect"), given.get("pool"), given.get("read")
        key = (connect, pool, read)
        timeout = self._timeouts.get(key)
        if timeout is None:
            # aiohttp's `connect` spans the wait for a pooled connection and opening a new
            # one; `sock_connect` the opening alone.
            waiting = None if connect is None or pool is None else connect + pool
            timeout = aiohttp.ClientTimeout(
                total=None, connect=waiting, sock_connect=connect, sock_read=read
            )
            self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session
        if session is None:
            session = self._session = self._open()
        body = await request.aread()
        try:
            response = await session.request(
                request.method,
                # httpx has already percent-encoded the URL: sent as it is.
                yarl.URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                compress=None,
                timeout=self._timeout(request),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise translate_error(exc, request) from exc
        return httpx.Response(
            response.status,
            headers=response.raw_headers,
            stream=_ResponseBody(response, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
