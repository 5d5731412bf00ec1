"""The upstream client on aiohttp's pool, against real sockets: what the relay sees for each
way an upstream can fail, bodies streamed as they arrive, connections pooled and closed."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import orjson
import pytest

from proxy.config import UpstreamSettings
from proxy.transport import Timeouts, UpstreamClient, UpstreamFailure, UpstreamTimedOut
from proxy.upstreams import build_client
from tests.support.servers import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# Bounds on how long a test waits for something that should happen at once: generous, so a
# loaded machine cannot fail them; a broken transport hangs until them and fails.
PATIENCE_S = 10.0


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 whose connections `handler` answers byte by byte."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return head + body


@asynccontextmanager
async def client(
    url: str,
    *,
    connect_s: float = 5.0,
    read_s: float = 5.0,
    max_connections: int = 10,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[UpstreamClient]:
    http = UpstreamClient(
        url,
        headers=headers or {},
        timeouts=Timeouts(connect_s=connect_s, read_s=read_s),
        max_connections=max_connections,
        keepalive_expiry_s=5.0,
    )
    try:
        yield http
    finally:
        await http.aclose()


async def post(http: UpstreamClient, path: str, content: bytes = b"{}") -> tuple[int, bytes]:
    """Send a POST and read its whole answer."""
    response = await http.send(http.request("POST", path, content=content))
    return response.status_code, await response.read()


async def test_refused_connection_is_connect_error() -> None:
    async with client(f"http://127.0.0.1:{free_port()}") as http:
        with pytest.raises(UpstreamFailure) as failed:
            await post(http, "/v1/chat/completions")
    assert failed.value.kind == "ConnectError"
    assert not isinstance(failed.value, UpstreamTimedOut)


@contextmanager
def full_backlog() -> Iterator[str]:
    """A port whose listen queue is full: a new connection's SYN is dropped, so connecting
    hangs until the client's connect timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        filler.close()
        listener.close()


async def test_connect_timeout_is_connect_timeout() -> None:
    with full_backlog() as url:
        async with client(url, connect_s=0.2) as http:
            with pytest.raises(UpstreamTimedOut) as failed:
                await http.get("/v1/models", timeout_s=0.2)
    assert failed.value.kind == "ConnectTimeout"


async def test_server_that_never_answers_is_read_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await reader.read()  # until the client gives up and closes
        writer.close()

    async with raw_server(silent) as url, client(url, read_s=0.2) as http:
        with pytest.raises(UpstreamTimedOut) as failed:
            await post(http, "/v1/chat/completions")
    assert failed.value.kind == "ReadTimeout"


async def test_server_silent_mid_body_is_read_timeout() -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        await writer.drain()
        await reader.read()
        writer.close()

    async with raw_server(stalls) as url, client(url, read_s=0.2) as http:
        response = await http.send(http.request("POST", "/v1/completions", content=b"{}"))
        assert response.status_code == 200
        with pytest.raises(UpstreamTimedOut) as failed:
            await response.read()
    assert failed.value.kind == "ReadTimeout"


async def test_server_closing_before_answering_is_remote_protocol_error() -> None:
    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.close()

    async with raw_server(hangs_up) as url, client(url) as http:
        with pytest.raises(UpstreamFailure) as failed:
            await post(http, "/v1/chat/completions")
    assert failed.value.kind == "RemoteProtocolError"


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"content-length: 1000\r\n\r\n" + b"x" * 10, id="short-body"),
        pytest.param(b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n", id="unended-chunks"),
    ],
)
async def test_server_dying_mid_stream_is_a_protocol_or_read_error(answer: bytes) -> None:
    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" + answer)
        await writer.drain()
        writer.close()

    async with raw_server(dies) as url, client(url) as http:
        response = await http.send(http.request("POST", "/v1/chat/completions", content=b"{}"))
        assert response.status_code == 200
        with pytest.raises(UpstreamFailure) as failed:
            while await response.next_chunk():
                pass
        await response.aclose()
    assert failed.value.kind in ("RemoteProtocolError", "ReadError")


async def test_stream_chunks_arrive_before_the_next_is_sent() -> None:
    """The server sends its next event only once the client has the previous one: a
    transport that held bytes back would hang here."""
    received: list[asyncio.Event] = [asyncio.Event() for _ in range(3)]

    async def events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for i, seen in enumerate(received):
            event = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await seen.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    async with raw_server(events) as url, client(url) as http:
        response = await http.send(http.request("POST", "/v1/chat/completions", content=b"{}"))
        for i, seen in enumerate(received):
            got = await asyncio.wait_for(response.next_chunk(), PATIENCE_S)
            assert got == b"data: %d\n\n" % i
            seen.set()
        assert await response.next_chunk() == b""  # the end, nothing after it
        await response.aclose()


async def test_cut_short_stream_closes_the_upstream_connection() -> None:
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        writer.write(b"9\r\ndata: 0\n\n\r\n")
        await writer.drain()
        assert await reader.read() == b""  # the client closed the connection
        closed.set()
        writer.close()

    async with raw_server(endless) as url, client(url) as http:
        response = await http.send(http.request("POST", "/v1/chat/completions", content=b"{}"))
        assert await response.next_chunk() == b"data: 0\n\n"
        await response.aclose()  # cut short
        await asyncio.wait_for(closed.wait(), PATIENCE_S)


async def test_cancelled_request_closes_the_upstream_connection() -> None:
    """A task cancelled while waiting for the answer (a client that went away) leaves no
    connection open behind it."""
    arrived, closed = asyncio.Event(), asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        arrived.set()
        assert await reader.read() == b""
        closed.set()
        writer.close()

    async with raw_server(slow) as url, client(url) as http:
        task = asyncio.create_task(post(http, "/v1/chat/completions"))
        await asyncio.wait_for(arrived.wait(), PATIENCE_S)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), PATIENCE_S)


async def test_answers_reuse_one_connection_and_send_only_the_given_headers() -> None:
    connections: list[list[bytes]] = []

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests: list[bytes] = []
        connections.append(requests)
        while True:
            try:
                request = await read_head(reader)
            except asyncio.IncompleteReadError:
                break
            requests.append(request)
            body = gzip.compress(orjson.dumps({"n": len(requests)}))
            writer.write(
                b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n"
                b"content-encoding: gzip\r\nx-twice: a\r\nx-twice: b\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        writer.close()

    async with raw_server(keep_alive) as url, client(url, headers={"Authorization": "k"}) as http:
        first = await http.send(
            http.request("POST", "/v1/embeddings", content=b'{"a":1}', query="x=%2F")
        )
        first_body = await first.read()
        second = await http.send(http.request("POST", "/v1/embeddings", content=b'{"a":2}'))
        second_body = await second.read()

    assert first.status_code == 201
    assert orjson.loads(first_body) == {"n": 1} and orjson.loads(second_body) == {"n": 2}
    assert first.headers["x-twice"] == "a, b"  # one name, its values in order
    assert first.headers["content-type"] == "application/json"  # names in lower case
    assert len(connections) == 1 and len(connections[0]) == 2
    head, _, body = connections[0][0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/embeddings?x=%2F HTTP/1.1"
    sent = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    assert sent[b"authorization"] == b"k"
    assert sent[b"user-agent"].startswith(b"footprint/")  # the proxy's, not aiohttp's
    assert b"content-type" not in sent and b"accept" not in sent  # none given, none invented
    assert body == b'{"a":1}'


async def test_max_connections_bounds_the_pool() -> None:
    """With one connection allowed and it busy, a second request waits for it and times out
    (a timeout: the relay's 504)."""
    started = asyncio.Event()

    async def holds(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        started.set()
        await reader.read()
        writer.close()

    async with raw_server(holds) as url, client(url, connect_s=0.1, max_connections=1) as http:
        first = asyncio.create_task(post(http, "/v1/completions"))
        await asyncio.wait_for(started.wait(), PATIENCE_S)
        with pytest.raises(UpstreamTimedOut):
            await post(http, "/v1/completions")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_upstream_client_sends_no_cookie_an_upstream_set() -> None:
    """build_client's client keeps no cookies: one caller's
    Set-Cookie from the upstream must never reach the upstream again with another caller."""
    cookies_sent: list[bytes | None] = []

    async def sets_cookie(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_head(reader)
            except asyncio.IncompleteReadError:
                break
            lines = request.partition(b"\r\n\r\n")[0].split(b"\r\n")
            found = [
                line.partition(b":")[2].strip()
                for line in lines
                if line.lower().startswith(b"cookie:")
            ]
            cookies_sent.append(found[0] if found else None)
            writer.write(
                b"HTTP/1.1 200 OK\r\nset-cookie: session=caller-a; Path=/\r\n"
                b"content-length: 2\r\n\r\n{}"
            )
            await writer.drain()
        writer.close()

    async with raw_server(sets_cookie) as url:
        settings = UpstreamSettings(name="u", base_url=f"{url}/v1", models=["*"])
        http = build_client(settings)
        try:
            for _ in range(2):
                assert (await post(http, "/chat/completions"))[0] == 200
        finally:
            await http.aclose()
    assert cookies_sent == [None, None]
