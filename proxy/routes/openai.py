"""The OpenAI surface: thin handlers that hand the request to the relay on `app.state`."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.errors import ProxyError

router = APIRouter()


async def chat_completions(request: Request) -> Response:
    return await request.app.state.relay.handle(request, "chat.completions")


async def completions(request: Request) -> Response:
    return await request.app.state.relay.handle(request, "completions")


async def embeddings(request: Request) -> Response:
    return await request.app.state.relay.handle(request, "embeddings")


def relay_routes() -> list[BaseRoute]:
    """The three relayed POST routes as plain Starlette routes: they take the bare request,
    so FastAPI's per-route dependency and response machinery has nothing to do for them;
    registered ahead of every router, they are also the first routes matched."""
    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, object]:
    """The models this key may use, merged across upstreams."""
    services = request.app.state.services
    principal = await services.auth.authenticate(request.headers.get("authorization"))
    models = await services.router.list_models()
    return {"object": "list", "data": [m for m in models if principal.may_use(str(m["id"]))]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, object]:
    services = request.app.state.services
    principal = await services.auth.authenticate(request.headers.get("authorization"))
    for model in await services.router.list_models():
        if model["id"] == model_id and principal.may_use(model_id):
            return model
    raise _model_not_found(model_id)


def _model_not_found(model_id: str) -> ProxyError:
    from proxy.errors import ModelNotFound

    return ModelNotFound(f"the model {model_id!r} does not exist", param="model")
