"""`proxy.routes.Router`: the route modules' decorators make plain Starlette routes that pass
path parameters by name, render dicts as orjson's JSON and run a plain `def` off the loop."""

from __future__ import annotations

import threading

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from proxy.routes import Router


def client_of(router: Router) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=Starlette(routes=router.routes), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://proxy")


async def test_path_parameters_arrive_by_name_and_dicts_come_back_as_json() -> None:
    router = Router(prefix="/v1")
    body = {"id": "org/model:q4", "object": "model", "é": [1.5e-7, 1e20, None, True]}

    @router.get("/models/{model_id:path}")
    async def retrieve(model_id: str, request: Request) -> dict[str, object]:
        return {**body, "id": model_id, "method": request.method}

    @router.delete("/keys/{key_id}")
    async def revoke(key_id: str) -> list[str]:
        return [key_id]

    async with client_of(router) as client:
        got = await client.get("/v1/models/org/model:q4")
        revoked = await client.delete("/v1/keys/key_1")
    assert got.status_code == 200
    assert got.headers["content-type"] == "application/json"
    assert got.content == orjson.dumps({**body, "method": "GET"})
    assert revoked.json() == ["key_1"]


async def test_a_response_is_sent_as_the_handler_made_it() -> None:
    router = Router()

    @router.put("/limits")
    async def put_limits() -> Response:
        return PlainTextResponse("made here", status_code=201, headers={"x-made": "1"})

    async with client_of(router) as client:
        got = await client.put("/limits")
    assert (got.status_code, got.text, got.headers["x-made"]) == (201, "made here", "1")


async def test_a_plain_def_handler_runs_off_the_event_loop_thread() -> None:
    router = Router()
    seen: list[int] = []

    @router.get("/metrics")
    def metrics(request: Request) -> Response:
        seen.append(threading.get_ident())
        return Response(b"ok")

    async with client_of(router) as client:
        assert (await client.get("/metrics")).text == "ok"
    assert seen and seen[0] != threading.get_ident()


async def test_each_route_answers_its_own_method_only() -> None:
    router = Router()

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.post("/healthz")
    async def poke() -> dict[str, str]:
        return {"status": "poked"}

    async with client_of(router) as client:
        assert (await client.post("/healthz")).json() == {"status": "poked"}
        # No HEAD beside GET (Starlette's own routes add one): a 405, as these routes answered.
        head = await client.head("/healthz")
        assert head.status_code == 405
        assert head.headers["allow"] == "GET"


async def test_a_value_that_is_not_json_or_a_response_is_a_server_error() -> None:
    router = Router()

    @router.get("/odd")
    async def odd() -> str:
        return "not a response"

    async with client_of(router) as client:
        assert (await client.get("/odd")).status_code == 500


def test_a_handler_whose_parameters_do_not_match_its_path_fails_at_declaration() -> None:
    router = Router()
    with pytest.raises(TypeError, match="trace_id"):

        @router.get("/traces/{trace_id}")
        async def wrong_name(request: Request, request_id: str) -> Response:
            return Response()

    with pytest.raises(TypeError, match="team"):

        @router.get("/teams")
        async def extra(request: Request, team: str) -> Response:
            return Response()

    assert router.routes == []
