"""`/readyz` tells the truth about what a request needs (the ledger can write, Redis answers)
and a store that fails costs bounded time and a clear 503, on real `footprint serve`
processes (issue 11, defects 9, 11 and 12)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.fake_upstream import make_upstream
from tests.support.processes import ProxyProcess, replica_config
from tests.support.redis_server import PrivateRedis
from tests.support.servers import ServerThread

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    with ServerThread(make_upstream()) as server:
        yield server


def _ready(proxy: ProxyProcess) -> httpx.Response:
    return httpx.get(f"{proxy.url}/readyz", timeout=30.0)


@pytest.mark.redis
def test_a_redis_that_never_answers_is_not_ready_and_costs_requests_no_timeouts(
    tmp_path: Path, upstream: ServerThread
) -> None:
    timeout_s = 1.0
    redis = PrivateRedis(tmp_path / "redis").start()
    config = replica_config(
        upstream.url,
        f"sqlite:///{tmp_path / 'ledger.db'}",
        redis.url,
        auth="none",
        on_store_error="allow",
        budgets={"redis_timeout_s": timeout_s},
    )
    try:
        with ProxyProcess("frozen-redis", config, tmp_path) as proxy:
            assert httpx.post(f"{proxy.url}/v1/chat/completions", json=CHAT).status_code == 200
            ready = _ready(proxy)
            assert ready.status_code == 200, ready.text
            assert ready.json()["budgets"] == "ok"

            redis.freeze()  # it still accepts connections, and never answers
            ready = _ready(proxy)
            assert ready.status_code == 503
            assert ready.json()["budgets"] == "unavailable"
            requests = 10
            started = time.monotonic()
            with httpx.Client(base_url=proxy.url, timeout=60.0) as client:
                for _ in range(requests):
                    answer = client.post("/v1/chat/completions", json=CHAT)
                    assert answer.status_code == 200, answer.text
            elapsed_s = time.monotonic() - started
            # Each request used to wait out the timeout twice (reserve and settle): at least
            # 2 x 10 x timeout. Now Redis is asked again at most once a second.
            assert elapsed_s < requests * timeout_s, elapsed_s

            redis.thaw()
            deadline = time.monotonic() + 20
            while _ready(proxy).status_code != 200:
                assert time.monotonic() < deadline, _ready(proxy).text
                time.sleep(0.2)
    finally:
        redis.stop()
