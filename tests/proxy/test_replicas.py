"""Several real `footprint serve` processes sharing one PostgreSQL ledger and one Redis: budgets
hold under a race across replicas, a replica killed -9 under load loses no answered request
and doubles none, a revoked key is refused at once everywhere, and usage sums agree with what
clients were told request by request.

The three replicas, the upstream and the schema are shared by this module's tests (starting
processes is the slow part); every test works under teams of its own.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import PG_DSN, REDIS_URL
from tests.support.fake_upstream import UpstreamLog, make_upstream
from tests.support.processes import ProxyProcess, replica_config, start_replicas
from tests.support.servers import ServerThread

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

ADMIN_KEY = "admin-" + secrets.token_hex(20)
# What Redis keys the replicas write per team (proxy.budgets.RedisBackend's default prefix).
REDIS_PREFIX = "footprint"
CLAIM_TTL_S = 2.0


@dataclass
class Deployment:
    replicas: list[ProxyProcess]
    upstream: ServerThread
    schema: str
    teams: list[str] = field(default_factory=list)

    def admin(self, replica: int = 0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.replicas[replica].url,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30.0,
        )

    async def new_team(self, label: str) -> tuple[str, str, str]:
        """A fresh team and one key for it: (team, key id, key)."""
        team = f"{label}-{secrets.token_hex(4)}"
        self.teams.append(team)
        async with self.admin() as admin:
            created = await admin.post("/admin/teams", json={"name": team})
            assert created.status_code == 201, created.text
            key = await admin.post("/admin/keys", json={"team": team})
            assert key.status_code == 201, key.text
        return team, key.json()["id"], key.json()["key"]

    async def put_budget(self, team: str, metric: str, period: str, limit: float) -> None:
        async with self.admin(1) as admin:
            body = {"team": team, "metric": metric, "period": period, "limit": limit}
            answer = await admin.put("/admin/budgets", json=body)
            assert answer.status_code == 200, answer.text

    async def budget_lines(self, team: str) -> dict[tuple[str, str], dict[str, Any]]:
        async with self.admin(2) as admin:
            answer = await admin.get("/admin/budgets", params={"team": team})
            assert answer.status_code == 200, answer.text
        return {(x["metric"], x["period"]): x for x in answer.json()["data"]}

    async def rows(self, team: str) -> list[asyncpg.Record]:
        """The ledger's rows of `team`, read straight from PostgreSQL."""
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": self.schema})
        try:
            return list(
                await conn.fetch(
                    "SELECT request_id, status, stream, cancelled, co2e_g, energy_j, water_ml"
                    " FROM requests WHERE team = $1",
                    team,
                )
            )
        finally:
            await conn.close()

    async def row_counts(self, request_ids: list[str]) -> dict[str, int]:
        """How many ledger rows each of `request_ids` has (absent ids: 0)."""
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": self.schema})
        try:
            found = await conn.fetch(
                "SELECT request_id, count(*) AS n FROM requests"
                " WHERE request_id = ANY($1::text[]) GROUP BY request_id",
                request_ids,
            )
        finally:
            await conn.close()
        counts = dict.fromkeys(request_ids, 0)
        counts.update({r["request_id"]: r["n"] for r in found})
        return counts


async def _schema(statement: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _forget_redis_keys(teams: list[str]) -> None:
    import redis.asyncio as redis_asyncio

    client = redis_asyncio.Redis.from_url(REDIS_URL)
    try:
        for team in teams:
            keys = [k async for k in client.scan_iter(match=f"{REDIS_PREFIX}:{{{team}}}:*")]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    schema = "t_" + secrets.token_hex(6)
    asyncio.run(_schema(f"CREATE SCHEMA {schema}"))
    workdir: Path = tmp_path_factory.mktemp("replicas")
    # "slow" answers after 0.6 s; streams send a chunk every 20 ms: both stay in flight long
    # enough for a replica to be killed under them.
    upstream = ServerThread(
        make_upstream(UpstreamLog(), words=8, delay_s=0.6, chunk_interval_s=0.02)
    ).__enter__()
    config = replica_config(
        upstream.url,
        f"{PG_DSN}?schema={schema}",
        REDIS_URL,
        # A killed replica's claims on request ids (see the crash test's retries) expire soon.
        budgets={"claim_ttl_s": CLAIM_TTL_S},
    )
    replicas: list[ProxyProcess] = []
    deployment = Deployment(replicas, upstream, schema)
    try:
        replicas += start_replicas(3, config, workdir, {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY})
        yield deployment
    finally:
        for replica in replicas:
            replica.stop()
        upstream.__exit__(None, None, None)
        asyncio.run(_forget_redis_keys(deployment.teams))
        asyncio.run(_schema(f"DROP SCHEMA {schema} CASCADE"))


def _chat(stream: bool, model: str = "echo", prompt: str = "count to eight") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 8,
    }
    if stream:
        body["stream"] = True
    return body


@dataclass
class Outcome:
    """What one client saw."""

    request_id: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # a whole JSON answer, or a stream that reached [DONE]
    failure: str | None = None

    def footprint(self) -> dict[str, Decimal]:
        """The figures the client was told, exactly as written: headers of a JSON answer, the
        `: footprint {…}` event of a stream."""
        if not self.headers.get("content-type", "").startswith("text/event-stream"):
            return {
                name: Decimal(self.headers[f"x-footprint-{name.replace('_', '-')}"])
                for name in ("energy_j", "co2e_g", "water_ml")
            }
        for event in self.body.split(b"\n\n"):
            if event.startswith(b": footprint "):
                obj = json.loads(event[len(b": footprint ") :], parse_float=Decimal)
                return {name: obj[name] for name in ("energy_j", "co2e_g", "water_ml")}
        raise AssertionError(f"stream of {self.request_id} carried no footprint event")


async def _send(
    client: httpx.AsyncClient, url: str, key: str, request_id: str, body: dict[str, Any]
) -> Outcome:
    outcome = Outcome(request_id)
    headers = {"authorization": f"Bearer {key}", "x-request-id": request_id}
    try:
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=headers
        ) as response:
            outcome.status = response.status_code
            outcome.headers = dict(response.headers)
            async for chunk in response.aiter_raw():
                outcome.body += chunk  # kept as it comes: a cut stream keeps what arrived
    except httpx.HTTPError as exc:
        outcome.failure = f"{type(exc).__name__}: {exc}"
        return outcome
    if outcome.status == 200:
        if body.get("stream"):
            outcome.complete = outcome.body.endswith(b"data: [DONE]\n\n")
        else:
            outcome.complete = b'"footprint"' in outcome.body and outcome.body.endswith(b"}")
    return outcome


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=400, max_keepalive_connections=400),
    )


def _assert_contract_429(outcome: Outcome, metric_header: str) -> float:
    """The contract's budget refusal; returns what the header says is left."""
    error = json.loads(outcome.body)["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "footprint_budget_exceeded")
    assert outcome.headers["x-request-id"] == outcome.request_id
    return float(outcome.headers[f"x-footprint-budget-remaining-{metric_header}"])


# --------------------------------------------------------------------------------------------


async def _race(
    deployment: Deployment, team: str, key: str, count: int
) -> tuple[list[Outcome], list[Outcome]]:
    """`count` requests of `team` at once, spread over the replicas, half of them streamed.
    Returns (served, refused) and fails on any other outcome."""
    urls = [r.url for r in deployment.replicas]
    async with _client() as client:
        outcomes = await asyncio.gather(
            *(
                _send(client, urls[i % len(urls)], key, f"{team}-{i}", _chat(i % 2 == 0))
                for i in range(count)
            )
        )
    served = [o for o in outcomes if o.status == 200]
    refused = [o for o in outcomes if o.status == 429]
    others = [(o.request_id, o.status, o.failure, o.body[:200]) for o in outcomes]
    others = [x for x in others if x[1] not in (200, 429)]
    assert not others, f"neither served nor refused for budget: {others[:5]}"
    assert all(o.complete for o in served), [o.request_id for o in served if not o.complete]
    return served, refused


async def test_a_requests_budget_holds_across_three_replicas_racing(
    deployment: Deployment,
) -> None:
    team, _, key = await deployment.new_team("race-requests")
    await deployment.put_budget(team, "requests", "month", 50)

    served, refused = await _race(deployment, team, key, 200)

    # Each request reserves exactly what it settles (one request), so the budget is met to the
    # request: 50 served, the other 150 refused, whichever replica they went to.
    assert len(served) == 50
    assert len(refused) == 150
    for outcome in refused:
        assert _assert_contract_429(outcome, "requests") < 1
    rows = await deployment.rows(team)
    assert sorted(r["request_id"] for r in rows) == sorted(o.request_id for o in served)
    assert all(r["status"] == 200 for r in rows)
    line = (await deployment.budget_lines(team))[("requests", "month")]
    assert (line["used"], line["reserved"], line["remaining"]) == (50, 0, 0)


async def test_a_co2e_budget_holds_across_three_replicas_racing(deployment: Deployment) -> None:
    # One request's carbon, as a client is told it, sizes a budget of 50 and a half requests.
    # The probe is a "slow" one: it outlasts the estimator's modelled generation time, so its
    # figure is the same worst case that a reservation holds for max_tokens=8.
    probe_team, _, probe_key = await deployment.new_team("race-probe")
    async with _client() as client:
        probe = await _send(
            client, deployment.replicas[0].url, probe_key, f"{probe_team}-0", _chat(False, "slow")
        )
    worst_g = float(probe.footprint()["co2e_g"])
    assert worst_g > 0
    limit_g = worst_g * 50.5
    team, _, key = await deployment.new_team("race-co2e")
    await deployment.put_budget(team, "co2e_g", "total", limit_g)

    served, refused = await _race(deployment, team, key, 200)

    # Admission keeps used + reserved within the limit and a reservation is never less than
    # what its request settles: the total settled stays within the budget. A request is only
    # refused once less than one worst case is left, so at least 50 fit.
    rows = await deployment.rows(team)
    settled_g = sum(r["co2e_g"] for r in rows)
    assert settled_g <= limit_g * (1 + 1e-9)
    assert len(served) >= 50
    assert refused, "200 requests of about one worst case each cannot all fit in 50.5"
    assert sorted(r["request_id"] for r in rows) == sorted(o.request_id for o in served)
    for outcome in refused:
        # Less than one worst case was left (the header has 6 decimals: ±0.0000005).
        assert 0 <= _assert_contract_429(outcome, "co2e-g") < worst_g + 0.000001
    line = (await deployment.budget_lines(team))[("co2e_g", "total")]
    assert line["reserved"] == pytest.approx(0, abs=1e-12)
    assert line["used"] == pytest.approx(settled_g, rel=1e-9)


async def test_a_replica_killed_under_load_loses_no_answered_request_and_doubles_none(
    deployment: Deployment,
) -> None:
    team, _, key = await deployment.new_team("crash")
    victim = deployment.replicas[2]
    outcomes: list[Outcome] = []
    enough_done = asyncio.Event()
    # Slow answers (0.6 s), slow streams, quick streams: whatever is under way when the kill
    # comes is cut wherever it is.
    shapes = [_chat(False, "slow"), _chat(True, "slow"), _chat(True, "echo")]

    async def one(client: httpx.AsyncClient, i: int) -> None:
        outcome = await _send(client, victim.url, key, f"{team}-{i}", shapes[i % 3])
        outcomes.append(outcome)
        if sum(o.complete for o in outcomes) >= 6:
            enough_done.set()

    async with _client() as client:
        tasks: list[asyncio.Task[None]] = []
        while not enough_done.is_set():
            tasks.append(asyncio.create_task(one(client, len(tasks))))
            await asyncio.sleep(0.025)
        # Ten more, given time to reach the upstream but not its 0.6 s answer: certainly in
        # flight when the replica dies.
        tasks += [asyncio.create_task(one(client, len(tasks) + j)) for j in range(10)]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(victim.kill)
        await asyncio.gather(*tasks)

    complete = [o for o in outcomes if o.complete]
    cut = [o for o in outcomes if not o.complete]
    assert len(complete) >= 6
    assert len(cut) >= 10, "the kill must have cut requests under way"
    assert all(o.status in (None, 200) for o in outcomes), [o.status for o in outcomes]

    await asyncio.to_thread(victim.start)

    # Every answer a client received whole has its row, readable through the restarted
    # replica with the team's key, and carrying what the client was told.
    async with httpx.AsyncClient(
        base_url=victim.url, headers={"authorization": f"Bearer {key}"}, timeout=30.0
    ) as reader:
        for outcome in complete:
            answer = await reader.get(f"/v1/footprint/requests/{outcome.request_id}")
            assert answer.status_code == 200, (outcome.request_id, answer.text)
            row = answer.json()
            told = outcome.footprint()
            for name in ("energy_j", "co2e_g", "water_ml"):
                assert row[name] == pytest.approx(float(told[name]), rel=1e-5)
    counts = await deployment.row_counts([o.request_id for o in outcomes])
    assert all(counts[o.request_id] == 1 for o in complete)
    assert all(counts[o.request_id] in (0, 1) for o in cut)

    # The clients that were cut off try again, same request id, on another replica, once the
    # dead replica's claims on their ids have expired: a request never recorded gets its
    # answer; one recorded (a stream cut and metered) is a 409 duplicate_request_id, never
    # served again for free. Still no request has two rows.
    await asyncio.sleep(CLAIM_TTL_S)
    async with _client() as client:
        retried = await asyncio.gather(
            *(
                _send(client, deployment.replicas[0].url, key, o.request_id, shapes[i % 3])
                for i, o in ((int(o.request_id.rsplit("-", 1)[1]), o) for o in cut)
            )
        )
    for before, again in zip(cut, retried, strict=True):
        if counts[before.request_id] == 1:
            assert again.status == 409, (again.request_id, again.status, again.body)
            assert json.loads(again.body)["error"]["code"] == "duplicate_request_id"
        else:
            assert again.complete, (again.request_id, again.status, again.body)
    counts = await deployment.row_counts([o.request_id for o in outcomes])
    assert set(counts.values()) <= {0, 1}
    assert all(counts[o.request_id] == 1 for o in complete + [o for o in retried if o.complete])
    assert len(await deployment.rows(team)) == sum(counts.values())


async def test_a_key_revoked_on_one_replica_is_refused_at_once_on_every_replica(
    deployment: Deployment,
) -> None:
    team, key_id, key = await deployment.new_team("revoke")
    async with _client() as client:
        for replica in deployment.replicas:
            before = await _send(client, replica.url, key, f"{team}-{replica.port}", _chat(False))
            assert before.status == 200, before.body
        async with deployment.admin(0) as admin:
            assert (await admin.delete(f"/admin/keys/{key_id}")).status_code == 204
        # No pause: the very next request on B and C (and A) is refused.
        after = await asyncio.gather(
            *(
                _send(client, r.url, key, f"{team}-after-{r.port}", _chat(stream))
                for r in deployment.replicas[1:] + deployment.replicas[:1]
                for stream in (False, True)
            )
        )
        for outcome in after:
            assert outcome.status == 401, (outcome.request_id, outcome.status)
            assert json.loads(outcome.body)["error"]["code"] == "invalid_api_key"
        for replica in deployment.replicas:
            usage = await client.get(
                f"{replica.url}/v1/footprint/usage", headers={"authorization": f"Bearer {key}"}
            )
            assert usage.status_code == 401
    assert len(await deployment.rows(team)) == len(deployment.replicas)


def _rounding_bound(told: Decimal) -> Decimal:
    """Half a unit in the last place of a figure written to 6 significant digits (digits left
    of the point are all kept)."""
    return Decimal(1).scaleb(min(told.adjusted() - 5, 0)) / 2


async def test_usage_sums_equal_the_figures_clients_were_told(deployment: Deployment) -> None:
    team, _, key = await deployment.new_team("usage")
    urls = [r.url for r in deployment.replicas]
    async with _client() as client:
        outcomes = await asyncio.gather(
            *(
                _send(
                    client,
                    urls[i % 3],
                    key,
                    f"{team}-{i}",
                    _chat(i % 2 == 1, "slow" if i % 5 == 0 else "echo", "word " * (1 + 7 * i)),
                )
                for i in range(30)
            )
        )
        assert all(o.complete for o in outcomes), [(o.request_id, o.status) for o in outcomes]
        answer = await client.get(
            f"{urls[1]}/v1/footprint/usage",
            params={"team": team},
            headers={"authorization": f"Bearer {key}"},
        )
    assert answer.status_code == 200, answer.text
    (usage,) = answer.json()["data"]
    assert usage["requests"] == 30
    told = [o.footprint() for o in outcomes]
    for name in ("energy_j", "co2e_g", "water_ml"):
        total = sum(t[name] for t in told)
        bound = sum(_rounding_bound(t[name]) for t in told)
        assert total > 0
        assert abs(Decimal(repr(usage[name])) - total) <= bound * (1 + Decimal("1e-9")), name
