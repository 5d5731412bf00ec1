"""Rate limits across three real `footprint serve` replicas sharing PostgreSQL and Redis: N
concurrent requests spread over the replicas, exactly the limit served."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import PG_DSN, REDIS_URL
from tests.support.fake_upstream import make_upstream
from tests.support.processes import ProxyProcess, replica_config, start_replicas
from tests.support.servers import ServerThread

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ADMIN_KEY = "admin-" + secrets.token_hex(16)


async def _schema(statement: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _forget_redis_keys(team: str) -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"footprint:{{{team}}}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ProxyProcess]]:
    schema = "t_" + secrets.token_hex(6)
    asyncio.run(_schema(f"CREATE SCHEMA {schema}"))
    workdir: Path = tmp_path_factory.mktemp("limits")
    upstream = ServerThread(make_upstream(delay_s=0.3)).__enter__()
    config = replica_config(
        upstream.url,
        f"{PG_DSN}?schema={schema}",
        REDIS_URL,
        ledger={"pool_size": 1, "pool_max_overflow": 1},
    )
    started: list[ProxyProcess] = []
    try:
        started += start_replicas(3, config, workdir, {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY})
        yield started
    finally:
        for replica in started:
            replica.stop()
        upstream.__exit__(None, None, None)
        asyncio.run(_schema(f"DROP SCHEMA {schema} CASCADE"))


async def _chat(url: str, key: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {key}"},
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        )


def test_three_replicas_serve_exactly_the_limit(replicas: list[ProxyProcess]) -> None:
    team = f"rl-{secrets.token_hex(4)}"
    admin: dict[str, Any] = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=replicas[0].url, headers=admin, timeout=30) as client:
        assert client.post("/admin/teams", json={"name": team}).status_code == 201
        key = client.post("/admin/keys", json={"team": team}).json()["key"]
        assert (
            client.put("/admin/limits", json={"team": team, "requests_per_minute": 5}).status_code
            == 200
        )
    try:
        if time.time() % 60 > 40:  # one counting window for the whole burst
            time.sleep(61 - time.time() % 60)

        async def burst() -> list[httpx.Response]:
            return await asyncio.gather(*(_chat(replicas[i % 3].url, key) for i in range(15)))

        answers = asyncio.run(burst())
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200] * 5 + [429] * 10
        assert {a.headers["x-ratelimit-limit-requests"] for a in answers} == {"5"}
        served = [a for a in answers if a.status_code == 200]
        remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in served)
        assert remaining == [0, 1, 2, 3, 4]
    finally:
        asyncio.run(_forget_redis_keys(team))
