"""The Python floor: a bare OpenAI pass-through on Footprint's stack (Starlette + httpx under
uvicorn), no metering, no auth, no ledger. Whatever Footprint costs beyond this is ours.

Run: python bench/bare_proxy.py --upstream http://127.0.0.1:9100/v1 --port 9201 [--client C]
`--client httpx` (default, Footprint's client), `aiohttp` (httpx on aiohttp's transport from the
`httpx-aiohttp` package, as LiteLLM does) or `httpx2` (pydantic's fork, with a linear pool).
"""

import argparse
import contextlib
import importlib

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

_KEEP = ("content-type", "x-request-id")


def build_app(upstream: str, client_kind: str = "httpx") -> Starlette:
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
        if answer.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(
                answer.aiter_raw(),
                answer.status_code,
                kept,
                background=BackgroundTask(answer.aclose),
            )
        content = await answer.aread()
        return Response(content, answer.status_code, kept)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # type: ignore[no-untyped-def]
        yield
        await client.aclose()

    paths = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
    return Starlette(routes=[Route(p, relay, methods=["POST"]) for p in paths], lifespan=lifespan)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="bare pass-through (the Python floor)")
    parser.add_argument("--upstream", default="http://127.0.0.1:9100/v1")
    parser.add_argument("--port", type=int, default=9201)
    parser.add_argument("--client", choices=("httpx", "aiohttp", "httpx2"), default="httpx")
    args = parser.parse_args()
    app = build_app(args.upstream, args.client)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
