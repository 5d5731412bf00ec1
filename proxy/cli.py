"""The `footprint` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from meters.constants import (
    AGENT_DEFAULT_PORT,
    DEFAULT_ACCELERATOR,
    DEFAULT_PUE,
    DEFAULT_SERVER_POWER_W_PER_GPU,
    DEFAULT_WUE_L_PER_KWH,
    UnknownAccelerator,
    accelerator,
)
from proxy.config import ConfigError, Settings, load_settings


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (`footprint estimate: --pue: …`), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _number(
    kind: Callable[[str], float], test: Callable[[float], bool], wanted: str
) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, not {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"must be {wanted}, not {text}")
        return value

    return parse


_count = _number(int, lambda v: v >= 0, "a whole number, 0 or more")
_positive = _number(float, lambda v: v > 0, "a number above 0")
_non_negative = _number(float, lambda v: v >= 0, "a number, 0 or more")
_pue = _number(float, lambda v: v >= 1, "at least 1 (facility energy over IT energy)")
_port = _number(int, lambda v: 0 < v < 65536, "a port number, 1 to 65535")
_port_or_any = _number(int, lambda v: 0 <= v < 65536, "a port number, 1 to 65535 (0: any free one)")


def _accelerator(text: str) -> str:
    try:
        return accelerator(text).name
    except UnknownAccelerator as error:
        raise argparse.ArgumentTypeError(str(error).split(";")[0]) from None


def _serve(args: argparse.Namespace) -> int:

    settings = load_settings(args.config)
    if args.host or args.port is not None:
        server = settings.server.model_copy(
            update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        )
        settings = settings.model_copy(update={"server": server})
    return run_server(settings, workers=args.workers)


def _workers(text: str) -> int:
    from proxy.workers import worker_count

    try:
        return worker_count(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_server(settings: Settings, workers: int = 1) -> int:
    import uvicorn

    from proxy.app import create_app

    logging.basicConfig(
        level=settings.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.server.log_level != "debug":
        # Alembic says "setup plugin …" seven times at INFO on every start: that is debugging.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if not settings.upstreams:
        print("footprint: no [[upstreams]] configured; nothing to relay to", file=sys.stderr)
        return 2
    from proxy.workers import refusal

    refused = refusal(settings, workers)
    if refused:
        print(f"footprint: {refused}", file=sys.stderr)
        return 2
    from proxy.ledger import (
        LedgerConfigError,
        LedgerUnreachable,
        check_reachable,
        migrate_in_child,
    )

    try:
        asyncio.run(check_reachable(settings.ledger))
    except LedgerConfigError as error:
        print(f"footprint: {error}", file=sys.stderr)
        return 2
    except LedgerUnreachable as error:
        print(f"footprint: {error}", file=sys.stderr)
        return 1
    # Before the app (and, with workers, before the fork): no serving process imports Alembic.
    migrate_in_child(settings.ledger)
    if workers > 1:
        return _serve_workers(settings, workers)
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        **_uvicorn_options(settings),
    )
    return 0


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How uvicorn serves Footprint, one process or each worker."""
    from proxy.server import limited_protocol

    return {
        "http": limited_protocol(settings.server),
        "log_level": settings.server.log_level,
        "access_log": False,
        # Nothing reads the client's address or scheme: X-Forwarded-* need not be parsed.
        "proxy_headers": False,
        "ws": "none",  # no WebSocket route: its protocol (and library) not loaded
        "timeout_graceful_shutdown": 10,
    }


def _serve_workers(settings: Settings, workers: int) -> int:
    from proxy.workers import bind, supervise

    host, port = settings.server.host, settings.server.port
    try:
        sock = bind(host, port)
    except OSError as error:
        print(f"footprint: cannot listen on {host}:{port}: {error}", file=sys.stderr)
        return 1
    _import_before_fork(settings)
    return supervise(workers, sock, lambda peers: _run_worker(settings, peers))


def _import_before_fork(settings: Settings) -> None:
    """Import now what each worker's start would import for itself (its event loop, the
    budget store's client, the warm-up's modules): imported before the fork, those pages are
    shared by every worker instead of copied into each (2 workers: 144 -> 131 MB PSS in all)."""
    import uvicorn

    from proxy.budgets import import_store
    from proxy.warmup import load_warm_up_modules

    # The loop each worker's uvicorn will make (uvloop where installed); the app is not loaded.
    uvicorn.Config("proxy.app:create_app", **_uvicorn_options(settings)).get_loop_factory()
    import_store(settings.budgets)
    load_warm_up_modules()


def _run_worker(settings: Settings, metrics_sockets: list[Path]) -> int:
    """One worker: the app on its own event loop, on a listening socket of its own; its
    metrics answered on `metrics_sockets[0]`, the others' summed into its `/metrics`.
    Returns 3 when the app did not start (uvicorn's code for it), else 0."""
    import uvicorn

    from proxy.app import create_app
    from proxy.telemetry.merge import serve_metrics
    from proxy.workers import bind

    app = create_app(settings)
    app.state.metrics_sockets = metrics_sockets
    serve_metrics(metrics_sockets[0], lambda: app.state.telemetry)
    config = uvicorn.Config(app, **_uvicorn_options(settings))
    server = uvicorn.Server(config)
    # Bound but not listening: the kernel sends this worker no connection until uvicorn
    # listens on it, which is after the lifespan (and its warm-up) is done.
    sock = bind(settings.server.host, settings.server.port)
    server.run(sockets=[sock])
    return 0 if server.started else 3


def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return run_demo(
        port=args.port,
        model_dir=args.model_dir,
        once=args.once,
        prompt=args.prompt,
        model_server_module=args.model_server_module,
    )


def _estimate(args: argparse.Namespace) -> int:
    from meters import MeterError
    from meters.estimate import offline_footprint
    from meters.footprint import dumps_plain

    try:
        result = offline_footprint(
            args.model,
            args.params_b,
            args.input_tokens,
            args.output_tokens,
            args.zone,
            pue=args.pue,
            wue_l_per_kwh=args.wue,
            accelerator=args.accelerator,
            latency_s=args.latency_s,
            server_power_w_per_gpu=args.server_w_per_gpu,
        )
    except (MeterError, ValueError) as error:
        print(f"footprint: {error}", file=sys.stderr)
        return 2
    print(dumps_plain(result, indent=2))
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    import os

    import httpx

    from proxy.admin_cli import proxy_url

    url = f"{proxy_url(load_settings(args.config), args.url, os.environ)}/dashboard"
    print(url)
    try:
        httpx.get(url, timeout=3.0).raise_for_status()
    except httpx.HTTPError as error:
        print(f"footprint: no dashboard answers there yet ({error})", file=sys.stderr)
        return 1
    return 0


def _agent(args: argparse.Namespace) -> int:
    from meters import MeterError
    from meters.agent import run_agent

    try:
        run_agent(args.host, args.port, args.gpus)
    except MeterError as error:
        print(f"footprint agent: cannot read this host's GPUs: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(
            f"footprint agent: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr
        )
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="footprint",
        description="OpenAI-compatible proxy that meters the energy, carbon and water of "
        "every LLM request.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="TOML file (default: ./footprint.toml if present)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=_port)
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help='processes on one port, each with its own event loop (default 1; "auto": the '
        "cores this process may use); more than 1 needs budgets.redis_url",
    )
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo",
        help="start a small local model (llama.cpp, Gemma 3 270M) and the proxy in front of "
        "it, send one chat request and show its footprint",
    )
    demo.add_argument(
        "--port", type=_port_or_any, default=8080, help="proxy port (default 8080; 0: any free)"
    )
    demo.add_argument("--model-dir", default=None, help="where to keep the model file")
    demo.add_argument("--prompt", default="Write one sentence about the sea.")
    demo.add_argument("--once", action="store_true", help="exit after the first request")
    # The module run as the model server, with llama_cpp.server's options: the tests put a
    # small stand-in here so that CI need not build llama.cpp. Not for users, hence hidden.
    demo.add_argument("--model-server-module", default="llama_cpp.server", help=argparse.SUPPRESS)
    demo.set_defaults(func=_demo)

    estimate = commands.add_parser(
        "estimate",
        help="estimate one request's footprint offline (the estimator serve mode uses)",
    )
    estimate.add_argument("--model", required=True)
    estimate.add_argument(
        "--params-b",
        type=_positive,
        default=None,
        help="active parameters in billions (default: known models' own)",
    )
    estimate.add_argument("--input-tokens", type=_count, required=True)
    estimate.add_argument("--output-tokens", type=_count, required=True)
    estimate.add_argument("--zone", default="WORLD")
    estimate.add_argument("--pue", type=_pue, default=DEFAULT_PUE)
    estimate.add_argument(
        "--wue", type=_non_negative, default=DEFAULT_WUE_L_PER_KWH, help="on-site WUE, L/kWh"
    )
    estimate.add_argument("--accelerator", type=_accelerator, default=DEFAULT_ACCELERATOR)
    estimate.add_argument(
        "--latency-s",
        type=_non_negative,
        default=None,
        help="measured request latency, caps the generation time (default: none)",
    )
    estimate.add_argument(
        "--server-w-per-gpu",
        type=_non_negative,
        default=DEFAULT_SERVER_POWER_W_PER_GPU,
        help="non-GPU server power per GPU, W (default 150, EcoLogits/BoaviztAPI)",
    )
    estimate.set_defaults(func=_estimate)

    dashboard = commands.add_parser(
        "dashboard", help="print the URL of the running proxy's dashboard page"
    )
    dashboard.add_argument("--config", help="TOML file (default: ./footprint.toml if present)")
    dashboard.add_argument("--url", help="the proxy (default: $FOOTPRINT_URL or the config's)")
    dashboard.set_defaults(func=_dashboard)

    agent = commands.add_parser(
        "agent", help="publish this host's NVML GPU energy counters as Prometheus text"
    )
    agent.add_argument("--host", default="0.0.0.0")
    agent.add_argument("--port", type=_port, default=AGENT_DEFAULT_PORT)
    agent.add_argument(
        "--gpus", type=_count, nargs="*", default=None, help="GPU indices (default: all)"
    )
    agent.set_defaults(func=_agent)

    try:
        from proxy.admin_cli import register_admin_commands
    except ImportError:  # pragma: no cover - only while the admin CLI is absent
        pass
    else:
        register_admin_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as error:
        print(f"footprint: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
