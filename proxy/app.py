"""`create_app(settings)`: wiring and lifespan only.

I/O is injected through keyword defaults so tests pass real small things (an ASGI upstream,
a fake pynvml module, a local intensity server) instead of patching globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import Message, Receive, Scope, Send

from meters import Hardware, SiteFactors
from meters.calibration import Calibrations
from meters.estimate import Estimator
from meters.intensity import ElectricityMapsProvider, GridIntensity, IntensityTable, TableIntensity
from meters.meter import build_meter
from proxy.auth import Authenticator
from proxy.budgets import open_budgets, open_rate_limits
from proxy.config import Settings, UpstreamSettings
from proxy.errors import NotFound, ProxyError, ServiceUnavailable
from proxy.idle import IdleRecorder
from proxy.ledger import ERROR_TYPES as LEDGER_ERROR_TYPES
from proxy.ledger import open_ledger
from proxy.ledger import unavailable as ledger_unavailable
from proxy.relay import ENDPOINTS, Relay
from proxy.routes import health, openai, openapi
from proxy.routes.admin import admin_router
from proxy.routes.admin_limits import limits_router
from proxy.routes.admin_upstreams import upstreams_router
from proxy.routes.dashboard import dashboard_router
from proxy.routes.footprint import footprint_router
from proxy.routes.footprint_views import views_router
from proxy.routing import CircuitBreaker, HealthChecks, UpstreamHealth
from proxy.services import Services
from proxy.upstreams import Upstream, UpstreamRouter, build_client
from proxy.warmup import warm_up

if TYPE_CHECKING:
    import httpx  # types only: the meters' and the intensity provider's transports

log = logging.getLogger("footprint")


def build_upstream(
    settings: Settings,
    upstream: UpstreamSettings,
    calibrations: Calibrations,
    *,
    nvml: ModuleType | None = None,
    meter_transport: httpx.BaseTransport | None = None,
) -> Upstream:
    metering = settings.metering
    server_w_per_gpu = upstream.hardware.server_w_per_gpu
    if server_w_per_gpu is None:
        server_w_per_gpu = metering.server_power_w_per_gpu
    hardware = Hardware(
        accelerator=upstream.hardware.accelerator,
        # Measured figures occupy the metered GPUs (their server share is counted over them), so
        # embodied carbon counts those; the estimator says its own count per measurement.
        gpus=len(upstream.meter.gpus)
        if upstream.meter.kind != "estimate"
        else upstream.hardware.gpus,
        active_params_b=upstream.hardware.active_params_b,
        total_params_b=upstream.hardware.total_params_b,
    )
    estimator = Estimator(
        hardware,
        batch_size=metering.batch_size,
        server_power_w_per_gpu=server_w_per_gpu,
        calibrations=calibrations,
        accelerator_memory_gb=upstream.hardware.memory_gb(),
    )

    def observe(model: str, prompt_tokens: int, output_tokens: int, gpu_energy_j: float) -> None:
        calibrations.observe(
            model, hardware.accelerator, prompt_tokens, output_tokens, gpu_energy_j
        )

    shared = bool(settings.budgets.redis_url)

    def on_local(reason: str) -> None:
        if shared:
            # Several replicas (a shared budget store) and each splits the GPU over only the
            # requests it sees: every replica bills its requests for its neighbours' work.
            log.warning(
                "upstream %s: attribution is local on a measured meter (%s) while "
                "budgets.redis_url is set: with several replicas on one GPU its figures "
                "over-count; serve vLLM's /metrics or set [upstreams.meter] activity_url",
                upstream.name,
                reason,
            )

    meter = build_meter(
        upstream.meter.kind,
        hardware=hardware,
        gpus=upstream.meter.gpus,
        url=upstream.meter.url,
        tick_s=metering.tick_s,
        alpha=metering.alpha,
        server_power_w_per_gpu=server_w_per_gpu,
        fallback=estimator.estimate,
        observe=observe,
        nvml=nvml,
        transport=meter_transport,
        activity=upstream.meter.activity,
        activity_url=activity_url(upstream),
        on_local=on_local,
    )
    routing = settings.routing
    return Upstream(
        settings=upstream,
        client=build_client(upstream),
        meter=meter,
        site=SiteFactors(
            zone=upstream.zone,
            pue=upstream.pue,
            wue_l_per_kwh=upstream.wue_l_per_kwh,
            contracts=upstream.carbon.contracts(),
        ),
        hardware=hardware,
        estimator=estimator,
        calibrations=calibrations,
        health=UpstreamHealth(
            CircuitBreaker(routing.failure_threshold, routing.open_s), upstream.max_concurrency
        ),
    )


def activity_url(upstream: UpstreamSettings) -> str:
    """Where the model server's engine counters are: `meter.activity_url`, else the origin of
    `base_url` + /metrics (vLLM serves them there); "" with `activity = "local"`."""
    if upstream.meter.activity == "local":
        return ""
    if upstream.meter.activity_url:
        return upstream.meter.activity_url
    parts = urlsplit(upstream.base_url)
    return f"{parts.scheme}://{parts.netloc}/metrics"


def build_intensity(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> GridIntensity:
    table = IntensityTable.shipped()
    config = settings.intensity
    if config.provider == "electricitymaps":
        api_key = os.environ.get(config.api_key_env, "")
        if api_key:
            return ElectricityMapsProvider(
                api_key,
                table,
                base_url=config.base_url,
                ttl_s=config.cache_ttl_s,
                timeout_s=config.timeout_s,
                transport=transport,
            )
        log.warning("intensity: %s is empty; using the shipped table", config.api_key_env)
    return TableIntensity(table)


def create_app(
    settings: Settings,
    *,
    nvml: ModuleType | None = None,
    meter_transport: httpx.BaseTransport | None = None,
    intensity_transport: httpx.AsyncBaseTransport | None = None,
    telemetry: Any = None,
    environ: Mapping[str, str] | None = None,
) -> Starlette:
    """The Footprint ASGI app. Everything that does I/O is built in the lifespan."""
    environ = os.environ if environ is None else environ

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        upstreams = [
            build_upstream(
                settings,
                u,
                # Each upstream's estimator is calibrated from its own measured traffic.
                Calibrations(),
                nvml=nvml,
                meter_transport=meter_transport,
            )
            for u in settings.upstreams
        ]
        router = UpstreamRouter(upstreams)
        ledger = await open_ledger(settings.ledger)
        admin_key = environ.get(settings.server.admin_key_env, "")
        auth = Authenticator(ledger, settings.server.auth, admin_key)
        budgets = await open_budgets(settings.budgets, ledger)
        intensity = build_intensity(settings, intensity_transport)
        tel = telemetry or None
        if telemetry is None:
            from proxy.telemetry import build_telemetry

            tel = build_telemetry(settings.telemetry, upstreams)
        elif tel is not None:
            tel.watch_upstreams(upstreams)
        limits = open_rate_limits(budgets, ledger, settings.budgets.on_store_error)
        services = Services(
            settings=settings,
            router=router,
            auth=auth,
            budgets=budgets,
            ledger=ledger,
            intensity=intensity,
            telemetry=tel,
            limits=limits,
        )
        relay = Relay(services)
        idle = IdleRecorder(services)
        idle_task = asyncio.get_running_loop().create_task(idle.run())
        checks_task = asyncio.get_running_loop().create_task(
            HealthChecks(settings.routing, upstreams).run()
        )
        app.state.settings = settings
        app.state.services = services
        app.state.relay = relay
        app.state.ledger = ledger
        app.state.auth = auth
        app.state.budgets = budgets
        app.state.telemetry = tel
        for upstream in upstreams:
            upstream.meter.start()
        await warm_up(services)  # before uvicorn listens: no first request pays for it
        log.info(
            "footprint ready: %d upstream(s), ledger %s, auth %s",
            len(upstreams),
            settings.ledger.url.split("@")[-1],
            settings.server.auth,
        )
        try:
            yield
        finally:
            await relay.drain()
            for task in (idle_task, checks_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            try:
                await idle.flush()
            except Exception:  # a ledger that is gone at shutdown; logged, nothing to retry
                log.exception("idle energy could not be recorded at shutdown")
            await router.aclose()
            await budgets.aclose()
            await limits.aclose()
            await ledger.aclose()
            if hasattr(intensity, "aclose"):
                await intensity.aclose()
            if tel is not None:
                tel.shutdown()

    routers = [
        openai.router,
        health.router,
        openapi.router,
        admin_router,
        upstreams_router,
        limits_router,
        footprint_router,
        views_router,
        dashboard_router,
    ]
    if telemetry is not False:
        from proxy.telemetry import metrics_router

        routers.append(metrics_router)
    routes = [
        *openai.relay_routes(),  # the hot path, matched first
        *(route for declared in routers for route in declared.routes),
    ]
    app = FootprintApp(routes=routes, lifespan=lifespan)
    _install_error_handlers(app)
    return app


class FootprintApp(Starlette):
    """Starlette, with the relay's POST endpoints served straight from the endpoint table.

    A relayed request is most of what the proxy serves, and Starlette's error middleware,
    exception wrapper and route matching cost about a tenth of its CPU (py-spy, `--gil`,
    under `wrk -c32`). The relay answers every outcome of its own (`Relay.handle` returns a
    response for each error), so on these paths the middleware has nothing to add but the
    500 of an error that escapes while the answer is sent, which `_relay` keeps. Every other
    path and method, and a mounted `root_path`, go through Starlette's router as before."""

    _relay_paths: ClassVar[Mapping[str, str]] = {s.route: n for n, s in ENDPOINTS.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self._relay_paths.get(scope["path"])
            relay = getattr(self.state, "relay", None)
            if endpoint is not None and isinstance(relay, Relay):
                scope["app"] = self
                await self._relay(relay, endpoint, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _relay(
        self, relay: Relay, endpoint: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        request = Request(scope, receive, sending)
        try:
            response = await relay.handle(request, endpoint)
            await response(scope, receive, sending)
        except Exception as exc:
            # As Starlette's ServerErrorMiddleware: the app's handler for 500 (or for any
            # Exception) answers if nothing was sent yet, and the error is raised on for the
            # server to log.
            handler = self.exception_handlers.get(500) or self.exception_handlers.get(Exception)
            if handler is not None:
                error_response = await handler(request, exc)
                if not started and isinstance(error_response, Response):
                    await error_response(scope, receive, send)
            raise


def _allowed_methods(app: Starlette, request: Request) -> list[str]:
    """Every method some route serves on the request's path (each route asked, as Starlette
    names the methods of the first route on the path only)."""
    methods = []
    for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT"):
        scope = {**request.scope, "method": method}
        if any(
            isinstance(route, BaseRoute) and route.matches(scope)[0] == Match.FULL
            for route in app.router.routes
        ):
            methods.append(method)
    return methods


def _install_error_handlers(app: Starlette) -> None:
    async def proxy_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProxyError)
        return exc.to_response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return NotFound(f"no route {request.method} {request.url.path}").to_response()
        error = ProxyError(str(exc.detail))
        error.status_code = exc.status_code
        error.error_type = "invalid_request_error"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only.
            headers["allow"] = ", ".join(_allowed_methods(app, request))
            headers.pop("Allow", None)
        return error.to_response(headers)

    async def unexpected(request: Request, exc: Exception) -> Response:
        if ledger_unavailable(exc):
            log.error("ledger unavailable on %s %s: %r", request.method, request.url.path, exc)
            return ServiceUnavailable("the ledger is unavailable right now").to_response()
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return ProxyError("internal error in the proxy").to_response()

    for kind in LEDGER_ERROR_TYPES:
        # A handler per type (not only the catch-all, after which Starlette closes the
        # connection): a database that is briefly unusable costs a 503, not the connection.
        app.add_exception_handler(kind, unexpected)

    app.add_exception_handler(ProxyError, proxy_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
