"""A real llama.cpp server with Gemma 3 270M, started once for the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import localmodel
from tests.support.servers import ServerThread


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model_path = localmodel.ensure_model()
    port = localmodel.free_port()
    log_path = Path(tmp_path_factory.mktemp("llama")) / "llama-server.log"
    process = localmodel.start_llama_server(model_path, port, log_path=log_path)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        localmodel.stop(process)


@pytest.fixture
def llama_proxy(llama_server: str, tmp_path: Path) -> Iterator[ServerThread]:
    from proxy.app import create_app
    from proxy.demo import demo_settings

    settings = demo_settings(0, int(llama_server.rsplit(":", 1)[1]))
    ledger = settings.ledger.model_copy(update={"url": f"sqlite:///{tmp_path / 'ledger.db'}"})
    settings = settings.model_copy(update={"ledger": ledger})
    with ServerThread(create_app(settings)) as server:
        yield server
