"""An idle upstream connection is not reused once it may have been closed by the upstream.

The replica tests failed now and then with 502 `upstream test is unreachable (ReadError)`
(issue 11, defect 16): the proxy kept idle upstream connections for 30 s while uvicorn (the
test upstream, vLLM, llama.cpp's Python server) closes them after 5 s, so a request sent on a
connection the upstream was closing at that moment failed. The proxy now lets a connection go
after `keepalive_expiry_s` (4 s by default), before the upstream's 5 s."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from proxy.config import UpstreamSettings
from tests.proxy.conftest import proxy_settings
from tests.support.servers import ServerThread

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def _upstream(ports: list[int]) -> Starlette:
    async def chat(request: Request) -> JSONResponse:
        assert request.client is not None
        ports.append(request.client.port)
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "model": "echo",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def ports() -> list[int]:
    return []


@pytest.fixture
def upstream(ports: list[int]) -> Iterator[ServerThread]:
    with ServerThread(_upstream(ports)) as server:
        yield server


def test_the_default_keepalive_is_shorter_than_uvicorns() -> None:
    server_keepalive_s = uvicorn.Config(app=None).timeout_keep_alive
    default_s = UpstreamSettings(name="u", base_url="http://x").keepalive_expiry_s
    assert 0 < default_s < server_keepalive_s


def test_an_idle_connection_is_not_reused_past_the_keepalive_expiry(
    tmp_path: Path,
    upstream: ServerThread,
    ports: list[int],
    start_proxy: Callable[..., ServerThread],
) -> None:
    import time

    settings = proxy_settings(tmp_path, upstream.url)
    first = settings.upstreams[0].model_copy(update={"keepalive_expiry_s": 0.5})
    proxy = start_proxy(settings.model_copy(update={"upstreams": [first]}))
    with httpx.Client(base_url=proxy.url, timeout=30.0) as client:
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        time.sleep(1.5)  # longer than the expiry: that connection must not be used again
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert ports[0] == ports[1]  # kept alive while fresh
    assert ports[2] != ports[1]
