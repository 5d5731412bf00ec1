"""Settings: one TOML file plus `FOOTPRINT_*` environment overrides, validated once at start.

Order: environment > file > default. An override names its key with double underscores for
nesting, e.g. `FOOTPRINT_SERVER__PORT=9000`, `FOOTPRINT_LEDGER__URL=postgresql://…`, and
`FOOTPRINT_UPSTREAMS__0__BASE_URL=…` for the first upstream. Values are parsed as TOML values
where they parse (numbers, booleans, arrays), else taken as strings.

Unknown keys and impossible values stop the start with one line that names the key.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from meters.attribution import DEFAULT_ALPHA
from meters.constants import (
    DEFAULT_ACCELERATOR,
    DEFAULT_BATCH_SIZE,
    DEFAULT_PUE,
    DEFAULT_SERVER_POWER_W_PER_GPU,
    DEFAULT_WUE_L_PER_KWH,
    UnknownAccelerator,
    accelerator,
)
from meters.intensity import IntensityTable, UnknownZone
from meters.sampler import DEFAULT_TICK_S
from meters.types import MarketContracts

ENV_PREFIX = "FOOTPRINT_"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_http_url(value: str, *, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {value!r}")
    return value


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    auth: Literal["keys", "none"] = "keys"
    admin_key_env: str = "FOOTPRINT_ADMIN_KEY"
    max_body_bytes: Annotated[int, Field(gt=0)] = 4 * 1024 * 1024
    # The request line and headers together; over it: 431, connection closed.
    max_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    # From the end of the headers to the end of the body; over it: 408, connection closed.
    body_read_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    footprint_in_body: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class LedgerSettings(_Section):
    url: str = "sqlite:///footprint.db"
    # Rows are group-committed. SQLite: a writer thread commits whatever has queued, at most
    # batch_max_rows at a time, with no timer. PostgreSQL: a batch is written when it is
    # batch_max_rows big or batch_max_delay_ms old.
    batch_max_rows: Annotated[int, Field(gt=0)] = 256
    batch_max_delay_ms: Annotated[float, Field(ge=0)] = 2.0
    # PostgreSQL connections per replica: pool_size kept open (the row writer holds one of
    # them), pool_max_overflow more under a burst. 4 + 2: three replicas take at most 18 of a
    # default server's 100. A request that finds none free within pool_timeout_s is a 503.
    pool_size: Annotated[int, Field(ge=1, le=100)] = 4
    pool_max_overflow: Annotated[int, Field(ge=0, le=100)] = 2
    pool_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    # PostgreSQL unreachable at start: retry this long (one log line each time), then exit.
    connect_retry_s: Annotated[float, Field(ge=0)] = 30.0

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"ledger URL must be sqlite:///… or postgresql://…, got {value!r}")
        return value


class BudgetSettings(_Section):
    redis_url: str = ""
    # What to do with a request when Redis cannot be reached: refuse it (503) or allow it and
    # reconcile from the ledger afterwards.
    on_store_error: Literal["refuse", "allow"] = "allow"
    default_max_tokens: Annotated[int, Field(gt=0)] = 1024
    reservation_ttl_s: Annotated[float, Field(gt=0)] = 600.0
    # Socket timeout of every Redis call (connect and reply). After a failure Redis is not
    # asked again for a second, so a Redis that never answers costs one timeout per second.
    redis_timeout_s: Annotated[float, Field(gt=0, le=30)] = 1.0
    # A client's own x-request-id is claimed while its request runs (a reuse is a 409); a
    # replica renews its claims every third of this, so one that dies frees them within it.
    claim_ttl_s: Annotated[float, Field(ge=1)] = 30.0

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"not a redis:// URL: {value!r}")
        return value


class TelemetrySettings(_Section):
    otlp_endpoint: str = ""
    service_name: str = "footprint"
    traces: bool = True
    metrics: bool = True
    metric_export_interval_ms: Annotated[int, Field(gt=0)] = 10_000

    @field_validator("otlp_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return _check_http_url(value, allow_empty=True)


class IntensitySettings(_Section):
    """Live grid intensity; with no key, the shipped table is used."""

    provider: Literal["table", "electricitymaps"] = "table"
    api_key_env: str = "ELECTRICITYMAPS_API_KEY"
    base_url: str = "https://api.electricitymap.org/v3"
    cache_ttl_s: Annotated[float, Field(gt=0)] = 900.0
    timeout_s: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("base_url")
    @classmethod
    def _base(cls, value: str) -> str:
        return _check_http_url(value)


class MeteringSettings(_Section):
    tick_s: Annotated[float, Field(gt=0, le=10)] = DEFAULT_TICK_S
    # Cost of a prompt token against an output token (methodology §2); an assumption until
    # measured on a GPU.
    alpha: Annotated[float, Field(ge=0)] = DEFAULT_ALPHA
    # Non-GPU server power per GPU while serving, for upstreams that do not set their own
    # ([upstreams.hardware] server_w_per_gpu). Default and source: meters.constants.
    server_power_w_per_gpu: Annotated[float, Field(ge=0)] = DEFAULT_SERVER_POWER_W_PER_GPU
    batch_size: Annotated[int, Field(gt=0)] = DEFAULT_BATCH_SIZE
    idle: Literal["report", "spread"] = "report"


class MeterSettings(_Section):
    kind: Literal["nvml", "prometheus", "estimate"] = "estimate"
    gpus: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0])
    url: str = ""
    # The split's denominator (methodology §2b): the model server's own token counters
    # (engine), the requests this replica saw (local), or engine where the server has them.
    activity: Literal["engine", "local", "auto"] = "auto"
    # The model server's Prometheus endpoint; "" = the upstream's origin + /metrics.
    activity_url: str = ""

    @model_validator(mode="after")
    def _url_for_prometheus(self) -> MeterSettings:
        if self.kind == "prometheus":
            _check_http_url(self.url)
        _check_http_url(self.activity_url, allow_empty=True)
        return self


class HardwareSettings(_Section):
    # Memory per accelerator for the estimator's GPU count; unset: the accelerator's datasheet
    # figure (meters.constants.ACCELERATORS). Needed for an accelerator the table lacks.
    accelerator_memory_gb: Annotated[float, Field(gt=0)] | None = None
    accelerator: str = DEFAULT_ACCELERATOR
    gpus: Annotated[int, Field(gt=0)] = 1
    active_params_b: Annotated[float, Field(gt=0)] | None = None
    total_params_b: Annotated[float, Field(gt=0)] | None = None
    # This host's non-GPU server power per GPU (CPU, memory, fans) while serving; unset: the
    # [metering] default (meters.constants.DEFAULT_SERVER_POWER_W_PER_GPU, with its source).
    server_w_per_gpu: Annotated[float, Field(ge=0)] | None = None

    @field_validator("accelerator")
    @classmethod
    def _known_accelerator(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("accelerator_memory_gb") is None:
            try:
                accelerator(value)
            except UnknownAccelerator as error:
                raise ValueError(str(error)) from None
        return value

    def memory_gb(self) -> float:
        """The accelerator's memory: the configured figure, else its datasheet's."""
        if self.accelerator_memory_gb is not None:
            return self.accelerator_memory_gb
        return accelerator(self.accelerator).memory_gb


class CarbonSettings(_Section):
    """The operator's contractual instruments, for market-based carbon (issue 18; GHG Protocol
    Scope 2 market method). All unset: no market-based figure for this upstream."""

    # The emission factor of the contracted supply (0 for a wind PPA or bundled certificates).
    market_gco2e_per_kwh: Annotated[float, Field(ge=0)] | None = None
    # The factor for the share the contracts do not cover: the residual mix, with its source.
    residual_gco2e_per_kwh: Annotated[float, Field(ge=0)] | None = None
    residual_source: str = Field(default="", validate_default=True)
    # The share of the upstream's electricity the contracts cover, 0–1. Declared last and
    # validated even when unset, so its check sees every other key and names the one missing.
    market_coverage: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None, validate_default=True
    )

    @field_validator("market_coverage")
    @classmethod
    def _complete(cls, value: float | None, info: ValidationInfo) -> float | None:
        market = info.data.get("market_gco2e_per_kwh")
        residual = info.data.get("residual_gco2e_per_kwh")
        if value is None:
            for key in ("market_gco2e_per_kwh", "residual_gco2e_per_kwh"):
                if info.data.get(key) is not None:
                    raise ValueError(
                        f"required when {key} is set (the share of the electricity the "
                        "contracts cover, 0–1)"
                    )
            return None
        if value > 0 and market is None:
            raise ValueError("above 0 needs market_gco2e_per_kwh, the contracts' factor")
        if value < 1 and residual is None:
            raise ValueError(
                "below 1 needs residual_gco2e_per_kwh (and residual_source) for the uncovered share"
            )
        return value

    @field_validator("residual_source")
    @classmethod
    def _residual_named(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("residual_gco2e_per_kwh") is not None and not value.strip():
            raise ValueError(
                "required when residual_gco2e_per_kwh is set: where the residual mix is from "
                '(e.g. "AIB European Residual Mixes 2024, Germany")'
            )
        return value

    def contracts(self) -> MarketContracts | None:
        """The contracts as `meters` takes them; None where none are configured."""
        if self.market_coverage is None:
            return None
        return MarketContracts(
            coverage=self.market_coverage,
            market_gco2e_per_kwh=self.market_gco2e_per_kwh or 0.0,
            residual_gco2e_per_kwh=self.residual_gco2e_per_kwh or 0.0,
            residual_source=self.residual_source.strip(),
        )


class UpstreamSettings(_Section):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    base_url: str
    models: list[str] = Field(default_factory=lambda: ["*"])
    api_key_env: str = ""
    zone: str = "WORLD"
    # Defaults and their sources: meters.constants (EcoLogits' OpenAI/Azure figures).
    pue: Annotated[float, Field(ge=1.0)] = DEFAULT_PUE
    wue_l_per_kwh: Annotated[float, Field(ge=0)] = DEFAULT_WUE_L_PER_KWH
    connect_timeout_s: Annotated[float, Field(gt=0)] = 5.0
    read_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    max_connections: Annotated[int, Field(gt=0)] = 256
    # How long an idle upstream connection is kept for reuse. Below the upstream's own
    # keep-alive (uvicorn, so vLLM and llama.cpp's Python servers: 5 s; Node: 5 s), or the
    # upstream closes a connection just as a request is sent on it, and that request fails
    # with a 502 (ReadError). 0: a new connection per request.
    keepalive_expiry_s: Annotated[float, Field(ge=0)] = 4.0
    # The most bytes an upstream's whole answer, or one event of its stream, may have; over
    # it the request is a 502 (a stream: cut with an error event).
    max_response_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    # Where the upstream's own tokenizer answers, used to count prompt tokens when the upstream
    # streams no usage: vLLM's http://host:8000/tokenize, llama.cpp's server /tokenize,
    # llama-cpp-python's /extras/tokenize. `tokenize_format` names the request shape; `auto`
    # tells llama-cpp-python's by its path and tries vLLM's, then llama.cpp's, for the rest.
    tokenize_url: str = ""
    tokenize_format: Literal["auto", "vllm", "llama.cpp", "llama-cpp-python"] = "auto"
    # Send the request id on as `x-request-id`. llama-cpp-python's server answers 400 to any
    # x-request-id that is not a UUID, so turn this off in front of it.
    forward_request_id: bool = True
    # In-flight requests this upstream takes before a routing policy passes it over; 0: no limit.
    max_concurrency: Annotated[int, Field(ge=0)] = 0
    meter: MeterSettings = Field(default_factory=MeterSettings)
    hardware: HardwareSettings = Field(default_factory=HardwareSettings)
    carbon: CarbonSettings = Field(default_factory=CarbonSettings)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return _check_http_url(value).rstrip("/")

    @field_validator("tokenize_url")
    @classmethod
    def _tokenize_url(cls, value: str) -> str:
        return _check_http_url(value, allow_empty=True)

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        # A zone without figures would let requests through that can be neither metered nor
        # recorded: refuse it at start, with the zones the user may have meant.
        zone = value.strip().upper() or "WORLD"
        try:
            IntensityTable.shipped().row(zone)
        except UnknownZone as exc:
            raise ValueError(str(exc)) from None
        return zone

    @model_validator(mode="after")
    def _metered_gpus_are_the_hardware(self) -> UpstreamSettings:
        # Measured energy comes from meter.gpus; embodied carbon and the estimator fallback
        # scale by hardware.gpus. If they disagree the figures do (8 GPUs metered, 1 embodied).
        if self.meter.kind == "estimate":
            return self
        gpus = self.meter.gpus
        repeated = sorted({g for g in gpus if gpus.count(g) > 1})
        if repeated:
            raise ValueError(f"meter.gpus lists GPU {repeated[0]} more than once: {gpus}")
        if len(gpus) != self.hardware.gpus:
            raise ValueError(
                f"hardware.gpus = {self.hardware.gpus} but meter.gpus = {gpus} meters "
                f"{len(gpus)} GPU(s): set hardware.gpus = {len(gpus)} or list the GPUs the "
                "model runs on in meter.gpus"
            )
        return self


RoutingPolicy = Literal["priority", "round-robin", "least-busy", "lowest-carbon"]


class RoutingModelSettings(_Section):
    """A policy for the models that `match` (a name, or a pattern like `llama-*`)."""

    match: Annotated[str, Field(min_length=1)]
    policy: RoutingPolicy


class RoutingSettings(_Section):
    """How a model served by several upstreams picks one, and how failures are handled."""

    policy: RoutingPolicy = "priority"
    # Tries across candidates before any byte reached the client (1: no retry).
    max_attempts: Annotated[int, Field(ge=1, le=10)] = 2
    # lowest-carbon: how much slower (observed time to first token) a greener upstream may
    # be than the fastest candidate; 0: no guard.
    max_extra_ttft_ms: Annotated[float, Field(ge=0)] = 0.0
    models: list[RoutingModelSettings] = Field(default_factory=list)
    # Circuit breaker: this many failures in a row open it; it half-opens after open_s.
    failure_threshold: Annotated[int, Field(ge=1)] = 3
    open_s: Annotated[float, Field(gt=0)] = 10.0
    # Active health checks: GET base_url + health_path every health_interval_s; 0: off (and
    # off with a single upstream).
    health_interval_s: Annotated[float, Field(ge=0)] = 10.0
    health_path: str = "/models"
    health_timeout_s: Annotated[float, Field(gt=0)] = 2.0

    @field_validator("health_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"must start with '/': {value!r}")
        return value

    def policy_for(self, model: str) -> RoutingPolicy:
        """The policy of the first `[[routing.models]]` entry that matches `model` (an exact
        name before patterns), else the default."""
        for entry in self.models:
            if entry.match == model:
                return entry.policy
        for entry in self.models:
            if fnmatch.fnmatchcase(model, entry.match):
                return entry.policy
        return self.policy


class Settings(_Section):
    server: ServerSettings = Field(default_factory=ServerSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    intensity: IntensitySettings = Field(default_factory=IntensitySettings)
    metering: MeteringSettings = Field(default_factory=MeteringSettings)
    upstreams: list[UpstreamSettings] = Field(default_factory=list)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)

    @model_validator(mode="after")
    def _unique_upstreams(self) -> Settings:
        names = [u.name for u in self.upstreams]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"upstream name {name!r} is used twice")
        return self


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue  # FOOTPRINT_ADMIN_KEY and other secrets are not settings
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node: Any = data
        for i, part in enumerate(path):
            # A path through a value ("SERVER__PORT__X") or a list by name is the user's slip:
            # one line naming the variable, not a TypeError from deep in here.
            if not isinstance(node, dict | list) or (isinstance(node, list) and not part.isdigit()):
                where = ".".join(path[:i]) or "(top level)"
                raise ConfigError(
                    f"configuration error: {name}: {where} is "
                    + (
                        "a list: the next part must be a number"
                        if isinstance(node, list)
                        else "a value, not a table"
                    )
                )
            if i == len(path) - 1:
                break
            nxt_is_index = path[i + 1].isdigit()
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append({})
                node = node[index]
                continue
            node = node.setdefault(part, [] if nxt_is_index else {})
        last = path[-1]
        if isinstance(node, list):
            index = int(last)
            while len(node) <= index:
                node.append({})
            node[index] = _env_value(raw)
        else:
            node[last] = _env_value(raw)


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "value_error":
        message = str(first.get("ctx", {}).get("error", message))  # without "Value error, "
    return f"configuration error: {key}: {message}"


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read the TOML file (if given or if ./footprint.toml exists), apply `FOOTPRINT_*`
    overrides from `environ`, then `overrides`, and validate."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is None and Path("footprint.toml").exists():
        path = "footprint.toml"
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration error: file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration error: {path}: {exc}") from exc
    _apply_env(data, environ)
    for key, value in (overrides or {}).items():
        data[key] = value
    return parse_settings(data)


def parse_settings(data: Mapping[str, Any]) -> Settings:
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
