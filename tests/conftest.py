"""Shared fixtures: real PostgreSQL and Redis on 127.0.0.1 (started by scripts/services.sh),
each test in its own PostgreSQL schema and under its own Redis key prefix, so tests never see
each other's data and can run again and again."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

PG_DSN = os.environ.get("FOOTPRINT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FOOTPRINT_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def _pg_connect() -> object:
    import asyncpg

    try:
        return await asyncpg.connect(PG_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {PG_DSN} is not reachable ({exc!r}); run scripts/services.sh")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A ledger URL whose tables live in a fresh schema, dropped afterwards."""
    schema = "t_" + secrets.token_hex(6)
    conn = await _pg_connect()
    await conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[attr-defined]
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[attr-defined]
        await conn.close()  # type: ignore[attr-defined]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each test that takes it runs once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    schema = "t_" + secrets.token_hex(6)
    conn = await _pg_connect()
    await conn.execute(f"CREATE SCHEMA {schema}")  # type: ignore[attr-defined]
    try:
        yield f"{PG_DSN}?schema={schema}"
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")  # type: ignore[attr-defined]
        await conn.close()  # type: ignore[attr-defined]


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    import redis.asyncio as redis_asyncio
    from redis.exceptions import RedisError

    prefix = "fptest-" + secrets.token_hex(6)
    client = redis_asyncio.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({exc!r}); run scripts/services.sh")
    try:
        yield prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


ADMIN_KEY = "admin-" + "k" * 40


@pytest.fixture
async def services_app(sqlite_url: str) -> AsyncIterator[object]:
    """A Starlette app with the admin and footprint routes over a real SQLite ledger, the
    in-process budgets and key authentication; `app.state` as `proxy.app` sets it up."""
    from starlette.applications import Starlette

    from proxy.auth import Authenticator
    from proxy.budgets import open_budgets
    from proxy.config import parse_settings
    from proxy.errors import ProxyError
    from proxy.ledger import open_ledger
    from proxy.routes.admin import admin_router
    from proxy.routes.dashboard import dashboard_router
    from proxy.routes.footprint import footprint_router
    from proxy.routes.footprint_views import views_router

    settings = parse_settings({"ledger": {"url": sqlite_url}})
    ledger = await open_ledger(settings.ledger)
    routers = (admin_router, footprint_router, views_router, dashboard_router)
    app = Starlette(routes=[route for router in routers for route in router.routes])
    app.add_exception_handler(ProxyError, lambda _r, e: e.to_response())  # type: ignore[arg-type, return-value]
    app.state.settings = settings
    app.state.ledger = ledger
    app.state.auth = Authenticator(ledger, "keys", ADMIN_KEY)
    app.state.budgets = await open_budgets(settings.budgets, ledger)
    try:
        yield app
    finally:
        await app.state.budgets.aclose()
        await ledger.aclose()


@pytest.fixture
async def client(services_app: object) -> AsyncIterator[object]:
    """An httpx client on `services_app`, carrying no key (pass headers per call)."""
    import httpx

    transport = httpx.ASGITransport(app=services_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://proxy") as c:
        yield c
