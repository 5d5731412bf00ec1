"""Real `footprint serve` processes for tests: `python -m proxy.cli serve --config …` on a free
port, with a footprint.toml written for it, started, waited on (/healthz), stopped or killed -9.

Several of them with one ledger URL (PostgreSQL) and one `budgets.redis_url` are replicas of
one deployment, exactly as an operator would run them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list) and all(not isinstance(v, dict) for v in value):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as an inline TOML value")


def _toml_table(lines: list[str], header: str, table: Mapping[str, Any]) -> None:
    plain = {k: v for k, v in table.items() if not isinstance(v, dict | list) or _scalar_list(v)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    arrays = {k: v for k, v in table.items() if isinstance(v, list) and not _scalar_list(v)}
    if header:
        lines.append(header)
    lines.extend(f"{k} = {_toml_value(v)}" for k, v in plain.items())
    prefix = header.strip("[]") + "." if header else ""
    for key, sub in tables.items():
        lines.append("")
        _toml_table(lines, f"[{prefix}{key}]", sub)
    for key, items in arrays.items():
        for item in items:
            lines.append("")
            _toml_table(lines, f"[[{prefix}{key}]]", item)


def _scalar_list(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, dict) for v in value)


def to_toml(data: Mapping[str, Any]) -> str:
    """`data` (tables, arrays of tables, strings, numbers, booleans, lists of those) as TOML."""
    lines: list[str] = []
    _toml_table(lines, "", data)
    return "\n".join(lines).lstrip("\n") + "\n"


def replica_config(
    upstream_url: str,
    ledger_url: str,
    redis_url: str = "",
    *,
    auth: str = "keys",
    on_store_error: str = "refuse",
    **sections: Mapping[str, Any],
) -> dict[str, Any]:
    """Settings for one replica in front of a test upstream (the port is set at start).
    Extra `sections` are merged into the matching table."""
    data: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "auth": auth, "log_level": "warning"},
        "ledger": {"url": ledger_url},
        "budgets": {"redis_url": redis_url, "on_store_error": on_store_error},
        "upstreams": [
            {
                "name": "test",
                "base_url": f"{upstream_url}/v1",
                "models": ["*"],
                "connect_timeout_s": 2.0,
                "read_timeout_s": 30.0,
                "meter": {"kind": "estimate"},
                "hardware": {"active_params_b": 8.0, "total_params_b": 8.0},
            }
        ],
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


class ProxyProcess:
    """One `footprint serve` process. `start()` returns once /healthz answers 200."""

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any],
        workdir: Path,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        args: Sequence[str] = (),
        launcher: Sequence[str] = ("-m", "proxy.cli"),
    ) -> None:
        self.name = name
        self.args = list(args)  # more `footprint serve` options, e.g. --workers 2
        # What Python runs, given `serve --config …` after it: the CLI, or a script around it.
        self.launcher = list(launcher)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        server = {**config.get("server", {}), "port": self.port}
        self.config_path.write_text(to_toml({**config, "server": server}))
        base = {
            k: v
            for k, v in os.environ.items()
            # The file is the whole configuration: no stray FOOTPRINT_<SECTION>__<KEY>.
            if not (k.startswith("FOOTPRINT_") and "__" in k)
        }
        self.env = {**base, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> ProxyProcess:
        """Start the process without waiting for it (see `wait_healthy`)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, *self.launcher, "serve"),
                    *("--config", str(self.config_path), *self.args),
                ],
                cwd=self.workdir,
                env={**self.env, "PYTHONPATH": str(REPO_ROOT)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_healthy(self, timeout_s: float = 60.0) -> ProxyProcess:
        """Poll /healthz until it answers 200; raise with the log's tail if the process dies
        or does not answer within `timeout_s`."""
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} did not answer /healthz in {timeout_s} s:\n{self.log_tail()}"
                    )
                time.sleep(0.1)

    def start(self, timeout_s: float = 60.0) -> ProxyProcess:
        return self.launch().wait_healthy(timeout_s)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flushing, no goodbye (a crashed replica)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM and wait for a graceful exit; SIGKILL if it takes longer than `timeout_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_replicas(
    count: int,
    config: Mapping[str, Any],
    workdir: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60.0,
) -> list[ProxyProcess]:
    """`count` replicas of one configuration, started together (they start faster side by
    side than one after another); every one is healthy when this returns."""
    replicas = [ProxyProcess(f"replica-{i}", config, workdir, env) for i in range(count)]
    try:
        for replica in replicas:
            replica.launch()
        for replica in replicas:
            replica.wait_healthy(timeout_s)
    except BaseException:
        for replica in replicas:
            replica.kill()
        raise
    return replicas
