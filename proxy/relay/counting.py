"""`POST /v1/messages/count_tokens` (Anthropic's token counting, which vLLM and llama.cpp's
server serve and Claude Code asks at start): relayed to the upstream that serves the model,
with the Messages API's keys and error shape. Not metered and not recorded: nothing is
generated, so there is no footprint to give."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import ModelNotFound, PermissionDenied, ProxyError
from proxy.relay import checks, send
from proxy.relay.endpoints import ENDPOINTS
from proxy.relay.intake import read_json
from proxy.services import Services

PATH = "/messages/count_tokens"


async def count_tokens(services: Services, request: Request) -> Response:
    spec = ENDPOINTS["messages"]
    request_id = checks.request_id_of(request.headers)
    try:
        principal = await services.auth.authenticate(spec.credential(request.headers))
        _raw, body = await read_json(request, services.settings.server.max_body_bytes)
        model = checks.require_model(body)
        checks.check_objects(body, "messages", "message")
        if not principal.may_use(model):
            raise PermissionDenied(f"this key may not use model {model!r}", param="model")
        upstream = services.router.route(model)
        if upstream is None:
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        headers = send.upstream_headers(request.headers, spec, upstream, request_id)
        built = upstream.post_request(PATH, orjson.dumps(body), headers)
        response = await send.send(upstream, built)
        raw = await send.read_whole(upstream, response)
        return send.passed_on(upstream, response, raw, request_id)
    except ProxyError as error:
        return spec.errors.response(error, {"x-request-id": request_id})
