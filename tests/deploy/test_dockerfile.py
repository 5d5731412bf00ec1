"""The Dockerfile passes hadolint and holds what the issue asks of it; its health check script
works against a real proxy."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.deploy.conftest import DEPLOY, ROOT, tool
from tests.proxy.conftest import proxy_settings, start_proxy  # noqa: F401  (fixture)
from tests.support.servers import ServerThread, free_port

DOCKERFILE = DEPLOY / "Dockerfile"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = subprocess.run([tool("hadolint"), str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_image_is_multi_stage_non_root_with_health_check_and_footprint_entrypoint() -> None:
    steps = _instructions()
    assert len([rest for word, rest in steps if word == "FROM"]) >= 2
    users = [rest for word, rest in steps if word == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    (healthcheck,) = [rest for word, rest in steps if word == "HEALTHCHECK"]
    assert "healthcheck.py" in healthcheck
    assert [rest for word, rest in steps if word == "ENTRYPOINT"] == ['["footprint"]']
    (cmd,) = [rest for word, rest in steps if word == "CMD"]
    assert cmd == '["serve", "--config", "/etc/footprint/footprint.toml"]'


def test_everything_the_image_copies_is_in_the_build_context() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    copied = 0
    for word, rest in _instructions():
        if word == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert any(source == a or source.startswith(a + "/") for a in allowed), source
                copied += 1
    assert copied >= 4


def _run_healthcheck(config: Path, env: dict[str, str] | None = None) -> int:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), str(config)],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        timeout=60,
        check=False,
    ).returncode


def test_health_check_follows_the_configured_port(
    start_proxy: Callable[..., ServerThread],  # noqa: F811
    tmp_path: Path,
) -> None:
    upstream_url = f"http://127.0.0.1:{free_port()}"
    proxy = start_proxy(proxy_settings(tmp_path, upstream_url))
    config = tmp_path / "footprint.toml"
    config.write_text(f"[server]\nport = {proxy.port}\n")
    assert _run_healthcheck(config) == 0
    # The environment overrides the file, as it does for the proxy itself.
    assert _run_healthcheck(config, {"FOOTPRINT_SERVER__PORT": str(free_port())}) == 1
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(f"[server]\nport = {free_port()}\n")
    assert _run_healthcheck(elsewhere) == 1
    assert (
        _run_healthcheck(tmp_path / "absent.toml", {"FOOTPRINT_SERVER__PORT": str(proxy.port)}) == 0
    )
