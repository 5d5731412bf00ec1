"""The `footprint` command as a new user meets it: errors they can fix are one line without a
traceback, and a start on a machine without a GPU does not flood the log."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.processes import REPO_ROOT, ProxyProcess, replica_config, to_toml
from tests.support.servers import ServerThread, free_port


def footprint(*args: str, cwd: Path, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


@pytest.mark.skipif(nvml_works(), reason="this machine has a readable GPU")
@pytest.mark.parametrize("gpus", [[], ["--gpus", "0", "1"]])
def test_the_agent_without_a_gpu_says_so_in_one_line(tmp_path: Path, gpus: list[str]) -> None:
    result = footprint("agent", "--port", str(free_port()), *gpus, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("footprint agent: cannot read this host's GPUs: nvml: ")
    assert "Traceback" not in result.stderr


def test_serve_logs_a_failing_meter_once_not_every_tick_and_alembic_stays_quiet(
    tmp_path: Path,
) -> None:
    # An exporter that is not there fails on every 100 ms tick, as a missing NVML library
    # does on a machine without a GPU; this one fails the same way on every machine.
    dead_exporter = f"http://127.0.0.1:{free_port()}/metrics"
    config = replica_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'ledger.db'}")
    config["server"]["log_level"] = "info"
    config["upstreams"][0]["meter"] = {"kind": "prometheus", "url": dead_exporter}
    with ProxyProcess("quiet", config, tmp_path) as proxy:
        time.sleep(3.0)  # 30 ticks
        log = proxy.log_tail(100_000)
    failures = [line for line in log.splitlines() if "energy source prometheus" in line]
    assert len(failures) == 1, log
    assert "logged again once a minute" in failures[0]
    assert "alembic" not in log
    assert "footprint ready" in log  # INFO lines are on: the quiet is Alembic's alone


def test_report_against_a_proxy_with_auth_none_needs_no_admin_key(
    tmp_path: Path, upstream: ServerThread
) -> None:
    config = replica_config(upstream.url, f"sqlite:///{tmp_path / 'ledger.db'}", auth="none")
    with ProxyProcess("local", config, tmp_path) as proxy:
        answer = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert answer.status_code == 200
        result = footprint("report", "--url", proxy.url, "--format", "json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)["data"]
        assert [(r["team"], r["requests"]) for r in rows] == [("default", 1)]
        # The admin commands cannot work without an admin key; they say exactly why.
        refused = footprint("teams", "create", "search", "--url", proxy.url, cwd=tmp_path)
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert lines == [
        f"footprint: the proxy at {proxy.url} has no admin key, so its admin API is off: start "
        "it with FOOTPRINT_ADMIN_KEY set (server.admin_key_env), then set the same value here"
    ]


def test_report_against_a_proxy_with_keys_says_which_key_to_set(tmp_path: Path) -> None:
    config = replica_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'ledger.db'}")
    env = {"FOOTPRINT_ADMIN_KEY": "admin-secret"}
    with ProxyProcess("keys", config, tmp_path, env=env) as proxy:
        result = footprint("report", "--url", proxy.url, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f'footprint: the proxy at {proxy.url} wants a key (server.auth = "keys"): set '
        "FOOTPRINT_ADMIN_KEY to the value it was started with"
    ]


def test_serve_with_an_unreachable_ledger_is_one_line_without_its_password(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    config = replica_config("http://127.0.0.1:9", f"postgresql://fp:hunter2@127.0.0.1:{port}/x")
    config["ledger"]["connect_retry_s"] = 0
    (tmp_path / "footprint.toml").write_text(to_toml({**config, "server": {"auth": "none"}}))
    result = footprint("serve", "--config", "footprint.toml", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"footprint: cannot reach the ledger at 127.0.0.1:{port}/x after 0 s "
        "(ConnectionRefusedError)"
    ], result.stderr
    assert "hunter2" not in result.stderr


def test_serve_on_a_ledger_it_cannot_migrate_stops_with_alembics_error_once(
    tmp_path: Path,
) -> None:
    # A ledger written by a newer Footprint: no migration of this one leads from there.
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    db.execute("INSERT INTO alembic_version VALUES ('9999')")
    db.commit()
    db.close()
    config = replica_config("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'ledger.db'}")
    (tmp_path / "footprint.toml").write_text(to_toml({**config, "server": {"auth": "none"}}))
    result = footprint("serve", "--config", "footprint.toml", cwd=tmp_path)
    assert result.returncode == 3  # uvicorn's "startup failed", as for any lifespan error
    # The serving process's own migration says it (a child tried first, silently).
    assert result.stderr.count("Can't locate revision identified by '9999'") == 1, result.stderr
    assert "Application startup failed" in result.stderr
