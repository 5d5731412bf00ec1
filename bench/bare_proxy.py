"""The Python floor: a bare OpenAI pass-through on Footprint's stack (Starlette + httpx under
uvicorn), no metering, no auth, no ledger. Whatever Footprint costs beyond this is ours.

Run: python bench/bare_proxy.py --upstream http://127.0.0.1:9100/v1 --port 9201 [--client C]
`--client httpx` (default, Footprint's client), `aiohttp` (httpx on aiohttp's transport from the
`httpx-aiohttp` package, as LiteLLM does), `httpx2` (pydantic's fork, with a linear pool),
`ours` (Footprint's own upstream client, `proxy/transport.py`: aiohttp's pool used directly,
what Footprint runs since issue 17), `raw-aiohttp` (aiohttp's client alone, none of ours) or
`pyreqwest` (Rust's reqwest under asyncio: issue 17's other candidate).
"""

import argparse
import contextlib
import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

_KEEP = ("content-type", "x-request-id")
_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def _app(relay: Callable[[Request], Awaitable[Response]], lifespan: Any) -> Starlette:
    """The pass-through's app: `relay` on each relayed path."""
    return Starlette(routes=[Route(p, relay, methods=["POST"]) for p in _PATHS], lifespan=lifespan)


def _passed_on(
    content_type: str,
    status: int,
    kept: dict[str, str],
    chunks: Callable[[], AsyncIterator[bytes]],
    close: Callable[[], Awaitable[object]],
) -> StreamingResponse | None:
    """A stream's answer, relayed as its chunks come and closed after; None for a whole one."""
    if not content_type.startswith("text/event-stream"):
        return None
    return StreamingResponse(chunks(), status, kept, background=BackgroundTask(close))


def build_raw_aiohttp_app(upstream: str) -> Starlette:
    """The same pass-through on aiohttp's client alone."""
    import aiohttp

    session: list[aiohttp.ClientSession] = []

    async def relay(request: Request) -> Response:
        body = await request.body()
        answer = await session[0].post(
            upstream + request.url.path.removeprefix("/v1"),
            data=body,
            headers={"content-type": "application/json"},
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() in _KEEP}
        ctype = answer.headers.get("content-type", "")

        async def release() -> None:
            answer.release()

        streamed = _passed_on(ctype, answer.status, kept, answer.content.iter_any, release)
        return streamed or Response(await answer.read(), answer.status, kept)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=256)
        session.append(aiohttp.ClientSession(connector=connector, auto_decompress=False))
        yield
        await session[0].close()

    return _app(relay, lifespan)


def build_pyreqwest_app(upstream: str) -> Starlette:
    """The same pass-through on pyreqwest (Rust's reqwest under asyncio): issue 17's candidate."""
    from pyreqwest.client import ClientBuilder

    clients: list[object] = []

    async def relay(request: Request) -> Response:
        body = await request.body()
        client = clients[0]
        builder = client.post(upstream + request.url.path.removeprefix("/v1"))  # type: ignore[attr-defined]
        builder = builder.header("content-type", "application/json").body_bytes(body)
        streamed = builder.build_streamed()
        answer = await streamed.__aenter__()
        kept = {k: v for k, v in answer.headers.items() if k.lower() in _KEEP}

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await answer.body_reader.read_chunk()) is not None:
                yield bytes(chunk)

        async def close() -> None:
            await streamed.__aexit__(None, None, None)

        passed = _passed_on(
            answer.headers.get("content-type", ""), answer.status, kept, chunks, close
        )
        if passed is not None:
            return passed
        try:
            content = bytes(await answer.bytes())
        finally:
            await streamed.__aexit__(None, None, None)
        return Response(content, answer.status, kept)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        client = ClientBuilder().max_connections(256).build()
        clients.append(client)
        async with client:
            yield

    return _app(relay, lifespan)


def build_ours_app(upstream: str) -> Starlette:
    """The same pass-through on Footprint's own upstream client (`proxy/transport.py`)."""
    from proxy.transport import Timeouts, UpstreamClient

    client = UpstreamClient(
        upstream,
        headers={},
        timeouts=Timeouts(connect_s=10.0, read_s=300.0),
        max_connections=256,
        keepalive_expiry_s=30.0,
    )

    async def relay(request: Request) -> Response:
        body = await request.body()
        outgoing = client.request(
            "POST",
            request.url.path.removeprefix("/v1"),
            headers={"content-type": "application/json"},
            content=body,
        )
        answer = await client.send(outgoing)
        kept = {k: v for k, v in answer.headers.items() if k in _KEEP}

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await answer.next_chunk():
                yield chunk

        ctype = answer.headers.get("content-type", "")
        streamed = _passed_on(ctype, answer.status_code, kept, chunks, answer.aclose)
        return streamed or Response(await answer.read(), answer.status_code, kept)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        yield
        await client.aclose()

    return _app(relay, lifespan)


def build_app(upstream: str, client_kind: str = "httpx") -> Starlette:
    if client_kind == "raw-aiohttp":
        return build_raw_aiohttp_app(upstream)
    if client_kind == "pyreqwest":
        return build_pyreqwest_app(upstream)
    if client_kind == "ours":
        return build_ours_app(upstream)
    httpx = importlib.import_module("httpx2" if client_kind == "httpx2" else "httpx")
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    transport = None
    if client_kind == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(limits=limits)
    client = httpx.AsyncClient(base_url=upstream, limits=limits, transport=transport)

    async def relay(request: Request) -> Response:
        body = await request.body()
        headers = {"content-type": "application/json"}
        outgoing = client.build_request(
            "POST", request.url.path.removeprefix("/v1"), content=body, headers=headers
        )
        answer = await client.send(outgoing, stream=True)
        kept = {k: v for k, v in answer.headers.items() if k in _KEEP}
        ctype = answer.headers.get("content-type", "")
        streamed = _passed_on(ctype, answer.status_code, kept, answer.aiter_raw, answer.aclose)
        return streamed or Response(await answer.aread(), answer.status_code, kept)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        yield
        await client.aclose()

    return _app(relay, lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare pass-through (the Python floor)")
    parser.add_argument("--upstream", default="http://127.0.0.1:9100/v1")
    parser.add_argument("--port", type=int, default=9201)
    parser.add_argument(
        "--client",
        choices=("httpx", "aiohttp", "httpx2", "ours", "raw-aiohttp", "pyreqwest"),
        default="httpx",
    )
    args = parser.parse_args()
    app = build_app(args.upstream, args.client)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
