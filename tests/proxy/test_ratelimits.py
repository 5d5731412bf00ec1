"""Rate limits on one replica (counted in-process): requests and tokens per minute per team or
key, refused in OpenAI's rate-limit shape with retry-after and x-ratelimit-* on every answer of
a limited key; a refused request reaches no upstream and leaves no row; bad limits change
nothing."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from proxy.budgets import Admission, Counted, Limit
from tests.proxy.conftest import proxy_settings
from tests.support.fake_upstream import UpstreamLog
from tests.support.servers import ServerThread

ADMIN_KEY = "admin-" + secrets.token_hex(16)
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
# The test upstream's own x-ratelimit-limit-requests (tests/support/fake_apis.py).
UPSTREAMS = "100"


def _wait_for_fresh_minute() -> None:
    """Counting windows are calendar minutes: start well inside one."""
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)


@pytest.fixture
def gateway(
    start_proxy: Callable[..., ServerThread], tmp_path: Path, upstream: ServerThread
) -> Any:
    server = start_proxy(
        proxy_settings(tmp_path, upstream.url, server={"auth": "keys"}),
        environ={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY},
    )
    admin = httpx.Client(base_url=server.url, headers=ADMIN, timeout=30)
    assert admin.post("/admin/teams", json={"name": "search"}).status_code == 201
    keys = [admin.post("/admin/keys", json={"team": "search"}).json() for _ in range(2)]
    return server, admin, keys


def _chat(url: str, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}], **body},
        timeout=30,
    )


def test_a_team_gets_exactly_its_requests_per_minute(
    gateway: Any, upstream_log: UpstreamLog
) -> None:
    server, admin, keys = gateway
    put = admin.put("/admin/limits", json={"team": "search", "requests_per_minute": 3})
    assert put.status_code == 200
    assert put.json() == {
        "team": "search",
        "key_id": None,
        "requests_per_minute": 3,
        "tokens_per_minute": None,
    }
    _wait_for_fresh_minute()
    answers = [_chat(server.url, keys[i % 2]["key"]) for i in range(5)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == list("21000")
    assert all(a.headers["x-ratelimit-limit-requests"] == "3" for a in answers)
    assert all(a.headers["x-ratelimit-reset-requests"].endswith("s") for a in answers)
    refused = answers[3]
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # The refused never reached the upstream and left no row.
    assert len(upstream_log.requests) == 3
    rid = refused.headers["x-request-id"]
    assert admin.get(f"/v1/footprint/requests/{rid}").status_code == 404


def test_tokens_per_minute_count_the_prompt_and_the_output_cap(gateway: Any) -> None:
    server, admin, keys = gateway
    admin.put("/admin/limits", json={"team": "search", "tokens_per_minute": 100})
    _wait_for_fresh_minute()
    first = _chat(server.url, keys[0]["key"], max_tokens=60)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    remaining = int(first.headers["x-ratelimit-remaining-tokens"])
    assert 30 <= remaining < 40  # 60 output + the prompt's few tokens
    second = _chat(server.url, keys[0]["key"], max_tokens=60)
    assert second.status_code == 429
    assert second.json()["error"]["type"] == "tokens"
    assert "x-ratelimit-limit-requests" not in second.headers  # no request limit set


def test_a_key_limit_holds_that_key_only_and_a_stream_carries_the_headers(gateway: Any) -> None:
    server, admin, keys = gateway
    limited, other = keys[0], keys[1]
    put = admin.put("/admin/limits", json={"team": "search", "key_id": limited["id"]})
    assert put.status_code == 200
    admin.put(
        "/admin/limits",
        json={"team": "search", "key_id": limited["id"], "requests_per_minute": 1},
    )
    _wait_for_fresh_minute()
    stream = _chat(server.url, limited["key"], stream=True)
    assert stream.status_code == 200 and "data: [DONE]" in stream.text
    assert stream.headers["x-ratelimit-remaining-requests"] == "0"
    assert _chat(server.url, limited["key"]).status_code == 429
    free = _chat(server.url, other["key"])
    # Not limited here: the upstream's own x-ratelimit-* pass on unchanged.
    assert free.status_code == 200 and free.headers["x-ratelimit-limit-requests"] == UPSTREAMS
    shown = admin.get("/admin/limits", params={"team": "search"}).json()["data"]
    assert shown == [
        {
            "team": "search",
            "key_id": limited["id"],
            "requests_per_minute": 1,
            "tokens_per_minute": None,
        }
    ]


def test_the_openai_sdk_raises_its_rate_limit_error(gateway: Any) -> None:
    server, admin, keys = gateway
    admin.put("/admin/limits", json={"team": "search", "requests_per_minute": 1})
    _wait_for_fresh_minute()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=keys[0]["key"], max_retries=0)
    client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "a"}])
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "b"}])
    assert raised.value.code == "rate_limit_exceeded"
    assert raised.value.type == "requests"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({}, 400, "team"),
        ({"team": "search", "requests_per_minute": 0}, 400, "requests_per_minute"),
        ({"team": "search", "requests_per_minute": 1.5}, 400, "requests_per_minute"),
        ({"team": "search", "tokens_per_minute": True}, 400, "tokens_per_minute"),
        ({"team": "search", "key_id": "nope"}, 400, "key_id"),
        ({"team": "search", "burst": 3}, 400, "burst"),
        ({"team": "nobody", "requests_per_minute": 3}, 404, "team"),
        ({"team": "search", "key_id": "key_0000000000000000"}, 404, "key_id"),
    ],
)
def test_bad_limits_are_refused_and_change_nothing(
    gateway: Any, body: dict[str, Any], status: int, param: str
) -> None:
    server, admin, keys = gateway
    answer = admin.put("/admin/limits", json=body)
    assert answer.status_code == status
    assert answer.json()["error"]["param"] == param
    assert admin.get("/admin/limits", params={"team": "search"}).json()["data"] == []
    assert _chat(server.url, keys[0]["key"]).headers["x-ratelimit-limit-requests"] == UPSTREAMS
    key = keys[0]["key"]
    assert httpx.put(
        f"{server.url}/admin/limits",
        headers={"authorization": f"Bearer {key}"},
        json={"team": "search", "requests_per_minute": 1},
    ).status_code in (401, 403)


def test_headers_name_the_tightest_scope() -> None:
    team = Limit("team", 10, 1000)
    key = Limit("key_1", 3, None)
    admission = Admission((Counted(team, 2, 500), Counted(key, 2, 500)), reset_s=12.2)
    assert admission.headers() == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "13s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "13s",
    }


@pytest.mark.parametrize(("policy", "status"), [("allow", 200), ("refuse", 503)])
def test_an_unreachable_counter_follows_the_store_policy(
    start_proxy: Callable[..., ServerThread],
    tmp_path: Path,
    upstream: ServerThread,
    dead_port: int,
    policy: str,
    status: int,
) -> None:
    settings = proxy_settings(
        tmp_path,
        upstream.url,
        server={"auth": "keys"},
        budgets={"redis_url": f"redis://127.0.0.1:{dead_port}/0", "on_store_error": policy},
    )
    server = start_proxy(settings, environ={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY})
    admin = httpx.Client(base_url=server.url, headers=ADMIN, timeout=30)
    admin.post("/admin/teams", json={"name": "search"})
    key = admin.post("/admin/keys", json={"team": "search"}).json()["key"]
    admin.put("/admin/limits", json={"team": "search", "requests_per_minute": 1})
    answer = _chat(server.url, key)
    assert answer.status_code == status
    if status == 503:
        assert answer.json()["error"]["message"] == "the rate-limit store is unavailable"
    else:  # served unchecked: no figures of ours to show
        assert answer.headers["x-ratelimit-limit-requests"] == UPSTREAMS
