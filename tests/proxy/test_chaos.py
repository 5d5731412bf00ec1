"""Chaos under a bounded mixed load (issue 11): two real `footprint serve` replicas on one
PostgreSQL ledger and a private Redis; while six clients send whole and streamed requests of
two teams, Redis is restarted (empty) and stopped for a while, this test's own PostgreSQL
connections are killed (pg_terminate_backend, by application_name), and the upstream goes
away and comes back. Afterwards every answered request has exactly one row, no row lacks an
answer, and every budget's `used` equals what its team's rows add up to."""

from __future__ import annotations

import asyncio
import random
import secrets
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.support.fake_upstream import make_upstream
from tests.support.processes import ProxyProcess, replica_config, start_replicas
from tests.support.redis_server import PrivateRedis
from tests.support.servers import ServerThread, free_port

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ADMIN_KEY = "admin-" + secrets.token_hex(20)
WORKERS = 6


@dataclass
class Answer:
    request_id: str
    team: str
    status: int


class FlappingUpstream:
    """The test upstream on a fixed port, stopped and started again on it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ServerThread | None = None

    def start(self) -> None:
        self.server = ServerThread(make_upstream(words=6), port=self.port).__enter__()

    def stop(self) -> None:
        if self.server is not None:
            self.server.__exit__(None, None, None)
            self.server = None


async def _kill_connections(dsn: str, application_name: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return len(
            await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = $1 AND pid <> pg_backend_pid()",
                application_name,
            )
        )
    finally:
        await conn.close()


async def _send(
    client: httpx.AsyncClient, url: str, key: str, team: str, rng: random.Random
) -> Answer | None:
    stream = rng.random() < 0.5
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    headers = {"authorization": f"Bearer {key}"}
    if rng.random() < 0.5:
        headers["x-request-id"] = f"chaos-{secrets.token_hex(8)}"
    try:
        answer = await client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
    except httpx.HTTPError:
        return None  # no answer (a replica never goes down here, so this should not happen)
    return Answer(answer.headers.get("x-request-id", ""), team, answer.status_code)


async def test_every_answer_has_one_row_and_budgets_equal_rows_through_chaos(
    tmp_path: Path, pg_url: str
) -> None:
    from tests.conftest import PG_DSN

    application_name = "chaos-" + secrets.token_hex(4)
    redis = PrivateRedis(tmp_path / "redis").start()
    upstream = FlappingUpstream()
    upstream.start()
    config = replica_config(
        upstream.url,
        f"{pg_url}&application_name={application_name}",
        redis.url,
        on_store_error="allow",
        budgets={"claim_ttl_s": 2.0},
        ledger={"pool_size": 3, "pool_max_overflow": 1},
    )
    config["upstreams"][0]["read_timeout_s"] = 5.0
    replicas: list[ProxyProcess] = []
    try:
        replicas = start_replicas(2, config, tmp_path, {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY})
        admin = httpx.AsyncClient(
            base_url=replicas[0].url,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30.0,
        )
        keys: dict[str, str] = {}
        for team in ("alpha", "beta"):
            assert (await admin.post("/admin/teams", json={"name": team})).status_code == 201
            keys[team] = (await admin.post("/admin/keys", json={"team": team})).json()["key"]
            for metric in ("requests", "tokens"):
                budget = {"team": team, "metric": metric, "period": "total", "limit": 1e9}
                assert (await admin.put("/admin/budgets", json=budget)).status_code == 200

        answers: list[Answer] = []
        unanswered = 0
        stop = asyncio.Event()

        async def worker(seed: int) -> None:
            nonlocal unanswered
            rng = random.Random(seed)
            async with httpx.AsyncClient(timeout=60.0) as client:
                while not stop.is_set():
                    team = rng.choice(list(keys))
                    url = rng.choice(replicas).url
                    answer = await _send(client, url, keys[team], team, rng)
                    if answer is None:
                        unanswered += 1
                    else:
                        answers.append(answer)

        async def chaos() -> None:
            await asyncio.sleep(2)
            await asyncio.to_thread(redis.restart)  # back at once, and empty
            await asyncio.sleep(2)
            assert await _kill_connections(PG_DSN, application_name) > 0
            await asyncio.sleep(2)
            await asyncio.to_thread(upstream.stop)  # the upstream flaps
            await asyncio.sleep(1)
            await asyncio.to_thread(upstream.start)
            await asyncio.sleep(2)
            await asyncio.to_thread(redis.stop)  # down for a while, then back empty
            await _kill_connections(PG_DSN, application_name)
            await asyncio.sleep(1.5)
            await asyncio.to_thread(redis.start)
            await asyncio.sleep(2)
            stop.set()

        workers = [asyncio.create_task(worker(i)) for i in range(WORKERS)]
        await chaos()
        await asyncio.gather(*workers)

        # Calm again: one more request per replica and team applies what was queued for
        # Redis while it was away (after the store's one-second pause).
        await asyncio.sleep(1.5)
        rng = random.Random(99)
        async with httpx.AsyncClient(timeout=60.0) as client:
            for replica in replicas:
                for team in keys:
                    answer = await _send(client, replica.url, keys[team], team, rng)
                    assert answer is not None and answer.status == 200, answer
                    answers.append(answer)

        assert unanswered == 0
        assert len(answers) > 50, "the load must have run"
        statuses = {a.status for a in answers}
        assert statuses <= {200, 502, 503, 504}, statuses
        assert 200 in statuses

        conn = await asyncpg.connect(
            PG_DSN, server_settings={"search_path": pg_url.rsplit("schema=", 1)[1]}
        )
        try:
            rows = await conn.fetch(
                "SELECT request_id, team, status, prompt_tokens + completion_tokens AS tokens,"
                " (status < 400 OR prompt_tokens + completion_tokens > 0 OR energy_j > 0)"
                " AS counted FROM requests"
            )
        finally:
            await conn.close()
        by_id = {r["request_id"]: r for r in rows}
        answered = {a.request_id: a for a in answers}
        assert len(answered) == len(answers), "every answer has an id of its own"
        # Every request the proxy served or relayed has its row; a 503 (the ledger could not
        # write) has none; and no row is without an answer.
        for answer in answers:
            if answer.status == 503:
                assert answer.request_id not in by_id, answer
            else:
                assert answer.request_id in by_id, answer
                assert by_id[answer.request_id]["team"] == answer.team
        assert set(by_id) <= set(answered)

        for team in keys:
            lines = (await admin.get("/admin/budgets", params={"team": team})).json()["data"]
            used = {x["metric"]: x["used"] for x in lines}
            reserved = {x["metric"]: x["reserved"] for x in lines}
            team_rows = [r for r in rows if r["team"] == team]
            assert used["requests"] == sum(1 for r in team_rows if r["counted"]), team
            assert used["tokens"] == sum(r["tokens"] for r in team_rows), team
            assert reserved == {"requests": 0, "tokens": 0}, team
        await admin.aclose()
    finally:
        for replica in replicas:
            replica.stop()
        upstream.stop()
        redis.stop()
