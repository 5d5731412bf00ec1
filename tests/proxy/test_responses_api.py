"""OpenAI's Responses API through the real path: openai SDK → proxy → test upstream (vLLM's
shapes). Relayed, metered, recorded; the footprint where the SDK keeps it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.proxy.conftest import proxy_settings
from tests.support.fake_upstream import UpstreamLog, make_upstream
from tests.support.servers import ServerThread

TEXT = "w0 w1 w2 w3 w4 w5 w6 w7"
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def client(proxy: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)


def ledger_row(proxy: ServerThread, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{proxy.url}/v1/footprint/requests/{request_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_whole_response_carries_the_footprint_in_headers_and_member(
    proxy: ServerThread,
) -> None:
    raw = client(proxy).responses.with_raw_response.create(
        model="echo", input="hello there", extra_headers={"x-request-id": "resp-whole"}
    )
    response = raw.parse()
    assert response.output_text == TEXT
    assert response.usage is not None and response.usage.output_tokens == 8
    assert raw.headers["x-footprint-method"] == "estimated"
    footprint = response.model_extra["footprint"]  # type: ignore[index]
    assert footprint["request_id"] == "resp-whole"
    assert footprint["energy_j"] == pytest.approx(float(raw.headers["x-footprint-energy-j"]))
    row = ledger_row(proxy, "resp-whole")
    assert row["endpoint"] == "responses"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 8)
    assert row["tokens_counted"] is False and row["energy_j"] > 0


def test_a_streamed_response_ends_with_the_footprint_in_response_completed(
    proxy: ServerThread,
) -> None:
    events = list(
        client(proxy).responses.create(
            model="echo",
            input="hello there",
            stream=True,
            extra_headers={"x-request-id": "resp-stream"},
        )
    )
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == TEXT
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.usage is not None and final.response.usage.output_tokens == 8
    footprint = final.response.model_extra["footprint"]  # type: ignore[index]
    assert footprint["request_id"] == "resp-stream" and footprint["completion_tokens"] == 8
    row = ledger_row(proxy, "resp-stream")
    assert row["stream"] is True and row["cancelled"] is False
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 8)


def test_the_stream_keeps_the_upstreams_events_and_adds_a_footprint_comment(
    proxy: ServerThread,
) -> None:
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/responses",
        json={"model": "echo", "input": "hello there", "stream": True},
    ) as response:
        assert response.headers["x-footprint-method"] == "estimated"
        raw = response.read()
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"event: response.created\ndata: ")
    assert events[-2].startswith(b": footprint ")
    assert events[-1].startswith(b"event: response.completed\ndata: ")
    assert b"[DONE]" not in raw  # vLLM's Responses streams have none, so neither does ours
    completed = orjson.loads(events[-1].split(b"data: ", 1)[1])
    comment = orjson.loads(events[-2][len(b": footprint ") :])
    assert completed["response"]["footprint"] == comment


def test_the_stream_helper_keeps_the_footprint_on_the_final_response(
    proxy: ServerThread,
) -> None:
    with client(proxy).responses.stream(model="echo", input="hello there") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == TEXT
    assert final.model_extra["footprint"]["completion_tokens"] == 8  # type: ignore[index]


def test_a_tool_call_and_its_answer_go_through_with_previous_response_id_and_store(
    proxy: ServerThread, upstream_log: UpstreamLog
) -> None:
    sdk = client(proxy)
    first = sdk.responses.create(
        model="echo", input="weather in Seoul?", tools=[WEATHER_TOOL], store=True
    )
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert orjson.loads(call.arguments) == {"city": "Seoul"}
    second = sdk.responses.create(
        model="echo",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER_TOOL],
        store=False,
    )
    assert second.output_text == TEXT
    sent = upstream_log.requests[-1]
    assert sent["previous_response_id"] == first.id and sent["store"] is False
    assert second.model_extra["footprint"]["completion_tokens"] == 8  # type: ignore[index]


def test_a_stream_without_usage_is_counted_from_its_text_deltas(proxy: ServerThread) -> None:
    events = list(
        client(proxy).responses.create(
            model="nousage", input="hello there", stream=True, extra_headers={"x-request-id": "nu"}
        )
    )
    assert events[-1].type == "response.completed"
    row = ledger_row(proxy, "nu")
    assert row["completion_tokens"] == 8 and row["tokens_counted"] is True


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "echo"}, "input"),
        ({"model": "echo", "input": 5}, "input"),
        ({"input": "hi"}, "model"),
        ({"model": "echo", "input": "hi", "max_output_tokens": -2}, "max_output_tokens"),
        ({"model": "echo", "input": "hi", "store": "yes"}, "store"),
    ],
)
def test_a_bad_request_is_refused_before_the_upstream(
    proxy: ServerThread, upstream_log: UpstreamLog, body: dict[str, Any], param: str
) -> None:
    response = httpx.post(f"{proxy.url}/v1/responses", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert upstream_log.requests == []
    found = httpx.get(f"{proxy.url}/v1/footprint/requests/{response.headers['x-request-id']}")
    assert found.status_code == 404


# ---- stored responses: GET and DELETE reach the upstream that made them ----------------------


@pytest.fixture
def two_upstreams(tmp_path: Path, start_proxy: Any) -> Any:
    """A proxy over two upstreams: model `a-model` on A, `b-model` on B."""
    logs = (UpstreamLog(), UpstreamLog())
    with ServerThread(make_upstream(logs[0])) as a, ServerThread(make_upstream(logs[1])) as b:
        settings = proxy_settings(tmp_path, a.url)
        first = settings.upstreams[0].model_copy(update={"name": "a", "models": ["a-model"]})
        second = first.model_copy(
            update={"name": "b", "base_url": f"{b.url}/v1", "models": ["b-model"]}
        )
        proxy = start_proxy(settings.model_copy(update={"upstreams": [first, second]}))
        yield proxy, (a, b), logs


def test_a_stored_response_is_fetched_and_deleted_at_the_upstream_that_made_it(
    two_upstreams: Any,
) -> None:
    proxy, (a, b), _logs = two_upstreams
    sdk = client(proxy)
    made = sdk.responses.create(model="b-model", input="hello there")
    assert made.id in b.server.config.app.state.responses.stored
    assert made.id not in a.server.config.app.state.responses.stored
    fetched = sdk.responses.retrieve(made.id)
    assert fetched.id == made.id and fetched.output_text == TEXT
    sdk.responses.delete(made.id)
    assert made.id not in b.server.config.app.state.responses.stored
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(made.id)


def test_a_response_this_replica_never_saw_is_found_by_asking_the_upstreams(
    two_upstreams: Any, tmp_path: Path, start_proxy: Any
) -> None:
    proxy, (_a, b), _logs = two_upstreams
    made = client(proxy).responses.create(model="b-model", input="hello there")
    # Another replica (same upstreams, its own memory) is asked for it.
    (tmp_path / "replica-2").mkdir()
    settings = proxy_settings(tmp_path / "replica-2", b.url)
    other = start_proxy(settings.model_copy(update={"upstreams": proxy_upstreams(proxy)}))
    assert client(other).responses.retrieve(made.id).id == made.id


def test_a_follow_up_goes_to_the_upstream_holding_the_previous_response(
    tmp_path: Path, start_proxy: Any
) -> None:
    logs = (UpstreamLog(), UpstreamLog())
    with ServerThread(make_upstream(logs[0])) as a, ServerThread(make_upstream(logs[1])) as b:
        settings = proxy_settings(tmp_path, a.url)
        first = settings.upstreams[0].model_copy(update={"name": "a", "models": ["echo"]})
        second = first.model_copy(
            update={"name": "b", "base_url": f"{b.url}/v1", "models": ["echo", "only-b"]}
        )
        proxy = start_proxy(settings.model_copy(update={"upstreams": [first, second]}))
        sdk = client(proxy)
        made = sdk.responses.create(model="only-b", input="hello there")
        # `echo` routes to A, but B holds the earlier response and serves `echo` too.
        follow = sdk.responses.create(model="echo", input="more", previous_response_id=made.id)
        assert follow.output_text == TEXT
        assert logs[0].requests == [] and len(logs[1].requests) == 2


def proxy_upstreams(proxy: ServerThread) -> Any:
    return proxy.server.config.app.state.settings.upstreams
