"""The OpenAI surface: thin handlers that hand the request to the relay on `app.state`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.errors import ModelNotFound
from proxy.relay import ENDPOINTS, Relay
from proxy.relay.counting import count_tokens
from proxy.routes import Router
from proxy.services import Services

router = Router()


def relay_of(request: Request) -> Relay:
    """The app's relay, typed."""
    relay = request.app.state.relay
    assert isinstance(relay, Relay)
    return relay


def services_of(request: Request) -> Services:
    """The app's services, typed."""
    services = request.app.state.services
    assert isinstance(services, Services)
    return services


def _relayed(endpoint: str) -> Callable[[Request], Awaitable[Response]]:
    async def relayed(request: Request) -> Response:
        return await relay_of(request).handle(request, endpoint)

    relayed.__name__ = endpoint.replace(".", "_")
    return relayed


async def stored_response(request: Request) -> Response:
    return await relay_of(request).stored.handle(request)


async def messages_count_tokens(request: Request) -> Response:
    return await count_tokens(services_of(request), request)


def relay_routes() -> list[BaseRoute]:
    """One POST route per entry of the endpoint table, and the stored-response routes, each
    calling its handler with the bare request; registered ahead of every router's routes,
    they are the first routes matched."""
    stored = "/v1/responses/{response_id}"
    relayed = [Route(s.route, _relayed(name), methods=["POST"]) for name, s in ENDPOINTS.items()]
    return [
        *relayed,
        Route(stored, stored_response, methods=["GET", "DELETE"]),
        Route(stored + "/input_items", stored_response, methods=["GET"]),
        Route(stored + "/cancel", stored_response, methods=["POST"]),
        Route("/v1/messages/count_tokens", messages_count_tokens, methods=["POST"]),
    ]


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, object]:
    """The models this key may use, merged across upstreams."""
    services = services_of(request)
    principal = await services.auth.authenticate(request.headers.get("authorization"))
    models = await services.router.list_models()
    return {"object": "list", "data": [m for m in models if principal.may_use(str(m["id"]))]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> dict[str, object]:
    services = services_of(request)
    principal = await services.auth.authenticate(request.headers.get("authorization"))
    for model in await services.router.list_models():
        if model["id"] == model_id and principal.may_use(model_id):
            return model
    raise ModelNotFound(f"the model {model_id!r} does not exist", param="model")
