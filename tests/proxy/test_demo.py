"""`footprint demo` as a real process in front of a stand-in model server: it ends by saying what
to try next, and however it is stopped (SIGTERM as systemd, Docker and Kubernetes send it,
SIGINT, or a crash) the model server does not outlive it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.support.processes import REPO_ROOT
from tests.support.stand_in_llama import PID_FILE

READY_LINE = "Ctrl-C or SIGTERM stops the proxy and the model server."


class Demo:
    """`python -m proxy.cli demo` in `workdir`, its output collected line by line."""

    def __init__(self, workdir: Path, server_module: str = "tests.support.stand_in_llama") -> None:
        model_dir = workdir / "models"
        model_dir.mkdir()
        # ensure_model takes a file this big as the assembled model: sparse, it costs no disk.
        with open(model_dir / "gemma-3-270m-q4_k_m.gguf", "wb") as model:
            model.truncate(101_000_000)
        self.workdir = workdir
        self.lines: list[str] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOOTPRINT_")}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "demo",
                "--port",
                "0",
                "--model-dir",
                str(model_dir),
                "--prompt",
                "Hello",
                "--model-server-module",
                server_module,
            ],
            cwd=workdir,
            env={**env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # signals from the test reach the demo alone
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_serving(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(line.strip() == READY_LINE for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"the demo did not get to serving:\n{self.output}")
            time.sleep(0.1)

    def model_pid(self) -> int:
        return int((self.workdir / PID_FILE).read_text())

    def port(self, pattern: str) -> int:
        found = re.search(pattern, self.output)
        assert found is not None, self.output
        return int(found.group(1))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._reader.join(timeout=10)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.fixture
def demo(tmp_path: Path) -> object:
    running = Demo(tmp_path)
    yield running
    running.close()
    if (tmp_path / PID_FILE).exists() and not gone(running.model_pid()):
        os.kill(running.model_pid(), signal.SIGKILL)  # never leave one behind, even on failure


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_demo_and_its_model_server(demo: Demo, signum: int) -> None:
    demo.wait_serving()
    model_pid = demo.model_pid()
    model_port = demo.port(r"starting llama\.cpp's server on 127\.0\.0\.1:(\d+)")
    assert not gone(model_pid) and listening(model_port)
    demo.process.send_signal(signum)
    assert demo.process.wait(timeout=30) == 128 + signum
    assert gone(model_pid), "the model server outlived the demo"
    assert not listening(model_port)
    demo.close()
    name = signal.Signals(signum).name
    assert demo.lines[-1] == f"footprint demo: stopped ({name}); the model server is stopped too"


def test_a_killed_demo_takes_its_model_server_with_it(demo: Demo) -> None:
    demo.wait_serving()
    model_pid = demo.model_pid()
    demo.process.send_signal(signal.SIGKILL)  # nothing in the demo runs: no handler, no finally
    demo.process.wait(timeout=10)
    assert wait_gone(model_pid, timeout_s=20), "the model server outlived the killed demo"


def test_the_demo_ends_with_what_to_try_next(demo: Demo, tmp_path: Path) -> None:
    demo.wait_serving()
    port = demo.port(r"proxy listening on http://127\.0\.0\.1:(\d+)/v1")
    text = demo.output
    base = f"http://127.0.0.1:{port}"
    assert f'OpenAI(base_url="{base}/v1", api_key="unused")' in text
    assert "max_tokens=64" in text  # the tiny base model rarely stops by itself
    assert f"curl -N {base}/v1/chat/completions" in text and '"stream": true' in text
    assert f"{base}/dashboard" in text
    # The report line is a command that works as printed: no venv to activate, no admin key.
    report = next(line.strip() for line in demo.lines if " report --url " in line)
    result = subprocess.run(
        report.split(),
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^default\s+1\s", result.stdout, re.MULTILINE), result.stdout


def test_a_model_server_that_cannot_start_is_one_line_naming_its_log(tmp_path: Path) -> None:
    demo = Demo(tmp_path, server_module="tests.support.no_such_model_server")
    try:
        assert demo.process.wait(timeout=60) == 1
    finally:
        demo.close()
    last = demo.lines[-1]
    assert last.startswith(
        "footprint demo: llama.cpp's server exited with status 1 before answering"
    )
    assert (
        "llama-server.log ends: ImportError: No module named tests.support.no_such_model_server"
        in last
    )
    assert last.endswith("(bash scripts/setup.sh model installs llama.cpp's server)")
    assert not any(line.startswith("Traceback") for line in demo.lines), demo.output
