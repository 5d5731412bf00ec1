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
from typing import Any

import httpx
import orjson

from meters import Hardware, RequestMeter, SiteFactors
from meters.calibration import Calibrations
from meters.estimate import Estimator
from proxy.config import UpstreamSettings
from proxy.routing._health import UpstreamHealth
from proxy.transport import AiohttpTransport

log = logging.getLogger("footprint.upstreams")


@dataclass(eq=False)
class Upstream:
    """One configured model server and the live objects that talk to it."""

    settings: UpstreamSettings
    client: httpx.AsyncClient
    meter: RequestMeter
    site: SiteFactors
    hardware: Hardware
    estimator: Estimator
    # Circuit, in-flight count and time to first token, for routing.
    health: UpstreamHealth = field(default_factory=UpstreamHealth)
    # Fits of this upstream's own measured traffic (the estimator reads the same object).
    calibrations: Calibrations = field(default_factory=Calibrations)
    _model_cache: tuple[float, list[dict[str, object]]] | None = field(default=None, repr=False)
    _post_urls: dict[str, httpx.URL] = field(default_factory=dict, repr=False)
    _post_base: tuple[dict[str, str], dict[str, object]] | None = field(default=None, repr=False)
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
        return httpx.URL(self.settings.base_url).host

    def _credential(self) -> str:
        """The upstream's own credential (the key its client sends), worked out once; "" when
        there is none worth redacting (under 4 characters)."""
        if self._secret is None:
            authorization = self.client.headers.get("authorization", "")
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

    def post_request(self, path: str, content: bytes, headers: Mapping[str, str]) -> httpx.Request:
        """A POST of `content` to `path` under the upstream's base URL, for `client.send`:
        what `client.build_request` makes (the client's headers, then `headers`, lower-case
        names; the client's timeouts), with the URL and the client's headers worked out once
        rather than on every request. The client's cookie jar is not sent: cookies set by the
        upstream for one caller are no business of the next."""
        url = self._post_urls.get(path)
        if url is None:
            url = self._post_urls[path] = self.client.build_request("POST", path).url
        if self._post_base is None:
            self._post_base = (
                dict(self.client.headers.items()),
                {"timeout": self.client.timeout.as_dict()},
            )
        base_headers, extensions = self._post_base
        merged = base_headers.copy()
        merged.update(headers)
        return httpx.Request(
            "POST", url, content=content, headers=merged, extensions=dict(extensions)
        )

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
            response = await self.client.get("/models", timeout=5.0)
            if response.status_code == 200:
                for entry in orjson.loads(response.content).get("data", []):
                    if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                        found[entry["id"]] = entry
        except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError) as exc:
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
            await self.client.get("/models", timeout=2.0)
        except httpx.HTTPError:
            return False
        return True


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing from responses."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class UpstreamClient(httpx.AsyncClient):
    """An httpx client that keeps no cookies: what an upstream sets in answer to one caller
    is never sent on for the next, and no response pays for parsing `Set-Cookie` into a jar
    (httpx does that on every response; it was 4% of the proxy's CPU per request)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._kept_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._kept_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise AttributeError("an upstream client keeps no cookies")


def build_client(
    settings: UpstreamSettings,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One pooled client per upstream; the upstream's credential is injected here and never
    travels back to a client. Its connections are aiohttp's pool (`proxy.transport`) unless
    a `transport` is given (tests pass an ASGI or mock one)."""
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
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
        keepalive_expiry=settings.keepalive_expiry_s,
    )
    return UpstreamClient(
        base_url=settings.base_url,
        headers=headers,
        timeout=httpx.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.read_timeout_s,
            pool=settings.connect_timeout_s,
        ),
        limits=limits,
        transport=transport if transport is not None else AiohttpTransport(limits),
        follow_redirects=False,
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
