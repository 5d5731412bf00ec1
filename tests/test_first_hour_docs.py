"""What the README and deploy/README tell a new user works as written: configuring by the
environment alone starts the proxy, and nothing is installed from an index that serves no
release."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.processes import REPO_ROOT
from tests.support.servers import free_port


def env_only_exports() -> dict[str, str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### Configuring by environment alone", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    exports = {}
    for line in block.splitlines():
        if line.startswith("export "):
            name, _, value = shlex.split(line.removeprefix("export "), comments=True)[0].partition(
                "="
            )
            exports[name] = value
    assert "footprint serve" in block
    return exports


def serve(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "serve"],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_readme_environment_alone_starts_the_proxy(tmp_path: Path) -> None:
    exports = env_only_exports()
    assert exports["FOOTPRINT_UPSTREAMS__0__NAME"]
    port = free_port()
    process = serve({**exports, "FOOTPRINT_SERVER__PORT": str(port)}, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "footprint serve did not answer /healthz"
            time.sleep(0.2)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
        assert models.status_code != 401  # auth "none" from the environment too
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_without_the_upstream_name_the_start_says_which_key_is_missing(tmp_path: Path) -> None:
    exports = env_only_exports()
    del exports["FOOTPRINT_UPSTREAMS__0__NAME"]
    process = serve(exports, tmp_path)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 2
    assert err.strip().splitlines() == [
        "footprint: configuration error: upstreams.0.name: Field required"
    ]


def test_no_readme_installs_footprint_from_a_package_index() -> None:
    for readme in (REPO_ROOT / "README.md", REPO_ROOT / "deploy" / "README.md"):
        text = readme.read_text()
        assert not re.search(r"pip install ['\"]?footprint-proxy", text), readme
    deploy = (REPO_ROOT / "deploy" / "README.md").read_text()
    assert "pip install ." in deploy and "pip wheel --no-deps -w dist ." in deploy
