"""Settings: file < FOOTPRINT_* environment; impossible values stop `footprint serve` with one
line that names the key."""

from __future__ import annotations

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
    ],
)
def test_impossible_settings_stop_the_start_naming_the_key(
    tmp_path: Path, toml: str, key: str
) -> None:
    path = tmp_path / "footprint.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
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
