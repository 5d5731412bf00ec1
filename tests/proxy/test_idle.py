"""The meters' idle account reaches the ledger, so billing reports can show or spread it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from tests.meters.fake_pynvml import FakeNvml
from tests.proxy.conftest import proxy_settings
from tests.support.servers import ServerThread


def test_idle_energy_is_written_to_the_ledger_at_shutdown(
    tmp_path: Path, upstream: ServerThread
) -> None:
    fake = FakeNvml(idle_w=60.0)
    settings = proxy_settings(
        tmp_path,
        upstream.url,
        upstreams=[
            {
                "name": "gpu",
                "base_url": f"{upstream.url}/v1",
                "models": ["*"],
                "meter": {"kind": "nvml", "gpus": [0]},
                "hardware": {"active_params_b": 8.0},
            }
        ],
    )
    from proxy.app import create_app

    app: Any = create_app(settings, nvml=fake.module)
    with ServerThread(app) as proxy:
        time.sleep(0.6)  # the GPU idles at 60 W with nothing in flight
        answer = httpx.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "x"}]},
        )
        assert answer.status_code == 200
        time.sleep(0.3)
        idle_j = app.state.services.router.upstreams[0].meter.idle_energy_j
    with sqlite3.connect(tmp_path / "ledger.db") as db:
        gpu_j, energy_j, co2e_g = db.execute(
            "select sum(gpu_energy_j), sum(energy_j), sum(co2e_g) from idle_energy "
            "where upstream = 'gpu'"
        ).fetchone()
    assert idle_j > 20.0  # at least 0.4 s of 60 W
    assert gpu_j >= idle_j * 0.999  # the shutdown flush wrote the whole account
    assert energy_j > gpu_j and co2e_g > 0  # facility energy (PUE) and its carbon
