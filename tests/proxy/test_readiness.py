"""`/readyz` tells the truth about what a request needs (the ledger can write, Redis answers)
and a store that fails costs bounded time and a clear 503, on real `footprint serve`
processes (issue 11, defects 9, 11 and 12)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import PG_DSN
from tests.support.fake_upstream import make_upstream
from tests.support.processes import ProxyProcess, replica_config
from tests.support.redis_server import PrivateRedis
from tests.support.servers import ServerThread, free_port

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


ADMIN_KEY = "admin-" + "r" * 40
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def _assert_service_unavailable(answer: httpx.Response, *, relayed: bool = True) -> None:
    assert answer.status_code == 503, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("api_error", "service_unavailable")
    if relayed:
        assert answer.headers.get("x-request-id")


def test_a_deleted_sqlite_ledger_is_noticed_and_never_replaced_by_an_empty_one(
    tmp_path: Path, upstream: ServerThread
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    config = replica_config(upstream.url, f"sqlite:///{data / 'ledger.db'}", auth="none")
    env = {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY}
    with (
        ProxyProcess("deleted-ledger", config, tmp_path / "run", env) as proxy,
        httpx.Client(base_url=proxy.url, timeout=30.0) as client,
    ):
        assert (
            client.post("/admin/teams", json={"name": "default"}, headers=ADMIN).status_code == 201
        )
        budget = {"team": "default", "metric": "requests", "period": "total", "limit": 100}
        assert client.put("/admin/budgets", json=budget, headers=ADMIN).status_code == 200
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert client.get("/readyz").status_code == 200
        shutil.rmtree(data)  # the ledger's directory, gone while serving
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["ledger"] == "unavailable"
        _assert_service_unavailable(client.post("/v1/chat/completions", json=CHAT))
        # A stream cannot be recorded either: it ends with the error and [DONE], not cut.
        streamed = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert '"code":"service_unavailable"' in streamed.text
        assert streamed.text.rstrip().endswith("data: [DONE]")
        _assert_service_unavailable(
            client.post("/admin/teams", json={"name": "b"}, headers=ADMIN), relayed=False
        )
    # Restarted, it refuses to start on an empty ledger where one existed: one line, no
    # traceback, nothing created.
    again = ProxyProcess("deleted-ledger-restart", config, tmp_path / "run", env).launch()
    assert again.process is not None
    assert again.process.wait(timeout=60) != 0
    log = again.log_tail()
    assert "Traceback" not in log
    assert str(data) in log
    assert not data.exists()

    # The file alone deleted (its directory kept): the same refusal.
    data.mkdir()
    with ProxyProcess("file-only", config, tmp_path / "run2", env):
        pass
    (data / "ledger.db").unlink()
    again = ProxyProcess("file-only-restart", config, tmp_path / "run2", env).launch()
    assert again.process is not None
    assert again.process.wait(timeout=60) != 0
    assert not (data / "ledger.db").exists()


@pytest.mark.postgres
async def test_a_postgresql_ledger_that_cannot_write_answers_503_and_is_not_ready(
    tmp_path: Path, upstream: ServerThread, pg_url: str
) -> None:
    schema = pg_url.rsplit("schema=", 1)[1]
    config = replica_config(upstream.url, pg_url, auth="none")
    env = {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY}
    with ProxyProcess("unwritable", config, tmp_path, env) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30.0) as client:
            await client.post("/admin/teams", json={"name": "default"}, headers=ADMIN)
            budget = {"team": "default", "metric": "requests", "period": "total", "limit": 100}
            assert (
                await client.put("/admin/budgets", json=budget, headers=ADMIN)
            ).status_code == 200
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
            conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
            try:
                await conn.execute(
                    "ALTER TABLE requests ADD CONSTRAINT no_rows CHECK (false) NOT VALID"
                )
                _assert_service_unavailable(await client.post("/v1/chat/completions", json=CHAT))
                # A stream's reservation is given back at once (it was held for 600 s), and
                # the stream ends with the error and [DONE] instead of being cut.
                streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
                assert '"code":"service_unavailable"' in streamed.text
                assert streamed.text.rstrip().endswith("data: [DONE]")
                lines = await client.get(
                    "/admin/budgets", params={"team": "default"}, headers=ADMIN
                )
                assert lines.json()["data"][0]["reserved"] == 0
                ready = await client.get("/readyz")
                assert ready.status_code == 503
                assert ready.json()["ledger"] == "unavailable"
                await conn.execute("ALTER TABLE requests DROP CONSTRAINT no_rows")
                assert (await client.get("/readyz")).status_code == 200
                assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
                rows = await conn.fetchval("SELECT count(*) FROM requests")
                assert rows == 2
            finally:
                await conn.close()


@pytest.mark.postgres
def test_postgresql_missing_at_start_is_one_line_and_a_clean_exit(
    tmp_path: Path, upstream: ServerThread
) -> None:
    port = free_port()  # nothing listens there
    config = replica_config(
        upstream.url,
        f"postgresql://postgres@127.0.0.1:{port}/test",
        auth="none",
        ledger={"connect_retry_s": 2.0},
    )
    proxy = ProxyProcess("no-postgres", config, tmp_path).launch()
    assert proxy.process is not None
    assert proxy.process.wait(timeout=60) == 1
    log = proxy.log_tail()
    assert "Traceback" not in log
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert "retrying" in log
    assert f"127.0.0.1:{port}" in lines[-1]


@pytest.mark.postgres
async def test_a_ledger_pool_that_runs_out_answers_503_with_a_log_line(
    tmp_path: Path, upstream: ServerThread, pg_url: str
) -> None:
    """One connection, which the row writer holds once a row is written, and a 10 ms wait for
    a free one: every report read after that finds none, and each is a 503, never a 500."""
    config = replica_config(
        upstream.url,
        pg_url,
        auth="none",
        ledger={"pool_size": 1, "pool_max_overflow": 0, "pool_timeout_s": 0.01},
    )
    with ProxyProcess("small-pool", config, tmp_path) as proxy:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30.0) as client:
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
            answers = [
                await client.get("/v1/footprint/usage", params={"group_by": "model"})
                for _ in range(5)
            ]
        for answer in answers:
            _assert_service_unavailable(answer, relayed=False)
        assert "ledger unavailable" in proxy.log_tail(20_000)
