"""Build the image with podman and run it: the proxy answers /healthz inside the container as
the non-root user, the image's HEALTHCHECK passes, and the agent command is in the image.

Skipped only when podman is absent. This machine reaches no container registry, so the base
image (`PYTHON_IMAGE` of the Dockerfile) is a Debian bookworm root file system with python3,
made once with debootstrap from Debian's archive and imported as
localhost/footprint-base:bookworm, carrying this machine's CA bundle and pip's `cert` setting
so that pip inside the build trusts the same certificates the host does. Where
python:3.12-slim-bookworm is already in podman's store, that is used instead.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.conftest import ROOT
from tests.support.servers import free_port

PODMAN = shutil.which("podman")
# The first run on a fresh machine makes the base image (debootstrap, then podman import) and
# builds the image with pip inside: far past the suite's 120 s per-test timeout, which the
# first test pays for in its set-up. Later runs find both images in podman's store.
DEBOOTSTRAP_TIMEOUT_S = 900
IMPORT_TIMEOUT_S = 300
BUILD_TIMEOUT_S = 900
FIRST_RUN_TIMEOUT_S = DEBOOTSTRAP_TIMEOUT_S + IMPORT_TIMEOUT_S + BUILD_TIMEOUT_S + 120
pytestmark = [
    pytest.mark.skipif(PODMAN is None, reason="podman is not installed"),
    pytest.mark.timeout(FIRST_RUN_TIMEOUT_S),
]

OFFICIAL_BASE = "docker.io/library/python:3.12-slim-bookworm"
LOCAL_BASE = "localhost/footprint-base:bookworm"
IMAGE = "localhost/footprint-proxy:test"


def _podman(*args: str, timeout_s: float = 600, check: bool = True) -> str:
    assert PODMAN is not None
    result = subprocess.run(
        [PODMAN, *args], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])}: {result.stdout}\n{result.stderr}")
    return result.stdout


def _limits() -> list[str]:
    """Run containers with the limits this process has: podman's defaults may be above the
    hard limits of a sandbox, where raising them is not allowed."""
    _soft, nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    _soft, nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    out = []
    if nofile != resource.RLIM_INFINITY:
        out += ["--ulimit", f"nofile={nofile}:{nofile}"]
    # podman runs the runtime with at most 32768 processes, whatever its caller had.
    limit = 32768 if nproc == resource.RLIM_INFINITY else min(nproc, 32768)
    out += ["--ulimit", f"nproc={limit}:{limit}"]
    return out


def _runtime() -> list[str]:
    # crun refuses hosts whose cgroups are in hybrid (v1 + v2) mode; runc runs there.
    return ["--runtime", "runc"] if shutil.which("runc") else []


def _base_image() -> str:
    if _exists(OFFICIAL_BASE):
        return OFFICIAL_BASE
    if _exists(LOCAL_BASE):
        return LOCAL_BASE
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise AssertionError("no base image: apt-get install debootstrap (used once to make one)")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                "--include=python3,python3-venv,ca-certificates",
                "bookworm",
                str(rootfs),
                "http://deb.debian.org/debian",
            ],
            check=True,
            capture_output=True,
            timeout=DEBOOTSTRAP_TIMEOUT_S,
        )
        host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        if host_bundle.exists():
            shutil.copy(host_bundle, rootfs / "etc/ssl/certs/ca-certificates.crt")
            (rootfs / "etc/pip.conf").write_text(f"[global]\ncert = {host_bundle}\n")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert PODMAN is not None
        subprocess.run(
            [PODMAN, "import", "-", LOCAL_BASE],
            stdin=tar.stdout,
            check=True,
            capture_output=True,
            timeout=IMPORT_TIMEOUT_S,
        )
        tar.wait()
    return LOCAL_BASE


def _exists(image: str) -> bool:
    assert PODMAN is not None
    return subprocess.run([PODMAN, "image", "exists", image], check=False).returncode == 0


@pytest.fixture(scope="module")
def image() -> str:
    base = _base_image()
    _podman(
        "build",
        "--format",
        "docker",
        "--isolation",
        "chroot",
        "--network",
        "host",
        *_limits(),
        "--build-arg",
        f"PYTHON_IMAGE={base}",
        "-f",
        "deploy/Dockerfile",
        "-t",
        IMAGE,
        str(ROOT),
        timeout_s=BUILD_TIMEOUT_S,
    )
    return IMAGE


@pytest.fixture
def container(image: str, tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = tmp_path / "footprint.toml"
    # host 127.0.0.1 on purpose: the image's FOOTPRINT_SERVER__HOST must override it.
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nauth = "none"\n'
        '[ledger]\nurl = "sqlite:///footprint.db"\n'
        f'[[upstreams]]\nname = "none"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n'
        '[upstreams.meter]\nkind = "estimate"\n'
    )
    config.chmod(0o644)
    name = f"footprint-test-{port}"
    _podman(
        *_runtime(),
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        *_limits(),
        "-v",
        f"{config}:/etc/footprint/footprint.toml:ro",
        image,
    )
    try:
        yield name, port
    finally:
        _podman(*_runtime(), "rm", "--force", name, check=False)


def test_container_serves_healthz_as_a_non_root_user(container: tuple[str, int]) -> None:
    name, port = container
    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise AssertionError(_podman("logs", name, check=False)) from None
            time.sleep(0.2)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert _podman("exec", name, "id", "-u").strip() == "10001"
    # The image's own HEALTHCHECK command, run now.
    _podman(*_runtime(), "healthcheck", "run", name)
    config = json.loads(_podman("image", "inspect", IMAGE))[0]["Config"]
    assert config["Entrypoint"] == ["footprint"]
    assert config["User"] == "10001:10001"


def test_agent_command_is_in_the_same_image(image: str) -> None:
    out = _podman(*_runtime(), "run", "--rm", *_limits(), image, "agent", "--help")
    assert "--port" in out and "--gpus" in out
