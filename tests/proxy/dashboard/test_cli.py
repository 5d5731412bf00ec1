"""`footprint dashboard` prints where the running proxy's dashboard is, and says so plainly
when nothing answers there."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.proxy.dashboard.conftest import Board
from tests.support.processes import REPO_ROOT
from tests.support.servers import free_port


def footprint(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FOOTPRINT_URL"}
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_prints_the_url_from_the_config(board: Board) -> None:
    done = footprint("dashboard", "--config", str(board.proxy.config_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{board.url}/dashboard"


def test_nothing_listening_is_one_line_and_a_non_zero_exit() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = footprint("dashboard", "--url", url)
    assert done.returncode == 1
    assert done.stdout.strip() == f"{url}/dashboard"
    assert done.stderr.startswith("footprint: no dashboard answers there yet")
    assert len(done.stderr.strip().splitlines()) == 1
