"""Anthropic's Messages API through the real path: anthropic SDK → proxy → test upstream
(vLLM's shapes). Keys in `x-api-key`, errors in Anthropic's shape, usage from its events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from tests.proxy.conftest import proxy_settings
from tests.support.fake_upstream import UpstreamLog
from tests.support.servers import ServerThread

TEXT = "w0 w1 w2 w3 w4 w5 w6 w7"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
ADMIN_KEY = "admin-secret-for-tests"


def client(proxy: ServerThread, api_key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=api_key, max_retries=0)


def ledger_row(proxy: ServerThread, request_id: str, key: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(f"{proxy.url}/v1/footprint/requests/{request_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_whole_message_carries_the_footprint_and_its_usage_is_recorded(
    proxy: ServerThread, upstream_log: UpstreamLog
) -> None:
    raw = client(proxy).messages.with_raw_response.create(
        model="echo",
        max_tokens=64,
        system="be brief",
        messages=MESSAGES,
        extra_headers={"x-request-id": "msg-whole", "anthropic-version": "2023-06-01"},
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == TEXT
    assert raw.headers["x-footprint-method"] == "estimated"
    footprint = message.model_extra["footprint"]  # type: ignore[index]
    assert footprint["request_id"] == "msg-whole"
    assert upstream_log.headers[-1]["anthropic-version"] == "2023-06-01"
    row = ledger_row(proxy, "msg-whole")
    assert row["endpoint"] == "messages" and row["stream"] is False
    assert (row["prompt_tokens"], row["completion_tokens"]) == (4, 8)


def test_a_streamed_message_gives_the_footprint_on_message_delta_and_a_comment(
    proxy: ServerThread,
) -> None:
    with client(proxy).messages.stream(
        model="echo",
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-request-id": "msg-stream"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == TEXT
    assert final.usage.output_tokens == 8
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert delta.model_extra["footprint"]["completion_tokens"] == 8  # type: ignore[index]
    assert events[-1].type == "message_stop"
    row = ledger_row(proxy, "msg-stream")
    assert row["stream"] is True and row["cancelled"] is False
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 8)


def test_the_stream_bytes_stay_vllms_with_the_footprint_before_message_stop(
    proxy: ServerThread,
) -> None:
    body = {"model": "echo", "max_tokens": 64, "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body) as response:
        raw = response.read()
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"event: message_start\ndata: ")
    kinds = [e.split(b"\n")[0] for e in events[-4:]]
    assert kinds[0] == b"event: message_delta"
    assert kinds[1].startswith(b": footprint ")
    assert kinds[2:] == [b"event: message_stop", b"data: [DONE]"]
    delta = orjson.loads(events[-4].split(b"data: ", 1)[1])
    assert delta["usage"] == {"input_tokens": 2, "output_tokens": 8}
    assert delta["footprint"] == orjson.loads(events[-3][len(b": footprint ") :])


def test_messages_create_with_stream_true_yields_the_raw_events(proxy: ServerThread) -> None:
    events = list(
        client(proxy).messages.create(model="echo", max_tokens=64, messages=MESSAGES, stream=True)
    )
    text = "".join(
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )
    assert text == TEXT and events[-1].type == "message_stop"


# ---- keys and errors --------------------------------------------------------------------------


@pytest.fixture
def keyed_proxy(start_proxy: Any, tmp_path: Path, upstream: ServerThread) -> Any:
    settings = proxy_settings(tmp_path, upstream.url, server={"auth": "keys"})
    proxy = start_proxy(settings, environ={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY})
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(f"{proxy.url}/admin/teams", json={"name": "search"}, headers=admin).is_success
    made = httpx.post(
        f"{proxy.url}/admin/keys", json={"team": "search", "models": ["echo"]}, headers=admin
    )
    return proxy, made.json()["key"]


@pytest.mark.parametrize("how", ["x-api-key", "authorization"])
def test_footprints_key_is_taken_from_x_api_key_or_authorization(
    keyed_proxy: Any, how: str
) -> None:
    proxy, key = keyed_proxy
    sdk = (
        client(proxy, key)
        if how == "x-api-key"
        else anthropic.Anthropic(base_url=proxy.url, auth_token=key, max_retries=0)
    )
    raw = sdk.messages.with_raw_response.create(model="echo", max_tokens=8, messages=MESSAGES)
    assert raw.parse().content[0].text == TEXT  # type: ignore[union-attr]
    assert ledger_row(proxy, raw.headers["x-request-id"], key)["team"] == "search"


def test_errors_on_this_route_are_in_anthropics_shape(
    keyed_proxy: Any, upstream_log: UpstreamLog
) -> None:
    proxy, key = keyed_proxy
    with pytest.raises(anthropic.AuthenticationError) as unknown:
        client(proxy, "fp-not-a-key").messages.create(model="echo", max_tokens=8, messages=MESSAGES)
    assert unknown.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }
    with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
        client(proxy, key).messages.create(model="other", max_tokens=8, messages=MESSAGES)
    assert forbidden.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(proxy, key).messages.create(model="echo", max_tokens=-1, messages=MESSAGES)
    assert bad.value.body["type"] == "error"  # type: ignore[index]
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in bad.value.body["error"]["message"]  # type: ignore[index]
    assert upstream_log.requests == []


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"model": "echo", "max_tokens": 8}, "messages"),
        ({"model": "echo", "max_tokens": 8, "messages": []}, "messages"),
        ({"model": "echo", "max_tokens": -1, "messages": MESSAGES}, "max_tokens"),
        ({"model": "echo", "max_tokens": 8, "messages": MESSAGES, "system": 3}, "system"),
        ({"max_tokens": 8, "messages": MESSAGES}, "model"),
    ],
)
def test_a_bad_message_request_is_refused_in_anthropics_shape(
    proxy: ServerThread, upstream_log: UpstreamLog, body: dict[str, Any], word: str
) -> None:
    response = httpx.post(f"{proxy.url}/v1/messages", json=body)
    assert response.status_code == 400
    error = response.json()
    assert set(error) == {"type", "error"} and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert word in error["error"]["message"]
    assert upstream_log.requests == []


def test_count_tokens_is_relayed_to_the_models_upstream_and_not_metered(
    proxy: ServerThread, upstream_log: UpstreamLog
) -> None:
    raw = client(proxy).messages.with_raw_response.count_tokens(
        model="echo", system="be brief", messages=MESSAGES
    )
    assert raw.parse().input_tokens == 4
    assert upstream_log.requests[-1]["messages"] == MESSAGES
    found = httpx.get(f"{proxy.url}/v1/footprint/requests/{raw.headers['x-request-id']}")
    assert found.status_code == 404  # nothing generated, nothing recorded
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(proxy).messages.count_tokens(model="echo", messages=[])
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
