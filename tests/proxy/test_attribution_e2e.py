"""Issue 10's scenarios end to end: real `footprint serve` replicas in front of one simulated GPU
whose true energy per request is known (tests/support/sim_gpu.py: 100 W idle, 1 J per output
token, 0.1 J per prompt token; DCGM's mJ counter and vLLM's engine counters on /metrics).

Two replicas share a PostgreSQL ledger; clients split unevenly between them; some traffic goes
straight to the model server. Every request's figure (from the footprint the client got) is
within 10% of its truth and the median within 3%; over the whole run, the cluster's account
(requests of both replicas + idle counted once + other traffic) matches the GPU's counter and
the bypass traffic's truth. No timing assertion: each scenario waits for its answers, whatever
the machine's load, and truth is what the simulated GPU actually did.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import PG_DSN
from tests.support.engine_sim import EngineSim
from tests.support.processes import ProxyProcess, replica_config, start_replicas
from tests.support.servers import ServerThread
from tests.support.sim_gpu import SimGpu

pytestmark = [pytest.mark.postgres]


@dataclass
class Bench:
    sim: SimGpu
    gpu: ServerThread
    replicas: list[ProxyProcess]
    schema: str
    told: dict[str, dict[str, Any]] = field(default_factory=dict)  # request id -> footprint
    bypass: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Ask:
    """One request: where it goes (replica index, or None to bypass the proxy), its answer."""

    request_id: str
    via: int | None
    tokens: int
    rate: float
    chunk: int = 1
    stream: bool = True
    delay_s: float = 0.0


async def _schema(statement: str) -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextmanager
def _bench(workdir: Path, replicas: int, counter_step_s: float = 0.0) -> Iterator[Bench]:
    schema = "t_" + secrets.token_hex(6)
    asyncio.run(_schema(f"CREATE SCHEMA {schema}"))
    engine = EngineSim(
        idle_w=100.0, j_per_token=1.0, j_per_prompt_token=0.1, counter_step_s=counter_step_s
    )
    sim = SimGpu(engine)
    gpu = ServerThread(sim.app).__enter__()
    # A quarter-second tick: on this shared 2-core machine the relay's lag behind the engine's
    # counters reaches tens of milliseconds, and what it misplaces at a tick's edge is a smaller
    # part of a longer tick (README, Known limits). Early reads at each request's end still
    # close its last tick at once.
    config = replica_config(
        gpu.url, f"{PG_DSN}?schema={schema}", auth="none", metering={"tick_s": 0.25}
    )
    config["upstreams"][0]["meter"] = {
        "kind": "prometheus",
        "url": f"{gpu.url}/metrics",
        "gpus": [0],
        # activity = "auto" and activity_url unset: the upstream's origin + /metrics
    }
    running: list[ProxyProcess] = []
    state = Bench(sim, gpu, running, schema)
    try:
        running += start_replicas(replicas, config, workdir)
        # Let every replica read the idle GPU a while (its engine counters, its idle power)
        # before traffic, as any replica does after its first seconds up.
        asyncio.run(_quiet(state, 1.5))
        yield state
    finally:
        for replica in running:
            replica.stop()
        gpu.__exit__(None, None, None)
        asyncio.run(_schema(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    with _bench(tmp_path_factory.mktemp("attribution"), replicas=2) as state:
        yield state


def _footprint_of(body: bytes, stream: bool) -> dict[str, Any]:
    if not stream:
        return dict(json.loads(body)["footprint"])
    for event in body.split(b"\n\n"):
        if event.startswith(b": footprint "):
            return dict(json.loads(event[len(b": footprint ") :]))
    raise AssertionError(f"no footprint in {body[-300:]!r}")


async def _one(client: httpx.AsyncClient, bench: Bench, ask: Ask) -> None:
    await asyncio.sleep(ask.delay_s)
    prompt = f"sim tokens={ask.tokens} rate={ask.rate} chunk={ask.chunk} say something"
    body = {
        "model": "sim-llama",
        "messages": [{"role": "user", "content": prompt}],
        "stream": ask.stream,
    }
    base = bench.gpu.url if ask.via is None else bench.replicas[ask.via].url
    answer = await client.post(
        f"{base}/v1/chat/completions", json=body, headers={"x-request-id": ask.request_id}
    )
    assert answer.status_code == 200, answer.text
    if ask.via is None:
        bench.bypass.add(ask.request_id)
    else:
        bench.told[ask.request_id] = _footprint_of(answer.content, ask.stream)


async def _quiet(bench: Bench, seconds: float = 0.5) -> None:
    """Let the GPU idle: each scenario starts on a quiet engine."""
    await asyncio.sleep(seconds)


def run(bench: Bench, asks: list[Ask]) -> dict[str, float]:
    """Run one scenario; returns each proxied request's figure over its truth."""

    async def go() -> None:
        await _quiet(bench)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
            await asyncio.gather(*(_one(client, bench, a) for a in asks))
        await _quiet(bench, 0.3)

    asyncio.run(go())
    truth, _idle_j, _total_j = bench.sim.engine.truth()
    ratios = {}
    for ask in asks:
        if ask.via is None:
            continue
        told = bench.told[ask.request_id]
        assert told["method"] == "measured", told
        assert told["attribution"] == "engine", told
        ratios[ask.request_id] = float(told["gpu_energy_j"]) / truth[ask.request_id]
    return ratios


def assert_true_to_truth(ratios: dict[str, float]) -> None:
    print("ratios", {rid: round(r, 3) for rid, r in ratios.items()})
    off = {rid: round(r, 3) for rid, r in ratios.items() if abs(r - 1) > 0.10}
    assert not off, f"over 10% from the truth: {off} (all: {ratios})"
    median = statistics.median(ratios.values())
    assert abs(median - 1) <= 0.03, f"median {median:.3f} (all: {ratios})"


def _ids(label: str, n: int) -> list[str]:
    return [f"{label}-{i}-{secrets.token_hex(3)}" for i in range(n)]


def test_two_replicas_with_an_uneven_client_split(bench: Bench) -> None:
    asks = [
        Ask(rid, 0 if i < 6 else 1, tokens=40, rate=30.0, delay_s=0.05 * i)
        for i, rid in enumerate(_ids("split", 8))
    ]
    assert_true_to_truth(run(bench, asks))


def test_a_third_of_the_traffic_bypassing_the_proxy(bench: Bench) -> None:
    asks = [
        Ask(rid, None if i % 3 == 2 else i % 2, tokens=40, rate=25.0, delay_s=0.04 * i)
        for i, rid in enumerate(_ids("bypass", 9))
    ]
    assert_true_to_truth(run(bench, asks))


def test_streams_at_5_20_and_100_tokens_per_second_together(bench: Bench) -> None:
    slow, mid, fast = _ids("rate", 3)
    asks = [
        Ask(slow, 0, tokens=10, rate=5.0),
        Ask(mid, 1, tokens=40, rate=20.0),
        Ask(fast, 0, tokens=200, rate=100.0),
    ]
    assert_true_to_truth(run(bench, asks))


def test_five_token_chunks_beside_one_token_chunks(bench: Bench) -> None:
    fives, ones = _ids("chunks", 2)
    asks = [
        Ask(fives, 0, tokens=100, rate=50.0, chunk=5),
        Ask(ones, 1, tokens=100, rate=50.0, chunk=1),
    ]
    assert_true_to_truth(run(bench, asks))


def test_non_streaming_requests_at_20_and_100_tokens_per_second_beside_streams(
    bench: Bench,
) -> None:
    ns20, ns100, s1, s2 = _ids("whole", 4)
    asks = [
        Ask(ns20, 0, tokens=40, rate=20.0, stream=False),
        Ask(ns100, 1, tokens=100, rate=100.0, stream=False, delay_s=0.3),
        Ask(s1, 0, tokens=100, rate=50.0),
        Ask(s2, 1, tokens=100, rate=50.0, delay_s=0.2),
    ]
    assert_true_to_truth(run(bench, asks))


def test_a_short_request_on_an_idle_gpu(bench: Bench) -> None:
    # Five times, each 0.2 s request alone after the GPU idled: the median is over five.
    ratios: dict[str, float] = {}
    for index, rid in enumerate(_ids("short", 5)):
        asyncio.run(_quiet(bench, 0.7))
        ratios.update(run(bench, [Ask(rid, index % 2, tokens=20, rate=100.0)]))
    assert_true_to_truth(ratios)


def test_the_cluster_counts_the_gpu_once(bench: Bench) -> None:
    """After every scenario: the replicas stop (writing their accounts), and over the run the
    ledger's account holds each joule once: requests of both replicas + idle + other equal
    what the counter measured, other is the bypass traffic's truth, buckets are not doubled."""
    for replica in bench.replicas:
        replica.stop()
    truth, _idle_j, _total_j = bench.sim.engine.truth()

    async def read() -> tuple[list[asyncpg.Record], float]:
        conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": bench.schema})
        try:
            buckets = await conn.fetch("select * from meter_accounts")
            requests_j = await conn.fetchval(
                "select coalesce(sum(gpu_energy_j), 0) from requests where method = 'measured'"
            )
        finally:
            await conn.close()
        return buckets, float(requests_j)

    buckets, requests_j = asyncio.run(read())
    assert buckets, "no meter account was written"
    measured_j = sum(b["measured_gpu_energy_j"] for b in buckets)
    idle_j = sum(b["idle_gpu_energy_j"] for b in buckets)
    for b in buckets:  # one replica's reading per bucket, never the sum of two
        length_s = (b["bucket_end"] - b["bucket_start"]).total_seconds()
        assert b["measured_s"] <= length_s + 0.5, dict(b)
        assert b["idle_energy_j"] > b["idle_gpu_energy_j"] > 0  # server share and PUE on top
    other_j = measured_j - idle_j - requests_j
    bypass_true_j = sum(truth[rid] for rid in bench.bypass)
    proxied_true_j = sum(truth[rid] for rid in bench.told)
    print(
        f"cluster: measured {measured_j:.1f} J = requests {requests_j:.1f} (truth "
        f"{proxied_true_j:.1f}) + idle {idle_j:.1f} + other {other_j:.1f} (bypass truth "
        f"{bypass_true_j:.1f}); {len(buckets)} bucket(s)"
    )
    assert requests_j == pytest.approx(proxied_true_j, rel=0.02)
    # The counter's delta over the time the accounts cover: 100 W for that long, plus every
    # token's energy (all of them were made while the replicas ran). Nothing counted twice,
    # nothing lost; and requests + idle + other add up to it.
    counter_j = bench.sim.engine.idle_w * sum(b["measured_s"] for b in buckets)
    counter_j += bench.sim.engine.impulse_j
    assert measured_j == pytest.approx(counter_j, rel=0.02)
    assert requests_j + idle_j + other_j == pytest.approx(measured_j, rel=1e-9)
    # The other-traffic account holds the bypass traffic, and at most a few percent of the
    # counter more: the idle edges of bypass requests (a replica cannot tell within a tick
    # when traffic it never saw began or ended; README, Known limits).
    assert bypass_true_j * 0.9 <= other_j <= bypass_true_j + 0.05 * measured_j
