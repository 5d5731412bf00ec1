"""`GET /openapi.json`: the OpenAPI document of Footprint's own routes and of the OpenAI
request schemas it accepts (contract.md, second wave).

Written out rather than generated: no route declares a request model (each handler parses
the body it reads), and the bounds here are the ones the relay enforces
(`proxy.relay.checks`), so a client or a fuzzer reads what the proxy will refuse.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from proxy.budgets import METRICS, PERIODS
from proxy.relay.checks import (
    MAX_CHOICES,
    MAX_COUNT,
    MAX_IDENTIFIER_CHARS,
    MAX_MODEL_CHARS,
    MAX_REQUEST_ID_CHARS,
)
from proxy.routes import Router

router = Router()

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_COUNT = {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}
_CHOICES = {"type": "integer", "minimum": 0, "maximum": MAX_CHOICES}
_MODEL = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_MODEL_CHARS,
    "pattern": "^[^\\x00-\\x1f\\x7f]+$",
}
_TEXT_OR_LIST = {"oneOf": [{"type": "string"}, {"type": "array"}]}
_COMMON = {
    "model": _MODEL,
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object"},
    "max_tokens": _COUNT,
    "max_completion_tokens": _COUNT,
    "n": _CHOICES,
    "user": {"type": "string", "maxLength": MAX_IDENTIFIER_CHARS},
}
_SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **_COMMON,
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {"role": {"type": "string"}, "content": {"type": "string"}},
                },
            },
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {**_COMMON, "prompt": _TEXT_OR_LIST, "best_of": _CHOICES},
    },
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {"model": _MODEL, "input": _TEXT_OR_LIST},
    },
    "Team": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}},
    },
    "KeyRequest": {
        "type": "object",
        "required": ["team"],
        "properties": {
            "team": {"type": "string"},
            "models": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Budget": {
        "type": "object",
        "required": ["team", "metric", "limit", "period"],
        "properties": {
            "team": {"type": "string"},
            "metric": {"enum": list(METRICS)},
            "limit": {"type": "number", "minimum": 0},
            "period": {"enum": list(PERIODS)},
        },
    },
}
_REQUEST_ID_HEADER = {
    "name": "x-request-id",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": f"^[\\x21-\\x7e]{{1,{MAX_REQUEST_ID_CHARS}}}$"},
}


def _responses(ok: str) -> dict[str, Any]:
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {
        ok: {"description": "success"},
        "4XX": {"description": "refused, in OpenAI's error shape", **error},
        "5XX": {"description": "upstream or store unavailable, in OpenAI's error shape", **error},
    }


def _body(schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"required": True, "content": {"application/json": {"schema": ref}}}


def _relayed(schema: str, summary: str) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [_REQUEST_ID_HEADER],
            "requestBody": _body(schema),
            "responses": _responses("200"),
        }
    }


def _get(summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"summary": summary, "parameters": params or [], "responses": _responses("200")}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a new dict each call)."""
    paths: dict[str, Any] = {
        "/v1/chat/completions": _relayed("ChatCompletionRequest", "Chat Completions, relayed"),
        "/v1/completions": _relayed("CompletionRequest", "legacy Completions, relayed"),
        "/v1/embeddings": _relayed("EmbeddingRequest", "Embeddings, relayed"),
        "/v1/models": {"get": _get("the models this key may use")},
        "/v1/models/{model_id}": {"get": _get("one model", [_path_param("model_id")])},
        "/v1/footprint/requests/{request_id}": {
            "get": _get("the ledger record of one request", [_path_param("request_id")])
        },
        "/v1/footprint/usage": {
            "get": _get(
                "sums over the ledger",
                [_query(q) for q in ("group_by", "from", "to", "format", "team", "idle")],
            )
        },
        "/v1/footprint/traces/{trace_id}": {
            "get": _get("the footprint of one trace", [_path_param("trace_id")])
        },
        "/admin/teams": {
            "get": _get("every team"),
            "post": {"requestBody": _body("Team"), "responses": _responses("201")},
        },
        "/admin/keys": {
            "get": _get("every key"),
            "post": {"requestBody": _body("KeyRequest"), "responses": _responses("201")},
        },
        "/admin/keys/{key_id}": {
            "delete": {"parameters": [_path_param("key_id")], "responses": _responses("204")}
        },
        "/admin/budgets": {
            "get": _get("a team's budgets", [_query("team")]),
            "put": {"requestBody": _body("Budget"), "responses": _responses("200")},
        },
        "/healthz": {"get": {"security": [], "responses": {"200": {"description": "alive"}}}},
        "/readyz": {
            "get": {
                "security": [],
                "responses": {"200": {"description": "ready"}, "503": {"description": "not"}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Footprint", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


@router.get("/openapi.json")
async def openapi_json() -> JSONResponse:
    return JSONResponse(document())
