"""How an upstream's `[upstreams.meter] activity` and `activity_url` reach its meter, and the
one warning line a replica gives when its figures would over-count on a shared GPU."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from meters.calibration import Calibrations
from meters.meter import MeasuredMeter
from proxy.app import activity_url, build_upstream
from proxy.config import ConfigError, load_settings
from tests.meters.fake_pynvml import FakeNvml
from tests.proxy.conftest import proxy_settings

GPU_UPSTREAM = {
    "name": "gpu",
    "base_url": "http://vllm-1:8000/v1",
    "meter": {"kind": "nvml", "gpus": [0]},
    "hardware": {"active_params_b": 8.0},
}


def settings_with(tmp_path: Path, meter: dict[str, object], redis_url: str = ""):  # type: ignore[no-untyped-def]
    upstream = {**GPU_UPSTREAM, "meter": {**GPU_UPSTREAM["meter"], **meter}}  # type: ignore[dict-item]
    return proxy_settings(
        tmp_path, "http://vllm-1:8000", upstreams=[upstream], budgets={"redis_url": redis_url}
    )


def test_the_activity_url_defaults_to_the_upstreams_origin(tmp_path: Path) -> None:
    settings = settings_with(tmp_path, {})
    assert activity_url(settings.upstreams[0]) == "http://vllm-1:8000/metrics"
    own = settings_with(tmp_path, {"activity_url": "http://vllm-1:9000/metrics"})
    assert activity_url(own.upstreams[0]) == "http://vllm-1:9000/metrics"
    local = settings_with(tmp_path, {"activity": "local"})
    assert activity_url(local.upstreams[0]) == ""


def test_local_attribution_on_a_shared_deployment_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_with(tmp_path, {"activity": "local"}, redis_url="redis://127.0.0.1:6379")
    with caplog.at_level(logging.WARNING, logger="footprint"):
        upstream = build_upstream(
            settings, settings.upstreams[0], Calibrations(), nvml=FakeNvml().module
        )
    assert isinstance(upstream.meter, MeasuredMeter)
    warnings = [r.getMessage() for r in caplog.records if "over-count" in r.getMessage()]
    assert len(warnings) == 1 and "upstream gpu" in warnings[0]


def test_one_replica_or_engine_attribution_does_not_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    alone = settings_with(tmp_path, {"activity": "local"})
    engine = settings_with(tmp_path, {"activity": "engine"}, redis_url="redis://127.0.0.1:6379")
    with caplog.at_level(logging.WARNING, logger="footprint"):
        for settings in (alone, engine):
            build_upstream(settings, settings.upstreams[0], Calibrations(), nvml=FakeNvml().module)
    assert not [r for r in caplog.records if "over-count" in r.getMessage()]


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('activity = "sometimes"\n', "upstreams.0.meter.activity"),
        ('activity_url = "gopher://x"\n', "upstreams.0.meter"),
    ],
)
def test_impossible_activity_settings_stop_the_start(tmp_path: Path, line: str, key: str) -> None:
    path = tmp_path / "footprint.toml"
    path.write_text(
        '[[upstreams]]\nname = "gpu"\nbase_url = "http://vllm-1:8000/v1"\n'
        '[upstreams.meter]\nkind = "nvml"\n' + line
    )
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(path, environ={})
