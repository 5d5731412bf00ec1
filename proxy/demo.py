"""`footprint demo`: a real local model, the proxy in front of it, one request, its footprint."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

import httpx

from proxy import localmodel
from proxy.config import Settings, parse_settings


def demo_settings(proxy_port: int, model_port: int) -> Settings:
    """The embedded defaults: no keys, SQLite ledger in the working directory, one llama.cpp
    upstream estimated (there is no GPU meter in front of a CPU model)."""
    base = f"http://127.0.0.1:{model_port}"
    return parse_settings(
        {
            "server": {"host": "127.0.0.1", "port": proxy_port, "auth": "none"},
            "ledger": {"url": "sqlite:///footprint.db"},
            "upstreams": [
                {
                    "name": "local-llama",
                    "base_url": f"{base}/v1",
                    "models": [localmodel.MODEL_ALIAS],
                    "tokenize_url": f"{base}/extras/tokenize",
                    "forward_request_id": False,
                    "zone": "WORLD",
                    "meter": {"kind": "estimate"},
                    "hardware": {
                        "accelerator": "H100-SXM",
                        "gpus": 1,
                        "active_params_b": localmodel.MODEL_PARAMS_B,
                        "total_params_b": localmodel.MODEL_PARAMS_B,
                    },
                }
            ],
        }
    )


def _say(message: str) -> None:
    print(f"footprint demo: {message}", flush=True)


def run_demo(
    *, port: int = 8080, model_dir: str | None = None, once: bool = False, prompt: str = ""
) -> int:
    import uvicorn

    from proxy.app import create_app

    if port == 0:
        port = localmodel.free_port()
    _say("preparing the model (Gemma 3 270M, Q4_K_M GGUF; Gemma Terms of Use)…")
    model_path = localmodel.ensure_model(model_dir)
    model_port = localmodel.free_port()
    _say(f"starting llama.cpp's server on 127.0.0.1:{model_port}…")
    log_path = Path("llama-server.log")
    model = localmodel.start_llama_server(model_path, model_port, log_path=log_path)
    settings = demo_settings(port, model_port)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                _say("the proxy did not start")
                return 1
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        _say(f"proxy listening on http://127.0.0.1:{port}/v1 ; sending one chat request…")
        response = httpx.post(
            url,
            json={
                "model": localmodel.MODEL_ALIAS,
                "messages": [{"role": "user", "content": prompt}],
                "max_tokens": 48,
                "temperature": 0,
            },
            timeout=120,
        )
        if response.status_code != 200:
            _say(f"request failed: {response.status_code} {response.text}")
            return 1
        answer = response.json()
        print()
        print(f"  prompt : {prompt}")
        print(f"  answer : {answer['choices'][0]['message']['content'].strip()!r}")
        print(
            f"  tokens : {answer['usage']['prompt_tokens']} in, "
            f"{answer['usage']['completion_tokens']} out"
        )
        print()
        for name, value in response.headers.items():
            if name.startswith("x-footprint") or name == "x-request-id":
                print(f"  {name}: {value}")
        print()
        _say(
            "figures are estimated (EcoLogits' method, as if on one H100: this machine has "
            "no GPU meter); the model's answers are nonsense, it is a tiny base model"
        )
        if once:
            return 0
        _say(
            f"serving; point an OpenAI client at http://127.0.0.1:{port}/v1 "
            f"(model {localmodel.MODEL_ALIAS!r}). Ctrl-C stops."
        )
        _say(f"dashboard: http://127.0.0.1:{port}/dashboard")
        with contextlib.suppress(KeyboardInterrupt):
            while thread.is_alive():
                thread.join(0.5)
        return 0
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        localmodel.stop(model)
        sys.stdout.flush()
