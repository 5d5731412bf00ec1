"""Settings: file < FOOTPRINT_* environment; impossible values stop `footprint serve` with one
line that names the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_settings
from tests.support.refusal import serve_refusal

UPSTREAM = '[[upstreams]]\nname = "a"\nbase_url = "http://127.0.0.1:9/v1"\n'


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[server]\nbogus = 1\n" + UPSTREAM, "server.bogus: unknown key"),
        ('[[upstreams]]\nname = "a"\nbase_url = "ftp://x"\n', "upstreams.0.base_url"),
        (UPSTREAM + "pue = -1.2\n", "upstreams.0.pue"),
        ('[ledger]\nurl = "mysql://x"\n', "ledger.url"),
        (UPSTREAM + 'zone = "XX"\n', "upstreams.0.zone: unknown grid zone 'XX'"),
        (
            UPSTREAM + '[upstreams.meter]\nkind = "nvml"\ngpus = [0, 1, 2, 3, 4, 5, 6, 7]\n',
            "upstreams.0: hardware.gpus = 1 but meter.gpus = [0, 1, 2, 3, 4, 5, 6, 7]",
        ),
        (
            UPSTREAM
            + '[upstreams.meter]\nkind = "prometheus"\nurl = "http://gpu:9400/metrics"\n'
            + "gpus = [0]\n[upstreams.hardware]\ngpus = 4\n",
            "upstreams.0: hardware.gpus = 4 but meter.gpus = [0]",
        ),
        (
            UPSTREAM + '[upstreams.meter]\nkind = "nvml"\ngpus = [0, 0]\n'
            "[upstreams.hardware]\ngpus = 2\n",
            "upstreams.0: meter.gpus lists GPU 0 more than once",
        ),
    ],
)
def test_impossible_settings_stop_the_start_naming_the_key(
    tmp_path: Path, toml: str, key: str
) -> None:
    path = tmp_path / "footprint.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(path, environ={})
    assert key in serve_refusal(path)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "footprint.toml"
    path.write_text("[server]\nport = 8080\n" + UPSTREAM)
    settings = load_settings(
        path,
        environ={
            "FOOTPRINT_SERVER__PORT": "9001",
            "FOOTPRINT_UPSTREAMS__0__ZONE": "kr",
            "FOOTPRINT_ADMIN_KEY": "secret, not a setting",
        },
    )
    assert settings.server.port == 9001
    assert settings.upstreams[0].zone == "KR"


@pytest.mark.parametrize(
    ("zone", "nearest"),
    [("UK", "GB"), ("KOR", "KR"), ("DEU", "DE"), ("FRA", "FR"), ("XX", "MX")],
)
def test_an_unknown_zone_names_the_nearest_known_zones(zone: str, nearest: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(
            None,
            environ={
                "FOOTPRINT_UPSTREAMS__0__NAME": "a",
                "FOOTPRINT_UPSTREAMS__0__BASE_URL": "http://x/v1",
                "FOOTPRINT_UPSTREAMS__0__ZONE": zone,
            },
        )
    message = str(raised.value)
    assert message.startswith(f"configuration error: upstreams.0.zone: unknown grid zone '{zone}'")
    assert f"nearest known: {nearest}" in message


def test_known_zones_and_agreeing_gpu_counts_start(tmp_path: Path) -> None:
    path = tmp_path / "footprint.toml"
    path.write_text(
        UPSTREAM
        + 'zone = "us-cal-ciso"\n[upstreams.meter]\nkind = "nvml"\ngpus = [0, 1, 2, 3]\n'
        + "[upstreams.hardware]\ngpus = 4\n"
        + '[[upstreams]]\nname = "b"\nbase_url = "http://127.0.0.1:9/v1"\nzone = "KR"\n'
        + '[upstreams.meter]\nkind = "estimate"\n[upstreams.hardware]\ngpus = 8\n'
    )
    settings = load_settings(path, environ={})
    assert [u.zone for u in settings.upstreams] == ["US-CAL-CISO", "KR"]
    assert settings.upstreams[0].hardware.gpus == 4


def test_an_environment_variable_through_a_value_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "footprint.toml"
    path.write_text("[server]\nport = 8080\n" + UPSTREAM)
    result = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FOOTPRINT_SERVER__PORT__X": "1"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "footprint: configuration error: FOOTPRINT_SERVER__PORT__X: server.port is a value, "
        "not a table"
    ]
