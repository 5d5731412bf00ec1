"""The relay's POST endpoints are served ahead of Starlette's router (`FootprintApp`): what
the router and its error middleware gave those paths must still be there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from proxy.app import create_app
from proxy.relay import Relay
from tests.proxy.conftest import proxy_settings
from tests.support.servers import ServerThread

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


def test_other_methods_and_paths_of_a_relay_route_answer_as_the_router_did(
    proxy: ServerThread,
) -> None:
    wrong_method = httpx.get(f"{proxy.url}/v1/chat/completions")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["type"] == "invalid_request_error"
    slash = httpx.post(f"{proxy.url}/v1/chat/completions/", json=CHAT)
    assert slash.status_code == 307  # Starlette's redirect to the path without the slash
    assert slash.headers["location"].endswith("/v1/chat/completions")
    unknown = httpx.post(f"{proxy.url}/v1/chat/completion", json=CHAT)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "no route POST /v1/chat/completion"
    answered = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
    assert answered.status_code == 200
    assert "x-footprint-energy-j" in answered.headers


def test_an_error_escaping_the_relay_is_a_500_in_openai_shape(
    tmp_path: Path, upstream: ServerThread
) -> None:
    app = create_app(proxy_settings(tmp_path, upstream.url))
    with ServerThread(app) as proxy:
        relay = app.state.relay
        assert isinstance(relay, Relay)

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug in the relay")

        relay.handle = broken  # type: ignore[method-assign]
        answer = httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT)
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert (error["message"], error["type"]) == ("internal error in the proxy", "api_error")
