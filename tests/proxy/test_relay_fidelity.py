"""Nothing of the upstream's answer is lost on the way: its headers, its whole usage object,
a compressed body; and the proxy's own refusals tell the SDK not to retry."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.proxy.conftest import proxy_settings
from tests.support.fake_upstream import UpstreamLog
from tests.support.servers import ServerThread

MESSAGES: Any = [{"role": "user", "content": "hello there"}]
ADMIN_KEY = "admin-secret-for-tests"


def client(proxy: ServerThread, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=retries)


def test_a_whole_answer_keeps_the_upstreams_headers_but_footprints_own_win(
    proxy: ServerThread,
) -> None:
    raw = client(proxy).chat.completions.with_raw_response.create(model="echo", messages=MESSAGES)
    assert raw.headers["x-ratelimit-remaining-requests"] == "99"
    assert raw.headers["openai-processing-ms"] == "12"
    assert raw.headers["x-footprint-zone"] == "WORLD"  # the upstream said MARS


def test_a_stream_keeps_the_upstreams_headers(proxy: ServerThread) -> None:
    body = {"model": "echo", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body) as response:
        assert response.headers["x-ratelimit-limit-requests"] == "100"
        assert response.headers["openai-processing-ms"] == "12"
        assert "x-footprint-zone" not in response.headers  # streams carry only method and id
        assert response.headers["x-footprint-method"] == "estimated"
        response.read()


def test_an_upstream_error_keeps_its_retry_headers(proxy: ServerThread) -> None:
    response = httpx.post(
        f"{proxy.url}/v1/chat/completions", json={"model": "error500", "messages": MESSAGES}
    )
    assert response.status_code == 500
    assert response.headers["retry-after"] == "7"
    assert response.headers["x-should-retry"] == "true"


def test_a_budget_refusal_says_do_not_retry_and_the_sdk_does_not(
    tmp_path: Path,
    start_proxy: Any,
    upstream: ServerThread,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = start_proxy(
        proxy_settings(tmp_path, upstream.url), environ={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY}
    )
    budget = {"team": "default", "metric": "requests", "limit": 1, "period": "day"}
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(f"{proxy.url}/admin/teams", json={"name": "default"}, headers=admin)
    assert httpx.put(f"{proxy.url}/admin/budgets", json=budget, headers=admin).is_success
    client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
    refused = httpx.post(
        f"{proxy.url}/v1/chat/completions", json={"model": "echo", "messages": MESSAGES}
    )
    assert refused.status_code == 429
    assert refused.headers["x-should-retry"] == "false"
    with caplog.at_level(logging.INFO, logger="openai"), pytest.raises(openai.RateLimitError):
        client(proxy, retries=3).chat.completions.create(model="echo", messages=MESSAGES)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()]


def test_the_final_usage_chunk_keeps_the_upstreams_usage_whole(proxy: ServerThread) -> None:
    chunks = list(
        client(proxy).chat.completions.create(
            model="echo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 8
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 2
    assert chunks[-1].model_extra["footprint"]["completion_tokens"] == 8  # type: ignore[index]


def test_the_upstream_is_asked_for_an_uncompressed_answer(
    proxy: ServerThread, upstream_log: UpstreamLog
) -> None:
    client(proxy).chat.completions.create(model="echo", messages=MESSAGES)
    assert upstream_log.headers[-1]["accept-encoding"] == "identity"


def test_an_upstream_that_compresses_anyway_is_decoded_whole_and_streamed(
    proxy: ServerThread,
) -> None:
    sdk = client(proxy)
    raw = sdk.chat.completions.with_raw_response.create(model="gzip", messages=MESSAGES)
    answer = raw.parse()
    assert answer.choices[0].message.content == "w0 w1 w2 w3 w4 w5 w6 w7"
    assert answer.model_extra["footprint"]["completion_tokens"] == 8  # type: ignore[index]
    assert "content-encoding" not in raw.headers
    chunks = list(
        sdk.chat.completions.create(
            model="gzip", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "w0 w1 w2 w3 w4 w5 w6 w7 "
    assert "cancelled" not in chunks[-1].model_extra["footprint"]  # type: ignore[index]
