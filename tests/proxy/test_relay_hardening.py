"""Attacker-minded requests against a real `footprint serve` on PostgreSQL with key auth, two
teams and budgets (issue 11): a reused request id, fields the ledger cannot store, non-ASCII
headers, `n`, duplicate JSON keys, upstream credentials in error bodies, oversized upstream
answers, a stream timing out. Each refused request leaves no row, no charge and no upstream
call; each answered one has exactly one row."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from tests.conftest import PG_DSN
from tests.support.fake_upstream import UpstreamLog, make_upstream
from tests.support.processes import ProxyProcess, replica_config
from tests.support.servers import ServerThread

pytestmark = [pytest.mark.postgres]

ADMIN_KEY = "admin-" + secrets.token_hex(20)
UPSTREAM_KEY = "sk-upstream-" + secrets.token_hex(16)
MESSAGES = [{"role": "user", "content": "hello there"}]


@dataclass
class Deployment:
    proxy: ProxyProcess
    log: UpstreamLog
    schema: str

    def admin(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.proxy.url,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30.0,
        )

    async def new_team(self, models: list[str] | None = None) -> tuple[str, httpx.AsyncClient]:
        """A fresh team, and a client carrying a key of it."""
        team = "t-" + secrets.token_hex(4)
        async with self.admin() as admin:
            assert (await admin.post("/admin/teams", json={"name": team})).status_code == 201
            key = await admin.post("/admin/keys", json={"team": team, "models": models or ["*"]})
            assert key.status_code == 201, key.text
        client = httpx.AsyncClient(
            base_url=self.proxy.url,
            headers={"authorization": f"Bearer {key.json()['key']}"},
            timeout=30.0,
        )
        return team, client

    async def put_budget(self, team: str, metric: str, limit: float) -> None:
        async with self.admin() as admin:
            body = {"team": team, "metric": metric, "period": "total", "limit": limit}
            assert (await admin.put("/admin/budgets", json=body)).status_code == 200

    async def budget(self, team: str, metric: str) -> dict[str, float]:
        async with self.admin() as admin:
            answer = await admin.get("/admin/budgets", params={"team": team})
        (line,) = [x for x in answer.json()["data"] if x["metric"] == metric]
        return line  # type: ignore[no-any-return]

    async def rows(self, team: str) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": self.schema})
        try:
            return list(
                await conn.fetch(
                    "SELECT request_id, status, error, completion_tokens FROM requests"
                    " WHERE team = $1",
                    team,
                )
            )
        finally:
            await conn.close()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    schema = "t_" + secrets.token_hex(6)

    async def schema_op(sql: str) -> None:
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(schema_op(f"CREATE SCHEMA {schema}"))
    log = UpstreamLog()
    workdir = tmp_path_factory.mktemp("hardening")
    try:
        with ServerThread(make_upstream(log, delay_s=5.0)) as upstream:
            config = replica_config(upstream.url, f"{PG_DSN}?schema={schema}", auth="keys")
            config["upstreams"][0].update(
                {
                    "api_key_env": "UPSTREAM_TEST_KEY",
                    "read_timeout_s": 2.0,
                    "max_response_bytes": 1024 * 1024,
                }
            )
            env = {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY, "UPSTREAM_TEST_KEY": UPSTREAM_KEY}
            with ProxyProcess("hardening", config, workdir, env) as proxy:
                yield Deployment(proxy, log, schema)
    finally:
        asyncio.run(schema_op(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture
async def team(deployment: Deployment) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    name, client = await deployment.new_team()
    async with client:
        yield name, client


def _error(answer: httpx.Response) -> dict[str, object]:
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error  # type: ignore[no-any-return]


async def test_a_reused_request_id_is_409_and_never_served_free(
    deployment: Deployment, team: tuple[str, httpx.AsyncClient]
) -> None:
    """Defect 1: 50 requests with one x-request-id against a 5-request budget used to be 50
    answers, one row, and usage gone after a restart."""
    name, client = team
    await deployment.put_budget(name, "requests", 5)
    request_id = "dup-" + secrets.token_hex(4)
    body = {"model": "echo", "messages": MESSAGES}
    answers = await asyncio.gather(
        *(
            client.post("/v1/chat/completions", json=body, headers={"x-request-id": request_id})
            for _ in range(20)
        )
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [409] * 19, statuses
    for answer in answers:
        if answer.status_code == 409:
            error = _error(answer)
            assert (error["type"], error["code"]) == (
                "invalid_request_error",
                "duplicate_request_id",
            )
    # Recorded: a later reuse is refused too.
    again = await client.post(
        "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
    )
    assert again.status_code == 409
    rows = await deployment.rows(name)
    assert [r["request_id"] for r in rows] == [request_id]
    assert (await deployment.budget(name, "requests"))["used"] == 1

    # Another team reusing that id is refused as well: never served free, never lost.
    other, other_client = await deployment.new_team()
    async with other_client:
        stolen = await other_client.post(
            "/v1/chat/completions", json=body, headers={"x-request-id": request_id}
        )
    assert stolen.status_code == 409
    assert await deployment.rows(other) == []


@pytest.mark.parametrize(
    ("headers", "body", "param"),
    [
        ({"x-request-id": "r" * 201}, {}, "x-request-id"),
        ({"x-request-id": "has space"}, {}, "x-request-id"),
        ({}, {"model": "m" * 201}, "model"),
        ({}, {"model": "echo\u0000"}, "model"),
        ({}, {"max_tokens": 2**31}, "max_tokens"),
        ({}, {"max_completion_tokens": 2**40}, "max_completion_tokens"),
        ({}, {"n": 10_000}, "n"),
        ({}, {"messages": [{"role": "user", "content": "x"}] * 3, "user": "u" * 1000}, "user"),
    ],
)
async def test_client_fields_the_ledger_cannot_store_are_400_before_the_upstream(
    deployment: Deployment,
    team: tuple[str, httpx.AsyncClient],
    headers: dict[str, str],
    body: dict[str, object],
    param: str,
) -> None:
    """Defect 2 (and 6's id): the insert failed after the upstream did the work."""
    name, client = team
    calls = len(deployment.log.requests)
    full = {"model": "echo", "messages": MESSAGES, **body}
    answer = await client.post("/v1/chat/completions", json=full, headers=headers)
    assert answer.status_code == 400, answer.text
    error = _error(answer)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert len(deployment.log.requests) == calls
    assert await deployment.rows(name) == []


async def test_non_ascii_headers_are_never_a_500(
    deployment: Deployment, team: tuple[str, httpx.AsyncClient]
) -> None:
    """Defect 4: httpx encodes header values as ASCII; a non-ASCII one was a 500."""
    name, client = team
    body = {"model": "echo", "messages": MESSAGES}
    for header, value in (("user-agent", "naïve/1.0"), ("accept-language", "日本語")):
        answer = await client.post(
            "/v1/chat/completions", json=body, headers={header: value.encode()}
        )
        assert answer.status_code == 200, (header, answer.text)
    bad_id = await client.post(
        "/v1/chat/completions", json=body, headers={"x-request-id": "idé".encode()}
    )
    assert bad_id.status_code == 400
    assert _error(bad_id)["param"] == "x-request-id"
    assert len(await deployment.rows(name)) == 2


async def test_the_reservation_counts_every_choice(
    deployment: Deployment, team: tuple[str, httpx.AsyncClient]
) -> None:
    """Defect 5: {"n": 50, "max_tokens": 1000} against a 10,000-token budget was served."""
    name, client = team
    await deployment.put_budget(name, "tokens", 10_000)
    calls = len(deployment.log.requests)
    many = {"model": "echo", "messages": MESSAGES, "n": 50, "max_tokens": 1000}
    answer = await client.post("/v1/chat/completions", json=many)
    assert answer.status_code == 429, answer.text
    assert len(deployment.log.requests) == calls
    few = {"model": "echo", "messages": MESSAGES, "n": 5, "max_tokens": 1000}
    assert (await client.post("/v1/chat/completions", json=few)).status_code == 200


async def test_duplicate_json_keys_forward_exactly_what_was_checked(
    deployment: Deployment,
) -> None:
    """Defect 13: the proxy checked the last `model` and forwarded the raw bytes, so an
    upstream that reads the first one served a model the key may not use."""
    _team, client = await deployment.new_team(models=["echo"])
    raw = b'{"model": "forbidden", "model": "echo", "messages": [{"role": "user", "content": "x"}]}'
    async with client:
        answer = await client.post(
            "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 200, answer.text
    assert b"forbidden" not in deployment.log.raw[-1]


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_error_bodies_never_carry_the_upstreams_key(
    deployment: Deployment, team: tuple[str, httpx.AsyncClient], stream: bool
) -> None:
    """Defect 8: an upstream 401 echoing its request headers handed the client the key."""
    _, client = team
    body = {"model": "echoauth", "messages": MESSAGES, "stream": stream}
    answer = await client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 401
    assert UPSTREAM_KEY not in answer.text
    assert all(UPSTREAM_KEY not in v for v in answer.headers.values())


async def test_an_oversized_upstream_answer_is_a_clear_502(
    deployment: Deployment, team: tuple[str, httpx.AsyncClient]
) -> None:
    """Defect 14b: upstream bodies were unbounded (100 MB JSON: +240 MB RSS)."""
    name, client = team
    answer = await client.post("/v1/chat/completions", json={"model": "huge", "messages": MESSAGES})
    assert answer.status_code == 502
    error = _error(answer)
    assert error["code"] == "upstream_unavailable"
    assert "limit" in str(error["message"])
    rows = await deployment.rows(name)
    assert [(r["status"], r["error"]) for r in rows] == [(502, "upstream_unavailable")]


async def test_a_stream_the_upstream_stops_feeding_is_labelled_a_timeout(
    deployment: Deployment, team: tuple[str, httpx.AsyncClient]
) -> None:
    """Defect 17: a mid-stream upstream timeout was reported as upstream_unavailable."""
    name, client = team
    body = {"model": "stall", "messages": MESSAGES, "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
        text = (await answer.aread()).decode()
    assert answer.status_code == 200
    assert '"code":"upstream_timeout"' in text
    assert text.rstrip().endswith("data: [DONE]")
    rows = await deployment.rows(name)
    assert [r["error"] for r in rows] == ["upstream_timeout"]
