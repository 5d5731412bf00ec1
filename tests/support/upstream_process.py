"""A test upstream (tests/support/fake_upstream.py) as its own process, so a test can kill it
-9 and start it again on the same port: `python -m tests.support.upstream_process PORT`."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


class UpstreamProcess:
    """One fake upstream process on `port` (a free one by default)."""

    def __init__(self, port: int | None = None, delay_s: float = 3.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.delay_s = delay_s
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> UpstreamProcess:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.upstream_process",
                str(self.port),
                str(self.delay_s),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"test upstream on port {self.port} did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> UpstreamProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def main() -> None:
    import uvicorn

    from tests.support.fake_upstream import make_upstream

    port = int(sys.argv[1])
    delay_s = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    uvicorn.run(make_upstream(delay_s=delay_s), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
