"""`Router`: the decorator style of the route modules (`@router.get("/path")`), making plain
Starlette routes.

The handlers take the bare `request` and their path parameters by name, and return a
`Response` or a dict or list (rendered as JSON by orjson). Nothing is validated or injected
on the way in: each handler parses what it reads and raises `ProxyError`s, which the app's
one handler renders in OpenAI's error shape. A plain `def` handler runs in Starlette's
thread pool, off the event loop.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, compile_path

Handler = TypeVar("Handler", bound=Callable[..., object])


class Router:
    """Routes under one path prefix, declared with `@router.get(path)` and the like."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.routes: list[Route] = []

    def get(self, path: str) -> Callable[[Handler], Handler]:
        return self._route(path, "GET")

    def post(self, path: str) -> Callable[[Handler], Handler]:
        return self._route(path, "POST")

    def put(self, path: str) -> Callable[[Handler], Handler]:
        return self._route(path, "PUT")

    def delete(self, path: str) -> Callable[[Handler], Handler]:
        return self._route(path, "DELETE")

    def _route(self, path: str, method: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            full_path = self.prefix + path
            route = Route(
                full_path,
                endpoint(handler, path_params=set(compile_path(full_path)[2])),
                methods=[method],
                name=getattr(handler, "__name__", None),
            )
            # The method it names only: Starlette adds HEAD beside GET, and these routes have
            # always answered HEAD with a 405 (the relayed routes are Starlette's own).
            route.methods = {method}
            self.routes.append(route)
            return handler

        return register


def endpoint(
    handler: Callable[..., object], path_params: set[str]
) -> Callable[[Request], Awaitable[Response]] | Callable[[Request], Response]:
    """A Starlette endpoint calling `handler` with the request (if it takes one) and the
    path parameters as keyword arguments; kept synchronous for a plain `def` handler, so
    Starlette runs it in its thread pool."""
    parameters = inspect.signature(handler).parameters
    takes_request = "request" in parameters
    unknown = set(parameters) - path_params - {"request"}
    missing = path_params - set(parameters)
    if unknown or missing:
        # At import, not on the first request.
        raise TypeError(
            f"{getattr(handler, '__qualname__', handler)!r} takes {sorted(parameters)}; a "
            f"handler takes `request` and its path's parameters {sorted(path_params)} only"
        )

    def arguments(request: Request) -> dict[str, object]:
        kwargs: dict[str, object] = dict(request.path_params)
        if takes_request:
            kwargs["request"] = request
        return kwargs

    if inspect.iscoroutinefunction(handler):
        call = cast(Callable[..., Awaitable[object]], handler)

        async def async_endpoint(request: Request) -> Response:
            return render(await call(**arguments(request)))

        return async_endpoint

    def sync_endpoint(request: Request) -> Response:
        return render(handler(**arguments(request)))

    return sync_endpoint


def render(result: object) -> Response:
    """A handler's return value as the response: a `Response` as it is, a dict or list as
    compact JSON (`application/json`)."""
    if isinstance(result, Response):
        return result
    if isinstance(result, dict | list):
        return Response(orjson.dumps(result), media_type="application/json")
    raise TypeError(f"a route handler returned {type(result).__name__}, not a Response or JSON")
