"""`footprint serve --workers N|auto`: N processes on one port, each with its own event loop.

The supervisor (the process `footprint serve` started) holds the port, then forks the
workers, each with a socket of its own on the port (SO_REUSEPORT), listened on once that
worker's lifespan and warm-up are done: the kernel hands each new connection to one ready
worker, spread evenly. The app is built in each worker after the fork
(threads, event loops, pools and database connections are never inherited); what was
imported before it is shared copy-on-write. A worker that dies is started again; SIGTERM
(or SIGINT) to the supervisor stops every worker gracefully, as one process would stop.

What must be one for the whole machine is, or the start is refused (`refusal`):

- budgets: counted in Redis (`budgets.redis_url`), which every worker shares exactly as
  replicas do. Without it each worker would count its own share of a budget; rather than a
  second cross-process store, `--workers > 1` then refuses to start and says which key.
- revocation: the ledger is shared by every worker (a PostgreSQL database, or one SQLite
  file whose revocation epoch file every process stats before trusting its key cache).
- meters: a measured meter (`nvml`, `prometheus`) read by N workers splits the GPU's energy
  right only over the model server's own token counters (`[upstreams.meter] activity =
  "engine"`, whose other-traffic and idle accounts count once per cluster); with "local"
  or "auto" (which may fall back to local) each worker would give its own requests the
  whole GPU, so that is refused. The estimate meter is per request and exact in any worker.
- `/metrics`: every worker answers its own metrics on a Unix socket in a private folder;
  the worker that gets `GET /metrics` sums them (see `proxy/telemetry/merge.py`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from proxy.config import Settings

log = logging.getLogger("footprint.workers")


def worker_count(text: str) -> int:
    """`--workers`' value: a whole number from 1, or "auto" (the cores this process may use)."""
    if text == "auto":
        return len(os.sched_getaffinity(0))
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f'must be a whole number from 1, or "auto", not {text!r}')
    return int(text)


def refusal(settings: Settings, workers: int) -> str | None:
    """Why `settings` cannot run in `workers` processes on one machine; None when it can."""
    if workers == 1:
        return None
    if not settings.budgets.redis_url:
        return (
            f"--workers {workers} needs budgets.redis_url: budgets must be counted in one "
            "store that every worker shares (set budgets.redis_url, or run one worker)"
        )
    for upstream in settings.upstreams:
        meter = upstream.meter
        if meter.kind != "estimate" and meter.activity != "engine":
            return (
                f"--workers {workers} with upstream {upstream.name!r}'s measured meter needs "
                f'[upstreams.meter] activity = "engine" (it is {meter.activity!r}: each worker '
                "would split the GPU over its own requests only); set it, or run one worker"
            )
    return None


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to `host:port` with SO_REUSEPORT, not listening. The supervisor's holds
    the port (and says at once when it is taken); each worker has one of its own, which
    uvicorn listens on once the worker is ready; the kernel spreads new connections evenly
    over the listening ones."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def supervise(workers: int, sock: socket.socket, run_worker: Callable[[list[Path]], int]) -> int:
    """Fork `workers` processes running `run_worker(metrics_sockets)` (the first path is the
    worker's own, where it answers its metrics) while `sock` holds the port; restart any that
    dies until a SIGTERM or SIGINT, then stop them all. Returns 0, or 1 when a worker failed
    to start."""
    folder = Path(tempfile.mkdtemp(prefix="footprint-workers-"))
    paths = [folder / f"worker-{i}.sock" for i in range(workers)]
    running: dict[int, int] = {}  # pid -> worker index
    stopping = False

    def fork(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                sock.close()
                code = run_worker([paths[index], *paths[:index], *paths[index + 1 :]])
            finally:
                os._exit(code)
        running[pid] = index

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(running):
            # Always SIGTERM, also for a SIGINT: a Ctrl-C reached the workers already (one
            # process group) and a second SIGINT would make uvicorn skip the graceful part.
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed = False
    # What is imported now is shared by every worker; frozen, the collector never writes to
    # it, so the pages stay shared instead of being copied into each worker.
    gc.collect()
    gc.freeze()
    try:
        for index in range(workers):
            fork(index)
        log.info("footprint: %d workers on one port (pids %s)", workers, sorted(running))
        while running:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - Python retries wait() itself
                continue
            index = running.pop(pid, -1)
            if index < 0 or stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            if code == 3:  # uvicorn's "startup failed": restarting will not help
                failed = True
                stop(signal.SIGTERM, None)
                continue
            log.error(
                "footprint: worker %d (pid %d) exited with %d; restarting it", index, pid, code
            )
            fork(index)
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failed else 0
