"""Fixtures: a real test upstream on a socket, and a real proxy in front of it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.app import create_app
from proxy.config import Settings, parse_settings
from tests.support.fake_upstream import UpstreamLog, make_upstream
from tests.support.servers import ServerThread, free_port


@pytest.fixture
def upstream_log() -> UpstreamLog:
    return UpstreamLog()


@pytest.fixture
def upstream(upstream_log: UpstreamLog) -> Iterator[ServerThread]:
    with ServerThread(make_upstream(upstream_log, delay_s=3.0)) as server:
        yield server


def proxy_settings(tmp_path: Path, upstream_url: str, **sections: Any) -> Settings:
    data: dict[str, Any] = {
        "server": {"auth": "none"},
        "ledger": {"url": f"sqlite:///{tmp_path / 'ledger.db'}"},
        "upstreams": [
            {
                "name": "test",
                "base_url": f"{upstream_url}/v1",
                "models": ["*"],
                "read_timeout_s": 1.5,
                "connect_timeout_s": 1.0,
                "meter": {"kind": "estimate"},
                "hardware": {"active_params_b": 8.0, "total_params_b": 8.0},
            }
        ],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_settings(data)


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Start a proxy for given settings (and injected I/O); stopped after the test."""
    running: list[ServerThread] = []

    def start(settings: Settings, **inject: Any) -> ServerThread:
        server = ServerThread(create_app(settings, **inject)).__enter__()
        running.append(server)
        return server

    yield start
    for server in running:
        server.__exit__(None, None, None)


@pytest.fixture
def proxy(
    start_proxy: Callable[..., ServerThread], tmp_path: Path, upstream: ServerThread
) -> ServerThread:
    return start_proxy(proxy_settings(tmp_path, upstream.url))


@pytest.fixture
def dead_port() -> int:
    return free_port()
