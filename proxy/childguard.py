"""Run a Python module as a child process that ends when its parent does.

`python -m proxy.childguard MODULE [ARG…]` runs MODULE as `python -m MODULE ARG…` would, and
watches its standard input, which the parent holds open as a pipe and never writes to. When the
parent is gone, for whatever reason (a clean exit, a crash, SIGKILL, an out-of-memory kill), the
pipe reaches end-of-file: the child sends itself SIGTERM, and exits hard `GRACE_S` later if that
did not end it. The demo runs llama.cpp's server this way, so no model server outlives it.

The module reads /dev/null as its standard input.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time
from typing import BinaryIO

GRACE_S = 5.0


def _wait_for_parent_exit(pipe: BinaryIO) -> None:
    while pipe.read(4096):
        pass  # nothing is ever written; b"" means the parent's end is closed
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(1)


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m proxy.childguard MODULE [ARG…]")
    pipe = os.fdopen(os.dup(0), "rb", buffering=0)
    with open(os.devnull, "rb") as devnull:
        os.dup2(devnull.fileno(), 0)
    threading.Thread(
        target=_wait_for_parent_exit, args=(pipe,), name="childguard", daemon=True
    ).start()
    module = argv[0]
    sys.argv = [module, *argv[1:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
