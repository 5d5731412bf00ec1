"""The upstream HTTP client: aiohttp's connection pool, used directly (the one module that
imports aiohttp).

The relay's requests used to go through httpx on a transport over this same pool; measured
side by side (bench/README.md, issue 17), the httpx layer cost more CPU per request than the
pool and the HTTP parsing under it (a bare pass-through: 0.65 ms per request with httpx on
top, 0.26 ms without). So the relay speaks to this module only: a request is built once
(`UpstreamClient.request`), sent (`send`), and its body read as it arrives
(`UpstreamResponse.chunks`).

Every failure leaves as an `UpstreamFailure` named after the event, as httpcore would have
named it (`ConnectError`, `ConnectTimeout`, `ReadTimeout`, `RemoteProtocolError`, …), so the
relay's answers (504 on a timeout, 502 on the rest, a clean error event for a stream cut off)
and its log lines say what they said before.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
import certifi
import yarl

from proxy import version

__all__ = [
    "Timeouts",
    "UpstreamClient",
    "UpstreamFailure",
    "UpstreamRequest",
    "UpstreamResponse",
    "UpstreamTimedOut",
]


class UpstreamFailure(Exception):
    """The upstream could not be reached, or broke off its answer. `kind` names the event
    (httpcore's names: "ConnectError", "RemoteProtocolError", "ReadError", …)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class UpstreamTimedOut(UpstreamFailure):
    """No connection, or no byte of the answer, within the timeout."""


# aiohttp failure → the event's name and whether it is a timeout. Most specific first: the
# first entry the exception is an instance of wins.
_FAILURES: tuple[tuple[type[BaseException], str, bool], ...] = (
    # Waiting for a pooled connection or opening one took too long.
    (aiohttp.ConnectionTimeoutError, "ConnectTimeout", True),
    # No byte from the upstream within the read timeout (headers or body).
    (aiohttp.SocketTimeoutError, "ReadTimeout", True),
    (aiohttp.ServerTimeoutError, "ReadTimeout", True),
    # Refused, unreachable, name not resolved, TLS handshake failed.
    (aiohttp.ClientConnectorError, "ConnectError", False),
    # The upstream closed the connection before or while answering.
    (aiohttp.ServerDisconnectedError, "RemoteProtocolError", False),
    (aiohttp.ClientPayloadError, "RemoteProtocolError", False),
    (aiohttp.ClientResponseError, "RemoteProtocolError", False),
    # Reset by peer while sending the request.
    (aiohttp.ClientConnectionResetError, "WriteError", False),
    (aiohttp.ClientOSError, "ReadError", False),
    (aiohttp.InvalidURL, "UnsupportedProtocol", False),
    (aiohttp.ClientError, "NetworkError", False),
    # A bare timeout from aiohttp's own timers, should one escape unwrapped.
    (TimeoutError, "ReadTimeout", True),
)

# What the upstream sees when the client's request named no user agent.
_USER_AGENT = f"footprint/{version()}"

# aiohttp would add its own Accept, Accept-Encoding, User-Agent and Content-Type where a
# request set none; the relay says exactly what to send.
_NO_AUTO_HEADERS = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})

# Header lines as long as httpcore (h11) took; aiohttp's default is 8 KiB.
_MAX_HEADER_BYTES = 64 * 1024


def failure(exc: BaseException) -> UpstreamFailure:
    """The `UpstreamFailure` standing for aiohttp's `exc` (see `_FAILURES`)."""
    detail = str(exc)
    for source, kind, timed_out in _FAILURES:
        if isinstance(exc, source):
            return UpstreamTimedOut(kind, detail) if timed_out else UpstreamFailure(kind, detail)
    return UpstreamFailure("NetworkError", detail or type(exc).__name__)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """`connect_s`: to open a connection, and again to wait for a pooled one; `read_s`:
    between two reads of the answer. None: no limit."""

    connect_s: float | None
    read_s: float | None

    def client_timeout(self) -> aiohttp.ClientTimeout:
        # aiohttp's `connect` spans the wait for a pooled connection and opening a new one;
        # `sock_connect` the opening alone.
        connect = self.connect_s
        return aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None else 2 * connect,
            sock_connect=connect,
            sock_read=self.read_s,
        )


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request as it will be sent: made by `UpstreamClient.request`, sent by `send`."""

    method: str
    url: yarl.URL
    headers: dict[str, str]
    content: bytes | None
    timeout: aiohttp.ClientTimeout


class UpstreamResponse:
    """An answer whose body is read as it arrives. `headers`: lower-case names, a name sent
    twice joined with ", " (RFC 9110 §5.3), values as the bytes came (latin-1)."""

    __slots__ = ("_response", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        headers: dict[str, str] = {}
        for raw_name, raw_value in response.raw_headers:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers

    async def next_chunk(self) -> bytes:
        """The next piece of the body (decoded, should the upstream compress it anyway) as
        soon as it arrives, so a server-sent event is relayed the moment it lands; b"" at the
        end. (A coroutine, not an async generator: asyncio registers every async generator
        as it starts, which costs more than reading a small answer.)"""
        try:
            return await self._response.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise failure(exc) from exc

    async def read(self) -> bytes:
        """The whole body; the response is closed after."""
        try:
            parts = []
            while chunk := await self.next_chunk():
                parts.append(chunk)
            return b"".join(parts)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Read to the end: the connection goes back to the pool. Cut short (the client went
        away, an error): the connection is closed, so the upstream sees the cancel at once."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class UpstreamClient:
    """One upstream's pool of connections: at most `max_connections` (None: unbounded), an
    idle one kept `keepalive_expiry_s` (0: none kept; None: until the upstream closes it).
    `headers` go on every request (the upstream's credential), under the request's own. No
    cookies are kept: what an upstream sets in answer to one caller is never sent on for the
    next. Redirects are not followed. The aiohttp session is made on the first request,
    inside the event loop that will use it."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        max_connections: int | None,
        keepalive_expiry_s: float | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"user-agent": _USER_AGENT, **{k.lower(): v for k, v in headers.items()}}
        self._timeout = timeouts.client_timeout()
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        # Made at start, not on the first request (loading the bundle takes a while).
        self._ssl_context = ssl_context or _ssl_context()
        self._urls: dict[str, yarl.URL] = {}
        self._session: aiohttp.ClientSession | None = None

    def credential(self) -> str:
        """The Authorization header this client sends ("" when none)."""
        return self._headers.get("authorization", "")

    def url(self, path: str) -> yarl.URL:
        """`path` under the base URL (an absolute URL stays as it is), worked out once."""
        url = self._urls.get(path)
        if url is None:
            text = path if "://" in path else self.base_url + "/" + path.lstrip("/")
            url = self._urls[path] = yarl.URL(text, encoded=True)
        return url

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        query: str = "",
        timeout_s: float | None = None,
    ) -> UpstreamRequest:
        """A request to `path` (a raw, already encoded `query` appended) with the client's
        headers, then `headers`; `timeout_s` in place of the client's timeouts."""
        url = self.url(path)
        if query:
            url = yarl.URL(f"{url}?{query}", encoded=True)
        merged = self._headers.copy()
        if headers:
            merged.update(headers)
        return UpstreamRequest(method, url, merged, content, self._timeout_of(timeout_s))

    def _timeout_of(self, timeout_s: float | None) -> aiohttp.ClientTimeout:
        if timeout_s is None:
            return self._timeout
        timeout = self._timeouts.get(timeout_s)
        if timeout is None:
            timeout = self._timeouts[timeout_s] = Timeouts(timeout_s, timeout_s).client_timeout()
        return timeout

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send `request`; the answer's body is left to read. Raises `UpstreamFailure`."""
        session = self._session
        if session is None:
            session = self._session = self._open()
        try:
            response = await session.request(
                request.method,
                request.url,
                headers=request.headers,
                data=request.content,
                allow_redirects=False,
                compress=None,
                timeout=request.timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise failure(exc) from exc
        return UpstreamResponse(response)

    async def get(self, path: str, *, timeout_s: float) -> UpstreamResponse:
        """A GET of `path` (health checks, `/models`)."""
        return await self.send(self.request("GET", path, timeout_s=timeout_s))

    def _open(self) -> aiohttp.ClientSession:
        limit = self._max_connections or 0
        connector = (
            # No keep-alive at all: a new connection per request, closed after it.
            aiohttp.TCPConnector(limit=limit, force_close=True, ssl=self._ssl_context)
            if self._keepalive_expiry_s == 0
            else aiohttp.TCPConnector(
                limit=limit, keepalive_timeout=self._keepalive_expiry_s, ssl=self._ssl_context
            )
        )
        return aiohttp.ClientSession(
            connector=connector,
            skip_auto_headers=_NO_AUTO_HEADERS,
            # Cookies would leak state from one client's request into another's.
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            max_line_size=_MAX_HEADER_BYTES,
            max_field_size=_MAX_HEADER_BYTES,
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _ssl_context() -> ssl.SSLContext:
    """httpx's default verification: certifi's bundle, or SSL_CERT_FILE / SSL_CERT_DIR instead
    when set (the system store is not loaded besides)."""
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return ssl.create_default_context(cafile=certifi.where())
