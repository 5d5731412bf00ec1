"""`footprint demo`: a real local model, the proxy in front of it, one request, its footprint."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import httpx

from meters.constants import DEFAULT_ACCELERATOR
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
                        "accelerator": DEFAULT_ACCELERATOR,
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


class DemoStopped(BaseException):
    """SIGTERM, SIGINT or SIGHUP reached the demo. A BaseException, as KeyboardInterrupt is,
    so that no `except Exception` on the way swallows it and every `finally` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGHUP", signal.SIGTERM))


@contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """Turn SIGTERM (systemd, Docker, Kubernetes), SIGINT (Ctrl-C) and SIGHUP (terminal
    closed) alike into DemoStopped in the main thread, so the model server is stopped on
    every path out. Python's default for SIGTERM ends the process without running `finally`,
    which left llama.cpp's server running."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise DemoStopped(signum)

    previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
    for signum in set(_STOP_SIGNALS):
        previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def run_demo(
    *,
    port: int = 8080,
    model_dir: str | None = None,
    once: bool = False,
    prompt: str = "",
    model_server_module: str = localmodel.SERVER_MODULE,
) -> int:
    """`footprint demo`: exit status 0, 1 when something failed, 128 + the signal's number
    when a signal stopped it (143 for SIGTERM, 130 for SIGINT). The model server never
    outlives it."""
    try:
        with _stopped_by_signals():
            return _run(port, model_dir, once, prompt, model_server_module)
    except localmodel.ModelServerError as error:
        _say(str(error))
        return 1
    except DemoStopped as stopped:
        _say(f"stopped ({signal.Signals(stopped.signum).name}); the model server is stopped too")
        return 128 + stopped.signum


def _run(port: int, model_dir: str | None, once: bool, prompt: str, server_module: str) -> int:
    import uvicorn

    from proxy.app import create_app

    if port == 0:
        port = localmodel.free_port()
    _say("preparing the model (Gemma 3 270M, Q4_K_M GGUF; Gemma Terms of Use)…")
    model_path = localmodel.ensure_model(model_dir)
    model_port = localmodel.free_port()
    _say(f"starting llama.cpp's server on 127.0.0.1:{model_port}…")
    model = localmodel.start_llama_server(
        model_path, model_port, log_path=Path("llama-server.log"), server_module=server_module
    )
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        settings = demo_settings(port, model_port)
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
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
        _show(prompt, response)
        if once:
            return 0
        print(next_steps(port), flush=True)
        while thread.is_alive():
            thread.join(0.5)
        return 0
    finally:
        if server is not None:
            server.should_exit = True
        localmodel.stop(model)  # first: requests still waiting on it end at once
        if thread is not None:
            thread.join(timeout=15)
        sys.stdout.flush()


def _show(prompt: str, response: httpx.Response) -> None:
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


def footprint_command() -> str:
    """How to run `footprint` from another terminal: this environment's own launcher, so it
    works without activating the virtualenv (or `python -m proxy.cli` where there is none)."""
    launcher = Path(sys.executable).parent / "footprint"
    return str(launcher) if launcher.exists() else f"{sys.executable} -m proxy.cli"


def next_steps(port: int) -> str:
    """What to try while the demo serves: the SDK, a stream, the report, the dashboard."""
    base = f"http://127.0.0.1:{port}"
    model = localmodel.MODEL_ALIAS
    url_flag = "" if port == 8080 else f" --url {base}"
    return f"""
footprint demo: serving at {base}/v1 (model {model!r}). Try, from another terminal:

  Python ({sys.executable} has the openai package):

    from openai import OpenAI
    client = OpenAI(base_url="{base}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="{model}", max_tokens=64,
        messages=[{{"role": "user", "content": "Hello"}}],
    )
    print(raw.headers["x-footprint-energy-j"], raw.parse().model_extra["footprint"])

  A stream (its footprint comes as a ': footprint {{…}}' line before 'data: [DONE]'):

    curl -N {base}/v1/chat/completions -H 'content-type: application/json' \\
      -d '{{"model": "{model}", "stream": true, "max_tokens": 64,
           "messages": [{{"role": "user", "content": "Hello"}}]}}'

  Usage so far, from the ledger (footprint.db here):

    {footprint_command()} report{url_flag}

  The dashboard: {base}/dashboard

  max_tokens matters: this base model rarely stops by itself (2,000 tokens take 2 minutes).
  Ctrl-C or SIGTERM stops the proxy and the model server.
"""
