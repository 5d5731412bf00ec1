"""`footprint serve` imports an optional backend only when it is configured: on one machine
(SQLite, no Redis, the estimate meter, no OTLP endpoint, a model size given) Redis, asyncpg,
NVML, the OTLP exporters and their protobufs, PostgreSQL's SQL dialect, EcoLogits' model
catalogue and httpx (upstreams are aiohttp's) are never imported, and a replica's RSS carries
none of them. Each backend is imported once its setting says so. Alembic never is: a ledger
that needs migrating is migrated by a child process before the app starts.

The process is the real one: `footprint serve` through `proxy.cli.main`, requests through it,
stopped with Ctrl-C; a wrapper script then writes the names in its `sys.modules`.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.config import LedgerSettings
from proxy.ledger import open_ledger
from proxy.ledger._engine import SCHEMA_HEAD, build_engine, schema_revision
from tests.conftest import REDIS_URL
from tests.proxy.otlp_receiver import OtlpReceiver
from tests.support.processes import ProxyProcess, replica_config
from tests.support.servers import ServerThread

_WRAPPER = """\
import json
import sys

from proxy.cli import main

out = sys.argv.pop(1)
code = main(sys.argv[1:])
with open(out, "w") as file:
    json.dump(sorted(sys.modules), file)
sys.exit(code)
"""

# What each optional setting brings in, by the modules' own names.
REDIS = "redis"
ASYNCPG = "asyncpg"
NVML = "pynvml"
OTLP = "opentelemetry.exporter.otlp"
PROTOBUF = "google.protobuf"
ALEMBIC = "alembic"
POSTGRESQL_DIALECT = "sqlalchemy.dialects.postgresql"
CATALOGUE = "ecologits"
HTTPX = "httpx"  # upstreams are aiohttp's; httpx is for the meters' scrapes and live intensity
# Nothing Footprint serves is reloaded or a WebSocket: uvicorn without its [standard] extras'
# file watcher, and with its WebSocket protocols off.
WATCHFILES = "watchfiles"
WEBSOCKETS = "websockets"


def _imported(modules: list[str], package: str) -> bool:
    return any(name == package or name.startswith(package + ".") for name in modules)


def serve_modules(
    name: str,
    config: dict[str, Any],
    workdir: Path,
    requests: bool = True,
    args: Sequence[str] = (),
) -> list[str]:
    """Start `footprint serve` with `config` (and `args`), send it a whole and a streamed chat
    request (with `requests`), ask /readyz, stop it with SIGINT; the modules it had imported
    (with `--workers`, the supervisor's)."""
    wrapper = workdir / "serve_and_list_modules.py"
    wrapper.write_text(_WRAPPER)
    out = workdir / f"{name}-modules.json"
    proxy = ProxyProcess(name, config, workdir, args=args, launcher=(str(wrapper), str(out)))
    proxy.start()
    try:
        with httpx.Client(base_url=proxy.url, timeout=30.0) as client:
            if requests:
                for stream in (False, True):
                    answer = client.post(
                        "/v1/chat/completions",
                        json={
                            "model": "echo",
                            "messages": [{"role": "user", "content": "hi"}],
                            "stream": stream,
                        },
                    )
                    assert answer.status_code == 200, answer.text
            ready = client.get("/readyz")  # the ledger's, the budget store's and upstreams' pings
            assert ready.status_code == 200 or not requests, proxy.log_tail()
    finally:
        assert proxy.process is not None
        proxy.process.send_signal(signal.SIGINT)  # uvicorn re-raises SIGTERM and dies of it
        proxy.process.wait(timeout=30)
    assert out.exists(), proxy.log_tail()
    modules: list[str] = json.loads(out.read_text())
    return modules


async def _migrate(url: str) -> None:
    ledger = await open_ledger(LedgerSettings(url=url))
    await ledger.aclose()


async def _revision(url: str) -> str | None:
    engine = build_engine(url)
    try:
        return await schema_revision(engine)
    finally:
        await engine.dispose()


def test_one_machine_serve_imports_no_optional_backend(
    tmp_path: Path, upstream: ServerThread
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    asyncio.run(_migrate(url))  # the schema is current: nothing for Alembic to do
    config = replica_config(upstream.url, url, auth="none")

    modules = serve_modules("one-machine", config, tmp_path)

    assert "proxy.app" in modules and "sqlalchemy.dialects.sqlite" in modules  # it did serve
    for package in (
        *(REDIS, ASYNCPG, NVML, OTLP, PROTOBUF, ALEMBIC, POSTGRESQL_DIALECT, CATALOGUE, HTTPX),
        *(WATCHFILES, WEBSOCKETS),
    ):
        assert not _imported(modules, package), package


def test_a_new_ledger_is_migrated_without_alembic_in_the_serving_process(
    tmp_path: Path, upstream: ServerThread
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"  # no file yet: the first start
    config = replica_config(upstream.url, url, auth="none")

    modules = serve_modules("first-start", config, tmp_path)

    assert "proxy.app" in modules  # it did serve, on the migrated ledger
    assert not _imported(modules, ALEMBIC)
    assert asyncio.run(_revision(url)) == SCHEMA_HEAD


@pytest.mark.redis
def test_workers_are_forked_after_what_each_would_import_for_itself(
    tmp_path: Path, upstream: ServerThread
) -> None:
    # Imported by the supervisor, these pages are shared by both workers instead of copied.
    config = replica_config(upstream.url, f"sqlite:///{tmp_path / 'ledger.db'}", REDIS_URL)
    config["server"]["auth"] = "none"

    modules = serve_modules("workers", config, tmp_path, args=("--workers", "2"))

    assert "proxy.app" in modules and ALEMBIC not in modules
    for module in (REDIS + ".asyncio", "uvloop", "anyio._backends._asyncio", "_strptime"):
        assert module in modules, module


def test_each_backend_is_imported_when_it_is_configured(tmp_path: Path, pg_url: str) -> None:
    with OtlpReceiver() as receiver:
        config = replica_config(
            "http://127.0.0.1:9",  # no request goes upstream: /readyz only
            pg_url,
            REDIS_URL,
            auth="none",
            telemetry={"otlp_endpoint": receiver.url},
        )
        # A fresh PostgreSQL schema: a child process creates the tables.
        upstream = config["upstreams"][0]
        upstream["meter"] = {"kind": "nvml", "gpus": [0]}
        del upstream["hardware"]  # no model size: the catalogue is consulted
        modules = serve_modules("configured", config, tmp_path, requests=False)

    for package in (REDIS, ASYNCPG, NVML, OTLP, PROTOBUF, POSTGRESQL_DIALECT, CATALOGUE):
        assert _imported(modules, package), package
    assert not _imported(modules, ALEMBIC)
    assert asyncio.run(_revision(pg_url)) == SCHEMA_HEAD
