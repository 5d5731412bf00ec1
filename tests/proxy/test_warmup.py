"""The warm-up before readiness: what a first request would load is loaded, nothing is written."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from tests.proxy.conftest import proxy_settings
from tests.support.fake_upstream import UpstreamLog
from tests.support.servers import ServerThread

ROOT = Path(__file__).resolve().parents[2]


def test_started_proxy_has_sent_nothing_upstream_and_written_no_row(
    start_proxy: Callable[..., ServerThread],
    tmp_path: Path,
    upstream: ServerThread,
    upstream_log: UpstreamLog,
) -> None:
    settings = proxy_settings(tmp_path, upstream.url)
    start_proxy(settings)

    assert upstream_log.requests == []
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        assert db.execute("SELECT count(*) FROM requests").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM budgets").fetchone() == (0,)


def test_a_budget_store_down_at_start_is_not_counted_as_a_failed_request(
    start_proxy: Callable[..., ServerThread],
    tmp_path: Path,
    upstream: ServerThread,
    dead_port: int,
) -> None:
    settings = proxy_settings(
        tmp_path, upstream.url, budgets={"redis_url": f"redis://127.0.0.1:{dead_port}/0"}
    )
    proxy = start_proxy(settings)

    assert proxy.server.config.app.state.budgets.store_errors == 0


def test_lifespan_loads_what_the_first_stream_would_import(tmp_path: Path) -> None:
    # In a fresh interpreter: pytest's own plugins have loaded anyio's backend here already.
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from proxy.app import create_app
        from proxy.config import parse_settings
        settings = parse_settings({{
            "server": {{"auth": "none"}},
            "ledger": {{"url": "sqlite:///{tmp_path / "ledger.db"}"}},
            "upstreams": [{{"name": "u", "base_url": "http://127.0.0.1:9/v1",
                "models": ["*"], "meter": {{"kind": "estimate"}},
                "hardware": {{"active_params_b": 8.0}}}}],
        }})
        app = create_app(settings, telemetry=False)
        lazy = ["anyio._backends._asyncio", "anyio.streams.memory", "_strptime"]
        before = [m for m in lazy if m in sys.modules]
        async def main():
            async with app.router.lifespan_context(app):
                print(before, [m for m in lazy if m not in sys.modules])
        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[] []"
