"""A stand-in for `python -m llama_cpp.server`, so the demo's tests need not build llama.cpp.

It takes llama_cpp.server's options (only --host and --port matter), serves the tests' fake
OpenAI model server (any model name answers 8 words), and writes its pid to
`stand-in-llama.pid` in the working directory so a test can see whether it outlived the demo.
Run as `footprint demo --model-server-module tests.support.stand_in_llama`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from tests.support.fake_upstream import make_upstream

PID_FILE = "stand-in-llama.pid"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _llama_options = parser.parse_known_args()
    Path(PID_FILE).write_text(str(os.getpid()))
    uvicorn.run(make_upstream(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
