"""Real processes for routing tests: fake upstreams in their own processes (so they can be
killed), a local Electricity Maps-speaking intensity server, and `footprint serve`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.intensity_server import make_intensity_server
from tests.support.processes import ProxyProcess
from tests.support.servers import ServerThread

ADMIN_KEY = "admin-" + secrets.token_hex(16)
INTENSITY_KEY = "em-" + secrets.token_hex(8)


def upstream_entry(name: str, url: str, zone: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base_url": f"{url}/v1",
        "models": ["*"],
        "zone": zone,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 10.0,
        "meter": {"kind": "estimate"},
        "hardware": {"active_params_b": 8.0, "total_params_b": 8.0},
        **extra,
    }


def proxy_config(
    workdir: Path,
    upstreams: list[dict[str, Any]],
    intensity_url: str = "",
    **routing: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "auth": "keys", "log_level": "warning"},
        "ledger": {"url": f"sqlite:///{workdir / 'ledger.db'}"},
        "upstreams": upstreams,
        "routing": {"health_interval_s": 0, **routing},
    }
    if intensity_url:
        config["intensity"] = {
            "provider": "electricitymaps",
            "base_url": f"{intensity_url}/v3",
            "cache_ttl_s": 1.0,
        }
    return config


class Gateway:
    """A started proxy, its admin client and one team key."""

    def __init__(self, process: ProxyProcess) -> None:
        self.process = process
        self.url = process.url
        self.admin = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30.0
        )
        team = f"t-{secrets.token_hex(3)}"
        assert self.admin.post("/admin/teams", json={"name": team}).status_code == 201
        answer = self.admin.post("/admin/keys", json={"team": team})
        assert answer.status_code == 201, answer.text
        self.team, self.key = team, answer.json()["key"]
        self.client = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.key}"}, timeout=30.0
        )

    def chat(self, model: str = "echo", **body: Any) -> httpx.Response:
        return self.client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi there"}], **body},
        )

    def row(self, request_id: str) -> dict[str, Any]:
        answer = self.client.get(f"/v1/footprint/requests/{request_id}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def routing(self) -> dict[str, Any]:
        return dict(self.client.get("/readyz").json()["routing"])

    def close(self) -> None:
        self.admin.close()
        self.client.close()
        self.process.stop()


@pytest.fixture
def intensity_values() -> dict[str, float]:
    return {}


@pytest.fixture
def intensity_server(intensity_values: dict[str, float]) -> Iterator[ServerThread]:
    with ServerThread(make_intensity_server(intensity_values, INTENSITY_KEY)) as server:
        yield server


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Any]:
    """Start `footprint serve` with a config: `gateway(config) -> Gateway`."""
    started: list[Gateway] = []

    def start(config: dict[str, Any]) -> Gateway:
        process = ProxyProcess(
            f"proxy{len(started)}",
            config,
            tmp_path,
            env={"FOOTPRINT_ADMIN_KEY": ADMIN_KEY, "ELECTRICITYMAPS_API_KEY": INTENSITY_KEY},
        ).start()
        found = Gateway(process)
        started.append(found)
        return found

    yield start
    for found in started:
        found.close()
