"""Stored responses: `GET`/`DELETE /v1/responses/{id}` (and its `input_items`, `cancel`)
relayed to the upstream that made the response, and `previous_response_id` routed there.

Which upstream made which response is kept in memory, per replica, bounded (the oldest are
forgotten first). A response this replica does not know (made through another replica, or
before a restart, or forgotten) is asked of each upstream in configuration order until one
does not answer 404. Nothing here is metered: no tokens are generated.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from proxy.errors import NotFound, ProxyError, RequestTooLarge
from proxy.relay import checks, send
from proxy.relay.endpoints import ENDPOINTS
from proxy.services import Services
from proxy.upstreams import Upstream

DEFAULT_REMEMBERED = 100_000


@dataclass(frozen=True, slots=True)
class Owner:
    upstream: str
    team: str


class ResponseOwners:
    """response id → the upstream that made it and the team that asked (bounded LRU)."""

    def __init__(self, limit: int = DEFAULT_REMEMBERED) -> None:
        self._limit = limit
        self._owners: OrderedDict[str, Owner] = OrderedDict()

    def remember(self, response_id: str, upstream: str, team: str) -> None:
        self._owners[response_id] = Owner(upstream, team)
        self._owners.move_to_end(response_id)
        while len(self._owners) > self._limit:
            self._owners.popitem(last=False)

    def owner(self, response_id: str) -> Owner | None:
        return self._owners.get(response_id)

    def forget(self, response_id: str) -> None:
        self._owners.pop(response_id, None)


class StoredResponses:
    """Relays requests about stored responses to the upstream that holds them."""

    def __init__(self, services: Services, owners: ResponseOwners) -> None:
        self.services = services
        self.owners = owners
        self._by_name = {u.name: u for u in services.router.upstreams}

    def upstream_of(self, response_id: str, team: str) -> Upstream | None:
        """The upstream that made `response_id` for `team`, if this replica knows it."""
        owner = self.owners.owner(response_id)
        if owner is None or owner.team != team:
            return None
        return self._by_name.get(owner.upstream)

    def _candidates(self, response_id: str, team: str) -> list[Upstream]:
        owner = self.owners.owner(response_id)
        if owner is None:
            return list(self.services.router.upstreams)
        if owner.team != team:
            raise NotFound(f"no response {response_id!r}")
        known = self._by_name.get(owner.upstream)
        return [known] if known is not None else []

    async def handle(self, request: Request) -> Response:
        request_id = checks.request_id_of(request.headers)
        try:
            return await self._handle(request, request_id)
        except ProxyError as error:
            return error.to_response({"x-request-id": request_id})

    async def _handle(self, request: Request, request_id: str) -> Response:
        principal = await self.services.auth.authenticate(request.headers.get("authorization"))
        response_id = request.path_params["response_id"]
        path = request.url.path.removeprefix("/v1")
        content = await request.body()
        limit = self.services.settings.server.max_body_bytes
        if len(content) > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
        answer: Response | None = None
        for upstream in self._candidates(response_id, principal.team):
            headers = send.upstream_headers(
                request.headers, ENDPOINTS["responses"], upstream, request_id
            )
            built = upstream.client.request(
                request.method,
                path,
                headers=headers,
                content=content or None,
                query=request.url.query,
            )
            response = await send.send(upstream, built)
            raw = await send.read_whole(upstream, response)
            answer = send.passed_on(upstream, response, raw, request_id)
            if response.status_code != 404:
                if request.method == "DELETE" and response.status_code < 300:
                    self.owners.forget(response_id)
                return answer
        if answer is None:
            raise NotFound(f"no response {response_id!r}")
        return answer
