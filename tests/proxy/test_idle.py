"""The meters' idle account reaches the ledger, so billing reports can show or spread it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

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
        gpu_j, idle_s, energy_j, co2e_g, embodied_g, water_ml = db.execute(
            "select sum(idle_gpu_energy_j), sum(idle_s), sum(idle_energy_j), sum(idle_co2e_g),"
            " sum(idle_embodied_co2e_g), sum(idle_water_ml) from meter_accounts"
            " where upstream = 'gpu'"
        ).fetchone()
    assert idle_j > 20.0  # at least 0.4 s of 60 W
    assert gpu_j >= idle_j * 0.999  # the shutdown flush wrote the whole account
    # The boundary of a request's figure (issue 13): the non-GPU server share (150 W per GPU)
    # over the idle time, times PUE 1.2; carbon with embodied carbon; water.
    assert energy_j == pytest.approx(1.2 * (gpu_j + 150.0 * idle_s), rel=1e-6)
    assert embodied_g > 0 and co2e_g > embodied_g and water_ml > 0
