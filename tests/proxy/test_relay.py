"""The relay through the real path: openai SDK → proxy (uvicorn) → test upstream (uvicorn)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.proxy.conftest import proxy_settings
from tests.support.fake_upstream import UpstreamLog
from tests.support.servers import ServerThread

MESSAGES = [{"role": "user", "content": "hello there"}]


def client(proxy: ServerThread, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, **kw)


def sse_events(raw: bytes) -> list[bytes]:
    return [e for e in raw.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]


def ledger_row(proxy: ServerThread, request_id: str) -> dict[str, Any]:
    response = httpx.get(f"{proxy.url}/v1/footprint/requests/{request_id}")
    assert response.status_code == 200, response.text
    return response.json()


def assert_healthy(proxy: ServerThread) -> None:
    assert httpx.get(f"{proxy.url}/healthz").status_code == 200
    answer = client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
    assert answer.choices[0].message.content


def test_non_streaming_answer_carries_footprint_headers_and_member(proxy: ServerThread) -> None:
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="echo", messages=MESSAGES, extra_headers={"x-request-id": "mine-1"}
    )
    answer = raw.parse()
    assert answer.choices[0].message.content == "w0 w1 w2 w3 w4 w5 w6 w7"
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    assert raw.headers["x-request-id"] == "mine-1"
    assert raw.headers["x-footprint-method"] == "estimated"
    for name in (
        "gpu-energy-j",
        "energy-j",
        "co2e-g",
        "water-ml",
        "grid-gco2e-per-kwh",
        "overhead-ms",
    ):
        value = raw.headers[f"x-footprint-{name}"]
        assert "e" not in value.lower() and float(value) >= 0
    assert float(raw.headers["x-footprint-gpu-energy-j"]) > 0
    assert raw.headers["x-footprint-zone"] == "WORLD"
    footprint = answer.model_extra["footprint"]  # type: ignore[index]
    assert footprint["request_id"] == "mine-1"
    assert footprint["completion_tokens"] == 8
    assert footprint["energy_j"] == pytest.approx(
        float(raw.headers["x-footprint-energy-j"]), rel=1e-4
    )
    row = ledger_row(proxy, "mine-1")
    assert row["completion_tokens"] == 8 and row["status"] == 200


def test_request_id_is_generated_when_absent(proxy: ServerThread) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", json={"model": "echo", "messages": MESSAGES}
    )
    assert response.headers["x-request-id"].startswith("req-")


def test_stream_with_usage_gets_footprint_in_final_chunk(proxy: ServerThread) -> None:
    stream = client(proxy).chat.completions.create(
        model="echo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 w4 w5 w6 w7 "
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert final.usage.completion_tokens == 8
    footprint = final.model_extra["footprint"]  # type: ignore[index]
    assert footprint["method"] == "estimated" and footprint["gpu_energy_j"] > 0


def test_stream_without_usage_request_drops_usage_chunk_but_keeps_comment(
    proxy: ServerThread, upstream_log: UpstreamLog
) -> None:
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/chat/completions",
        json={"model": "echo", "messages": MESSAGES, "stream": True},
    ) as response:
        assert response.headers["x-footprint-method"] == "estimated"
        assert "x-request-id" in response.headers
        raw = response.read()
    # The proxy always asks the upstream for usage...
    assert upstream_log.requests[-1]["stream_options"] == {"include_usage": True}
    events = sse_events(raw)
    # ...but the client did not, so no usage chunk reaches it.
    assert not any(b'"usage"' in e for e in events)
    assert events[-1] == b"data: [DONE]"
    assert events[-2].startswith(b": footprint ")
    footprint = orjson.loads(events[-2][len(b": footprint ") :])
    assert footprint["completion_tokens"] == 8


def test_stream_chunks_arrive_incrementally(tmp_path: Path, start_proxy: Any) -> None:
    from tests.support.fake_upstream import make_upstream

    with ServerThread(make_upstream(words=6, chunk_interval_s=0.2)) as slow_upstream:
        proxy = start_proxy(proxy_settings(tmp_path, slow_upstream.url))
        arrivals: list[float] = []
        stream = client(proxy).chat.completions.create(model="echo", messages=MESSAGES, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
    assert len(arrivals) == 6
    # Chunks were produced 0.2 s apart; had the proxy buffered, they would arrive together.
    assert arrivals[-1] - arrivals[0] > 0.6


def test_upstream_without_stream_usage_is_counted(proxy: ServerThread) -> None:
    stream = client(proxy).chat.completions.create(
        model="nousage", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    final = chunks[-1]
    assert final.usage is not None and final.usage.completion_tokens == 8
    assert final.usage.prompt_tokens > 0
    assert final.model_extra["footprint"]["tokens_counted"] is True  # type: ignore[index]


def test_completions_and_embeddings_are_metered(proxy: ServerThread) -> None:
    sdk = client(proxy)
    completion = sdk.completions.with_raw_response.create(model="echo", prompt="once")
    assert completion.parse().choices[0].text == " once upon"
    assert float(completion.headers["x-footprint-energy-j"]) > 0
    embedding = sdk.embeddings.with_raw_response.create(model="echo", input=["a b", "c"])
    assert len(embedding.parse().data) == 2
    assert embedding.headers["x-footprint-method"] == "estimated"
    row = ledger_row(proxy, embedding.headers["x-request-id"])
    assert row["endpoint"] == "embeddings" and row["prompt_tokens"] == 3


def test_models_are_listed_from_upstream(proxy: ServerThread) -> None:
    ids = {m.id for m in client(proxy).models.list()}
    assert {"echo", "long"} <= ids


# ---- errors in OpenAI's shape, each raising the SDK's usual exception -----------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": "echo"}', "messages"),
        (b'{"model": "echo", "messages": "hi"}', "messages"),
        (
            b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "stream",
        ),
        (
            b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
            "max_tokens",
        ),
    ],
)
def test_bad_bodies_get_400(proxy: ServerThread, body: bytes, param: str | None) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


def test_sdk_raises_bad_request(proxy: ServerThread) -> None:
    with pytest.raises(openai.BadRequestError):
        client(proxy).chat.completions.create(model="echo", messages="nope")  # type: ignore[arg-type]


def test_unknown_model_is_404(tmp_path: Path, start_proxy: Any, upstream: ServerThread) -> None:
    settings = proxy_settings(tmp_path, upstream.url)
    only_echo = settings.upstreams[0].model_copy(update={"models": ["echo"]})
    proxy = start_proxy(settings.model_copy(update={"upstreams": [only_echo]}))
    with pytest.raises(openai.NotFoundError) as caught:
        client(proxy).chat.completions.create(model="gpt-nothing", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    assert_healthy(proxy)


def test_body_over_limit_is_413(tmp_path: Path, start_proxy: Any, upstream: ServerThread) -> None:
    proxy = start_proxy(
        proxy_settings(tmp_path, upstream.url, server={"auth": "none", "max_body_bytes": 1000})
    )
    big = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as caught:
        client(proxy).chat.completions.create(model="echo", messages=big)
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"
    assert_healthy(proxy)


def test_refused_connection_is_502(tmp_path: Path, start_proxy: Any, dead_port: int) -> None:
    proxy = start_proxy(proxy_settings(tmp_path, f"http://127.0.0.1:{dead_port}"))
    with pytest.raises(openai.InternalServerError) as caught:
        client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unavailable"
    assert httpx.get(f"{proxy.url}/healthz").status_code == 200
    assert httpx.get(f"{proxy.url}/readyz").status_code == 503


def test_garbage_answer_is_502(proxy: ServerThread) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client(proxy).chat.completions.create(model="garbage", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert_healthy(proxy)


def test_slow_upstream_is_504(proxy: ServerThread) -> None:
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        client(proxy).chat.completions.create(model="slow", messages=MESSAGES)
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert time.monotonic() - started < 3.0  # the read timeout (1.5 s), not the upstream's 3 s
    assert_healthy(proxy)


@pytest.mark.parametrize(("model", "status"), [("error500", 500), ("error400", 400)])
def test_upstream_errors_pass_unchanged(proxy: ServerThread, model: str, status: int) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", json={"model": model, "messages": MESSAGES}
    )
    assert response.status_code == status
    assert response.json()["error"]["message"] in ("model crashed", "bad temperature")
    row = ledger_row(proxy, response.headers["x-request-id"])
    assert row["status"] == status
    assert_healthy(proxy)


def test_upstream_dying_mid_stream_ends_stream_cleanly(proxy: ServerThread) -> None:
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/chat/completions",
        json={"model": "drop", "messages": MESSAGES, "stream": True},
    ) as response:
        request_id = response.headers["x-request-id"]
        raw = response.read()
    events = sse_events(raw)
    assert events[-1] == b"data: [DONE]"
    error_events = [e for e in events if e.startswith(b'data: {"error"')]
    assert len(error_events) == 1
    assert orjson.loads(error_events[0][6:])["error"]["code"] == "upstream_unavailable"
    assert sum(1 for e in events if b"w" in e and b"delta" in e) == 3
    row = ledger_row(proxy, request_id)
    assert row["cancelled"] is True and row["completion_tokens"] == 3
    with pytest.raises(openai.APIError):
        list(client(proxy).chat.completions.create(model="drop", messages=MESSAGES, stream=True))
    assert_healthy(proxy)


def test_client_disconnect_cancels_upstream_within_a_second(
    proxy: ServerThread, upstream_log: UpstreamLog
) -> None:
    with httpx.stream(
        "POST",
        f"{proxy.url}/v1/chat/completions",
        headers={"x-request-id": "gone-1"},
        json={"model": "long", "messages": MESSAGES, "stream": True},
    ) as response:
        for n, _ in enumerate(response.iter_raw()):
            if n >= 3:
                break
        left_at = time.monotonic()
    deadline = time.monotonic() + 3
    while "gone-1" not in upstream_log.cancelled_at and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "gone-1" in upstream_log.cancelled_at
    assert upstream_log.cancelled_at["gone-1"] - left_at < 1.0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        found = httpx.get(f"{proxy.url}/v1/footprint/requests/gone-1")
        if found.status_code == 200:
            break
        time.sleep(0.05)
    row = found.json()
    assert row["cancelled"] is True and row["completion_tokens"] >= 3
    assert_healthy(proxy)
