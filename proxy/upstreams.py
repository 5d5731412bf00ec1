"""Upstreams: which model server serves a model, and one pooled HTTP client for each.

Every upstream kind (vLLM, llama.cpp, Ollama, TGI, OpenAI) speaks the same OpenAI HTTP surface,
so one class covers them; what differs (base URL, credentials, meter, site) is configuration.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson

from meters import Hardware, RequestMeter, SiteFactors
from meters.calibration import Calibrations
from meters.estimate import Estimator
from proxy.config import UpstreamSettings
from proxy.routing._health import UpstreamHealth
from proxy.transport import Timeouts, UpstreamClient, UpstreamFailure, UpstreamRequest

log = logging.getLogger("footprint.upstreams")


@dataclass(eq=False)
class Upstream:
    """One configured model server and the live objects that talk to it."""

    settings: UpstreamSettings
    client: UpstreamClient
    meter: RequestMeter
    site: SiteFactors
    hardware: Hardware
    estimator: Estimator
    # Circuit, in-flight count and time to first token, for routing.
    health: UpstreamHealth = field(default_factory=UpstreamHealth)
    # Fits of this upstream's own measured traffic (the estimator reads the same object).
    calibrations: Calibrations = field(default_factory=Calibrations)
    _model_cache: tuple[float, list[dict[str, object]]] | None = field(default=None, repr=False)
    _secret: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def measuring(self) -> bool:
        """Whether figures from this upstream will be measured (a meter that works now)."""
        return self.settings.meter.kind != "estimate" and bool(
            getattr(self.meter, "healthy", False)
        )

    @property
    def host(self) -> str:
        return urlsplit(self.settings.base_url).hostname or ""

    def _credential(self) -> str:
        """The upstream's own credential (the key its client sends), worked out once; "" when
        there is none worth redacting (under 4 characters)."""
        if self._secret is None:
            authorization = self.client.credential()
            secret = authorization.partition(" ")[2].strip() or authorization.strip()
            self._secret = secret if len(secret) >= 4 else ""
        return self._secret

    def redact(self, data: bytes) -> bytes:
        """`data` with the upstream's own credential cut out, for anything of the upstream's
        that is passed on to a client."""
        secret = self._credential()
        return data.replace(secret.encode(), b"[redacted]") if secret else data

    def redact_text(self, value: str) -> str:
        """`redact` for a header value, kept as the text it was."""
        secret = self._credential()
        return value.replace(secret, "[redacted]") if secret and secret in value else value

    def post_request(
        self, path: str, content: bytes, headers: Mapping[str, str]
    ) -> UpstreamRequest:
        """A POST of `content` to `path` under the upstream's base URL: the client's headers
        (its credential), then `headers`; the client's timeouts."""
        return self.client.request("POST", path, headers=headers, content=content)

    def serves_exactly(self, model: str) -> bool:
        return any(p == model for p in self.settings.models if not _is_pattern(p))

    def serves_by_pattern(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.settings.models if _is_pattern(p))

    async def list_models(self, max_age_s: float = 10.0) -> list[dict[str, object]]:
        """The upstream's own `/models`, cached briefly; configured exact names are added."""
        now = time.monotonic()
        if self._model_cache is not None and now - self._model_cache[0] < max_age_s:
            return self._model_cache[1]
        found: dict[str, dict[str, object]] = {}
        try:
            response = await self.client.get("/models", timeout_s=5.0)
            content = await response.read()
            if response.status_code == 200:
                for entry in orjson.loads(content).get("data", []):
                    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                        found[entry["id"]] = entry
        except (UpstreamFailure, orjson.JSONDecodeError, AttributeError) as exc:
            log.warning("upstream %s: /models failed: %s", self.name, exc)
        for name in self.settings.models:
            if not _is_pattern(name):
                found.setdefault(name, {"id": name, "object": "model", "owned_by": self.name})
        models = [
            m
            for m in found.values()
            if self.serves_exactly(str(m["id"])) or self.serves_by_pattern(str(m["id"]))
        ]
        self._model_cache = (now, models)
        return models

    async def ping(self) -> bool:
        """Readiness: the upstream answers HTTP at all (any status)."""
        try:
            response = await self.client.get("/models", timeout_s=2.0)
            await response.read()
        except UpstreamFailure:
            return False
        return True


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def build_client(settings: UpstreamSettings) -> UpstreamClient:
    """One pooled client per upstream; the upstream's credential is injected here and never
    travels back to a client."""
    headers: dict[str, str] = {}
    if settings.api_key_env:
        key = os.environ.get(settings.api_key_env, "")
        if key:
            headers["authorization"] = f"Bearer {key}"
        else:
            log.warning(
                "upstream %s: environment variable %s is empty; calling it without a key",
                settings.name,
                settings.api_key_env,
            )
    return UpstreamClient(
        settings.base_url,
        headers=headers,
        timeouts=Timeouts(connect_s=settings.connect_timeout_s, read_s=settings.read_timeout_s),
        max_connections=settings.max_connections,
        keepalive_expiry_s=settings.keepalive_expiry_s,
    )


# Distinct model names whose candidates are remembered (names come from clients).
_MAX_REMEMBERED_MODELS = 4096


class UpstreamRouter:
    """model → its candidates: every upstream that serves it, those naming it exactly first
    (in configuration order), then those matching it by a pattern like `*`."""

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self.upstreams = list(upstreams)
        self._exact: dict[str, list[Upstream]] = {}
        # Patterns in configuration order, compiled once (fnmatchcase's own rules).
        self._patterns: list[tuple[Callable[[str], object], Upstream]] = []
        for upstream in self.upstreams:
            for name in upstream.settings.models:
                if not _is_pattern(name):
                    named = self._exact.setdefault(name, [])
                    if upstream not in named:
                        named.append(upstream)
                else:
                    self._patterns.append((re.compile(fnmatch.translate(name)).match, upstream))
        self._candidates: dict[str, tuple[Upstream, ...]] = {}

    def candidates(self, model: str) -> tuple[Upstream, ...]:
        """Every upstream that serves `model`, in priority order (empty: none does)."""
        found = self._candidates.get(model)
        if found is not None:
            return found
        ordered = list(self._exact.get(model, ()))
        for matches, upstream in self._patterns:
            if upstream not in ordered and matches(model):
                ordered.append(upstream)
        found = tuple(ordered)
        if len(self._candidates) >= _MAX_REMEMBERED_MODELS:
            self._candidates.clear()
        self._candidates[model] = found
        return found

    def route(self, model: str) -> Upstream | None:
        """The first candidate for `model` (the `priority` policy's choice when all are well)."""
        found = self.candidates(model)
        return found[0] if found else None

    async def list_models(self) -> list[dict[str, object]]:
        """Models across every upstream; for a model served twice, the one that routes wins."""
        results = await asyncio.gather(*(u.list_models() for u in self.upstreams))
        merged: dict[str, dict[str, object]] = {}
        for models in results:
            for model in models:
                model_id = str(model["id"])
                if model_id not in merged:
                    merged[model_id] = model
        return list(merged.values())

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.client.aclose()
            await upstream.meter.aclose()
