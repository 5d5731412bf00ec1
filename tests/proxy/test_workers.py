"""`footprint serve --workers 2`: two processes on one port that count as one proxy. Budgets
hold exactly across them (Redis), a key revoked through one is refused by both at once, and
`/metrics` sums both; what cannot be shared is refused at start with one line."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from meters.sources.prometheus import DCGM_ENERGY, DCGM_POWER
from proxy.telemetry.merge import fetch
from tests.conftest import REDIS_URL
from tests.support.fake_upstream import UpstreamLog, make_upstream
from tests.support.processes import REPO_ROOT, ProxyProcess, replica_config, to_toml
from tests.support.servers import ServerThread
from tests.support.vllm_page import vllm_page

pytestmark = pytest.mark.redis

ADMIN_KEY = "admin-" + secrets.token_hex(20)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess, Path]]:
    """One `footprint serve --workers 2` (SQLite ledger, Redis budgets) and the folder its
    workers' metrics sockets are in (its TMPDIR)."""
    workdir = tmp_path_factory.mktemp("workers")
    tmp = workdir / "tmp"
    tmp.mkdir()
    with ServerThread(make_upstream(UpstreamLog())) as upstream:
        config = replica_config(upstream.url, f"sqlite:///{workdir / 'ledger.db'}", REDIS_URL)
        proxy = ProxyProcess(
            "workers",
            config,
            workdir,
            {"FOOTPRINT_ADMIN_KEY": ADMIN_KEY, "TMPDIR": str(tmp)},
            args=["--workers", "2"],
        )
        proxy.start()
        try:
            yield proxy, _wait_for_both(proxy, tmp)
        finally:
            proxy.stop()


def _wait_for_both(proxy: ProxyProcess, tmp: Path, timeout_s: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sockets = sorted(tmp.glob("footprint-workers-*/worker-*.sock"))
        # both answer their metrics socket, and the port answers ready on new connections
        if (
            len(sockets) == 2
            and all(fetch(s) is not None for s in sockets)
            and all(httpx.get(f"{proxy.url}/readyz").status_code == 200 for _ in range(8))
        ):
            return sockets[0].parent
        time.sleep(0.2)
    raise RuntimeError(f"two workers did not start:\n{proxy.log_tail()}")


@pytest.fixture
async def admin(workers: tuple[ProxyProcess, Path]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=workers[0].url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as client:
        yield client


async def _new_team(admin: httpx.AsyncClient, label: str) -> tuple[str, str, str]:
    team = f"{label}-{secrets.token_hex(4)}"
    assert (await admin.post("/admin/teams", json={"name": team})).status_code == 201
    key = await admin.post("/admin/keys", json={"team": team})
    assert key.status_code == 201, key.text
    return team, key.json()["id"], key.json()["key"]


async def _chat(url: str, key: str) -> httpx.Response:
    """One request on a connection of its own (so the kernel picks a worker for each)."""
    body: dict[str, Any] = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=60) as client:
        return await client.post(
            f"{url}/v1/chat/completions",
            json={**body, "max_tokens": 8},
            headers={"authorization": f"Bearer {key}"},
        )


def _requests_by_team(text: bytes, team: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text.decode()):
        if family.name == "footprint_requests":
            total += sum(s.value for s in family.samples if s.labels.get("team") == team)
    return total


async def test_a_requests_budget_holds_exactly_across_two_workers(
    workers: tuple[ProxyProcess, Path], admin: httpx.AsyncClient
) -> None:
    proxy, _ = workers
    team, _, key = await _new_team(admin, "budget")
    put = {"team": team, "metric": "requests", "period": "month", "limit": 12}
    assert (await admin.put("/admin/budgets", json=put)).status_code in (200, 201)

    answers = await asyncio.gather(*(_chat(proxy.url, key) for _ in range(40)))

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 12 + [429] * 28
    refusal = next(a for a in answers if a.status_code == 429).json()["error"]
    assert refusal["code"] == "footprint_budget_exceeded"


async def test_metrics_sum_what_both_workers_served(
    workers: tuple[ProxyProcess, Path], admin: httpx.AsyncClient
) -> None:
    proxy, folder = workers
    team, _, key = await _new_team(admin, "metrics")

    answers = await asyncio.gather(*(_chat(proxy.url, key) for _ in range(30)))
    assert all(a.status_code == 200 for a in answers)

    own = [_requests_by_team(fetch(s) or b"", team) for s in sorted(folder.glob("*.sock"))]
    assert sum(own) == 30 and all(n > 0 for n in own), own  # both served some
    for _ in range(6):  # whichever worker answers /metrics, it tells the sum
        async with httpx.AsyncClient() as fresh:
            text = (await fresh.get(f"{proxy.url}/metrics")).content
        assert _requests_by_team(text, team) == 30


async def test_a_key_revoked_through_one_worker_is_refused_by_both_at_once(
    workers: tuple[ProxyProcess, Path], admin: httpx.AsyncClient
) -> None:
    proxy, _ = workers
    _, key_id, key = await _new_team(admin, "revoke")
    before = await asyncio.gather(*(_chat(proxy.url, key) for _ in range(8)))
    assert all(a.status_code == 200 for a in before)  # each worker has the key cached now

    assert (await admin.delete(f"/admin/keys/{key_id}")).status_code == 204
    after = await asyncio.gather(*(_chat(proxy.url, key) for _ in range(16)))

    assert [a.status_code for a in after] == [401] * 16
    assert {a.json()["error"]["code"] for a in after} == {"invalid_api_key"}


def _serve(tmp_path: Path, config: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "footprint.toml"
    path.write_text(to_toml({**config, "server": {**config["server"], "port": 1}}))
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(path), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_two_workers_without_a_shared_budget_store_refuse_to_start(tmp_path: Path) -> None:
    config = replica_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'l.db'}", "")
    done = _serve(tmp_path, config, "--workers", "2")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "--workers 2 needs budgets.redis_url" in done.stderr
    assert not (tmp_path / "l.db").exists()  # nothing was opened


@pytest.mark.parametrize("activity", ["local", "auto"])
def test_two_workers_on_a_measured_meter_without_engine_counters_refuse_to_start(
    tmp_path: Path, activity: str
) -> None:
    config = replica_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'l.db'}", REDIS_URL)
    meter = {"kind": "prometheus", "url": "http://127.0.0.1:9/m", "activity": activity}
    config["upstreams"][0]["meter"] = meter
    done = _serve(tmp_path, config, "--workers", "2")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "upstream 'test''s measured meter needs [upstreams.meter] activity = \"engine\"" in (
        done.stderr
    )
    assert f"(it is {activity!r}" in done.stderr


def test_a_measured_meter_on_engine_counters_may_run_in_several_workers(tmp_path: Path) -> None:
    from proxy.config import parse_settings
    from proxy.workers import refusal

    config = replica_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'l.db'}", REDIS_URL)
    meter = {"kind": "prometheus", "url": "http://127.0.0.1:9/m", "activity": "engine"}
    config["upstreams"][0]["meter"] = meter
    assert refusal(parse_settings(config), 2) is None
    config["upstreams"][0]["meter"]["activity"] = "local"
    assert refusal(parse_settings(config), 2) is not None


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_workers_must_be_a_whole_number_or_auto(tmp_path: Path, value: str) -> None:
    config = replica_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'l.db'}", REDIS_URL)
    done = _serve(tmp_path, config, f"--workers={value}")
    assert done.returncode == 2
    assert '--workers: must be a whole number from 1, or "auto"' in done.stderr


def test_auto_is_the_cores_this_process_may_use() -> None:
    from proxy.workers import worker_count

    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3


def _worker_pids(proxy: ProxyProcess) -> list[int]:
    assert proxy.process is not None
    pid = proxy.process.pid
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def test_a_worker_killed_is_started_again_and_the_port_keeps_answering(
    workers: tuple[ProxyProcess, Path], admin: httpx.AsyncClient
) -> None:
    proxy, folder = workers
    _, _, key = await _new_team(admin, "killed")
    before = _worker_pids(proxy)
    assert len(before) == 2

    os.kill(before[0], 9)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = _worker_pids(proxy)
        if len(now) == 2 and before[0] not in now:
            break
        await asyncio.sleep(0.1)
    _wait_for_both(proxy, folder.parent)

    assert before[1] in _worker_pids(proxy)  # the other one was left alone
    answers = await asyncio.gather(*(_chat(proxy.url, key) for _ in range(10)))
    assert [a.status_code for a in answers] == [200] * 10


def test_a_port_already_taken_is_one_line_and_exit_1(tmp_path: Path) -> None:
    config = replica_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'l.db'}", REDIS_URL)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config["server"]["port"] = port
        path = tmp_path / "footprint.toml"
        path.write_text(to_toml(config))
        done = subprocess.run(
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(path), "--workers", "2"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_supervisor_stops_every_worker(tmp_path: Path, signum: int) -> None:
    config = replica_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'l.db'}", REDIS_URL)
    proxy = ProxyProcess("stop", config, tmp_path, args=["--workers", "2"]).start()
    assert proxy.process is not None
    deadline = time.monotonic() + 60
    while len(pids := _worker_pids(proxy)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)

    try:
        proxy.process.send_signal(signum)

        assert proxy.process.wait(timeout=30) == 0
        assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    finally:
        proxy.stop()


def _gpu_and_engine_pages() -> Starlette:
    """A DCGM exporter whose GPU 0 has spent 1234.5 J, and a vLLM engine's counters."""

    async def dcgm(request: Request) -> PlainTextResponse:
        return PlainTextResponse(
            f'# TYPE {DCGM_ENERGY} counter\n{DCGM_ENERGY}{{gpu="0"}} 1234500\n'
            f'# TYPE {DCGM_POWER} gauge\n{DCGM_POWER}{{gpu="0"}} 300\n'
        )

    async def engine(request: Request) -> PlainTextResponse:
        return PlainTextResponse(vllm_page(models={"echo": (0.0, 0.0, 0.0)}))

    return Starlette(routes=[Route("/dcgm", dcgm), Route("/metrics", engine)])


def test_two_workers_on_one_measured_gpu_report_its_energy_once(tmp_path: Path) -> None:
    with ServerThread(_gpu_and_engine_pages()) as pages:
        config = replica_config(pages.url, f"sqlite:///{tmp_path / 'l.db'}", REDIS_URL)
        config["upstreams"][0]["meter"] = {
            "kind": "prometheus",
            "url": f"{pages.url}/dcgm",
            "activity": "engine",
            "activity_url": f"{pages.url}/metrics",
        }
        tmp = tmp_path / "tmp"
        tmp.mkdir()
        proxy = ProxyProcess(
            "gpu", config, tmp_path, {"TMPDIR": str(tmp)}, args=["--workers", "2"]
        ).start()
        try:
            folder = _wait_for_both(proxy, tmp)
            per_worker = [_gpu_energy_j(fetch(s) or b"") for s in sorted(folder.glob("*.sock"))]
            merged = [_gpu_energy_j(httpx.get(f"{proxy.url}/metrics").content) for _ in range(4)]
        finally:
            proxy.stop()
    assert per_worker == [1234.5, 1234.5]  # each worker reads the one GPU
    assert merged == [1234.5] * 4  # and /metrics counts it once


def _gpu_energy_j(text: bytes) -> float | None:
    for family in text_string_to_metric_families(text.decode()):
        if family.name == "hw_energy_joules":
            return sum(s.value for s in family.samples)
    return None
