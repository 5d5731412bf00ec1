"""Names Footprint's spans and metrics use: the OTel semantic conventions' where one exists
(GenAI, HTTP, hardware), `footprint.*` where none does (carbon, water). docs/telemetry.md lists
them all; change both together."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

# ---- span attributes -----------------------------------------------------------------------

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
SYSTEM_PRE_1_37 = "gen_ai.system"  # the provider's name before semconv 1.37
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
RESPONSE_MODEL = "gen_ai.response.model"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
TOKEN_TYPE = "gen_ai.token.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"
HTTP_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_STATUS = "http.response.status_code"

FOOTPRINT_METHOD = "footprint.method"
FOOTPRINT_GPU_ENERGY_J = "footprint.gpu_energy_j"
FOOTPRINT_ENERGY_J = "footprint.energy_j"
FOOTPRINT_CO2E_G = "footprint.co2e_g"
FOOTPRINT_EMBODIED_CO2E_G = "footprint.embodied_co2e_g"
FOOTPRINT_CO2E_MARKET_G = "footprint.co2e_market_g"  # only where the upstream has contracts
FOOTPRINT_WATER_ML = "footprint.water_ml"
FOOTPRINT_ZONE = "footprint.zone"
FOOTPRINT_GRID = "footprint.grid_gco2e_per_kwh"
FOOTPRINT_TEAM = "footprint.team"
FOOTPRINT_REQUEST_ID = "footprint.request_id"
FOOTPRINT_UPSTREAM = "footprint.upstream"
FOOTPRINT_CANCELLED = "footprint.cancelled"
FOOTPRINT_STREAM = "footprint.stream"
# The routing decision, where a policy chose among several upstreams (issue 15).
FOOTPRINT_ROUTE_POLICY = "footprint.route.policy"
FOOTPRINT_ROUTE_CANDIDATES = "footprint.route.candidates"
FOOTPRINT_ROUTE_ATTEMPTS = "footprint.route.attempts"
FOOTPRINT_ROUTE_REASON = "footprint.route.reason"
FOOTPRINT_ROUTE_EXPECTED_CO2E_G = "footprint.route.expected_co2e_g"
FOOTPRINT_ROUTE_WORST_CO2E_G = "footprint.route.worst_co2e_g"

# ---- metrics -------------------------------------------------------------------------------

# Attribute keys of the footprint counters, as the contract names them.
TEAM, MODEL, UPSTREAM, METHOD = "team", "model", "upstream", "method"

# Bucket boundaries the GenAI metric conventions recommend.
TOKEN_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
DURATION_BUCKETS_S = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)

# ---- endpoints -----------------------------------------------------------------------------

# proxy endpoint → (GenAI operation name, HTTP route). Agrees with proxy.relay.ENDPOINTS
# (a test checks it); kept here so telemetry does not import the relay it instruments.
ENDPOINTS: dict[str, tuple[str, str]] = {
    "chat.completions": ("chat", "/v1/chat/completions"),
    "completions": ("text_completion", "/v1/completions"),
    "embeddings": ("embeddings", "/v1/embeddings"),
    "responses": ("chat", "/v1/responses"),
    "messages": ("chat", "/v1/messages"),
}


def endpoint_names(endpoint: str) -> tuple[str, str]:
    return ENDPOINTS.get(endpoint) or (endpoint, f"/v1/{endpoint.replace('.', '/')}")


# ---- gen_ai.provider.name ------------------------------------------------------------------

# Host (or host suffix, with a leading dot) → the GenAI conventions' well-known provider value.
_PROVIDER_HOSTS: tuple[tuple[str, str], ...] = (
    ("api.openai.com", "openai"),
    (".openai.azure.com", "azure.ai.openai"),
    (".services.ai.azure.com", "azure.ai.inference"),
    (".models.ai.azure.com", "azure.ai.inference"),
    ("api.anthropic.com", "anthropic"),
    ("api.groq.com", "groq"),
    ("api.mistral.ai", "mistral_ai"),
    ("api.deepseek.com", "deepseek"),
    ("api.x.ai", "x_ai"),
    ("api.perplexity.ai", "perplexity"),
    ("api.cohere.com", "cohere"),
    ("api.cohere.ai", "cohere"),
    ("api.moonshot.ai", "moonshot_ai"),
    ("api.moonshot.cn", "moonshot_ai"),
    ("generativelanguage.googleapis.com", "gcp.gemini"),
    ("aiplatform.googleapis.com", "gcp.vertex_ai"),
    (".aiplatform.googleapis.com", "gcp.vertex_ai"),
    ("api.watsonx.ai", "ibm.watsonx.ai"),
    (".ml.cloud.ibm.com", "ibm.watsonx.ai"),
)


def provider_name(host: str, upstream_settings: Any) -> str:
    """`gen_ai.provider.name` for an upstream.

    A hosted API is known by its host and gets the conventions' well-known value (`openai` for
    api.openai.com, …). A self-hosted server (vLLM, llama.cpp, Ollama, TGI) has no well-known
    value: it gets the `provider` (or `kind`) its upstream settings declare, if they have one,
    else the upstream's configured name.
    """
    host = host.lower()
    for pattern, value in _PROVIDER_HOSTS:
        if host == pattern or (pattern.startswith(".") and host.endswith(pattern)):
            return value
    for key in ("provider", "kind"):
        declared = getattr(upstream_settings, key, None)
        if isinstance(declared, str) and declared:
            return declared
    return str(getattr(upstream_settings, "name", "") or host)


def server_address(base_url: str) -> tuple[str, int]:
    """(`server.address`, `server.port`) of an upstream's base URL: the host in lower case
    (an IPv6 literal as written, an IDNA name decoded, as httpx gave them), the port or the
    scheme's default."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    written = parts.netloc.rpartition("@")[2]
    if written.startswith("["):
        host = written[1:].partition("]")[0]
    elif "xn--" in host:
        host = host.encode("ascii").decode("idna")
    return host, parts.port or (443 if parts.scheme == "https" else 80)
